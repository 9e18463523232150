//! Store-independent transaction logic. Each backend implements [`Txn`] over
//! one open transaction; the functions here run a whole decision (or import,
//! export, prune) inside it. The caller commits.

use std::collections::BTreeMap;

use crate::interchange::{self, Parsed, ParsedValidator};
use crate::rules::{self, LowWatermarks, SignedAttestation, SignedBlock};
use crate::{Error, HighWatermark, ImportSummary, Permit, PruneSummary, Pubkey, Refusal, Root};

/// Advisory lock kinds (PostgreSQL `pg_advisory_xact_lock(kind, id)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LockKind {
    Block = 1,
    Attestation = 2,
}

/// One open transaction. Slots and epochs are stored as signed 64-bit
/// integers; callers convert with [`to_i64`] first.
pub(crate) trait Txn {
    fn gvr(&mut self) -> Result<Option<Root>, Error>;
    /// Insert the GVR if none is recorded (no-op otherwise).
    fn insert_gvr_if_absent(&mut self, gvr: Root) -> Result<(), Error>;
    fn high_watermark(&mut self) -> Result<Option<HighWatermark>, Error>;
    fn set_high_watermark(&mut self, hw: Option<HighWatermark>) -> Result<(), Error>;
    /// Get or register a validator; returns its id.
    fn validator_id(&mut self, pk: &Pubkey) -> Result<i64, Error>;
    /// Serialise with every other transaction deciding for (kind, id). A no-op
    /// where the whole transaction is already exclusive (SQLite).
    fn lock(&mut self, kind: LockKind, id: i64) -> Result<(), Error>;
    fn enabled(&mut self, id: i64) -> Result<bool, Error>;
    fn set_enabled(&mut self, id: i64, enabled: bool) -> Result<(), Error>;
    fn blocks_at(&mut self, id: i64, slot: i64) -> Result<Vec<SignedBlock>, Error>;
    /// Attestations with the same target, or surrounding / surrounded by
    /// `(source, target)` ([`rules::attestation_is_relevant`]).
    fn relevant_attestations(
        &mut self,
        id: i64,
        source: i64,
        target: i64,
    ) -> Result<Vec<SignedAttestation>, Error>;
    fn low(&mut self, id: i64) -> Result<LowWatermarks, Error>;
    fn set_low(&mut self, id: i64, low: LowWatermarks) -> Result<(), Error>;
    fn insert_block(&mut self, id: i64, slot: i64, root: Option<Root>) -> Result<(), Error>;
    fn set_block_root(&mut self, id: i64, slot: i64, root: Option<Root>) -> Result<(), Error>;
    fn insert_attestation(
        &mut self,
        id: i64,
        source: i64,
        target: i64,
        root: Option<Root>,
    ) -> Result<(), Error>;
    fn set_attestation_root(
        &mut self,
        id: i64,
        target: i64,
        root: Option<Root>,
    ) -> Result<(), Error>;
    /// All validators `(id, pubkey)`, ordered by pubkey.
    fn validators(&mut self) -> Result<Vec<(i64, Pubkey)>, Error>;
    fn all_blocks(&mut self, id: i64) -> Result<Vec<SignedBlock>, Error>;
    fn all_attestations(&mut self, id: i64) -> Result<Vec<SignedAttestation>, Error>;
    fn delete_blocks_below(&mut self, id: i64, slot: i64) -> Result<u64, Error>;
    fn delete_attestations_below(&mut self, id: i64, target: i64) -> Result<u64, Error>;
    fn health(&mut self) -> Result<(), Error>;
}

/// u64 → i64 for storage; values above `i64::MAX` cannot be recorded.
pub(crate) fn to_i64(v: u64) -> Result<i64, Refusal> {
    i64::try_from(v).map_err(|_| Refusal::ValueTooLarge)
}

/// i64 from storage → u64 (stored values were converted from u64).
pub(crate) fn to_u64(v: i64) -> Result<u64, Error> {
    u64::try_from(v).map_err(|_| Error::Store(format!("negative slot/epoch {v} in database")))
}

/// Pin the GVR on first use; refuse any other (EIP-3076 metadata
/// `genesis_validators_root`: protection data is per chain).
pub(crate) fn check_gvr<T: Txn + ?Sized>(tx: &mut T, gvr: Root) -> Result<(), Error> {
    match tx.gvr()? {
        Some(pinned) if pinned == gvr => Ok(()),
        Some(_) => Err(Refusal::GenesisValidatorsRootMismatch.into()),
        None => {
            tx.insert_gvr_if_absent(gvr)?;
            // Another instance may have pinned a different root concurrently.
            match tx.gvr()? {
                Some(pinned) if pinned == gvr => Ok(()),
                Some(_) => Err(Refusal::GenesisValidatorsRootMismatch.into()),
                None => Err(Error::Store(
                    "genesis validators root was not recorded".into(),
                )),
            }
        }
    }
}

pub(crate) fn sign_block<T: Txn + ?Sized>(
    tx: &mut T,
    gvr: Root,
    pk: Pubkey,
    slot: u64,
    root: Root,
) -> Result<Permit, Error> {
    check_gvr(tx, gvr)?;
    let slot_i = to_i64(slot)?;
    let id = tx.validator_id(&pk)?;
    tx.lock(LockKind::Block, id)?;
    // Read under the lock: enable/disable takes the same locks.
    if !tx.enabled(id)? {
        return Err(Refusal::ValidatorDisabled.into());
    }
    rules::check_high_block(tx.high_watermark()?, slot)?;
    let history = tx.blocks_at(id, slot_i)?;
    let low = tx.low(id)?;
    let verdict = rules::check_block(&history, low.slot, slot, root)?;
    if verdict == Permit::New {
        tx.insert_block(id, slot_i, Some(root))?;
        let new_low = rules::low_after_block(low.slot, slot);
        if new_low != low.slot {
            tx.set_low(
                id,
                LowWatermarks {
                    slot: new_low,
                    ..low
                },
            )?;
        }
    }
    Ok(verdict)
}

pub(crate) fn sign_attestation<T: Txn + ?Sized>(
    tx: &mut T,
    gvr: Root,
    pk: Pubkey,
    source: u64,
    target: u64,
    root: Root,
) -> Result<Permit, Error> {
    check_gvr(tx, gvr)?;
    let (source_i, target_i) = (to_i64(source)?, to_i64(target)?);
    let id = tx.validator_id(&pk)?;
    tx.lock(LockKind::Attestation, id)?;
    if !tx.enabled(id)? {
        return Err(Refusal::ValidatorDisabled.into());
    }
    rules::check_high_attestation(tx.high_watermark()?, source, target)?;
    let history = if source <= target {
        tx.relevant_attestations(id, source_i, target_i)?
    } else {
        Vec::new() // refused by the rules before history matters
    };
    let low = tx.low(id)?;
    let verdict = rules::check_attestation(&history, low.epochs, source, target, root)?;
    if verdict == Permit::New {
        tx.insert_attestation(id, source_i, target_i, Some(root))?;
        let new_low = rules::low_after_attestation(low.epochs, source, target);
        if new_low != low.epochs {
            tx.set_low(
                id,
                LowWatermarks {
                    epochs: new_low,
                    ..low
                },
            )?;
        }
    }
    Ok(verdict)
}

fn import_value(v: u64) -> Result<i64, Error> {
    i64::try_from(v).map_err(|_| Error::Interchange(format!("value {v} is above i64::MAX")))
}

/// Import a parsed document inside the caller's transaction. On `Err` the
/// caller rolls back, so the import is all or nothing.
pub(crate) fn import<T: Txn + ?Sized>(tx: &mut T, parsed: &Parsed) -> Result<ImportSummary, Error> {
    check_gvr(tx, parsed.genesis_validators_root)?;
    // EIP-3076 allows the same pubkey in several `data` entries: merge them.
    let mut merged: BTreeMap<Pubkey, ParsedValidator> = BTreeMap::new();
    for v in &parsed.validators {
        let e = merged.entry(v.pubkey).or_insert_with(|| ParsedValidator {
            pubkey: v.pubkey,
            blocks: Vec::new(),
            attestations: Vec::new(),
        });
        e.blocks.extend_from_slice(&v.blocks);
        e.attestations.extend_from_slice(&v.attestations);
    }
    let mut summary = ImportSummary {
        validators: merged.len(),
        ..ImportSummary::default()
    };
    let mut with_ids = Vec::with_capacity(merged.len());
    for (pk, v) in merged {
        with_ids.push((tx.validator_id(&pk)?, v));
    }
    // Lock in a global order (id, kind) so concurrent imports cannot deadlock.
    with_ids.sort_by_key(|(id, _)| *id);
    for (id, _) in &with_ids {
        tx.lock(LockKind::Block, *id)?;
        tx.lock(LockKind::Attestation, *id)?;
    }
    for (id, v) in &with_ids {
        let id = *id;
        let mut low = tx.low(id)?;
        for &(slot, root) in &v.blocks {
            let slot_i = import_value(slot)?;
            let existing = tx.blocks_at(id, slot_i)?;
            match existing.first() {
                None => {
                    tx.insert_block(id, slot_i, root)?;
                    summary.blocks_inserted += 1;
                }
                Some(old) => {
                    let m = rules::merge_root(old.signing_root, root);
                    if m != old.signing_root {
                        tx.set_block_root(id, slot_i, m)?;
                        summary.conflicts += 1;
                    } else {
                        summary.unchanged += 1;
                    }
                }
            }
        }
        // Raise the slot watermark to the imported maximum: everything at or
        // below it that is not an identical repeat is refused afterwards, which
        // is what EIP-3076's minimal import guarantees and is safe even when
        // the exporting client's history had gaps.
        if let Some(max) = v.blocks.iter().map(|b| b.0).max() {
            low.slot = Some(low.slot.map_or(max, |l| l.max(max)));
        }
        for &(source, target, root) in &v.attestations {
            let (source_i, target_i) = (import_value(source)?, import_value(target)?);
            let existing = tx
                .relevant_attestations(id, source_i, target_i)?
                .into_iter()
                .find(|a| a.target_epoch == target);
            match existing {
                None => {
                    tx.insert_attestation(id, source_i, target_i, root)?;
                    summary.attestations_inserted += 1;
                }
                Some(old) => {
                    // A different source is a different message even if the
                    // roots were equal: treat it as a conflict (NULL root).
                    let m = if old.source_epoch == source {
                        rules::merge_root(old.signing_root, root)
                    } else {
                        None
                    };
                    if m != old.signing_root {
                        tx.set_attestation_root(id, target_i, m)?;
                        summary.conflicts += 1;
                    } else {
                        summary.unchanged += 1;
                    }
                }
            }
        }
        // Source and target maxima are taken independently (they may come
        // from different attestations), as in EIP-3076's minimal import.
        if !v.attestations.is_empty() {
            let max_s = v.attestations.iter().map(|a| a.0).max().unwrap_or(0);
            let max_t = v.attestations.iter().map(|a| a.1).max().unwrap_or(0);
            low.epochs = Some(match low.epochs {
                Some((s, t)) => (s.max(max_s), t.max(max_t)),
                None => (max_s, max_t),
            });
        }
        tx.set_low(id, low)?;
    }
    Ok(summary)
}

/// Everything recorded, as a v5 document.
pub(crate) fn export<T: Txn + ?Sized>(tx: &mut T) -> Result<String, Error> {
    let gvr = tx.gvr()?.ok_or_else(|| {
        Error::Interchange("nothing to export: no genesis validators root recorded yet".into())
    })?;
    let mut validators = Vec::new();
    for (id, pubkey) in tx.validators()? {
        let blocks = tx
            .all_blocks(id)?
            .into_iter()
            .map(|b| (b.slot, b.signing_root))
            .collect();
        let attestations = tx
            .all_attestations(id)?
            .into_iter()
            .map(|a| (a.source_epoch, a.target_epoch, a.signing_root))
            .collect();
        validators.push(ParsedValidator {
            pubkey,
            blocks,
            attestations,
        });
    }
    interchange::render(&Parsed {
        genesis_validators_root: gvr,
        validators,
    })
}

pub(crate) fn set_enabled<T: Txn + ?Sized>(
    tx: &mut T,
    pk: Pubkey,
    enabled: bool,
) -> Result<(), Error> {
    let id = tx.validator_id(&pk)?;
    tx.lock(LockKind::Block, id)?;
    tx.lock(LockKind::Attestation, id)?;
    tx.set_enabled(id, enabled)
}

/// The lowest `recorded` value at or above `threshold`: where a pruning watermark snaps up to.
/// `max`, the highest recorded value, always qualifies.
fn lowest_at_or_above(recorded: impl Iterator<Item = u64>, threshold: u64, max: u64) -> u64 {
    recorded.filter(|v| *v >= threshold).min().unwrap_or(max)
}

/// Per validator: raise the watermarks so that only the newest
/// `epochs_to_keep` epochs remain, snapped up onto a recorded message, then
/// delete everything below them (Web3Signer `DbPruner`). Safe because
/// messages below a watermark are refused anyway.
pub(crate) fn prune<T: Txn + ?Sized>(
    tx: &mut T,
    epochs_to_keep: u64,
    slots_per_epoch: u64,
) -> Result<PruneSummary, Error> {
    if epochs_to_keep == 0 {
        return Err(Error::Store(
            "prune: epochs_to_keep must be at least 1".into(),
        ));
    }
    let mut summary = PruneSummary::default();
    let ids: Vec<i64> = tx.validators()?.into_iter().map(|(id, _)| id).collect();
    for id in ids {
        tx.lock(LockKind::Block, id)?;
        tx.lock(LockKind::Attestation, id)?;
        let mut low = tx.low(id)?;
        let blocks = tx.all_blocks(id)?;
        if let Some(max) = blocks.iter().map(|b| b.slot).max() {
            let keep = epochs_to_keep.saturating_mul(slots_per_epoch.max(1));
            let threshold = max.saturating_sub(keep - 1);
            // Snap up onto the lowest recorded slot >= threshold (max itself
            // qualifies, so one always exists).
            let snapped = lowest_at_or_above(blocks.iter().map(|b| b.slot), threshold, max);
            let new_low = low.slot.map_or(snapped, |l| l.max(snapped));
            low.slot = Some(new_low);
            summary.blocks_deleted += tx.delete_blocks_below(id, to_i64(new_low)?)?;
        }
        let atts = tx.all_attestations(id)?;
        if let Some(max) = atts.iter().map(|a| a.target_epoch).max() {
            let threshold = max.saturating_sub(epochs_to_keep - 1);
            let snapped_t = lowest_at_or_above(atts.iter().map(|a| a.target_epoch), threshold, max);
            let new_t = low.epochs.map_or(snapped_t, |(_, t)| t.max(snapped_t));
            // The source watermark covers every row at or below the new target
            // watermark, so deleting them cannot hide a surround.
            let max_s_below = atts
                .iter()
                .filter(|a| a.target_epoch <= new_t)
                .map(|a| a.source_epoch)
                .max()
                .unwrap_or(0);
            let new_s = low.epochs.map_or(max_s_below, |(s, _)| s.max(max_s_below));
            low.epochs = Some((new_s, new_t));
            summary.attestations_deleted += tx.delete_attestations_below(id, to_i64(new_t)?)?;
        }
        tx.set_low(id, low)?;
    }
    Ok(summary)
}

/// SQL shared by both backends, written with SQLite's `?N` placeholders;
/// the PostgreSQL store rewrites them to `$N` ([`pg_placeholders`]).
pub(crate) mod sql {
    pub const GVR: &str = "SELECT genesis_validators_root FROM metadata WHERE id = 1";
    pub const INSERT_GVR: &str =
        "INSERT INTO metadata (id, genesis_validators_root) VALUES (1, ?1) \
        ON CONFLICT (id) DO UPDATE SET genesis_validators_root = excluded.genesis_validators_root \
        WHERE metadata.genesis_validators_root IS NULL";
    pub const HIGH: &str =
        "SELECT high_watermark_epoch, high_watermark_slot FROM metadata WHERE id = 1";
    pub const SET_HIGH: &str =
        "INSERT INTO metadata (id, high_watermark_epoch, high_watermark_slot) VALUES (1, ?1, ?2) \
        ON CONFLICT (id) DO UPDATE SET high_watermark_epoch = excluded.high_watermark_epoch, \
        high_watermark_slot = excluded.high_watermark_slot";
    pub const VALIDATOR_ID: &str = "SELECT id FROM validators WHERE public_key = ?1";
    pub const INSERT_VALIDATOR: &str = "INSERT INTO validators (public_key) VALUES (?1) ON CONFLICT (public_key) DO NOTHING RETURNING id";
    pub const ENABLED: &str = "SELECT enabled FROM validators WHERE id = ?1";
    pub const SET_ENABLED: &str = "UPDATE validators SET enabled = ?2 WHERE id = ?1";
    pub const BLOCKS_AT: &str =
        "SELECT slot, signing_root FROM signed_blocks WHERE validator_id = ?1 AND slot = ?2";
    // Three disjoint index-friendly parts: same target; recorded target above
    // (can surround the new vote); recorded source above (can be surrounded).
    pub const RELEVANT_ATTS: &str =
        "SELECT source_epoch, target_epoch, signing_root FROM signed_attestations \
            WHERE validator_id = ?1 AND target_epoch = ?3 \
        UNION ALL SELECT source_epoch, target_epoch, signing_root FROM signed_attestations \
            WHERE validator_id = ?1 AND target_epoch > ?3 AND source_epoch < ?2 \
        UNION ALL SELECT source_epoch, target_epoch, signing_root FROM signed_attestations \
            WHERE validator_id = ?1 AND source_epoch > ?2 AND target_epoch < ?3";
    pub const LOW: &str =
        "SELECT slot, source_epoch, target_epoch FROM low_watermarks WHERE validator_id = ?1";
    pub const SET_LOW: &str =
        "INSERT INTO low_watermarks (validator_id, slot, source_epoch, target_epoch) \
        VALUES (?1, ?2, ?3, ?4) ON CONFLICT (validator_id) DO UPDATE SET slot = excluded.slot, \
        source_epoch = excluded.source_epoch, target_epoch = excluded.target_epoch";
    pub const INSERT_BLOCK: &str =
        "INSERT INTO signed_blocks (validator_id, slot, signing_root) VALUES (?1, ?2, ?3)";
    pub const SET_BLOCK_ROOT: &str =
        "UPDATE signed_blocks SET signing_root = ?3 WHERE validator_id = ?1 AND slot = ?2";
    pub const INSERT_ATT: &str =
        "INSERT INTO signed_attestations (validator_id, source_epoch, target_epoch, signing_root) \
        VALUES (?1, ?2, ?3, ?4)";
    pub const SET_ATT_ROOT: &str = "UPDATE signed_attestations SET signing_root = ?3 WHERE validator_id = ?1 AND target_epoch = ?2";
    pub const VALIDATORS: &str = "SELECT id, public_key FROM validators ORDER BY public_key";
    pub const ALL_BLOCKS: &str =
        "SELECT slot, signing_root FROM signed_blocks WHERE validator_id = ?1 ORDER BY slot";
    pub const ALL_ATTS: &str =
        "SELECT source_epoch, target_epoch, signing_root FROM signed_attestations \
        WHERE validator_id = ?1 ORDER BY target_epoch";
    pub const DELETE_BLOCKS_BELOW: &str =
        "DELETE FROM signed_blocks WHERE validator_id = ?1 AND slot < ?2";
    pub const DELETE_ATTS_BELOW: &str =
        "DELETE FROM signed_attestations WHERE validator_id = ?1 AND target_epoch < ?2";
}

/// `?N` → `$N` for PostgreSQL.
pub(crate) fn pg_placeholders(sql: &str) -> String {
    sql.replace('?', "$")
}

pub(crate) fn root_from_bytes(b: Option<Vec<u8>>) -> Result<Option<Root>, Error> {
    b.map(|v| {
        <[u8; 32]>::try_from(v.as_slice())
            .map(Root)
            .map_err(|_| Error::Store(format!("stored root has {} bytes, expected 32", v.len())))
    })
    .transpose()
}

pub(crate) fn pubkey_from_bytes(v: Vec<u8>) -> Result<Pubkey, Error> {
    <[u8; 48]>::try_from(v.as_slice())
        .map(Pubkey)
        .map_err(|_| Error::Store(format!("stored pubkey has {} bytes, expected 48", v.len())))
}

pub(crate) fn opt_u64(v: Option<i64>) -> Result<Option<u64>, Error> {
    v.map(to_u64).transpose()
}

pub(crate) fn opt_i64(v: Option<u64>) -> Result<Option<i64>, Error> {
    v.map(|x| to_i64(x).map_err(Error::from)).transpose()
}

pub(crate) fn low_from_row(
    slot: Option<i64>,
    s: Option<i64>,
    t: Option<i64>,
) -> Result<LowWatermarks, Error> {
    Ok(LowWatermarks {
        slot: opt_u64(slot)?,
        epochs: match (opt_u64(s)?, opt_u64(t)?) {
            (Some(s), Some(t)) => Some((s, t)),
            _ => None,
        },
    })
}
