//! A second line of defence for stores that may lie: [`MemoryWitness`] keeps, in memory, a record
//! of every block and attestation it permitted since it was created, and refuses anything that
//! conflicts with that record whatever the wrapped store says.
//!
//! In enclave mode the slashing database is reached through the parent instance, which is treated
//! as an attacker: it can answer "nothing recorded" in the database's place or delete history.
//! The enclave cannot know what the database held before it started, but it does know what it
//! signed itself since then. The witness turns that knowledge into refusals.
//!
//! # Invariants
//!
//! * **Memory first, the store second, the record last.** A signing check is first decided by
//!   the pure rules ([`rules::check_block`], [`rules::check_attestation`]) over the in-memory
//!   history of the `(genesis validators root, pubkey)`; only when memory permits is the wrapped
//!   store asked, and only when the store also permits is the message added to memory. The memory
//!   therefore holds exactly what was permitted (and so possibly signed) since start.
//! * **Atomic per validator.** One lock per `(genesis validators root, pubkey)` is held from the
//!   memory check through the store's decision to the memory record, so two concurrent conflicting
//!   requests yield at most one permit even when the store permits both. Different validators take
//!   different locks; the map of locks is held only to find or create an entry, never across the
//!   store's decision.
//! * **Same verdicts as the rules, since start.** The per-validator state is a
//!   [`rules::ValidatorModel`] updated as the stores update theirs: new messages are appended and
//!   the first one sets the low watermarks (EIP-3076 conditions 3-5). Over a store that permits
//!   everything, the witness answers exactly what the model answers for the requests made since
//!   start; identical repeats are `SameAsRecorded` (EIP-3076 conditions 2 and 5, repeat
//!   exemption).
//! * **Stricter, never weaker, than an honest store.** An honest store holds at least what memory
//!   holds, so it refuses every conflict memory refuses. Memory is stricter in two places, both
//!   safe because refusing more is safe: a message at or below the first one signed since start
//!   is refused (it may conflict with history the enclave cannot see), and so is one at or below
//!   the bound's watermark (below).
//! * **Bounded.** Per validator at most [`WitnessLimits::blocks`] blocks and
//!   [`WitnessLimits::attestations`] attestations are kept. Dropping one raises the low
//!   watermarks over it first, as the stores' pruning does: the slot watermark to at least the
//!   dropped slot; the target watermark to at least the dropped target and the source watermark to
//!   at least its source. The rules refuse every block at or below the slot watermark and every
//!   attestation with `target <= low target` or `source < low source`; no such attestation can
//!   surround, be surrounded by, or double-vote against a dropped one (whose source is `<=` low
//!   source and whose target is `<=` low target). So a dropped message can only cause refusals,
//!   never a conflicting permit. Validators with nothing recorded are not kept.
//! * **Only signing changes memory.** Imports, exports, pruning, high watermarks and enabling or
//!   disabling a validator go to the wrapped store and leave memory as it is: none of them can
//!   make the witness permit what it refused before.
//!
//! * **The store can be replaced, memory cannot.** The enclave opens its database at `Init` and
//!   again when credentials rotate: the witness may be made before any store
//!   ([`MemoryWitness::unopened`]; every call then fails as a store fault, so nothing is
//!   permitted) and takes each new store with [`MemoryWitness::replace_store`]. The record of
//!   what was permitted spans all of them. Each call uses the store current when it began (an
//!   atomic swap cell), so calls in flight finish on the old one.
//!
//! A memory conflict that the wrapped store permits is logged at `ERROR`: the database and the
//! enclave disagree, so the database has lost or is withholding history. A message memory
//! recorded as signed that the store calls new is logged at `ERROR` too. Log lines carry the
//! public key, slot or epochs and the reason, never a secret.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwapOption;

use crate::rules::{self, SignedAttestation, SignedBlock, ValidatorModel};
use crate::{
    Check, Error, HighWatermark, ImportSummary, PendingVerdict, Permit, PruneSummary, Pubkey,
    Refusal, Root, SlashingProtection,
};

/// How much history [`MemoryWitness`] keeps per validator (see the module's "Bounded").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WitnessLimits {
    /// Most recent block proposals kept (at least 1).
    pub blocks: usize,
    /// Attestations with the highest targets kept (at least 1).
    pub attestations: usize,
}

impl Default for WitnessLimits {
    /// 16 blocks (months of proposals) and 64 attestations (64 epochs, about 6.8 hours on
    /// mainnet): roughly 4 KiB per validator. Validator clients sign in increasing order, so
    /// the raised watermarks refuse nothing they send in normal operation.
    fn default() -> Self {
        Self {
            blocks: 16,
            attestations: 64,
        }
    }
}

/// What memory keys its history by: protection data is per chain (EIP-3076 metadata
/// `genesis_validators_root`) and per validator.
type Key = (Root, Pubkey);

/// Wraps a [`SlashingProtection`] store with an in-memory record of what was permitted since
/// start (see the module documentation).
pub struct MemoryWitness {
    /// The wrapped store (empty until one is opened). `ArcSwapOption` needs a sized `T`, hence
    /// the `Arc` around the trait object's `Arc`.
    inner: ArcSwapOption<Arc<dyn SlashingProtection>>,
    limits: WitnessLimits,
    validators: Mutex<HashMap<Key, Arc<Mutex<ValidatorModel>>>>,
}

/// True for refusals that say "a recorded message conflicts" (slashable), as opposed to a
/// watermark or an invalid vote.
fn is_conflict(r: Refusal) -> bool {
    matches!(
        r,
        Refusal::DoubleBlockProposal
            | Refusal::DoubleVote
            | Refusal::SurroundingVote
            | Refusal::SurroundedVote
    )
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The state is only changed after the wrapped store answered, by code that does not panic
    // half-way; a panic elsewhere (in the store) leaves it consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn is_empty(m: &ValidatorModel) -> bool {
    m.blocks.is_empty() && m.attestations.is_empty() && m.low == rules::LowWatermarks::default()
}

/// Memory's verdict for `check` (the pure rules over the validator's recorded history).
fn check_memory(m: &ValidatorModel, check: Check, root: Root) -> Result<Permit, Refusal> {
    match check {
        Check::Block { slot } => rules::check_block(&m.blocks, m.low.slot, slot, root),
        Check::Attestation {
            source_epoch,
            target_epoch,
        } => rules::check_attestation(
            &m.attestations,
            m.low.epochs,
            source_epoch,
            target_epoch,
            root,
        ),
    }
}

/// Records a message memory found `New`, as the stores do (append; the first message sets the
/// low watermarks), then drops the oldest entries over `limits` after raising the watermarks over
/// them (module documentation, "Bounded").
fn record(m: &mut ValidatorModel, limits: WitnessLimits, check: Check, root: Root) {
    match check {
        Check::Block { slot } => {
            m.blocks.push(SignedBlock {
                slot,
                signing_root: Some(root),
            });
            m.low.slot = rules::low_after_block(m.low.slot, slot);
            while m.blocks.len() > limits.blocks.max(1) {
                let Some(i) = (0..m.blocks.len()).min_by_key(|&i| m.blocks[i].slot) else {
                    break;
                };
                let dropped = m.blocks.swap_remove(i);
                m.low.slot = Some(m.low.slot.map_or(dropped.slot, |l| l.max(dropped.slot)));
            }
        }
        Check::Attestation {
            source_epoch,
            target_epoch,
        } => {
            m.attestations.push(SignedAttestation {
                source_epoch,
                target_epoch,
                signing_root: Some(root),
            });
            m.low.epochs = rules::low_after_attestation(m.low.epochs, source_epoch, target_epoch);
            while m.attestations.len() > limits.attestations.max(1) {
                let Some(i) =
                    (0..m.attestations.len()).min_by_key(|&i| m.attestations[i].target_epoch)
                else {
                    break;
                };
                let d = m.attestations.swap_remove(i);
                m.low.epochs = Some(match m.low.epochs {
                    Some((s, t)) => (s.max(d.source_epoch), t.max(d.target_epoch)),
                    None => (d.source_epoch, d.target_epoch),
                });
            }
        }
    }
}

/// The check's numbers for a log line.
fn describe(check: Check) -> String {
    match check {
        Check::Block { slot } => format!("block at slot {slot}"),
        Check::Attestation {
            source_epoch,
            target_epoch,
        } => format!("attestation source epoch {source_epoch} target epoch {target_epoch}"),
    }
}

impl MemoryWitness {
    /// Wraps `inner` with the default [`WitnessLimits`]. Keep one witness for the signer's
    /// whole life and give it each new store with [`replace_store`](Self::replace_store) (as the
    /// enclave does at Init), so that the record survives a reconnection.
    pub fn new(inner: Arc<dyn SlashingProtection>) -> Self {
        Self::with_limits(inner, WitnessLimits::default())
    }

    /// Wraps `inner`, keeping per validator at most what `limits` says.
    pub fn with_limits(inner: Arc<dyn SlashingProtection>, limits: WitnessLimits) -> Self {
        let witness = Self::unopened(limits);
        witness.replace_store(inner);
        witness
    }

    /// A witness with no store yet: every call fails as a store fault until
    /// [`replace_store`](Self::replace_store) gives it one.
    pub fn unopened(limits: WitnessLimits) -> Self {
        Self {
            inner: ArcSwapOption::empty(),
            limits,
            validators: Mutex::new(HashMap::new()),
        }
    }

    /// Puts `store` in place of the current one (memory is kept); returns the previous one.
    pub fn replace_store(
        &self,
        store: Arc<dyn SlashingProtection>,
    ) -> Option<Arc<dyn SlashingProtection>> {
        self.inner
            .swap(Some(Arc::new(store)))
            .map(|old| (*old).clone())
    }

    /// The wrapped store, or the store fault every call reports before one is opened.
    pub fn inner(&self) -> Result<Arc<dyn SlashingProtection>, Error> {
        match self.inner.load_full() {
            Some(store) => Ok((*store).clone()),
            None => Err(Error::Store(
                "the database is not open yet: the enclave opens it at Init, with the \
                 credentials ensign-host sends"
                    .into(),
            )),
        }
    }

    /// How many `(genesis validators root, pubkey)` pairs have a record in memory (plus any
    /// whose check is being decided right now).
    pub fn validators_remembered(&self) -> usize {
        lock(&self.validators).len()
    }

    fn entry(&self, key: Key) -> Arc<Mutex<ValidatorModel>> {
        lock(&self.validators).entry(key).or_default().clone()
    }

    /// Removes `key`'s entry if nothing was recorded for it and nobody else holds it, so that
    /// refused requests (another chain's root, say) leave nothing behind.
    fn release(&self, key: Key, entry: Arc<Mutex<ValidatorModel>>) {
        let mut map = lock(&self.validators);
        // Under the map lock nobody can take a new reference: the map's and ours are the only
        // ones when the count is 2.
        if Arc::strong_count(&entry) == 2 && entry.try_lock().is_ok_and(|m| is_empty(&m)) {
            map.remove(&key);
        }
    }

    /// The whole decision under the validator's lock: memory, then the wrapped store, then the
    /// record.
    fn witness(
        &self,
        gvr: Root,
        pubkey: Pubkey,
        check: Check,
        root: Root,
    ) -> Result<Permit, Error> {
        let entry = self.entry((gvr, pubkey));
        let verdict = {
            let mut memory = lock(&entry);
            self.decide_locked(&mut memory, gvr, pubkey, check, root)
        };
        self.release((gvr, pubkey), entry);
        verdict
    }

    fn decide_locked(
        &self,
        memory: &mut ValidatorModel,
        gvr: Root,
        pubkey: Pubkey,
        check: Check,
        root: Root,
    ) -> Result<Permit, Error> {
        let inner = self.inner()?;
        let remembered = match check_memory(memory, check, root) {
            Ok(p) => p,
            Err(refusal) if is_conflict(refusal) => {
                // Ask the store too, only to learn whether it agrees: an honest store holds
                // everything memory holds and refuses as well (recording nothing). One that
                // permits has lost or is hiding history; what it recorded is never signed.
                if inner.decide(gvr, pubkey, check, root).is_ok() {
                    tracing::error!(
                        pubkey = ?pubkey,
                        reason = %refusal,
                        "slashing protection: the database permitted a {} that conflicts with \
                         one this enclave signed since it started; refused. The database and \
                         the enclave disagree: the database has lost or is withholding history",
                        describe(check)
                    );
                }
                return Err(refusal.into());
            }
            Err(refusal) => {
                tracing::warn!(
                    pubkey = ?pubkey,
                    reason = %refusal,
                    "slashing protection: {} refused by the enclave's record of what it signed \
                     since it started (the database was not asked)",
                    describe(check)
                );
                return Err(refusal.into());
            }
        };
        let stored = inner.decide(gvr, pubkey, check, root)?;
        match remembered {
            Permit::New => {
                record(memory, self.limits, check, root);
                Ok(stored)
            }
            Permit::SameAsRecorded => {
                if stored == Permit::New {
                    tracing::error!(
                        pubkey = ?pubkey,
                        "slashing protection: the database does not hold a {} this enclave \
                         signed since it started (it answered \"new\"); permitted as an \
                         identical repeat. The database and the enclave disagree: the database \
                         has lost or is withholding history",
                        describe(check)
                    );
                }
                Ok(Permit::SameAsRecorded)
            }
        }
    }
}

impl SlashingProtection for MemoryWitness {
    fn decide(
        &self,
        gvr: Root,
        pubkey: Pubkey,
        check: Check,
        signing_root: Root,
    ) -> Result<Permit, Error> {
        self.witness(gvr, pubkey, check, signing_root)
    }

    /// Always `None`: callers use [`decide`](SlashingProtection::decide) on a blocking thread.
    /// The validator's lock must be held from the memory check until the verdict is recorded;
    /// a pipelined submission would answer later on the store's own thread, so the lock would
    /// have to be carried there. Keeping the decision blocking keeps the check-then-record
    /// atomic by construction. (PostgreSQL, the enclave's store, has no pipelined path either.)
    fn submit(
        &self,
        _gvr: Root,
        _pubkey: Pubkey,
        _check: Check,
        _signing_root: Root,
    ) -> Option<PendingVerdict> {
        None
    }

    fn health_check(&self) -> Result<(), Error> {
        self.inner()?.health_check()
    }

    fn high_watermark(&self) -> Result<Option<HighWatermark>, Error> {
        self.inner()?.high_watermark()
    }

    fn set_high_watermark(&self, hw: Option<HighWatermark>) -> Result<(), Error> {
        self.inner()?.set_high_watermark(hw)
    }

    /// Goes to the wrapped store only: an import can add history there but cannot remove any
    /// from memory.
    fn import_interchange(&self, json: &str) -> Result<ImportSummary, Error> {
        self.inner()?.import_interchange(json)
    }

    fn export_interchange(&self) -> Result<String, Error> {
        self.inner()?.export_interchange()
    }

    fn genesis_validators_root(&self) -> Result<Option<Root>, Error> {
        self.inner()?.genesis_validators_root()
    }

    fn pin_genesis_validators_root(&self, gvr: Root) -> Result<(), Error> {
        self.inner()?.pin_genesis_validators_root(gvr)
    }

    fn set_validator_enabled(&self, pubkey: Pubkey, enabled: bool) -> Result<(), Error> {
        self.inner()?.set_validator_enabled(pubkey, enabled)
    }

    /// Prunes the wrapped store; memory keeps its own bound ([`WitnessLimits`]).
    fn prune(&self, epochs_to_keep: u64, slots_per_epoch: u64) -> Result<PruneSummary, Error> {
        self.inner()?.prune(epochs_to_keep, slots_per_epoch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: Root = Root([1; 32]);
    const TWO: WitnessLimits = WitnessLimits {
        blocks: 2,
        attestations: 2,
    };

    fn att(s: u64, t: u64) -> Check {
        Check::Attestation {
            source_epoch: s,
            target_epoch: t,
        }
    }

    #[test]
    fn the_bound_drops_the_oldest_blocks_under_a_raised_watermark() {
        let mut m = ValidatorModel::default();
        for slot in [5, 7, 6, 9] {
            assert_eq!(check_memory(&m, Check::Block { slot }, R), Ok(Permit::New));
            record(&mut m, TWO, Check::Block { slot }, R);
            assert!(m.blocks.len() <= 2);
        }
        let mut kept: Vec<u64> = m.blocks.iter().map(|b| b.slot).collect();
        kept.sort_unstable();
        assert_eq!(kept, [7, 9]);
        assert_eq!(m.low.slot, Some(6));
        // A dropped block's identical repeat is refused now: refusing more is safe.
        assert_eq!(
            check_memory(&m, Check::Block { slot: 6 }, R),
            Err(Refusal::SlotNotAboveLowWatermark)
        );
        assert_eq!(
            check_memory(&m, Check::Block { slot: 7 }, R),
            Ok(Permit::SameAsRecorded)
        );
        assert_eq!(
            check_memory(&m, Check::Block { slot: 8 }, R),
            Ok(Permit::New)
        );
    }

    #[test]
    fn the_bound_drops_the_lowest_targets_under_raised_watermarks() {
        let mut m = ValidatorModel::default();
        for (s, t) in [(0, 1), (1, 2), (1, 3), (3, 4)] {
            assert_eq!(check_memory(&m, att(s, t), R), Ok(Permit::New));
            record(&mut m, TWO, att(s, t), R);
            assert!(m.attestations.len() <= 2);
        }
        let mut kept: Vec<(u64, u64)> = m
            .attestations
            .iter()
            .map(|a| (a.source_epoch, a.target_epoch))
            .collect();
        kept.sort_unstable();
        assert_eq!(kept, [(1, 3), (3, 4)]);
        // Source: the highest dropped source; target: the highest dropped target.
        assert_eq!(m.low.epochs, Some((1, 2)));
        assert_eq!(
            check_memory(&m, att(1, 2), R),
            Err(Refusal::TargetNotAboveLowWatermark)
        );
        assert_eq!(
            check_memory(&m, att(0, 5), R),
            Err(Refusal::SurroundingVote)
        );
        assert_eq!(check_memory(&m, att(4, 5), R), Ok(Permit::New));
    }

    #[test]
    fn an_unopened_witness_refuses_then_remembers_across_stores() {
        let w = MemoryWitness::unopened(WitnessLimits::default());
        let (pk, vote) = (Pubkey([2; 48]), att(1, 2));
        let e = w.health_check().unwrap_err();
        assert!(e.to_string().contains("not open yet"), "{e}");
        let e = w.decide(R, pk, vote, Root([3; 32])).unwrap_err();
        assert!(matches!(e, Error::Store(_)), "{e}");

        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let open = |d: &tempfile::TempDir| {
            crate::open(&crate::StoreConfig::Sqlite {
                path: d.path().join("sp.sqlite"),
                init: false,
            })
            .unwrap()
        };
        assert!(w.replace_store(open(&dirs[0])).is_none());
        w.health_check().unwrap();
        assert_eq!(w.decide(R, pk, vote, Root([3; 32])).unwrap(), Permit::New);
        // A second, empty store (a host that swapped databases): memory still refuses the
        // double vote, and the first store is handed back.
        assert!(w.replace_store(open(&dirs[1])).is_some());
        let double = w.decide(R, pk, vote, Root([4; 32])).unwrap_err();
        assert!(double.is_refusal(), "{double}");
    }

    #[test]
    fn only_slashable_refusals_count_as_conflicts() {
        assert!(is_conflict(Refusal::DoubleBlockProposal));
        assert!(is_conflict(Refusal::SurroundedVote));
        assert!(!is_conflict(Refusal::SlotNotAboveLowWatermark));
        assert!(!is_conflict(Refusal::SourceExceedsTarget));
    }
}
