//! Exhaustive agreement between each store and the pure rules
//! (`slashing::rules::ValidatorModel`): every sequence of attestations /
//! blocks over a small space gives, at every step, exactly the verdict
//! (including the refusal reason) the rules give. One validator per sequence
//! in one database.

mod common;

use common::PgStores as _;

use common::sequences::{att_items, block_items, sequences, verdict, ROOTS};
use slashing::rules::ValidatorModel;
use slashing::SlashingProtection;

/// Runs attestation sequences `atts` (validator ids from `base`) and block
/// sequences on `threads` threads; returns the number of calls.
fn agree(
    store: &dyn SlashingProtection,
    atts: &[Vec<(u64, u64, usize)>],
    blocks: &[Vec<(u64, usize)>],
    threads: usize,
) -> usize {
    let calls = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|sc| {
        for w in 0..threads {
            let calls = &calls;
            sc.spawn(move || {
                let mut n = 0;
                for (i, seq) in atts.iter().enumerate().filter(|(i, _)| i % threads == w) {
                    let key = common::pk(i as u64);
                    let mut model = ValidatorModel::default();
                    for &(s, t, r) in seq {
                        let want = model.sign_attestation(s, t, ROOTS[r]);
                        let got = verdict(store.sign_attestation(common::GVR, key, s, t, ROOTS[r]));
                        assert_eq!(got, want, "attestations {seq:?} at ({s},{t},{r})");
                        n += 1;
                    }
                }
                for (i, seq) in blocks.iter().enumerate().filter(|(i, _)| i % threads == w) {
                    let key = common::pk(10_000_000 + i as u64);
                    let mut model = ValidatorModel::default();
                    for &(slot, r) in seq {
                        let want = model.sign_block(slot, ROOTS[r]);
                        let got = verdict(store.sign_block(common::GVR, key, slot, ROOTS[r]));
                        assert_eq!(got, want, "blocks {seq:?} at ({slot},{r})");
                        n += 1;
                    }
                }
                calls.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            });
        }
    });
    calls.into_inner()
}

#[test]
fn sqlite_agrees_with_rules_for_all_sequences_of_three() {
    let start = std::time::Instant::now();
    // Every shorter sequence is a prefix of a length-3 one and is checked at
    // each step, so length 3 covers lengths 1..=3.
    let atts = sequences(&att_items(), 3, |i| i.2 == 0);
    let blocks = sequences(&block_items(), 3, |_| true);
    assert_eq!(atts.len(), 39 * 78 * 78);
    assert_eq!(blocks.len(), 16 * 16 * 16);
    let store = slashing::SqliteStore::open_in_memory().unwrap();
    let calls = agree(&store, &atts, &blocks, 4);
    eprintln!(
        "sqlite exhaustive: {} attestation + {} block sequences, {calls} calls, {} commits, {:?}",
        atts.len(),
        blocks.len(),
        store.commits(),
        start.elapsed()
    );
}

/// [`agree`] against PostgreSQL (a fresh schema `name`, a pool of 8 connections on 8 threads)
/// over the sequences `make` returns, timed from before they are made.
fn postgres_agrees(
    name: &str,
    make: impl FnOnce() -> (Vec<Vec<(u64, u64, usize)>>, Vec<Vec<(u64, usize)>>),
) {
    let Some(schema) = common::PgSchema::new(name) else {
        return;
    };
    let start = std::time::Instant::now();
    let (atts, blocks) = make();
    let store = schema.open_pool(8);
    let calls = agree(&store, &atts, &blocks, 8);
    eprintln!(
        "{name}: {} attestation + {} block sequences, {calls} calls, {:?}",
        atts.len(),
        blocks.len(),
        start.elapsed()
    );
}

#[test]
fn postgres_agrees_with_rules_for_all_sequences_of_two() {
    postgres_agrees("postgres_agrees_with_rules", || {
        let atts = sequences(&att_items(), 2, |i| i.2 == 0);
        let blocks = sequences(&block_items(), 2, |_| true);
        (atts, blocks)
    });
}

/// Seeded sample of length-3 sequences for PostgreSQL (the full space is
/// covered on SQLite; this checks the PG SQL on deeper histories).
#[test]
fn postgres_agrees_with_rules_on_sampled_sequences_of_three() {
    postgres_agrees("postgres_agrees_sampled", || {
        let mut seed: u64 = 0x5eed_1234_abcd_0001;
        let mut next = move |n: usize| {
            // xorshift64*: deterministic, no extra dependency.
            seed ^= seed >> 12;
            seed ^= seed << 25;
            seed ^= seed >> 27;
            (seed.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
        };
        let ai = att_items();
        let bi = block_items();
        let atts: Vec<Vec<_>> = (0..2500)
            .map(|_| (0..3).map(|_| ai[next(ai.len())]).collect())
            .collect();
        let blocks: Vec<Vec<_>> = (0..500)
            .map(|_| (0..3).map(|_| bi[next(bi.len())]).collect())
            .collect();
        (atts, blocks)
    });
}
