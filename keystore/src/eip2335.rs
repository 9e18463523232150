//! EIP-2335 keystores: parsing (with limits), decryption and encryption.
//!
//! Parsing happens in two steps: serde reads the JSON into shape-only `Raw*`
//! types, then [`Keystore::from_json`] converts them into a [`Keystore`]
//! whose fields are already decoded and bounded. Decryption therefore never
//! sees an unchecked parameter: an absurd scrypt `n` is refused before any
//! memory is allocated.

use aes::Aes128;
use ctr::cipher::{KeyIvInit, StreamCipher};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::key::{ValidatorKey, PUBKEY_LEN, SECRET_LEN};
use crate::password::normalize_password;
use crate::Error;

/// Most memory a single scrypt derivation may need (`128 · r · n` bytes).
/// The EIP-2335 vector uses n = 2^18, r = 8, i.e. 256 MiB; twice that leaves
/// room for stronger settings without letting a hostile file ask for GiBs.
pub const SCRYPT_MAX_MEMORY: u128 = 512 * 1024 * 1024;
/// Largest scrypt parallelism factor accepted. Keystores in the wild use 1;
/// `p` multiplies CPU time, so it is bounded too.
pub const SCRYPT_MAX_P: u64 = 16;
/// Largest PBKDF2 iteration count accepted (the EIP-2335 vector uses 2^18).
pub const PBKDF2_MAX_C: u64 = 1 << 24;
/// Largest KDF salt accepted. EIP-2335 uses 32 bytes; anything near this
/// bound is not a real keystore.
pub const MAX_SALT_LEN: usize = 1024;

/// Decryption key length: EIP-2335 "Decryption key" splits it into 16 bytes
/// of AES-128 key and 16 bytes of checksum key.
const DKLEN: usize = 32;
const IV_LEN: usize = 16;

/// Which KDF (and its cost) [`encrypt`] should use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kdf {
    /// PBKDF2-HMAC-SHA256 with `c` iterations (EIP-2335 default: 262144).
    Pbkdf2 { c: u32 },
    /// scrypt with cost `n` (a power of two), r = 8, p = 1 (EIP-2335
    /// default: n = 262144).
    Scrypt { n: u64 },
}

// ---------------------------------------------------------------------------
// Shape-only serde types. Unknown fields are accepted on purpose: keystores
// produced by staking-deposit-cli, ethdo, Prysm, Teku, … carry `description`,
// `name`, `path`, `uuid`, `version` and sometimes vendor extras.
// ---------------------------------------------------------------------------

#[derive(Deserialize)]
struct RawKeystore {
    crypto: RawCrypto,
    #[serde(default)]
    pubkey: Option<String>,
    version: u64,
}

#[derive(Deserialize)]
struct RawCrypto {
    kdf: RawModule,
    checksum: RawModule,
    cipher: RawModule,
}

/// EIP-2335 "Modules": every crypto module is `{function, params, message}`.
#[derive(Deserialize)]
struct RawModule {
    function: String,
    params: serde_json::Value,
    // The KDF module's message is "" by definition; some writers omit it.
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
struct RawScryptParams {
    dklen: u64,
    n: u64,
    r: u64,
    p: u64,
    salt: String,
}

#[derive(Deserialize)]
struct RawPbkdf2Params {
    dklen: u64,
    c: u64,
    prf: String,
    salt: String,
}

#[derive(Deserialize)]
struct RawCipherParams {
    iv: String,
}

// ---------------------------------------------------------------------------
// Validated types.
// ---------------------------------------------------------------------------

/// Bounded, decoded KDF parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
enum KdfParams {
    Scrypt {
        log_n: u8,
        r: u32,
        p: u32,
        salt: Vec<u8>,
    },
    Pbkdf2 {
        c: u32,
        salt: Vec<u8>,
    },
}

impl KdfParams {
    fn scrypt(dklen: u64, n: u64, r: u64, p: u64, salt: Vec<u8>) -> Result<Self, Error> {
        check_dklen(dklen)?;
        check_salt(&salt)?;
        // RFC 7914 §2: N must be larger than 1 and a power of 2.
        if n < 2 || !n.is_power_of_two() {
            return Err(Error::ScryptNNotPowerOfTwo(n));
        }
        if p == 0 || p > SCRYPT_MAX_P {
            return Err(Error::ScryptParam {
                param: "p",
                value: p,
                max: SCRYPT_MAX_P,
            });
        }
        // r is bounded by the memory cap; only zero needs its own check.
        let max_r = u64::try_from(SCRYPT_MAX_MEMORY / 256).unwrap_or(u64::MAX);
        if r == 0 {
            return Err(Error::ScryptParam {
                param: "r",
                value: r,
                max: max_r,
            });
        }
        // scrypt's ROMix keeps N blocks of 128·r bytes (RFC 7914 §5).
        let needed = 128u128 * u128::from(r) * u128::from(n);
        if needed > SCRYPT_MAX_MEMORY {
            return Err(Error::ScryptMemory {
                needed,
                limit: SCRYPT_MAX_MEMORY,
            });
        }
        // Both now fit comfortably: n ≤ 2^22 and r ≤ 2^21 under the cap.
        let log_n = u8::try_from(n.trailing_zeros()).map_err(|_| Error::ScryptNNotPowerOfTwo(n))?;
        let r = u32::try_from(r).map_err(|_| Error::ScryptParam {
            param: "r",
            value: r,
            max: max_r,
        })?;
        let p = u32::try_from(p).map_err(|_| Error::ScryptParam {
            param: "p",
            value: p,
            max: SCRYPT_MAX_P,
        })?;
        // Let the scrypt crate apply RFC 7914's remaining constraints
        // (e.g. N < 2^(128·r/8)) now, at parse time, rather than on decrypt.
        scrypt::Params::new(log_n, r, p, DKLEN).map_err(|_| Error::ScryptParam {
            param: "r",
            value: u64::from(r),
            max: max_r,
        })?;
        Ok(KdfParams::Scrypt { log_n, r, p, salt })
    }

    fn pbkdf2(dklen: u64, c: u64, prf: &str, salt: Vec<u8>) -> Result<Self, Error> {
        check_dklen(dklen)?;
        check_salt(&salt)?;
        // EIP-2335 "PBKDF2-SHA-256": the only PRF defined is hmac-sha256.
        if prf != "hmac-sha256" {
            return Err(Error::UnsupportedPrf(prf.to_owned()));
        }
        if c == 0 || c > PBKDF2_MAX_C {
            return Err(Error::Pbkdf2Iterations {
                value: c,
                max: PBKDF2_MAX_C,
            });
        }
        let c = u32::try_from(c).map_err(|_| Error::Pbkdf2Iterations {
            value: c,
            max: PBKDF2_MAX_C,
        })?;
        Ok(KdfParams::Pbkdf2 { c, salt })
    }

    /// Run the KDF. Parameters were validated at construction, so the only
    /// failure left is a library-internal one, reported as an invalid
    /// parameter rather than a panic.
    fn derive(&self, password: &[u8]) -> Result<Zeroizing<[u8; DKLEN]>, Error> {
        let mut dk = Zeroizing::new([0u8; DKLEN]);
        match self {
            KdfParams::Scrypt { log_n, r, p, salt } => {
                let params =
                    scrypt::Params::new(*log_n, *r, *p, DKLEN).map_err(|_| Error::ScryptParam {
                        param: "r",
                        value: u64::from(*r),
                        max: u64::MAX,
                    })?;
                scrypt::scrypt(password, salt, &params, &mut *dk)
                    .map_err(|_| Error::InvalidDkLen(DKLEN as u64))?;
            }
            KdfParams::Pbkdf2 { c, salt } => {
                pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, *c, &mut *dk);
            }
        }
        Ok(dk)
    }
}

fn check_dklen(dklen: u64) -> Result<(), Error> {
    if dklen != DKLEN as u64 {
        return Err(Error::InvalidDkLen(dklen));
    }
    Ok(())
}

fn check_salt(salt: &[u8]) -> Result<(), Error> {
    if salt.len() > MAX_SALT_LEN {
        return Err(Error::FieldTooLong {
            field: "salt",
            actual: salt.len(),
            limit: MAX_SALT_LEN,
        });
    }
    Ok(())
}

/// A parsed, bounded EIP-2335 keystore. Holds only ciphertext and public
/// parameters, so `Debug` is safe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keystore {
    kdf: KdfParams,
    checksum: [u8; 32],
    iv: [u8; IV_LEN],
    ciphertext: [u8; SECRET_LEN],
    pubkey: Option<[u8; PUBKEY_LEN]>,
}

impl Keystore {
    /// Parse and bound-check a keystore. Does no expensive work.
    pub fn from_json(json: &str) -> Result<Keystore, Error> {
        Self::from_json_bytes(json.as_bytes())
    }

    /// As [`Keystore::from_json`], for file contents not yet known to be
    /// UTF-8 (serde_json reports invalid UTF-8 as a JSON error).
    pub fn from_json_bytes(json: &[u8]) -> Result<Keystore, Error> {
        let raw: RawKeystore = serde_json::from_slice(json).map_err(Error::InvalidJson)?;

        // EIP-2335 "version": this document describes version 4.
        if raw.version != 4 {
            return Err(Error::UnsupportedVersion(raw.version));
        }

        let kdf_module = raw.crypto.kdf;
        let kdf = match kdf_module.function.as_str() {
            "scrypt" => {
                let p: RawScryptParams = module_params(kdf_module.params)?;
                let salt = decode_hex("kdf.params.salt", &p.salt)?;
                KdfParams::scrypt(p.dklen, p.n, p.r, p.p, salt)?
            }
            "pbkdf2" => {
                let p: RawPbkdf2Params = module_params(kdf_module.params)?;
                let salt = decode_hex("kdf.params.salt", &p.salt)?;
                KdfParams::pbkdf2(p.dklen, p.c, &p.prf, salt)?
            }
            other => {
                return Err(Error::UnsupportedFunction {
                    module: "kdf",
                    name: other.to_owned(),
                })
            }
        };

        // EIP-2335 "SHA256 Checksum": function "sha256", empty params.
        let checksum_module = raw.crypto.checksum;
        if checksum_module.function != "sha256" {
            return Err(Error::UnsupportedFunction {
                module: "checksum",
                name: checksum_module.function,
            });
        }
        let checksum = decode_fixed::<32>("checksum.message", &checksum_module.message)?;

        // EIP-2335 "AES-128-Counter Mode": 16-byte IV in params.
        let cipher_module = raw.crypto.cipher;
        if cipher_module.function != "aes-128-ctr" {
            return Err(Error::UnsupportedFunction {
                module: "cipher",
                name: cipher_module.function,
            });
        }
        let cipher_params: RawCipherParams = module_params(cipher_module.params)?;
        let iv = decode_fixed::<IV_LEN>("cipher.params.iv", &cipher_params.iv)?;
        // The plaintext of a validator keystore is a 32-byte BLS secret
        // (EIP-2335 "secret"), and CTR mode keeps the length.
        let ciphertext = decode_fixed::<SECRET_LEN>("cipher.message", &cipher_module.message)?;

        // Some writers emit `"pubkey": ""`; treat that like an absent field.
        let pubkey = match raw.pubkey.as_deref() {
            None | Some("") => None,
            Some(hex) => Some(decode_fixed::<PUBKEY_LEN>("pubkey", hex)?),
        };

        Ok(Keystore {
            kdf,
            checksum,
            iv,
            ciphertext,
            pubkey,
        })
    }

    /// The `pubkey` field as written in the file (untrusted until
    /// [`Keystore::decrypt`] has re-derived it).
    pub fn claimed_pubkey(&self) -> Option<[u8; PUBKEY_LEN]> {
        self.pubkey
    }

    /// Bytes of working memory one decryption of this keystore needs: for
    /// scrypt the ROMix table of `n` blocks plus the `p` input blocks and
    /// one scratch block, each `128 · r` bytes (RFC 7914 §5, matching what
    /// the `scrypt` crate allocates); 0 for PBKDF2, whose state is a few
    /// hundred bytes. Used to bound concurrent derivations by a memory
    /// budget.
    pub fn kdf_memory(&self) -> u64 {
        match &self.kdf {
            KdfParams::Scrypt { log_n, r, p, .. } => {
                let blocks = (1u128 << log_n) + u128::from(*p) + 1;
                let bytes = 128 * u128::from(*r) * blocks;
                u64::try_from(bytes).unwrap_or(u64::MAX)
            }
            KdfParams::Pbkdf2 { .. } => 0,
        }
    }

    /// Decrypt with a user password (normalised here per EIP-2335).
    ///
    /// Errors: [`Error::WrongPassword`] on checksum mismatch,
    /// [`Error::InvalidSecretKey`] if the plaintext is not a BLS scalar,
    /// [`Error::PubkeyMismatch`] if the `pubkey` field disagrees with the
    /// secret.
    pub fn decrypt(&self, password: &str) -> Result<ValidatorKey, Error> {
        let password = normalize_password(password);
        let dk = self.kdf.derive(&password)?;

        // EIP-2335 "Password verification":
        // checksum = SHA256(decryption_key[16:32] | cipher_message).
        let expected = checksum(&dk, &self.ciphertext);
        if !eq_no_early_exit(&expected, &self.checksum) {
            return Err(Error::WrongPassword);
        }

        // EIP-2335 "Secret decryption": AES-128-CTR keyed by dk[0:16].
        let mut secret = Zeroizing::new(self.ciphertext);
        apply_aes_ctr(&dk, &self.iv, &mut *secret);

        let key = ValidatorKey::from_secret_bytes(&*secret)?;
        // The pubkey field is untrusted metadata: a keystore whose label
        // disagrees with its secret would make us sign for the wrong
        // validator index, so refuse it.
        if let Some(claimed) = self.pubkey {
            if claimed != key.pubkey() {
                return Err(Error::PubkeyMismatch {
                    claimed: hex::encode(claimed),
                    derived: hex::encode(key.pubkey()),
                });
            }
        }
        Ok(key)
    }
}

/// Parse and decrypt a keystore in one step.
pub fn decrypt(json: &str, password: &str) -> Result<ValidatorKey, Error> {
    Keystore::from_json(json)?.decrypt(password)
}

/// Encrypt `key` into an EIP-2335 version-4 keystore JSON string, with a
/// fresh random salt, IV and UUID (v4).
pub fn encrypt(key: &ValidatorKey, password: &str, kdf: Kdf) -> Result<String, Error> {
    let salt = random_bytes::<32>()?;
    let iv = random_bytes::<IV_LEN>()?;
    let uuid = random_bytes::<16>()?;

    // Same validation as parsing, so we never write a keystore we would
    // refuse to read back.
    let params = match kdf {
        Kdf::Pbkdf2 { c } => {
            KdfParams::pbkdf2(DKLEN as u64, u64::from(c), "hmac-sha256", salt.to_vec())?
        }
        Kdf::Scrypt { n } => KdfParams::scrypt(DKLEN as u64, n, 8, 1, salt.to_vec())?,
    };

    let password = normalize_password(password);
    let dk = params.derive(&password)?;
    let mut ciphertext = Zeroizing::new(key.secret().to_bytes());
    apply_aes_ctr(&dk, &iv, &mut *ciphertext);
    let checksum = checksum(&dk, &*ciphertext);

    let kdf_json = match &params {
        KdfParams::Scrypt { log_n, r, p, salt } => serde_json::json!({
            "function": "scrypt",
            "params": {
                "dklen": DKLEN,
                "n": 1u64 << log_n,
                "r": r,
                "p": p,
                "salt": hex::encode(salt),
            },
            "message": "",
        }),
        KdfParams::Pbkdf2 { c, salt } => serde_json::json!({
            "function": "pbkdf2",
            "params": {
                "dklen": DKLEN,
                "c": c,
                "prf": "hmac-sha256",
                "salt": hex::encode(salt),
            },
            "message": "",
        }),
    };
    let doc = serde_json::json!({
        "crypto": {
            "kdf": kdf_json,
            "checksum": {
                "function": "sha256",
                "params": {},
                "message": hex::encode(checksum),
            },
            "cipher": {
                "function": "aes-128-ctr",
                "params": { "iv": hex::encode(iv) },
                "message": hex::encode(&ciphertext[..]),
            },
        },
        "description": "",
        "pubkey": hex::encode(key.pubkey()),
        "path": "",
        "uuid": format_uuid_v4(uuid),
        "version": 4,
    });
    serde_json::to_string_pretty(&doc).map_err(Error::InvalidJson)
}

fn checksum(dk: &[u8; DKLEN], ciphertext: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(&dk[16..32]);
    h.update(ciphertext);
    h.finalize().into()
}

fn apply_aes_ctr(dk: &[u8; DKLEN], iv: &[u8; IV_LEN], buf: &mut [u8]) {
    // AES-128 key = dk[0:16]; the counter block starts at the IV and is
    // incremented as a 128-bit big-endian integer (EIP-2335 references
    // NIST SP 800-38A CTR, which is what `Ctr128BE` implements).
    let mut cipher = ctr::Ctr128BE::<Aes128>::new(dk[..16].into(), iv.into());
    cipher.apply_keystream(buf);
}

/// Compare without an early exit. The checksum is not itself secret, but
/// there is no reason to leak how many leading bytes matched.
fn eq_no_early_exit(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A module's `params` object as the parameters of its function: a shape error is the
/// keystore's JSON being invalid, as for the rest of the document.
fn module_params<P: serde::de::DeserializeOwned>(params: serde_json::Value) -> Result<P, Error> {
    serde_json::from_value(params).map_err(Error::InvalidJson)
}

fn decode_hex(field: &'static str, s: &str) -> Result<Vec<u8>, Error> {
    // Writers differ on a `0x` prefix; the EIP examples have none.
    let s = s.strip_prefix("0x").unwrap_or(s);
    // Bound before decoding so a huge string is not turned into a huge Vec.
    if s.len() > MAX_SALT_LEN * 2 {
        return Err(Error::FieldTooLong {
            field,
            actual: s.len() / 2,
            limit: MAX_SALT_LEN,
        });
    }
    hex::decode(s).map_err(|_| Error::InvalidHex { field })
}

fn decode_fixed<const N: usize>(field: &'static str, s: &str) -> Result<[u8; N], Error> {
    let bytes = decode_hex(field, s)?;
    <[u8; N]>::try_from(bytes.as_slice()).map_err(|_| Error::InvalidLength {
        field,
        expected: N,
        actual: bytes.len(),
    })
}

fn random_bytes<const N: usize>() -> Result<[u8; N], Error> {
    let mut buf = [0u8; N];
    getrandom::getrandom(&mut buf).map_err(|e| Error::Random(e.to_string()))?;
    Ok(buf)
}

/// RFC 4122 §4.4: a random UUID with version 4 and variant 10xx bits set.
fn format_uuid_v4(mut b: [u8; 16]) -> String {
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f";

    fn key() -> ValidatorKey {
        ValidatorKey::from_secret_bytes(&hex::decode(SECRET).unwrap()).unwrap()
    }

    fn small_scrypt_json() -> serde_json::Value {
        serde_json::from_str(&encrypt(&key(), "pw", Kdf::Scrypt { n: 16 }).unwrap()).unwrap()
    }

    fn parse(v: &serde_json::Value) -> Result<Keystore, Error> {
        Keystore::from_json(&v.to_string())
    }

    #[test]
    fn round_trip_both_kdfs() {
        for kdf in [Kdf::Pbkdf2 { c: 16 }, Kdf::Scrypt { n: 16 }] {
            let json = encrypt(&key(), "pässword\u{1}", kdf).unwrap();
            let ks = Keystore::from_json(&json).unwrap();
            assert_eq!(ks.claimed_pubkey(), Some(key().pubkey()));
            let k = ks.decrypt("pässword").unwrap();
            assert_eq!(k.pubkey(), key().pubkey());
            assert!(matches!(ks.decrypt("other"), Err(Error::WrongPassword)));
            // The output must not contain the plaintext secret.
            assert!(!json.contains(&SECRET[8..]));
        }
    }

    #[test]
    fn uuid_is_v4_shaped() {
        let u = format_uuid_v4([0xff; 16]);
        assert_eq!(u, "ffffffff-ffff-4fff-bfff-ffffffffffff");
        let v = small_scrypt_json();
        let uuid = v["uuid"].as_str().unwrap();
        assert_eq!(uuid.len(), 36);
        assert_eq!(&uuid[14..15], "4");
    }

    #[test]
    fn absurd_scrypt_refused_at_parse() {
        let mut v = small_scrypt_json();
        v["crypto"]["kdf"]["params"]["n"] = serde_json::json!(1u64 << 36);
        let start = std::time::Instant::now();
        let err = parse(&v).unwrap_err();
        assert!(start.elapsed() < std::time::Duration::from_millis(100));
        assert_eq!(
            err.to_string(),
            "scrypt parameters need 64 TiB, limit is 512 MiB"
        );

        v["crypto"]["kdf"]["params"]["n"] = serde_json::json!(1u64 << 26);
        assert_eq!(
            parse(&v).unwrap_err().to_string(),
            "scrypt parameters need 64 GiB, limit is 512 MiB"
        );

        v["crypto"]["kdf"]["params"]["n"] = serde_json::json!(1000);
        assert!(matches!(parse(&v), Err(Error::ScryptNNotPowerOfTwo(1000))));
        v["crypto"]["kdf"]["params"]["n"] = serde_json::json!(1);
        assert!(matches!(parse(&v), Err(Error::ScryptNNotPowerOfTwo(1))));

        v["crypto"]["kdf"]["params"]["n"] = serde_json::json!(16);
        v["crypto"]["kdf"]["params"]["p"] = serde_json::json!(17);
        assert!(matches!(
            parse(&v),
            Err(Error::ScryptParam { param: "p", .. })
        ));
        v["crypto"]["kdf"]["params"]["p"] = serde_json::json!(0);
        assert!(matches!(
            parse(&v),
            Err(Error::ScryptParam { param: "p", .. })
        ));
        v["crypto"]["kdf"]["params"]["p"] = serde_json::json!(1);
        v["crypto"]["kdf"]["params"]["r"] = serde_json::json!(0);
        assert!(matches!(
            parse(&v),
            Err(Error::ScryptParam { param: "r", .. })
        ));
        v["crypto"]["kdf"]["params"]["r"] = serde_json::json!(u64::MAX);
        assert!(matches!(parse(&v), Err(Error::ScryptMemory { .. })));
        v["crypto"]["kdf"]["params"]["r"] = serde_json::json!(8);
        v["crypto"]["kdf"]["params"]["dklen"] = serde_json::json!(64);
        assert!(matches!(parse(&v), Err(Error::InvalidDkLen(64))));
    }

    #[test]
    fn pbkdf2_bounds() {
        let mut v: serde_json::Value =
            serde_json::from_str(&encrypt(&key(), "pw", Kdf::Pbkdf2 { c: 16 }).unwrap()).unwrap();
        v["crypto"]["kdf"]["params"]["c"] = serde_json::json!((1u64 << 24) + 1);
        assert!(matches!(parse(&v), Err(Error::Pbkdf2Iterations { .. })));
        v["crypto"]["kdf"]["params"]["c"] = serde_json::json!(0);
        assert!(matches!(parse(&v), Err(Error::Pbkdf2Iterations { .. })));
        v["crypto"]["kdf"]["params"]["c"] = serde_json::json!(16);
        v["crypto"]["kdf"]["params"]["prf"] = serde_json::json!("hmac-sha512");
        assert!(matches!(parse(&v), Err(Error::UnsupportedPrf(_))));
        v["crypto"]["kdf"]["params"]["prf"] = serde_json::json!("hmac-sha256");
        v["crypto"]["kdf"]["params"]["dklen"] = serde_json::json!(16);
        assert!(matches!(parse(&v), Err(Error::InvalidDkLen(16))));
        assert!(matches!(
            encrypt(&key(), "pw", Kdf::Pbkdf2 { c: 0 }),
            Err(Error::Pbkdf2Iterations { .. })
        ));
        assert!(matches!(
            encrypt(&key(), "pw", Kdf::Scrypt { n: 3 }),
            Err(Error::ScryptNNotPowerOfTwo(3))
        ));
    }

    #[test]
    fn shape_errors() {
        let mut v = small_scrypt_json();
        v["version"] = serde_json::json!(3);
        assert!(matches!(parse(&v), Err(Error::UnsupportedVersion(3))));
        v["version"] = serde_json::json!(4);

        for (module, function) in [
            ("kdf", "argon2id"),
            ("cipher", "aes-256-gcm"),
            ("checksum", "sha512"),
        ] {
            let mut w = v.clone();
            w["crypto"][module]["function"] = serde_json::json!(function);
            match parse(&w) {
                Err(Error::UnsupportedFunction { module: m, name }) => {
                    assert_eq!((m, name.as_str()), (module, function));
                }
                other => panic!("{module} {function}: {other:?}"),
            }
        }
        let mut w = v.clone();
        w["crypto"]["cipher"]["params"]["iv"] = serde_json::json!("00ff");
        assert!(matches!(
            parse(&w),
            Err(Error::InvalidLength {
                field: "cipher.params.iv",
                expected: 16,
                actual: 2
            })
        ));
        let mut w = v.clone();
        w["crypto"]["cipher"]["message"] = serde_json::json!("zz");
        assert!(matches!(
            parse(&w),
            Err(Error::InvalidHex {
                field: "cipher.message"
            })
        ));
        let mut w = v.clone();
        w["crypto"]["kdf"]["params"]["salt"] = serde_json::json!("ab".repeat(MAX_SALT_LEN + 1));
        assert!(matches!(parse(&w), Err(Error::FieldTooLong { .. })));
        let mut w = v.clone();
        w["crypto"]["kdf"]["params"]
            .as_object_mut()
            .unwrap()
            .remove("salt");
        assert!(matches!(parse(&w), Err(Error::InvalidJson(_))));
        assert!(matches!(
            Keystore::from_json("not json"),
            Err(Error::InvalidJson(_))
        ));

        // Extra top-level fields from real-world writers are fine, and an
        // empty or 0x-prefixed pubkey is accepted.
        let mut w = v.clone();
        w["name"] = serde_json::json!("validator 7");
        w["vendor_extra"] = serde_json::json!({"a": 1});
        w["pubkey"] = serde_json::json!("");
        assert_eq!(parse(&w).unwrap().claimed_pubkey(), None);
        w["pubkey"] = serde_json::json!(format!("0x{}", hex::encode(key().pubkey())));
        assert!(parse(&w).unwrap().decrypt("pw").is_ok());
        w.as_object_mut().unwrap().remove("pubkey");
        assert!(parse(&w).unwrap().decrypt("pw").is_ok());
    }

    #[test]
    fn corrupted_checksum_is_wrong_password() {
        let mut v = small_scrypt_json();
        let mut c = hex::decode(v["crypto"]["checksum"]["message"].as_str().unwrap()).unwrap();
        c[0] ^= 1;
        v["crypto"]["checksum"]["message"] = serde_json::json!(hex::encode(c));
        assert!(matches!(
            parse(&v).unwrap().decrypt("pw"),
            Err(Error::WrongPassword)
        ));
    }

    #[test]
    fn pubkey_mismatch() {
        let other = ValidatorKey::from_secret_bytes(&[7u8; 32]).unwrap();
        let mut v = small_scrypt_json();
        v["pubkey"] = serde_json::json!(hex::encode(other.pubkey()));
        let err = parse(&v).unwrap().decrypt("pw").unwrap_err();
        assert!(matches!(err, Error::PubkeyMismatch { .. }));
        let msg = err.to_string();
        assert!(msg.contains(&hex::encode(other.pubkey())));
        assert!(!msg.contains(&SECRET[8..]));
    }

    #[test]
    fn kdf_memory_matches_scrypt_allocation() {
        let ks = parse(&small_scrypt_json()).unwrap();
        // n = 16, r = 8, p = 1: (16 + 1 + 1) blocks of 1 KiB.
        assert_eq!(ks.kdf_memory(), 18 * 1024);
        let json = encrypt(&key(), "pw", Kdf::Pbkdf2 { c: 16 }).unwrap();
        assert_eq!(Keystore::from_json(&json).unwrap().kdf_memory(), 0);
        // The EIP-2335 default (n = 2^18, r = 8) is the familiar 256 MiB.
        let mut v = small_scrypt_json();
        v["crypto"]["kdf"]["params"]["n"] = serde_json::json!(1u64 << 18);
        assert_eq!(parse(&v).unwrap().kdf_memory(), (256 << 20) + 2 * 1024);
    }

    #[test]
    fn keystore_debug_has_no_secret() {
        let ks = parse(&small_scrypt_json()).unwrap();
        let dbg = format!("{ks:?}");
        assert!(!dbg.contains(&SECRET[8..]));
    }
}
