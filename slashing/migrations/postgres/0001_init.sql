-- ensign slashing protection, PostgreSQL schema v1.
-- Slots/epochs are BIGINT (i64; u64 values above i64::MAX are refused).
-- A NULL signing_root is an imported entry without a root (or two conflicting
-- imported roots): it never equals a new root.

CREATE TABLE metadata (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    genesis_validators_root BYTEA CHECK (octet_length(genesis_validators_root) = 32),
    high_watermark_epoch BIGINT,
    high_watermark_slot BIGINT
);

CREATE TABLE validators (
    id BIGSERIAL PRIMARY KEY,
    public_key BYTEA NOT NULL UNIQUE CHECK (octet_length(public_key) = 48),
    enabled BOOLEAN NOT NULL DEFAULT TRUE
);

-- UNIQUE doubles as the lookup index and is a backstop against two rows at
-- one slot / target (EIP-3076 conditions 2 and 5).
CREATE TABLE signed_blocks (
    validator_id BIGINT NOT NULL REFERENCES validators(id),
    slot BIGINT NOT NULL,
    signing_root BYTEA,
    UNIQUE (validator_id, slot)
);

CREATE TABLE signed_attestations (
    validator_id BIGINT NOT NULL REFERENCES validators(id),
    source_epoch BIGINT NOT NULL,
    target_epoch BIGINT NOT NULL,
    signing_root BYTEA,
    UNIQUE (validator_id, target_epoch)
);
CREATE INDEX signed_attestations_source ON signed_attestations (validator_id, source_epoch);

CREATE TABLE low_watermarks (
    validator_id BIGINT PRIMARY KEY REFERENCES validators(id),
    slot BIGINT,
    source_epoch BIGINT,
    target_epoch BIGINT,
    CHECK ((source_epoch IS NULL) = (target_epoch IS NULL))
);
