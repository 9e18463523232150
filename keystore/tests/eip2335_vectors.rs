//! EIP-2335 official test vectors ("Test Cases"), plus the pre-normalisation
//! revision's `testpassword` vectors.

use keystore::{decrypt, normalize_password, Error, Keystore};

const SCRYPT: &str = include_str!("vectors/eip2335-scrypt.json");
const PBKDF2: &str = include_str!("vectors/eip2335-pbkdf2.json");
const LEGACY_SCRYPT: &str = include_str!("vectors/eip2335-legacy-testpassword-scrypt.json");
const LEGACY_PBKDF2: &str = include_str!("vectors/eip2335-legacy-testpassword-pbkdf2.json");
const EXPECTED: &str = include_str!("vectors/expected.json");

fn expected() -> serde_json::Value {
    serde_json::from_str(EXPECTED).unwrap()
}

fn strip0x(s: &str) -> &str {
    s.strip_prefix("0x").unwrap_or(s)
}

#[test]
fn every_official_vector_decrypts_to_expected_secret() {
    let exp = expected();
    let secret = strip0x(exp["secret_key"].as_str().unwrap());
    let pubkey = strip0x(exp["pubkey"].as_str().unwrap());
    let files = [
        ("eip2335-scrypt.json", SCRYPT),
        ("eip2335-pbkdf2.json", PBKDF2),
        ("eip2335-legacy-testpassword-scrypt.json", LEGACY_SCRYPT),
        ("eip2335-legacy-testpassword-pbkdf2.json", LEGACY_PBKDF2),
    ];
    assert_eq!(exp["keystores"].as_object().unwrap().len(), files.len());
    for (name, json) in files {
        let case = &exp["keystores"][name];
        let password = case["password"].as_str().unwrap();
        assert_eq!(
            hex::encode(&*normalize_password(password)),
            case["password_normalized_utf8_hex"].as_str().unwrap(),
            "{name}"
        );
        let ks = Keystore::from_json(json).unwrap();
        assert_eq!(hex::encode(ks.claimed_pubkey().unwrap()), pubkey, "{name}");
        let key = ks.decrypt(password).unwrap();
        assert_eq!(hex::encode(key.secret().to_bytes()), secret, "{name}");
        assert_eq!(hex::encode(key.pubkey()), pubkey, "{name}");
    }
}

/// EIP-2335 "Password requirements": the vector's password is given in
/// Fraktur letters; any password that normalises to the same bytes (NFKD,
/// control codes stripped) must open it, and one that does not must fail.
#[test]
fn password_normalisation_against_official_vector() {
    let ks = Keystore::from_json(PBKDF2).unwrap();
    // Already-normalised form, as the EIP's "Encoded Password".
    assert!(ks.decrypt("testpassword\u{1f511}").is_ok());
    // Non-NFKD form (fullwidth letters) with C0, DEL and C1 controls mixed in.
    let messy = "\u{ff54}\u{ff45}st\u{7f}pa\u{0}ss\u{1b}wo\u{85}rd\u{9f}\u{1f511}\r\n";
    assert!(ks.decrypt(messy).is_ok());
    // Space is not a control code, so it changes the password.
    assert!(matches!(
        ks.decrypt("test password\u{1f511}"),
        Err(Error::WrongPassword)
    ));
    // The pre-normalisation password does not open the current vector.
    assert!(matches!(
        ks.decrypt("testpassword"),
        Err(Error::WrongPassword)
    ));
}

#[test]
fn scrypt_vector_wrong_password_via_one_shot_decrypt() {
    assert!(matches!(
        decrypt(SCRYPT, "testpassword"),
        Err(Error::WrongPassword)
    ));
}

#[test]
fn official_vector_kdf_params_are_within_limits() {
    // Guard against limits being tightened below what the EIP itself uses.
    let v: serde_json::Value = serde_json::from_str(SCRYPT).unwrap();
    let p = &v["crypto"]["kdf"]["params"];
    let mem = 128 * p["r"].as_u64().unwrap() as u128 * p["n"].as_u64().unwrap() as u128;
    assert!(mem <= keystore::SCRYPT_MAX_MEMORY);
    let v: serde_json::Value = serde_json::from_str(PBKDF2).unwrap();
    assert!(v["crypto"]["kdf"]["params"]["c"].as_u64().unwrap() <= keystore::PBKDF2_MAX_C);
}
