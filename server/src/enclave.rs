//! Enclave mode (`--enclave-mode=true`): ensign as the enclave half of an AWS Nitro Enclave
//! deployment, with `ensign-host` (crate `enclave-bridge`) on the parent instance.
//!
//! # What changes
//!
//! - **No keys from disk.** Key sources (`--key-store-path`, `--keystores-path`, AWS Secrets
//!   Manager, the key manager API, the restart cache) are refused. Keys arrive over the
//!   **control endpoint** (`--enclave-control-endpoint`, default `vsock:any:5001`) as KMS
//!   ciphertexts of ensign's key records (`key_records`): `Init`, then `AddKeys` /
//!   `RemoveKeys`, from `ensign-host` (protocol: `enclave_bridge::control`).
//! - **KMS decrypts for this image only.** Each record is decrypted with KMS `Decrypt` and a
//!   `Recipient`: an attestation document (the NSM's, `--enclave-attestation nsm`) carrying an
//!   ephemeral RSA key made in this process; KMS checks the document and the key policy's
//!   `kms:RecipientAttestation:ImageSha384` (PCR0) condition and answers with the plaintext
//!   encrypted to that RSA key (`enclave_bridge::kms::RecipientDecryptor`). The host relays
//!   ciphertext only. The record's keystore is then decrypted with its password (EIP-2335).
//! - **TLS ends inside the enclave, with a key made here.** At start the enclave makes an
//!   ECDSA P-256 key and a self-signed certificate (`--enclave-tls-subject-alt-names`); the key
//!   never leaves the process. The signing API (the same router, TLS and connection limits as
//!   ever) is served on the **data endpoint** (`--enclave-data-endpoint`, default
//!   `vsock:any:5000`), to which the host pipes validator clients' TCP bytes unseen. Clients
//!   must present a certificate (`--tls-known-clients-file` or `--tls-allow-ca-clients`; start
//!   is refused without one of them outside `--enclave-development-mode`), and voluntary exits
//!   are refused unless `--enclave-allow-voluntary-exits=true`.
//! - **The certificate is attested.** `GET /api/v1/attestation?nonce=<hex>` returns an
//!   attestation document whose `user_data` is the SHA-256 of the certificate's
//!   SubjectPublicKeyInfo DER and whose `nonce` is the client's, with the certificate:
//!   a client that verifies the document (`ensign verify-attestation`) knows that the TLS key
//!   it talks to belongs to an enclave running the measured image (PCR0).
//! - **Fail closed.** Until an `Init` succeeded, the data endpoint answers only `/upcheck`,
//!   `/healthcheck` (with the enclave's state and only *that* the last `Init` failed: the
//!   reason goes to the host) and
//!   `/api/v1/attestation`; everything else is 503. An `Init` whose every key fails (KMS
//!   `AccessDenied` for another image's PCR0, expired credentials, KMS unreachable) is refused
//!   with the first reason, leaves no key loaded, and may be retried; a second `Init` once
//!   initialised is refused.
//! - **No network.** `--enclave-forward LOCAL=REMOTE` listens on loopback inside the enclave
//!   and pipes each connection to the host's proxies over vsock (KMS: `tcp:127.0.0.1:443=
//!   vsock:3:8000`; PostgreSQL: `tcp:127.0.0.1:5432=vsock:3:5432`). With forwards, the KMS
//!   client resolves every name to 127.0.0.1 but still speaks TLS to the real KMS host name.
//!
//! Slashing protection: PostgreSQL through a forward (`--slashing-protection-db-url
//! postgresql://…?sslmode=verify-full…`, authenticated by name; anything less is refused
//! outside development mode) is the production setup. In enclave mode it is **opened at
//! `Init`, not at start**: `Init` may carry the database's user (which must be the one the
//! image names) and its password as a KMS ciphertext for this image (`ensign database
//! provision` makes it; ensign-host reads it from Secrets Manager, `--db-secret-arn`), decrypted
//! here like a key record and used instead of the URL's and the
//! `--slashing-protection-db-username/-password` options (set on the parsed connection
//! configuration, so no character of a password needs URL-encoding); a password in clear is
//! accepted only in development mode. Without credentials the URL is used as given. A database
//! that cannot be opened fails `Init` with the reason (state
//! `Failed`, `/healthcheck`, the host's log; never the password). Until it is open nothing is
//! signed (the gate answers 503 before `Init` succeeds). `RefreshDatabaseCredentials` opens a
//! new store (a new connection pool) with rotated credentials and swaps it in: decisions in
//! flight finish on the old pool, whose connections close when it is dropped; if the new
//! credentials do not work the old store stays and the host hears why. SQLite also works (opened
//! at start, as outside enclave mode), but an enclave's file system lives in its memory, so
//! SQLite's history is LOST when the enclave restarts — a restarted enclave would not know what
//! it signed. Use it for demos only.
//!
//! # Invariants
//!
//! - Plaintext key material exists only in this process: decrypted records and passwords are
//!   zeroizing types, dropped as soon as the key is derived; control replies, health output,
//!   errors and logs carry ids, counts and reasons, never secrets.
//! - The keys change only through the control handler, which the control server serialises;
//!   the key manager API and `/reload` are off in enclave mode.
//! - Key ring updates are copy-and-swap (as the key manager does): a request in flight keeps
//!   the key it looked up.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::SystemTime;

use axum::extract::{RawQuery, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use der::{Decode, Encode};
use enclave_bridge::attestation::Attestor;
use enclave_bridge::control::{
    AddKeysRequest, AwsCredentials, AwsRegion, ControlHandler, ControlServer, ControlServerConfig,
    DatabaseCredentials, DatabasePassword, EnclaveState, EncryptedBlob, EncryptedKeyRecord,
    EndpointUrl, HandlerError, InitRequest, KeyFailure, KeysReport, RemoveKeysRequest,
    RemoveReport,
};
use enclave_bridge::forward::{ForwardLimits, Forwarder};
use enclave_bridge::kms::{
    kms_client, DecryptRequest, KeyDecryptor, KmsClientConfig, KmsError, PlainDecryptor,
    RecipientDecryptor,
};
use enclave_bridge::{Endpoint, Listener};
use keystore::ValidatorKey;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use slashing::{SlashingProtection, StoreConfig};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use zeroize::Zeroizing;

use crate::app::AppState;
use crate::error::ApiError;
use crate::key_records::RecordPlaintext;
use crate::keys::{hex0x, parse_identifier, KeyRing, SourceReport};
use crate::StartError;

/// Where the attestation document is served.
pub const ATTESTATION_PATH: &str = "/api/v1/attestation";

/// Paths served before the enclave is initialised; everything else is 503.
const SERVED_BEFORE_INIT: [&str; 3] = ["/upcheck", "/healthcheck", ATTESTATION_PATH];

/// Largest nonce accepted (the NSM accepts up to 512 bytes; a verifier needs far less).
pub const MAX_NONCE_LEN: usize = 64;

/// What `/healthcheck` says of a failed `Init` (the reason is in the host's control reply).
pub const INIT_FAILED_PUBLIC: &str = "the last Init failed; ensign-host logs the reason";

/// The one text a record that failed after KMS answered gets, whatever went wrong: its
/// envelope, its JSON, its keystore, its password or its public key. A failure's detail would
/// be derived from the plaintext, and the parent instance reads every reply and log line
/// (issue 15): it could otherwise learn plaintext from how tampered ciphertexts fail.
pub const RECORD_UNUSABLE: &str = "the record could not be used once KMS had answered (envelope, \
    format, keystore, password or public key check failed; no detail is given outside the \
    enclave); the rest of the batch was not attempted";

/// The one text for a database password ciphertext that KMS answered but that did not open to
/// a password (as [`RECORD_UNUSABLE`]: no detail derived from a plaintext leaves the enclave).
pub const DB_PASSWORD_UNUSABLE: &str = "the database password could not be used once KMS had \
    answered (no detail is given outside the enclave)";

/// Why a password in clear from the parent instance is refused outside development mode.
pub const DB_PASSWORD_IN_CLEAR: &str = "the database password arrived in clear from the parent \
    instance, which could then use it itself; this enclave accepts it only KMS-encrypted for its \
    image (`ensign database provision` writes such a secret; --enclave-development-mode=true \
    accepts it in clear)";

/// What the records of a batch not attempted after a [`RECORD_UNUSABLE`] failure get.
const BATCH_STOPPED: &str =
    "not attempted: an earlier record of this batch could not be used once KMS had answered";

/// Health-check id of the keys loaded from the host's records.
const SOURCE_ID: &str = "enclave-kms-loading";

/// KMS requests at once during one Init/AddKeys batch.
const KMS_CONCURRENCY: usize = 8;

/// Attestation documents made at once (each is an NSM round trip on a blocking thread).
const ATTEST_CONCURRENCY: usize = 4;

/// A loopback forwarder `LOCAL=REMOTE` (`--enclave-forward`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forward {
    pub local: Endpoint,
    pub remote: Endpoint,
}

impl FromStr for Forward {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (local, remote) = s.split_once('=').ok_or_else(|| {
            format!("`{s}`: expected LOCAL=REMOTE, e.g. tcp:127.0.0.1:443=vsock:3:8000")
        })?;
        let local: Endpoint = local.parse().map_err(|e| format!("{e}"))?;
        let remote: Endpoint = remote.parse().map_err(|e| format!("{e}"))?;
        // Inside an enclave only loopback exists; off-enclave, a forwarder on another address
        // would open the host's proxies to the network.
        match &local {
            Endpoint::Tcp { host, .. } => {
                let loopback = host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
                if !loopback {
                    return Err(format!(
                        "`{s}`: the local side must be a loopback address (127.0.0.1, [::1]) or a unix: path"
                    ));
                }
            }
            Endpoint::Unix(_) => {}
            Endpoint::Vsock { .. } => {
                return Err(format!(
                    "`{s}`: the local side must be tcp:127.0.0.1:PORT or unix:PATH"
                ))
            }
        }
        Ok(Forward { local, remote })
    }
}

/// Who signs attestation documents (`--enclave-attestation`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttestationMode {
    /// The Nitro Secure Module (`/dev/nsm`): production.
    Nsm,
    /// A throw-away test PKI kept in this directory (`insecure-test:<dir>`): PCR0 is the
    /// SHA-384 of the running executable. Off-enclave tests and demos only.
    InsecureTest(PathBuf),
    /// No attestation at all and plain KMS `Decrypt` (the plaintext travels in KMS's answer):
    /// for tests against KMS stand-ins that ignore `Recipient` (moto). Deliberately has no
    /// command-line form: it can only be set by code that builds a [`crate::Config`] itself.
    UnattestedPlainDecryptForTests,
}

impl FromStr for AttestationMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "nsm" {
            return Ok(AttestationMode::Nsm);
        }
        if let Some(dir) = s.strip_prefix("insecure-test:") {
            if dir.is_empty() {
                return Err("insecure-test:<dir> needs a directory".into());
            }
            return if cfg!(feature = "insecure-test-attestation") {
                Ok(AttestationMode::InsecureTest(PathBuf::from(dir)))
            } else {
                Err(NO_TEST_ATTESTOR.into())
            };
        }
        Err(format!("`{s}`: expected `nsm` or `insecure-test:<dir>`"))
    }
}

/// Why a build without cargo feature `insecure-test-attestation` (every default build, the
/// enclave image's among them) refuses `insecure-test:<dir>`, and where the tests' build is.
const NO_TEST_ATTESTOR: &str = "this build of ensign has no test attestor: production builds \
    leave out `insecure-test:<dir>` (attestation documents signed by a throw-away test PKI, which \
    prove nothing); for tests and demos only, build `ensign-insecure-test` with `cargo build \
    --release -p server --features insecure-test-attestation --bin ensign-insecure-test`";

/// Enclave mode's configuration (from the `--enclave-*` options).
#[derive(Clone, Debug)]
pub struct EnclaveConfig {
    pub control: Endpoint,
    pub data: Endpoint,
    pub forwards: Vec<Forward>,
    pub attestation: AttestationMode,
    /// Subject alternative names of the generated certificate.
    pub tls_names: Vec<String>,
    /// `--tls-*` client-certificate options (the server certificate options are refused).
    pub tls: crate::cli::TlsOptions,
    /// Where and how KMS is reached: fixed by the image's command line, never by `Init`.
    pub kms: KmsPin,
    /// `--enclave-allow-voluntary-exits`.
    pub allow_voluntary_exits: bool,
    /// `--enclave-development-mode`: clients without certificates and an unauthenticated
    /// database are allowed (with warnings).
    pub development: bool,
}

/// The KMS settings the image fixes (issue 15): the parent instance relays KMS's bytes but
/// chooses neither the endpoint, nor the roots its certificate must chain to, nor the key.
#[derive(Clone, Debug)]
pub struct KmsPin {
    /// The region of the endpoint; `Init` must name the same.
    pub region: AwsRegion,
    /// `https://…` only.
    pub endpoint: EndpointUrl,
    /// `--enclave-kms-ca-file`'s PEM (`None`: the image's CA bundle).
    pub roots_pem: Option<Vec<u8>>,
    /// `--enclave-kms-key-arn`: the only key records may be decrypted with.
    pub key_arn: Option<String>,
}

/// The region of a KMS key ARN (`arn:PARTITION:kms:REGION:ACCOUNT:key/ID`) and its partition's
/// DNS suffix.
fn kms_arn_region(arn: &str) -> Result<(String, &'static str), String> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let [arn_, partition, service, region, account, resource] = parts[..] else {
        return Err(format!(
            "`{arn}` is not an ARN (arn:aws:kms:REGION:ACCOUNT:key/ID)"
        ));
    };
    let suffix = match partition {
        "aws" | "aws-us-gov" => "amazonaws.com",
        "aws-cn" => "amazonaws.com.cn",
        _ => return Err(format!("`{arn}`: unknown partition `{partition}`")),
    };
    let ok = arn_ == "arn"
        && service == "kms"
        && !region.is_empty()
        && account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit())
        && resource
            .strip_prefix("key/")
            .is_some_and(|id| !id.is_empty());
    if !ok {
        return Err(format!(
            "`{arn}` is not a KMS key ARN (arn:aws:kms:REGION:ACCOUNT:key/ID; an alias can be \
             re-pointed by whoever may update it, so the image pins the key itself)"
        ));
    }
    Ok((region.to_string(), suffix))
}

impl KmsPin {
    fn from_cli(e: &crate::cli::EnclaveOptions) -> Result<KmsPin, String> {
        let from_arn = e
            .enclave_kms_key_arn
            .as_deref()
            .map(kms_arn_region)
            .transpose()
            .map_err(|m| format!("--enclave-kms-key-arn: {m}"))?;
        let (region, suffix) = match (&e.enclave_kms_region, from_arn) {
            (Some(r), Some((arn_region, _))) if *r != arn_region => {
                return Err(format!(
                    "--enclave-kms-region {r} differs from the region of --enclave-kms-key-arn \
                     ({arn_region})"
                ))
            }
            (_, Some((r, suffix))) => (r, suffix),
            (Some(r), None) => (r.clone(), "amazonaws.com"),
            (None, None) => {
                return Err("enclave mode needs --enclave-kms-key-arn (recommended) or \
                     --enclave-kms-region: the KMS endpoint is fixed by the enclave image, \
                     never chosen by the parent instance"
                    .into())
            }
        };
        let region = AwsRegion::try_from(region).map_err(|m| format!("KMS region: {m}"))?;
        let endpoint = e
            .enclave_kms_endpoint
            .clone()
            .unwrap_or_else(|| format!("https://kms.{}.{suffix}", region.as_str()));
        if !endpoint.starts_with("https://") {
            return Err(format!(
                "--enclave-kms-endpoint {endpoint}: must be https:// (TLS to KMS ends inside \
                 the enclave; over http:// the parent instance would read and answer KMS's \
                 traffic)"
            ));
        }
        let endpoint =
            EndpointUrl::try_from(endpoint).map_err(|m| format!("--enclave-kms-endpoint: {m}"))?;
        let roots_pem = match &e.enclave_kms_ca_file {
            None => None,
            Some(path) => {
                let pem = std::fs::read(path)
                    .map_err(|err| format!("--enclave-kms-ca-file {}: {err}", path.display()))?;
                if !pem
                    .windows(b"-----BEGIN CERTIFICATE-----".len())
                    .any(|w| w == b"-----BEGIN CERTIFICATE-----")
                {
                    return Err(format!(
                        "--enclave-kms-ca-file {}: no PEM certificate in it",
                        path.display()
                    ));
                }
                Some(pem)
            }
        };
        Ok(KmsPin {
            region,
            endpoint,
            roots_pem,
            key_arn: e.enclave_kms_key_arn.clone(),
        })
    }
}

impl EnclaveConfig {
    /// Checks the command line for enclave mode: key sources and a server certificate are
    /// refused (keys come from the host, the TLS key is made here).
    pub fn from_cli(
        global: &crate::cli::GlobalOptions,
        eth2: &crate::cli::Eth2Options,
    ) -> Result<EnclaveConfig, StartError> {
        let e = &global.enclave;
        let refused = [
            (global.key_store_path.is_some(), "--key-store-path"),
            (eth2.keystores_path.is_some(), "--keystores-path"),
            (eth2.aws.aws_secrets_enabled, "--aws-secrets-enabled"),
            (eth2.key_manager_api_enabled, "--key-manager-api-enabled"),
            (
                eth2.key_cache_secret_file.is_some(),
                "--key-cache-secret-file",
            ),
            (
                global.tls.tls_keystore_file.is_some(),
                "--tls-keystore-file",
            ),
            (global.tls.tls_cert_file.is_some(), "--tls-cert-file"),
            (global.tls.tls_key_file.is_some(), "--tls-key-file"),
        ];
        for (given, flag) in refused {
            if given {
                return Err(StartError::Config(format!(
                    "{flag} cannot be used with --enclave-mode=true: in enclave mode keys arrive \
                     encrypted from ensign-host and the TLS key is made inside the enclave"
                )));
            }
        }
        // (Two TCP port-0 endpoints are two different ports once bound.)
        let port_zero = matches!(&e.enclave_data_endpoint, Endpoint::Tcp { port: 0, .. });
        if e.enclave_control_endpoint == e.enclave_data_endpoint && !port_zero {
            return Err(StartError::Config(
                "--enclave-control-endpoint and --enclave-data-endpoint must differ: the data \
                 path must never reach the control protocol"
                    .into(),
            ));
        }
        // Client authentication (issue 15): the parent instance can always connect to the data
        // port, so an enclave that accepts any client signs for whoever runs on the host.
        let t = &global.tls;
        let authenticates = t.tls_known_clients_file.is_some() || t.tls_allow_ca_clients;
        if !authenticates && !e.enclave_development_mode {
            return Err(StartError::Config(
                "enclave mode requires client certificates: give --tls-known-clients-file or \
                 --tls-allow-ca-clients=true with --tls-ca-clients-file (files in the enclave \
                 image, so its measurement covers them); the parent instance can reach the \
                 data port, and would otherwise be a client like any other \
                 (--enclave-development-mode=true with --tls-allow-any-client=true lifts this \
                 for development)"
                    .into(),
            ));
        }
        if t.tls_allow_any_client && !e.enclave_development_mode {
            return Err(StartError::Config(
                "--tls-allow-any-client=true is refused in enclave mode outside \
                 --enclave-development-mode=true: the parent instance could sign"
                    .into(),
            ));
        }
        let kms = KmsPin::from_cli(e).map_err(StartError::Config)?;
        if e.enclave_tls_subject_alt_names
            .iter()
            .all(|n| n.trim().is_empty())
        {
            return Err(StartError::Config(
                "--enclave-tls-subject-alt-names must name at least one host".into(),
            ));
        }
        Ok(EnclaveConfig {
            control: e.enclave_control_endpoint.clone(),
            data: e.enclave_data_endpoint.clone(),
            forwards: e.enclave_forwards.clone(),
            attestation: e.enclave_attestation.clone(),
            tls_names: e
                .enclave_tls_subject_alt_names
                .iter()
                .map(|n| n.trim().to_string())
                .filter(|n| !n.is_empty())
                .collect(),
            tls: global.tls.clone(),
            kms,
            allow_voluntary_exits: e.enclave_allow_voluntary_exits,
            development: e.enclave_development_mode,
        })
    }
}

/// The TLS identity made at start: the certificate (public) and the hash the attestation
/// binds. The private key is only inside the rustls configuration.
#[derive(Debug, Clone)]
pub struct TlsIdentity {
    pub cert_der: Vec<u8>,
    pub cert_pem: String,
    /// SHA-256 of the certificate's SubjectPublicKeyInfo DER (the document's `user_data`).
    pub spki_sha256: [u8; 32],
}

/// SHA-256 of the DER SubjectPublicKeyInfo of a DER certificate (RFC 5280 §4.1.2.7): what an
/// enclave's attestation document carries as `user_data`, and what `verify-attestation`
/// recomputes from the certificate the TLS connection presented.
pub fn spki_sha256(cert_der: &[u8]) -> Result<[u8; 32], String> {
    let cert = x509_cert::Certificate::from_der(cert_der)
        .map_err(|e| format!("not a DER X.509 certificate: {e}"))?;
    let spki = cert
        .tbs_certificate()
        .subject_public_key_info()
        .to_der()
        .map_err(|e| format!("cannot encode the certificate's public key: {e}"))?;
    Ok(Sha256::digest(&spki).into())
}

/// Makes the enclave's TLS key (ECDSA P-256, from the OS RNG through ring) and a self-signed
/// certificate for `names`.
fn generate_tls(
    names: &[String],
) -> Result<(TlsIdentity, CertificateDer<'static>, PrivateKeyDer<'static>), String> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| format!("cannot make the TLS key: {e}"))?;
    let mut params = rcgen::CertificateParams::new(names.to_vec())
        .map_err(|e| format!("--enclave-tls-subject-alt-names: {e}"))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "ensign enclave");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params
        .self_signed(&key)
        .map_err(|e| format!("cannot make the TLS certificate: {e}"))?;
    let cert_der = cert.der().to_vec();
    let pkcs8 = Zeroizing::new(key.serialize_der());
    let identity = TlsIdentity {
        spki_sha256: spki_sha256(&cert_der)?,
        cert_pem: cert.pem(),
        cert_der: cert_der.clone(),
    };
    Ok((
        identity,
        CertificateDer::from(cert_der),
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8.to_vec())),
    ))
}

/// How key records are decrypted.
#[derive(Clone)]
enum Decrypt {
    /// KMS `Decrypt` with an attested `Recipient`.
    Attested(Arc<dyn Attestor>),
    /// Plain KMS `Decrypt` ([`AttestationMode::UnattestedPlainDecryptForTests`]).
    Plain,
}

/// State shared by the HTTP side (gate, health, attestation) and the control handler.
pub struct EnclaveShared {
    state: watch::Receiver<EnclaveState>,
    /// Whether the last `Init` failed (shared with the control handler, which sets it).
    last_init_failed: Arc<AtomicBool>,
    attestor: Option<Arc<dyn Attestor>>,
    pub tls: TlsIdentity,
    attest_slots: Semaphore,
    /// `--enclave-allow-voluntary-exits` (the sign handler refuses exits without it).
    pub allow_voluntary_exits: bool,
}

impl std::fmt::Debug for EnclaveShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnclaveShared")
            .field("state", &*self.state.borrow())
            .finish_non_exhaustive()
    }
}

impl EnclaveShared {
    /// Initialised (an `Init` succeeded).
    pub fn ready(&self) -> bool {
        *self.state.borrow() == EnclaveState::Ready
    }

    fn state_name(&self) -> &'static str {
        match &*self.state.borrow() {
            EnclaveState::WaitingForInit => "waiting-for-init",
            EnclaveState::Initialising => "initialising",
            EnclaveState::Ready => "ready",
            EnclaveState::Failed { .. } => "failed",
        }
    }

    /// The `/healthcheck` entry: the state and, until initialised, whether the last `Init`
    /// failed. Only that: the reason (KMS's messages name key ARNs and the account, the
    /// database's its user) goes to ensign-host in the control reply, not to every client of
    /// the data port (issue 15).
    pub fn health_entry(&self) -> Value {
        let ready = self.ready();
        let mut data = json!({"state": self.state_name()});
        if !ready && self.last_init_failed.load(Ordering::SeqCst) {
            data["last-init-error"] = json!(INIT_FAILED_PUBLIC);
        }
        json!({"id": "enclave", "status": if ready { "UP" } else { "DOWN" }, "data": data})
    }
}

/// Answers 503 for everything but [`SERVED_BEFORE_INIT`] until the enclave is initialised.
pub async fn gate(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(enclave) = &st.enclave {
        if !enclave.ready() && !SERVED_BEFORE_INIT.contains(&req.uri().path()) {
            return ApiError::EnclaveNotReady(format!(
                "the enclave is not initialised (state: {}); see /healthcheck",
                enclave.state_name()
            ))
            .into_response();
        }
    }
    next.run(req).await
}

/// The `nonce` of `?nonce=<hex>` (the only parameter; at most [`MAX_NONCE_LEN`] bytes).
fn parse_nonce(query: Option<&str>) -> Result<Option<Vec<u8>>, ApiError> {
    let bad = |m: &str| ApiError::Request(api_spec::Error::Malformed(m.to_string()));
    let mut nonce = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if name != "nonce" {
            return Err(bad("the only query parameter is nonce"));
        }
        if nonce.is_some() {
            return Err(bad("nonce given twice"));
        }
        let digits = value.strip_prefix("0x").unwrap_or(value);
        if digits.len() > 2 * MAX_NONCE_LEN {
            return Err(bad("nonce is longer than 64 bytes"));
        }
        let bytes = hex::decode(digits).map_err(|_| bad("nonce must be hex"))?;
        nonce = Some(bytes);
    }
    Ok(nonce.filter(|n| !n.is_empty()))
}

/// `GET /api/v1/attestation?nonce=<hex>`: an attestation document binding the TLS
/// certificate's public key (`user_data` = SHA-256 of its SPKI DER) and the nonce, with the
/// certificate. Served before `Init` too. 404 outside enclave mode.
pub async fn attestation(
    State(st): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let Some(enclave) = st.enclave.clone() else {
        return Err(ApiError::NotEnclaveMode);
    };
    let nonce = parse_nonce(query.as_deref())?;
    let Some(attestor) = enclave.attestor.clone() else {
        return Err(ApiError::Internal(
            "this enclave runs without an attestor (unattested test mode)".into(),
        ));
    };
    let _slot = enclave
        .attest_slots
        .acquire()
        .await
        .map_err(|_| ApiError::Internal("attestation closed".into()))?;
    let user_data = enclave.tls.spki_sha256;
    let document = tokio::task::spawn_blocking(move || {
        attestor.attest(Some(&user_data), nonce.as_deref(), None)
    })
    .await
    .map_err(|e| ApiError::Internal(format!("attestation task: {e}")))?
    .map_err(|e| ApiError::Internal(format!("attestation: {e}")))?;
    Ok(Json(json!({
        "attestation_document": base64::engine::general_purpose::STANDARD.encode(document),
        "certificate": enclave.tls.cert_pem,
    }))
    .into_response())
}

/// The control protocol's handler: turns key records into keys in the ring.
struct Handler {
    app: OnceLock<Weak<AppState>>,
    /// Whether the last `Init` failed, for `/healthcheck` (the reason goes to the host only).
    last_init_failed: Arc<AtomicBool>,
    decrypt: Decrypt,
    resolve_to: Option<IpAddr>,
    /// The image's KMS settings.
    kms: KmsPin,
    /// The KMS settings of the accepted `Init` (credentials replaced by RefreshCredentials).
    session: Mutex<Option<KmsClientConfig>>,
    /// Records that failed to load: id → reason (the health check's error count).
    failed: Mutex<BTreeMap<String, String>>,
    /// PostgreSQL slashing protection, opened at `Init` (`None`: SQLite, opened at start, or
    /// protection off).
    db: Option<Database>,
}

/// The PostgreSQL slashing database of an enclave (see the module docs).
struct Database {
    /// The image's configuration (a `StoreConfig::Postgres`). The user it names, if any, is the
    /// only one the host may send credentials for.
    configured: StoreConfig,
    /// `--enclave-development-mode`: a password in clear from the host is accepted.
    development: bool,
    /// What the signer uses; empty until `Init` opened it.
    store: Arc<DeferredStore>,
}

impl Database {
    /// The store configuration with the host's user and the password it delivered, if any, in
    /// place of the configured ones. (`slashing` sets them on the parsed connection
    /// configuration: nothing to encode.)
    fn config(&self, from_host: Option<(&str, &str)>) -> StoreConfig {
        let mut config = self.configured.clone();
        if let (
            Some((user, pw)),
            StoreConfig::Postgres {
                username, password, ..
            },
        ) = (from_host, &mut config)
        {
            *username = Some(user.to_owned());
            *password = Some(pw.to_owned());
        }
        config
    }
}

/// A slashing store opened after start: enclave mode's PostgreSQL store, which needs the
/// credentials `Init` brings. Every call goes to the store opened last; before the first, each
/// fails as a store fault (so nothing could be signed even past the gate). Replacing the store
/// leaves calls in flight on the old one, which is dropped with its last user.
pub struct DeferredStore {
    current: std::sync::RwLock<Option<Arc<dyn SlashingProtection>>>,
}

impl DeferredStore {
    fn new() -> Self {
        Self {
            current: std::sync::RwLock::new(None),
        }
    }

    fn store(&self) -> Result<Arc<dyn SlashingProtection>, slashing::Error> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| {
                slashing::Error::Store(
                    "the database is not open yet: the enclave opens it at Init, with the \
                     credentials ensign-host sends"
                        .into(),
                )
            })
    }

    /// Puts `store` in place; returns the previous one.
    fn replace(&self, store: Arc<dyn SlashingProtection>) -> Option<Arc<dyn SlashingProtection>> {
        self.current
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .replace(store)
    }
}

impl SlashingProtection for DeferredStore {
    fn decide(
        &self,
        gvr: slashing::Root,
        pubkey: slashing::Pubkey,
        check: slashing::Check,
        signing_root: slashing::Root,
    ) -> Result<slashing::Permit, slashing::Error> {
        self.store()?.decide(gvr, pubkey, check, signing_root)
    }

    fn submit(
        &self,
        gvr: slashing::Root,
        pubkey: slashing::Pubkey,
        check: slashing::Check,
        signing_root: slashing::Root,
    ) -> Option<slashing::PendingVerdict> {
        // Not open: `None` sends the caller to `decide`, which reports why.
        self.store().ok()?.submit(gvr, pubkey, check, signing_root)
    }

    fn health_check(&self) -> Result<(), slashing::Error> {
        self.store()?.health_check()
    }

    fn high_watermark(&self) -> Result<Option<slashing::HighWatermark>, slashing::Error> {
        self.store()?.high_watermark()
    }

    fn set_high_watermark(
        &self,
        hw: Option<slashing::HighWatermark>,
    ) -> Result<(), slashing::Error> {
        self.store()?.set_high_watermark(hw)
    }

    fn import_interchange(&self, json: &str) -> Result<slashing::ImportSummary, slashing::Error> {
        self.store()?.import_interchange(json)
    }

    fn export_interchange(&self) -> Result<String, slashing::Error> {
        self.store()?.export_interchange()
    }

    fn genesis_validators_root(&self) -> Result<Option<slashing::Root>, slashing::Error> {
        self.store()?.genesis_validators_root()
    }

    fn pin_genesis_validators_root(&self, gvr: slashing::Root) -> Result<(), slashing::Error> {
        self.store()?.pin_genesis_validators_root(gvr)
    }

    fn set_validator_enabled(
        &self,
        pubkey: slashing::Pubkey,
        enabled: bool,
    ) -> Result<(), slashing::Error> {
        self.store()?.set_validator_enabled(pubkey, enabled)
    }

    fn prune(
        &self,
        epochs_to_keep: u64,
        slots_per_epoch: u64,
    ) -> Result<slashing::PruneSummary, slashing::Error> {
        self.store()?.prune(epochs_to_keep, slots_per_epoch)
    }
}

/// One record's outcome.
type Loaded = Result<(String, ValidatorKey), KeyFailure>;

impl Handler {
    /// Opens the PostgreSQL slashing store with `credentials` (or the configured ones) and puts
    /// it in place of the current one. Without PostgreSQL there is nothing to open. A password
    /// arrives KMS-encrypted for this image and is decrypted here with `kms` (the session's
    /// settings); one in clear only in development mode (issue 15).
    async fn open_database(
        &self,
        credentials: Option<&DatabaseCredentials>,
        kms: Option<&KmsClientConfig>,
    ) -> Result<(), HandlerError> {
        let Some(db) = &self.db else {
            if credentials.is_some() {
                tracing::warn!("database credentials received, but slashing protection is not PostgreSQL: ignored");
            }
            return Ok(());
        };
        if let (Some(c), Some(pinned)) = (credentials, db.configured.configured_user()) {
            if c.username != pinned {
                return Err(HandlerError::new(format!(
                    "the database credentials from ensign-host are for user {}, but this \
                     enclave's image names user {pinned}: refused (the parent instance must not \
                     choose whose tables the enclave reads)",
                    c.username
                )));
            }
        }
        let password: Option<Zeroizing<String>> = match credentials {
            None => None,
            Some(c) => match &c.password {
                DatabasePassword::Plain(_) if !db.development => {
                    return Err(HandlerError::new(DB_PASSWORD_IN_CLEAR))
                }
                DatabasePassword::Plain(p) => Some(Zeroizing::new(p.expose().to_owned())),
                DatabasePassword::Encrypted(blob) => {
                    let kms = kms.ok_or_else(|| {
                        HandlerError::new(
                            "no KMS session to decrypt the database password: Init first",
                        )
                    })?;
                    Some(self.decrypt_db_password(kms, &c.username, blob).await?)
                }
            },
        };
        let from_host = match (credentials, &password) {
            (Some(c), Some(p)) => Some((c.username.as_str(), p.as_str())),
            _ => None,
        };
        let config = db.config(from_host);
        let user = match (credentials, db.configured.configured_user()) {
            (Some(c), _) => format!("user {} from ensign-host", c.username),
            (None, Some(u)) => format!("user {u}"),
            (None, None) => "the URL's user".to_string(),
        };
        let store = db.store.clone();
        // Connecting and migrating block; the replaced store's connections are closed here too,
        // on a blocking thread (never on the reactor).
        let opened = tokio::task::spawn_blocking(move || {
            let opened = slashing::open(&config)?;
            drop(store.replace(opened));
            Ok::<(), slashing::Error>(())
        })
        .await
        .map_err(|_| HandlerError::new("opening the slashing protection database aborted"))?;
        match opened {
            Ok(()) => {
                tracing::info!("slashing protection database (PostgreSQL) opened with {user}");
                Ok(())
            }
            Err(e) => {
                let mut reason =
                    format!("the slashing protection database cannot be opened with {user}: {e}");
                // PostgreSQL's messages do not echo passwords; make sure of it.
                if let Some(p) = &password {
                    if !p.is_empty() && reason.contains(p.as_str()) {
                        reason = reason.replace(p.as_str(), "<redacted>");
                    }
                }
                Err(HandlerError::new(reason))
            }
        }
    }

    /// Decrypts the database password `ensign database provision` encrypted for this image. Its
    /// encryption context must name its purpose and `user` (KMS binds both to the ciphertext,
    /// so neither a key record nor another role's password can stand in for it); the image's
    /// pinned KMS key is used. After KMS answered, every failure is [`DB_PASSWORD_UNUSABLE`].
    async fn decrypt_db_password(
        &self,
        config: &KmsClientConfig,
        user: &str,
        blob: &EncryptedBlob,
    ) -> Result<Zeroizing<String>, HandlerError> {
        use crate::key_records::{CONTEXT_DB_USER, CONTEXT_PURPOSE, PURPOSE_DB_PASSWORD};
        self.check_key_id("the database password", blob.kms_key_id.as_deref())
            .map_err(HandlerError::new)?;
        let context = &blob.encryption_context;
        if context.get(CONTEXT_PURPOSE).map(String::as_str) != Some(PURPOSE_DB_PASSWORD)
            || context.get(CONTEXT_DB_USER).map(String::as_str) != Some(user)
        {
            return Err(HandlerError::new(format!(
                "the database password's encryption context must be {{{CONTEXT_PURPOSE}: \
                 {PURPOSE_DB_PASSWORD}, {CONTEXT_DB_USER}: {user}}} (`ensign database \
                 provision` makes it so)"
            )));
        }
        let decryptor = self.decryptor(config).await?;
        let got = decryptor
            .decrypt(DecryptRequest {
                ciphertext: &blob.ciphertext.0,
                key_id: self.kms.key_arn.as_deref().or(blob.kms_key_id.as_deref()),
                encryption_context: Some(context),
            })
            .await;
        match got {
            Ok(plain) => std::str::from_utf8(plain.expose())
                .ok()
                .filter(|p| (16..=1024).contains(&p.len()))
                .map(|p| Zeroizing::new(p.to_owned()))
                .ok_or_else(|| HandlerError::new(DB_PASSWORD_UNUSABLE)),
            Err(e) if e.after_answer() => Err(HandlerError::new(DB_PASSWORD_UNUSABLE)),
            Err(e) => Err(HandlerError::new(format!(
                "the database password could not be decrypted: {e}"
            ))),
        }
    }

    fn app(&self) -> Result<Arc<AppState>, HandlerError> {
        self.app
            .get()
            .and_then(Weak::upgrade)
            .ok_or_else(|| HandlerError::new("the signer is shutting down"))
    }

    fn decryptor(
        &self,
        config: &KmsClientConfig,
    ) -> impl std::future::Future<Output = Result<Arc<dyn KeyDecryptor>, HandlerError>> + Send + 'static
    {
        let client = kms_client(config);
        let decrypt = self.decrypt.clone();
        async move {
            match decrypt {
                Decrypt::Plain => {
                    Ok(Arc::new(PlainDecryptor::new(client)) as Arc<dyn KeyDecryptor>)
                }
                Decrypt::Attested(attestor) => {
                    // Cheap: each `decrypt` makes its own RSA key, on a blocking thread.
                    let d = RecipientDecryptor::new(client, attestor)
                        .map_err(|e| HandlerError::new(e.to_string()))?;
                    Ok(Arc::new(d) as Arc<dyn KeyDecryptor>)
                }
            }
        }
    }

    /// The KMS key a ciphertext (`what`) names, if any, must be the one the image pins, if it
    /// pins one (issue 15).
    fn check_key_id(&self, what: &str, named: Option<&str>) -> Result<(), String> {
        match (&self.kms.key_arn, named) {
            (Some(pinned), Some(named)) if named != pinned => Err(format!(
                "{what} names KMS key {named}; this enclave decrypts only with {pinned} \
                 (--enclave-kms-key-arn)"
            )),
            _ => Ok(()),
        }
    }

    /// Checks a record before anything is sent to KMS: the key it names (if the image pins
    /// one) and its encryption context's public key (required: it is checked against the
    /// decrypted key). These reasons carry only what the host sent.
    fn precheck(&self, record: &EncryptedKeyRecord) -> Result<[u8; 48], String> {
        self.check_key_id("the record", record.kms_key_id.as_deref())?;
        let context = record
            .encryption_context
            .get(crate::key_records::CONTEXT_PUBKEY)
            .ok_or_else(|| {
                format!(
                    "the record has no `{}` encryption context (records made by `ensign keys \
                     encrypt` have it; it is checked against the decrypted key)",
                    crate::key_records::CONTEXT_PUBKEY
                )
            })?;
        let pubkey = parse_identifier(context).ok_or_else(|| {
            format!(
                "the record's `{}` encryption context is not a public key",
                crate::key_records::CONTEXT_PUBKEY
            )
        })?;
        if let Some(labelled) = &record.pubkey {
            if parse_identifier(labelled) != Some(pubkey) {
                return Err(format!(
                    "the record is labelled {labelled} but its encryption context names {context}"
                ));
            }
        }
        Ok(pubkey)
    }

    /// Decrypts every record (KMS, then the keystore), a few at a time. Once KMS proved
    /// unreachable and nothing succeeded, the rest fail at once with the same reason (a
    /// thousand records must not take a thousand timeouts). Once a record fails after KMS
    /// answered (its plaintext, or the envelope holding it, did not check out), it gets
    /// [`RECORD_UNUSABLE`] and no further record of the batch is sent to KMS: nothing that
    /// depends on a plaintext is ever told apart to the host, and a host that tampers with
    /// answers gets one try per batch.
    async fn load(
        &self,
        config: &KmsClientConfig,
        records: &[EncryptedKeyRecord],
    ) -> Result<Vec<Loaded>, HandlerError> {
        if records.is_empty() {
            return Ok(vec![]);
        }
        let decryptor = self.decryptor(config).await?;
        let kms_slots = Arc::new(Semaphore::new(KMS_CONCURRENCY));
        // Memory budget for concurrent scrypt derivations, in MiB (as the keystore loader).
        let budget_mib =
            (keystore::default_max_kdf_memory() >> 20).clamp(1, u32::MAX as u64) as u32;
        let kdf_slots = Arc::new(Semaphore::new(budget_mib as usize));
        let unreachable: Arc<Mutex<Option<String>>> = Arc::default();
        let any_ok = Arc::new(AtomicBool::new(false));
        let stopped = Arc::new(AtomicBool::new(false));
        let key_id = self.kms.key_arn.clone();
        let mut tasks = tokio::task::JoinSet::new();
        for (i, record) in records.iter().cloned().enumerate() {
            let (decryptor, kms_slots, kdf_slots) =
                (decryptor.clone(), kms_slots.clone(), kdf_slots.clone());
            let (unreachable, any_ok, stopped) =
                (unreachable.clone(), any_ok.clone(), stopped.clone());
            let key_id = key_id.clone();
            let expected = self.precheck(&record);
            tasks.spawn(async move {
                let fail = |reason: String| KeyFailure {
                    id: record.id.clone(),
                    reason,
                };
                let unusable = || {
                    stopped.store(true, Ordering::SeqCst);
                    fail(RECORD_UNUSABLE.into())
                };
                let expected = match expected {
                    Ok(pk) => pk,
                    Err(reason) => return (i, Err(fail(reason))),
                };
                // Held until the plaintext is parsed, so that a batch stops within
                // KMS_CONCURRENCY records of an unusable one.
                let slot = kms_slots.acquire().await.expect("never closed");
                let plaintext = {
                    if stopped.load(Ordering::SeqCst) {
                        return (i, Err(fail(BATCH_STOPPED.into())));
                    }
                    if !any_ok.load(Ordering::Relaxed) {
                        if let Some(why) = unreachable
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .clone()
                        {
                            return (i, Err(fail(format!("not attempted: {why}"))));
                        }
                    }
                    let got = decryptor
                        .decrypt(DecryptRequest {
                            ciphertext: &record.ciphertext.0,
                            // The image's key when it pins one (issue 15), else the record's.
                            key_id: key_id.as_deref().or(record.kms_key_id.as_deref()),
                            encryption_context: Some(&record.encryption_context),
                        })
                        .await;
                    match got {
                        Ok(p) => p,
                        // KMS answered, and what it answered did not open: the envelope
                        // depends on the plaintext.
                        Err(e) if e.after_answer() => return (i, Err(unusable())),
                        Err(e) => {
                            if matches!(e, KmsError::Transport(_)) {
                                unreachable
                                    .lock()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .get_or_insert_with(|| e.to_string());
                            }
                            return (i, Err(fail(e.to_string())));
                        }
                    }
                };
                let parsed = RecordPlaintext::parse(plaintext.expose())
                    .and_then(|r| r.keystore().map(|k| (r, k)));
                drop(plaintext);
                // (`unusable()` marks the batch stopped before `slot` is released.)
                let Ok((record_plain, ks)) = parsed else {
                    return (i, Err(unusable()));
                };
                drop(slot);
                let mib = ((ks.kdf_memory() >> 20) as u32).clamp(1, budget_mib);
                let _mem = kdf_slots.acquire_many(mib).await.expect("never closed");
                let key = tokio::task::spawn_blocking(move || record_plain.decrypt(&ks)).await;
                let Ok(Ok(key)) = key else {
                    return (i, Err(unusable()));
                };
                // The key KMS bound the ciphertext to (its encryption context) must be the key
                // inside: a record cannot pass for another validator's.
                if key.pubkey() != expected {
                    return (i, Err(unusable()));
                }
                any_ok.store(true, Ordering::Relaxed);
                (i, Ok((record.id.clone(), key)))
            });
        }
        let mut out: Vec<Option<Loaded>> = (0..records.len()).map(|_| None).collect();
        while let Some(done) = tasks.join_next().await {
            let (i, outcome) = done.map_err(|_| HandlerError::new("a key task died"))?;
            out[i] = Some(outcome);
        }
        Ok(out
            .into_iter()
            .map(|o| o.expect("every task answered"))
            .collect())
    }

    /// Puts loaded keys into the ring (copy and swap) and records failures; returns the
    /// report.
    fn apply(&self, outcomes: Vec<Loaded>) -> Result<KeysReport, HandlerError> {
        let app = self.app()?;
        let mut report = KeysReport::default();
        let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        let mut next: KeyRing = (*app.keyring()).clone();
        for outcome in outcomes {
            match outcome {
                Ok((id, key)) => {
                    let pubkey = hex0x(&key.pubkey());
                    if !next.insert(Arc::new(key)) {
                        tracing::info!(key = %pubkey, "key already loaded");
                    } else {
                        tracing::info!(key = %pubkey, "key loaded from the host's record");
                    }
                    failed.remove(&id);
                    report.loaded.push(id);
                }
                Err(f) => {
                    tracing::warn!(record = %f.id, reason = %f.reason, "key record not loaded");
                    failed.insert(f.id.clone(), f.reason.clone());
                    report.failed.push(f);
                }
            }
        }
        next.sources = vec![SourceReport {
            id: SOURCE_ID,
            keys_loaded: next.len(),
            error_count: failed.len(),
        }];
        app.set_keyring(next);
        Ok(report)
    }

    /// The KMS client settings for an `Init`: the image's endpoint, roots and region; the
    /// host supplies only credentials. An `Init` that tries to choose the endpoint, or names
    /// another region, is refused (issue 15: an endpoint of the host's choosing would hand it
    /// the enclave's KMS traffic).
    fn config_for(&self, request: &InitRequest) -> Result<KmsClientConfig, HandlerError> {
        if let Some(url) = &request.kms_endpoint {
            return Err(HandlerError::new(format!(
                "Init names a KMS endpoint ({}), but this enclave's endpoint is fixed by its \
                 image ({}); send Init without kms_endpoint",
                url.as_str(),
                self.kms.endpoint.as_str()
            )));
        }
        if request.region != self.kms.region {
            return Err(HandlerError::new(format!(
                "Init names region {}, but this enclave's KMS is in {} (fixed by its image)",
                request.region.as_str(),
                self.kms.region.as_str()
            )));
        }
        Ok(KmsClientConfig {
            region: self.kms.region.clone(),
            credentials: request.credentials.clone(),
            endpoint_url: Some(self.kms.endpoint.clone()),
            resolve_to: self.resolve_to,
            trust_roots_pem: self.kms.roots_pem.clone(),
        })
    }

    async fn init_inner(&self, request: InitRequest) -> Result<KeysReport, HandlerError> {
        if request.tls.is_some() {
            return Err(HandlerError::new(
                "Init carries a TLS key, but this enclave makes its own (it never leaves the enclave)",
            ));
        }
        check_not_expired(&request.credentials)?;
        let config = self.config_for(&request)?;
        // Before any key: a signer that cannot record what it signs must not serve.
        self.open_database(request.database.as_ref(), Some(&config))
            .await?;
        tracing::info!(records = request.keys.len(), region = %request.region,
            access_key_id = %request.credentials.access_key_id, "Init: decrypting key records");
        let outcomes = self.load(&config, &request.keys).await?;
        let total = outcomes.len();
        let loaded = outcomes.iter().filter(|o| o.is_ok()).count();
        if total > 0 && loaded == 0 {
            let first = outcomes
                .iter()
                .find_map(|o| o.as_ref().err())
                .map(|f| f.reason.clone())
                .unwrap_or_default();
            return Err(HandlerError::new(format!(
                "no key could be loaded ({total} of {total} records failed); first failure: {first}"
            )));
        }
        let report = self.apply(outcomes)?;
        *self.session.lock().unwrap_or_else(|p| p.into_inner()) = Some(config);
        Ok(report)
    }
}

/// Refuses credentials already past their expiry (KMS would answer `ExpiredTokenException`
/// for each record; saying so once is clearer).
fn check_not_expired(credentials: &AwsCredentials) -> Result<(), HandlerError> {
    if let Some(expiry) = credentials.expiration {
        let now = enclave_bridge::kms::unix_seconds(SystemTime::now());
        if expiry <= now {
            return Err(HandlerError::new(format!(
                "the AWS credentials (access key {}) expired at {expiry} (seconds since the \
                 epoch, now {now}): credentials expired; the host must send fresh ones",
                credentials.access_key_id
            )));
        }
    }
    Ok(())
}

impl ControlHandler for Handler {
    async fn init(&self, request: InitRequest) -> Result<KeysReport, HandlerError> {
        // The previous error stays visible in /healthcheck while this attempt runs.
        let outcome = self.init_inner(request).await;
        if outcome.is_ok() {
            self.last_init_failed.store(false, Ordering::SeqCst);
        }
        match &outcome {
            Ok(report) => tracing::info!(
                loaded = report.loaded.len(),
                failed = report.failed.len(),
                "enclave initialised"
            ),
            Err(e) => {
                tracing::error!(reason = %e, "Init failed; the data port stays closed");
                self.last_init_failed.store(true, Ordering::SeqCst);
            }
        }
        outcome
    }

    async fn add_keys(&self, request: AddKeysRequest) -> Result<KeysReport, HandlerError> {
        let config = self
            .session
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| HandlerError::new("no KMS session (Init first)"))?;
        check_not_expired(&config.credentials)?;
        tracing::info!(
            records = request.keys.len(),
            "AddKeys: decrypting key records"
        );
        let outcomes = self.load(&config, &request.keys).await?;
        self.apply(outcomes)
    }

    async fn remove_keys(&self, request: RemoveKeysRequest) -> Result<RemoveReport, HandlerError> {
        let app = self.app()?;
        let mut next: KeyRing = (*app.keyring()).clone();
        let mut report = RemoveReport::default();
        let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        for given in request.pubkeys {
            match parse_identifier(&given) {
                Some(pk) => {
                    failed.retain(|id, _| parse_identifier(id) != Some(pk));
                    if next.remove(&pk) {
                        tracing::info!(key = %hex0x(&pk), "key removed at the host's request");
                        report.removed.push(given);
                    } else {
                        report.not_found.push(given);
                    }
                }
                None => report.not_found.push(given),
            }
        }
        next.sources = vec![SourceReport {
            id: SOURCE_ID,
            keys_loaded: next.len(),
            error_count: failed.len(),
        }];
        app.set_keyring(next);
        Ok(report)
    }

    async fn refresh_credentials(&self, credentials: AwsCredentials) -> Result<(), HandlerError> {
        check_not_expired(&credentials)?;
        let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let Some(config) = session.as_mut() else {
            return Err(HandlerError::new("no KMS session (Init first)"));
        };
        tracing::info!(access_key_id = %credentials.access_key_id, "AWS credentials refreshed");
        // The next batch builds its client from these.
        config.credentials = credentials;
        Ok(())
    }

    async fn refresh_database_credentials(
        &self,
        credentials: DatabaseCredentials,
    ) -> Result<(), HandlerError> {
        // On failure the current store stays in use (its pool keeps the connections it has).
        let kms = self
            .session
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        self.open_database(Some(&credentials), kms.as_ref()).await
    }
}

/// The parts of enclave mode made before the HTTP server starts.
pub struct Prepared {
    pub shared: Arc<EnclaveShared>,
    /// With PostgreSQL slashing protection: the store the signer uses, opened at `Init`.
    pub slashing: Option<Arc<dyn SlashingProtection>>,
    /// TLS with the key made here.
    pub tls: Arc<rustls::ServerConfig>,
    pub data_listener: Listener,
    /// The forwarders' tasks.
    pub tasks: Vec<JoinHandle<()>>,
    /// The endpoints actually bound (with the port picked for 0).
    pub control_endpoint: Endpoint,
    pub data_endpoint: Endpoint,
    pub control: ControlParts,
}

/// The control server, not yet serving.
pub struct ControlParts {
    handler: Arc<Handler>,
    server: ControlServer<Handler>,
    listener: Listener,
}

impl ControlParts {
    /// Connects the handler to the running signer's state and serves the control endpoint;
    /// returns the task. The handler holds the state weakly, so stopping the HTTP server
    /// still releases it (and the slashing store) as it does outside enclave mode.
    pub fn start(self, state: &Arc<AppState>) -> JoinHandle<()> {
        let _ = self.handler.app.set(Arc::downgrade(state));
        let (server, listener) = (self.server, self.listener);
        tokio::spawn(async move { server.serve(listener, std::future::pending()).await })
    }
}

/// SHA-384 of the running executable: the insecure-test attestor's PCR0, the nearest
/// off-enclave analogue of an image measurement.
#[cfg(feature = "insecure-test-attestation")]
fn executable_sha384() -> Result<[u8; 48], String> {
    let path = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut file = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut h = sha2::Sha384::new();
    std::io::copy(&mut file, &mut h).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(h.finalize().into())
}

fn attestor(mode: &AttestationMode) -> Result<Decrypt, StartError> {
    match mode {
        AttestationMode::Nsm => {
            let nsm = enclave_bridge::attestation::NsmAttestor::open().map_err(|e| {
                StartError::Config(format!(
                    "--enclave-attestation nsm: {e}; off-enclave, use insecure-test:<dir> (tests and demos only)"
                ))
            })?;
            tracing::info!("attestation by the Nitro Secure Module");
            Ok(Decrypt::Attested(Arc::new(nsm)))
        }
        #[cfg(feature = "insecure-test-attestation")]
        AttestationMode::InsecureTest(dir) => {
            use enclave_bridge::test_util::{TestAttestor, TestPki};
            let pki = TestPki::load_or_generate(dir).map_err(|e| {
                StartError::Config(format!(
                    "insecure-test attestation PKI in {}: {e}",
                    dir.display()
                ))
            })?;
            let pcr0 = executable_sha384().map_err(|e| {
                StartError::Config(format!("cannot measure the executable for PCR0: {e}"))
            })?;
            for line in [
                "INSECURE: --enclave-attestation insecure-test: attestation documents are signed by a THROW-AWAY TEST PKI, not the Nitro Secure Module",
                "INSECURE: they prove nothing about this process; real KMS refuses them; NEVER use this outside tests and demos",
            ] {
                tracing::warn!("{line}");
            }
            tracing::warn!(root = %dir.join(enclave_bridge::test_util::TEST_ROOT_FILE).display(),
                pcr0 = %hex::encode(pcr0), "INSECURE test attestation root and PCR0 (SHA-384 of this executable)");
            Ok(Decrypt::Attested(Arc::new(TestAttestor::new(
                Arc::new(pki),
                pcr0,
            ))))
        }
        #[cfg(not(feature = "insecure-test-attestation"))]
        AttestationMode::InsecureTest(_) => Err(StartError::Config(NO_TEST_ATTESTOR.into())),
        AttestationMode::UnattestedPlainDecryptForTests => {
            for _ in 0..3 {
                tracing::warn!("INSECURE: enclave mode WITHOUT attestation, plain KMS Decrypt (the plaintext crosses the host): test builds only");
            }
            Ok(Decrypt::Plain)
        }
    }
}

/// Starts the forwarders, the attestor, the TLS identity, and binds both endpoints. A
/// PostgreSQL `slashing` store is not opened here but at `Init` ([`Prepared::slashing`]).
pub async fn prepare(
    config: &EnclaveConfig,
    slashing: Option<&StoreConfig>,
) -> Result<Prepared, StartError> {
    tracing::info!(control = %config.control, data = %config.data, "starting in ENCLAVE MODE");
    // The parent instance relays the database's bytes: without server authentication it
    // could read them, or answer "not slashable" in the database's place. SQLite lives in the
    // enclave's memory and is lost when it restarts (a restarted enclave would not know what
    // it signed). Both only in development (issue 15).
    let unsafe_store = match slashing {
        Some(StoreConfig::Sqlite { .. }) => Some(
            "SQLite slashing protection in an enclave lives in the enclave's memory: its \
             history is lost when the enclave restarts",
        ),
        Some(s) if !s.server_authenticated() => Some(
            "the slashing protection database is not authenticated (PostgreSQL without \
             sslmode=verify-full and sslrootcert in the image): the parent instance relaying \
             its traffic could read it or answer in its place",
        ),
        _ => None,
    };
    if let Some(why) = unsafe_store {
        if !config.development {
            return Err(StartError::Config(format!(
                "{why}; enclave mode refuses it (see docs/deploy-aws.md; \
                 --enclave-development-mode=true allows it for development)"
            )));
        }
        tracing::warn!("INSECURE (development mode): {why}");
    }
    if config.development {
        tracing::warn!(
            "INSECURE: --enclave-development-mode=true: clients without certificates and an \
             unauthenticated slashing database are allowed; never in production"
        );
    }
    let mut tasks = Vec::new();
    for f in &config.forwards {
        let listener = f.local.bind().await.map_err(|source| StartError::Bind {
            addr: f.local.to_string(),
            source,
        })?;
        tracing::info!(local = %f.local, remote = %f.remote, "enclave forwarder");
        let fwd = Forwarder::new(listener, f.remote.clone(), ForwardLimits::default());
        tasks.push(tokio::spawn(fwd.run(std::future::pending())));
    }
    let decrypt = attestor(&config.attestation)?;
    let attestor_for_http = match &decrypt {
        Decrypt::Attested(a) => Some(a.clone()),
        Decrypt::Plain => None,
    };

    let (identity, cert, key) = generate_tls(&config.tls_names).map_err(StartError::Config)?;
    // No default to "any client" here: `from_cli` made sure clients are authenticated (or
    // development mode allows --tls-allow-any-client=true).
    let tls = crate::tls::server_config_with_key(&config.tls, vec![cert], key)
        .map_err(|e| StartError::Config(e.to_string()))?;
    tracing::info!(
        fingerprint = %crate::tls::fingerprint_hex(&crate::tls::fingerprint(&identity.cert_der)),
        names = ?config.tls_names,
        "TLS key made inside the enclave (certificate SHA-256 fingerprint; verify it with ensign verify-attestation)"
    );

    let resolve_to = (!config.forwards.is_empty()).then_some(IpAddr::from([127, 0, 0, 1]));
    let control_listener = config
        .control
        .bind()
        .await
        .map_err(|source| StartError::Bind {
            addr: config.control.to_string(),
            source,
        })?;
    let data_listener = config
        .data
        .bind()
        .await
        .map_err(|source| StartError::Bind {
            addr: config.data.to_string(),
            source,
        })?;
    let bound = |l: &Listener, ep: &Endpoint| {
        l.local_endpoint().map_err(|source| StartError::Bind {
            addr: ep.to_string(),
            source,
        })
    };
    let control_endpoint = bound(&control_listener, &config.control)?;
    let data_endpoint = bound(&data_listener, &config.data)?;

    let db = match slashing {
        Some(store @ StoreConfig::Postgres { .. }) => {
            tracing::info!("slashing protection: PostgreSQL, opened at Init (with the credentials ensign-host sends, if any)");
            Some(Database {
                configured: store.clone(),
                development: config.development,
                store: Arc::new(DeferredStore::new()),
            })
        }
        _ => None,
    };
    let deferred = db
        .as_ref()
        .map(|d| d.store.clone() as Arc<dyn SlashingProtection>);

    // The control server owns the enclave's state; the HTTP side watches it.
    let last_init_failed: Arc<AtomicBool> = Arc::default();
    let handler = Arc::new(Handler {
        app: OnceLock::new(),
        last_init_failed: last_init_failed.clone(),
        decrypt,
        resolve_to,
        kms: config.kms.clone(),
        session: Mutex::new(None),
        failed: Mutex::new(BTreeMap::new()),
        db,
    });
    let server =
        ControlServer::with_shared_handler(handler.clone(), ControlServerConfig::default());
    let shared = Arc::new(EnclaveShared {
        state: server.subscribe(),
        last_init_failed,
        attestor: attestor_for_http,
        tls: identity,
        attest_slots: Semaphore::new(ATTEST_CONCURRENCY),
        allow_voluntary_exits: config.allow_voluntary_exits,
    });
    Ok(Prepared {
        shared,
        slashing: deferred,
        tls,
        data_listener,
        tasks,
        control_endpoint,
        data_endpoint,
        control: ControlParts {
            handler,
            server,
            listener: control_listener,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kms_key_arns_give_their_region_and_partition() {
        let ok = |arn: &str| kms_arn_region(arn).unwrap();
        assert_eq!(
            ok("arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"),
            ("eu-west-1".to_string(), "amazonaws.com")
        );
        assert_eq!(
            ok("arn:aws-cn:kms:cn-north-1:111122223333:key/x"),
            ("cn-north-1".to_string(), "amazonaws.com.cn")
        );
        for bad in [
            "alias/validators",
            "arn:aws:kms:eu-west-1:111122223333:alias/validators",
            "arn:aws:s3:eu-west-1:111122223333:key/x",
            "arn:aws:kms::111122223333:key/x",
            "arn:aws:kms:eu-west-1:1111:key/x",
            "arn:aws:kms:eu-west-1:111122223333:key/",
            "arn:other:kms:eu-west-1:111122223333:key/x",
        ] {
            assert!(kms_arn_region(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn init_credentials_replace_the_configured_ones() {
        let url = "postgresql://postgres@127.0.0.1:5432/ensign?options=-c%20search_path%3Dx";
        let db = Database {
            configured: StoreConfig::Postgres {
                url: url.into(),
                username: Some("from_cli".into()),
                password: Some("cli-password".into()),
                timeout: slashing::DEFAULT_POSTGRES_TIMEOUT,
                schema: Some("ensign".into()),
            },
            development: false,
            store: Arc::new(DeferredStore::new()),
        };
        assert_eq!(
            db.config(None),
            StoreConfig::Postgres {
                url: url.into(),
                username: Some("from_cli".into()),
                password: Some("cli-password".into()),
                timeout: slashing::DEFAULT_POSTGRES_TIMEOUT,
                schema: Some("ensign".into()),
            }
        );
        // Set as connection parameters, not spliced into the URL: no encoding to get wrong.
        assert_eq!(
            db.config(Some(("from_host", "p@ss:w/rd%?#&="))),
            StoreConfig::Postgres {
                url: url.into(),
                username: Some("from_host".into()),
                password: Some("p@ss:w/rd%?#&=".into()),
                timeout: slashing::DEFAULT_POSTGRES_TIMEOUT,
                schema: Some("ensign".into()),
            }
        );
    }

    #[test]
    fn a_deferred_store_refuses_until_opened_then_delegates() {
        let store = DeferredStore::new();
        let (gvr, pubkey) = (slashing::Root([1; 32]), slashing::Pubkey([2; 48]));
        let vote = slashing::Check::Attestation {
            source_epoch: 1,
            target_epoch: 2,
        };
        let e = store.health_check().unwrap_err();
        assert!(e.to_string().contains("not open yet"), "{e}");
        assert!(store
            .submit(gvr, pubkey, vote, slashing::Root([3; 32]))
            .is_none());
        let e = store
            .decide(gvr, pubkey, vote, slashing::Root([3; 32]))
            .unwrap_err();
        assert!(matches!(e, slashing::Error::Store(_)), "{e}");

        let dir = std::env::temp_dir().join(format!(
            "ensign-deferred-store-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let opened = slashing::open(&StoreConfig::Sqlite {
            path: dir.join("sp.sqlite"),
            init: false,
        })
        .unwrap();
        assert!(store.replace(opened).is_none());
        store.health_check().unwrap();
        store
            .decide(gvr, pubkey, vote, slashing::Root([3; 32]))
            .unwrap();
        let double = store
            .decide(gvr, pubkey, vote, slashing::Root([4; 32]))
            .unwrap_err();
        assert!(double.is_refusal(), "{double}");
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn rand_suffix() -> u128 {
        SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    }
}
