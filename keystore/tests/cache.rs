//! The restart cache: hits skip the KDF, any change to a keystore file or
//! its password misses, removed keystores are forgotten, a wrong operator
//! secret or a damaged file is an error, and no secret is ever written in
//! the clear.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use keystore::{
    encrypt, load_key_configs_with, load_keystores_dir_with, Error, Kdf, KeyCache, LoadOptions,
    LoadReport, PasswordSource, ValidatorKey,
};

/// EIP-2335 PBKDF2 test vector: c = 2^18, the "big" KDF a cache must skip.
const PBKDF2_VECTOR: &str = include_str!("vectors/eip2335-pbkdf2.json");
const VECTOR_PASSWORD: &str = "𝔱𝔢𝔰𝔱𝔭𝔞𝔰𝔰𝔴𝔬𝔯𝔡🔑";
const VECTOR_SECRET: &str = "000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f";
const OPERATOR: &[u8] = b"operator secret for tests";

fn key(seed: u8) -> ValidatorKey {
    let mut b = [0u8; 32];
    b[0] = 0x12;
    b[31] = seed;
    ValidatorKey::from_secret_bytes(&b).unwrap()
}

struct Fixture {
    _tmp: tempfile::TempDir,
    keys: PathBuf,
    passwords: PathBuf,
    cache: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let keys = tmp.path().join("keys");
        let passwords = tmp.path().join("passwords");
        fs::create_dir(&keys).unwrap();
        fs::create_dir(&passwords).unwrap();
        let cache = tmp.path().join("state").join("keys.cache");
        fs::create_dir(cache.parent().unwrap()).unwrap();
        Fixture {
            _tmp: tmp,
            keys,
            passwords,
            cache,
        }
    }

    fn add(&self, name: &str, json: &str, password: &str) {
        fs::write(self.keys.join(format!("{name}.json")), json).unwrap();
        fs::write(self.passwords.join(format!("{name}.txt")), password).unwrap();
    }

    fn add_small(&self, name: &str, seed: u8, password: &str) {
        let json = encrypt(&key(seed), password, Kdf::Scrypt { n: 16 }).unwrap();
        self.add(name, &json, password);
    }

    /// A load with a freshly opened cache, as a restarted process does.
    fn load(&self) -> LoadReport {
        let cache = Mutex::new(KeyCache::open(&self.cache, OPERATOR).unwrap());
        let opts = LoadOptions {
            cache: Some(&cache),
            ..LoadOptions::default()
        };
        load_keystores_dir_with(
            &self.keys,
            &PasswordSource::Dir(self.passwords.clone()),
            &opts,
        )
    }

    fn reopen(&self) -> KeyCache {
        KeyCache::open(&self.cache, OPERATOR).unwrap()
    }
}

fn pubkeys(report: &LoadReport) -> Vec<[u8; 48]> {
    let mut v: Vec<_> = report.keys.iter().map(|k| k.pubkey()).collect();
    v.sort();
    v
}

#[test]
fn hit_skips_the_kdf() {
    let f = Fixture::new();
    f.add("vector", PBKDF2_VECTOR, VECTOR_PASSWORD);
    f.add_small("small", 1, "pw");

    let first = f.load();
    assert!(first.errors.is_empty(), "{:?}", first.errors);
    assert_eq!(first.stats.kdf_runs, 2);
    assert_eq!(first.stats.cache_hits, 0);
    assert_eq!(f.reopen().len(), 2);

    let second = f.load();
    assert!(second.errors.is_empty(), "{:?}", second.errors);
    assert_eq!(second.stats.kdf_runs, 0);
    assert_eq!(second.stats.cache_hits, 2);
    assert_eq!(pubkeys(&first), pubkeys(&second));
    let vector_key = second
        .keys
        .iter()
        .find(|k| k.pubkey() != key(1).pubkey())
        .unwrap();
    assert_eq!(hex::encode(vector_key.secret().to_bytes()), VECTOR_SECRET);
}

#[test]
fn modified_keystore_file_misses() {
    let f = Fixture::new();
    let json = encrypt(&key(1), "pw", Kdf::Pbkdf2 { c: 16 }).unwrap();
    f.add("a", &json, "pw");
    assert_eq!(f.load().stats.kdf_runs, 1);

    // Same key, same password, one more byte of whitespace: the file is
    // different, so the cache must not answer for it.
    f.add("a", &format!("{json}\n"), "pw");
    let report = f.load();
    assert_eq!(report.stats.kdf_runs, 1);
    assert_eq!(report.stats.cache_hits, 0);
    assert_eq!(pubkeys(&report), vec![key(1).pubkey()]);
    // The stale entry was replaced, not kept alongside.
    assert_eq!(f.reopen().len(), 1);

    // A keystore re-encrypted to another key under the same name.
    f.add(
        "a",
        &encrypt(&key(2), "pw", Kdf::Pbkdf2 { c: 16 }).unwrap(),
        "pw",
    );
    let report = f.load();
    assert_eq!(report.stats.cache_hits, 0);
    assert_eq!(pubkeys(&report), vec![key(2).pubkey()]);
}

#[test]
fn changed_password_misses() {
    let f = Fixture::new();
    f.add_small("a", 1, "right");
    assert_eq!(f.load().stats.kdf_runs, 1);

    // The keystore is unchanged but the password file now says something
    // else: the cache must not vouch for it, the KDF runs and refuses it.
    fs::write(f.passwords.join("a.txt"), "wrong").unwrap();
    let report = f.load();
    assert_eq!(report.stats.cache_hits, 0);
    assert_eq!(report.stats.kdf_runs, 1);
    assert!(report.keys.is_empty());
    assert!(matches!(report.errors[0].error, Error::WrongPassword));
    // The failed keystore's entry is gone too.
    assert!(f.reopen().is_empty());

    // Right password again: a miss (the entry was dropped), then a hit.
    // A trailing newline is not part of the password, so it still hits.
    fs::write(f.passwords.join("a.txt"), "right").unwrap();
    assert_eq!(f.load().stats.kdf_runs, 1);
    fs::write(f.passwords.join("a.txt"), "right\n").unwrap();
    let report = f.load();
    assert_eq!(report.stats.cache_hits, 1);
    assert_eq!(report.stats.kdf_runs, 0);
}

#[test]
fn removed_keystore_entry_is_dropped() {
    let f = Fixture::new();
    f.add_small("a", 1, "pw");
    f.add_small("b", 2, "pw");
    assert_eq!(f.load().stats.kdf_runs, 2);
    let b_bytes = fs::read(f.keys.join("b.json")).unwrap();
    let cache = f.reopen();
    assert_eq!(cache.len(), 2);
    assert!(cache.get(&b_bytes, "pw").is_some());

    fs::remove_file(f.keys.join("b.json")).unwrap();
    let report = f.load();
    assert_eq!(report.stats.cache_hits, 1);
    assert_eq!(pubkeys(&report), vec![key(1).pubkey()]);

    let cache = f.reopen();
    assert_eq!(cache.len(), 1);
    assert!(cache.get(&b_bytes, "pw").is_none());
}

#[test]
fn wrong_operator_secret_is_its_own_error() {
    let f = Fixture::new();
    f.add_small("a", 1, "pw");
    f.load();
    let err = KeyCache::open(&f.cache, b"another operator secret").unwrap_err();
    assert!(matches!(err, Error::CacheWrongSecret { .. }), "{err}");
    // The file is untouched and still opens with the right secret.
    assert_eq!(f.reopen().len(), 1);
    assert!(matches!(
        KeyCache::open(&f.cache, b""),
        Err(Error::CacheEmptySecret)
    ));
}

#[test]
fn truncated_or_damaged_file_is_corrupt_and_rebuildable() {
    let f = Fixture::new();
    f.add_small("a", 1, "pw");
    f.load();
    let good = fs::read(&f.cache).unwrap();

    for bad in [
        good[..good.len() - 1].to_vec(),
        good[..good.len() / 2].to_vec(),
        good[..10].to_vec(),
        Vec::new(),
        b"not a cache file at all, but long enough to have a header and a trailer.....".to_vec(),
    ] {
        fs::write(&f.cache, &bad).unwrap();
        let err = KeyCache::open(&f.cache, OPERATOR).unwrap_err();
        assert!(matches!(err, Error::CacheCorrupt { .. }), "{err}");
    }

    // The caller's rebuild path: delete and start afresh.
    fs::remove_file(&f.cache).unwrap();
    let report = f.load();
    assert_eq!(report.stats.kdf_runs, 1);
    assert_eq!(f.reopen().len(), 1);
}

#[test]
fn tampered_entry_never_yields_a_key() {
    let f = Fixture::new();
    f.add_small("a", 1, "pw");
    f.load();
    let mut bytes = fs::read(&f.cache).unwrap();
    // Flip a ciphertext byte of the only entry (80-byte prefix, then id 32,
    // nonce 12) and recompute the unkeyed trailer so the file parses.
    bytes[80 + 32 + 12] ^= 0x01;
    let body = bytes.len() - 32;
    let digest = sha2_digest(&bytes[..body]);
    bytes[body..].copy_from_slice(&digest);
    fs::write(&f.cache, &bytes).unwrap();

    let cache = f.reopen();
    let ks = fs::read(f.keys.join("a.json")).unwrap();
    assert!(cache.get(&ks, "pw").is_none());
    // The load falls back to the KDF and still gets the right key.
    let report = f.load();
    assert_eq!(report.stats.cache_hits, 0);
    assert_eq!(report.stats.kdf_runs, 1);
    assert_eq!(pubkeys(&report), vec![key(1).pubkey()]);
}

fn sha2_digest(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(data).into()
}

#[test]
fn file_holds_no_plain_secret_and_is_private() {
    let f = Fixture::new();
    let seeds = [1u8, 2, 3];
    for s in seeds {
        f.add_small(&format!("k{s}"), s, "pw");
    }
    f.add("vector", PBKDF2_VECTOR, VECTOR_PASSWORD);
    let report = f.load();
    assert_eq!(report.keys.len(), 4);

    let bytes = fs::read(&f.cache).unwrap();
    let text = String::from_utf8_lossy(&bytes).to_lowercase();
    let mut secrets: Vec<[u8; 32]> = seeds.iter().map(|&s| key(s).secret().to_bytes()).collect();
    secrets.push(hex::decode(VECTOR_SECRET).unwrap().try_into().unwrap());
    for secret in &secrets {
        // No 8-byte window of any secret appears raw, nor its hex.
        for window in secret.windows(8) {
            assert!(!bytes.windows(8).any(|w| w == window));
        }
        assert!(!text.contains(&hex::encode(&secret[16..])));
        let reversed: Vec<u8> = secret.iter().rev().copied().collect();
        assert!(!bytes.windows(16).any(|w| w == &reversed[..16]));
    }
    // Nor the password bytes.
    assert!(!text.contains("testpassword"));

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&f.cache).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // Atomic writes leave no temporary files behind.
    let names: Vec<_> = fs::read_dir(f.cache.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![f.cache.file_name().unwrap().to_owned()]);
}

#[test]
fn new_cache_is_written_private_on_open() {
    let f = Fixture::new();
    let cache = f.reopen();
    assert!(cache.is_empty());
    assert!(f.cache.exists());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&f.cache).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // A save after loosening the mode restores 0600 (new file, renamed).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&f.cache, fs::Permissions::from_mode(0o644)).unwrap();
        cache.save().unwrap();
        let mode = fs::metadata(&f.cache).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // Unwritable location: an error, not a panic.
    let err = KeyCache::open(Path::new("/nonexistent-dir/x.cache"), OPERATOR).unwrap_err();
    assert!(matches!(err, Error::CacheWrite { .. }), "{err}");
}

#[test]
fn direct_api_and_pubkey_check() {
    let f = Fixture::new();
    let mut cache = f.reopen();
    let k1 = key(1);
    let json = encrypt(&k1, "pw", Kdf::Pbkdf2 { c: 16 }).unwrap();
    assert!(cache.get(json.as_bytes(), "pw").is_none());
    let id = cache.insert(json.as_bytes(), "pw", &k1).unwrap();
    assert!(cache.contains(&id));
    assert_eq!(
        cache.get(json.as_bytes(), "pw").unwrap().pubkey(),
        k1.pubkey()
    );
    assert!(cache.get(json.as_bytes(), "pw2").is_none());
    // Normalisation-equivalent password (EIP-2335 strips C0/C1 controls).
    assert!(cache.get(json.as_bytes(), "p\u{0}w").is_some());

    // An entry whose secret disagrees with the keystore's pubkey field is
    // never returned.
    let lying = encrypt(&key(2), "pw", Kdf::Pbkdf2 { c: 16 }).unwrap();
    cache.insert(lying.as_bytes(), "pw", &k1).unwrap();
    assert!(cache.get(lying.as_bytes(), "pw").is_none());

    assert_eq!(cache.retain_only([id]), 1);
    cache.save().unwrap();
    let reopened = f.reopen();
    assert_eq!(reopened.len(), 1);
    assert!(reopened.get(json.as_bytes(), "pw").is_some());
    // Debug output names no secret.
    let dbg = format!("{reopened:?}");
    assert!(!dbg.contains(&hex::encode(k1.secret().to_bytes())));
}

#[test]
fn key_configs_use_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cfg");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("k.json"), PBKDF2_VECTOR).unwrap();
    fs::write(dir.join("k.txt"), VECTOR_PASSWORD).unwrap();
    fs::write(
        dir.join("keys.yaml"),
        "type: file-keystore\nkeystoreFile: k.json\nkeystorePasswordFile: k.txt\n---\ntype: file-raw\nprivateKey: \"0x1200000000000000000000000000000000000000000000000000000000000007\"\n",
    )
    .unwrap();
    let cache_path = tmp.path().join("c");
    let run = || {
        let cache = Mutex::new(KeyCache::open(&cache_path, OPERATOR).unwrap());
        let opts = LoadOptions {
            cache: Some(&cache),
            ..LoadOptions::default()
        };
        load_key_configs_with(&dir, &opts)
    };
    let first = run();
    assert!(first.errors.is_empty(), "{:?}", first.errors);
    assert_eq!(first.keys.len(), 2);
    assert_eq!((first.stats.kdf_runs, first.stats.cache_hits), (1, 0));
    let second = run();
    assert_eq!(second.keys.len(), 2);
    assert_eq!((second.stats.kdf_runs, second.stats.cache_hits), (0, 1));
    // Raw keys are never cached: only the keystore has an entry.
    assert_eq!(KeyCache::open(&cache_path, OPERATOR).unwrap().len(), 1);
}
