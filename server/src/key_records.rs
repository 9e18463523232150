//! ensign's encrypted key records for enclave mode, and `ensign keys encrypt`, which makes them.
//!
//! # The plaintext of a record
//!
//! What KMS encrypts, and what the enclave gets back from KMS `Decrypt`, is one UTF-8 JSON
//! object (ensign's own format; unknown fields are refused):
//!
//! ```json
//! {"keystore": {"crypto": {…}, "pubkey": "a99a…", "path": "…", "uuid": "…", "version": 4},
//!  "password": "the keystore's password"}
//! ```
//!
//! - `keystore`: an EIP-2335 keystore, the JSON object itself (not a string holding it);
//! - `password`: its password, as given to `Keystore::decrypt` (EIP-2335 normalisation —
//!   NFKD, control characters removed — is applied by the decryption, not here).
//!
//! So the BLS secret is protected twice: by KMS (only the attested enclave image may decrypt
//! the record, see `enclave`) and by the keystore's own KDF and password. At most 4096 bytes
//! (KMS `Encrypt`'s plaintext limit): compact keystores are about 1 KiB.
//!
//! # The records around it
//!
//! `ensign keys encrypt` writes what `ensign-host` reads: `enclave_bridge::records::KeyRecord`,
//! the one definition of both forms (a file `<DIR>/<pubkey>.json` with `--out-dir`, a DynamoDB
//! item with `--dynamodb-table`). The encryption context is
//! `{"ensign-pubkey": "0x…"}`: KMS binds it to the ciphertext (it must be presented again to
//! decrypt), so a record cannot be relabelled with another public key without failing, and
//! CloudTrail logs which validator each `Decrypt` was for.

use std::path::PathBuf;

use serde::Deserialize;
use zeroize::Zeroizing;

use enclave_bridge::secret::SecretString;
use keystore::{Keystore, ValidatorKey};

/// KMS `Encrypt` accepts at most 4096 bytes of plaintext.
pub const MAX_PLAINTEXT_LEN: usize = 4096;

/// The encryption context key naming the record's public key.
pub const CONTEXT_PUBKEY: &str = "ensign-pubkey";

/// The encryption context of a database password (`ensign database provision`):
/// `{CONTEXT_PURPOSE: PURPOSE_DB_PASSWORD, CONTEXT_DB_USER: <role>}`.
pub const CONTEXT_PURPOSE: &str = "ensign-purpose";
pub const PURPOSE_DB_PASSWORD: &str = "slashing-db-password";
pub const CONTEXT_DB_USER: &str = "ensign-db-user";

/// Why a record's plaintext is not usable. Messages never quote the plaintext.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("the decrypted record is {0} bytes, more than {MAX_PLAINTEXT_LEN}")]
    TooLarge(usize),
    #[error("the decrypted record is not ensign's key record: {0}")]
    Format(String),
    #[error("the keystore in the record: {0}")]
    Keystore(#[from] keystore::Error),
    #[error("the record is labelled {labelled} but holds the key of {actual}")]
    PubkeyMismatch { labelled: String, actual: String },
}

/// Why `ensign keys encrypt` or `ensign database provision` (the one-shot AWS commands) did not
/// complete. Messages name files and AWS calls, never a password or a plaintext.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error(transparent)]
    File(#[from] crate::FileError),
    #[error("{} is not a JSON object: {reason}", path.display())]
    NotJsonObject { path: PathBuf, reason: String },
    #[error("{}: {source}", path.display())]
    PasswordFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: more than {max} bytes", path.display())]
    PasswordTooLong { path: PathBuf, max: u64 },
    #[error("{}: not UTF-8", .0.display())]
    PasswordNotUtf8(PathBuf),
    #[error(
        "the record would be {0} bytes; KMS encrypts at most {MAX_PLAINTEXT_LEN} (use a compact \
         keystore)"
    )]
    RecordTooLarge(usize),
    #[error("{0}")]
    Encode(serde_json::Error),
    #[error(transparent)]
    Record(#[from] RecordError),
    /// The keystore does not open with the password (or is not a keystore).
    #[error("{}: {source}", path.display())]
    Keystore { path: PathBuf, source: RecordError },
    #[error("{0}")]
    Pubkey(String),
    #[error("{0}")]
    AwsConfig(keystore::Error),
    /// An AWS call answered with an error (or none at all).
    #[error("{call} failed: {detail}")]
    Aws { call: String, detail: String },
    #[error("KMS answered without a CiphertextBlob")]
    NoCiphertext,
    /// A step run on its own thread panicked.
    #[error("{step}: {source}")]
    Aborted {
        step: &'static str,
        source: tokio::task::JoinError,
    },
    #[error("provisioning the database failed: {0}")]
    Provision(slashing::Error),
    /// `database provision` failed before it changed the database (KMS comes first).
    #[error("{0} (the database was not changed)")]
    DatabaseUnchanged(Box<ToolError>),
    /// `database provision` changed the role's password but could not deliver it.
    #[error("{0}; the role's new password is lost: run the command again (it rotates it)")]
    PasswordLost(Box<ToolError>),
    #[error("give {0}")]
    NoDestination(&'static str),
    #[error("`ensign {0}` needs a build with the `aws` feature")]
    NoAws(&'static str),
}

/// The error of an AWS SDK call named `call` (`"KMS Encrypt with key …"`), with the SDK's
/// whole chain of causes (its own `Display` says only "service error").
#[cfg(feature = "aws")]
pub(crate) fn aws_failed(call: String, e: &(impl std::error::Error + 'static)) -> ToolError {
    ToolError::Aws {
        call,
        detail: aws_sdk_kms::error::DisplayErrorContext(e).to_string(),
    }
}

/// A decrypted record (see the module docs). The password is zeroized on drop; the keystore is
/// EIP-2335's encrypted form, not secret on its own.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordPlaintext {
    keystore: serde_json::Map<String, serde_json::Value>,
    password: SecretString,
}

impl std::fmt::Debug for RecordPlaintext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordPlaintext").finish_non_exhaustive()
    }
}

impl RecordPlaintext {
    /// Parses a decrypted record. A JSON error is described by its kind and position, or by
    /// field names, never by the values it met (one of them may be the password).
    pub fn parse(bytes: &[u8]) -> Result<RecordPlaintext, RecordError> {
        if bytes.len() > MAX_PLAINTEXT_LEN {
            return Err(RecordError::TooLarge(bytes.len()));
        }
        serde_json::from_slice(bytes).map_err(|e| RecordError::Format(describe_json_error(&e)))
    }

    /// The keystore, as parsed (KDF parameters bounded) by the keystore crate.
    pub fn keystore(&self) -> Result<Keystore, RecordError> {
        let json = serde_json::to_string(&self.keystore)
            .map_err(|e| RecordError::Format(format!("keystore: {e}")))?;
        Ok(Keystore::from_json(&json)?)
    }

    /// Decrypts the keystore (the KDF: call from a blocking thread).
    pub fn decrypt(&self, keystore: &Keystore) -> Result<ValidatorKey, RecordError> {
        Ok(keystore.decrypt(self.password.expose())?)
    }
}

/// A serde_json error without the values it quotes: serde's messages about field *names*
/// (unknown, missing, duplicate) are kept, anything else is reduced to its kind and position.
pub fn describe_json_error(e: &serde_json::Error) -> String {
    let text = e.to_string();
    if e.is_data()
        && ["unknown field", "missing field", "duplicate field"]
            .iter()
            .any(|p| text.starts_with(p))
    {
        return text;
    }
    let what = match e.classify() {
        serde_json::error::Category::Io => "unreadable",
        serde_json::error::Category::Syntax => "not valid JSON",
        serde_json::error::Category::Data => "a value of the wrong type",
        serde_json::error::Category::Eof => "truncated JSON",
    };
    format!("{what} at line {} column {}", e.line(), e.column())
}

/// The plaintext of a record, in a zeroizing buffer sized up front (so the serializer never
/// reallocates, which would leave unzeroized copies of the password behind).
pub fn encode_plaintext(
    keystore: &serde_json::Map<String, serde_json::Value>,
    password: &str,
) -> Result<Zeroizing<Vec<u8>>, ToolError> {
    #[derive(serde::Serialize)]
    struct Out<'a> {
        keystore: &'a serde_json::Map<String, serde_json::Value>,
        password: &'a str,
    }
    let keystore_len = serde_json::to_vec(keystore)
        .map_err(ToolError::Encode)?
        .len();
    // A JSON string escape is at most 6 bytes per input byte (`\u00XX`).
    let mut buf = Zeroizing::new(Vec::with_capacity(keystore_len + 6 * password.len() + 64));
    serde_json::to_writer(&mut *buf, &Out { keystore, password }).map_err(ToolError::Encode)?;
    if buf.len() > MAX_PLAINTEXT_LEN {
        return Err(ToolError::RecordTooLarge(buf.len()));
    }
    Ok(buf)
}

/// Reads a password file as the keystore loader does: bounded, UTF-8, one trailing newline
/// (LF or CRLF) removed.
pub fn read_password_file(path: &std::path::Path) -> Result<Zeroizing<String>, ToolError> {
    const MAX: u64 = 4096;
    let unreadable = |source| ToolError::PasswordFile {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(unreadable)?;
    if meta.len() > MAX {
        return Err(ToolError::PasswordTooLong {
            path: path.to_path_buf(),
            max: MAX,
        });
    }
    let bytes = Zeroizing::new(std::fs::read(path).map_err(unreadable)?);
    let text =
        std::str::from_utf8(&bytes).map_err(|_| ToolError::PasswordNotUtf8(path.to_path_buf()))?;
    let text = match text.strip_suffix('\n') {
        Some(t) => t.strip_suffix('\r').unwrap_or(t),
        None => text,
    };
    Ok(Zeroizing::new(text.to_string()))
}

/// `ensign keys encrypt`: checks the keystore and password (by decrypting once), encrypts the
/// record with KMS, and writes it to `--out-dir` or `--dynamodb-table`. Returns what was done.
#[cfg(feature = "aws")]
pub async fn encrypt_command(args: &crate::config::KeysEncryptArgs) -> Result<String, ToolError> {
    use crate::FileError;
    use std::collections::BTreeMap;

    let text = std::fs::read(&args.keystore).map_err(FileError::read(&args.keystore))?;
    let keystore: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&text)
        .map_err(|e| ToolError::NotJsonObject {
            path: args.keystore.clone(),
            reason: describe_json_error(&e),
        })?;
    let password = read_password_file(&args.password_file)?;
    let plaintext = encode_plaintext(&keystore, &password)?;
    // Decrypt once here, so that a wrong password or a broken keystore is found now, not in
    // the enclave; and the public key comes from the secret itself, not the keystore's label.
    let record = RecordPlaintext::parse(&plaintext)?;
    let parsed = record.keystore()?;
    let key = tokio::task::spawn_blocking(move || record.decrypt(&parsed))
        .await
        .map_err(|source| ToolError::Aborted {
            step: "decrypting the keystore",
            source,
        })?
        .map_err(|source| ToolError::Keystore {
            path: args.keystore.clone(),
            source,
        })?;
    let pubkey = const_hex::encode_prefixed(key.pubkey());
    drop(key);

    let config = sdk_config(&args.aws).await?;
    let context = BTreeMap::from([(CONTEXT_PUBKEY.to_string(), pubkey.clone())]);
    let (ciphertext, key_id) = kms_encrypt(&config, &args.kms_key_id, &plaintext, &context).await?;

    let record = enclave_bridge::records::KeyRecord {
        pubkey: enclave_bridge::records::BlsPubkey::try_from(pubkey.clone())
            .map_err(ToolError::Pubkey)?,
        ciphertext: enclave_bridge::secret::Base64Bytes(ciphertext),
        active: true,
        kms_key_id: Some(key_id),
        encryption_context: context,
    };
    match (&args.out_dir, &args.dynamodb_table) {
        (Some(dir), _) => {
            let text = serde_json::to_string_pretty(&record).map_err(ToolError::Encode)?;
            std::fs::create_dir_all(dir).map_err(FileError::create(dir))?;
            let path = dir.join(format!("{pubkey}.json"));
            // Written beside it under a dot name (which ensign-host skips), then renamed: the
            // host never reads half a record.
            let tmp = dir.join(format!(".{pubkey}.json.tmp"));
            std::fs::write(&tmp, format!("{text}\n"))
                .and_then(|()| std::fs::rename(&tmp, &path))
                .map_err(FileError::write(&path))?;
            Ok(format!("wrote {} (pubkey {pubkey})", path.display()))
        }
        (None, Some(table)) => {
            aws_sdk_dynamodb::Client::new(&config)
                .put_item()
                .table_name(table)
                .set_item(Some(record.to_item(&crate::state::now_rfc3339())))
                .send()
                .await
                .map_err(|e| aws_failed(format!("DynamoDB PutItem into {table}"), &e))?;
            Ok(format!(
                "put the record of {pubkey} into DynamoDB table {table}"
            ))
        }
        (None, None) => Err(ToolError::NoDestination("--out-dir or --dynamodb-table")),
    }
}

/// The AWS configuration of a one-shot command: its region and endpoint, the environment's
/// credentials.
#[cfg(feature = "aws")]
pub async fn sdk_config(
    target: &crate::config::AwsTarget,
) -> Result<keystore::aws::SdkConfig, ToolError> {
    keystore::aws::sdk_config(
        &keystore::AwsAuth::Environment,
        target.region.as_deref(),
        target.endpoint_url.as_deref(),
    )
    .await
    .map_err(ToolError::AwsConfig)
}

/// KMS `Encrypt` of `plaintext` under `key_id` with `context`: the ciphertext, and the key's ARN
/// as KMS names it (recorded rather than an alias that may move).
#[cfg(feature = "aws")]
pub async fn kms_encrypt(
    config: &keystore::aws::SdkConfig,
    key_id: &str,
    plaintext: &[u8],
    context: &std::collections::BTreeMap<String, String>,
) -> Result<(Vec<u8>, String), ToolError> {
    let out = aws_sdk_kms::Client::new(config)
        .encrypt()
        .key_id(key_id)
        .plaintext(aws_sdk_kms::primitives::Blob::new(plaintext.to_vec()))
        .set_encryption_context(Some(context.clone().into_iter().collect()))
        .send()
        .await
        .map_err(|e| aws_failed(format!("KMS Encrypt with key {key_id}"), &e))?;
    let ciphertext = out
        .ciphertext_blob()
        .ok_or(ToolError::NoCiphertext)?
        .as_ref()
        .to_vec();
    Ok((ciphertext, out.key_id().unwrap_or(key_id).to_string()))
}

/// Without the `aws` feature there is no KMS client.
#[cfg(not(feature = "aws"))]
pub async fn encrypt_command(_: &crate::config::KeysEncryptArgs) -> Result<String, ToolError> {
    Err(ToolError::NoAws("keys encrypt"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_keystore() -> (serde_json::Map<String, serde_json::Value>, ValidatorKey) {
        let key = ValidatorKey::from_secret_bytes(&[7u8; 32]).unwrap();
        let json = keystore::encrypt(&key, "pässword", keystore::Kdf::Pbkdf2 { c: 16 }).unwrap();
        (serde_json::from_str(&json).unwrap(), key)
    }

    #[test]
    fn plaintext_round_trips_and_decrypts() {
        let (ks, key) = sample_keystore();
        let bytes = encode_plaintext(&ks, "pässword").unwrap();
        let record = RecordPlaintext::parse(&bytes).unwrap();
        let got = record.decrypt(&record.keystore().unwrap()).unwrap();
        assert_eq!(got.pubkey(), key.pubkey());
        let wrong = encode_plaintext(&ks, "wrong").unwrap();
        let record = RecordPlaintext::parse(&wrong).unwrap();
        assert!(record.decrypt(&record.keystore().unwrap()).is_err());
    }

    #[test]
    fn malformed_records_never_quote_values() {
        for bad in [
            &br#"{"keystore": {}, "password": 123456789}"#[..],
            br#"{"keystore": "s3cret-value", "password": "x"}"#,
            br#"{"keystore": {}, "password": "s3cret-value", "extra": 1}"#,
            br#"{"keystore": {}}"#,
            b"s3cret-value",
        ] {
            let e = RecordPlaintext::parse(bad).unwrap_err().to_string();
            assert!(!e.contains("s3cret") && !e.contains("123456789"), "{e}");
        }
        let e = RecordPlaintext::parse(&[b' '; MAX_PLAINTEXT_LEN + 1]).unwrap_err();
        assert!(matches!(e, RecordError::TooLarge(_)), "{e}");
    }

    #[test]
    fn oversized_records_are_refused_before_kms() {
        let (ks, _) = sample_keystore();
        let e = encode_plaintext(&ks, &"p".repeat(5000)).unwrap_err();
        assert!(
            matches!(e, ToolError::RecordTooLarge(n) if n > MAX_PLAINTEXT_LEN),
            "{e}"
        );
        assert!(e.to_string().contains("4096"), "{e}");
    }
}
