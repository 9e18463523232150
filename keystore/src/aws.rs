//! AWS key sources (cargo feature `aws`, on by default): AWS Secrets
//! Manager secrets holding raw BLS keys, and BLS keys (or keystore
//! passwords) encrypted with AWS KMS.
//!
//! # Key configuration types
//!
//! These are YAML documents in the directory read by
//! [`crate::load_key_configs`], next to `file-raw` and `file-keystore`.
//!
//! `aws-secret` is Web3Signer's type: a Secrets Manager secret whose value
//! holds one or more hex BLS secret keys, one per line (`0x` optional,
//! blank lines and surrounding whitespace ignored):
//!
//! ```yaml
//! type: aws-secret
//! keyType: BLS
//! authenticationMode: SPECIFIED     # or ENVIRONMENT (the default AWS chain)
//! region: us-east-1                 # required for SPECIFIED
//! accessKeyId: AKIA...              # SPECIFIED only
//! secretAccessKey: ...              # SPECIFIED only
//! secretName: validators/batch-1
//! endpointOverride: http://127.0.0.1:4566   # optional (LocalStack, moto, VPC endpoint)
//! ```
//!
//! `aws-kms-encrypted` is ours (Web3Signer's `aws-kms` names SECP256K1
//! keys held *in* KMS, which is something else): a BLS secret encrypted with
//! KMS `Encrypt`; loading calls KMS `Decrypt`.
//!
//! ```yaml
//! type: aws-kms-encrypted
//! ciphertext: AQICAHh...            # base64 of the CiphertextBlob
//! # ciphertextFile: key.kms         # instead: raw or base64 blob, relative to this file
//! encryptionContext:                # optional; must match the one used to encrypt
//!   validator: "42"
//! kmsKeyId: alias/validators        # optional; Decrypt checks the blob was made by it
//! region: us-east-1
//! authenticationMode: ENVIRONMENT   # or SPECIFIED with accessKeyId / secretAccessKey
//! endpointOverride: http://127.0.0.1:4566   # optional
//! ---
//! type: aws-kms-encrypted           # variant: an EIP-2335 keystore whose
//! keystoreFile: key.json            # password is KMS-encrypted
//! passwordCiphertext: AQICAHh...    # or passwordCiphertextFile
//! region: us-east-1
//! ```
//!
//! The decrypted plaintext of `ciphertext` must be the 32-byte secret, or
//! those 32 bytes as hex text (64 hex digits, `0x` and one trailing newline
//! allowed). A decrypted password has one trailing line ending removed,
//! like a password file.
//!
//! `authenticationMode` defaults to `SPECIFIED`, as in Web3Signer.
//! `ENVIRONMENT` uses the standard AWS chain: `AWS_ACCESS_KEY_ID` /
//! `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`, the shared profile
//! (`AWS_PROFILE`, `~/.aws/credentials`, `credential_process`), web
//! identity (EKS), the ECS container endpoint and EC2 instance metadata;
//! the region then also comes from `AWS_REGION` or the profile if not
//! given. (AWS SSO profiles are not supported: that needs the SDK's `sso`
//! feature.)
//!
//! # Bulk loading
//!
//! [`load_aws_secrets_bulk`] is Web3Signer's `--aws-secrets-*` mode: every
//! secret returned by `ListSecrets` (optionally filtered by name prefix,
//! tag key and tag value) is read and parsed as above.
//!
//! # Runtime
//!
//! The loaders are synchronous: each load call runs its AWS requests on one
//! small current-thread tokio runtime of its own, on a thread of its own,
//! and blocks until they finish. Call them from a blocking thread (e.g.
//! `tokio::task::spawn_blocking`), not from an async task, where they would
//! stall that task's worker thread.
//!
//! # Secrets
//!
//! Secret values, KMS plaintexts and secret access keys are held in
//! [`Zeroizing`] buffers once they reach this crate, are redacted in
//! `Debug`, and never appear in [`Error`] messages (which quote only AWS
//! error codes and messages, names, regions and endpoints). The SDK's own
//! response buffers are outside our control.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The shared AWS configuration [`sdk_config`] builds (re-exported for callers' clients).
pub use aws_config::SdkConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use zeroize::Zeroizing;

use crate::key::{ValidatorKey, SECRET_LEN};
use crate::report::LoadReport;
use crate::Error;

/// Most requests in flight at once during one load.
const MAX_CONCURRENT_REQUESTS: usize = 16;
/// Largest secret value parsed (a secret holds at most 64 KiB in AWS).
const MAX_SECRET_VALUE_LEN: usize = 64 * 1024;

/// How to authenticate to AWS (Web3Signer `authenticationMode`).
#[derive(Clone, PartialEq, Eq)]
pub enum AwsAuth {
    /// `SPECIFIED`: this access key.
    Specified {
        access_key_id: String,
        secret_access_key: Zeroizing<String>,
    },
    /// `ENVIRONMENT`: the standard AWS credential chain (environment,
    /// profile, web identity, ECS, EC2 instance metadata).
    Environment,
}

impl fmt::Debug for AwsAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AwsAuth::Specified { access_key_id, .. } => f
                .debug_struct("Specified")
                .field("access_key_id", access_key_id)
                .field("secret_access_key", &"<redacted>")
                .finish(),
            AwsAuth::Environment => f.write_str("Environment"),
        }
    }
}

/// Web3Signer's bulk Secrets Manager loading (`--aws-secrets-*`).
///
/// Filters follow `ListSecrets`: a secret is loaded if its name starts with
/// one of `prefixes`, it has one of `tag_names` as a tag key, and one of
/// `tag_values` as a tag value (each list ignored when empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsSecretsBulk {
    pub auth: AwsAuth,
    /// Required for [`AwsAuth::Specified`]; otherwise from the environment
    /// when `None`.
    pub region: Option<String>,
    /// e.g. `http://127.0.0.1:5000` for a local stand-in.
    pub endpoint_override: Option<String>,
    pub prefixes: Vec<String>,
    pub tag_names: Vec<String>,
    pub tag_values: Vec<String>,
}

/// Where and as whom to call AWS.
#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) struct Conn {
    pub auth: AwsAuth,
    pub region: Option<String>,
    pub endpoint_override: Option<String>,
}

/// What one key config asks of AWS.
pub(crate) enum Request {
    /// `aws-secret`.
    Secret { name: String },
    /// `aws-kms-encrypted` with `ciphertext` / `ciphertextFile`.
    KmsKey(KmsCiphertext),
    /// `aws-kms-encrypted` with `keystoreFile` + `passwordCiphertext`.
    KmsPassword(KmsCiphertext),
}

pub(crate) struct KmsCiphertext {
    pub blob: Vec<u8>,
    pub context: BTreeMap<String, String>,
    pub key_id: Option<String>,
}

/// What AWS answered for one [`Request`].
pub(crate) enum Answer {
    /// Keys (one result per line of a secret, or the one KMS key).
    Keys(Vec<Result<ValidatorKey, Error>>),
    /// A decrypted keystore password.
    Password(Result<Zeroizing<String>, Error>),
}

/// Run `requests` against AWS on one current-thread runtime and return
/// one answer per request, in order.
pub(crate) fn resolve(requests: Vec<(Conn, Request)>) -> Vec<Answer> {
    if requests.is_empty() {
        return Vec::new();
    }
    let n = requests.len();
    let mut answers = on_runtime(
        move || resolve_async(requests),
        |e| {
            (0..n)
                .map(|_| Answer::Keys(vec![Err(e.clone_runtime())]))
                .collect()
        },
    );
    answers.truncate(n);
    answers
}

/// Load every secret matching `bulk`'s filters, each value parsed as keys,
/// one per line. Failures (the listing, a secret, a line) are reported per
/// source in [`LoadReport::errors`] with a path of the form
/// `aws-secretsmanager:<secret name>`; they are never fatal to the others.
/// Duplicate pubkeys are reported like in [`crate::load_key_configs`].
///
/// Blocks; see the [module docs](self#runtime).
pub fn load_aws_secrets_bulk(bulk: &AwsSecretsBulk) -> LoadReport {
    let bulk = bulk.clone();
    let results = on_runtime(
        move || bulk_async(bulk),
        |e| vec![(PathBuf::from("aws-secretsmanager:*"), Err(e))],
    );
    let mut report = LoadReport::default();
    report.add_outcomes(results);
    report
}

/// Build the SDK configuration for `auth`, `region` and `endpoint_override`
/// the way the loaders do (rustls + ring HTTPS client, bounded timeouts).
/// Public so tools and tests can talk to the same endpoint as the loader.
pub async fn sdk_config(
    auth: &AwsAuth,
    region: Option<&str>,
    endpoint_override: Option<&str>,
) -> Result<SdkConfig, Error> {
    let config_err = |message: String| Error::Aws {
        service: "config",
        operation: "load",
        message,
    };
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let timeouts = aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(3))
        .operation_attempt_timeout(Duration::from_secs(15))
        .operation_timeout(Duration::from_secs(40))
        .build();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .timeout_config(timeouts);
    if let Some(region) = region {
        loader = loader.region(Region::new(region.to_owned()));
    }
    if let Some(endpoint) = endpoint_override {
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(config_err(format!(
                "endpointOverride `{endpoint}` must start with http:// or https://"
            )));
        }
        loader = loader.endpoint_url(endpoint);
    }
    match auth {
        AwsAuth::Specified {
            access_key_id,
            secret_access_key,
        } => {
            if region.is_none() {
                return Err(config_err(
                    "authenticationMode SPECIFIED requires a region".into(),
                ));
            }
            loader = loader.credentials_provider(aws_sdk_kms::config::Credentials::new(
                access_key_id.clone(),
                String::clone(secret_access_key),
                None,
                None,
                "ensign-key-config",
            ));
        }
        AwsAuth::Environment => {}
    }
    let config = loader.load().await;
    if config.region().is_none() {
        return Err(config_err(
            "no AWS region: set `region` (or AWS_REGION for ENVIRONMENT mode)".into(),
        ));
    }
    Ok(config)
}

// ---------------------------------------------------------------------------
// Runtime plumbing.
// ---------------------------------------------------------------------------

impl Error {
    /// A copy of a runtime-start error for every request that needed it.
    fn clone_runtime(&self) -> Error {
        match self {
            Error::Aws {
                service,
                operation,
                message,
            } => Error::Aws {
                service,
                operation,
                message: message.clone(),
            },
            other => Error::Aws {
                service: "runtime",
                operation: "start",
                message: other.to_string(),
            },
        }
    }
}

/// Run `make()`'s future to completion on a fresh current-thread runtime,
/// on a scoped thread of its own (so this works even if the caller is
/// inside another runtime). `on_error` turns a runtime start failure into
/// the result.
fn on_runtime<T, F, Fut>(make: F, on_error: impl FnOnce(Error) -> T) -> T
where
    F: FnOnce() -> Fut + Send,
    Fut: std::future::Future<Output = T>,
    T: Send,
{
    let outcome = std::thread::scope(|scope| {
        scope
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| Error::Aws {
                        service: "runtime",
                        operation: "start",
                        message: e.to_string(),
                    })?;
                Ok(rt.block_on(make()))
            })
            .join()
    });
    match outcome {
        Ok(Ok(value)) => value,
        Ok(Err(e)) => on_error(e),
        Err(_) => on_error(Error::Aws {
            service: "runtime",
            operation: "run",
            message: "AWS request thread panicked".into(),
        }),
    }
}

/// One SDK configuration per distinct connection, built on first use.
#[derive(Default)]
struct Configs {
    built: Vec<(Conn, Arc<Result<SdkConfig, String>>)>,
}

impl Configs {
    async fn get(&mut self, conn: &Conn) -> Arc<Result<SdkConfig, String>> {
        if let Some((_, c)) = self.built.iter().find(|(k, _)| k == conn) {
            return Arc::clone(c);
        }
        let c = Arc::new(
            sdk_config(
                &conn.auth,
                conn.region.as_deref(),
                conn.endpoint_override.as_deref(),
            )
            .await
            .map_err(|e| e.to_string()),
        );
        self.built.push((conn.clone(), Arc::clone(&c)));
        c
    }
}

fn config_error(message: &str) -> Error {
    Error::Aws {
        service: "config",
        operation: "load",
        message: message.to_owned(),
    }
}

async fn resolve_async(requests: Vec<(Conn, Request)>) -> Vec<Answer> {
    let limit = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_REQUESTS));
    let mut configs = Configs::default();
    let mut tasks = tokio::task::JoinSet::new();
    let n = requests.len();
    for (i, (conn, request)) in requests.into_iter().enumerate() {
        let config = configs.get(&conn).await;
        let limit = Arc::clone(&limit);
        let target = Target::of(&conn);
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await;
            let config = match &*config {
                Ok(c) => c,
                Err(message) => {
                    let e = config_error(message);
                    let answer = match request {
                        Request::KmsPassword(_) => Answer::Password(Err(e)),
                        _ => Answer::Keys(vec![Err(e)]),
                    };
                    return (i, answer);
                }
            };
            let answer = match request {
                Request::Secret { name } => {
                    let client = aws_sdk_secretsmanager::Client::new(config);
                    Answer::Keys(fetch_secret_keys(&client, &name, &target).await)
                }
                Request::KmsKey(ct) => {
                    let client = aws_sdk_kms::Client::new(config);
                    Answer::Keys(vec![kms_decrypt(&client, &ct, &target)
                        .await
                        .and_then(|pt| key_from_plaintext(&pt))])
                }
                Request::KmsPassword(ct) => {
                    let client = aws_sdk_kms::Client::new(config);
                    Answer::Password(
                        kms_decrypt(&client, &ct, &target)
                            .await
                            .and_then(|pt| password_from_plaintext(&pt)),
                    )
                }
            };
            (i, answer)
        });
    }
    let mut slots: Vec<Option<Answer>> = (0..n).map(|_| None).collect();
    while let Some(joined) = tasks.join_next().await {
        if let Ok((i, answer)) = joined {
            slots[i] = Some(answer);
        }
    }
    slots
        .into_iter()
        .map(|s| {
            s.unwrap_or_else(|| {
                Answer::Keys(vec![Err(Error::Aws {
                    service: "runtime",
                    operation: "run",
                    message: "AWS request task failed".into(),
                })])
            })
        })
        .collect()
}

type Sourced = (PathBuf, Result<ValidatorKey, Error>);

async fn bulk_async(bulk: AwsSecretsBulk) -> Vec<Sourced> {
    let list_path = || PathBuf::from("aws-secretsmanager:*");
    let config = match sdk_config(
        &bulk.auth,
        bulk.region.as_deref(),
        bulk.endpoint_override.as_deref(),
    )
    .await
    {
        Ok(c) => c,
        Err(e) => return vec![(list_path(), Err(e))],
    };
    let target = Target {
        endpoint: bulk.endpoint_override.clone(),
        region: config.region().map(|r| r.to_string()),
    };
    let client = aws_sdk_secretsmanager::Client::new(&config);
    let names = match list_secrets(&client, &bulk, &target).await {
        Ok(n) => n,
        Err(e) => return vec![(list_path(), Err(e))],
    };
    let limit = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_REQUESTS));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, name) in names.iter().enumerate() {
        let (client, name, target, limit) = (
            client.clone(),
            name.clone(),
            target.clone(),
            Arc::clone(&limit),
        );
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await;
            (i, fetch_secret_keys(&client, &name, &target).await)
        });
    }
    let mut slots: Vec<Vec<Result<ValidatorKey, Error>>> = names.iter().map(|_| vec![]).collect();
    while let Some(joined) = tasks.join_next().await {
        if let Ok((i, keys)) = joined {
            slots[i] = keys;
        }
    }
    names
        .into_iter()
        .zip(slots)
        .flat_map(|(name, keys)| {
            let path = PathBuf::from(format!("aws-secretsmanager:{name}"));
            keys.into_iter().map(move |k| (path.clone(), k))
        })
        .collect()
}

/// Names of all secrets passing `bulk`'s filters, in listing order.
async fn list_secrets(
    client: &aws_sdk_secretsmanager::Client,
    bulk: &AwsSecretsBulk,
    target: &Target,
) -> Result<Vec<String>, Error> {
    use aws_sdk_secretsmanager::types::{Filter, FilterNameStringType};
    let mut filters = Vec::new();
    for (key, values) in [
        (FilterNameStringType::Name, &bulk.prefixes),
        (FilterNameStringType::TagKey, &bulk.tag_names),
        (FilterNameStringType::TagValue, &bulk.tag_values),
    ] {
        let values: Vec<String> = values
            .iter()
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .collect();
        if !values.is_empty() {
            filters.push(Filter::builder().key(key).set_values(Some(values)).build());
        }
    }
    let mut names = Vec::new();
    let mut token: Option<String> = None;
    // Bounded: 100 secrets per page, so 10,000 pages is a million secrets.
    for _ in 0..10_000 {
        let out = client
            .list_secrets()
            .set_filters((!filters.is_empty()).then(|| filters.clone()))
            .max_results(100)
            .set_next_token(token.take())
            .send()
            .await
            .map_err(|e| sdk_error("SecretsManager", "ListSecrets", target, None, e))?;
        names.extend(
            out.secret_list()
                .iter()
                .filter_map(|s| s.name().map(str::to_owned)),
        );
        match out.next_token() {
            Some(t) if !t.is_empty() => token = Some(t.to_owned()),
            _ => break,
        }
    }
    Ok(names)
}

/// `GetSecretValue` and parse the value as keys.
async fn fetch_secret_keys(
    client: &aws_sdk_secretsmanager::Client,
    name: &str,
    target: &Target,
) -> Vec<Result<ValidatorKey, Error>> {
    let mut out = match client.get_secret_value().secret_id(name).send().await {
        Ok(out) => out,
        Err(e) => {
            return vec![Err(sdk_error(
                "SecretsManager",
                "GetSecretValue",
                target,
                Some(name),
                e,
            ))]
        }
    };
    let value: Zeroizing<String> = if let Some(s) = out.secret_string.take() {
        Zeroizing::new(s)
    } else if let Some(b) = out.secret_binary.take() {
        let bytes = Zeroizing::new(b.into_inner());
        match std::str::from_utf8(&bytes) {
            Ok(s) => Zeroizing::new(s.to_owned()),
            Err(_) => {
                return vec![Err(secret_value_error(
                    name,
                    "binary value is not UTF-8 text",
                ))]
            }
        }
    } else {
        return vec![Err(secret_value_error(name, "secret has no value"))];
    };
    parse_secret_keys(name, &value)
}

fn secret_value_error(name: &str, reason: &str) -> Error {
    Error::AwsSecretValue {
        name: name.to_owned(),
        reason: reason.to_owned(),
    }
}

/// A secret's value as keys: one hex key per line, `0x` optional, blank
/// lines ignored. One result per key line; a bad line fails alone.
pub(crate) fn parse_secret_keys(name: &str, value: &str) -> Vec<Result<ValidatorKey, Error>> {
    if value.len() > MAX_SECRET_VALUE_LEN {
        return vec![Err(secret_value_error(
            name,
            &format!("value is over {MAX_SECRET_VALUE_LEN} bytes"),
        ))];
    }
    let mut keys = Vec::new();
    for (i, line) in value.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let hex_str = line.strip_prefix("0x").unwrap_or(line);
        let mut secret = Zeroizing::new([0u8; SECRET_LEN]);
        let result = hex::decode_to_slice(hex_str, &mut *secret)
            .map_err(|_| ())
            .and_then(|()| ValidatorKey::from_secret_bytes(&*secret).map_err(|_| ()))
            .map_err(|()| {
                secret_value_error(
                    name,
                    &format!(
                        "line {} is not a BLS secret key (expected 64 hex digits, \
                         non-zero, below the group order)",
                        i + 1
                    ),
                )
            });
        keys.push(result);
    }
    if keys.is_empty() {
        keys.push(Err(secret_value_error(name, "value holds no keys")));
    }
    keys
}

async fn kms_decrypt(
    client: &aws_sdk_kms::Client,
    ct: &KmsCiphertext,
    target: &Target,
) -> Result<Zeroizing<Vec<u8>>, Error> {
    let mut out = client
        .decrypt()
        .ciphertext_blob(Blob::new(ct.blob.clone()))
        .set_encryption_context(
            (!ct.context.is_empty()).then(|| ct.context.clone().into_iter().collect()),
        )
        .set_key_id(ct.key_id.clone())
        .send()
        .await
        .map_err(|e| sdk_error("KMS", "Decrypt", target, ct.key_id.as_deref(), e))?;
    match out.plaintext.take() {
        Some(pt) => Ok(Zeroizing::new(pt.into_inner())),
        None => Err(Error::Aws {
            service: "KMS",
            operation: "Decrypt",
            message: "response has no plaintext".into(),
        }),
    }
}

/// A KMS plaintext as a key: 32 raw bytes, or 64 hex digits as text.
fn key_from_plaintext(pt: &[u8]) -> Result<ValidatorKey, Error> {
    let bad = || Error::Aws {
        service: "KMS",
        operation: "Decrypt",
        message: "plaintext is not a BLS secret key (expected 32 bytes, or 64 hex digits)".into(),
    };
    if pt.len() == SECRET_LEN {
        return ValidatorKey::from_secret_bytes(pt).map_err(|_| bad());
    }
    let text = std::str::from_utf8(pt).map_err(|_| bad())?.trim();
    let hex_str = text.strip_prefix("0x").unwrap_or(text);
    let mut secret = Zeroizing::new([0u8; SECRET_LEN]);
    hex::decode_to_slice(hex_str, &mut *secret).map_err(|_| bad())?;
    ValidatorKey::from_secret_bytes(&*secret).map_err(|_| bad())
}

fn password_from_plaintext(pt: &[u8]) -> Result<Zeroizing<String>, Error> {
    let s = std::str::from_utf8(pt).map_err(|_| Error::Aws {
        service: "KMS",
        operation: "Decrypt",
        message: "decrypted keystore password is not UTF-8".into(),
    })?;
    let s = s.strip_suffix('\n').unwrap_or(s);
    let s = s.strip_suffix('\r').unwrap_or(s);
    Ok(Zeroizing::new(s.to_owned()))
}

// ---------------------------------------------------------------------------
// Error messages.
// ---------------------------------------------------------------------------

/// Where requests go, for error messages.
#[derive(Clone)]
struct Target {
    endpoint: Option<String>,
    region: Option<String>,
}

impl Target {
    fn of(conn: &Conn) -> Target {
        Target {
            endpoint: conn.endpoint_override.clone(),
            region: conn.region.clone(),
        }
    }

    fn describe(&self, service: &str) -> String {
        match (&self.endpoint, &self.region) {
            (Some(e), _) => e.clone(),
            (None, Some(r)) => format!("{service} in {r}"),
            (None, None) => service.to_owned(),
        }
    }
}

/// The innermost cause of an error chain: for transport failures the
/// useful part ("Connection refused (os error 111)").
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// A short, readable [`Error::Aws`] for an SDK failure. `subject` is the
/// secret name or KMS key id the call was about, if any.
fn sdk_error<E, R>(
    service: &'static str,
    operation: &'static str,
    target: &Target,
    subject: Option<&str>,
    err: SdkError<E, R>,
) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: fmt::Debug + 'static,
{
    let message = match &err {
        SdkError::DispatchFailure(d) => {
            let what = match d.as_connector_error() {
                Some(c) if c.is_timeout() => "timed out reaching",
                Some(c) if c.is_io() => "cannot reach",
                _ => "request to",
            };
            let cause = d
                .as_connector_error()
                .map(|c| root_cause(c))
                .unwrap_or_else(|| root_cause(&err));
            if what == "request to" {
                format!("request to {} failed: {cause}", target.describe(service))
            } else {
                format!("{what} {}: {cause}", target.describe(service))
            }
        }
        SdkError::TimeoutError(_) => {
            format!("timed out waiting for {}", target.describe(service))
        }
        SdkError::ConstructionFailure(_) => {
            format!("request could not be made: {}", root_cause(&err))
        }
        SdkError::ResponseError(_) => format!(
            "unreadable response from {}: {}",
            target.describe(service),
            root_cause(&err)
        ),
        SdkError::ServiceError(s) => {
            let e = s.err();
            let code = e.code().unwrap_or("unknown error");
            let detail = e.message().unwrap_or("").trim();
            let subject = subject.map(|s| format!(" `{s}`")).unwrap_or_default();
            match code {
                "AccessDeniedException"
                | "AccessDenied"
                | "UnrecognizedClientException"
                | "InvalidSignatureException"
                | "ExpiredTokenException"
                | "InvalidClientTokenId" => {
                    let detail = if !detail.is_empty() {
                        detail
                    } else if operation == "Decrypt" {
                        "the ciphertext names a KMS key that does not exist in this account \
                         and region, or that these credentials may not use"
                    } else {
                        "these credentials may not do this"
                    };
                    format!("access denied ({code}): {detail}")
                }
                "InvalidCiphertextException" => "invalid ciphertext: not produced by a KMS key \
                     of this account and region, corrupted, or encrypted with a different \
                     encryptionContext"
                    .to_owned(),
                "IncorrectKeyException" => {
                    format!("ciphertext was not encrypted under the KMS key{subject}")
                }
                "DisabledException" => format!("KMS key is disabled: {detail}"),
                "KMSInvalidStateException" => {
                    format!("KMS key is not usable in its current state: {detail}")
                }
                "NotFoundException" => format!("KMS key{subject} not found: {detail}"),
                "ResourceNotFoundException" if service == "SecretsManager" => {
                    format!("secret{subject} not found")
                }
                "DecryptionFailure" => {
                    format!("Secrets Manager cannot decrypt secret{subject}: {detail}")
                }
                _ if detail.is_empty() => code.to_owned(),
                _ => format!("{code}: {detail}"),
            }
        }
        _ => root_cause(&err),
    };
    Error::Aws {
        service,
        operation,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "25295f0d1d592a90b333e26e85149708208e9f8e8bc18f6c77bd62f8ad7a6866";

    #[test]
    fn secret_lines() {
        let v = format!("\n0x{K1}\n  \n{K1}\r\nnot-a-key\n");
        let keys = parse_secret_keys("s", &v);
        assert_eq!(keys.len(), 3);
        assert!(keys[0].is_ok() && keys[1].is_ok());
        let e = keys[2].as_ref().unwrap_err().to_string();
        assert!(e.contains("line 5"), "{e}");
        assert!(!e.contains("not-a-key"), "{e}");
        let empty = parse_secret_keys("s", " \n\n");
        assert!(empty[0]
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains("no keys"));
    }

    #[test]
    fn plaintext_forms() {
        let raw = hex::decode(K1).unwrap();
        let a = key_from_plaintext(&raw).unwrap();
        let b = key_from_plaintext(format!("0x{K1}\n").as_bytes()).unwrap();
        assert_eq!(a.pubkey(), b.pubkey());
        let e = key_from_plaintext(b"hello").unwrap_err().to_string();
        assert!(!e.contains("hello"));
        assert_eq!(&*password_from_plaintext(b"pw\r\n").unwrap(), "pw");
    }

    #[test]
    fn auth_debug_redacted() {
        let a = AwsAuth::Specified {
            access_key_id: "AKIA".into(),
            secret_access_key: Zeroizing::new("topsecret".into()),
        };
        let d = format!("{a:?}");
        assert!(d.contains("AKIA") && !d.contains("topsecret"), "{d}");
    }
}
