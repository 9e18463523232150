//! `ensign-host`: the parent-instance half of enclave mode. A crate of its own
//! so the enclave side (`server`) builds without the supervisor and without the
//! DynamoDB, Secrets Manager and credential-chain crates of the AWS SDK; what
//! both sides share (protocol, transport, proxies, attestation, KMS, key
//! records) is `enclave_bridge`.
//!
//! # What it does
//!
//! ```text
//!   validator clients / NLB                      parent instance                         enclave
//!   ─────────────────────────►  --listen (TCP) ──Forwarder──►  data endpoint (vsock CID:5000)
//!                                  supervisor  ──ControlClient──► control endpoint (vsock CID:5001)
//!   KMS (kms.<region>…:443) ◄── OutboundProxy ◄── kms proxy (vsock any:8000) ◄── enclave's KMS client
//!   PostgreSQL (--db-endpoint) ◄ OutboundProxy ◄── db proxy (vsock any:5432) ◄── enclave's DB client
//! ```
//!
//! - **Data path** ([`enclave_bridge::forward::Forwarder`]): every TCP connection on
//!   `--listen` is piped, bytes unseen, to the enclave's data endpoint. Before
//!   the enclave is initialised that endpoint serves only upcheck, health and
//!   the attestation endpoint (the enclave's rule); the host never pipes anything to the control endpoint —
//!   the configuration refuses a data endpoint equal to the control endpoint.
//! - **Outbound proxies** ([`enclave_bridge::proxy::OutboundProxy`]): one listener for
//!   KMS (`kms.<region>.amazonaws.com:443`, or `--kms-endpoint`) and, with
//!   `--db-endpoint`, one for PostgreSQL; the allowlist is exactly those
//!   destinations.
//! - **Supervisor** ([`supervisor::Supervisor`]): starts the enclave
//!   (`nitro-cli run-enclave`, or `--run-command` off-enclave), waits for its
//!   control port with bounded, backed-off retries, sends `Init` with the key
//!   records ([`keys`]) and instance-role credentials ([`credentials`]), then
//!   polls `Status`, refreshes credentials before they expire, and reconciles
//!   the key source with what the enclave holds (`AddKeys` / `RemoveKeys`) —
//!   every `--poll-interval-secs` and at once on `SIGHUP`. A dead, unreachable
//!   or failed enclave is terminated, restarted and initialised again, with
//!   backoff.
//! - **Database credentials** ([`db_secret`], `--db-secret-arn`): the slashing
//!   database's user and password, read from Secrets Manager with the host's
//!   credentials, go to the enclave in `Init` (no `Init` without them when the
//!   option is set); the secret is re-read at every poll and on `SIGHUP`, and
//!   a changed value is delivered (`RefreshDatabaseCredentials`).
//!
//! # Invariant: the host never holds key material
//!
//! The host moves **ciphertext only**. Key records are KMS ciphertexts; KMS
//! decrypts them only for the attested enclave (`Recipient`), and the answer
//! is encrypted to a key that exists only inside the enclave. Control replies
//! carry ids, counts and reasons, never plaintext. The only secrets the host
//! handles are the instance role's AWS credentials, which it passes to the
//! enclave (for its KMS calls) in zeroizing, `Debug`-redacted types and never
//! logs. The same holds for the slashing database's password
//! (`--db-secret-arn`): the host reads it and passes it on, never logs it
//! (only the user name and the secret's ARN appear in logs). Data-path and
//! proxy bytes are TLS end to end and are not inspected.
//!
//! # Key records
//!
//! One record per validator key, in the format of [`enclave_bridge::records`] (JSON files under
//! `--keys-dir`, not starting with `.`, at most 64 KiB; or DynamoDB items under `--keys-table`,
//! read with a consistent `Scan` to the end). The public key is the record's identity (the `id`
//! and `pubkey` sent to the enclave, what `RemoveKeys` names); two records with one key: the first
//! (by file name) wins and the other is reported. A record that cannot be read is logged and
//! skipped; removals are made only from a listing without such problems, so a half-written file
//! or a malformed item never unloads a key, and a listing that fails as a whole changes nothing.
//!
//! # `--run-command`
//!
//! Off-enclave (tests, development) the host runs `sh -c '<cmd>'` as "the
//! enclave", in a process group of its own (terminated with `SIGTERM`, then
//! `SIGKILL`), with these variables set so it can find its endpoints:
//! `ENSIGN_ENCLAVE_CONTROL_ENDPOINT` and `ENSIGN_ENCLAVE_DATA_ENDPOINT` (where
//! the enclave listens), `ENSIGN_HOST_KMS_PROXY` and `ENSIGN_HOST_DB_PROXY`
//! (where it reaches the host's proxies) and `ENSIGN_HOST_PID`.

pub mod cli;
pub mod credentials;
pub mod db_secret;
pub mod diagnose;
pub mod keys;
pub mod launcher;
pub mod supervisor;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};

pub use cli::{ConfigError, HostArgs, HostConfig};

use enclave_bridge::forward::{ForwardLimits, Forwarder};
use enclave_bridge::proxy::{AllowedRemote, Allowlist, OutboundProxy, ProxyError};
use enclave_bridge::transport::{Endpoint, PARENT_CID, VMADDR_CID_ANY};

/// Why the host could not run.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("cannot listen on {listen}: {source}")]
    Listen {
        listen: Endpoint,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    #[error(transparent)]
    Credentials(#[from] credentials::CredentialsError),
}

impl HostError {
    /// What a failure to bind or inspect the listener on `listen` becomes.
    fn listening_on(listen: &Endpoint) -> impl FnOnce(std::io::Error) -> HostError + '_ {
        move |source| HostError::Listen {
            listen: listen.clone(),
            source,
        }
    }
}

/// How the enclave reaches a listener the host bound at `local`: a vsock
/// listener on any CID is the parent (CID 3) from inside the enclave; a TCP
/// listener on an unspecified address is reached on loopback.
pub fn reachable_from_enclave(local: &Endpoint) -> Endpoint {
    match local {
        Endpoint::Vsock { cid, port } if *cid == VMADDR_CID_ANY => Endpoint::Vsock {
            cid: PARENT_CID,
            port: *port,
        },
        Endpoint::Tcp { host, port } if host == "0.0.0.0" || host == "::" => Endpoint::Tcp {
            host: "127.0.0.1".into(),
            port: *port,
        },
        other => other.clone(),
    }
}

/// How the enclave should listen for an endpoint the host connects to: on
/// vsock, any CID (the enclave binds its own); otherwise the same address.
fn enclave_listen_form(ep: &Endpoint) -> Endpoint {
    match ep {
        Endpoint::Vsock { port, .. } => Endpoint::Vsock {
            cid: VMADDR_CID_ANY,
            port: *port,
        },
        other => other.clone(),
    }
}

/// Run the host until `shutdown` completes: bind the data path and the
/// outbound proxies, then supervise the enclave. `reconcile_now` is notified
/// on `SIGHUP` (the binary wires it) to reconcile keys at once. On shutdown
/// the enclave is terminated and the listeners closed.
pub async fn run(
    config: HostConfig,
    reconcile_now: Arc<Notify>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), HostError> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let limits = ForwardLimits {
        max_connections: config.max_connections,
        ..ForwardLimits::default()
    };

    // Data path: client TCP → enclave data endpoint (never the control one).
    let listener = config
        .listen
        .bind()
        .await
        .map_err(HostError::listening_on(&config.listen))?;
    let forwarder = Forwarder::new(listener, config.data_endpoint.clone(), limits.clone());
    let listen = forwarder
        .local_endpoint()
        .map_err(HostError::listening_on(&config.listen))?;
    tracing::info!(%listen, target = %config.data_endpoint, "data path listening");

    // Outbound proxies, allowlist = exactly the configured destinations.
    let mut allowed = vec![config.kms_remote.clone()];
    if let Some(db) = &config.db {
        allowed.push(db.remote.clone());
    }
    let allowlist = Allowlist::new(allowed);
    let kms_proxy = OutboundProxy::bind(
        &config.kms_proxy_listen,
        config.kms_remote.clone(),
        &allowlist,
        limits.clone(),
    )
    .await?;
    let kms_proxy_local = kms_proxy
        .local_endpoint()
        .map_err(HostError::listening_on(&config.kms_proxy_listen))?;
    let kms_stats = kms_proxy.stats();
    let db_proxy = match &config.db {
        Some(db) => {
            Some(OutboundProxy::bind(&db.listen, db.remote.clone(), &allowlist, limits).await?)
        }
        None => None,
    };
    let db_proxy_local = match (&db_proxy, &config.db) {
        (Some(p), Some(db)) => Some(
            p.local_endpoint()
                .map_err(HostError::listening_on(&db.listen))?,
        ),
        _ => None,
    };

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(forwarder.run(stopped()));
    tasks.spawn(kms_proxy.run(stopped()));
    if let Some(p) = db_proxy {
        tasks.spawn(p.run(stopped()));
    }
    tasks.spawn(probe_remote("KMS", config.kms_remote.clone()));

    let mut env = vec![
        (
            "ENSIGN_ENCLAVE_CONTROL_ENDPOINT".to_owned(),
            enclave_listen_form(&config.control_endpoint).to_string(),
        ),
        (
            "ENSIGN_ENCLAVE_DATA_ENDPOINT".to_owned(),
            enclave_listen_form(&config.data_endpoint).to_string(),
        ),
        (
            "ENSIGN_HOST_KMS_PROXY".to_owned(),
            reachable_from_enclave(&kms_proxy_local).to_string(),
        ),
        ("ENSIGN_HOST_PID".to_owned(), std::process::id().to_string()),
    ];
    if let Some(db) = &db_proxy_local {
        env.push((
            "ENSIGN_HOST_DB_PROXY".to_owned(),
            reachable_from_enclave(db).to_string(),
        ));
    }

    let credentials =
        credentials::CredentialSource::new(config.credentials, config.imds_endpoint.as_deref())?;
    let keys = match &config.key_source {
        keys::KeySourceConfig::Dir(dir) => keys::KeySource::Dir(keys::DirKeySource::new(dir)),
        keys::KeySourceConfig::DynamoDb {
            table,
            endpoint_url,
            page_size,
        } => keys::KeySource::DynamoDb(keys::DynamoKeySource::new(
            keys::dynamodb_client(
                &config.region,
                credentials.provider(),
                endpoint_url.as_deref(),
            ),
            table.clone(),
            *page_size,
        )),
    };
    tracing::info!(source = %keys.describe(), "key source");

    let launcher = launcher::Launcher::new(config.launcher.clone(), env);
    let mut sup_config =
        supervisor::SupervisorConfig::new(config.control_endpoint.clone(), config.region.clone());
    sup_config.kms_endpoint = config.init_kms_endpoint.clone();
    sup_config.poll_interval = config.poll_interval;
    sup_config.boot_timeout = config.boot_timeout;
    sup_config.credentials_refresh_margin = config.credentials_refresh_margin;
    let db_secret = config.db_secret.as_ref().map(|s| {
        tracing::info!(secret = %s.arn, "database credentials from Secrets Manager");
        db_secret::DbSecretSource::new(
            db_secret::secrets_manager_client(
                &config.region,
                credentials.provider(),
                s.endpoint_url.as_deref(),
            ),
            s.arn.clone(),
        )
    });
    let supervisor =
        supervisor::Supervisor::new(sup_config, launcher, keys, credentials, reconcile_now)
            .with_kms_proxy_stats(kms_stats, config.kms_remote.clone())
            .with_db_secret(db_secret);
    supervisor.run(shutdown).await;

    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    tracing::info!("ensign-host stopped");
    Ok(())
}

/// An error and its sources, by their `Display` only. The SDK's
/// `DisplayErrorContext` appends the `Debug` form, which for a failed
/// response includes the raw body — for IMDS that is a session token or the
/// credentials themselves — so it is never used for host log lines.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// A client of one AWS service (`$sdk`: the SDK crate) for the host: the region given, the
/// host's credentials, [`https_client`], bounded timeouts (a stuck AWS call must not stall the
/// supervisor's loop), an optional endpoint override (moto in tests). A macro because every SDK
/// crate has its own `Config` builder type.
macro_rules! aws_client {
    ($sdk:ident, $region:expr, $credentials:expr, $endpoint_url:expr) => {{
        use $sdk::config;
        let timeouts = config::timeout::TimeoutConfig::builder()
            .connect_timeout(std::time::Duration::from_secs(5))
            .operation_attempt_timeout(std::time::Duration::from_secs(20))
            .operation_timeout(std::time::Duration::from_secs(60))
            .build();
        let mut builder = $sdk::Config::builder()
            .behavior_version(config::BehaviorVersion::latest())
            .region(config::Region::new($region.as_str().to_owned()))
            .credentials_provider($credentials)
            .http_client($crate::https_client())
            .timeout_config(timeouts);
        if let Some(url) = $endpoint_url {
            builder = builder.endpoint_url(url);
        }
        $sdk::Client::from_conf(builder.build())
    }};
}
pub(crate) use aws_client;

/// The HTTPS client of the host's AWS clients (IMDS, DynamoDB): rustls with
/// ring, as the KMS client in [`enclave_bridge::kms`] (the SDK's default client would
/// pull in aws-lc, a large C build).
pub(crate) fn https_client() -> aws_sdk_kms::config::SharedHttpClient {
    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
    aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https()
}

/// Log once at start whether the host itself can reach `remote` (a quick
/// first hint for "KMS unreachable"; the proxy reports each failure later).
async fn probe_remote(what: &'static str, remote: AllowedRemote) {
    let target = Endpoint::Tcp {
        host: remote.host().to_owned(),
        port: remote.port(),
    };
    match tokio::time::timeout(Duration::from_secs(5), target.connect()).await {
        Ok(Ok(_)) => tracing::info!(%remote, "{what} endpoint reachable from the host"),
        Ok(Err(e)) => tracing::error!(
            %remote, error = %e,
            "{what} unreachable from the host: the enclave's {what} requests will fail \
             (check DNS / the VPC endpoint / security groups)"
        ),
        Err(_) => tracing::error!(
            %remote,
            "{what} unreachable from the host (connect timed out): the enclave's {what} requests will fail"
        ),
    }
}
