//! `MemoryWitness`: over a store that lies (permits everything) it answers exactly as the pure
//! rules for the requests made since start, and never permits two conflicting messages whatever
//! its bound; over the real SQLite store it changes no verdict; conflicting concurrent requests
//! get one permit; validators do not wait for each other.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use common::races::{exactly_one_winner, one_winner_suite, race};
use common::sequences::{att_items, block_items, sequences, verdict, ROOTS};
use slashing::rules::ValidatorModel;
use slashing::{
    Check, Error, HighWatermark, ImportSummary, MemoryWitness, Permit, PruneSummary, Pubkey,
    Refusal, Root, SlashingProtection, WitnessLimits,
};

/// A store that has lost (or hides) all history: it permits every check with `answer` and
/// records nothing. `delay` widens race windows; `gate`, when set, holds checks for `gate.0`
/// until a message arrives on `gate.1` and reports entering on `entered`.
struct Lying {
    answer: Permit,
    delay: Duration,
    decisions: AtomicUsize,
    gate: Option<(Pubkey, Mutex<mpsc::Receiver<()>>, mpsc::Sender<()>)>,
}

impl Lying {
    fn new(answer: Permit) -> Self {
        Lying {
            answer,
            delay: Duration::ZERO,
            decisions: AtomicUsize::new(0),
            gate: None,
        }
    }
}

impl SlashingProtection for Lying {
    fn decide(&self, _: Root, pk: Pubkey, _: Check, _: Root) -> Result<Permit, Error> {
        self.decisions.fetch_add(1, Ordering::SeqCst);
        if let Some((gated, release, entered)) = &self.gate {
            if *gated == pk {
                entered.send(()).unwrap();
                release.lock().unwrap().recv().unwrap();
            }
        }
        std::thread::sleep(self.delay);
        Ok(self.answer)
    }
    fn health_check(&self) -> Result<(), Error> {
        Ok(())
    }
    fn high_watermark(&self) -> Result<Option<HighWatermark>, Error> {
        Ok(None)
    }
    fn set_high_watermark(&self, _: Option<HighWatermark>) -> Result<(), Error> {
        Ok(())
    }
    fn import_interchange(&self, _: &str) -> Result<ImportSummary, Error> {
        Ok(ImportSummary::default())
    }
    fn export_interchange(&self) -> Result<String, Error> {
        Err(Error::Interchange("nothing recorded".into()))
    }
    fn genesis_validators_root(&self) -> Result<Option<Root>, Error> {
        Ok(None)
    }
    fn pin_genesis_validators_root(&self, _: Root) -> Result<(), Error> {
        Ok(())
    }
    fn set_validator_enabled(&self, _: Pubkey, _: bool) -> Result<(), Error> {
        Ok(())
    }
    fn prune(&self, _: u64, _: u64) -> Result<PruneSummary, Error> {
        Ok(PruneSummary::default())
    }
}

fn over_lying(answer: Permit, limits: WitnessLimits) -> MemoryWitness {
    MemoryWitness::with_limits(Arc::new(Lying::new(answer)), limits)
}

/// The validator of the single-validator tests.
fn key() -> Pubkey {
    common::pk(1)
}

fn att(w: &MemoryWitness, s: u64, t: u64, r: Root) -> Result<Permit, Refusal> {
    verdict(w.sign_attestation(common::GVR, key(), s, t, r))
}

fn blk(w: &MemoryWitness, slot: u64, r: Root) -> Result<Permit, Refusal> {
    verdict(w.sign_block(common::GVR, key(), slot, r))
}

/// (a) Every sequence of three attestations (and of three blocks) over the small space: the
/// witness over a store that permits everything gives, at every step, exactly the model's
/// verdict, refusal reason included. Over a store that answers "repeat" to everything it
/// permits and refuses exactly the same (a permit is then reported as the store's repeat,
/// unless memory knows better).
#[test]
fn over_a_lying_store_the_witness_answers_as_the_rules_for_all_sequences_of_three() {
    let limits = WitnessLimits::default();
    let atts = sequences(&att_items(), 3, |i| i.2 == 0);
    let blocks = sequences(&block_items(), 3, |_| true);
    let mut calls = 0;
    for seq in &atts {
        let (new, repeat) = (
            over_lying(Permit::New, limits),
            over_lying(Permit::SameAsRecorded, limits),
        );
        let mut model = ValidatorModel::default();
        for &(s, t, r) in seq {
            let want = model.sign_attestation(s, t, ROOTS[r]);
            assert_eq!(att(&new, s, t, ROOTS[r]), want, "{seq:?} at ({s},{t},{r})");
            let also = att(&repeat, s, t, ROOTS[r]);
            assert_eq!(also.is_ok(), want.is_ok(), "{seq:?} at ({s},{t},{r})");
            assert_eq!(also.err(), want.err(), "{seq:?} at ({s},{t},{r})");
            calls += 1;
        }
    }
    for seq in &blocks {
        let (new, repeat) = (
            over_lying(Permit::New, limits),
            over_lying(Permit::SameAsRecorded, limits),
        );
        let mut model = ValidatorModel::default();
        for &(slot, r) in seq {
            let want = model.sign_block(slot, ROOTS[r]);
            assert_eq!(blk(&new, slot, ROOTS[r]), want, "{seq:?} at ({slot},{r})");
            let also = blk(&repeat, slot, ROOTS[r]);
            assert_eq!(also.is_ok(), want.is_ok(), "{seq:?} at ({slot},{r})");
            assert_eq!(also.err(), want.err(), "{seq:?} at ({slot},{r})");
            calls += 1;
        }
    }
    eprintln!(
        "witness exhaustive: {} attestation + {} block sequences, {calls} calls",
        atts.len(),
        blocks.len()
    );
}

/// `is_slashable_attestation_data` (phase0 beacon-chain.md) over `(source, target, data)`: a
/// double vote (same target, other data) or a surround in either direction.
fn slashable_pair(a: (u64, u64, usize), b: (u64, u64, usize)) -> bool {
    (a.1 == b.1 && a != b) || (a.0 < b.0 && b.1 < a.1) || (b.0 < a.0 && a.1 < b.1)
}

/// A signing root that, like a real one, differs whenever the attestation data does (source
/// included), so that equal roots mean equal messages.
fn data_root(s: u64, t: u64, r: usize) -> Root {
    common::root(1 + s * 100 + t * 10 + r as u64)
}

/// The bound only ever refuses more: for memory bounds down to one entry, every sequence of
/// four blocks and of three attestations through a store that permits everything leaves a
/// permitted set with no two slashable messages (checked with the spec's predicates, not with
/// the rules under test). Roots follow the data here: the rules take an equal root at an equal
/// target for a repeat whatever the source, as a real root never differs in the source alone.
#[test]
fn whatever_the_bound_no_two_permitted_messages_conflict() {
    for keep in [1, 2] {
        let limits = WitnessLimits {
            blocks: keep,
            attestations: keep,
        };
        for seq in sequences(&att_items(), 3, |i| i.2 == 0) {
            let w = over_lying(Permit::New, limits);
            let permitted: Vec<_> = seq
                .iter()
                .filter(|&&(s, t, r)| att(&w, s, t, data_root(s, t, r)).is_ok())
                .collect();
            for (i, a) in permitted.iter().enumerate() {
                assert!(a.0 <= a.1, "invalid vote permitted: {seq:?}");
                for b in &permitted[i + 1..] {
                    assert!(!slashable_pair(**a, **b), "keep {keep}: {seq:?}");
                }
            }
        }
        for seq in sequences(&block_items(), 4, |_| true) {
            let w = over_lying(Permit::New, limits);
            let permitted: Vec<_> = seq
                .iter()
                .filter(|&&(slot, r)| blk(&w, slot, ROOTS[r]).is_ok())
                .collect();
            for (i, a) in permitted.iter().enumerate() {
                for b in &permitted[i + 1..] {
                    assert!(a.0 != b.0 || a.1 == b.1, "keep {keep}: {seq:?}");
                }
            }
        }
    }
}

/// (b) Over a SQLite store in a temp dir, every sequence of two attestations (and of two
/// blocks) gets through the witness exactly the verdict the bare store gives in another
/// temp dir.
#[test]
fn over_sqlite_the_witness_changes_no_verdict() {
    let start = std::time::Instant::now();
    let (bare, wrapped) = (common::SqliteDb::new(), common::SqliteDb::new());
    let witness = MemoryWitness::new(wrapped.store.clone());
    let atts = sequences(&att_items(), 2, |i| i.2 == 0);
    let blocks = sequences(&block_items(), 2, |_| true);
    let threads = 8;
    std::thread::scope(|sc| {
        for w in 0..threads {
            let (bare, witness, atts, blocks) = (&bare.store, &witness, &atts, &blocks);
            sc.spawn(move || {
                for (i, seq) in atts.iter().enumerate().filter(|(i, _)| i % threads == w) {
                    let key = common::pk(i as u64);
                    for &(s, t, r) in seq {
                        let want = verdict(bare.sign_attestation(common::GVR, key, s, t, ROOTS[r]));
                        let got =
                            verdict(witness.sign_attestation(common::GVR, key, s, t, ROOTS[r]));
                        assert_eq!(got, want, "attestations {seq:?} at ({s},{t},{r})");
                    }
                }
                for (i, seq) in blocks.iter().enumerate().filter(|(i, _)| i % threads == w) {
                    let key = common::pk(1_000_000 + i as u64);
                    for &(slot, r) in seq {
                        let want = verdict(bare.sign_block(common::GVR, key, slot, ROOTS[r]));
                        let got = verdict(witness.sign_block(common::GVR, key, slot, ROOTS[r]));
                        assert_eq!(got, want, "blocks {seq:?} at ({slot},{r})");
                    }
                }
            });
        }
    });
    // Both databases recorded the same history.
    assert_eq!(
        witness.export_interchange().unwrap(),
        bare.store.export_interchange().unwrap()
    );
    eprintln!(
        "witness over sqlite: {} + {} sequences, {:?}",
        atts.len(),
        blocks.len(),
        start.elapsed()
    );
}

/// The one place memory is stricter than an honest database (module documentation): after a
/// start, nothing at or below the first message signed since then, although the database's
/// older watermark would permit it. Refusing is safe; the enclave cannot see what was signed
/// before it started.
#[test]
fn below_the_first_message_since_start_memory_is_stricter_than_the_database() {
    let db = common::SqliteDb::new();
    let old = MemoryWitness::new(db.store.clone());
    assert_eq!(blk(&old, 10, ROOTS[0]), Ok(Permit::New));
    drop(old); // a restart: memory is empty, the database keeps slot 10
    let w = MemoryWitness::new(db.store.clone());
    assert_eq!(blk(&w, 30, ROOTS[0]), Ok(Permit::New));
    assert_eq!(
        blk(&w, 20, ROOTS[0]),
        Err(Refusal::SlotNotAboveLowWatermark)
    );
    assert_eq!(
        blk(&w, 10, ROOTS[0]),
        Err(Refusal::SlotNotAboveLowWatermark)
    );
    // The database alone (low watermark 10) would permit both.
    assert_eq!(
        verdict(db.store.sign_block(common::GVR, key(), 10, ROOTS[0])),
        Ok(Permit::SameAsRecorded)
    );
    assert_eq!(
        verdict(db.store.sign_block(common::GVR, key(), 20, ROOTS[0])),
        Ok(Permit::New)
    );
}

#[test]
fn identical_repeats_are_permitted_through_sqlite_and_through_a_lying_store() {
    let db = common::SqliteDb::new();
    for w in [
        MemoryWitness::new(db.store.clone()),
        over_lying(Permit::New, WitnessLimits::default()),
    ] {
        assert_eq!(blk(&w, 5, ROOTS[0]), Ok(Permit::New));
        assert_eq!(blk(&w, 5, ROOTS[0]), Ok(Permit::SameAsRecorded));
        assert_eq!(blk(&w, 5, ROOTS[1]), Err(Refusal::DoubleBlockProposal));
        assert_eq!(att(&w, 1, 2, ROOTS[0]), Ok(Permit::New));
        assert_eq!(att(&w, 1, 2, ROOTS[0]), Ok(Permit::SameAsRecorded));
        assert_eq!(att(&w, 1, 2, ROOTS[1]), Err(Refusal::DoubleVote));
    }
}

/// Imports, pruning and disabling go to the store and cannot make memory forget.
#[test]
fn import_prune_and_enable_do_not_weaken_memory() {
    let w = over_lying(Permit::New, WitnessLimits::default());
    assert_eq!(blk(&w, 5, ROOTS[0]), Ok(Permit::New));
    assert_eq!(att(&w, 2, 3, ROOTS[0]), Ok(Permit::New));
    let doc = common::interchange(common::GVR, "");
    w.import_interchange(&doc).unwrap();
    w.prune(1, 1).unwrap();
    w.set_validator_enabled(key(), false).unwrap();
    w.set_validator_enabled(key(), true).unwrap();
    w.set_high_watermark(None).unwrap();
    assert_eq!(blk(&w, 5, ROOTS[1]), Err(Refusal::DoubleBlockProposal));
    assert_eq!(att(&w, 1, 4, ROOTS[1]), Err(Refusal::SurroundingVote));
    assert_eq!(att(&w, 2, 3, ROOTS[1]), Err(Refusal::DoubleVote));
}

/// The other methods reach the wrapped store: an import through the witness is exported
/// through it, and the import's watermark is the database's to apply.
#[test]
fn other_methods_delegate_to_the_store() {
    let db = common::SqliteDb::new();
    let w = MemoryWitness::new(db.store.clone());
    w.health_check().unwrap();
    let doc = common::interchange(common::GVR, &common::entry(1, r#"{"slot":"7"}"#, ""));
    assert_eq!(w.import_interchange(&doc).unwrap().blocks_inserted, 1);
    assert_eq!(w.genesis_validators_root().unwrap(), Some(common::GVR));
    assert!(w.export_interchange().unwrap().contains("\"7\""));
    assert_eq!(blk(&w, 7, ROOTS[0]), Err(Refusal::DoubleBlockProposal));
    assert_eq!(blk(&w, 6, ROOTS[0]), Err(Refusal::SlotNotAboveLowWatermark));
    w.set_validator_enabled(key(), false).unwrap();
    assert_eq!(blk(&w, 8, ROOTS[0]), Err(Refusal::ValidatorDisabled));
    // Nothing recorded for a refused validator: memory keeps no entry for it.
    assert_eq!(w.validators_remembered(), 0);
}

/// (c) Conflicting requests released together through a store that permits everything (slowly,
/// to widen the window): exactly one permit in each race, the shared suite the stores pass.
#[test]
fn concurrent_conflicts_through_a_lying_store_get_one_permit() {
    let lying = Lying {
        delay: Duration::from_millis(1),
        ..Lying::new(Permit::New)
    };
    let w: Arc<dyn SlashingProtection> = Arc::new(MemoryWitness::new(Arc::new(lying)));
    one_winner_suite(vec![w.clone()]);
    // And mixed: blocks and attestations of one validator, half through `decide`.
    let r = race(vec![w], |s, i| {
        let root = common::root(i as u64 + 1);
        if i % 2 == 0 {
            s.decide(common::GVR, common::pk(9), Check::Block { slot: 3 }, root)
        } else {
            s.sign_block(common::GVR, common::pk(9), 3, root)
        }
    });
    exactly_one_winner(&r, Refusal::DoubleBlockProposal);
}

/// The validator's lock covers the store's decision, but only that validator's: while the
/// store holds one validator's check, another validator's check completes.
#[test]
fn validators_do_not_wait_for_each_other() {
    let (release_tx, release_rx) = mpsc::channel();
    let (entered_tx, entered_rx) = mpsc::channel();
    let lying = Lying {
        gate: Some((common::pk(1), Mutex::new(release_rx), entered_tx)),
        ..Lying::new(Permit::New)
    };
    let w = Arc::new(MemoryWitness::new(Arc::new(lying)));
    let held = {
        let w = w.clone();
        std::thread::spawn(move || w.sign_block(common::GVR, common::pk(1), 1, ROOTS[0]))
    };
    entered_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let (done_tx, done_rx) = mpsc::channel();
    {
        let w = w.clone();
        std::thread::spawn(move || {
            let r = w.sign_block(common::GVR, common::pk(2), 1, ROOTS[1]);
            done_tx.send(r.map_err(|e| e.to_string())).unwrap();
        });
    }
    let other = done_rx.recv_timeout(Duration::from_secs(10));
    release_tx.send(()).unwrap();
    assert_eq!(held.join().unwrap().unwrap(), Permit::New);
    assert_eq!(other.expect("pk(2) waited for pk(1)"), Ok(Permit::New));
}

/// A memory conflict asks the store only to learn whether it agrees (it does not change the
/// verdict); a refusal by the rules that is not a conflict (a watermark, an invalid vote)
/// never reaches the store.
#[test]
fn the_store_is_asked_for_conflicts_but_not_for_watermark_refusals() {
    let lying = Arc::new(Lying::new(Permit::New));
    let w = MemoryWitness::new(lying.clone());
    let asked = || lying.decisions.load(Ordering::SeqCst);
    assert_eq!(att(&w, 3, 4, ROOTS[0]), Ok(Permit::New));
    assert_eq!(asked(), 1);
    assert_eq!(att(&w, 3, 4, ROOTS[1]), Err(Refusal::DoubleVote));
    assert_eq!(asked(), 2);
    assert_eq!(
        att(&w, 2, 3, ROOTS[0]),
        Err(Refusal::SourceBelowLowWatermark)
    );
    assert_eq!(att(&w, 5, 4, ROOTS[0]), Err(Refusal::SourceExceedsTarget));
    assert_eq!(asked(), 2);
}
