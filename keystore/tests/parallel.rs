//! Memory-bounded parallel loading: concurrent scrypt derivations must stay
//! within `LoadOptions::max_kdf_memory`, a keystore needing more than the
//! whole budget must still load (alone), and progress must be reported.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use keystore::{
    encrypt, load_key_configs_with, load_keystores_dir, load_keystores_dir_with, Kdf, Keystore,
    LoadOptions, LoadReport, PasswordSource, Progress, ValidatorKey,
};

fn key(seed: u8) -> ValidatorKey {
    let mut b = [0u8; 32];
    b[0] = 0x11;
    b[31] = seed;
    ValidatorKey::from_secret_bytes(&b).unwrap()
}

/// Writes `seeds.len()` keystores with KDF `kdf(seed)` and one shared
/// password file; returns the scrypt memory need of the last one.
fn fixture(dir: &Path, seeds: &[u8], kdf: impl Fn(u8) -> Kdf) -> u64 {
    fs::create_dir_all(dir).unwrap();
    let mut need = 0;
    for &seed in seeds {
        let json = encrypt(&key(seed), "pw", kdf(seed)).unwrap();
        need = Keystore::from_json(&json).unwrap().kdf_memory();
        fs::write(dir.join(format!("k{seed:03}.json")), json).unwrap();
    }
    need
}

/// A temporary `keys/` directory of keystores ([`fixture`]) and, beside it, `pw.txt`, the
/// password they share.
struct KeysDir {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    pw: PathBuf,
}

impl KeysDir {
    /// The directory, and the scrypt memory need of its last keystore.
    fn new(seeds: &[u8], kdf: impl Fn(u8) -> Kdf) -> (KeysDir, u64) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("keys");
        let need = fixture(&dir, seeds, kdf);
        let pw = tmp.path().join("pw.txt");
        fs::write(&pw, "pw").unwrap();
        let keys = KeysDir { _tmp: tmp, dir, pw };
        (keys, need)
    }

    fn load(&self, options: &LoadOptions<'_>) -> LoadReport {
        load_keystores_dir_with(&self.dir, &PasswordSource::File(self.pw.clone()), options)
    }
}

fn options(max_kdf_memory: u64, threads: usize) -> LoadOptions<'static> {
    LoadOptions {
        max_kdf_memory,
        threads,
        progress: None,
        cache: None,
    }
}

#[test]
fn budget_for_one_scrypt_serialises_them() {
    let seeds: Vec<u8> = (1..=8).collect();
    // n = 2^10, r = 8: about 1 MiB and a few milliseconds each.
    let (keys, need) = KeysDir::new(&seeds, |_| Kdf::Scrypt { n: 1 << 10 });
    assert_eq!(need, 128 * 8 * (1024 + 2));
    // The line's end is not part of the password.
    fs::write(&keys.pw, "pw\n").unwrap();

    let report = keys.load(&options(need, 4));
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.keys.len(), 8);
    let mut got: Vec<_> = report.keys.iter().map(|k| k.pubkey()).collect();
    got.sort();
    let mut want: Vec<_> = seeds.iter().map(|&s| key(s).pubkey()).collect();
    want.sort();
    assert_eq!(got, want);
    assert_eq!(report.stats.max_concurrent_scrypt, 1);
    assert_eq!(report.stats.peak_kdf_memory, need);
    assert_eq!(report.stats.kdf_runs, 8);
    assert_eq!(report.stats.cache_hits, 0);
}

#[test]
fn budget_for_two_never_exceeded() {
    let seeds: Vec<u8> = (1..=8).collect();
    let (keys, need) = KeysDir::new(&seeds, |_| Kdf::Scrypt { n: 1 << 10 });

    let report = keys.load(&options(2 * need, 4));
    assert_eq!(report.keys.len(), 8);
    assert!(report.errors.is_empty());
    assert!(
        (1..=2).contains(&report.stats.max_concurrent_scrypt),
        "{:?}",
        report.stats
    );
    assert!(report.stats.peak_kdf_memory <= 2 * need);
}

#[test]
fn oversized_keystore_runs_alone_instead_of_deadlocking() {
    let seeds: Vec<u8> = (1..=6).collect();
    // Odd seeds scrypt (18 KiB each), even seeds PBKDF2 (no budget).
    let (keys, _) = KeysDir::new(&seeds, |s| {
        if s % 2 == 1 {
            Kdf::Scrypt { n: 16 }
        } else {
            Kdf::Pbkdf2 { c: 16 }
        }
    });
    // n = 16, r = 8, p = 1: (16 + 1 + 1) blocks of 1 KiB.
    let scrypt_need = 128 * 8 * (16 + 2);

    // A budget far below a single scrypt's need, and even a zero one.
    for budget in [1024, 0] {
        let report = keys.load(&options(budget, 3));
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(report.keys.len(), 6);
        assert_eq!(report.stats.max_concurrent_scrypt, 1);
        assert_eq!(report.stats.peak_kdf_memory, scrypt_need);
        assert_eq!(report.stats.kdf_runs, 6);
    }
}

#[test]
fn pbkdf2_needs_no_budget() {
    let seeds: Vec<u8> = (1..=4).collect();
    let (keys, _) = KeysDir::new(&seeds, |_| Kdf::Pbkdf2 { c: 16 });
    let report = keys.load(&options(1, 2));
    assert_eq!(report.keys.len(), 4);
    assert_eq!(report.stats.max_concurrent_scrypt, 0);
    assert_eq!(report.stats.peak_kdf_memory, 0);
    assert_eq!(report.stats.kdf_runs, 4);
}

#[test]
fn progress_is_reported_per_source() {
    let seeds: Vec<u8> = (1..=5).collect();
    let (keys, _) = KeysDir::new(&seeds, |_| Kdf::Pbkdf2 { c: 16 });
    fs::write(keys.dir.join("broken.json"), "not json").unwrap();

    let seen: Mutex<Vec<Progress>> = Mutex::new(Vec::new());
    let record = |p: Progress| seen.lock().unwrap().push(p);
    let opts = LoadOptions {
        progress: Some(&record),
        threads: 3,
        ..LoadOptions::default()
    };
    let report = keys.load(&opts);
    assert_eq!(report.keys.len(), 5);
    assert_eq!(report.errors.len(), 1);

    let seen = seen.into_inner().unwrap();
    assert_eq!(seen.len(), 6);
    for (i, p) in seen.iter().enumerate() {
        assert_eq!(p.done, i + 1);
        assert_eq!(p.total, 6);
    }
    assert_eq!(seen.last().unwrap().errors, 1);
    assert!(seen.windows(2).all(|w| w[0].errors <= w[1].errors));
}

#[test]
fn default_wrappers_report_stats() {
    let (keys, _) = KeysDir::new(&[1, 2], |_| Kdf::Scrypt { n: 16 });
    fs::write(
        keys.dir.join("wrong.json"),
        encrypt(&key(3), "other", Kdf::Pbkdf2 { c: 16 }).unwrap(),
    )
    .unwrap();
    let report = load_keystores_dir(&keys.dir, &PasswordSource::File(keys.pw.clone()));
    assert_eq!(report.keys.len(), 2);
    assert_eq!(report.errors.len(), 1);
    // The wrong-password keystore still cost a KDF run.
    assert_eq!(report.stats.kdf_runs, 3);
    assert!(LoadOptions::default().max_kdf_memory >= 512 << 20);
    assert!(LoadOptions::default().threads >= 1);
}

#[test]
fn key_configs_respect_budget() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cfg");
    let seeds: Vec<u8> = (1..=4).collect();
    let need = fixture(&dir, &seeds, |_| Kdf::Scrypt { n: 1 << 8 });
    fs::write(dir.join("pw.txt"), "pw").unwrap();
    let mut yaml = String::new();
    for s in &seeds {
        yaml.push_str(&format!(
            "---\ntype: file-keystore\nkeystoreFile: k{s:03}.json\nkeystorePasswordFile: pw.txt\n"
        ));
    }
    fs::write(dir.join("keys.yaml"), yaml).unwrap();
    let report = load_key_configs_with(&dir, &options(need, 4));
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.keys.len(), 4);
    assert_eq!(report.stats.max_concurrent_scrypt, 1);
    assert_eq!(report.stats.kdf_runs, 4);
}
