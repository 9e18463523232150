//! Directory loading: Web3Signer YAML key configs and keystore directories.
//! Every failure must be reported for its own file while the other keys in
//! the same directory still load.

use std::fs;
use std::path::Path;

use keystore::{
    encrypt, load_key_configs, load_keystore_file, load_keystores_dir, Error, Kdf, LoadReport,
    PasswordSource, ValidatorKey,
};

const PBKDF2_VECTOR: &str = include_str!("vectors/eip2335-pbkdf2.json");
const VECTOR_PASSWORD: &str = "𝔱𝔢𝔰𝔱𝔭𝔞𝔰𝔰𝔴𝔬𝔯𝔡🔑";
const VECTOR_SECRET: &str = "000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f";

/// A distinct valid key per seed byte (small scalars are all below r).
fn key(seed: u8) -> ValidatorKey {
    let mut b = [0u8; 32];
    b[31] = seed;
    b[0] = 0x10;
    ValidatorKey::from_secret_bytes(&b).unwrap()
}

fn secret_hex(seed: u8) -> String {
    hex::encode(key(seed).secret().to_bytes())
}

fn small_keystore(seed: u8, password: &str) -> String {
    // Alternate KDFs so both are exercised through the loaders.
    let kdf = if seed & 1 == 0 {
        Kdf::Pbkdf2 { c: 16 }
    } else {
        Kdf::Scrypt { n: 16 }
    };
    encrypt(&key(seed), password, kdf).unwrap()
}

fn edit(json: &str, f: impl FnOnce(&mut serde_json::Value)) -> String {
    let mut v: serde_json::Value = serde_json::from_str(json).unwrap();
    f(&mut v);
    v.to_string()
}

fn write(path: impl AsRef<Path>, contents: impl AsRef<[u8]>) {
    fs::write(path, contents).unwrap();
}

/// A `file-keystore` config naming `keystore` and `password_file`: relative to the config's
/// directory, or absolute.
fn keystore_config(
    keystore: impl std::fmt::Display,
    password_file: impl std::fmt::Display,
) -> String {
    format!(
        "type: file-keystore\nkeystoreFile: {keystore}\nkeystorePasswordFile: {password_file}\n"
    )
}

fn file_name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

fn error_for<'a>(report: &'a LoadReport, name: &str) -> &'a Error {
    let found: Vec<_> = report
        .errors
        .iter()
        .filter(|e| file_name(&e.path) == name)
        .collect();
    assert_eq!(found.len(), 1, "expected one error for {name}: {report:#?}");
    &found[0].error
}

/// The report has `others` errors, plus, on unix (where the fixtures make one), the I/O error
/// of the dangling symlink `dangling`.
fn assert_errors_with_dangling(report: &LoadReport, dangling: &str, others: usize) {
    let mut expected = others;
    if cfg!(unix) {
        assert!(matches!(error_for(report, dangling), Error::Io { .. }));
        expected += 1;
    }
    assert_eq!(report.errors.len(), expected, "{report:#?}");
}

fn pubkeys(report: &LoadReport) -> Vec<[u8; 48]> {
    report.keys.iter().map(|k| k.pubkey()).collect()
}

/// Builds a keystore directory with good and bad files.
fn keystore_fixture(dir: &Path, pw: &Path) {
    fs::create_dir_all(pw).unwrap();
    write(dir.join("good1.json"), small_keystore(1, "one"));
    write(pw.join("good1.txt"), "one\n");
    write(dir.join("good2.JSON"), small_keystore(2, "two"));
    write(pw.join("good2.txt"), "two\r\n");
    write(dir.join("wrongpw.json"), small_keystore(3, "three"));
    write(pw.join("wrongpw.txt"), "not three\n");
    let corrupted = edit(&small_keystore(4, "four"), |v| {
        v["crypto"]["checksum"]["message"] = serde_json::json!("00".repeat(32));
    });
    write(dir.join("badchecksum.json"), corrupted);
    write(pw.join("badchecksum.txt"), "four");
    let absurd = edit(&small_keystore(5, "five"), |v| {
        v["crypto"]["kdf"]["params"]["n"] = serde_json::json!(1u64 << 36);
    });
    write(dir.join("absurd.json"), absurd);
    write(pw.join("absurd.txt"), "five");
    let other = hex::encode(key(99).pubkey());
    let mismatch = edit(&small_keystore(6, "six"), |v| {
        v["pubkey"] = serde_json::json!(other);
    });
    write(dir.join("mismatch.json"), mismatch);
    write(pw.join("mismatch.txt"), "six");
    write(dir.join("nopassword.json"), small_keystore(7, "seven"));
    write(dir.join("notjson.json"), "garbage {");
    write(pw.join("notjson.txt"), "x");
    // Same key as good1, later in name order: reported as duplicate.
    write(dir.join("zdup.json"), small_keystore(1, "one"));
    write(pw.join("zdup.txt"), "one");
    // Ignored: hidden, wrong extension, directory.
    write(dir.join(".hidden.json"), "garbage");
    write(dir.join("notes.txt"), "garbage");
    fs::create_dir(dir.join("subdir.json")).unwrap();
    // Dangling symlink: listed, then reported as unreadable.
    #[cfg(unix)]
    std::os::unix::fs::symlink(dir.join("does-not-exist"), dir.join("dangling.json")).unwrap();
}

#[test]
fn keystores_dir_with_password_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("keys");
    fs::create_dir(&dir).unwrap();
    let pw = tmp.path().join("passwords");
    keystore_fixture(&dir, &pw);

    let report = load_keystores_dir(&dir, &PasswordSource::Dir(pw));
    assert_eq!(pubkeys(&report), vec![key(1).pubkey(), key(2).pubkey()]);

    assert!(matches!(
        error_for(&report, "wrongpw.json"),
        Error::WrongPassword
    ));
    assert!(matches!(
        error_for(&report, "badchecksum.json"),
        Error::WrongPassword
    ));
    let absurd = error_for(&report, "absurd.json");
    assert!(matches!(absurd, Error::ScryptMemory { .. }));
    assert_eq!(
        absurd.to_string(),
        "scrypt parameters need 64 TiB, limit is 512 MiB"
    );
    assert!(matches!(
        error_for(&report, "mismatch.json"),
        Error::PubkeyMismatch { .. }
    ));
    match error_for(&report, "nopassword.json") {
        Error::Io { path, source } => {
            assert_eq!(file_name(path), "nopassword.txt");
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        e => panic!("unexpected {e:?}"),
    }
    assert!(matches!(
        error_for(&report, "notjson.json"),
        Error::InvalidJson(_)
    ));
    match error_for(&report, "zdup.json") {
        Error::DuplicatePubkey { pubkey, first } => {
            assert_eq!(pubkey, &hex::encode(key(1).pubkey()));
            assert_eq!(file_name(first), "good1.json");
        }
        e => panic!("unexpected {e:?}"),
    }
    assert_errors_with_dangling(&report, "dangling.json", 7);
    assert_no_secrets(&report, &[1, 2]);
}

#[test]
fn keystores_dir_with_shared_password_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write(dir.join("a.json"), small_keystore(10, "shared"));
    write(dir.join("b.json"), small_keystore(11, "shared"));
    write(dir.join("c.json"), small_keystore(12, "different"));
    let pw = tmp.path().join("password.txt"); // not *.json, so not a keystore
    write(&pw, "shared\n");
    let report = load_keystores_dir(dir, &PasswordSource::File(pw));
    assert_eq!(pubkeys(&report), vec![key(10).pubkey(), key(11).pubkey()]);
    assert!(matches!(error_for(&report, "c.json"), Error::WrongPassword));
    assert_eq!(report.errors.len(), 1);
}

#[test]
fn missing_directory_is_one_error() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope");
    let r = load_keystores_dir(&missing, &PasswordSource::File(tmp.path().join("pw")));
    assert!(r.keys.is_empty());
    assert_eq!(r.errors.len(), 1);
    assert_eq!(r.errors[0].path, missing);
    assert!(matches!(r.errors[0].error, Error::Io { .. }));
    let r = load_key_configs(&missing);
    assert_eq!(r.errors.len(), 1);
}

#[test]
fn oversized_files_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let big = tmp.path().join("big.json");
    write(
        &big,
        vec![b' '; keystore::MAX_KEYSTORE_FILE_LEN as usize + 1],
    );
    assert!(matches!(
        load_keystore_file(&big, &big),
        Err(Error::FileTooLarge { .. })
    ));
}

#[test]
fn password_file_not_utf8() {
    let tmp = tempfile::tempdir().unwrap();
    let ks = tmp.path().join("k.json");
    write(&ks, small_keystore(20, "x"));
    let pw = tmp.path().join("k.txt");
    write(&pw, [0xff, 0xfe]);
    assert!(matches!(
        load_keystore_file(&ks, &pw),
        Err(Error::PasswordNotUtf8(_))
    ));
}

#[test]
fn key_configs_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("configs");
    let ks_dir = dir.join("keystores");
    fs::create_dir_all(&ks_dir).unwrap();

    // Two raw keys in one file, with and without 0x, keyType optional.
    write(
        dir.join("a-raw.yaml"),
        format!(
            "type: \"file-raw\"\nkeyType: \"BLS\"\nprivateKey: \"0x{}\"\n---\ntype: file-raw\nprivateKey: {}\n",
            secret_hex(30),
            secret_hex(31)
        ),
    );
    // Keystore with paths relative to the config file's directory; the
    // official EIP-2335 vector and its Unicode password (with a trailing
    // newline, as editors write it).
    write(ks_dir.join("vector.json"), PBKDF2_VECTOR);
    write(ks_dir.join("vector.pw"), format!("{VECTOR_PASSWORD}\n"));
    write(
        dir.join("b-keystore.yml"),
        "type: file-keystore\nkeyType: BLS\nkeystoreFile: keystores/vector.json\nkeystorePasswordFile: keystores/vector.pw\n",
    );
    // Absolute paths work as well; extra fields are tolerated.
    write(ks_dir.join("small.json"), small_keystore(32, "pw"));
    write(ks_dir.join("small.txt"), "pw");
    let absolute = keystore_config(
        ks_dir.join("small.json").display(),
        ks_dir.join("small.txt").display(),
    );
    write(dir.join("c-absolute.yaml"), absolute + "note: extra\n");
    // A good document, a bad one and an empty one in the same file.
    write(
        dir.join("d-mixed.yaml"),
        format!(
            "type: file-raw\nprivateKey: {}\n---\ntype: file-raw\n---\n",
            secret_hex(33)
        ),
    );
    // Failures, one per file.
    write(
        dir.join("e-aws.yaml"),
        "type: aws-secret\nkeyType: BLS\nsecretName: x\n",
    );
    write(
        dir.join("f-hashicorp.yaml"),
        "type: hashicorp\nkeyPath: /v1/secret\n",
    );
    write(dir.join("g-bad.yaml"), "type: [unclosed\n  : :\n");
    // Good document, then a syntax error: the good one still loads.
    write(
        dir.join("g2-partial.yaml"),
        format!(
            "type: file-raw\nprivateKey: {}\n---\ntype: [unclosed\n",
            secret_hex(36)
        ),
    );
    write(
        dir.join("h-secp.yaml"),
        format!(
            "type: file-raw\nkeyType: SECP256K1\nprivateKey: {}\n",
            secret_hex(34)
        ),
    );
    write(
        dir.join("i-missing.yaml"),
        keystore_config("keystores/missing.json", "keystores/small.txt"),
    );
    write(ks_dir.join("wrong.json"), small_keystore(35, "right"));
    write(ks_dir.join("wrong.txt"), "wrong\n");
    write(
        dir.join("j-wrongpw.yaml"),
        keystore_config("keystores/wrong.json", "keystores/wrong.txt"),
    );
    write(
        dir.join("k-badhex.yaml"),
        "type: file-raw\nprivateKey: \"0xnothex\"\n",
    );
    write(
        dir.join("l-zero.yaml"),
        format!("type: file-raw\nprivateKey: \"{}\"\n", "00".repeat(32)),
    );
    // Same key as a-raw's first document: duplicate.
    write(
        dir.join("m-dup.yaml"),
        format!("type: file-raw\nprivateKey: \"{}\"\n", secret_hex(30)),
    );
    write(dir.join("n-notype.yaml"), "privateKey: \"00\"\n");
    #[cfg(unix)]
    std::os::unix::fs::symlink(dir.join("gone.yaml"), dir.join("o-dangling.yaml")).unwrap();
    // Ignored files.
    write(dir.join(".hidden.yaml"), "type: aws-secret\n");
    write(dir.join("readme.md"), "type: aws-secret\n");

    let report = load_key_configs(&dir);

    let vector_key = ValidatorKey::from_secret_bytes(&hex::decode(VECTOR_SECRET).unwrap()).unwrap();
    assert_eq!(
        pubkeys(&report),
        vec![
            key(30).pubkey(),
            key(31).pubkey(),
            vector_key.pubkey(),
            key(32).pubkey(),
            key(33).pubkey(),
            key(36).pubkey(),
        ],
        "{report:#?}"
    );

    match error_for(&report, "d-mixed.yaml") {
        Error::InvalidConfig { document, reason } => {
            assert_eq!(*document, 1);
            assert!(reason.contains("privateKey"), "{reason}");
        }
        e => panic!("unexpected {e:?}"),
    }
    // With the `aws` feature the type is known, and this document lacks
    // the SPECIFIED credentials (refused before any network call);
    // without it the build says which feature is missing.
    match error_for(&report, "e-aws.yaml") {
        #[cfg(feature = "aws")]
        Error::InvalidConfig { reason, .. } => assert!(reason.contains("accessKeyId"), "{reason}"),
        #[cfg(not(feature = "aws"))]
        Error::FeatureDisabled { kind, .. } => assert_eq!(kind, "aws-secret"),
        e => panic!("unexpected {e:?}"),
    }
    assert_eq!(
        error_for(&report, "f-hashicorp.yaml").to_string(),
        "unsupported key type `hashicorp`"
    );
    assert!(matches!(
        error_for(&report, "g-bad.yaml"),
        Error::InvalidConfig { document: 0, .. }
    ));
    assert!(matches!(
        error_for(&report, "g2-partial.yaml"),
        Error::InvalidConfig { document: 1, .. }
    ));
    assert!(matches!(
        error_for(&report, "h-secp.yaml"),
        Error::UnsupportedKeyAlgorithm(_)
    ));
    // Keystore-stage errors name the keystore file.
    match error_for(&report, "missing.json") {
        Error::Io { path, .. } => assert_eq!(file_name(path), "missing.json"),
        e => panic!("unexpected {e:?}"),
    }
    assert!(matches!(
        error_for(&report, "wrong.json"),
        Error::WrongPassword
    ));
    assert!(matches!(
        error_for(&report, "k-badhex.yaml"),
        Error::InvalidConfig { .. }
    ));
    assert!(matches!(
        error_for(&report, "l-zero.yaml"),
        Error::InvalidSecretKey
    ));
    match error_for(&report, "m-dup.yaml") {
        Error::DuplicatePubkey { first, .. } => assert_eq!(file_name(first), "a-raw.yaml"),
        e => panic!("unexpected {e:?}"),
    }
    assert!(matches!(
        error_for(&report, "n-notype.yaml"),
        Error::InvalidConfig { .. }
    ));
    assert_errors_with_dangling(&report, "o-dangling.yaml", 12);

    assert_no_secrets(&report, &[30, 31, 33, 34, 36]);
    let rendered = format!("{report:?}");
    assert!(!rendered.contains(&VECTOR_SECRET[10..]));
}

/// Neither `Debug` nor `Display` of a report may contain secret hex.
fn assert_no_secrets(report: &LoadReport, seeds: &[u8]) {
    let mut rendered = format!("{report:?}\n{report:#?}\n");
    for e in &report.errors {
        rendered.push_str(&format!("{e}\n{}\n", e.error));
    }
    for seed in seeds {
        let s = secret_hex(*seed);
        assert!(!rendered.contains(&s), "leaked secret of key {seed}");
    }
}
