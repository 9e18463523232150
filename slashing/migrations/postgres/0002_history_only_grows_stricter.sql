-- ensign slashing protection, PostgreSQL schema v2 (issue 15): the recorded history can only
-- become stricter, whoever writes to it, so that a signer role holding INSERT/UPDATE but not
-- DELETE (`ensign database provision`) cannot weaken it either.
--
-- Every table and function name below is qualified with the store's schema when the migration
-- runs (postgres_store.rs `qualify`); SECURITY DEFINER functions also pin their search_path.

-- Low watermarks only rise (EIP-3076: messages at or below them are refused; lowering one would
-- re-open slots and epochs already signed). A NULL never replaces a value.
CREATE FUNCTION guard_low_watermarks() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.validator_id IS DISTINCT FROM OLD.validator_id
        OR NEW.slot IS DISTINCT FROM GREATEST(OLD.slot, NEW.slot)
        OR NEW.source_epoch IS DISTINCT FROM GREATEST(OLD.source_epoch, NEW.source_epoch)
        OR NEW.target_epoch IS DISTINCT FROM GREATEST(OLD.target_epoch, NEW.target_epoch) THEN
        RAISE EXCEPTION 'ensign: a low watermark may only rise (validator id %)', OLD.validator_id
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;

-- A recorded message keeps its slot / epochs; its root may only become NULL ("conflicts with
-- everything", the import merge of two different roots): a root changed to another value would
-- let that other message be signed as a "repeat".
CREATE FUNCTION guard_signed_blocks() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.validator_id IS DISTINCT FROM OLD.validator_id
        OR NEW.slot IS DISTINCT FROM OLD.slot
        OR (NEW.signing_root IS NOT NULL AND NEW.signing_root IS DISTINCT FROM OLD.signing_root) THEN
        RAISE EXCEPTION 'ensign: a recorded block may only lose its root (validator id %, slot %)',
            OLD.validator_id, OLD.slot USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;

CREATE FUNCTION guard_signed_attestations() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.validator_id IS DISTINCT FROM OLD.validator_id
        OR NEW.source_epoch IS DISTINCT FROM OLD.source_epoch
        OR NEW.target_epoch IS DISTINCT FROM OLD.target_epoch
        OR (NEW.signing_root IS NOT NULL AND NEW.signing_root IS DISTINCT FROM OLD.signing_root) THEN
        RAISE EXCEPTION 'ensign: a recorded attestation may only lose its root (validator id %, target %)',
            OLD.validator_id, OLD.target_epoch USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;

-- The genesis validators root is pinned once (a history of one chain never becomes another's).
CREATE FUNCTION guard_metadata() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.genesis_validators_root IS NOT NULL
        AND NEW.genesis_validators_root IS DISTINCT FROM OLD.genesis_validators_root THEN
        RAISE EXCEPTION 'ensign: genesis_validators_root is pinned' USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER ensign_guard BEFORE UPDATE ON low_watermarks
    FOR EACH ROW EXECUTE FUNCTION guard_low_watermarks();
CREATE TRIGGER ensign_guard BEFORE UPDATE ON signed_blocks
    FOR EACH ROW EXECUTE FUNCTION guard_signed_blocks();
CREATE TRIGGER ensign_guard BEFORE UPDATE ON signed_attestations
    FOR EACH ROW EXECUTE FUNCTION guard_signed_attestations();
CREATE TRIGGER ensign_guard BEFORE UPDATE ON metadata
    FOR EACH ROW EXECUTE FUNCTION guard_metadata();

-- Pruning, the only deletion (Web3Signer's DbPruner; store.rs `prune`): each function first
-- raises the validator's low watermark to the boundary, then deletes below it, so it can never
-- make a message signable that was refused before; a role may be granted EXECUTE on these and no
-- DELETE at all. They run with their owner's rights (the administrator who migrated).
CREATE FUNCTION prune_blocks_below(v BIGINT, below BIGINT) RETURNS BIGINT
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n BIGINT;
BEGIN
    INSERT INTO low_watermarks AS w (validator_id, slot) VALUES (v, below)
        ON CONFLICT (validator_id) DO UPDATE SET slot = GREATEST(w.slot, excluded.slot);
    DELETE FROM signed_blocks WHERE validator_id = v AND slot < below;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;

-- The source watermark rises to cover every row at or below the new target watermark (as
-- store.rs `prune` computes it), so deleting them cannot hide a surround vote.
CREATE FUNCTION prune_attestations_below(v BIGINT, below BIGINT) RETURNS BIGINT
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    s BIGINT;
    n BIGINT;
BEGIN
    SELECT COALESCE(MAX(source_epoch), 0) INTO s FROM signed_attestations
        WHERE validator_id = v AND target_epoch <= below;
    INSERT INTO low_watermarks AS w (validator_id, source_epoch, target_epoch) VALUES (v, s, below)
        ON CONFLICT (validator_id) DO UPDATE SET
            source_epoch = GREATEST(w.source_epoch, excluded.source_epoch),
            target_epoch = GREATEST(w.target_epoch, excluded.target_epoch);
    DELETE FROM signed_attestations WHERE validator_id = v AND target_epoch < below;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;

REVOKE ALL ON FUNCTION prune_blocks_below(BIGINT, BIGINT) FROM PUBLIC;
REVOKE ALL ON FUNCTION prune_attestations_below(BIGINT, BIGINT) FROM PUBLIC;
