//! The `ensign` signer: command line, configuration, HTTP server.
//!
//! Purpose: wire the leaf crates together — `api-spec` (requests and signing roots),
//! `keystore` (keys), `slashing` (protection) — behind Web3Signer's eth2 HTTP API.
//!
//! Invariants:
//! - A block or attestation signature is released only after `slashing` has durably
//!   recorded it (see `app::sign`); with protection enabled there is no other path.
//! - BLS signing (the signing pool's threads) and database calls (SQLite's writer thread,
//!   PostgreSQL on blocking threads) never run on the async reactor.
//! - Errors become HTTP statuses in exactly one place (`error.rs`); secret keys never reach
//!   a log line, an error body or a `Debug` output (keys are `keystore::ValidatorKey`, whose
//!   `Debug` is redacted).
//! - The signing API and the metrics listener are served by `conn` (hyper HTTP/1.1, optionally
//!   TLS configured by `tls`), which bounds what one client can hold: connections (reclaimed
//!   from clients that send nothing when the cap is reached), head size, head, body, handshake
//!   and idle time.

pub mod app;
pub mod cli;
pub mod cli_sources;
pub mod config;
pub mod conn;
pub mod db_provision;
pub mod enclave;
pub mod error;
pub mod key_records;
pub mod keymanager;
pub mod keys;
pub mod metrics;
pub mod state;
pub mod tls;
pub mod verify_attestation;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use slashing::{SlashingProtection, StoreConfig};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use crate::config::{store_config, Config, Pruning};
use crate::keys::KeyRing;

/// The signing API's listener, as connection log lines name it.
const API_LISTENER: &str = "signing API (--http-max-connections)";

/// File name of the embedded slashing-protection database under `--data-path`.
pub const SQLITE_FILE: &str = "slashing-protection.sqlite";

/// Failures before the server serves: each is a clear message and a non-zero exit
/// ([`StartError::exit_code`]).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The command line does not make a working setup (`Config::from_cli`, `store_config`).
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// Enclave mode cannot start here (attestor, TLS key, an unsafe slashing store).
    #[error(transparent)]
    Enclave(#[from] enclave::PrepareError),
    #[error(transparent)]
    File(#[from] FileError),
    /// A start-up step run on its own thread (opening the store, loading keys) panicked.
    #[error("{step}: {source}")]
    Aborted {
        step: &'static str,
        source: tokio::task::JoinError,
    },
    /// The async runtime could not be made, or the server ended with an I/O error.
    #[error("{what}: {source}")]
    Runtime {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("slashing protection database: {0}")]
    Slashing(#[from] slashing::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
}

/// A file or directory that could not be created, read or written, by path.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot create {}: {source}", path.display())]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl FileError {
    /// For `map_err`: `std::fs::create_dir_all(dir).map_err(FileError::create(dir))`.
    pub fn create(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> FileError + '_ {
        move |source| FileError::Create {
            path: path.to_path_buf(),
            source,
        }
    }

    pub fn read(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> FileError + '_ {
        move |source| FileError::Read {
            path: path.to_path_buf(),
            source,
        }
    }

    pub fn write(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> FileError + '_ {
        move |source| FileError::Write {
            path: path.to_path_buf(),
            source,
        }
    }
}

impl StartError {
    /// The process's exit status: 3 when the slashing history is at risk (an operator must
    /// decide: restore the database, or start anew on purpose), 1 for a store that fails
    /// otherwise or an address that cannot be bound, 2 for everything else (what the operator
    /// configured cannot work).
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::Slashing(slashing::Error::HistoryAtRisk(_)) => 3,
            StartError::Slashing(_) | StartError::Bind { .. } => 1,
            StartError::Config(_)
            | StartError::Enclave(_)
            | StartError::File(_)
            | StartError::Aborted { .. }
            | StartError::Runtime { .. } => 2,
        }
    }
}

/// Raises the soft open-file limit so that `max_connections` connections fit next to the
/// database, key files and metrics listener; warns when the hard limit does not allow it.
/// (Many systems start services with a soft limit of 1024, the default connection cap.)
#[cfg(unix)]
fn ensure_fd_limit(max_connections: usize) {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    /// Descriptors kept for everything but client connections.
    const RESERVE: u64 = 256;
    let want = (max_connections as u64).saturating_add(RESERVE);
    let limit = getrlimit(Resource::Nofile);
    let Some(soft) = limit.current else {
        return; // unlimited
    };
    if soft >= want {
        return;
    }
    let target = limit.maximum.map_or(want, |hard| hard.min(want));
    let now = if target > soft
        && setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(target),
                maximum: limit.maximum,
            },
        )
        .is_ok()
    {
        target
    } else {
        soft
    };
    if now < want {
        tracing::warn!(
            open_file_limit = now,
            max_connections,
            "the open-file limit leaves little room beyond --http-max-connections: lower it \
             or raise the limit (ulimit -n, systemd LimitNOFILE)"
        );
    }
}

#[cfg(not(unix))]
fn ensure_fd_limit(_max_connections: usize) {}

/// A running server.
pub struct Running {
    /// The address actually bound (useful with port 0).
    pub addr: SocketAddr,
    /// The metrics listener's address, when enabled.
    pub metrics_addr: Option<SocketAddr>,
    shutdown: Option<oneshot::Sender<()>>,
    join: JoinHandle<std::io::Result<()>>,
    /// Tasks that live as long as the server (pruning, the metrics listener).
    background: Vec<JoinHandle<()>>,
    /// Enclave mode: the endpoints bound (with the ports picked for 0).
    pub enclave: Option<EnclaveEndpoints>,
}

/// Where an enclave-mode signer listens.
#[derive(Debug, Clone)]
pub struct EnclaveEndpoints {
    pub control: enclave_bridge::Endpoint,
    pub data: enclave_bridge::Endpoint,
}

impl Running {
    /// Stops accepting, finishes in-flight requests, and waits for the server task.
    pub async fn stop(mut self) -> std::io::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        // They hold the store (and with SQLite its exclusive lock): end them with the server.
        for task in self.background.drain(..) {
            task.abort();
        }
        self.join.await.map_err(std::io::Error::other)?
    }
}

/// Loads keys, opens slashing protection, binds and starts serving.
pub async fn start(config: Config) -> Result<Running, StartError> {
    // Enclave mode: forwarders first (the slashing database may be reached through one), then
    // the attestor, the TLS key, and both endpoints.
    let prepared = match &config.enclave {
        Some(e) => Some(enclave::prepare(e, config.slashing.as_ref()).await?),
        None => None,
    };
    // In enclave mode the database is reached through the parent instance, the attacker
    // (issue 15): the enclave also keeps what it signed since start in memory and refuses what
    // conflicts with it, whatever the database answers (`slashing::MemoryWitness`). PostgreSQL
    // is opened at Init, with the host's credentials: `prepare` made that witness, empty.
    let opened_at_init = prepared.as_ref().and_then(|p| p.slashing.clone());
    let slashing: Option<Arc<dyn SlashingProtection>> = match config.slashing.clone() {
        Some(_) if opened_at_init.is_some() => opened_at_init,
        Some(store) => {
            let opened = tokio::task::spawn_blocking(move || slashing::open(&store))
                .await
                .map_err(|source| StartError::Aborted {
                    step: "opening slashing protection",
                    source,
                })??;
            Some(if config.enclave.is_some() {
                Arc::new(slashing::MemoryWitness::new(opened))
            } else {
                opened
            })
        }
        None => {
            tracing::warn!("slashing protection is DISABLED: slashable messages will be signed");
            None
        }
    };
    let mut background = vec![];
    if let (Some(sp), Some(pruning)) = (slashing.clone(), config.pruning) {
        background.push(tokio::spawn(prune_periodically(sp, pruning)));
    }
    for dir in [
        Some(&config.data_path),
        config.keys.key_manager_dir.as_ref(),
    ]
    .into_iter()
    .flatten()
    {
        std::fs::create_dir_all(dir).map_err(FileError::create(dir))?;
    }
    let token = if config.keys.key_manager_dir.is_some() {
        Some(keymanager::load_or_create_token(&config.data_path)?)
    } else {
        None
    };
    let metrics_addr = match &config.metrics {
        Some(addr) => {
            let (bound, task) = metrics::serve(addr, config.limits)
                .await
                .map_err(|source| StartError::Bind {
                    addr: addr.clone(),
                    source,
                })?;
            background.push(task);
            Some(bound)
        }
        None => {
            metrics::install();
            None
        }
    };
    let sources = config.keys.clone();
    let keys = tokio::task::spawn_blocking(move || KeyRing::load(&sources))
        .await
        .map_err(|source| StartError::Aborted {
            step: "loading keys",
            source,
        })?;
    tracing::info!(keys = keys.len(), network = %config.network.name, "ready to sign");

    // What serves the signing API: the enclave's data endpoint, or a TCP listener bound here.
    enum Front {
        Enclave(Box<enclave::Prepared>),
        Tcp(TcpListener),
    }
    let (front, local) = match prepared {
        Some(p) => {
            let local = enclave_socket_addr(&p.data_endpoint);
            (Front::Enclave(Box::new(p)), local)
        }
        None => {
            let addr = format!("{}:{}", config.listen_host, config.listen_port);
            let listener = TcpListener::bind(&addr)
                .await
                .map_err(|source| StartError::Bind {
                    addr: addr.clone(),
                    source,
                })?;
            let local = listener
                .local_addr()
                .map_err(|source| StartError::Bind { addr, source })?;
            (Front::Tcp(listener), local)
        }
    };
    // Enclave mode's state: the routes read it through `EnclaveStatus`; its own two handlers
    // (gate, attestation) take it whole.
    let enclave = match &front {
        Front::Enclave(p) => Some(p.shared.clone()),
        Front::Tcp(_) => None,
    };
    let state = Arc::new(state::AppState {
        network: config.network,
        keys: {
            ::metrics::gauge!("signing_signers_loaded_count").set(keys.len() as f64);
            std::sync::RwLock::new(Arc::new(keys))
        },
        sources: config.keys,
        reload: std::sync::Mutex::new(state::ReloadState::default()),
        slashing,
        host_allowlist: config.host_allowlist,
        signer: keys::SigningPool::new(std::thread::available_parallelism().map_or(1, |n| n.get())),
        key_manager_token: token,
        in_flight: Arc::new(tokio::sync::Semaphore::new(config.max_in_flight_signing)),
        enclave: enclave.clone().map(|e| e as Arc<dyn state::EnclaveStatus>),
    });
    let router = app::router(state.clone(), enclave);
    ensure_fd_limit(config.limits.max_connections);
    let (tx, rx) = oneshot::channel::<()>();
    let shutdown = async move {
        let _ = rx.await;
    };
    let (join, enclave_endpoints) = match front {
        Front::Enclave(p) => {
            let p = *p;
            let acceptor = tokio_rustls::TlsAcceptor::from(p.tls.clone());
            background.extend(p.tasks);
            background.push(p.control.start(&state));
            tracing::info!(control = %p.control_endpoint,
                "enclave control endpoint listening (ensign-host sends Init here)");
            let join = tokio::spawn(conn::serve(
                p.data_listener,
                Some(acceptor),
                router,
                config.limits,
                API_LISTENER,
                shutdown,
            ));
            // The harness and operators read the address from this line.
            match &p.data_endpoint {
                enclave_bridge::Endpoint::Tcp { .. } => {
                    tracing::info!(data = %p.data_endpoint, "listening on https://{local} (enclave data endpoint; closed until Init)")
                }
                other => tracing::info!(
                    "listening on https (enclave data endpoint {other}; closed until Init)"
                ),
            }
            let endpoints = EnclaveEndpoints {
                control: p.control_endpoint,
                data: p.data_endpoint,
            };
            (join, Some(endpoints))
        }
        Front::Tcp(listener) => {
            let scheme = if config.tls.is_some() {
                "https"
            } else {
                "http"
            };
            let acceptor = config.tls.map(tokio_rustls::TlsAcceptor::from);
            let join = tokio::spawn(conn::serve(
                listener,
                acceptor,
                router,
                config.limits,
                API_LISTENER,
                shutdown,
            ));
            // The harness and operators read the chosen port from this line (port 0 picks one).
            tracing::info!("listening on {scheme}://{local}");
            (join, None)
        }
    };
    drop(state);
    Ok(Running {
        addr: local,
        metrics_addr,
        shutdown: Some(tx),
        join,
        background,
        enclave: enclave_endpoints,
    })
}

/// The socket address of a TCP data endpoint (`0.0.0.0:0` for vsock and Unix endpoints,
/// which have none).
fn enclave_socket_addr(ep: &enclave_bridge::Endpoint) -> SocketAddr {
    match ep {
        enclave_bridge::Endpoint::Tcp { host, port } => host
            .parse::<std::net::IpAddr>()
            .map(|ip| SocketAddr::new(ip, *port))
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0))),
        _ => SocketAddr::from(([0, 0, 0, 0], 0)),
    }
}

/// `ensign eth2 export --to FILE`.
pub fn export(store: &StoreConfig, to: &PathBuf) -> Result<usize, StartError> {
    let sp = slashing::open(store)?;
    let json = sp.export_interchange()?;
    std::fs::write(to, &json).map_err(FileError::write(to))?;
    Ok(json.len())
}

/// `ensign eth2 import --from FILE`.
pub fn import(store: &StoreConfig, from: &PathBuf) -> Result<slashing::ImportSummary, StartError> {
    let json = std::fs::read_to_string(from).map_err(FileError::read(from))?;
    let sp = slashing::open(store)?;
    Ok(sp.import_interchange(&json)?)
}

/// Runs pruning every `interval` (first run at start-up when `at_boot`). A failed run is
/// logged and retried at the next interval: pruning only ever deletes below a raised low
/// watermark, so a missed run costs disk space, never safety.
async fn prune_periodically(sp: Arc<dyn SlashingProtection>, p: Pruning) {
    let mut first = true;
    loop {
        if !first || p.at_boot {
            let sp = sp.clone();
            match tokio::task::spawn_blocking(move || sp.prune(p.epochs_to_keep, p.slots_per_epoch))
                .await
            {
                Ok(Ok(summary)) => tracing::info!(?summary, "slashing protection pruned"),
                Ok(Err(e)) => tracing::warn!(error = %e, "slashing protection pruning failed"),
                Err(e) => tracing::error!(error = %e, "slashing protection pruning task failed"),
            }
        }
        first = false;
        tokio::time::sleep(p.interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_tell_configuration_from_history_at_risk() {
        let configuration = StartError::from(config::ConfigError::NotPositive("--x"));
        assert_eq!(configuration.exit_code(), 2);
        let create = StartError::from(FileError::create(std::path::Path::new("/x"))(
            std::io::ErrorKind::PermissionDenied.into(),
        ));
        assert_eq!(create.exit_code(), 2);
        let at_risk = StartError::from(slashing::Error::HistoryAtRisk("gone".into()));
        assert_eq!(at_risk.exit_code(), 3);
        let store = StartError::from(slashing::Error::Open("locked".into()));
        assert_eq!(store.exit_code(), 1);
    }
}
