//! The attestation document payload (the CBOR map inside the COSE_Sign1),
//! decoded strictly.

use std::collections::BTreeMap;

use ciborium::value::{Integer, Value};

use super::AttestationError;

/// Largest `public_key`, `user_data` or `nonce` (the NSM API's limit; its
/// CDDL allows 1024 bytes for each).
pub const MAX_OPTIONAL_FIELD_LEN: usize = 1024;
/// Largest certificate in `certificate` / `cabundle`.
const MAX_CERT_LEN: usize = 1024;
/// PCR indexes are 0..=31.
const MAX_PCRS: usize = 32;

/// The payload of an attestation document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttestationDoc {
    pub module_id: String,
    /// Always `"SHA384"` in documents this crate accepts.
    pub digest: String,
    /// Milliseconds since the Unix epoch, when the document was made.
    pub timestamp: u64,
    /// PCR index → value (48 bytes for SHA-384).
    pub pcrs: BTreeMap<u8, Vec<u8>>,
    /// DER leaf certificate (the document signer).
    pub certificate: Vec<u8>,
    /// DER certificates, root first, leaf's issuer last.
    pub cabundle: Vec<Vec<u8>>,
    pub public_key: Option<Vec<u8>>,
    pub user_data: Option<Vec<u8>>,
    pub nonce: Option<Vec<u8>>,
}

fn field(field: &'static str, problem: impl Into<String>) -> AttestationError {
    AttestationError::Field {
        field,
        problem: problem.into(),
    }
}

impl AttestationDoc {
    /// Encode as the NSM does: a CBOR map with text keys; absent optional
    /// fields are `null`.
    pub fn to_cbor(&self) -> Vec<u8> {
        let opt = |v: &Option<Vec<u8>>| v.clone().map_or(Value::Null, Value::Bytes);
        let map = Value::Map(vec![
            (
                Value::Text("module_id".into()),
                Value::Text(self.module_id.clone()),
            ),
            (
                Value::Text("digest".into()),
                Value::Text(self.digest.clone()),
            ),
            (
                Value::Text("timestamp".into()),
                Value::Integer(self.timestamp.into()),
            ),
            (
                Value::Text("pcrs".into()),
                Value::Map(
                    self.pcrs
                        .iter()
                        .map(|(i, v)| (Value::Integer((*i).into()), Value::Bytes(v.clone())))
                        .collect(),
                ),
            ),
            (
                Value::Text("certificate".into()),
                Value::Bytes(self.certificate.clone()),
            ),
            (
                Value::Text("cabundle".into()),
                Value::Array(self.cabundle.iter().cloned().map(Value::Bytes).collect()),
            ),
            (Value::Text("public_key".into()), opt(&self.public_key)),
            (Value::Text("user_data".into()), opt(&self.user_data)),
            (Value::Text("nonce".into()), opt(&self.nonce)),
        ]);
        let mut out = Vec::new();
        ciborium::ser::into_writer(&map, &mut out).expect("writing CBOR to a Vec cannot fail");
        out
    }

    /// Decode and check every field's type and size
    /// (attestation_process.md §3.2 "syntactical validation"). Unknown and
    /// duplicate keys are refused.
    pub fn from_cbor(bytes: &[u8]) -> Result<Self, AttestationError> {
        let value: Value = ciborium::de::from_reader(bytes)
            .map_err(|e| AttestationError::Decode(format!("payload: {e}")))?;
        let Value::Map(entries) = value else {
            return Err(AttestationError::Decode("payload is not a CBOR map".into()));
        };
        let mut module_id = None;
        let mut digest = None;
        let mut timestamp = None;
        let mut pcrs = None;
        let mut certificate = None;
        let mut cabundle = None;
        let mut public_key = None;
        let mut user_data = None;
        let mut nonce = None;
        for (key, value) in entries {
            let Value::Text(key) = key else {
                return Err(AttestationError::Decode("payload key is not text".into()));
            };
            let slot_taken = match key.as_str() {
                "module_id" => module_id.replace(value).is_some(),
                "digest" => digest.replace(value).is_some(),
                "timestamp" => timestamp.replace(value).is_some(),
                "pcrs" => pcrs.replace(value).is_some(),
                "certificate" => certificate.replace(value).is_some(),
                "cabundle" => cabundle.replace(value).is_some(),
                "public_key" => public_key.replace(value).is_some(),
                "user_data" => user_data.replace(value).is_some(),
                "nonce" => nonce.replace(value).is_some(),
                _ => {
                    return Err(AttestationError::Decode(format!(
                        "unknown payload key `{}`",
                        key.chars().take(32).collect::<String>()
                    )))
                }
            };
            if slot_taken {
                return Err(AttestationError::Decode(format!("duplicate key `{key}`")));
            }
        }

        let module_id = match module_id {
            Some(Value::Text(t)) if !t.is_empty() => t,
            Some(_) => return Err(field("module_id", "must be non-empty text")),
            None => return Err(field("module_id", "missing")),
        };
        let digest = match digest {
            Some(Value::Text(t)) if t == "SHA384" => t,
            Some(_) => return Err(field("digest", "must be \"SHA384\"")),
            None => return Err(field("digest", "missing")),
        };
        let timestamp = match timestamp {
            Some(Value::Integer(i)) => u64::try_from(i)
                .ok()
                .filter(|&t| t > 0)
                .ok_or_else(|| field("timestamp", "must be a positive 64-bit integer"))?,
            Some(_) => return Err(field("timestamp", "must be an integer")),
            None => return Err(field("timestamp", "missing")),
        };
        let pcrs = match pcrs {
            Some(Value::Map(entries)) => {
                if entries.is_empty() || entries.len() > MAX_PCRS {
                    return Err(field("pcrs", "must hold 1 to 32 entries"));
                }
                let mut out = BTreeMap::new();
                for (k, v) in entries {
                    let index = match k {
                        Value::Integer(i) => pcr_index(i)?,
                        _ => return Err(field("pcrs", "index is not an integer")),
                    };
                    let value = match v {
                        Value::Bytes(b) if matches!(b.len(), 32 | 48 | 64) => b,
                        _ => return Err(field("pcrs", "value must be 32, 48 or 64 bytes")),
                    };
                    if out.insert(index, value).is_some() {
                        return Err(field("pcrs", "duplicate index"));
                    }
                }
                out
            }
            Some(_) => return Err(field("pcrs", "must be a map")),
            None => return Err(field("pcrs", "missing")),
        };
        let certificate = match certificate {
            Some(Value::Bytes(b)) if (1..=MAX_CERT_LEN).contains(&b.len()) => b,
            Some(_) => return Err(field("certificate", "must be 1 to 1024 bytes")),
            None => return Err(field("certificate", "missing")),
        };
        let cabundle = match cabundle {
            Some(Value::Array(items)) if !items.is_empty() => items
                .into_iter()
                .map(|item| match item {
                    Value::Bytes(b) if (1..=MAX_CERT_LEN).contains(&b.len()) => Ok(b),
                    _ => Err(field("cabundle", "each entry must be 1 to 1024 bytes")),
                })
                .collect::<Result<Vec<_>, _>>()?,
            Some(_) => return Err(field("cabundle", "must be a non-empty array")),
            None => return Err(field("cabundle", "missing")),
        };
        Ok(Self {
            module_id,
            digest,
            timestamp,
            pcrs,
            certificate,
            cabundle,
            public_key: optional_bytes("public_key", public_key, 1)?,
            user_data: optional_bytes("user_data", user_data, 0)?,
            nonce: optional_bytes("nonce", nonce, 0)?,
        })
    }
}

fn pcr_index(i: Integer) -> Result<u8, AttestationError> {
    u8::try_from(i)
        .ok()
        .filter(|&i| usize::from(i) < MAX_PCRS)
        .ok_or_else(|| field("pcrs", "index must be 0 to 31"))
}

fn optional_bytes(
    name: &'static str,
    value: Option<Value>,
    min: usize,
) -> Result<Option<Vec<u8>>, AttestationError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bytes(b)) if (min..=MAX_OPTIONAL_FIELD_LEN).contains(&b.len()) => Ok(Some(b)),
        Some(_) => Err(field(
            name,
            format!("must be null or {min} to {MAX_OPTIONAL_FIELD_LEN} bytes"),
        )),
    }
}
