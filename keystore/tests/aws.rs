//! AWS key sources against moto's server on loopback (a real HTTP stand-in
//! for KMS and Secrets Manager; see `common/moto.rs`): `aws-kms-encrypted`
//! and `aws-secret` key configs, bulk Secrets Manager loading, and the
//! failures an operator will meet (wrong ciphertext, unreachable endpoint,
//! disabled key, missing secret, a secret that is not a key), each of which
//! must fail alone while the other keys still load.

#![cfg(feature = "aws")]

use test_support::moto;

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use aws_sdk_kms::primitives::Blob;
use base64::Engine;
use keystore::aws::sdk_config;
use keystore::{
    encrypt, load_aws_secrets_bulk, load_key_configs, AwsAuth, AwsSecretsBulk, Error, Kdf,
    LoadReport, ValidatorKey,
};
use moto::Moto;
use zeroize::Zeroizing;

const REGION: &str = "us-east-1";

fn auth() -> AwsAuth {
    AwsAuth::Specified {
        access_key_id: "testing".into(),
        secret_access_key: Zeroizing::new("testing".into()),
    }
}

/// The SPECIFIED-mode YAML lines every config here shares.
fn conn_yaml(endpoint: &str) -> String {
    format!(
        "authenticationMode: SPECIFIED\naccessKeyId: testing\nsecretAccessKey: testing\n\
         region: {REGION}\nendpointOverride: {endpoint}\n"
    )
}

/// A distinct valid key per seed.
fn key(seed: u8) -> ValidatorKey {
    let mut b = [0u8; 32];
    b[0] = 0x2a;
    b[31] = seed;
    ValidatorKey::from_secret_bytes(&b).unwrap()
}

fn secret_bytes(seed: u8) -> Vec<u8> {
    key(seed).secret().to_bytes().to_vec()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

struct Aws {
    kms: aws_sdk_kms::Client,
    sm: aws_sdk_secretsmanager::Client,
}

fn clients(moto: &Moto) -> Aws {
    let config = block_on(sdk_config(&auth(), Some(REGION), Some(&moto.url))).unwrap();
    Aws {
        kms: aws_sdk_kms::Client::new(&config),
        sm: aws_sdk_secretsmanager::Client::new(&config),
    }
}

impl Aws {
    fn create_key(&self) -> String {
        block_on(self.kms.create_key().description("ensign test").send())
            .unwrap()
            .key_metadata()
            .unwrap()
            .key_id()
            .to_owned()
    }

    fn encrypt(&self, key_id: &str, plaintext: &[u8], context: &[(&str, &str)]) -> Vec<u8> {
        let ctx: HashMap<String, String> = context
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let out = block_on(
            self.kms
                .encrypt()
                .key_id(key_id)
                .plaintext(Blob::new(plaintext))
                .set_encryption_context((!ctx.is_empty()).then_some(ctx))
                .send(),
        )
        .unwrap();
        out.ciphertext_blob().unwrap().as_ref().to_vec()
    }

    fn create_secret(&self, name: &str, value: &str, tags: &[(&str, &str)]) {
        let tags = tags
            .iter()
            .map(|(k, v)| {
                aws_sdk_secretsmanager::types::Tag::builder()
                    .key(*k)
                    .value(*v)
                    .build()
            })
            .collect::<Vec<_>>();
        block_on(
            self.sm
                .create_secret()
                .name(name)
                .secret_string(value)
                .set_tags((!tags.is_empty()).then_some(tags))
                .send(),
        )
        .unwrap();
    }
}

fn pubkeys(report: &LoadReport) -> Vec<[u8; 48]> {
    let mut v: Vec<_> = report.keys.iter().map(|k| k.pubkey()).collect();
    v.sort();
    v
}

fn expected(seeds: &[u8]) -> Vec<[u8; 48]> {
    let mut v: Vec<_> = seeds.iter().map(|s| key(*s).pubkey()).collect();
    v.sort();
    v
}

/// The report holds the keys of exactly `seeds`, in any order, and `errors` errors.
fn assert_loaded(report: &LoadReport, seeds: &[u8], errors: usize) {
    assert_eq!(pubkeys(report), expected(seeds), "{:?}", report.errors);
    assert_eq!(report.errors.len(), errors, "{:?}", report.errors);
}

/// The error reported for `file`, as text.
fn error_for(report: &LoadReport, file: &str) -> String {
    let errs: Vec<_> = report
        .errors
        .iter()
        .filter(|e| e.path.file_name().is_some_and(|n| n == file))
        .collect();
    assert_eq!(
        errs.len(),
        1,
        "want one error for {file}: {:?}",
        report.errors
    );
    errs[0].error.to_string()
}

fn write(dir: &Path, name: &str, text: &str) {
    fs::write(dir.join(name), text).unwrap();
}

#[test]
fn kms_encrypted_keys_and_failures() {
    let Some(moto) = Moto::start() else { return };
    let aws = clients(&moto);
    let kms_key = aws.create_key();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let conn = conn_yaml(&moto.url);

    // 1: raw 32-byte plaintext, inline base64, with an encryption context.
    let ct1 = aws.encrypt(&kms_key, &secret_bytes(1), &[("validator", "1")]);
    write(
        d,
        "k1.yaml",
        &format!(
            "type: aws-kms-encrypted\nciphertext: {}\nencryptionContext:\n  validator: \"1\"\n\
             kmsKeyId: {kms_key}\n{conn}",
            b64(&ct1)
        ),
    );
    // 2: hex-text plaintext in a binary ciphertext file.
    let ct2 = aws.encrypt(
        &kms_key,
        format!("0x{}\n", hex::encode(secret_bytes(2))).as_bytes(),
        &[],
    );
    fs::write(d.join("k2.kms"), &ct2).unwrap();
    write(
        d,
        "k2.yaml",
        &format!("type: aws-kms-encrypted\nciphertextFile: k2.kms\n{conn}"),
    );
    // 3: keystore whose password is KMS-encrypted (pbkdf2 c=16).
    let ks = encrypt(&key(3), "kms password", Kdf::Pbkdf2 { c: 16 }).unwrap();
    fs::write(d.join("k3.json"), ks).unwrap();
    let pw_ct = aws.encrypt(&kms_key, b"kms password\n", &[]);
    write(
        d,
        "k3.yaml",
        &format!(
            "type: aws-kms-encrypted\nkeystoreFile: k3.json\npasswordCiphertext: {}\n{conn}",
            b64(&pw_ct)
        ),
    );

    // Failures, one per file.
    // Random bytes are no KMS ciphertext.
    write(
        d,
        "bad-ciphertext.yaml",
        &format!(
            "type: aws-kms-encrypted\nciphertext: {}\n{conn}",
            b64(&[7u8; 150])
        ),
    );
    // Right blob, wrong encryption context.
    write(
        d,
        "bad-context.yaml",
        &format!(
            "type: aws-kms-encrypted\nciphertext: {}\nencryptionContext:\n  validator: \"2\"\n{conn}",
            b64(&ct1)
        ),
    );
    // Nothing listens on this port.
    let closed = moto::free_port();
    write(
        d,
        "unreachable.yaml",
        &format!(
            "type: aws-kms-encrypted\nciphertext: {}\n{}",
            b64(&ct1),
            conn_yaml(&format!("http://127.0.0.1:{closed}"))
        ),
    );
    // Plaintext that is not a key.
    let junk = aws.encrypt(&kms_key, b"hello, not a key", &[]);
    write(
        d,
        "not-a-key.yaml",
        &format!(
            "type: aws-kms-encrypted\nciphertext: {}\n{conn}",
            b64(&junk)
        ),
    );
    // Wrong keystore password.
    fs::write(
        d.join("k4.json"),
        encrypt(&key(4), "right", Kdf::Pbkdf2 { c: 16 }).unwrap(),
    )
    .unwrap();
    let wrong_pw = aws.encrypt(&kms_key, b"wrong", &[]);
    write(
        d,
        "wrong-password.yaml",
        &format!(
            "type: aws-kms-encrypted\nkeystoreFile: k4.json\npasswordCiphertext: {}\n{conn}",
            b64(&wrong_pw)
        ),
    );
    // A blob from another key than the kmsKeyId asked for: KMS refuses
    // (moto answers AccessDeniedException, AWS IncorrectKeyException).
    let other_key = aws.create_key();
    write(
        d,
        "other-key.yaml",
        &format!(
            "type: aws-kms-encrypted\nciphertext: {}\nkmsKeyId: {other_key}\n\
             encryptionContext:\n  validator: \"1\"\n{conn}",
            b64(&ct1)
        ),
    );
    // Too short to be a ciphertext at all.
    write(
        d,
        "short-ciphertext.yaml",
        &format!(
            "type: aws-kms-encrypted\nciphertext: {}\n{conn}",
            b64(&[1, 2, 3, 4])
        ),
    );
    // SPECIFIED without credentials is a config error, before any call.
    write(
        d,
        "no-creds.yaml",
        &format!(
            "type: aws-kms-encrypted\nciphertext: {}\nregion: {REGION}\n",
            b64(&ct1)
        ),
    );

    let report = load_key_configs(d);
    assert_loaded(&report, &[1, 2, 3], 8);

    // moto reads random bytes as naming an unknown key (AccessDenied); AWS
    // says InvalidCiphertext. Either way the message says what it means.
    let e = error_for(&report, "bad-ciphertext.yaml");
    assert!(
        e.contains("KMS Decrypt")
            && (e.contains("invalid ciphertext")
                || e.contains("names a KMS key that does not exist")),
        "{e}"
    );
    let e = error_for(&report, "short-ciphertext.yaml");
    assert!(e.contains("KMS Decrypt: invalid ciphertext"), "{e}");
    let e = error_for(&report, "other-key.yaml");
    assert!(
        e.contains("access denied") || e.contains("not encrypted under"),
        "{e}"
    );
    let e = error_for(&report, "bad-context.yaml");
    assert!(e.contains("invalid ciphertext"), "{e}");
    let e = error_for(&report, "unreachable.yaml");
    assert!(
        e.contains(&format!("cannot reach http://127.0.0.1:{closed}")) && e.contains("refused"),
        "{e}"
    );
    let e = error_for(&report, "not-a-key.yaml");
    assert!(
        e.contains("not a BLS secret key") && !e.contains("hello"),
        "{e}"
    );
    error_for(&report, "k4.json");
    assert!(matches!(
        report
            .errors
            .iter()
            .find(|x| x.path.ends_with("k4.json"))
            .unwrap()
            .error,
        Error::WrongPassword
    ));
    let e = error_for(&report, "no-creds.yaml");
    assert!(e.contains("requires accessKeyId"), "{e}");

    // Nothing secret leaks into any message.
    for err in &report.errors {
        eprintln!("reported: {err}");
        let text = format!("{err} {:?}", err.error);
        for seed in 1..=4 {
            assert!(!text.contains(&hex::encode(secret_bytes(seed))), "{text}");
        }
        assert!(!text.contains("kms password") && !text.contains("testing\n"));
    }
}

#[test]
fn aws_secret_configs() {
    let Some(moto) = Moto::start() else { return };
    let aws = clients(&moto);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let conn = conn_yaml(&moto.url);

    let two = format!(
        "0x{}\n\n  {}  \n",
        hex::encode(secret_bytes(10)),
        hex::encode(secret_bytes(11))
    );
    aws.create_secret("validators/two", &two, &[]);
    aws.create_secret("validators/junk", "this is not a key", &[]);
    aws.create_secret(
        "validators/half",
        &format!("{}\nnope\n", hex::encode(secret_bytes(12))),
        &[],
    );

    write(
        d,
        "two.yaml",
        &format!("type: aws-secret\nkeyType: BLS\nsecretName: validators/two\n{conn}"),
    );
    write(
        d,
        "missing.yaml",
        &format!("type: aws-secret\nsecretName: validators/absent\n{conn}"),
    );
    write(
        d,
        "junk.yaml",
        &format!("type: aws-secret\nsecretName: validators/junk\n{conn}"),
    );
    write(
        d,
        "half.yaml",
        &format!("type: aws-secret\nsecretName: validators/half\n{conn}"),
    );
    write(
        d,
        "unreachable.yaml",
        &format!(
            "type: aws-secret\nsecretName: validators/two\n{}",
            conn_yaml(&format!("http://127.0.0.1:{}", moto::free_port()))
        ),
    );
    write(
        d,
        "bad-mode.yaml",
        &format!("type: aws-secret\nsecretName: x\nauthenticationMode: IAM\nregion: {REGION}\n"),
    );

    let report = load_key_configs(d);
    assert_loaded(&report, &[10, 11, 12], 5);
    let e = error_for(&report, "missing.yaml");
    assert!(e.contains("secret `validators/absent` not found"), "{e}");
    let e = error_for(&report, "junk.yaml");
    assert!(
        e.contains("line 1 is not a BLS secret key") && !e.contains("this is"),
        "{e}"
    );
    let e = error_for(&report, "half.yaml");
    assert!(e.contains("line 2"), "{e}");
    let e = error_for(&report, "unreachable.yaml");
    assert!(
        e.contains("SecretsManager GetSecretValue: cannot reach"),
        "{e}"
    );
    let e = error_for(&report, "bad-mode.yaml");
    assert!(e.contains("SPECIFIED or ENVIRONMENT"), "{e}");
}

#[test]
fn bulk_secrets_with_filters() {
    let Some(moto) = Moto::start() else { return };
    let aws = clients(&moto);
    aws.create_secret(
        "ensign/a",
        &format!(
            "{}\n{}",
            hex::encode(secret_bytes(20)),
            hex::encode(secret_bytes(21))
        ),
        &[("team", "blue")],
    );
    aws.create_secret(
        "ensign/b",
        &hex::encode(secret_bytes(22)),
        &[("team", "red")],
    );
    aws.create_secret(
        "other/c",
        &hex::encode(secret_bytes(23)),
        &[("team", "blue"), ("env", "prod")],
    );
    aws.create_secret("ensign/bad", "garbage", &[]);
    // Enough secrets to need more than one ListSecrets page (100 a page).
    for i in 0..105 {
        aws.create_secret(&format!("filler/{i:03}"), "x", &[]);
    }

    let bulk = |prefixes: &[&str], tag_names: &[&str], tag_values: &[&str]| AwsSecretsBulk {
        auth: auth(),
        region: Some(REGION.into()),
        endpoint_override: Some(moto.url.clone()),
        prefixes: prefixes.iter().map(|s| s.to_string()).collect(),
        tag_names: tag_names.iter().map(|s| s.to_string()).collect(),
        tag_values: tag_values.iter().map(|s| s.to_string()).collect(),
    };

    // Prefix filter: ensign/* only; the garbage one fails alone.
    let r = load_aws_secrets_bulk(&bulk(&["ensign/"], &[], &[]));
    assert_loaded(&r, &[20, 21, 22], 1);
    assert_eq!(
        r.errors[0].path.to_str().unwrap(),
        "aws-secretsmanager:ensign/bad"
    );
    assert!(r.errors[0]
        .error
        .to_string()
        .contains("not a BLS secret key"));

    // Tag value filter.
    let r = load_aws_secrets_bulk(&bulk(&[], &[], &["blue"]));
    assert_eq!(pubkeys(&r), expected(&[20, 21, 23]), "{:?}", r.errors);
    assert!(r.errors.is_empty(), "{:?}", r.errors);

    // Tag key filter, and filters combined (AND).
    let r = load_aws_secrets_bulk(&bulk(&[], &["env"], &[]));
    assert_eq!(pubkeys(&r), expected(&[23]), "{:?}", r.errors);
    let r = load_aws_secrets_bulk(&bulk(&["ensign/"], &["team"], &["red"]));
    assert_eq!(pubkeys(&r), expected(&[22]), "{:?}", r.errors);

    // No filter: everything, over several pages; filler secrets fail alone.
    let r = load_aws_secrets_bulk(&bulk(&[], &[], &[]));
    assert_eq!(pubkeys(&r), expected(&[20, 21, 22, 23]));
    assert_eq!(r.errors.len(), 106, "bad + 105 fillers");

    // Unreachable endpoint: one clear error, no keys.
    let mut b = bulk(&[], &[], &[]);
    b.endpoint_override = Some(format!("http://127.0.0.1:{}", moto::free_port()));
    let r = load_aws_secrets_bulk(&b);
    assert!(r.keys.is_empty());
    assert_eq!(r.errors.len(), 1);
    let e = r.errors[0].to_string();
    assert!(e.contains("ListSecrets: cannot reach"), "{e}");
}
