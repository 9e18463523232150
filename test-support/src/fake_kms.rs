//! A fake KMS for tests: an HTTP server on a loopback port speaking the KMS
//! JSON protocol (`X-Amz-Target: TrentService.Encrypt` / `.Decrypt`,
//! `application/x-amz-json-1.1`) well enough for the real `aws-sdk-kms`
//! client.
//!
//! What it does like KMS:
//! - `Decrypt` with `Recipient`: verifies the attestation document against
//!   the configured test root, applies the key policy condition
//!   `kms:RecipientAttestation:ImageSha384` (PCR0), and answers with
//!   `CiphertextForRecipient` only — a CMS `EnvelopedData` built with the
//!   `cms` crate, RSAES-OAEP-SHA-256 key transport to the document's
//!   `public_key` (which must be RSA-2048), AES-256-CBC content, encoded
//!   with indefinite lengths and 1000-byte content chunks as KMS does (or
//!   DER, [`CmsEncoding::Der`]).
//! - A PCR0 mismatch, or a policy with a PCR0 condition and no `Recipient`,
//!   is `AccessDeniedException` (400).
//! - Errors are `{"__type": "...", "message": "..."}` with status 400.
//!
//! What it does not: SigV4 checks (any credentials pass), grants, key
//! rotation, any other operation. Its ciphertext format is its own (AES-GCM
//! under a per-instance key, the key id and encryption context as associated
//! data). What real KMS returns for an invalid attestation document is not
//! documented; this answers `ValidationException`.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use base64::Engine as _;
use cms::builder::{
    ContentEncryptionAlgorithm, EnvelopedDataBuilder, RecipientInfoBuilder, RecipientInfoType,
};
use cms::content_info::{CmsVersion, ContentInfo};
use cms::enveloped_data::{
    EncryptedKey, EnvelopedData, KeyTransRecipientInfo, RecipientIdentifier, RecipientInfo,
};
use const_oid::db::rfc5911::ID_ENVELOPED_DATA;
use const_oid::db::rfc5912::ID_RSAES_OAEP;
use der::asn1::{OctetString, OctetStringRef};
use der::{Any, Encode};
use getrandom::rand_core::UnwrapErr;
use getrandom::SysRng;
use rsa::pkcs1::RsaOaepParamsRef;
use rsa::pkcs8::DecodePublicKey;
use rsa::traits::PublicKeyParts;
use rsa::{Oaep, PublicKey};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use spki::AlgorithmIdentifierOwned;
use x509_cert::ext::pkix::SubjectKeyIdentifier;
use zeroize::Zeroizing;

use enclave_bridge::attestation::verify_attestation;

/// How `CiphertextForRecipient` is encoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CmsEncoding {
    /// BER as KMS sends it: indefinite lengths, content in 1000-byte chunks.
    #[default]
    KmsBer,
    /// Plain DER from the `cms` crate.
    Der,
}

/// Configuration of a [`FakeKms`].
#[derive(Clone, Debug)]
pub struct FakeKmsConfig {
    /// The only key: its ARN (`KeyId` must be this, if given).
    pub key_arn: String,
    /// Attestation documents must chain to this root.
    pub root_cert_der: Vec<u8>,
    /// The key policy's `kms:RecipientAttestation:ImageSha384` condition;
    /// `None`: no condition (plain `Decrypt` allowed).
    pub required_pcr0: Option<Vec<u8>>,
    pub cms_encoding: CmsEncoding,
    /// Alters every `CiphertextForRecipient` before it is sent: what a relay that could
    /// break TLS to KMS would do (tests of how an enclave fails on tampered envelopes).
    pub tamper: Option<Tamper>,
}

/// Alters a `CiphertextForRecipient` in place ([`FakeKmsConfig::tamper`]).
pub type Tamper = fn(&mut Vec<u8>);

impl FakeKmsConfig {
    pub fn new(root_cert_der: Vec<u8>) -> Self {
        Self {
            key_arn: "arn:aws:kms:us-east-1:111122223333:key/00000000-1111-2222-3333-444444444444"
                .into(),
            root_cert_der,
            required_pcr0: None,
            cms_encoding: CmsEncoding::default(),
            tamper: None,
        }
    }
}

/// Counters, for tests that must see what the server saw.
#[derive(Debug, Default)]
pub struct FakeKmsStats {
    pub decrypt_with_recipient: AtomicU64,
    pub decrypt_plain: AtomicU64,
    pub denied: AtomicU64,
    /// Recipient `Decrypt`s whose RSA key had been used by an earlier one.
    pub recipient_key_reused: AtomicU64,
    /// SHA-256 of every Recipient public key seen.
    recipient_keys: std::sync::Mutex<std::collections::HashSet<[u8; 32]>>,
}

struct State {
    config: FakeKmsConfig,
    /// [`FakeKmsConfig::tamper`], changeable while serving ([`FakeKms::set_tamper`]).
    tamper: std::sync::Mutex<Option<Tamper>>,
    blob_key: Zeroizing<[u8; 32]>,
    stats: FakeKmsStats,
}

/// A running fake KMS; stops when dropped.
pub struct FakeKms {
    url: String,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
    /// With [`FakeKms::start_https`]: its HTTPS URL and the PEM of the test CA that issued
    /// its certificate.
    https: Option<(String, String)>,
    https_task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for FakeKms {
    fn drop(&mut self) {
        self.task.abort();
        if let Some(t) = &self.https_task {
            t.abort();
        }
    }
}

const BLOB_MAGIC: &[u8; 4] = b"EFK1";

impl FakeKms {
    /// Listen on `127.0.0.1:0` and serve plain HTTP until dropped.
    pub async fn start(config: FakeKmsConfig) -> io::Result<Self> {
        let (state, app) = Self::app(config)?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            url,
            state,
            task,
            https: None,
            https_task: None,
        })
    }

    /// [`FakeKms::start`], and one more listener on `127.0.0.1:0` serving the same KMS over
    /// HTTPS ([`FakeKms::https_url`]), with a certificate for `names` (e.g.
    /// `kms.us-east-1.amazonaws.com`) issued by a test CA made here ([`FakeKms::ca_pem`]):
    /// what an enclave that checks KMS's certificate against the roots of its image is pointed
    /// at, while test set-up (`ensign keys encrypt`) uses the plain [`FakeKms::url`].
    pub async fn start_https(config: FakeKmsConfig, names: &[&str]) -> io::Result<Self> {
        let mut kms = Self::start(config).await?;
        let app = router(kms.state.clone());
        let (ca_pem, tls) = test_tls(names).map_err(io::Error::other)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let https_url = format!("https://{}", listener.local_addr()?);
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, app) = (acceptor.clone(), app.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            use tower::ServiceExt as _;
                            app.clone().oneshot(req.map(axum::body::Body::new))
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        kms.https = Some((https_url, ca_pem));
        kms.https_task = Some(task);
        Ok(kms)
    }

    fn app(config: FakeKmsConfig) -> io::Result<(Arc<State>, Router)> {
        let mut blob_key = Zeroizing::new([0u8; 32]);
        getrandom::fill(&mut blob_key[..]).map_err(io::Error::other)?;
        let state = Arc::new(State {
            tamper: std::sync::Mutex::new(config.tamper),
            config,
            blob_key,
            stats: FakeKmsStats::default(),
        });
        let app = router(state.clone());
        Ok((state, app))
    }

    /// `https://127.0.0.1:PORT` (with [`FakeKms::start_https`]).
    pub fn https_url(&self) -> Option<&str> {
        self.https.as_ref().map(|(url, _)| url.as_str())
    }

    /// The PEM of the test CA behind [`FakeKms::start_https`]'s certificate.
    pub fn ca_pem(&self) -> Option<&str> {
        self.https.as_ref().map(|(_, pem)| pem.as_str())
    }

    /// `http://127.0.0.1:PORT`, for `endpoint_url`.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn key_arn(&self) -> &str {
        &self.state.config.key_arn
    }

    /// From now on, alter every `CiphertextForRecipient` with `tamper` (`None`: stop).
    pub fn set_tamper(&self, tamper: Option<Tamper>) {
        *self.state.tamper.lock().unwrap_or_else(|p| p.into_inner()) = tamper;
    }

    pub fn stats(&self) -> &FakeKmsStats {
        &self.state.stats
    }

    /// Encrypt without HTTP (test setup).
    pub fn encrypt(&self, plaintext: &[u8], context: &BTreeMap<String, String>) -> Vec<u8> {
        self.state.seal(plaintext, context)
    }
}

impl State {
    fn aad(&self, context: &BTreeMap<String, String>) -> Vec<u8> {
        let mut aad = self.config.key_arn.as_bytes().to_vec();
        aad.push(0);
        aad.extend(serde_json::to_vec(context).expect("a string map serialises"));
        aad
    }

    fn seal(&self, plaintext: &[u8], context: &BTreeMap<String, String>) -> Vec<u8> {
        let cipher = Aes256Gcm::new_from_slice(&self.blob_key[..]).expect("32-byte key");
        let mut nonce = [0u8; 12];
        getrandom::fill(&mut nonce).expect("system RNG");
        let sealed = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: &self.aad(context),
                },
            )
            .expect("AES-GCM seals");
        [&BLOB_MAGIC[..], &nonce, &sealed].concat()
    }

    fn open(&self, blob: &[u8], context: &BTreeMap<String, String>) -> Option<Zeroizing<Vec<u8>>> {
        let rest = blob.strip_prefix(&BLOB_MAGIC[..])?;
        if rest.len() < 12 + 16 {
            return None;
        }
        let (nonce, sealed) = rest.split_at(12);
        let cipher = Aes256Gcm::new_from_slice(&self.blob_key[..]).ok()?;
        cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: &self.aad(context),
                },
            )
            .ok()
            .map(Zeroizing::new)
    }
}

/// The KMS JSON protocol's one route, over `state`.
fn router(state: Arc<State>) -> Router {
    Router::new().route("/", post(handle)).with_state(state)
}

/// A test CA (its PEM) and a rustls server configuration with a certificate it issued for
/// `names`.
fn test_tls(names: &[&str]) -> Result<(String, rustls::ServerConfig), String> {
    let e = |e: rcgen::Error| e.to_string();
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(e)?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "fake KMS test CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).map_err(e)?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(e)?;
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = rcgen::CertificateParams::new(names).map_err(e)?;
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &issuer).map_err(e)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .map_err(|e| e.to_string())?;
    Ok((ca_cert.pem(), config))
}

/// A KMS error answer: `__type` and `message`.
struct Fault {
    code: &'static str,
    message: String,
}

fn fault(code: &'static str, message: &str) -> Fault {
    Fault {
        code,
        message: message.to_owned(),
    }
}

fn kms_error(code: &str, message: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        [("content-type", "application/x-amz-json-1.1")],
        json!({"__type": code, "message": message}).to_string(),
    )
        .into_response()
}

fn ok(body: Value) -> Response {
    (
        StatusCode::OK,
        [("content-type", "application/x-amz-json-1.1")],
        body.to_string(),
    )
        .into_response()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(v: &Value) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(v.as_str()?)
        .ok()
}

fn context_of(body: &Value) -> Result<BTreeMap<String, String>, Fault> {
    match body.get("EncryptionContext") {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(v) => serde_json::from_value(v.clone())
            .map_err(|_| fault("ValidationException", "EncryptionContext must map strings")),
    }
}

async fn handle(
    axum::extract::State(state): axum::extract::State<Arc<State>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return kms_error("SerializationException", "body is not JSON");
    };
    let result = match target {
        "TrentService.Encrypt" => encrypt(&state, &body),
        "TrentService.Decrypt" => decrypt(&state, &body),
        other => Err(fault(
            "UnknownOperationException",
            &format!("fake KMS does not implement {other}"),
        )),
    };
    result.unwrap_or_else(|f| kms_error(f.code, &f.message))
}

fn check_key_id(state: &State, body: &Value) -> Result<(), Fault> {
    match body.get("KeyId").and_then(Value::as_str) {
        None => Ok(()),
        Some(id) if id == state.config.key_arn => Ok(()),
        Some(_) => Err(fault("NotFoundException", "no such key")),
    }
}

fn encrypt(state: &State, body: &Value) -> Result<Response, Fault> {
    if body.get("KeyId").is_none() {
        return Err(fault("ValidationException", "KeyId is required"));
    }
    check_key_id(state, body)?;
    let plaintext = Zeroizing::new(
        body.get("Plaintext")
            .and_then(unb64)
            .ok_or_else(|| fault("ValidationException", "Plaintext must be base64"))?,
    );
    let context = context_of(body)?;
    Ok(ok(json!({
        "CiphertextBlob": b64(&state.seal(&plaintext, &context)),
        "KeyId": state.config.key_arn,
        "EncryptionAlgorithm": "SYMMETRIC_DEFAULT",
    })))
}

fn decrypt(state: &State, body: &Value) -> Result<Response, Fault> {
    check_key_id(state, body)?;
    let blob = body
        .get("CiphertextBlob")
        .and_then(unb64)
        .ok_or_else(|| fault("ValidationException", "CiphertextBlob must be base64"))?;
    let context = context_of(body)?;

    // Recipient: algorithm, then the document, then the policy condition.
    let recipient = match body.get("Recipient") {
        None | Some(Value::Null) => None,
        Some(r) => {
            if r.get("KeyEncryptionAlgorithm").and_then(Value::as_str) != Some("RSAES_OAEP_SHA_256")
            {
                return Err(fault(
                    "ValidationException",
                    "KeyEncryptionAlgorithm must be RSAES_OAEP_SHA_256",
                ));
            }
            let doc = r
                .get("AttestationDocument")
                .and_then(unb64)
                .ok_or_else(|| {
                    fault("ValidationException", "AttestationDocument must be base64")
                })?;
            let verified = verify_attestation(&doc, &state.config.root_cert_der, SystemTime::now())
                .map_err(|e| {
                    fault(
                        "ValidationException",
                        &format!("The attestation document is not valid: {e}"),
                    )
                })?;
            Some(verified)
        }
    };
    if let Some(required) = &state.config.required_pcr0 {
        let matches = recipient
            .as_ref()
            .and_then(|d| d.pcr(0))
            .is_some_and(|pcr0| pcr0 == required.as_slice());
        if !matches {
            state.stats.denied.fetch_add(1, Ordering::Relaxed);
            return Err(fault(
                "AccessDeniedException",
                "User is not authorized to perform: kms:Decrypt (kms:RecipientAttestation:ImageSha384 condition not met)",
            ));
        }
    }

    let plaintext = state
        .open(&blob, &context)
        .ok_or_else(|| fault("InvalidCiphertextException", ""))?;

    let Some(doc) = recipient else {
        state.stats.decrypt_plain.fetch_add(1, Ordering::Relaxed);
        return Ok(ok(json!({
            "KeyId": state.config.key_arn,
            "Plaintext": b64(&plaintext),
            "EncryptionAlgorithm": "SYMMETRIC_DEFAULT",
        })));
    };
    let spki_der = doc.public_key.ok_or_else(|| {
        fault(
            "ValidationException",
            "The attestation document has no public key",
        )
    })?;
    let public = PublicKey::from_public_key_der(&spki_der).map_err(|_| {
        fault(
            "ValidationException",
            "The attestation document's public key is not RSA",
        )
    })?;
    if public.size() * 8 != 2048 {
        return Err(fault(
            "ValidationException",
            "The attestation document's public key must be RSA-2048",
        ));
    }
    let fresh = state
        .stats
        .recipient_keys
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(Sha256::digest(&spki_der).into());
    if !fresh {
        state
            .stats
            .recipient_key_reused
            .fetch_add(1, Ordering::Relaxed);
    }
    let mut envelope = envelope_for(&public, &spki_der, &plaintext, state.config.cms_encoding)
        .map_err(|e| fault("KMSInternalException", &e))?;
    let tamper = *state.tamper.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(tamper) = tamper {
        tamper(&mut envelope);
    }
    state
        .stats
        .decrypt_with_recipient
        .fetch_add(1, Ordering::Relaxed);
    Ok(ok(json!({
        "KeyId": state.config.key_arn,
        "CiphertextForRecipient": b64(&envelope),
        "EncryptionAlgorithm": "SYMMETRIC_DEFAULT",
    })))
}

/// KeyTransRecipientInfo with RSAES-OAEP (SHA-256, MGF1-SHA-256) — the
/// `cms` crate's own RSA recipient builder does PKCS #1 v1.5 only.
struct OaepRecipient {
    rid: RecipientIdentifier,
    key: PublicKey,
}

impl RecipientInfoBuilder for OaepRecipient {
    type Rng = UnwrapErr<SysRng>;

    fn recipient_info_type(&self) -> RecipientInfoType {
        RecipientInfoType::Ktri
    }

    fn recipient_info_version(&self) -> CmsVersion {
        // RFC 5652 §6.2.1: version 2 with a subjectKeyIdentifier.
        CmsVersion::V2
    }

    fn build_with_rng(
        &mut self,
        content_encryption_key: &[u8],
        rng: &mut Self::Rng,
    ) -> Result<RecipientInfo, cms::builder::Error> {
        let encrypted = self
            .key
            .encrypt(rng, Oaep::<Sha256>::new(), content_encryption_key)
            .map_err(|_| cms::builder::Error::Builder("RSA-OAEP encryption failed".into()))?;
        let params = RsaOaepParamsRef::new::<Sha256>();
        Ok(RecipientInfo::Ktri(KeyTransRecipientInfo {
            version: self.recipient_info_version(),
            rid: self.rid.clone(),
            key_enc_alg: AlgorithmIdentifierOwned {
                oid: ID_RSAES_OAEP,
                parameters: Some(Any::encode_from(&params)?),
            },
            enc_key: EncryptedKey::new(encrypted)?,
        }))
    }
}

fn envelope_for(
    key: &PublicKey,
    spki_der: &[u8],
    plaintext: &[u8],
    encoding: CmsEncoding,
) -> Result<Vec<u8>, String> {
    let ski = SubjectKeyIdentifier(
        OctetString::new(Sha256::digest(spki_der).to_vec()).map_err(|e| e.to_string())?,
    );
    let mut builder = EnvelopedDataBuilder::<UnwrapErr<SysRng>>::new(
        None,
        plaintext,
        ContentEncryptionAlgorithm::Aes256Cbc,
        None,
    )
    .map_err(|e| e.to_string())?;
    builder
        .add_recipient_info(OaepRecipient {
            rid: RecipientIdentifier::SubjectKeyIdentifier(ski),
            key: key.clone(),
        })
        .map_err(|e| e.to_string())?;
    let env = builder
        .build_with_rng(&mut UnwrapErr(SysRng))
        .map_err(|e| e.to_string())?;
    match encoding {
        CmsEncoding::Der => ContentInfo {
            content_type: ID_ENVELOPED_DATA,
            content: Any::encode_from(&env).map_err(|e| e.to_string())?,
        }
        .to_der()
        .map_err(|e| e.to_string()),
        CmsEncoding::KmsBer => kms_style_ber(&env).map_err(|e| e.to_string()),
    }
}

/// The shape of KMS's answers: `ContentInfo`, its `[0]`, `EnvelopedData`,
/// `EncryptedContentInfo` and the `[0]` content all with indefinite lengths
/// (X.690 §8.1.3.6), the content as a constructed string of 1000-byte
/// OCTET STRING segments (§8.7.3.2); everything else DER.
fn kms_style_ber(env: &EnvelopedData) -> der::Result<Vec<u8>> {
    const OPEN_SEQUENCE: [u8; 2] = [0x30, 0x80];
    const OPEN_CONTEXT_0: [u8; 2] = [0xa0, 0x80];
    const END: [u8; 2] = [0x00, 0x00];
    let eci = &env.encrypted_content;
    let content = eci
        .encrypted_content
        .as_ref()
        .map(|c| c.as_bytes())
        .unwrap_or_default();
    let mut out = Vec::new();
    out.extend(OPEN_SEQUENCE);
    out.extend(ID_ENVELOPED_DATA.to_der()?);
    out.extend(OPEN_CONTEXT_0);
    out.extend(OPEN_SEQUENCE);
    out.extend(env.version.to_der()?);
    out.extend(env.recip_infos.to_der()?);
    out.extend(OPEN_SEQUENCE);
    out.extend(eci.content_type.to_der()?);
    out.extend(eci.content_enc_alg.to_der()?);
    out.extend(OPEN_CONTEXT_0);
    for chunk in content.chunks(1000) {
        out.extend(OctetStringRef::new(chunk)?.to_der()?);
    }
    out.extend(END); // [0] content
    out.extend(END); // EncryptedContentInfo
    out.extend(END); // EnvelopedData
    out.extend(END); // [0]
    out.extend(END); // ContentInfo
    Ok(out)
}
