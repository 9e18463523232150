//! The slashing database's credentials, from Secrets Manager
//! (`--db-secret-arn`), for the enclave.
//!
//! The secret is JSON as RDS and Aurora generate it (`{"username": …,
//! "password": …, "engine": …, "host": …, …}`): `username` and `password`
//! must be strings (the username not empty); other members are ignored. Or,
//! as `ensign database provision` writes it (issue 15: the parent instance must
//! not know the password), `{"username": …, "encrypted_password":
//! {"ciphertext": base64, "kms_key_id": …, "encryption_context": {…}}}`: a KMS
//! ciphertext that only the attested enclave image can decrypt, forwarded as is. The
//! host reads it with the same credentials as everything else (the instance
//! role), sends it in `Init`, and re-reads it at every poll and on `SIGHUP`,
//! delivering a changed value with `RefreshDatabaseCredentials`.
//!
//! Errors name the secret's ARN and what is wrong with its shape, never a
//! value from it: the JSON is parsed without serde's messages (which quote
//! the offending value), and the password goes straight into a
//! [`SecretString`].

use std::fmt;

use aws_sdk_kms::config::SharedCredentialsProvider;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use zeroize::Zeroizing;

use enclave_bridge::control::{AwsRegion, DatabaseCredentials, DatabasePassword, EncryptedBlob};
use enclave_bridge::secret::SecretString;

/// Why the credentials could not be had. Never carries a value of the secret.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DbSecretError {
    #[error("cannot read the database secret {arn} from Secrets Manager: {message}")]
    Fetch { arn: String, message: String },
    #[error("the database secret {arn} has no SecretString (a binary secret is not supported)")]
    NotText { arn: String },
    #[error(
        "the database secret {arn} is not shaped as RDS/Aurora generate it (a JSON object with \
         string members \"username\" and \"password\"): {what}"
    )]
    Shape { arn: String, what: String },
}

/// Reads one secret.
#[derive(Debug, Clone)]
pub struct DbSecretSource {
    client: aws_sdk_secretsmanager::Client,
    arn: String,
}

/// A Secrets Manager client with the host's HTTPS client and credentials
/// (as [`super::keys::dynamodb_client`]).
pub fn secrets_manager_client(
    region: &AwsRegion,
    credentials: SharedCredentialsProvider,
    endpoint_url: Option<&str>,
) -> aws_sdk_secretsmanager::Client {
    super::aws_client!(aws_sdk_secretsmanager, region, credentials, endpoint_url)
}

impl DbSecretSource {
    pub fn new(client: aws_sdk_secretsmanager::Client, arn: String) -> Self {
        Self { client, arn }
    }

    pub fn arn(&self) -> &str {
        &self.arn
    }

    /// `GetSecretValue` (current version), parsed.
    pub async fn fetch(&self) -> Result<DatabaseCredentials, DbSecretError> {
        let out = self
            .client
            .get_secret_value()
            .secret_id(&self.arn)
            .send()
            .await
            .map_err(|e| DbSecretError::Fetch {
                arn: self.arn.clone(),
                // Display only (the Debug form would carry the raw response body).
                message: super::error_chain(&e),
            })?;
        let text = Zeroizing::new(out.secret_string.ok_or_else(|| DbSecretError::NotText {
            arn: self.arn.clone(),
        })?);
        parse(&self.arn, &text)
    }
}

/// Parses an RDS/Aurora-style secret string.
pub fn parse(arn: &str, text: &str) -> Result<DatabaseCredentials, DbSecretError> {
    let shape = |what: String| DbSecretError::Shape {
        arn: arn.to_owned(),
        what,
    };
    let secret: RdsSecret = serde_json::from_str(text).map_err(|e| {
        // Position and category only: serde's own message may quote a value.
        let what = match e.classify() {
            serde_json::error::Category::Data => "not a JSON object",
            serde_json::error::Category::Eof => "truncated JSON",
            _ => "not valid JSON",
        };
        shape(format!("{what} (line {} column {})", e.line(), e.column()))
    })?;
    let username = match secret.username {
        Some(Member::Text(u)) if !u.is_empty() => u.to_string(),
        Some(Member::Text(_)) => return Err(shape("\"username\" is empty".into())),
        Some(Member::Other(kind)) => {
            return Err(shape(format!("\"username\" is {kind}, not a string")))
        }
        None => return Err(shape("no \"username\"".into())),
    };
    let password = match (secret.password, secret.encrypted_password) {
        (Some(_), Some(_)) => {
            return Err(shape(
                "both \"password\" and \"encrypted_password\" (give one)".into(),
            ))
        }
        (Some(Member::Text(mut p)), None) => {
            DatabasePassword::Plain(SecretString::new(std::mem::take(&mut *p)))
        }
        (Some(Member::Other(kind)), None) => {
            return Err(shape(format!("\"password\" is {kind}, not a string")))
        }
        // A ciphertext is not secret: serde's own message may quote it.
        (None, Some(blob)) => DatabasePassword::Encrypted(Box::new(
            serde_json::from_value::<EncryptedBlob>(blob)
                .map_err(|e| shape(format!("\"encrypted_password\": {e}")))?,
        )),
        (None, None) => return Err(shape("no \"password\" (or \"encrypted_password\")".into())),
    };
    Ok(DatabaseCredentials { username, password })
}

/// The members used; the others (`engine`, `host`, `port`, `dbname`, …) are
/// ignored. Only a JSON object is accepted (a derived `Deserialize` would also
/// take an array, positionally).
struct RdsSecret {
    username: Option<Member>,
    password: Option<Member>,
    encrypted_password: Option<serde_json::Value>,
}

impl<'de> Deserialize<'de> for RdsSecret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(RdsSecretVisitor)
    }
}

struct RdsSecretVisitor;

impl<'de> Visitor<'de> for RdsSecretVisitor {
    type Value = RdsSecret;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RdsSecret, A::Error> {
        let mut secret = RdsSecret {
            username: None,
            password: None,
            encrypted_password: None,
        };
        while let Some(name) = map.next_key::<String>()? {
            match name.as_str() {
                "username" => secret.username = Some(map.next_value()?),
                "password" => secret.password = Some(map.next_value()?),
                "encrypted_password" => secret.encrypted_password = Some(map.next_value()?),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(secret)
    }
}

/// A member's value: its text, or what kind of value it is instead (never the
/// value itself).
enum Member {
    Text(Zeroizing<String>),
    Other(&'static str),
}

impl<'de> Deserialize<'de> for Member {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(MemberVisitor)
    }
}

struct MemberVisitor;

impl<'de> Visitor<'de> for MemberVisitor {
    type Value = Member;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Member, E> {
        Ok(Member::Text(Zeroizing::new(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Member, E> {
        Ok(Member::Text(Zeroizing::new(v)))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Member, E> {
        Ok(Member::Other("a boolean"))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Member, E> {
        Ok(Member::Other("a number"))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Member, E> {
        Ok(Member::Other("a number"))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Member, E> {
        Ok(Member::Other("a number"))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Member, E> {
        Ok(Member::Other("null"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Member, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Member::Other("an array"))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Member, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Member::Other("an object"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARN: &str =
        "arn:aws:secretsmanager:eu-west-1:111122223333:secret:ensign/slashing-db-AbCdEf";

    #[test]
    fn an_rds_generated_secret_parses() {
        let text = r#"{"dbClusterIdentifier":"ensign-slashing","password":"p@ss:w/rd%?#","dbname":"ensign","engine":"postgres","port":5432,"host":"db.internal","username":"ensign"}"#;
        let c = parse(ARN, text).unwrap();
        assert_eq!(c.username, "ensign");
        let DatabasePassword::Plain(p) = c.password else {
            panic!("not plain")
        };
        assert_eq!(p.expose(), "p@ss:w/rd%?#");
    }

    #[test]
    fn a_provisioned_secret_carries_a_ciphertext_forwarded_as_is() {
        let text = r#"{"username":"ensign_signer","encrypted_password":{"ciphertext":"AQID","kms_key_id":"arn:k","encryption_context":{"ensign-purpose":"slashing-db-password"}}}"#;
        let c = parse(ARN, text).unwrap();
        assert_eq!(c.username, "ensign_signer");
        let DatabasePassword::Encrypted(blob) = c.password else {
            panic!("not encrypted")
        };
        assert_eq!(blob.ciphertext.0, vec![1, 2, 3]);
        assert_eq!(blob.kms_key_id.as_deref(), Some("arn:k"));
        let both =
            r#"{"username":"u","password":"hunter2","encrypted_password":{"ciphertext":"AQID"}}"#;
        let e = parse(ARN, both).unwrap_err().to_string();
        assert!(e.contains("give one") && !e.contains("hunter2"), "{e}");
        let odd = r#"{"username":"u","encrypted_password":{"ciphertext":"AQID","extra":1}}"#;
        let e = parse(ARN, odd).unwrap_err().to_string();
        assert!(e.contains("encrypted_password"), "{e}");
    }

    /// What `ensign database provision` writes (the one writer type) is what this reads.
    #[test]
    fn the_provision_commands_record_reads_back() {
        use enclave_bridge::records::EncryptedDbSecret;
        let written = EncryptedDbSecret {
            username: "ensign_signer".into(),
            encrypted_password: EncryptedBlob {
                ciphertext: enclave_bridge::secret::Base64Bytes(vec![7, 8, 9]),
                encryption_context: [("ensign-purpose".to_owned(), "p".to_owned())].into(),
                kms_key_id: Some("arn:aws:kms:eu-west-1:1:key/k".into()),
            },
        };
        let c = parse(ARN, &serde_json::to_string(&written).unwrap()).unwrap();
        assert_eq!(c.username, written.username);
        let DatabasePassword::Encrypted(blob) = c.password else {
            panic!("not encrypted")
        };
        assert_eq!(*blob, written.encrypted_password);
    }

    #[test]
    fn other_shapes_are_refused_naming_the_arn_never_a_value() {
        let cases = [
            (r#""hunter2-plain-string""#, "not a JSON object"),
            (r#"{"username":"u","password":"hunter2"#, "truncated JSON"),
            (r#"{"username":"u","password":hunter2}"#, "not valid JSON"),
            (r#"{"password":"hunter2"}"#, "no \"username\""),
            (
                r#"{"username":"","password":"hunter2"}"#,
                "\"username\" is empty",
            ),
            (
                r#"{"username":"u"}"#,
                "no \"password\" (or \"encrypted_password\")",
            ),
            (
                r#"{"username":"u","password":12345678}"#,
                "\"password\" is a number",
            ),
            (
                r#"{"username":"u","password":["hunter2"]}"#,
                "\"password\" is an array",
            ),
            (
                r#"{"username":{"hunter2":"hunter2"},"password":"x"}"#,
                "\"username\" is an object",
            ),
            (r#"["hunter2"]"#, "not a JSON object"),
            (r#"["u", "hunter2"]"#, "not a JSON object"),
        ];
        for (text, want) in cases {
            let e = parse(ARN, text).unwrap_err().to_string();
            assert!(e.contains(ARN) && e.contains(want), "{text}: {e}");
            for leaked in ["hunter2", "12345678"] {
                assert!(!e.contains(leaked), "{text}: {e}");
            }
        }
    }
}
