//! Pure slashing-protection rules: plain functions over numbers and roots.
//!
//! Both stores narrow the history with SQL to the rows that can matter (same
//! slot; same target or a surround candidate) and then ask these functions for
//! the verdict, so the rules live in exactly one place and the exhaustive tests
//! can compare every store against them.
//!
//! Sources: EIP-3076 "Conditions" 1-5 and the consensus spec's
//! `is_slashable_attestation_data` (phase0 beacon-chain.md, "Predicates").

use crate::{Permit, Refusal, Root};

/// A block proposal in a validator's history. `signing_root == None` is an
/// imported entry without a root (or two conflicting imported roots): it never
/// equals any new root, `0x00..00` included (EIP-3076: "signing_root" is
/// optional; a repeat is only recognised "as determined by the signing_root").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignedBlock {
    pub slot: u64,
    pub signing_root: Option<Root>,
}

/// An attestation in a validator's history. See [`SignedBlock`] for `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignedAttestation {
    pub source_epoch: u64,
    pub target_epoch: u64,
    pub signing_root: Option<Root>,
}

/// Per-validator low watermarks. Anything at or below them that is not an
/// identical repeat of a recorded message is refused (EIP-3076 conditions 3-5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LowWatermarks {
    pub slot: Option<u64>,
    /// `(source_epoch, target_epoch)`; both set or both absent.
    pub epochs: Option<(u64, u64)>,
}

fn is_repeat(recorded: Option<Root>, new: Root) -> bool {
    recorded == Some(new)
}

/// Verdict for proposing a block at `slot` with `signing_root`.
///
/// `history` must contain at least every recorded block at `slot` (it may
/// contain more; other slots are ignored). `low_watermark` is the validator's
/// block low watermark.
///
/// Order:
/// 1. a recorded block at the same slot: identical root ⇒ `SameAsRecorded`
///    (EIP-3076 condition 2's repeat exemption), otherwise (different or NULL
///    root) ⇒ `DoubleBlockProposal` (phase0 `process_proposer_slashing`);
/// 2. `slot <= low_watermark` ⇒ refused (EIP-3076 condition 3: "slot <= min
///    slot", the watermark being that minimum or higher after import/pruning);
/// 3. otherwise `New`.
pub fn check_block(
    history: &[SignedBlock],
    low_watermark: Option<u64>,
    slot: u64,
    signing_root: Root,
) -> Result<Permit, Refusal> {
    let mut same_slot = history.iter().filter(|b| b.slot == slot).peekable();
    if same_slot.peek().is_some() {
        return if same_slot.all(|b| is_repeat(b.signing_root, signing_root)) {
            Ok(Permit::SameAsRecorded)
        } else {
            Err(Refusal::DoubleBlockProposal)
        };
    }
    if let Some(low) = low_watermark {
        if slot <= low {
            return Err(Refusal::SlotNotAboveLowWatermark);
        }
    }
    Ok(Permit::New)
}

/// True if `a` surrounds `b` in the sense of `is_slashable_attestation_data`
/// (`a.source < b.source && b.target < a.target`).
pub fn surrounds(a_source: u64, a_target: u64, b_source: u64, b_target: u64) -> bool {
    a_source < b_source && b_target < a_target
}

/// True if a recorded attestation matters for a new `(source, target)`: same
/// target, or a surround in either direction. Stores select exactly these rows.
pub fn attestation_is_relevant(rec: &SignedAttestation, source: u64, target: u64) -> bool {
    rec.target_epoch == target
        || surrounds(rec.source_epoch, rec.target_epoch, source, target)
        || surrounds(source, target, rec.source_epoch, rec.target_epoch)
}

/// Verdict for an attestation `(source, target)` with `signing_root`.
///
/// `history` must contain at least every recorded attestation for which
/// [`attestation_is_relevant`] holds. `low` is `(low source, low target)`.
///
/// Order (surround before repeat, as Web3Signer: an identical repeat that is
/// surrounded is still refused):
/// 1. `source > target` ⇒ refused (an invalid vote; EIP-3076 test
///    `single_validator_source_greater_than_target`);
/// 2. a recorded vote surrounds the new one ⇒ `SurroundedVote`; the new one
///    surrounds a recorded vote ⇒ `SurroundingVote` (spec
///    `is_slashable_attestation_data`, second clause; EIP-3076 condition 4's
///    intent);
/// 3. a recorded vote with the same target: identical root ⇒ `SameAsRecorded`,
///    otherwise ⇒ `DoubleVote` (spec first clause; EIP-3076 condition 5's
///    repeat exemption);
/// 4. `source < low source` ⇒ refused (EIP-3076 condition 4);
/// 5. `target <= low target` ⇒ refused (EIP-3076 condition 5);
/// 6. otherwise `New`.
pub fn check_attestation(
    history: &[SignedAttestation],
    low: Option<(u64, u64)>,
    source: u64,
    target: u64,
    signing_root: Root,
) -> Result<Permit, Refusal> {
    if source > target {
        return Err(Refusal::SourceExceedsTarget);
    }
    if history
        .iter()
        .any(|a| surrounds(a.source_epoch, a.target_epoch, source, target))
    {
        return Err(Refusal::SurroundedVote);
    }
    if history
        .iter()
        .any(|a| surrounds(source, target, a.source_epoch, a.target_epoch))
    {
        return Err(Refusal::SurroundingVote);
    }
    let mut same_target = history
        .iter()
        .filter(|a| a.target_epoch == target)
        .peekable();
    if same_target.peek().is_some() {
        return if same_target.all(|a| is_repeat(a.signing_root, signing_root)) {
            Ok(Permit::SameAsRecorded)
        } else {
            Err(Refusal::DoubleVote)
        };
    }
    if let Some((low_source, low_target)) = low {
        if source < low_source {
            return Err(Refusal::SourceBelowLowWatermark);
        }
        if target <= low_target {
            return Err(Refusal::TargetNotAboveLowWatermark);
        }
    }
    Ok(Permit::New)
}

/// Refuses messages at or beyond the optional global high watermark
/// (Web3Signer `watermark-repair --set-high-watermark`).
pub fn check_high_block(high: Option<crate::HighWatermark>, slot: u64) -> Result<(), Refusal> {
    match high.and_then(|h| h.slot) {
        Some(h) if slot >= h => Err(Refusal::AtOrAboveHighWatermark),
        _ => Ok(()),
    }
}

/// See [`check_high_block`]; source and target are both compared.
pub fn check_high_attestation(
    high: Option<crate::HighWatermark>,
    source: u64,
    target: u64,
) -> Result<(), Refusal> {
    match high.and_then(|h| h.epoch) {
        Some(h) if source >= h || target >= h => Err(Refusal::AtOrAboveHighWatermark),
        _ => Ok(()),
    }
}

/// The low watermarks after a successful `New` insert: set when absent (the
/// first message a validator signs is its lower bound, as Web3Signer and
/// Lighthouse's `MIN(slot)`), never moved otherwise.
pub fn low_after_block(low: Option<u64>, slot: u64) -> Option<u64> {
    Some(low.unwrap_or(slot))
}

/// See [`low_after_block`].
pub fn low_after_attestation(
    low: Option<(u64, u64)>,
    source: u64,
    target: u64,
) -> Option<(u64, u64)> {
    Some(low.unwrap_or((source, target)))
}

/// Merge of a recorded root with an imported one at the same slot/target:
/// equal roots stay, anything else becomes NULL ("conflicts with everything"),
/// because two different messages are then known to exist there.
pub fn merge_root(existing: Option<Root>, incoming: Option<Root>) -> Option<Root> {
    match (existing, incoming) {
        (Some(a), Some(b)) if a == b => Some(a),
        _ => None,
    }
}

/// In-memory reference model of one validator: the rules plus the state
/// updates the stores perform. Used by the exhaustive agreement tests.
#[derive(Debug, Clone, Default)]
pub struct ValidatorModel {
    pub blocks: Vec<SignedBlock>,
    pub attestations: Vec<SignedAttestation>,
    pub low: LowWatermarks,
}

impl ValidatorModel {
    /// Check and, when `New`, record.
    pub fn sign_block(&mut self, slot: u64, root: Root) -> Result<Permit, Refusal> {
        let v = check_block(&self.blocks, self.low.slot, slot, root)?;
        if v == Permit::New {
            self.blocks.push(SignedBlock {
                slot,
                signing_root: Some(root),
            });
            self.low.slot = low_after_block(self.low.slot, slot);
        }
        Ok(v)
    }

    /// Check and, when `New`, record.
    pub fn sign_attestation(
        &mut self,
        source: u64,
        target: u64,
        root: Root,
    ) -> Result<Permit, Refusal> {
        let v = check_attestation(&self.attestations, self.low.epochs, source, target, root)?;
        if v == Permit::New {
            self.attestations.push(SignedAttestation {
                source_epoch: source,
                target_epoch: target,
                signing_root: Some(root),
            });
            self.low.epochs = low_after_attestation(self.low.epochs, source, target);
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Root = Root([1; 32]);
    const B: Root = Root([2; 32]);
    const ZERO: Root = Root([0; 32]);

    fn blk(slot: u64, r: Option<Root>) -> SignedBlock {
        SignedBlock {
            slot,
            signing_root: r,
        }
    }
    fn att(s: u64, t: u64, r: Option<Root>) -> SignedAttestation {
        SignedAttestation {
            source_epoch: s,
            target_epoch: t,
            signing_root: r,
        }
    }

    #[test]
    fn block_rules() {
        let h = [blk(10, Some(A)), blk(12, None)];
        // (slot, root) against blocks at 10 (root A) and 12 (NULL root), watermark 10.
        let cases = [
            (10, A, Ok(Permit::SameAsRecorded)),
            (10, B, Err(Refusal::DoubleBlockProposal)),
            // A NULL root never matches, not even 0x00..00.
            (12, ZERO, Err(Refusal::DoubleBlockProposal)),
            (11, A, Ok(Permit::New)),
            (9, A, Err(Refusal::SlotNotAboveLowWatermark)),
        ];
        for (slot, root, expected) in cases {
            assert_eq!(
                check_block(&h, Some(10), slot, root),
                expected,
                "slot {slot}"
            );
        }
        assert_eq!(check_block(&[], None, 0, A), Ok(Permit::New));
    }

    #[test]
    fn attestation_rules() {
        let h = [att(2, 5, Some(A))];
        // (source, target, root) against one recorded vote (2, 5, A) with watermarks (2, 5).
        let cases = [
            ((2, 5, A), Ok(Permit::SameAsRecorded)),
            ((2, 5, B), Err(Refusal::DoubleVote)),
            ((3, 5, B), Err(Refusal::DoubleVote)),
            ((3, 4, B), Err(Refusal::SurroundedVote)),
            ((1, 6, B), Err(Refusal::SurroundingVote)),
            ((1, 5, A), Ok(Permit::SameAsRecorded)),
            ((6, 5, A), Err(Refusal::SourceExceedsTarget)),
            ((1, 4, A), Err(Refusal::SourceBelowLowWatermark)),
            ((2, 3, A), Err(Refusal::TargetNotAboveLowWatermark)),
            ((5, 6, A), Ok(Permit::New)),
        ];
        for ((source, target, root), expected) in cases {
            assert_eq!(
                check_attestation(&h, Some((2, 5)), source, target, root),
                expected,
                "source {source}, target {target}"
            );
        }
        assert_eq!(check_attestation(&[], None, 0, 0, A), Ok(Permit::New));
    }

    #[test]
    fn merge() {
        assert_eq!(merge_root(Some(A), Some(A)), Some(A));
        assert_eq!(merge_root(Some(A), Some(B)), None);
        assert_eq!(merge_root(None, Some(A)), None);
        assert_eq!(merge_root(Some(A), None), None);
    }
}
