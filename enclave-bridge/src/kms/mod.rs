//! KMS `Decrypt`, behind the [`KeyDecryptor`] trait.
//!
//! - [`RecipientDecryptor`] (in an enclave): makes an ephemeral RSA-2048 key
//!   for each `Decrypt`, asks its [`Attestor`] for a document carrying the key's
//!   SubjectPublicKeyInfo, sends `Decrypt` with `Recipient {
//!   KeyEncryptionAlgorithm: RSAES_OAEP_SHA_256, AttestationDocument }`, and
//!   opens the CMS envelope KMS returns in `CiphertextForRecipient`
//!   ([`open_enveloped_data`]). KMS checks the document and the key policy's
//!   `kms:RecipientAttestation:*` conditions; the plaintext never exists
//!   outside the enclave. A reply that carries `Plaintext` is refused.
//! - [`PlainDecryptor`] (outside enclaves, and against moto in tests): plain
//!   `Decrypt`, the answer's `Plaintext`.
//!
//! Both use a client from [`kms_client`]: only the `aws-sdk-kms` crate, a
//! rustls + ring HTTPS client, static credentials from the control
//! protocol's `Init`, an optional endpoint URL, and optionally every host
//! name resolved to one fixed address ([`KmsClientConfig::resolve_to`]) — in
//! an enclave, `127.0.0.1`, where a [`crate::forward::Forwarder`] pipes to the
//! parent's outbound proxy. TLS (SNI, certificate name) still uses the real
//! KMS host name, so the parent sees only ciphertext.

mod cms;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_kms::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{KeyEncryptionMechanism, RecipientInfo};
use aws_smithy_runtime_api::client::dns::{DnsFuture, ResolveDns};
use rsa::pkcs8::EncodePublicKey;
use rsa::PrivateKey;
use zeroize::Zeroizing;

pub use self::cms::open_enveloped_data;
use crate::attestation::{AttestationError, Attestor};
use crate::control::{AwsCredentials, AwsRegion, EncryptedKeyRecord, EndpointUrl};
use crate::secret::SecretBytes;

/// A boxed, sendable future (keeps [`KeyDecryptor`] object-safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One ciphertext to decrypt.
#[derive(Clone, Copy, Debug)]
pub struct DecryptRequest<'a> {
    /// The KMS `CiphertextBlob`.
    pub ciphertext: &'a [u8],
    /// `KeyId`: insist on this key (recommended by KMS for symmetric keys).
    pub key_id: Option<&'a str>,
    /// `EncryptionContext` the ciphertext was made with.
    pub encryption_context: Option<&'a BTreeMap<String, String>>,
}

impl<'a> DecryptRequest<'a> {
    pub fn new(ciphertext: &'a [u8]) -> Self {
        Self {
            ciphertext,
            key_id: None,
            encryption_context: None,
        }
    }

    /// A ciphertext made under `encryption_context`, insisting on `key_id` when given.
    pub fn with_context(
        ciphertext: &'a [u8],
        key_id: Option<&'a str>,
        encryption_context: &'a BTreeMap<String, String>,
    ) -> Self {
        Self {
            ciphertext,
            key_id,
            encryption_context: Some(encryption_context),
        }
    }
}

/// The `Decrypt` of one validator key as the host sent it: its ciphertext, the KMS key to insist
/// on and its encryption context (empty when the record has none).
impl<'a> From<&'a EncryptedKeyRecord> for DecryptRequest<'a> {
    fn from(key: &'a EncryptedKeyRecord) -> Self {
        Self::with_context(
            &key.ciphertext.0,
            key.kms_key_id.as_deref(),
            &key.encryption_context,
        )
    }
}

/// Turns KMS ciphertexts into plaintext secrets.
pub trait KeyDecryptor: Send + Sync {
    fn decrypt<'a>(
        &'a self,
        request: DecryptRequest<'a>,
    ) -> BoxFuture<'a, Result<SecretBytes, KmsError>>;
}

impl<T: KeyDecryptor + ?Sized> KeyDecryptor for Arc<T> {
    fn decrypt<'a>(
        &'a self,
        request: DecryptRequest<'a>,
    ) -> BoxFuture<'a, Result<SecretBytes, KmsError>> {
        (**self).decrypt(request)
    }
}

/// Why a decryption failed. Never carries plaintext.
#[derive(Debug, thiserror::Error)]
pub enum KmsError {
    /// KMS said `AccessDeniedException` (e.g. the key policy's PCR condition
    /// did not match).
    #[error("KMS denied access: {0}")]
    AccessDenied(String),
    /// Another KMS error (`InvalidCiphertextException`, …).
    #[error("KMS error {code}: {message}")]
    Service { code: String, message: String },
    /// The request did not get an answer (connection, timeout, …).
    #[error("KMS request failed: {0}")]
    Transport(String),
    #[error("KMS answered without CiphertextForRecipient")]
    MissingRecipientCiphertext,
    #[error("KMS answered a Recipient request with a Plaintext; refused")]
    UnexpectedPlaintext,
    #[error("KMS answered without Plaintext")]
    MissingPlaintext,
    #[error("cannot open the CMS envelope: {0}")]
    Cms(String),
    #[error("attestation: {0}")]
    Attestation(#[from] AttestationError),
    #[error("cannot create the ephemeral RSA key: {0}")]
    Key(String),
}

impl KmsError {
    /// KMS answered, and what it answered did not open: the failure depends on the answer's
    /// bytes (and so, for a tampered answer, on the plaintext). Callers that report to a party
    /// who may have tampered with it give such failures one fixed text.
    pub fn after_answer(&self) -> bool {
        matches!(
            self,
            KmsError::Cms(_)
                | KmsError::UnexpectedPlaintext
                | KmsError::MissingRecipientCiphertext
                | KmsError::MissingPlaintext
        )
    }
}

/// How to build a KMS client.
#[derive(Clone, Debug)]
pub struct KmsClientConfig {
    pub region: AwsRegion,
    pub credentials: AwsCredentials,
    /// `None`: the regional endpoint (`https://kms.<region>.amazonaws.com`).
    pub endpoint_url: Option<EndpointUrl>,
    /// Resolve every host name to this address instead of asking DNS (an
    /// enclave has no DNS; its loopback forwarder listens here). The port is
    /// still the URL's.
    pub resolve_to: Option<IpAddr>,
    /// PEM roots that KMS's certificate must chain to, **instead of** the
    /// system's bundle (`None`: the system's, which in the enclave image is the
    /// CA bundle baked into the measured file system). Either way the roots
    /// come from the image, never from the parent instance.
    pub trust_roots_pem: Option<Vec<u8>>,
}

#[derive(Clone, Debug)]
struct FixedResolver(IpAddr);

impl ResolveDns for FixedResolver {
    fn resolve_dns<'a>(&'a self, _name: &'a str) -> DnsFuture<'a> {
        DnsFuture::ready(Ok(vec![self.0]))
    }
}

/// Build an `aws-sdk-kms` client for `config`.
pub fn kms_client(config: &KmsClientConfig) -> aws_sdk_kms::Client {
    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
    use aws_smithy_http_client::tls::{TlsContext, TrustStore};
    let mut http =
        aws_smithy_http_client::Builder::new().tls_provider(Provider::Rustls(CryptoMode::Ring));
    if let Some(pem) = &config.trust_roots_pem {
        let store = TrustStore::empty()
            .with_native_roots(false)
            .with_pem_certificate(pem.clone());
        http = http.tls_context(
            TlsContext::builder()
                .with_trust_store(store)
                .build()
                .expect("a TLS context from a trust store always builds"),
        );
    }
    let http = match config.resolve_to {
        Some(ip) => http.build_with_resolver(FixedResolver(ip)),
        None => http.build_https(),
    };
    let creds = &config.credentials;
    let expiry = creds
        .expiration
        .map(|secs| UNIX_EPOCH + Duration::from_secs(secs));
    let credentials = aws_sdk_kms::config::Credentials::new(
        creds.access_key_id.clone(),
        creds.secret_access_key.expose().to_owned(),
        creds.session_token.as_ref().map(|t| t.expose().to_owned()),
        expiry,
        "ensign-enclave-init",
    );
    let timeouts = aws_sdk_kms::config::timeout::TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(5))
        .operation_attempt_timeout(Duration::from_secs(20))
        .operation_timeout(Duration::from_secs(60))
        .build();
    let mut builder = aws_sdk_kms::Config::builder()
        .behavior_version(aws_sdk_kms::config::BehaviorVersion::latest())
        .region(aws_sdk_kms::config::Region::new(
            config.region.as_str().to_owned(),
        ))
        .credentials_provider(credentials)
        .http_client(http)
        .timeout_config(timeouts);
    if let Some(url) = &config.endpoint_url {
        builder = builder.endpoint_url(url.as_str());
    }
    aws_sdk_kms::Client::from_conf(builder.build())
}

fn sdk_error<E, R>(e: SdkError<E, R>) -> KmsError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match &e {
        SdkError::ServiceError(service) => {
            let err = service.err();
            let code = err.code().unwrap_or("Unknown").to_owned();
            let message = err.message().unwrap_or_default().to_owned();
            if code == "AccessDeniedException" {
                KmsError::AccessDenied(message)
            } else {
                KmsError::Service { code, message }
            }
        }
        _ => KmsError::Transport(DisplayErrorContext(&e).to_string()),
    }
}

fn decrypt_call(
    client: &aws_sdk_kms::Client,
    request: &DecryptRequest<'_>,
) -> aws_sdk_kms::operation::decrypt::builders::DecryptFluentBuilder {
    let mut call = client
        .decrypt()
        .ciphertext_blob(Blob::new(request.ciphertext));
    if let Some(key_id) = request.key_id {
        call = call.key_id(key_id);
    }
    if let Some(ctx) = request.encryption_context {
        for (k, v) in ctx {
            call = call.encryption_context(k, v);
        }
    }
    call
}

/// Plain `Decrypt`: the plaintext travels in the KMS response. For use
/// outside enclaves (and against moto, which ignores `Recipient`).
#[derive(Clone, Debug)]
pub struct PlainDecryptor {
    client: aws_sdk_kms::Client,
}

impl PlainDecryptor {
    pub fn new(client: aws_sdk_kms::Client) -> Self {
        Self { client }
    }
}

impl KeyDecryptor for PlainDecryptor {
    fn decrypt<'a>(
        &'a self,
        request: DecryptRequest<'a>,
    ) -> BoxFuture<'a, Result<SecretBytes, KmsError>> {
        Box::pin(async move {
            let out = decrypt_call(&self.client, &request)
                .send()
                .await
                .map_err(sdk_error)?;
            let plaintext = out.plaintext.ok_or(KmsError::MissingPlaintext)?;
            Ok(SecretBytes::from(Zeroizing::new(plaintext.into_inner())))
        })
    }
}

/// `Decrypt` with an attested `Recipient`: the plaintext comes back
/// encrypted to an RSA key that exists only in this process.
///
/// **A fresh RSA key for every `Decrypt`** (issue 15): the key's public half
/// travels in the attestation document, which whoever relays the request can
/// copy and replay to KMS for other ciphertexts; an envelope for a key that
/// has already been used is then opened by nothing. With one key per batch, a
/// relay could instead answer later requests with tampered copies of a genuine
/// envelope (AES-CBC content has no integrity) and learn from how the
/// enclave fails. The key is dropped (and its memory freed) when `decrypt`
/// returns.
pub struct RecipientDecryptor<A> {
    client: aws_sdk_kms::Client,
    attestor: A,
}

impl<A> std::fmt::Debug for RecipientDecryptor<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecipientDecryptor").finish_non_exhaustive()
    }
}

/// RSA modulus size KMS requires for a Recipient key.
const RECIPIENT_RSA_BITS: usize = 2048;

/// A new RSA-2048 key and its DER SubjectPublicKeyInfo (CPU-bound, tens to
/// hundreds of milliseconds; `benches/recipient_key.rs` measures it). One per
/// Recipient `Decrypt` (issue 15: an answer of KMS is never opened by a key
/// that opened another).
pub fn recipient_key() -> Result<(PrivateKey, Vec<u8>), KmsError> {
    let key = PrivateKey::new(&mut getrandom::SysRng, RECIPIENT_RSA_BITS)
        .map_err(|e| KmsError::Key(e.to_string()))?;
    let spki_der = key
        .to_public_key()
        .to_public_key_der()
        .map_err(|e| KmsError::Key(e.to_string()))?
        .into_vec();
    Ok((key, spki_der))
}

impl<A: Attestor> RecipientDecryptor<A> {
    /// A decryptor over `client`; each `decrypt` makes its own RSA key (on a
    /// blocking thread) and asks `attestor` for a document carrying it.
    /// (Returns `Result` so that callers need not change if making one ever
    /// needs to fail.)
    pub fn new(client: aws_sdk_kms::Client, attestor: A) -> Result<Self, KmsError> {
        Ok(Self { client, attestor })
    }
}

impl<A: Attestor> KeyDecryptor for RecipientDecryptor<A> {
    fn decrypt<'a>(
        &'a self,
        request: DecryptRequest<'a>,
    ) -> BoxFuture<'a, Result<SecretBytes, KmsError>> {
        Box::pin(async move {
            let (key, spki_der) = tokio::task::spawn_blocking(recipient_key)
                .await
                .map_err(|_| KmsError::Key("key generation aborted".into()))??;
            let document = self.attestor.attest(None, None, Some(&spki_der))?;
            let recipient = RecipientInfo::builder()
                .key_encryption_algorithm(KeyEncryptionMechanism::RsaesOaepSha256)
                .attestation_document(Blob::new(document))
                .build();
            let out = decrypt_call(&self.client, &request)
                .recipient(recipient)
                .send()
                .await
                .map_err(sdk_error)?;
            if out.plaintext.is_some() {
                // KMS never does this for a Recipient request; an endpoint
                // that does has seen the plaintext.
                return Err(KmsError::UnexpectedPlaintext);
            }
            let envelope = out
                .ciphertext_for_recipient
                .ok_or(KmsError::MissingRecipientCiphertext)?;
            // The key opens this one envelope and is dropped with this scope.
            open_enveloped_data(envelope.as_ref(), &key)
        })
    }
}

/// Seconds since the Unix epoch (for `AwsCredentials::expiration`).
pub fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
