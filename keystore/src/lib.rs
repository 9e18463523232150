//! Validator keys for ensign: EIP-2335 keystores and Web3Signer key
//! configuration files.
//!
//! What this crate does:
//! - parses EIP-2335 (version 4) keystores into bounded types, decrypts
//!   them (scrypt or PBKDF2-HMAC-SHA256, AES-128-CTR, SHA-256 checksum) and
//!   encrypts new ones ([`Keystore`], [`decrypt`], [`encrypt`]);
//! - holds a BLS signing key as a [`ValidatorKey`];
//! - loads keys the way Web3Signer does, from a directory of YAML key
//!   configs ([`load_key_configs`]) or of keystores plus passwords
//!   ([`load_keystores_dir`]), decrypting on all cores under a memory
//!   budget for scrypt ([`LoadOptions`]) and reporting per-file errors and
//!   [`LoadStats`] in a [`LoadReport`];
//! - with the `aws` feature (default), loads keys from AWS Secrets Manager
//!   (`aws-secret` configs, [`load_aws_secrets_bulk`]) and KMS-encrypted
//!   keys or keystore passwords (`aws-kms-encrypted` configs); see [`aws`];
//! - optionally keeps decrypted keys in a restart cache sealed with an
//!   operator secret ([`KeyCache`]), so restarts skip the KDFs.
//!
//! Invariants:
//! - Secret material (secret keys, passwords, KDF output, plaintexts, file
//!   contents that may hold keys) lives in zeroizing types and never appears
//!   in `Debug`, `Display` or [`Error`] values.
//! - Every KDF parameter is bounded when the keystore is parsed
//!   (see [`SCRYPT_MAX_MEMORY`], [`SCRYPT_MAX_P`], [`PBKDF2_MAX_C`]), so a
//!   hostile keystore cannot make us allocate or spin before being refused.
//! - A [`ValidatorKey`] is a valid non-zero BLS scalar whose pubkey was
//!   derived here; a keystore's `pubkey` field is only ever compared
//!   against it, never trusted.
//! - A wrong password is always [`Error::WrongPassword`]; a garbage key is
//!   never returned.
//! - The restart cache never holds a secret unsealed, and a cache opened
//!   with the wrong operator secret is an error, never a source of keys.
//! - This crate depends on no other workspace crate.

#[cfg(feature = "aws")]
pub mod aws;
mod cache;
mod eip2335;
mod error;
mod key;
mod loader;
mod password;
mod report;

pub use cache::{CacheId, KeyCache, MAX_CACHE_ENTRIES};
pub use eip2335::{
    decrypt, encrypt, Kdf, Keystore, MAX_SALT_LEN, PBKDF2_MAX_C, SCRYPT_MAX_MEMORY, SCRYPT_MAX_P,
};
pub use error::Error;
pub use key::{ValidatorKey, PUBKEY_LEN, SECRET_LEN};
pub use loader::{
    default_max_kdf_memory, load_key_configs, load_key_configs_with, load_keystore_file,
    load_keystores_dir, load_keystores_dir_with, LoadError, LoadOptions, LoadReport, LoadStats,
    PasswordSource, Progress, MAX_CONFIG_FILE_LEN, MAX_DOCUMENTS_PER_FILE, MAX_KEYSTORE_FILE_LEN,
    MAX_PASSWORD_FILE_LEN,
};
pub use password::normalize_password;

#[cfg(feature = "aws")]
pub use aws::{load_aws_secrets_bulk, AwsAuth, AwsSecretsBulk};
