//! Zeroizing secret holders with redacted `Debug`.
//!
//! Control messages carry AWS credentials; decrypted KMS plaintexts are key
//! material. Both live in these types so that they are wiped when dropped and
//! can never be printed by a `{:?}` in a log line or an error.
//!
//! Why not `secrecy`'s `SecretString` / `SecretBox`: these values must also be
//! *serialised* (they travel parent → enclave in control messages), which
//! `secrecy` deliberately refuses for strings and byte boxes, and tests compare
//! them (`PartialEq`, which it omits). Wrapping `secrecy` would add a layer
//! around the same `zeroize` these types use directly, for the same guarantees.

use std::fmt;

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroizing;

/// A secret text value (an AWS secret access key, a session token).
///
/// Serialised as a plain JSON string; `Debug` prints `SecretString(<redacted>)`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(Zeroizing<String>);

impl SecretString {
    pub fn new(value: impl Into<String>) -> Self {
        Self(Zeroizing::new(value.into()))
    }

    /// The secret itself. Callers must not log or format it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretString(<redacted>)")
    }
}

impl Serialize for SecretString {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SecretString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // `String::deserialize` allocates exactly once for the value; it is
        // moved (not copied) into the zeroizing wrapper.
        Ok(Self(Zeroizing::new(String::deserialize(d)?)))
    }
}

/// Secret bytes (a decrypted KMS plaintext, a private key).
///
/// Serialised as standard base64 (RFC 4648 §4) when it has to travel, which
/// this crate only does parent → enclave.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    pub fn new(value: Vec<u8>) -> Self {
        Self(Zeroizing::new(value))
    }

    /// The secret itself. Callers must not log or format it.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The zeroizing buffer, for callers that keep the secret.
    pub fn into_zeroizing(self) -> Zeroizing<Vec<u8>> {
        self.0
    }
}

impl From<Zeroizing<Vec<u8>>> for SecretBytes {
    fn from(value: Zeroizing<Vec<u8>>) -> Self {
        Self(value)
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes(<redacted {} bytes>)", self.0.len())
    }
}

impl Serialize for SecretBytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let text = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(&*self.0));
        s.serialize_str(&text)
    }
}

impl<'de> Deserialize<'de> for SecretBytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = Zeroizing::new(String::deserialize(d)?);
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map(|v| Self(Zeroizing::new(v)))
            .map_err(|_| serde::de::Error::custom("invalid base64 in secret value"))
    }
}

/// Non-secret bytes carried as standard base64 in JSON (KMS ciphertexts,
/// attestation documents).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Base64Bytes(pub Vec<u8>);

impl fmt::Debug for Base64Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Base64Bytes({} bytes)", self.0.len())
    }
}

impl Serialize for Base64Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Base64Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map(Self)
            .map_err(|_| serde::de::Error::custom("invalid base64"))
    }
}
