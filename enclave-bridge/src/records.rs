//! ensign's encrypted key record for enclave mode, defined once: `ensign keys encrypt` (server)
//! writes it, `ensign-host` (`host::keys`) reads it, in two forms of the same fields.
//!
//! - A JSON file `<pubkey>.json` (`--out-dir` / `--keys-dir`): `{"pubkey", "ciphertext"
//!   (standard base64 of the KMS blob), "active" (default true), "kms_key_id",
//!   "encryption_context"}`; unknown fields are refused.
//! - A DynamoDB item (`--dynamodb-table` / `--keys-table`, feature `dynamodb`): `pubkey` (S),
//!   `ciphertext` (B, the raw blob), `active` (BOOL; absent means inactive), `kms_key_id` (S),
//!   `encryption_context` (M of S), and `added_at` (S, RFC 3339), written but not read.
//!
//! A record holds a public key and a ciphertext: nothing secret, so parse errors may name
//! fields and positions. What the ciphertext opens to is `server`'s `key_records`.
//!
//! Also here: [`EncryptedDbSecret`], the Secrets Manager secret `ensign database provision`
//! writes and ensign-host (`host::db_secret`, `--db-secret-arn`) reads, the database password as
//! a KMS ciphertext only the enclave can open.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::control::EncryptedKeyRecord;
use crate::secret::Base64Bytes;

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

/// One encrypted key record (the JSON file form is its serde form).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRecord {
    pub pubkey: BlsPubkey,
    /// The KMS `CiphertextBlob` (standard base64 in JSON).
    pub ciphertext: Base64Bytes,
    #[serde(default = "active_by_default")]
    pub active: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key_id: Option<String>,
    #[serde(default)]
    pub encryption_context: BTreeMap<String, String>,
}

fn active_by_default() -> bool {
    true
}

impl KeyRecord {
    /// The control-protocol record for the key: `id` and `pubkey` are the public key.
    pub fn to_control(&self) -> EncryptedKeyRecord {
        EncryptedKeyRecord {
            id: self.pubkey.to_string(),
            pubkey: Some(self.pubkey.to_string()),
            ciphertext: self.ciphertext.clone(),
            encryption_context: self.encryption_context.clone(),
            kms_key_id: self.kms_key_id.clone(),
        }
    }
}

#[cfg(feature = "dynamodb")]
mod dynamodb {
    use std::collections::{BTreeMap, HashMap};

    use aws_sdk_dynamodb::primitives::Blob;
    use aws_sdk_dynamodb::types::AttributeValue;

    use super::{BlsPubkey, KeyRecord};
    use crate::secret::Base64Bytes;

    impl KeyRecord {
        /// The DynamoDB item of the record, stamped `added_at` (RFC 3339).
        pub fn to_item(&self, added_at: &str) -> HashMap<String, AttributeValue> {
            let mut item = HashMap::from([
                (
                    "pubkey".to_owned(),
                    AttributeValue::S(self.pubkey.to_string()),
                ),
                (
                    "ciphertext".to_owned(),
                    AttributeValue::B(Blob::new(self.ciphertext.0.clone())),
                ),
                ("active".to_owned(), AttributeValue::Bool(self.active)),
                (
                    "added_at".to_owned(),
                    AttributeValue::S(added_at.to_owned()),
                ),
                (
                    "encryption_context".to_owned(),
                    AttributeValue::M(
                        self.encryption_context
                            .iter()
                            .map(|(k, v)| (k.clone(), AttributeValue::S(v.clone())))
                            .collect(),
                    ),
                ),
            ]);
            if let Some(id) = &self.kms_key_id {
                item.insert("kms_key_id".to_owned(), AttributeValue::S(id.clone()));
            }
            item
        }

        /// An item → `Some(record)` if active, `None` if inactive; `Err((label, reason))` if
        /// malformed (the label is the item's pubkey as written, if any).
        pub fn from_item(
            item: &HashMap<String, AttributeValue>,
        ) -> Result<Option<KeyRecord>, (String, String)> {
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
                Some(AttributeValue::B(blob)) if !blob.as_ref().is_empty() => {
                    blob.as_ref().to_vec()
                }
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
            Ok(Some(KeyRecord {
                pubkey,
                ciphertext: Base64Bytes(ciphertext),
                active: true,
                kms_key_id,
                encryption_context: context,
            }))
        }
    }
}

/// The slashing database's login as `ensign database provision` stores it in Secrets Manager:
/// `{"username", "encrypted_password": {"ciphertext", "encryption_context", "kms_key_id"}}`.
/// ensign-host's reader also takes the plaintext form RDS generates (`"password"` instead), and
/// ignores other members, so it is lenient where this writer is exact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptedDbSecret {
    pub username: String,
    pub encrypted_password: crate::control::EncryptedBlob,
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn the_file_form_round_trips_and_refuses_unknown_fields() {
        let record = KeyRecord {
            pubkey: BlsPubkey::try_from(PK.to_owned()).unwrap(),
            ciphertext: Base64Bytes(vec![0, 1, 2]),
            active: true,
            kms_key_id: Some("arn:aws:kms:eu-west-1:111122223333:key/x".into()),
            encryption_context: BTreeMap::from([("ensign-pubkey".into(), PK.to_lowercase())]),
        };
        let text = serde_json::to_string_pretty(&record).unwrap();
        assert!(text.contains(r#""ciphertext": "AAEC""#), "{text}");
        assert_eq!(serde_json::from_str::<KeyRecord>(&text).unwrap(), record);
        let extra = text.replacen('{', r#"{"secret": 1,"#, 1);
        assert!(serde_json::from_str::<KeyRecord>(&extra).is_err());
    }

    #[cfg(feature = "dynamodb")]
    #[test]
    fn the_item_form_round_trips() {
        let record = KeyRecord {
            pubkey: BlsPubkey::try_from(PK.to_owned()).unwrap(),
            ciphertext: Base64Bytes(vec![7; 40]),
            active: true,
            kms_key_id: Some("k".into()),
            encryption_context: BTreeMap::from([("ensign-pubkey".into(), "x".into())]),
        };
        let item = record.to_item("2026-12-07T00:00:00Z");
        assert_eq!(KeyRecord::from_item(&item).unwrap(), Some(record));
    }

    #[cfg(feature = "dynamodb")]
    #[test]
    fn dynamodb_items() {
        use aws_sdk_dynamodb::primitives::Blob;
        use aws_sdk_dynamodb::types::AttributeValue;
        use std::collections::HashMap;
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
        let rec = KeyRecord::from_item(&good).unwrap().unwrap();
        assert_eq!(rec.ciphertext.0, vec![9, 9]);
        assert_eq!(rec.kms_key_id.as_deref(), Some("alias/v"));
        assert_eq!(rec.encryption_context["validator"], "7");

        let mut inactive = good.clone();
        inactive.insert("active".into(), AttributeValue::Bool(false));
        assert!(KeyRecord::from_item(&inactive).unwrap().is_none());
        let mut no_flag = good.clone();
        no_flag.remove("active");
        assert!(KeyRecord::from_item(&no_flag).unwrap().is_none());
        let mut text_blob = good.clone();
        text_blob.insert("ciphertext".into(), AttributeValue::S("AAEC".into()));
        let (label, reason) = KeyRecord::from_item(&text_blob).unwrap_err();
        assert_eq!(label, PK);
        assert!(reason.contains("binary"), "{reason}");
    }
}
