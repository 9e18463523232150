//! The SQLite writer's in-memory summaries (fast path) against the database:
//! requests that take the fast path and requests that take the full path,
//! mixed, across reopening the database (summaries rebuilt from disk) and
//! after imports, pruning, enabling/disabling and high-watermark changes,
//! which must invalidate the summaries.

mod common;

use common::PgStores as _;

use common::{
    entry, expect_verdicts, interchange, pk, refused, root,
    Msg::{Att, Block},
    GVR,
};
use slashing::{Error, HighWatermark, Permit, Refusal, Root, SlashingProtection, SqliteStore};

fn att_json(s: u64, t: u64, r: Option<Root>) -> String {
    match r {
        Some(r) => format!(
            r#"{{"source_epoch":"{s}","target_epoch":"{t}","signing_root":"0x{}"}}"#,
            hex::encode(r.0)
        ),
        None => format!(r#"{{"source_epoch":"{s}","target_epoch":"{t}"}}"#),
    }
}

fn block_json(slot: u64, r: Option<Root>) -> String {
    match r {
        Some(r) => format!(
            r#"{{"slot":"{slot}","signing_root":"0x{}"}}"#,
            hex::encode(r.0)
        ),
        None => format!(r#"{{"slot":"{slot}"}}"#),
    }
}

/// A store that can be dropped and reopened on the same file.
struct Reopenable {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    store: Option<SqliteStore>,
}

impl Reopenable {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("slashing.sqlite");
        let store = Some(SqliteStore::open(&path).unwrap());
        Reopenable {
            _dir: dir,
            path,
            store,
        }
    }
    fn s(&self) -> &SqliteStore {
        self.store.as_ref().unwrap()
    }
    /// [`expect_verdicts`] for validator 1, the one the summary test drives.
    fn expect(&self, steps: &[(common::Msg, Result<Permit, Refusal>)]) {
        expect_verdicts(self.s(), pk(1), steps);
    }
    fn reopen(&mut self) {
        drop(self.store.take()); // the writer stops and the file lock is released
        self.store = Some(SqliteStore::open(&self.path).unwrap());
    }
}

#[test]
fn summaries_follow_imports_pruning_enabling_and_reopening() {
    let mut db = Reopenable::new();
    // Monotone signing: the first request per validator takes the full path,
    // the following ones the fast path.
    for e in 1..=5 {
        db.expect(&[
            (Att(e - 1, e, root(e)), Ok(Permit::New)),
            (Block(e, root(e)), Ok(Permit::New)),
        ]);
    }
    db.expect(&[
        // Full-path verdicts in between do not disturb the summary.
        (Att(4, 5, root(5)), Ok(Permit::SameAsRecorded)),
        (Att(4, 5, root(99)), Err(Refusal::DoubleVote)),
        (Att(3, 6, root(6)), Err(Refusal::SurroundingVote)),
        (Att(7, 6, root(6)), Err(Refusal::SourceExceedsTarget)),
        (Att(5, 6, root(6)), Ok(Permit::New)),
        // Source equal to the recorded maximum, target far ahead: fast path.
        (Att(5, 9, root(9)), Ok(Permit::New)),
        // Now (6, 8) would be surrounded by (5, 9): full path refuses it.
        (Att(6, 8, root(8)), Err(Refusal::SurroundedVote)),
    ]);

    // Import raises the watermarks above what the summary knew: a message
    // that the stale summary would have let through must be refused.
    let doc = interchange(
        GVR,
        &entry(
            1,
            &block_json(100, Some(root(100))),
            &att_json(20, 30, Some(root(30))),
        ),
    );
    db.s().import_interchange(&doc).unwrap();
    db.expect(&[
        (Att(9, 10, root(10)), Err(Refusal::SourceBelowLowWatermark)),
        (Att(21, 25, root(25)), Err(Refusal::SurroundedVote)),
        (Block(50, root(50)), Err(Refusal::SlotNotAboveLowWatermark)),
        (Att(30, 31, root(31)), Ok(Permit::New)),
        (Block(101, root(101)), Ok(Permit::New)),
    ]);
    // An import with a NULL root at a future target: the slot/target is
    // then unsignable, although it is above what the summary had seen.
    let doc = interchange(
        GVR,
        &entry(1, &block_json(110, None), &att_json(31, 40, None)),
    );
    db.s().import_interchange(&doc).unwrap();
    db.expect(&[
        (Att(31, 40, root(40)), Err(Refusal::DoubleVote)),
        (Block(110, root(110)), Err(Refusal::DoubleBlockProposal)),
    ]);

    // Disable / enable.
    db.s().set_validator_enabled(pk(1), false).unwrap();
    db.expect(&[
        (Att(40, 41, root(41)), Err(Refusal::ValidatorDisabled)),
        (Block(111, root(111)), Err(Refusal::ValidatorDisabled)),
    ]);
    db.s().set_validator_enabled(pk(1), true).unwrap();
    db.expect(&[
        (Att(40, 41, root(41)), Ok(Permit::New)),
        (Block(111, root(111)), Ok(Permit::New)),
    ]);

    // High watermark set and removed.
    db.s()
        .set_high_watermark(Some(HighWatermark {
            epoch: Some(43),
            slot: Some(113),
        }))
        .unwrap();
    db.expect(&[
        (Att(41, 43, root(43)), Err(Refusal::AtOrAboveHighWatermark)),
        (Block(113, root(113)), Err(Refusal::AtOrAboveHighWatermark)),
        (Att(41, 42, root(42)), Ok(Permit::New)),
        (Block(112, root(112)), Ok(Permit::New)),
    ]);
    db.s().set_high_watermark(None).unwrap();

    // Pruning keeps the newest epochs; verdicts stay the same around it.
    for e in 43..=60 {
        db.expect(&[(Att(e - 1, e, root(e)), Ok(Permit::New))]);
    }
    db.s().prune(3, 4).unwrap();
    db.expect(&[
        (Att(56, 57, root(57)), Err(Refusal::SourceBelowLowWatermark)),
        (Att(59, 60, root(60)), Ok(Permit::SameAsRecorded)),
        (Att(60, 61, root(61)), Ok(Permit::New)),
    ]);

    // Reopen: the summary is rebuilt from disk; fast and full path again.
    db.reopen();
    db.expect(&[
        (Att(61, 62, root(62)), Ok(Permit::New)),
        (Att(61, 62, root(0)), Err(Refusal::DoubleVote)),
        (Att(60, 63, root(63)), Err(Refusal::SurroundingVote)),
        (Block(114, root(114)), Ok(Permit::New)),
        (Block(114, root(0)), Err(Refusal::DoubleBlockProposal)),
    ]);
    // Another chain is refused even for a validator with a warm summary.
    assert_eq!(
        refused(
            db.s()
                .sign_attestation(Root([9; 32]), pk(1), 62, 63, root(63))
        ),
        Refusal::GenesisValidatorsRootMismatch
    );
    db.expect(&[
        // Values above i64::MAX never reach the fast path's INSERT.
        (Att(62, u64::MAX, root(1)), Err(Refusal::ValueTooLarge)),
        (Block(u64::MAX, root(1)), Err(Refusal::ValueTooLarge)),
    ]);
    // Durable: after another reopen, everything Ok'd above is a repeat.
    db.reopen();
    db.expect(&[
        (Att(61, 62, root(62)), Ok(Permit::SameAsRecorded)),
        (Block(114, root(114)), Ok(Permit::SameAsRecorded)),
    ]);
}

#[derive(Debug, Clone)]
enum Op {
    Att(u64, u64, u64, u64),
    Block(u64, u64, u64),
    Import(String),
    Prune(u64),
    Enable(u64, bool),
    High(Option<HighWatermark>),
    Reopen,
}

type Outcome = Result<String, String>;

fn apply(s: &dyn SlashingProtection, op: &Op) -> Outcome {
    let show = |r: Result<Permit, Error>| match r {
        Ok(p) => Ok(format!("{p:?}")),
        Err(Error::Refused(x)) => Err(format!("{x:?}")),
        Err(e) => panic!("store fault on {op:?}: {e}"),
    };
    match op {
        Op::Att(v, src, tgt, r) => show(s.sign_attestation(GVR, pk(*v), *src, *tgt, root(*r))),
        Op::Block(v, slot, r) => show(s.sign_block(GVR, pk(*v), *slot, root(*r))),
        Op::Import(doc) => s
            .import_interchange(doc)
            .map(|x| format!("{x:?}"))
            .map_err(|e| e.to_string()),
        Op::Prune(k) => s
            .prune(*k, 4)
            .map(|x| format!("{x:?}"))
            .map_err(|e| e.to_string()),
        Op::Enable(v, on) => s
            .set_validator_enabled(pk(*v), *on)
            .map(|()| String::new())
            .map_err(|e| e.to_string()),
        Op::High(h) => s
            .set_high_watermark(*h)
            .map(|()| String::new())
            .map_err(|e| e.to_string()),
        Op::Reopen => Ok(String::new()),
    }
}

/// Seeded random mixes of every operation on a warm store (summaries
/// maintained incrementally, reopened now and then) against a store reopened
/// before every operation (summaries always rebuilt from disk) and, when
/// available, PostgreSQL (no summaries: always the full path).
#[test]
fn random_mixes_agree_with_cold_store_and_postgres() {
    let schema = common::PgSchema::new("fast_path_random_mixes");
    let pg = schema.as_ref().map(|s| s.open());
    let mut warm = Reopenable::new();
    let mut cold = Reopenable::new();
    let mut seed: u64 = 0x0123_4567_89ab_cdef;
    let mut next = move |n: u64| {
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        (seed.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) % n
    };
    const VALIDATORS: u64 = 4;
    let mut frontier = [1u64; VALIDATORS as usize];
    let (mut fast_candidates, mut ops_run) = (0, 0);
    for _ in 0..1500 {
        let v = next(VALIDATORS);
        let f = frontier[v as usize];
        let op = match next(100) {
            0..=54 => {
                // Mostly the next monotone vote, sometimes anything nearby.
                let (s, t) = match next(6) {
                    0..=2 => (f, f + 1),
                    3 => (f.saturating_sub(1), f + 2),
                    _ => {
                        let s = next(f + 3);
                        (s, (s + next(6)).saturating_sub(1))
                    }
                };
                if t > f {
                    frontier[v as usize] = t;
                    fast_candidates += 1;
                }
                Op::Att(v, s, t, next(3))
            }
            55..=74 => {
                let slot = if next(3) == 0 { next(f + 3) } else { f + 1 };
                frontier[v as usize] = frontier[v as usize].max(slot);
                Op::Block(v, slot, next(3))
            }
            75..=81 => {
                let s = next(f + 4);
                let t = s + next(4);
                let slot = next(f + 4);
                let (rb, ra) = (next(4), next(4));
                let r = |n: u64, x: u64| (n != 0).then(|| root(x % 3));
                let body = entry(v, &block_json(slot, r(rb, slot)), &att_json(s, t, r(ra, t)));
                Op::Import(interchange(GVR, &body))
            }
            82..=84 => Op::Prune(1 + next(4)),
            85..=90 => Op::Enable(v, next(3) != 0),
            91..=94 => Op::High(match next(3) {
                0 => Some(HighWatermark {
                    epoch: Some(f + next(3)),
                    slot: Some(f + next(3)),
                }),
                _ => None,
            }),
            _ => Op::Reopen,
        };
        // After anything but a signing, the very next requests are the
        // forward (fast-path) ones a stale summary would wrongly permit.
        let mut ops = vec![op.clone()];
        if !matches!(op, Op::Att(..) | Op::Block(..)) {
            ops.push(Op::Att(v, f, f + 1, 0));
            ops.push(Op::Block(v, f + 1, 0));
        }
        for op in ops {
            if matches!(op, Op::Reopen) {
                warm.reopen();
                continue;
            }
            cold.reopen();
            let want = apply(cold.s(), &op);
            let got = apply(warm.s(), &op);
            assert_eq!(got, want, "warm vs cold store on {op:?}");
            if let Some(p) = &pg {
                assert_eq!(got, apply(p, &op), "SQLite vs PostgreSQL on {op:?}");
            }
            ops_run += 1;
        }
    }
    eprintln!(
        "fast path mixes: {ops_run} operations, {fast_candidates} forward votes, PostgreSQL {}",
        if pg.is_some() { "compared" } else { "skipped" }
    );
    // The final histories are identical too.
    assert_eq!(
        warm.s().export_interchange().unwrap(),
        cold.s().export_interchange().unwrap()
    );
}
