-- ensign slashing protection, SQLite schema v1.
-- Slots/epochs are INTEGER (i64; u64 values above i64::MAX are refused).
-- A NULL signing_root is an imported entry without a root (or two conflicting
-- imported roots): it never equals a new root.

CREATE TABLE metadata (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    genesis_validators_root BLOB CHECK (length(genesis_validators_root) = 32),
    high_watermark_epoch INTEGER,
    high_watermark_slot INTEGER
);

CREATE TABLE validators (
    id INTEGER PRIMARY KEY,
    public_key BLOB NOT NULL UNIQUE CHECK (length(public_key) = 48),
    enabled INTEGER NOT NULL DEFAULT 1
);

-- UNIQUE doubles as the lookup index and is a backstop against two rows at
-- one slot / target (EIP-3076 conditions 2 and 5).
CREATE TABLE signed_blocks (
    validator_id INTEGER NOT NULL REFERENCES validators(id),
    slot INTEGER NOT NULL,
    signing_root BLOB,
    UNIQUE (validator_id, slot)
);

CREATE TABLE signed_attestations (
    validator_id INTEGER NOT NULL REFERENCES validators(id),
    source_epoch INTEGER NOT NULL,
    target_epoch INTEGER NOT NULL,
    signing_root BLOB,
    UNIQUE (validator_id, target_epoch)
);
CREATE INDEX signed_attestations_source ON signed_attestations (validator_id, source_epoch);

CREATE TABLE low_watermarks (
    validator_id INTEGER PRIMARY KEY REFERENCES validators(id),
    slot INTEGER,
    source_epoch INTEGER,
    target_epoch INTEGER,
    CHECK ((source_epoch IS NULL) = (target_epoch IS NULL))
);
