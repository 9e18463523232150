//! Concurrency: exactly one winner among conflicting concurrent requests
//! (one store, and two PostgreSQL stores as two processes would have), and
//! SQLite group commit (fewer commits than requests, all Ok'd records durable).

mod common;

use common::PgStores as _;

use std::sync::{Arc, Barrier};

use common::races::{exactly_one_winner, one_winner_suite, race};
use slashing::{Check, Error, Permit, Refusal, Root, SlashingProtection, SqliteStore};

#[test]
fn sqlite_one_winner() {
    let db = common::SqliteDb::new();
    let s: Arc<dyn SlashingProtection> = db.store.clone();
    one_winner_suite(vec![s]);
}

/// The same races with half of the requests going through `submit` (the async path the
/// server uses with SQLite) and half through the blocking methods, on one store.
#[test]
fn sqlite_one_winner_submit_and_blocking_mixed() {
    let db = common::SqliteDb::new();
    let s: Arc<dyn SlashingProtection> = db.store.clone();
    let via = |s: &dyn SlashingProtection, i: usize, check: Check, root: Root| {
        if i.is_multiple_of(2) {
            let rx = s
                .submit(common::GVR, common::pk(7), check, root)
                .expect("SQLite decides on its writer thread");
            rx.blocking_recv().expect("the writer answers")
        } else {
            s.decide(common::GVR, common::pk(7), check, root)
        }
    };
    let r = race(vec![s.clone()], move |s, i| {
        let check = Check::Attestation {
            source_epoch: (i % 5) as u64,
            target_epoch: 10,
        };
        via(s, i, check, common::root(i as u64 + 1))
    });
    exactly_one_winner(&r, Refusal::DoubleVote);
    let r = race(vec![s.clone()], move |s, i| {
        via(s, i, Check::Block { slot: 42 }, common::root(i as u64 + 1))
    });
    exactly_one_winner(&r, Refusal::DoubleBlockProposal);
    // The winners' records survive the store: reopen the file and read them back.
    let path = db.path();
    drop(s);
    drop(db.store);
    let reopened = SqliteStore::open(&path).expect("reopen");
    let doc: serde_json::Value =
        serde_json::from_str(&reopened.export_interchange().unwrap()).unwrap();
    let data = doc["data"].as_array().unwrap();
    assert_eq!(data.len(), 1, "{doc}");
    assert_eq!(data[0]["signed_attestations"].as_array().unwrap().len(), 1);
    assert_eq!(data[0]["signed_blocks"].as_array().unwrap().len(), 1);
}

#[test]
fn postgres_one_winner_one_store() {
    let Some(schema) = common::PgSchema::new("postgres_one_winner_one_store") else {
        return;
    };
    let s: Arc<dyn SlashingProtection> = Arc::new(schema.open_pool(16));
    one_winner_suite(vec![s]);
}

#[test]
fn postgres_one_winner_two_stores() {
    let Some(schema) = common::PgSchema::new("postgres_one_winner_two_stores") else {
        return;
    };
    // Two independently opened stores = two pools = two signer processes.
    let a: Arc<dyn SlashingProtection> = Arc::new(schema.open_pool(8));
    let b: Arc<dyn SlashingProtection> = Arc::new(schema.open_pool(8));
    one_winner_suite(vec![a, b]);
}

#[test]
fn sqlite_group_commit_and_durability() {
    const VALIDATORS: usize = 64;
    const PER: u64 = 20;
    let db = common::SqliteDb::new();
    let store = db.store.clone();
    store.pin_genesis_validators_root(common::GVR).unwrap();
    let before = store.commits();
    let barrier = Arc::new(Barrier::new(VALIDATORS));
    let start = std::time::Instant::now();
    let handles: Vec<_> = (0..VALIDATORS)
        .map(|v| {
            let (s, b) = (store.clone(), barrier.clone());
            std::thread::spawn(move || {
                b.wait();
                let mut oks = Vec::new();
                for t in 1..=PER {
                    let r = s.sign_attestation(
                        common::GVR,
                        common::pk(v as u64),
                        t - 1,
                        t,
                        common::root(t),
                    );
                    assert!(matches!(r, Ok(Permit::New)), "{r:?}");
                    oks.push(t);
                    let r = s.sign_block(common::GVR, common::pk(v as u64), t, common::root(t));
                    assert!(matches!(r, Ok(Permit::New)), "{r:?}");
                }
                oks
            })
        })
        .collect();
    let oks: Vec<Vec<u64>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let elapsed = start.elapsed();
    let requests = VALIDATORS as u64 * PER * 2;
    let commits = store.commits() - before;
    eprintln!("group commit: {requests} requests, {commits} commits, {elapsed:?}");
    assert!(
        commits * 4 <= requests,
        "group commit ineffective: {commits} commits for {requests} requests"
    );

    // Durability: reopen and find every Ok'd record (a conflicting
    // re-sign is refused, an identical one is a repeat).
    let path = db.path();
    drop(store);
    let common::SqliteDb { dir, store } = db;
    drop(store); // last handle: the writer thread stops and the file closes
    let reopened = SqliteStore::open(&path).unwrap();
    let export: serde_json::Value =
        serde_json::from_str(&reopened.export_interchange().unwrap()).unwrap();
    assert_eq!(export["data"].as_array().unwrap().len(), VALIDATORS);
    for (v, targets) in oks.iter().enumerate() {
        for &t in targets {
            assert_eq!(
                reopened
                    .sign_attestation(common::GVR, common::pk(v as u64), t - 1, t, common::root(t))
                    .unwrap(),
                Permit::SameAsRecorded
            );
            assert!(matches!(
                reopened.sign_block(common::GVR, common::pk(v as u64), t, common::root(999)),
                Err(Error::Refused(Refusal::DoubleBlockProposal))
            ));
        }
    }
    drop(dir);
}
