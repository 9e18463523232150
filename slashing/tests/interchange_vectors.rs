//! The 38 official EIP-3076 interchange test vectors (v5.3.0) against both
//! stores. See `tests/vectors/interchange/README.upstream.md` for semantics.
//!
//! Per attempt we assert:
//! * `should_succeed_complete == false` ⇒ refused (safety, never optional);
//! * `should_succeed == true` ⇒ permitted (liveness);
//! * in the ambiguous cases our exact policy: an identical repeat of a
//!   recorded message (same slot/target, same source, same root) is
//!   permitted; otherwise a message is permitted iff it is above the low
//!   watermarks (raised to the imported maxima, or set by the first signing).
//!
//! After each file the store is exported, re-imported into a fresh store and
//! exported again: the two exports must be equal.

mod common;

use common::PgStores as _;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use serde_json::Value;
use slashing::{Error, Pubkey, Refusal, Root, SlashingProtection};

fn vectors() -> Vec<(String, Value)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/interchange");
    let mut out: Vec<(String, Value)> = std::fs::read_dir(&dir)
        .expect("vector dir")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
            (p.file_stem().unwrap().to_string_lossy().into_owned(), v)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(out.len(), 38, "expected the 38 official vectors");
    out
}

fn h<const N: usize>(v: &Value) -> [u8; N] {
    let s = v.as_str().unwrap().strip_prefix("0x").unwrap();
    hex::decode(s).unwrap().try_into().unwrap()
}
fn n(v: &Value) -> u64 {
    v.as_str().unwrap().parse().unwrap()
}

#[derive(Default, Debug)]
struct Tally {
    files: usize,
    attempts: usize,
    permitted: usize,
    refused: usize,
    ambiguous_permitted: usize,
    ambiguous_refused: usize,
}

/// Run one vector file against a fresh store.
fn run_file(name: &str, t: &Value, store: &dyn SlashingProtection, tally: &mut Tally) {
    let gvr = Root(h(&t["genesis_validators_root"]));
    store.pin_genesis_validators_root(gvr).unwrap();
    // Messages known with their root: imported with a root, or signed by us.
    let mut known_blocks: HashSet<(Pubkey, u64, Root)> = HashSet::new();
    let mut known_atts: HashSet<(Pubkey, u64, u64, Root)> = HashSet::new();
    // (pk, slot) / (pk, target) imported without a root or with several roots:
    let mut poisoned_blocks: HashSet<(Pubkey, u64)> = HashSet::new();
    let mut poisoned_atts: HashSet<(Pubkey, u64)> = HashSet::new();
    // Model of the store's low watermarks.
    let mut low_slot: HashMap<Pubkey, u64> = HashMap::new();
    let mut low_epochs: HashMap<Pubkey, (u64, u64)> = HashMap::new();

    for (i, step) in t["steps"].as_array().unwrap().iter().enumerate() {
        let json = serde_json::to_string(&step["interchange"]).unwrap();
        let res = store.import_interchange(&json);
        if !step["should_succeed"].as_bool().unwrap() {
            assert!(
                res.is_err(),
                "{name} step {i}: import must fail, got {res:?}"
            );
            // No later step runs; check nothing was written by the import.
            assert!(matches!(
                res,
                Err(Error::Refused(Refusal::GenesisValidatorsRootMismatch))
            ));
            return;
        }
        res.unwrap_or_else(|e| panic!("{name} step {i}: import failed: {e}"));
        for d in step["interchange"]["data"].as_array().unwrap() {
            let p = Pubkey(h(&d["pubkey"]));
            for b in d["signed_blocks"].as_array().unwrap() {
                let e = low_slot.entry(p).or_insert(0);
                *e = (*e).max(n(&b["slot"]));
                match b.get("signing_root") {
                    Some(r) => {
                        known_blocks.insert((p, n(&b["slot"]), Root(h(r))));
                    }
                    None => {
                        poisoned_blocks.insert((p, n(&b["slot"])));
                    }
                }
            }
            for a in d["signed_attestations"].as_array().unwrap() {
                let (s, tg) = (n(&a["source_epoch"]), n(&a["target_epoch"]));
                let e = low_epochs.entry(p).or_insert((0, 0));
                *e = (e.0.max(s), e.1.max(tg));
                match a.get("signing_root") {
                    Some(r) => {
                        known_atts.insert((p, s, tg, Root(h(r))));
                    }
                    None => {
                        poisoned_atts.insert((p, tg));
                    }
                }
            }
        }

        for b in step["blocks"].as_array().unwrap() {
            let p = Pubkey(h(&b["pubkey"]));
            let (slot, r) = (n(&b["slot"]), Root(h(&b["signing_root"])));
            let repeat = known_blocks.contains(&(p, slot, r))
                && !poisoned_blocks.contains(&(p, slot))
                && known_blocks
                    .iter()
                    .filter(|k| k.0 == p && k.1 == slot)
                    .count()
                    == 1;
            let above = low_slot.get(&p).is_none_or(|l| slot > *l);
            let got = store.sign_block(gvr, p, slot, r);
            check(
                name,
                i,
                &format!("block slot {slot}"),
                b,
                repeat || above,
                &got,
                tally,
            );
            if got.is_ok() {
                known_blocks.insert((p, slot, r));
                low_slot.entry(p).or_insert(slot);
            }
        }
        for a in step["attestations"].as_array().unwrap() {
            let p = Pubkey(h(&a["pubkey"]));
            let (s, tg, r) = (
                n(&a["source_epoch"]),
                n(&a["target_epoch"]),
                Root(h(&a["signing_root"])),
            );
            let repeat = known_atts.contains(&(p, s, tg, r))
                && !poisoned_atts.contains(&(p, tg))
                && known_atts.iter().filter(|k| k.0 == p && k.2 == tg).count() == 1;
            let above = low_epochs.get(&p).is_none_or(|l| s >= l.0 && tg > l.1);
            let got = store.sign_attestation(gvr, p, s, tg, r);
            check(
                name,
                i,
                &format!("attestation ({s},{tg})"),
                a,
                repeat || above,
                &got,
                tally,
            );
            if got.is_ok() {
                known_atts.insert((p, s, tg, r));
                low_epochs.entry(p).or_insert((s, tg));
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
/// Checks the store's answer `got` to the message `vector` (a block or an attestation of a
/// step, with its `should_succeed` and `should_succeed_complete`). `repeat_or_above`: the
/// message repeats one known with its root, or lies above the low watermarks; this store's
/// policy then permits it wherever the complete answer allows.
fn check(
    name: &str,
    step: usize,
    what: &str,
    vector: &Value,
    repeat_or_above: bool,
    got: &Result<slashing::Permit, Error>,
    tally: &mut Tally,
) {
    let ok = vector["should_succeed"].as_bool().unwrap();
    let complete = vector["should_succeed_complete"].as_bool().unwrap();
    let expect = ok || (complete && repeat_or_above);
    tally.attempts += 1;
    match got {
        Ok(_) => tally.permitted += 1,
        Err(Error::Refused(_)) => tally.refused += 1,
        Err(e) => panic!("{name} step {step} {what}: store fault {e}"),
    }
    if !complete {
        assert!(
            got.is_err(),
            "{name} step {step} {what}: SAFETY: must be refused, got {got:?}"
        );
    }
    if ok {
        assert!(
            got.is_ok(),
            "{name} step {step} {what}: must be permitted, got {got:?}"
        );
    }
    if ok != complete {
        if got.is_ok() {
            tally.ambiguous_permitted += 1;
        } else {
            tally.ambiguous_refused += 1;
        }
    }
    assert_eq!(
        got.is_ok(),
        expect,
        "{name} step {step} {what}: policy expects permitted={expect}, got {got:?}"
    );
}

fn round_trip(name: &str, store: &dyn SlashingProtection, fresh: &dyn SlashingProtection) {
    let Ok(exported) = store.export_interchange() else {
        return;
    };
    fresh
        .import_interchange(&exported)
        .unwrap_or_else(|e| panic!("{name}: re-import of export failed: {e}"));
    let again = fresh.export_interchange().unwrap();
    assert_eq!(exported, again, "{name}: export → import → export differs");
}

#[test]
fn sqlite_all_vectors() {
    let start = std::time::Instant::now();
    let mut tally = Tally::default();
    for (name, t) in vectors() {
        let db = common::SqliteDb::new();
        run_file(&name, &t, &*db.store, &mut tally);
        let fresh = slashing::SqliteStore::open_in_memory().unwrap();
        round_trip(&name, &*db.store, &fresh);
        tally.files += 1;
    }
    eprintln!("sqlite vectors: {tally:?} in {:?}", start.elapsed());
    assert_eq!(tally.files, 38);
    assert_eq!(tally.attempts, 71 + 79);
}

#[test]
fn postgres_all_vectors() {
    let start = std::time::Instant::now();
    let mut tally = Tally::default();
    for (name, t) in vectors() {
        let Some(schema) = common::PgSchema::new("postgres_all_vectors") else {
            return;
        };
        let store = schema.open_pool(2);
        run_file(&name, &t, &store, &mut tally);
        let Some(schema2) = common::PgSchema::new("postgres_all_vectors") else {
            return;
        };
        let fresh = schema2.open_pool(1);
        round_trip(&name, &store, &fresh);
        tally.files += 1;
    }
    eprintln!("postgres vectors: {tally:?} in {:?}", start.elapsed());
    assert_eq!(tally.files, 38);
    assert_eq!(tally.attempts, 71 + 79);
}
