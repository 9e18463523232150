//! What a fresh RSA-2048 key per KMS `Decrypt` costs an enclave's `Init` (issue 15): the
//! enclave makes one for every key record (`kms::recipient_key`, on a blocking thread), so the
//! key generation bounds how fast records load, before any KMS round trip or keystore KDF.
//!
//! `cargo bench -p enclave-bridge --bench recipient_key [-- KEYS]` (default 64): KEYS keys one
//! after another on one core (median, p90, max: RSA key generation time varies widely with the
//! primes drawn), then KEYS keys on every core at once (keys per second). Results go to
//! BENCHMARKS.md by hand, with the machine they ran on.

use std::time::{Duration, Instant};

fn main() {
    let keys: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .map(|a| a.parse().expect("KEYS must be a number"))
        .unwrap_or(64)
        .max(2);
    let mut one_core: Vec<Duration> = (0..keys)
        .map(|_| {
            let start = Instant::now();
            enclave_bridge::kms::recipient_key().expect("RSA key generation");
            start.elapsed()
        })
        .collect();
    one_core.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mean = one_core.iter().sum::<Duration>() / keys as u32;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let start = Instant::now();
    std::thread::scope(|s| {
        for c in 0..cores {
            let share = keys / cores + usize::from(c < keys % cores);
            s.spawn(move || {
                for _ in 0..share {
                    enclave_bridge::kms::recipient_key().expect("RSA key generation");
                }
            });
        }
    });
    let all_cores = keys as f64 / start.elapsed().as_secs_f64();
    println!("RSA-2048 recipient keys: {keys} per run, {cores} cores");
    println!("| one core: mean ms | median ms | p90 ms | max ms | all cores: keys/s |");
    println!("|---|---|---|---|---|");
    println!(
        "| {:.0} | {:.0} | {:.0} | {:.0} | {:.1} |",
        ms(mean),
        ms(one_core[keys / 2]),
        ms(one_core[keys * 9 / 10]),
        ms(one_core[keys - 1]),
        all_cores
    );
}
