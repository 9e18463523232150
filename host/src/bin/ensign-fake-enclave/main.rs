//! `ensign-fake-enclave`: a stand-in enclave for `ensign-host`'s tests and
//! for trying the host by hand (this crate's feature `test-util`; never part
//! of a production build). It is shaped like the real one:
//!
//! - a [`ControlServer`] on `--control-listen` whose handler decrypts each
//!   record with a [`RecipientDecryptor`] over a [`TestAttestor`] (PCR0 from
//!   `--pcr0`, documents chaining to the test PKI in `--test-pki`, written by
//!   [`TestPki::to_bytes`]);
//! - its KMS client resolves every name to loopback, where a forwarder pipes
//!   to the host's KMS proxy (`--kms-proxy`, as the real enclave pipes
//!   loopback to `vsock:3:8000`); TLS/HTTP still name the KMS host of `Init`;
//! - a data port (`--data-listen`, forwarded to a loopback HTTP server):
//!   `GET /upcheck` always; `GET /keys` only once initialised, answering
//!   `{"pid", "keys": {id: sha256(plaintext) hex}, "access_key_id",
//!   "credential_refreshes"}` so tests can check what was decrypted without
//!   the plaintext leaving the process.
//!
//! An `Init` whose keys all fail is refused with the first failure (fail
//! closed), so a wrong PCR0 shows up as a refused `Init` on the host.
//! Endpoints default to the variables `ensign-host --run-command` sets. The
//! process exits when `ENSIGN_HOST_PID` no longer runs.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use clap::Parser;
use enclave_bridge::control::{
    AddKeysRequest, AwsCredentials, AwsRegion, ControlHandler, ControlServer, ControlServerConfig,
    EnclaveState, EncryptedKeyRecord, EndpointUrl, HandlerError, InitRequest, KeyFailure,
    KeysReport, RemoveKeysRequest, RemoveReport,
};
use enclave_bridge::forward::{ForwardLimits, Forwarder};
use enclave_bridge::kms::{
    kms_client, DecryptRequest, KeyDecryptor, KmsClientConfig, RecipientDecryptor,
};
use enclave_bridge::test_util::{TestAttestor, TestPki};
use enclave_bridge::transport::Endpoint;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

#[derive(Debug, Parser)]
#[command(name = "ensign-fake-enclave")]
struct Args {
    #[arg(long, env = "ENSIGN_ENCLAVE_CONTROL_ENDPOINT")]
    control_listen: Endpoint,
    #[arg(long, env = "ENSIGN_ENCLAVE_DATA_ENDPOINT")]
    data_listen: Endpoint,
    /// The host's KMS proxy.
    #[arg(long, env = "ENSIGN_HOST_KMS_PROXY")]
    kms_proxy: Endpoint,
    /// A file written by `TestPki::to_bytes`.
    #[arg(long)]
    test_pki: PathBuf,
    /// This image's PCR0, 96 hex digits.
    #[arg(long)]
    pcr0: String,
    #[arg(long, env = "ENSIGN_HOST_PID")]
    host_pid: Option<i32>,
}

#[derive(Default)]
struct Held {
    /// id → SHA-256 of the plaintext, hex. The plaintext itself is dropped
    /// (zeroized) at once.
    keys: BTreeMap<String, String>,
    kms: Option<KmsClientConfig>,
    credential_refreshes: u64,
}

struct Enclave {
    attestor: TestAttestor,
    kms_local_port: u16,
    held: Mutex<Held>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex48(s: &str) -> Option<[u8; 48]> {
    let s = s.strip_prefix("0x").unwrap_or(s);
    if s.len() != 96 {
        return None;
    }
    let mut out = [0u8; 48];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Scheme and host of a URL (`https://kms.x.amazonaws.com:443/` →
/// `("https", "kms.x.amazonaws.com")`).
fn scheme_and_host(url: &str) -> (&str, &str) {
    let (scheme, rest) = url.split_once("://").unwrap_or(("https", url));
    let authority = rest.split('/').next().unwrap_or(rest);
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or(v6)
    } else {
        authority.split(':').next().unwrap_or(authority)
    };
    (scheme, host)
}

impl Enclave {
    fn kms_config(
        &self,
        region: &AwsRegion,
        credentials: AwsCredentials,
        endpoint: Option<&EndpointUrl>,
    ) -> KmsClientConfig {
        let default_host = format!("kms.{region}.amazonaws.com");
        let (scheme, host) = match endpoint {
            Some(url) => scheme_and_host(url.as_str()),
            None => ("https", default_host.as_str()),
        };
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        let url = format!("{scheme}://{host}:{}", self.kms_local_port);
        KmsClientConfig {
            region: region.clone(),
            credentials,
            endpoint_url: Some(EndpointUrl::try_from(url).expect("a valid URL")),
            resolve_to: Some("127.0.0.1".parse().expect("an IP")),
            trust_roots_pem: None,
        }
    }

    async fn decrypt_all(
        &self,
        config: &KmsClientConfig,
        keys: &[EncryptedKeyRecord],
    ) -> Result<KeysReport, HandlerError> {
        let mut report = KeysReport::default();
        if keys.is_empty() {
            return Ok(report);
        }
        let client = kms_client(config);
        let attestor = self.attestor.clone();
        let decryptor =
            tokio::task::spawn_blocking(move || RecipientDecryptor::new(client, attestor))
                .await
                .map_err(|_| HandlerError::new("key generation aborted"))?
                .map_err(|e| HandlerError::new(e.to_string()))?;
        for key in keys {
            let outcome = decryptor.decrypt(DecryptRequest::from(key)).await;
            match outcome {
                Ok(secret) => {
                    let digest = hex(&Sha256::digest(secret.expose()));
                    self.held
                        .lock()
                        .expect("lock")
                        .keys
                        .insert(key.id.clone(), digest);
                    report.loaded.push(key.id.clone());
                }
                Err(e) => report.failed.push(KeyFailure {
                    id: key.id.clone(),
                    reason: e.to_string(),
                }),
            }
        }
        Ok(report)
    }
}

impl ControlHandler for Enclave {
    async fn init(&self, request: InitRequest) -> Result<KeysReport, HandlerError> {
        let config = self.kms_config(
            &request.region,
            request.credentials.clone(),
            request.kms_endpoint.as_ref(),
        );
        let report = self.decrypt_all(&config, &request.keys).await?;
        if !request.keys.is_empty() && report.loaded.is_empty() {
            // Fail closed: an enclave that can decrypt nothing is not ready.
            let first = report
                .failed
                .first()
                .map_or("no reason given", |f| f.reason.as_str());
            return Err(HandlerError::new(format!(
                "none of the {} keys could be decrypted: {first}",
                request.keys.len()
            )));
        }
        let mut held = self.held.lock().expect("lock");
        held.kms = Some(config);
        tracing::info!(
            loaded = report.loaded.len(),
            failed = report.failed.len(),
            "fake enclave initialised"
        );
        Ok(report)
    }

    async fn add_keys(&self, request: AddKeysRequest) -> Result<KeysReport, HandlerError> {
        let config = self
            .held
            .lock()
            .expect("lock")
            .kms
            .clone()
            .ok_or_else(|| HandlerError::new("not initialised"))?;
        self.decrypt_all(&config, &request.keys).await
    }

    async fn remove_keys(&self, request: RemoveKeysRequest) -> Result<RemoveReport, HandlerError> {
        let mut held = self.held.lock().expect("lock");
        let mut report = RemoveReport::default();
        for pk in request.pubkeys {
            if held.keys.remove(&pk).is_some() {
                report.removed.push(pk);
            } else {
                report.not_found.push(pk);
            }
        }
        Ok(report)
    }

    async fn refresh_credentials(&self, credentials: AwsCredentials) -> Result<(), HandlerError> {
        let mut held = self.held.lock().expect("lock");
        let kms = held
            .kms
            .as_mut()
            .ok_or_else(|| HandlerError::new("not initialised"))?;
        kms.credentials = credentials;
        held.credential_refreshes += 1;
        Ok(())
    }
}

#[derive(Clone)]
struct Http {
    enclave: Arc<Enclave>,
    state: watch::Receiver<EnclaveState>,
}

async fn upcheck() -> &'static str {
    "OK"
}

async fn keys(State(http): State<Http>) -> Response {
    if *http.state.borrow() != EnclaveState::Ready {
        return (StatusCode::SERVICE_UNAVAILABLE, "not initialised").into_response();
    }
    let held = http.enclave.held.lock().expect("lock");
    axum::Json(serde_json::json!({
        "pid": std::process::id(),
        "keys": held.keys,
        "access_key_id": held.kms.as_ref().map(|k| k.credentials.access_key_id.clone()),
        "credential_refreshes": held.credential_refreshes,
    }))
    .into_response()
}

async fn bind(ep: &Endpoint) -> std::io::Result<enclave_bridge::Listener> {
    if let Endpoint::Unix(path) = ep {
        // A socket left by a previous (killed) instance of this process.
        let _ = std::fs::remove_file(path);
    }
    ep.bind().await
}

async fn run(args: Args) -> Result<(), String> {
    let pki = std::fs::read(&args.test_pki)
        .map_err(|e| format!("cannot read {}: {e}", args.test_pki.display()))
        .and_then(|b| TestPki::from_bytes(&b))?;
    let pcr0 = unhex48(&args.pcr0).ok_or("--pcr0 must be 96 hex digits")?;

    // Loopback → the host's KMS proxy.
    let kms_listener = bind(&"tcp:127.0.0.1:0".parse().expect("endpoint"))
        .await
        .map_err(|e| e.to_string())?;
    let kms_local_port = match kms_listener.local_endpoint().map_err(|e| e.to_string())? {
        Endpoint::Tcp { port, .. } => port,
        other => return Err(format!("unexpected {other}")),
    };
    tokio::spawn(
        Forwarder::new(
            kms_listener,
            args.kms_proxy.clone(),
            ForwardLimits::default(),
        )
        .run(std::future::pending()),
    );

    let enclave = Arc::new(Enclave {
        attestor: TestAttestor::new(Arc::new(pki), pcr0),
        kms_local_port,
        held: Mutex::default(),
    });
    let server =
        ControlServer::with_shared_handler(enclave.clone(), ControlServerConfig::default());

    let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let http_addr = http_listener.local_addr().map_err(|e| e.to_string())?;
    let app = Router::new()
        .route("/upcheck", get(upcheck))
        .route("/keys", get(keys))
        .with_state(Http {
            enclave: enclave.clone(),
            state: server.subscribe(),
        });
    tokio::spawn(async move {
        let _ = axum::serve(http_listener, app).await;
    });

    let data = bind(&args.data_listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.data_listen))?;
    tokio::spawn(
        Forwarder::new(data, http_addr.into(), ForwardLimits::default())
            .run(std::future::pending()),
    );
    let control = bind(&args.control_listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.control_listen))?;
    tracing::info!(pid = std::process::id(), control = %args.control_listen,
        data = %args.data_listen, kms_proxy = %args.kms_proxy, "fake enclave listening");
    tokio::spawn(async move { server.serve(control, std::future::pending()).await });

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    let host_gone = async {
        let Some(pid) = args.host_pid else {
            return std::future::pending().await;
        };
        let pid = nix::unistd::Pid::from_raw(pid);
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if nix::sys::signal::kill(pid, None).is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("fake enclave: SIGTERM"),
        () = host_gone => tracing::info!("fake enclave: the host is gone"),
    }
    Ok(())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ensign-fake-enclave: {e}");
            ExitCode::FAILURE
        }
    }
}
