//! Micro-benchmark of the slashing-protection stores: decisions per second and
//! CPU time per decision with N client threads signing for M validators.
//!
//! ```text
//! cargo run --release -p slashing --example store_bench -- [options]
//!   --threads N      client threads (default 64)
//!   --validators M   validators (default 100)
//!   --epochs E       epochs signed per validator (default 200)
//!   --mode MODE      monotone | mixed | blocks (default: all three)
//!   --store S        sqlite | postgres | both (default sqlite)
//!   --dir PATH       directory for the SQLite file (default: a temp dir)
//!   --pg-url URL     PostgreSQL URL (default postgresql://postgres@127.0.0.1:5432/test)
//! ```
//!
//! * `monotone`: every validator signs `(e-1, e)` for e = 1..=E, in epoch
//!   order; each thread serves the validators `v ≡ thread (mod N)`.
//! * `mixed`: as monotone, and after every 4th epoch a validator also sends
//!   an identical repeat (SameAsRecorded), a double vote (refused) and a
//!   surrounding vote (refused): 3 of every 7 decisions leave the fast path.
//! * `blocks`: block proposals at increasing slots.
//!
//! CPU is the whole process (clients + store threads) from
//! `/proc/self/stat`; "writer" is the SQLite writer thread alone.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Barrier;
use std::time::Instant;

use slashing::{Error, Permit, PostgresStore, Pubkey, Refusal, Root, SlashingProtection};

const GVR: Root = Root([7; 32]);

fn pk(n: u64) -> Pubkey {
    let mut b = [0u8; 48];
    b[0] = 0xa0;
    b[40..48].copy_from_slice(&n.to_be_bytes());
    Pubkey(b)
}

fn root(a: u64, b: u64) -> Root {
    let mut r = [0u8; 32];
    r[0] = 1;
    r[16..24].copy_from_slice(&a.to_be_bytes());
    r[24..32].copy_from_slice(&b.to_be_bytes());
    Root(r)
}

/// Process CPU time (user + system) in microseconds.
fn process_cpu_us() -> u64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    stat_cpu_us(&s)
}

fn stat_cpu_us(stat: &str) -> u64 {
    // Fields after the ")" closing comm: state is field 3; utime 14, stime 15.
    let rest = match stat.rfind(')') {
        Some(i) => &stat[i + 1..],
        None => return 0,
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    // f[0] is field 3, so field n is f[n - 3]. USER_HZ is 100 on Linux.
    (ticks(11) + ticks(12)) * 10_000
}

/// CPU of the threads whose name starts with `prefix`, in microseconds.
fn threads_cpu_us(prefix: &str) -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    let mut total = 0;
    for e in dir.flatten() {
        let p = e.path();
        let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
        if comm.trim_end().starts_with(prefix) {
            total += stat_cpu_us(&std::fs::read_to_string(p.join("stat")).unwrap_or_default());
        }
    }
    total
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Monotone,
    Mixed,
    Blocks,
}

struct Config {
    threads: usize,
    validators: u64,
    epochs: u64,
}

#[derive(Default)]
struct Tally {
    new: AtomicU64,
    same: AtomicU64,
    refused: AtomicU64,
}

fn expect(r: Result<Permit, Error>, want: Result<Permit, ()>, tally: &Tally) {
    match (&r, want) {
        (Ok(Permit::New), Ok(Permit::New)) => tally.new.fetch_add(1, Ordering::Relaxed),
        (Ok(Permit::SameAsRecorded), Ok(Permit::SameAsRecorded)) => {
            tally.same.fetch_add(1, Ordering::Relaxed)
        }
        (
            Err(Error::Refused(
                Refusal::DoubleVote | Refusal::SurroundingVote | Refusal::DoubleBlockProposal,
            )),
            Err(()),
        ) => tally.refused.fetch_add(1, Ordering::Relaxed),
        _ => panic!("unexpected verdict {r:?}, wanted {want:?}"),
    };
}

/// Runs one workload; returns (decisions, seconds).
fn run(store: &dyn SlashingProtection, cfg: &Config, mode: Mode, first_epoch: u64) -> (u64, f64) {
    let tally = Tally::default();
    let barrier = Barrier::new(cfg.threads);
    let start = Instant::now();
    std::thread::scope(|sc| {
        for w in 0..cfg.threads {
            let (tally, barrier) = (&tally, &barrier);
            std::thread::Builder::new()
                .name(format!("bench-client-{w}"))
                .spawn_scoped(sc, move || {
                    barrier.wait();
                    let mine: Vec<u64> = (0..cfg.validators)
                        .filter(|v| *v as usize % cfg.threads == w)
                        .collect();
                    for e in first_epoch..first_epoch + cfg.epochs {
                        for &v in &mine {
                            let key = pk(v);
                            if mode == Mode::Blocks {
                                let r = store.sign_block(GVR, key, e, root(v, e));
                                expect(r, Ok(Permit::New), tally);
                                continue;
                            }
                            let r = store.sign_attestation(GVR, key, e - 1, e, root(v, e));
                            expect(r, Ok(Permit::New), tally);
                            if mode == Mode::Mixed && e % 4 == 0 && e >= 3 {
                                let r = store.sign_attestation(GVR, key, e - 1, e, root(v, e));
                                expect(r, Ok(Permit::SameAsRecorded), tally);
                                let r = store.sign_attestation(GVR, key, e - 1, e, root(v, 0));
                                expect(r, Err(()), tally);
                                let r = store.sign_attestation(GVR, key, e - 3, e + 1, root(v, 1));
                                expect(r, Err(()), tally);
                            }
                        }
                    }
                })
                .expect("spawn");
        }
    });
    let secs = start.elapsed().as_secs_f64();
    let n = tally.new.load(Ordering::Relaxed)
        + tally.same.load(Ordering::Relaxed)
        + tally.refused.load(Ordering::Relaxed);
    eprintln!(
        "    verdicts: {} new, {} same-as-recorded, {} refused",
        tally.new.load(Ordering::Relaxed),
        tally.same.load(Ordering::Relaxed),
        tally.refused.load(Ordering::Relaxed)
    );
    (n, secs)
}

fn bench(name: &str, store: &dyn SlashingProtection, cfg: &Config, modes: &[Mode]) {
    store.pin_genesis_validators_root(GVR).expect("pin");
    // Warm-up: register every validator and sign its first messages (the
    // first signing of a validator is always the full path).
    let warm = Config {
        threads: cfg.threads,
        validators: cfg.validators,
        epochs: 2,
    };
    run(store, &warm, Mode::Monotone, 1);
    run(store, &warm, Mode::Blocks, 1);
    let mut next = 3;
    for &mode in modes {
        let cpu0 = process_cpu_us();
        let w0 = threads_cpu_us("slashing-sqlit");
        let (n, secs) = run(store, cfg, mode, next);
        let cpu = process_cpu_us() - cpu0;
        let w = threads_cpu_us("slashing-sqlit") - w0;
        next += cfg.epochs + 2;
        println!(
            "{name:8} {mode:8?} threads={:3} validators={:4} decisions={:6} \
             {:8.0} decisions/s  CPU {:6.1} µs/decision (writer thread {:5.1} µs)",
            cfg.threads,
            cfg.validators,
            n,
            n as f64 / secs,
            cpu as f64 / n as f64,
            w as f64 / n as f64,
        );
    }
}

fn main() {
    let mut cfg = Config {
        threads: 64,
        validators: 100,
        epochs: 200,
    };
    let mut modes = vec![Mode::Monotone, Mode::Mixed, Mode::Blocks];
    let mut stores = vec!["sqlite".to_string()];
    let mut dir: Option<std::path::PathBuf> = None;
    let mut pg_url = "postgresql://postgres@127.0.0.1:5432/test".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--threads" => cfg.threads = val().parse().expect("--threads"),
            "--validators" => cfg.validators = val().parse().expect("--validators"),
            "--epochs" => cfg.epochs = val().parse().expect("--epochs"),
            "--mode" => {
                modes = vec![match val().as_str() {
                    "monotone" => Mode::Monotone,
                    "mixed" => Mode::Mixed,
                    "blocks" => Mode::Blocks,
                    other => panic!("unknown mode {other}"),
                }]
            }
            "--store" => {
                stores = match val().as_str() {
                    "both" => vec!["sqlite".into(), "postgres".into()],
                    s => vec![s.to_string()],
                }
            }
            "--dir" => dir = Some(val().into()),
            "--pg-url" => pg_url = val(),
            other => panic!("unknown argument {other}"),
        }
    }
    for s in &stores {
        match s.as_str() {
            "sqlite" => {
                let tmp = tempfile::tempdir_in(dir.clone().unwrap_or_else(std::env::temp_dir))
                    .expect("tempdir");
                let store = slashing::SqliteStore::open(&tmp.path().join("bench.sqlite"))
                    .expect("open sqlite");
                bench("sqlite", &store, &cfg, &modes);
            }
            "postgres" => {
                let schema = format!("ensign_bench_{}", std::process::id());
                let mut admin =
                    postgres::Client::connect(&pg_url, postgres::NoTls).expect("connect postgres");
                admin
                    .batch_execute(&format!("CREATE SCHEMA {schema}"))
                    .expect("create schema");
                let sep = if pg_url.contains('?') { '&' } else { '?' };
                let url = format!("{pg_url}{sep}options=-c%20search_path%3D{schema}");
                {
                    let store = PostgresStore::open_with_pool_size(&url, None, None, 16)
                        .expect("open postgres");
                    bench("postgres", &store, &cfg, &modes);
                }
                let _ = admin.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"));
            }
            other => panic!("unknown store {other}"),
        }
    }
}
