//! Control protocol messages (version [`PROTOCOL_VERSION`]).
//!
//! Each frame is one JSON object, adjacently tagged:
//! `{"type": "Init", "body": {...}}`; variants without data have no `body`
//! (`{"type": "Status"}`). Every struct refuses unknown fields, so a typo or a
//! message of a newer protocol is an error, not silently ignored data.
//!
//! Requests (host → enclave): [`Request`]. Replies (enclave → host):
//! [`Response`], one per request, in order.
//!
//! # Versions
//!
//! [`PROTOCOL_VERSION`] changes only for changes an older peer would
//! misread (a field changing meaning, a new required field). Additions that
//! are optional and sent only when used keep the version: because every
//! struct and enum refuses what it does not know, an older peer answers them
//! with a `MalformedMessage` naming the field or variant — never by silently
//! dropping them — and everything else between the two keeps working.
//!
//! Version 1 was extended this way with the slashing database's credentials
//! (ensign-host reads them from Secrets Manager, `--db-secret-arn`):
//! [`InitRequest::database`] (omitted when the host has none) and
//! [`Request::RefreshDatabaseCredentials`] / [`Response::DatabaseCredentialsRefreshed`]
//! (sent only when the secret changed). A separate request rather than a
//! wider `RefreshCredentials`: that one's body is [`AwsCredentials`] itself,
//! and the two rotate independently (instance-role credentials every few
//! hours, the database password when an operator rotates the secret).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::secret::{Base64Bytes, SecretString};

/// The protocol version this crate speaks. A peer announcing another one is
/// refused ([`ErrorCode::UnsupportedVersion`]).
pub const PROTOCOL_VERSION: u32 = 1;

/// A request from the host. The first request on every connection must be
/// [`Request::Hello`].
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", content = "body", deny_unknown_fields)]
pub enum Request {
    Hello(Hello),
    Status,
    Init(InitRequest),
    AddKeys(AddKeysRequest),
    RemoveKeys(RemoveKeysRequest),
    RefreshCredentials(AwsCredentials),
    /// New credentials for the slashing-protection database (the secret was
    /// rotated); only on an initialised enclave.
    RefreshDatabaseCredentials(DatabaseCredentials),
}

impl Request {
    /// The variant name, for logs (never the contents).
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Hello(_) => "Hello",
            Request::Status => "Status",
            Request::Init(_) => "Init",
            Request::AddKeys(_) => "AddKeys",
            Request::RemoveKeys(_) => "RemoveKeys",
            Request::RefreshCredentials(_) => "RefreshCredentials",
            Request::RefreshDatabaseCredentials(_) => "RefreshDatabaseCredentials",
        }
    }
}

/// A reply from the enclave.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", content = "body", deny_unknown_fields)]
pub enum Response {
    Hello(Hello),
    Status(StatusReply),
    Initialised(KeysReport),
    KeysAdded(KeysReport),
    KeysRemoved(RemoveReport),
    CredentialsRefreshed,
    DatabaseCredentialsRefreshed,
    Error(ErrorReply),
}

/// The version handshake, both ways.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    pub protocol_version: u32,
}

/// Where the enclave is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum EnclaveState {
    /// Started, no `Init` accepted yet.
    WaitingForInit,
    /// An `Init` is being processed.
    Initialising,
    /// Initialised; serving.
    Ready,
    /// The last `Init` failed; a new `Init` may be sent.
    Failed { reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusReply {
    pub state: EnclaveState,
    pub protocol_version: u32,
}

/// AWS credentials for the enclave's KMS calls (the parent's instance role,
/// from IMDS). Only `access_key_id` appears in `Debug`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsCredentials {
    pub access_key_id: String,
    pub secret_access_key: SecretString,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_token: Option<SecretString>,
    /// Expiry, seconds since the Unix epoch (IMDS gives RFC 3339; the host
    /// converts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration: Option<u64>,
}

/// Credentials for the slashing-protection database (PostgreSQL), as the
/// host reads them from Secrets Manager. The enclave applies them to the
/// database URL of its command line (which then need name neither user nor
/// password). Only `username` appears in `Debug`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseCredentials {
    pub username: String,
    pub password: DatabasePassword,
}

/// The database password: a JSON string is the password itself (which the host then knows:
/// development only), a JSON object a KMS ciphertext that only the attested image can decrypt
/// (`ensign database provision` makes it). Added to version 1 compatibly: the string form is
/// the earlier one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DatabasePassword {
    Plain(SecretString),
    Encrypted(Box<EncryptedBlob>),
}

impl DatabasePassword {
    /// The password, if it came in clear.
    pub fn in_clear(&self) -> Option<&SecretString> {
        match self {
            DatabasePassword::Plain(p) => Some(p),
            DatabasePassword::Encrypted(_) => None,
        }
    }
}

/// An AWS region name such as `eu-west-1`: lowercase letters, digits and
/// dashes, 1–32 characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AwsRegion(String);

impl AwsRegion {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for AwsRegion {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let ok = (1..=32).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok {
            Ok(Self(s))
        } else {
            Err("region must be 1-32 characters of a-z, 0-9 and -".into())
        }
    }
}

impl From<AwsRegion> for String {
    fn from(r: AwsRegion) -> String {
        r.0
    }
}

impl fmt::Display for AwsRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An endpoint URL override for KMS: `http://` or `https://`, no spaces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EndpointUrl(String);

impl EndpointUrl {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for EndpointUrl {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let rest = s
            .strip_prefix("https://")
            .or_else(|| s.strip_prefix("http://"));
        match rest {
            Some(r) if !r.is_empty() && s.len() <= 2048 && !s.bytes().any(|b| b <= b' ') => {
                Ok(Self(s))
            }
            _ => Err("endpoint URL must be http:// or https:// followed by a host".into()),
        }
    }
}

impl From<EndpointUrl> for String {
    fn from(u: EndpointUrl) -> String {
        u.0
    }
}

/// One KMS-encrypted validator key. What the plaintext means (a raw BLS
/// secret, an EIP-2335 keystore with its password) is the enclave
/// application's business, not this protocol's.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptedKeyRecord {
    /// The host's name for the record (for replies and logs).
    pub id: String,
    /// The BLS public key, `0x…`, if the host knows it (cross-checked by the
    /// enclave after decryption).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pubkey: Option<String>,
    /// The KMS `CiphertextBlob`, base64.
    pub ciphertext: Base64Bytes,
    /// The KMS `EncryptionContext` the ciphertext was made with.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub encryption_context: BTreeMap<String, String>,
    /// The KMS key to insist on (`KeyId` in `Decrypt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key_id: Option<String>,
}

/// A KMS-encrypted blob that is not a validator key (the TLS key, the database password).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptedBlob {
    pub ciphertext: Base64Bytes,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub encryption_context: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitRequest {
    pub credentials: AwsCredentials,
    pub region: AwsRegion,
    /// KMS endpoint override (tests, VPC endpoints); the regional default
    /// otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_endpoint: Option<EndpointUrl>,
    pub keys: Vec<EncryptedKeyRecord>,
    /// The TLS private key for the signer's HTTPS listener, KMS-encrypted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<EncryptedBlob>,
    /// Credentials for the slashing-protection database; `None`: the
    /// enclave uses its database URL as configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<DatabaseCredentials>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddKeysRequest {
    pub keys: Vec<EncryptedKeyRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveKeysRequest {
    /// BLS public keys, `0x…`.
    pub pubkeys: Vec<String>,
}

/// The outcome of `Init` / `AddKeys`: one key failing does not fail the rest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysReport {
    /// Ids of the records now loaded.
    pub loaded: Vec<String>,
    pub failed: Vec<KeyFailure>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFailure {
    pub id: String,
    /// Why; never contains secret material.
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveReport {
    pub removed: Vec<String>,
    pub not_found: Vec<String>,
}

/// A refused request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorReply {
    pub code: ErrorCode,
    pub message: String,
}

/// What kind of refusal. Protocol errors (the first five) close the
/// connection after the reply; the others leave it open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// `Hello` named another protocol version.
    UnsupportedVersion,
    /// The first request was not `Hello`.
    HandshakeRequired,
    /// The frame's length exceeds the cap.
    FrameTooLarge,
    /// The frame is not a valid request.
    MalformedMessage,
    /// The server is at its connection cap.
    Busy,
    /// `Init` on an initialised enclave.
    AlreadyInitialised,
    /// `Init` while another `Init` runs.
    InitialisationInProgress,
    /// A request that needs an initialised enclave.
    NotReady,
    /// The enclave application refused or failed the request.
    HandlerFailed,
    /// The server could not finish the request (e.g. the handler panicked).
    Internal,
}

impl ErrorCode {
    /// Whether the server closes the connection after this error.
    pub fn closes_connection(self) -> bool {
        matches!(
            self,
            ErrorCode::UnsupportedVersion
                | ErrorCode::HandshakeRequired
                | ErrorCode::FrameTooLarge
                | ErrorCode::MalformedMessage
                | ErrorCode::Busy
        )
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWORD: &str = "p@ss:w/rd%?#&=\"quoted\" ünïcode";

    fn database() -> DatabaseCredentials {
        DatabaseCredentials {
            username: "ensign_signer".into(),
            password: DatabasePassword::Plain(SecretString::new(PASSWORD)),
        }
    }

    fn encrypted() -> DatabaseCredentials {
        DatabaseCredentials {
            username: "ensign_signer".into(),
            password: DatabasePassword::Encrypted(Box::new(EncryptedBlob {
                ciphertext: Base64Bytes(vec![1, 2, 3]),
                encryption_context: BTreeMap::from([("k".to_string(), "v".to_string())]),
                kms_key_id: Some("arn:aws:kms:eu-west-1:1:key/x".into()),
            })),
        }
    }

    #[test]
    fn a_database_password_is_a_string_or_a_kms_ciphertext() {
        let plain = serde_json::to_value(database()).unwrap();
        assert_eq!(plain["password"], PASSWORD);
        let blob = serde_json::to_value(encrypted()).unwrap();
        assert_eq!(blob["password"]["ciphertext"], "AQID", "{blob}");
        assert_eq!(
            serde_json::from_value::<DatabaseCredentials>(blob).unwrap(),
            encrypted()
        );
        for bad in [
            serde_json::json!({"username": "u", "password": 7}),
            serde_json::json!({"username": "u", "password": {"ciphertext": "AQID", "x": 1}}),
            serde_json::json!({"username": "u", "password": {}}),
        ] {
            assert!(
                serde_json::from_value::<DatabaseCredentials>(bad.clone()).is_err(),
                "{bad}"
            );
        }
    }

    fn init(database: Option<DatabaseCredentials>) -> InitRequest {
        InitRequest {
            credentials: AwsCredentials {
                access_key_id: "AKIDEXAMPLE".into(),
                secret_access_key: SecretString::new("aws-secret"),
                session_token: None,
                expiration: None,
            },
            region: AwsRegion::try_from("eu-west-1".to_owned()).unwrap(),
            kms_endpoint: None,
            keys: vec![],
            tls: None,
            database,
        }
    }

    #[test]
    fn init_carries_database_credentials_both_ways() {
        let json = serde_json::to_string(&Request::Init(init(Some(database())))).unwrap();
        let back: Request = serde_json::from_str(&json).unwrap();
        let Request::Init(back) = back else {
            panic!("not Init: {json}")
        };
        assert_eq!(back.database, Some(database()));
        let DatabasePassword::Plain(p) = back.database.unwrap().password else {
            panic!("not plain")
        };
        assert_eq!(p.expose(), PASSWORD);
    }

    #[test]
    fn init_without_database_credentials_omits_the_field() {
        // What an older host sends, and what a host without --db-secret-arn sends: an older
        // enclave still accepts it.
        let json = serde_json::to_value(Request::Init(init(None))).unwrap();
        assert!(json["body"].get("database").is_none(), "{json}");
        let back: Request = serde_json::from_value(json).unwrap();
        assert!(matches!(
            back,
            Request::Init(InitRequest { database: None, .. })
        ));
    }

    #[test]
    fn refresh_database_credentials_round_trip_and_strictness() {
        let json = serde_json::to_string(&Request::RefreshDatabaseCredentials(database())).unwrap();
        assert!(
            json.starts_with(r#"{"type":"RefreshDatabaseCredentials","body":{"#),
            "{json}"
        );
        match serde_json::from_str::<Request>(&json).unwrap() {
            Request::RefreshDatabaseCredentials(c) => assert_eq!(c, database()),
            other => panic!("{other:?}"),
        }
        let reply = serde_json::to_string(&Response::DatabaseCredentialsRefreshed).unwrap();
        assert_eq!(reply, r#"{"type":"DatabaseCredentialsRefreshed"}"#);
        assert!(matches!(
            serde_json::from_str::<Response>(&reply).unwrap(),
            Response::DatabaseCredentialsRefreshed
        ));
        // Unknown fields are refused, in the credentials and in Init's.
        let extra = r#"{"type":"RefreshDatabaseCredentials","body":{"username":"u","password":"p","host":"db"}}"#;
        assert!(serde_json::from_str::<Request>(extra).is_err());
        let missing = r#"{"type":"RefreshDatabaseCredentials","body":{"username":"u"}}"#;
        assert!(serde_json::from_str::<Request>(missing).is_err());
        let mut json = serde_json::to_value(Request::Init(init(Some(database())))).unwrap();
        json["body"]["database"]["port"] = 5432.into();
        assert!(serde_json::from_value::<Request>(json).is_err());
    }

    #[test]
    fn debug_never_shows_the_database_password() {
        let shown = [
            format!("{:?}", database()),
            format!("{:?}", Request::RefreshDatabaseCredentials(database())),
            format!("{:?}", init(Some(database()))),
            format!("{:#?}", Request::Init(init(Some(database())))),
        ];
        for s in shown {
            assert!(!s.contains("p@ss"), "{s}");
            assert!(
                s.contains("ensign_signer") && s.contains("<redacted>"),
                "{s}"
            );
        }
        assert_eq!(
            Request::RefreshDatabaseCredentials(database()).kind(),
            "RefreshDatabaseCredentials"
        );
    }
}
