//! The crate's single error type.
//!
//! Invariant: no variant carries secret key bytes, password bytes, KDF output
//! or file contents. Only public data (pubkeys, parameter values, paths,
//! field names, lengths) appears in messages, so errors are safe to log.

use std::path::PathBuf;

/// Everything that can go wrong while parsing, decrypting, encrypting or
/// loading validator keys.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file or directory could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A file is larger than anything legitimate of its kind; refused before
    /// reading so a stray multi-GiB file cannot exhaust memory.
    #[error("{path} is {size} bytes, limit is {limit} bytes")]
    FileTooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },

    /// The keystore is not well-formed JSON of the EIP-2335 shape.
    #[error("invalid keystore JSON: {0}")]
    InvalidJson(#[source] serde_json::Error),

    /// EIP-2335 "version": only version 4 is defined.
    #[error("unsupported keystore version {0}, expected 4")]
    UnsupportedVersion(u64),

    /// A `function` field names an algorithm EIP-2335 does not allow (or we
    /// do not implement).
    #[error("unsupported {module} function `{name}`")]
    UnsupportedFunction { module: &'static str, name: String },

    /// PBKDF2 pseudo-random function other than `hmac-sha256`.
    #[error("unsupported pbkdf2 prf `{0}`, expected hmac-sha256")]
    UnsupportedPrf(String),

    /// A hex field does not decode.
    #[error("field `{field}` is not valid hex")]
    InvalidHex { field: &'static str },

    /// A decoded field has the wrong length.
    #[error("field `{field}` must be {expected} bytes, got {actual}")]
    InvalidLength {
        field: &'static str,
        expected: usize,
        actual: usize,
    },

    /// A decoded field exceeds a sanity bound.
    #[error("field `{field}` is {actual} bytes, limit is {limit}")]
    FieldTooLong {
        field: &'static str,
        actual: usize,
        limit: usize,
    },

    /// The KDF must produce exactly 32 bytes (16 for AES-128 + 16 for the
    /// checksum, EIP-2335 "Decryption key").
    #[error("kdf dklen must be 32, got {0}")]
    InvalidDkLen(u64),

    /// scrypt `n` must be a power of two greater than 1 (RFC 7914 §2).
    #[error("scrypt n must be a power of two greater than 1, got {0}")]
    ScryptNNotPowerOfTwo(u64),

    /// scrypt parameters would need more memory than we allow.
    #[error("scrypt parameters need {}, limit is {}", human_bytes(*needed), human_bytes(*limit))]
    ScryptMemory { needed: u128, limit: u128 },

    /// scrypt `r` or `p` outside the accepted range.
    #[error("scrypt {param} must be between 1 and {max}, got {value}")]
    ScryptParam {
        param: &'static str,
        value: u64,
        max: u64,
    },

    /// PBKDF2 iteration count outside the accepted range.
    #[error("pbkdf2 c must be between 1 and {max}, got {value}")]
    Pbkdf2Iterations { value: u64, max: u64 },

    /// EIP-2335 "Password verification": the checksum did not match, which
    /// almost always means the password is wrong.
    #[error("wrong password (checksum mismatch)")]
    WrongPassword,

    /// The keystore's `pubkey` field does not belong to the decrypted secret.
    #[error("pubkey mismatch: keystore says 0x{claimed}, secret derives 0x{derived}")]
    PubkeyMismatch { claimed: String, derived: String },

    /// 32 bytes that are not a valid BLS12-381 secret scalar.
    #[error("invalid BLS secret key (must be 32 bytes, non-zero, below the group order)")]
    InvalidSecretKey,

    /// A password file is not UTF-8; EIP-2335 passwords are Unicode strings.
    #[error("password file {0} is not valid UTF-8")]
    PasswordNotUtf8(PathBuf),

    /// A YAML key configuration document is malformed.
    #[error("invalid key config (document {document}): {reason}")]
    InvalidConfig { document: usize, reason: String },

    /// A key configuration `type` we do not (yet) support.
    #[error("unsupported key type `{0}`")]
    UnsupportedKeyType(String),

    /// A key configuration `keyType` other than BLS.
    #[error("unsupported keyType `{0}`, expected BLS")]
    UnsupportedKeyAlgorithm(String),

    /// The same validator key was already loaded from another file.
    #[error("duplicate pubkey 0x{pubkey}, already loaded from {first}")]
    DuplicatePubkey { pubkey: String, first: PathBuf },

    /// The OS random number generator failed (encryption and cache
    /// sealing only).
    #[error("random number generator failed: {0}")]
    Random(String),

    /// The key cache file's integrity checksum or layout is wrong (torn
    /// write, truncation, bit rot, a file that is not a cache). The cache
    /// holds nothing that cannot be rebuilt from the keystores, so callers
    /// may treat this as "no cache" and start a fresh one.
    #[error("key cache {path} is corrupt: {reason}")]
    CacheCorrupt { path: PathBuf, reason: &'static str },

    /// The key cache file is intact but was sealed with a different
    /// operator secret. Kept apart from [`Error::CacheCorrupt`] because it is
    /// usually a misconfiguration the operator should hear about, and
    /// because decrypting with the wrong key must never yield keys.
    #[error("key cache {path} was sealed with a different operator secret")]
    CacheWrongSecret { path: PathBuf },

    /// An empty operator secret would seal the cache with a key anyone can
    /// derive.
    #[error("key cache operator secret must not be empty")]
    CacheEmptySecret,

    /// A call to an AWS service failed (unreachable endpoint, access
    /// denied, invalid ciphertext, missing secret or key, ...). `message` is
    /// short and quotes only AWS error codes and messages, names, regions
    /// and endpoints — never a secret value or plaintext.
    #[error("AWS {service} {operation}: {message}")]
    Aws {
        service: &'static str,
        operation: &'static str,
        message: String,
    },

    /// An AWS Secrets Manager secret's value is not a list of BLS keys.
    /// `reason` never quotes the value.
    #[error("AWS secret `{name}`: {reason}")]
    AwsSecretValue { name: String, reason: String },

    /// A key configuration type that this build was compiled without.
    #[error("key type `{kind}` needs the `{feature}` feature, which this build lacks")]
    FeatureDisabled { kind: String, feature: &'static str },

    /// Writing the key cache failed.
    #[error("cannot write key cache {path}: {source}")]
    CacheWrite {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Render a byte count the way humans read memory sizes ("64 GiB").
fn human_bytes(n: u128) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut unit = 0;
    let mut value = n;
    while unit + 1 < UNITS.len() && value >= 1024 && value & 1023 == 0 {
        value /= 1024;
        unit += 1;
    }
    if unit == 0 && n >= 1024 {
        // Not an exact multiple: fall back to a rounded MiB figure.
        return format!("{} MiB", n.div_ceil(1024 * 1024));
    }
    format!("{value} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrypt_memory_message_is_human() {
        let e = Error::ScryptMemory {
            needed: 128 * 8 * (1u128 << 26),
            limit: 512 << 20,
        };
        assert_eq!(
            e.to_string(),
            "scrypt parameters need 64 GiB, limit is 512 MiB"
        );
    }
}
