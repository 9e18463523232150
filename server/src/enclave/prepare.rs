use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock};

use enclave_bridge::control::{ControlServer, ControlServerConfig};
use enclave_bridge::forward::{ForwardLimits, Forwarder};
use enclave_bridge::{Endpoint, Listener};
use slashing::{SlashingProtection, StoreConfig};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use super::control::{Database, Decrypt, Handler};
use super::http::EnclaveShared;
use super::identity::generate_tls;
use super::identity::IdentityError;
use super::ATTEST_CONCURRENCY;
use crate::config::{AttestationMode, EnclaveConfig};
use crate::state::AppState;
use crate::tls::TlsError;
use crate::StartError;

/// Why enclave mode cannot start with this configuration on this machine (exit 2, as any
/// configuration error).
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// No Nitro Secure Module: not inside an enclave.
    #[error(
        "--enclave-attestation nsm: {0}; off-enclave, use insecure-test:<dir> (tests and demos only)"
    )]
    Nsm(enclave_bridge::attestation::AttestationError),
    #[error("insecure-test attestation PKI in {}: {source}", dir.display())]
    TestPki {
        dir: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot measure the executable for PCR0: {0}")]
    FindExecutable(std::io::Error),
    #[error("cannot measure the executable for PCR0: {}: {source}", path.display())]
    MeasureExecutable {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{}", crate::config::NO_TEST_ATTESTOR)]
    NoTestAttestor,
    /// A slashing store whose history the enclave cannot trust, outside development mode.
    #[error(
        "{0}; enclave mode refuses it (see docs/deploy-aws.md; \
         --enclave-development-mode=true allows it for development)"
    )]
    UnsafeStore(&'static str),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// The parts of enclave mode made before the HTTP server starts.
pub struct Prepared {
    pub shared: Arc<EnclaveShared>,
    /// With PostgreSQL slashing protection: the witness the signer uses, its store opened at
    /// `Init`.
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
fn executable_sha384() -> Result<[u8; 48], PrepareError> {
    use sha2::Digest;
    let path = std::env::current_exe().map_err(PrepareError::FindExecutable)?;
    let mut h = sha2::Sha384::new();
    std::fs::File::open(&path)
        .and_then(|mut file| std::io::copy(&mut file, &mut h))
        .map_err(|source| PrepareError::MeasureExecutable {
            path: path.clone(),
            source,
        })?;
    Ok(h.finalize().into())
}

fn attestor(mode: &AttestationMode) -> Result<Decrypt, PrepareError> {
    match mode {
        AttestationMode::Nsm => {
            let nsm =
                enclave_bridge::attestation::NsmAttestor::open().map_err(PrepareError::Nsm)?;
            tracing::info!("attestation by the Nitro Secure Module");
            Ok(Decrypt::Attested(Arc::new(nsm)))
        }
        #[cfg(feature = "insecure-test-attestation")]
        AttestationMode::InsecureTest(dir) => {
            use enclave_bridge::test_util::{TestAttestor, TestPki};
            let pki = TestPki::load_or_generate(dir).map_err(|source| PrepareError::TestPki {
                dir: dir.clone(),
                source,
            })?;
            let pcr0 = executable_sha384()?;
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
        AttestationMode::InsecureTest(_) => Err(PrepareError::NoTestAttestor),
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
            return Err(PrepareError::UnsafeStore(why).into());
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

    let (identity, cert, key) = generate_tls(&config.tls_names).map_err(PrepareError::from)?;
    // No default to "any client" here: `from_cli` made sure clients are authenticated (or
    // development mode allows --tls-allow-any-client=true).
    let tls = crate::tls::server_config_with_key(&config.tls, vec![cert], key)
        .map_err(PrepareError::from)?;
    tracing::info!(
        fingerprint = %crate::tls::fingerprint_hex(&crate::tls::fingerprint(&identity.cert_der)),
        names = ?config.tls_names,
        "TLS key made inside the enclave (certificate SHA-256 fingerprint; verify it with ensign verify-attestation)"
    );

    let resolve_to = (!config.forwards.is_empty()).then_some(IpAddr::from([127, 0, 0, 1]));
    let bind = async |ep: &Endpoint| {
        ep.bind().await.map_err(|source| StartError::Bind {
            addr: ep.to_string(),
            source,
        })
    };
    let control_listener = bind(&config.control).await?;
    let data_listener = bind(&config.data).await?;
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
                // The witness (see `lib.rs`'s start) with no store until Init opens one: it keeps
                // what was signed across the stores Init and RefreshDatabaseCredentials open.
                store: Arc::new(slashing::MemoryWitness::unopened(Default::default())),
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
