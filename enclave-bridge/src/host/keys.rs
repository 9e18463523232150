//! Where the encrypted key records come from: a directory of JSON files or a
//! DynamoDB table (formats in the [module docs](super)). A listing is a
//! snapshot: the supervisor diffs it against what the enclave holds.
//!
//! Everything here is ciphertext; no function in this module sees a
//! plaintext key.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_kms::config::SharedCredentialsProvider;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::control::{AwsRegion, EncryptedKeyRecord};
use crate::secret::Base64Bytes;

/// Largest key record file read (a KMS ciphertext is at most 6 KiB).
pub const MAX_RECORD_FILE_LEN: u64 = 64 * 1024;

/// A BLS12-381 public key as `0x` + 96 lowercase hex digits (the 48-byte
/// compressed G1 point of the consensus specs). Parsing accepts either case
/// and a missing `0x`; the point itself is checked by the enclave, which
/// cross-checks it against the decrypted secret.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BlsPubkey(String);

impl BlsPubkey {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for BlsPubkey {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let hex = s.strip_prefix("0x").unwrap_or(&s);
        if hex.len() != 96 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("pubkey must be 0x followed by 96 hex digits (48 bytes)".into());
        }
        Ok(Self(format!("0x{}", hex.to_ascii_lowercase())))
    }
}

impl From<BlsPubkey> for String {
    fn from(p: BlsPubkey) -> String {
        p.0
    }
}

impl fmt::Display for BlsPubkey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One key record file (`--keys-dir`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRecordFile {
    pub pubkey: BlsPubkey,
    /// Standard base64 of the KMS `CiphertextBlob`.
    pub ciphertext: Base64Bytes,
    #[serde(default = "active_by_default")]
    pub active: bool,
    #[serde(default)]
    pub kms_key_id: Option<String>,
    #[serde(default)]
    pub encryption_context: BTreeMap<String, String>,
}

fn active_by_default() -> bool {
    true
}

/// The control-protocol record for a key: `id` and `pubkey` are the public key.
pub fn to_record(
    pubkey: &BlsPubkey,
    ciphertext: Vec<u8>,
    kms_key_id: Option<String>,
    encryption_context: BTreeMap<String, String>,
) -> EncryptedKeyRecord {
    EncryptedKeyRecord {
        id: pubkey.to_string(),
        pubkey: Some(pubkey.to_string()),
        ciphertext: Base64Bytes(ciphertext),
        encryption_context,
        kms_key_id,
    }
}

/// A digest of everything the enclave gets for a record, to notice when a
/// record changed (e.g. a failed one was fixed).
pub fn fingerprint(record: &EncryptedKeyRecord) -> [u8; 32] {
    let mut h = Sha256::new();
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    };
    field(record.id.as_bytes());
    field(&record.ciphertext.0);
    field(record.kms_key_id.as_deref().unwrap_or_default().as_bytes());
    for (k, v) in &record.encryption_context {
        field(k.as_bytes());
        field(v.as_bytes());
    }
    h.finalize().into()
}

/// A record that could not be used.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct KeyProblem {
    /// A file path, or `dynamodb:<table>` with the item's pubkey if known.
    pub source: String,
    /// Why (names and shapes, never record contents beyond the public key).
    pub reason: String,
}

impl fmt::Display for KeyProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.source, self.reason)
    }
}

/// One snapshot of a key source.
#[derive(Debug, Default)]
pub struct KeyListing {
    /// The active records, by public key.
    pub records: BTreeMap<String, EncryptedKeyRecord>,
    /// Records present but not active.
    pub inactive: usize,
    /// Records skipped because they could not be read.
    pub problems: Vec<KeyProblem>,
    /// DynamoDB `Scan` pages read (0 for a directory).
    pub pages: usize,
}

impl KeyListing {
    fn add(&mut self, source: String, record: EncryptedKeyRecord) {
        if self.records.contains_key(&record.id) {
            self.problems.push(KeyProblem {
                source,
                reason: format!("duplicate record for {}; the first one is used", record.id),
            });
        } else {
            self.records.insert(record.id.clone(), record);
        }
    }
}

/// Why a whole listing failed (nothing is changed on the enclave then).
#[derive(Debug, thiserror::Error)]
pub enum KeySourceError {
    #[error("cannot read the key directory {dir}: {source}")]
    Dir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot scan the DynamoDB table {table}: {message}")]
    DynamoDb { table: String, message: String },
}

/// How to build a [`KeySource`].
#[derive(Clone, Debug)]
pub enum KeySourceConfig {
    Dir(PathBuf),
    DynamoDb {
        table: String,
        endpoint_url: Option<String>,
        page_size: Option<i32>,
    },
}

/// A source of key records.
#[derive(Debug)]
pub enum KeySource {
    Dir(DirKeySource),
    DynamoDb(DynamoKeySource),
}

impl KeySource {
    pub async fn list(&self) -> Result<KeyListing, KeySourceError> {
        match self {
            KeySource::Dir(d) => d.list().await,
            KeySource::DynamoDb(t) => t.list().await,
        }
    }

    /// For logs.
    pub fn describe(&self) -> String {
        match self {
            KeySource::Dir(d) => format!("directory {}", d.dir.display()),
            KeySource::DynamoDb(t) => format!("DynamoDB table {}", t.table),
        }
    }
}

/// `--keys-dir`: every `*.json` file is one record.
#[derive(Debug, Clone)]
pub struct DirKeySource {
    dir: PathBuf,
}

impl DirKeySource {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub async fn list(&self) -> Result<KeyListing, KeySourceError> {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || list_dir(&dir))
            .await
            .unwrap_or_else(|e| {
                Err(KeySourceError::Dir {
                    dir: self.dir.clone(),
                    source: std::io::Error::other(e.to_string()),
                })
            })
    }
}

fn list_dir(dir: &Path) -> Result<KeyListing, KeySourceError> {
    let dir_err = |source| KeySourceError::Dir {
        dir: dir.to_owned(),
        source,
    };
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(dir_err)? {
        let entry = entry.map_err(dir_err)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') || !name.ends_with(".json") {
            continue;
        }
        paths.push(entry.path());
    }
    // Sorted, so "the first record wins" on duplicates is stable.
    paths.sort();
    let mut listing = KeyListing::default();
    for path in paths {
        let source = path.display().to_string();
        match read_record_file(&path) {
            Ok(Some(file)) if file.active => {
                let record = to_record(
                    &file.pubkey,
                    file.ciphertext.0,
                    file.kms_key_id,
                    file.encryption_context,
                );
                listing.add(source, record);
            }
            Ok(Some(_)) => listing.inactive += 1,
            // Vanished between listing and reading (being replaced): not a
            // problem, and not a removal either on the next clean listing.
            Ok(None) => {}
            Err(reason) => listing.problems.push(KeyProblem { source, reason }),
        }
    }
    Ok(listing)
}

fn read_record_file(path: &Path) -> Result<Option<KeyRecordFile>, String> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot open: {e}")),
    };
    let meta = file.metadata().map_err(|e| format!("cannot stat: {e}"))?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.len() > MAX_RECORD_FILE_LEN {
        return Err(format!(
            "{} bytes, more than the {MAX_RECORD_FILE_LEN}-byte limit of a key record",
            meta.len()
        ));
    }
    let mut text = Vec::new();
    file.take(MAX_RECORD_FILE_LEN + 1)
        .read_to_end(&mut text)
        .map_err(|e| format!("cannot read: {e}"))?;
    // The file holds a public key and a ciphertext, nothing secret, so
    // serde's message (field names, positions) is fine to log.
    serde_json::from_slice::<KeyRecordFile>(&text)
        .map(Some)
        .map_err(|e| format!("not a key record: {e}"))
}

/// `--keys-table`: a consistent `Scan`, every page.
#[derive(Debug, Clone)]
pub struct DynamoKeySource {
    client: aws_sdk_dynamodb::Client,
    table: String,
    page_size: Option<i32>,
}

/// A DynamoDB client for the host: the region given, the host's credentials,
/// rustls + ring, bounded timeouts, an optional endpoint override.
pub fn dynamodb_client(
    region: &AwsRegion,
    credentials: SharedCredentialsProvider,
    endpoint_url: Option<&str>,
) -> aws_sdk_dynamodb::Client {
    let timeouts = aws_sdk_dynamodb::config::timeout::TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(5))
        .operation_attempt_timeout(Duration::from_secs(20))
        .operation_timeout(Duration::from_secs(60))
        .build();
    let mut builder = aws_sdk_dynamodb::Config::builder()
        .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
        .region(aws_sdk_dynamodb::config::Region::new(
            region.as_str().to_owned(),
        ))
        .credentials_provider(credentials)
        .http_client(super::https_client())
        .timeout_config(timeouts);
    if let Some(url) = endpoint_url {
        builder = builder.endpoint_url(url);
    }
    aws_sdk_dynamodb::Client::from_conf(builder.build())
}

impl DynamoKeySource {
    /// `page_size`: `Limit` per `Scan` call (`None`: DynamoDB's 1 MB pages).
    pub fn new(client: aws_sdk_dynamodb::Client, table: String, page_size: Option<i32>) -> Self {
        Self {
            client,
            table,
            page_size,
        }
    }

    pub async fn list(&self) -> Result<KeyListing, KeySourceError> {
        let mut listing = KeyListing::default();
        let mut start_key: Option<HashMap<String, AttributeValue>> = None;
        loop {
            let page = self
                .client
                .scan()
                .table_name(&self.table)
                // A key added a moment ago should be seen at this reconcile.
                .consistent_read(true)
                .set_limit(self.page_size)
                .set_exclusive_start_key(start_key.take())
                .send()
                .await
                .map_err(|e| KeySourceError::DynamoDb {
                    table: self.table.clone(),
                    message: super::error_chain(&e),
                })?;
            listing.pages += 1;
            for item in page.items() {
                match record_from_item(item) {
                    Ok(Some(record)) => listing.add(
                        format!("dynamodb:{} item {}", self.table, record.id),
                        record,
                    ),
                    Ok(None) => listing.inactive += 1,
                    Err((label, reason)) => listing.problems.push(KeyProblem {
                        source: format!("dynamodb:{} item {label}", self.table),
                        reason,
                    }),
                }
            }
            // DynamoDB's pagination: more items follow exactly when
            // LastEvaluatedKey is present (Scan API reference).
            match page.last_evaluated_key {
                Some(key) if !key.is_empty() => start_key = Some(key),
                _ => break,
            }
        }
        Ok(listing)
    }
}

/// An item → `Some(record)` if active, `None` if inactive; `Err((label,
/// reason))` if malformed.
fn record_from_item(
    item: &HashMap<String, AttributeValue>,
) -> Result<Option<EncryptedKeyRecord>, (String, String)> {
    let label = match item.get("pubkey") {
        Some(AttributeValue::S(s)) => s.clone(),
        _ => "(no pubkey)".to_owned(),
    };
    let fail = |reason: &str| Err((label.clone(), reason.to_owned()));
    let pubkey = match item.get("pubkey") {
        Some(AttributeValue::S(s)) => match BlsPubkey::try_from(s.clone()) {
            Ok(p) => p,
            Err(e) => return fail(&e),
        },
        Some(_) => return fail("`pubkey` must be a string (S)"),
        None => return fail("no `pubkey` attribute"),
    };
    match item.get("active") {
        Some(AttributeValue::Bool(true)) => {}
        Some(AttributeValue::Bool(false)) | None => return Ok(None),
        Some(_) => return fail("`active` must be a boolean (BOOL)"),
    }
    let ciphertext = match item.get("ciphertext") {
        Some(AttributeValue::B(blob)) if !blob.as_ref().is_empty() => blob.as_ref().to_vec(),
        Some(AttributeValue::B(_)) => return fail("`ciphertext` is empty"),
        Some(_) => return fail("`ciphertext` must be binary (B), the raw KMS blob"),
        None => return fail("no `ciphertext` attribute"),
    };
    let kms_key_id = match item.get("kms_key_id") {
        Some(AttributeValue::S(s)) => Some(s.clone()),
        Some(_) => return fail("`kms_key_id` must be a string (S)"),
        None => None,
    };
    let mut context = BTreeMap::new();
    match item.get("encryption_context") {
        Some(AttributeValue::M(m)) => {
            for (k, v) in m {
                match v {
                    AttributeValue::S(s) => {
                        context.insert(k.clone(), s.clone());
                    }
                    _ => return fail("`encryption_context` values must be strings (S)"),
                }
            }
        }
        Some(_) => return fail("`encryption_context` must be a map (M)"),
        None => {}
    }
    Ok(Some(to_record(&pubkey, ciphertext, kms_key_id, context)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_dynamodb::primitives::Blob;

    const PK: &str = "0xA99A76ED7796F7BE22D5B7E85DEEB7C5677E88E511E0B337618F8C4EB61349B4BF2D153F649F7B53359FE8B94A38E44C";

    #[test]
    fn pubkeys_are_normalised_and_checked() {
        let p = BlsPubkey::try_from(PK.to_owned()).unwrap();
        assert_eq!(p.as_str(), PK.to_ascii_lowercase().replacen("0X", "0x", 1));
        assert_eq!(
            BlsPubkey::try_from(PK[2..].to_owned()).unwrap(),
            p,
            "0x is optional"
        );
        assert!(BlsPubkey::try_from("0x1234".to_owned()).is_err());
        assert!(BlsPubkey::try_from(format!("{}zz", &PK[..96])).is_err());
    }

    #[test]
    fn directory_listing() {
        let dir = tempfile::tempdir().unwrap();
        let lower = PK.to_ascii_lowercase().replacen("0X", "0x", 1);
        let other = format!("0x{}", "ab".repeat(48));
        std::fs::write(
            dir.path().join("a.json"),
            format!(r#"{{"pubkey": "{PK}", "ciphertext": "AAEC", "active": true}}"#),
        )
        .unwrap();
        // Same key again: reported, the first (by name) wins.
        std::fs::write(
            dir.path().join("b.json"),
            format!(r#"{{"pubkey": "{lower}", "ciphertext": "AwQF"}}"#),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("c.json"),
            format!(r#"{{"pubkey": "{other}", "ciphertext": "BgcI", "active": false}}"#),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("d.json"),
            r#"{"pubkey": "0x12", "ciphertext": ""}"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("e.json"),
            format!(r#"{{"pubkey": "{other}", "ciphertext": "AA==", "secret": 1}}"#),
        )
        .unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        std::fs::write(dir.path().join(".f.json.swp"), "ignored").unwrap();

        let listing = list_dir(dir.path()).unwrap();
        assert_eq!(listing.records.len(), 1);
        let rec = &listing.records[&lower];
        assert_eq!(rec.id, lower);
        assert_eq!(rec.pubkey.as_deref(), Some(lower.as_str()));
        assert_eq!(rec.ciphertext.0, vec![0, 1, 2]);
        assert_eq!(listing.inactive, 1);
        let problems: Vec<_> = listing.problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].contains("b.json") && problems[0].contains("duplicate"));
        assert!(problems[1].contains("d.json") && problems[1].contains("96 hex"));
        assert!(problems[2].contains("e.json") && problems[2].contains("unknown field"));

        let missing = list_dir(&dir.path().join("nope")).unwrap_err();
        assert!(missing
            .to_string()
            .contains("cannot read the key directory"));
    }

    #[test]
    fn dynamodb_items() {
        let item = |pairs: Vec<(&str, AttributeValue)>| -> HashMap<String, AttributeValue> {
            pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
        };
        let good = item(vec![
            ("pubkey", AttributeValue::S(PK.into())),
            ("ciphertext", AttributeValue::B(Blob::new(vec![9, 9]))),
            ("active", AttributeValue::Bool(true)),
            ("added_at", AttributeValue::S("2025-01-01T00:00:00Z".into())),
            ("kms_key_id", AttributeValue::S("alias/v".into())),
            (
                "encryption_context",
                AttributeValue::M(HashMap::from([(
                    "validator".to_owned(),
                    AttributeValue::S("7".into()),
                )])),
            ),
        ]);
        let rec = record_from_item(&good).unwrap().unwrap();
        assert_eq!(rec.ciphertext.0, vec![9, 9]);
        assert_eq!(rec.kms_key_id.as_deref(), Some("alias/v"));
        assert_eq!(rec.encryption_context["validator"], "7");

        let mut inactive = good.clone();
        inactive.insert("active".into(), AttributeValue::Bool(false));
        assert!(record_from_item(&inactive).unwrap().is_none());
        let mut no_flag = good.clone();
        no_flag.remove("active");
        assert!(record_from_item(&no_flag).unwrap().is_none());
        let mut text_blob = good.clone();
        text_blob.insert("ciphertext".into(), AttributeValue::S("AAEC".into()));
        let (label, reason) = record_from_item(&text_blob).unwrap_err();
        assert_eq!(label, PK);
        assert!(reason.contains("binary"), "{reason}");
    }

    #[test]
    fn fingerprints_change_with_content() {
        let p = BlsPubkey::try_from(PK.to_owned()).unwrap();
        let a = to_record(&p, vec![1], None, BTreeMap::new());
        let b = to_record(&p, vec![2], None, BTreeMap::new());
        let c = to_record(&p, vec![1], Some("k".into()), BTreeMap::new());
        assert_ne!(fingerprint(&a), fingerprint(&b));
        assert_ne!(fingerprint(&a), fingerprint(&c));
        assert_eq!(fingerprint(&a), fingerprint(&a.clone()));
    }
}
