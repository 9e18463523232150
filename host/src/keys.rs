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

use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_kms::config::SharedCredentialsProvider;
use sha2::{Digest, Sha256};

use enclave_bridge::control::{AwsRegion, EncryptedKeyRecord};
pub use enclave_bridge::records::{BlsPubkey, KeyRecord};

/// Largest key record file read (a KMS ciphertext is at most 6 KiB).
pub const MAX_RECORD_FILE_LEN: u64 = 64 * 1024;

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
            Ok(Some(file)) if file.active => listing.add(source, file.to_control()),
            Ok(Some(_)) => listing.inactive += 1,
            // Vanished between listing and reading (being replaced): not a
            // problem, and not a removal either on the next clean listing.
            Ok(None) => {}
            Err(reason) => listing.problems.push(KeyProblem { source, reason }),
        }
    }
    Ok(listing)
}

fn read_record_file(path: &Path) -> Result<Option<KeyRecord>, String> {
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
    serde_json::from_slice::<KeyRecord>(&text)
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
    super::aws_client!(aws_sdk_dynamodb, region, credentials, endpoint_url)
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
                match KeyRecord::from_item(item).map(|r| r.map(|r| r.to_control())) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use enclave_bridge::secret::Base64Bytes;

    const PK: &str = "0xA99A76ED7796F7BE22D5B7E85DEEB7C5677E88E511E0B337618F8C4EB61349B4BF2D153F649F7B53359FE8B94A38E44C";

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
    fn fingerprints_change_with_content() {
        let record = |blob: u8, kms_key_id: Option<&str>| {
            KeyRecord {
                pubkey: BlsPubkey::try_from(PK.to_owned()).unwrap(),
                ciphertext: Base64Bytes(vec![blob]),
                active: true,
                kms_key_id: kms_key_id.map(str::to_owned),
                encryption_context: BTreeMap::new(),
            }
            .to_control()
        };
        let (a, b, c) = (record(1, None), record(2, None), record(1, Some("k")));
        assert_ne!(fingerprint(&a), fingerprint(&b));
        assert_ne!(fingerprint(&a), fingerprint(&c));
        assert_eq!(fingerprint(&a), fingerprint(&a.clone()));
    }
}
