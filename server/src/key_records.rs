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
) -> Result<Zeroizing<Vec<u8>>, String> {
    #[derive(serde::Serialize)]
    struct Out<'a> {
        keystore: &'a serde_json::Map<String, serde_json::Value>,
        password: &'a str,
    }
    let keystore_len = serde_json::to_vec(keystore)
        .map_err(|e| e.to_string())?
        .len();
    // A JSON string escape is at most 6 bytes per input byte (`\u00XX`).
    let mut buf = Zeroizing::new(Vec::with_capacity(keystore_len + 6 * password.len() + 64));
    serde_json::to_writer(&mut *buf, &Out { keystore, password }).map_err(|e| e.to_string())?;
    if buf.len() > MAX_PLAINTEXT_LEN {
        return Err(format!(
            "the record would be {} bytes; KMS encrypts at most {MAX_PLAINTEXT_LEN} \
             (use a compact keystore)",
            buf.len()
        ));
    }
    Ok(buf)
}

/// Reads a password file as the keystore loader does: bounded, UTF-8, one trailing newline
/// (LF or CRLF) removed.
pub fn read_password_file(path: &std::path::Path) -> Result<Zeroizing<String>, String> {
    const MAX: u64 = 4096;
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.len() > MAX {
        return Err(format!("{}: more than {MAX} bytes", path.display()));
    }
    let bytes =
        Zeroizing::new(std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?);
    let text = std::str::from_utf8(&bytes).map_err(|_| format!("{}: not UTF-8", path.display()))?;
    let text = match text.strip_suffix('\n') {
        Some(t) => t.strip_suffix('\r').unwrap_or(t),
        None => text,
    };
    Ok(Zeroizing::new(text.to_string()))
}

/// `ensign keys encrypt`: checks the keystore and password (by decrypting once), encrypts the
/// record with KMS, and writes it to `--out-dir` or `--dynamodb-table`. Returns what was done.
#[cfg(feature = "aws")]
pub async fn encrypt_command(args: &crate::config::KeysEncryptArgs) -> Result<String, String> {
    use std::collections::BTreeMap;

    let text = std::fs::read(&args.keystore)
        .map_err(|e| format!("cannot read {}: {e}", args.keystore.display()))?;
    let keystore: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&text)
        .map_err(|e| {
            format!(
                "{} is not a JSON object: {}",
                args.keystore.display(),
                describe_json_error(&e)
            )
        })?;
    let password = read_password_file(&args.password_file)?;
    let plaintext = encode_plaintext(&keystore, &password)?;
    // Decrypt once here, so that a wrong password or a broken keystore is found now, not in
    // the enclave; and the public key comes from the secret itself, not the keystore's label.
    let record = RecordPlaintext::parse(&plaintext).map_err(|e| e.to_string())?;
    let parsed = record.keystore().map_err(|e| e.to_string())?;
    let key = tokio::task::spawn_blocking(move || record.decrypt(&parsed))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("{}: {e}", args.keystore.display()))?;
    let pubkey = const_hex::encode_prefixed(key.pubkey());
    drop(key);

    let config = sdk_config(&args.aws).await?;
    let context = BTreeMap::from([(CONTEXT_PUBKEY.to_string(), pubkey.clone())]);
    let (ciphertext, key_id) = kms_encrypt(&config, &args.kms_key_id, &plaintext, &context).await?;

    let record = enclave_bridge::records::KeyRecord {
        pubkey: enclave_bridge::records::BlsPubkey::try_from(pubkey.clone())?,
        ciphertext: enclave_bridge::secret::Base64Bytes(ciphertext),
        active: true,
        kms_key_id: Some(key_id),
        encryption_context: context,
    };
    match (&args.out_dir, &args.dynamodb_table) {
        (Some(dir), _) => {
            let text = serde_json::to_string_pretty(&record).map_err(|e| e.to_string())?;
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            let path = dir.join(format!("{pubkey}.json"));
            // Written beside it under a dot name (which ensign-host skips), then renamed: the
            // host never reads half a record.
            let tmp = dir.join(format!(".{pubkey}.json.tmp"));
            std::fs::write(&tmp, format!("{text}\n"))
                .and_then(|()| std::fs::rename(&tmp, &path))
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            Ok(format!("wrote {} (pubkey {pubkey})", path.display()))
        }
        (None, Some(table)) => {
            aws_sdk_dynamodb::Client::new(&config)
                .put_item()
                .table_name(table)
                .set_item(Some(record.to_item(&crate::state::now_rfc3339())))
                .send()
                .await
                .map_err(|e| {
                    format!(
                        "DynamoDB PutItem into {table} failed: {}",
                        aws_sdk_dynamodb::error::DisplayErrorContext(&e)
                    )
                })?;
            Ok(format!(
                "put the record of {pubkey} into DynamoDB table {table}"
            ))
        }
        (None, None) => Err("give --out-dir or --dynamodb-table".into()),
    }
}

/// The AWS configuration of a one-shot command: its region and endpoint, the environment's
/// credentials.
#[cfg(feature = "aws")]
pub async fn sdk_config(
    target: &crate::config::AwsTarget,
) -> Result<keystore::aws::SdkConfig, String> {
    keystore::aws::sdk_config(
        &keystore::AwsAuth::Environment,
        target.region.as_deref(),
        target.endpoint_url.as_deref(),
    )
    .await
    .map_err(|e| e.to_string())
}

/// KMS `Encrypt` of `plaintext` under `key_id` with `context`: the ciphertext, and the key's ARN
/// as KMS names it (recorded rather than an alias that may move).
#[cfg(feature = "aws")]
pub async fn kms_encrypt(
    config: &keystore::aws::SdkConfig,
    key_id: &str,
    plaintext: &[u8],
    context: &std::collections::BTreeMap<String, String>,
) -> Result<(Vec<u8>, String), String> {
    let out = aws_sdk_kms::Client::new(config)
        .encrypt()
        .key_id(key_id)
        .plaintext(aws_sdk_kms::primitives::Blob::new(plaintext.to_vec()))
        .set_encryption_context(Some(context.clone().into_iter().collect()))
        .send()
        .await
        .map_err(|e| {
            format!(
                "KMS Encrypt with key {key_id} failed: {}",
                aws_sdk_kms::error::DisplayErrorContext(&e)
            )
        })?;
    let ciphertext = out
        .ciphertext_blob()
        .ok_or("KMS answered without a CiphertextBlob")?
        .as_ref()
        .to_vec();
    Ok((ciphertext, out.key_id().unwrap_or(key_id).to_string()))
}

/// Without the `aws` feature there is no KMS client.
#[cfg(not(feature = "aws"))]
pub async fn encrypt_command(_: &crate::config::KeysEncryptArgs) -> Result<String, String> {
    Err("`ensign keys encrypt` needs a build with the `aws` feature".into())
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
        assert!(e.contains("4096"), "{e}");
    }
}
