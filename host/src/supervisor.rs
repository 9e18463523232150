//! The enclave's life as the host sees it:
//!
//! ```text
//!  start ──► booting ──(control port answers)──► initialising ──(Init ok)──► ready
//!    ▲          │                                   │  ▲ refused: log why,   │ poll: Status,
//!    │          │ timeout / exited                  │  └ back off, retry     │ credentials, keys
//!    └─ backoff ◄─ terminate ◄──────────── lost ◄───┴────────────────────────┘ dead / Failed /
//!                                                                              unreachable ×3
//! ```
//!
//! Retries are bounded and backed off; waits for readiness poll the control
//! port (no sleep stands in for a readiness check). Every transition is
//! logged at `info` or above with a `phase` field.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;
use tokio::time::{Instant, MissedTickBehavior};

use super::credentials::CredentialSource;
use super::db_secret::DbSecretSource;
use super::diagnose::explain;
use super::keys::{fingerprint, KeyListing, KeyProblem, KeySource};
use super::launcher::{Enclave, Launcher};
use enclave_bridge::control::{
    AddKeysRequest, AwsRegion, ControlClient, ControlClientConfig, ControlError,
    DatabaseCredentials, EnclaveState, EncryptedKeyRecord, EndpointUrl, ErrorCode, InitRequest,
    KeysReport, RemoveKeysRequest, StatusReply,
};
use enclave_bridge::forward::ForwardStats;
use enclave_bridge::kms::unix_seconds;
use enclave_bridge::proxy::AllowedRemote;
use enclave_bridge::transport::Endpoint;

/// Tunables of a [`Supervisor`]. [`SupervisorConfig::new`] gives the
/// defaults `ensign-host` uses.
#[derive(Clone, Debug)]
pub struct SupervisorConfig {
    pub control: Endpoint,
    pub region: AwsRegion,
    /// Sent in `Init` (see [`super::cli::HostArgs::kms_endpoint_url`]).
    pub kms_endpoint: Option<EndpointUrl>,
    pub poll_interval: Duration,
    /// How long a started enclave may take to answer on its control port.
    pub boot_timeout: Duration,
    /// Refresh credentials this long before they expire.
    pub credentials_refresh_margin: Duration,
    pub control_client: ControlClientConfig,
    /// One `Status` exchange.
    pub status_timeout: Duration,
    /// Polls in a row without an answer before the enclave counts as lost.
    pub unreachable_limit: u32,
    /// Between restarts: first delay, cap (doubling; reset once an enclave
    /// was ready).
    pub restart_backoff: (Duration, Duration),
    /// Between refused `Init`s: first delay, cap.
    pub init_backoff: (Duration, Duration),
    /// Longest wait before retrying a key the enclave could not load.
    pub key_retry_cap: Duration,
}

impl SupervisorConfig {
    pub fn new(control: Endpoint, region: AwsRegion) -> Self {
        Self {
            control,
            region,
            kms_endpoint: None,
            poll_interval: Duration::from_secs(30),
            boot_timeout: Duration::from_secs(120),
            credentials_refresh_margin: Duration::from_secs(600),
            control_client: ControlClientConfig {
                connect_timeout: Duration::from_secs(5),
                ..ControlClientConfig::default()
            },
            status_timeout: Duration::from_secs(10),
            unreachable_limit: 3,
            restart_backoff: (Duration::from_secs(1), Duration::from_secs(60)),
            init_backoff: (Duration::from_secs(1), Duration::from_secs(300)),
            key_retry_cap: Duration::from_secs(3600),
        }
    }
}

/// Doubling delays up to a cap.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    first: Duration,
    cap: Duration,
    next: Duration,
}

impl Backoff {
    pub(crate) fn new((first, cap): (Duration, Duration)) -> Self {
        Self {
            first,
            cap,
            next: first,
        }
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.cap);
        d
    }

    pub(crate) fn reset(&mut self) {
        self.next = self.first;
    }
}

/// A key the enclave could not load.
#[derive(Debug, Clone)]
struct FailedKey {
    fingerprint: [u8; 32],
    reason: String,
    attempts: u32,
    retry_at: Instant,
}

/// What this enclave instance holds, as far as the host knows.
#[derive(Debug, Default)]
pub(crate) struct Delivered {
    /// Loaded keys: id (public key) → fingerprint of the record sent.
    loaded: BTreeMap<String, [u8; 32]>,
    failed: BTreeMap<String, FailedKey>,
    credentials_expiration: Option<u64>,
    access_key_id: String,
    /// The database credentials the enclave holds (`--db-secret-arn`), to
    /// notice a rotated secret. Zeroizing; `Debug` shows the user only.
    database: Option<DatabaseCredentials>,
}

impl Delivered {
    /// Take in an `Init` / `AddKeys` report for the records `sent`.
    fn record(
        &mut self,
        report: &KeysReport,
        sent: &[EncryptedKeyRecord],
        now: Instant,
        retry: impl Fn(u32) -> Duration,
    ) {
        let by_id: BTreeMap<&str, &EncryptedKeyRecord> =
            sent.iter().map(|r| (r.id.as_str(), r)).collect();
        for id in &report.loaded {
            match by_id.get(id.as_str()) {
                Some(r) => {
                    self.loaded.insert(id.clone(), fingerprint(r));
                }
                None => {
                    tracing::warn!(id = %id, "the enclave reports loading a key the host did not send")
                }
            }
            self.failed.remove(id);
        }
        for f in &report.failed {
            let Some(r) = by_id.get(f.id.as_str()) else {
                continue;
            };
            let fp = fingerprint(r);
            let attempts = match self.failed.get(&f.id) {
                Some(old) if old.fingerprint == fp => old.attempts + 1,
                _ => 1,
            };
            let repeated = self
                .failed
                .get(&f.id)
                .is_some_and(|old| old.reason == f.reason && old.fingerprint == fp);
            if repeated {
                tracing::debug!(key = %f.id, attempts, "key still fails to load: {}", f.reason);
            } else {
                tracing::error!(key = %f.id, "the enclave could not load a key: {}", explain(&f.reason));
            }
            self.failed.insert(
                f.id.clone(),
                FailedKey {
                    fingerprint: fp,
                    reason: f.reason.clone(),
                    attempts,
                    retry_at: now + retry(attempts),
                },
            );
        }
    }
}

/// What one reconciliation does.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    add: Vec<String>,
    remove: Vec<String>,
    /// Removals not made because the listing had unreadable records.
    withheld: usize,
}

/// Diff a listing against what was delivered. Keys that failed before are
/// retried when their record changed, when their retry time has come, or
/// when `forced` (SIGHUP).
pub(crate) fn plan(
    listing: &KeyListing,
    delivered: &Delivered,
    now: Instant,
    forced: bool,
) -> Plan {
    let add = listing
        .records
        .values()
        .filter(|r| !delivered.loaded.contains_key(&r.id))
        .filter(|r| match delivered.failed.get(&r.id) {
            None => true,
            Some(f) => forced || f.fingerprint != fingerprint(r) || now >= f.retry_at,
        })
        .map(|r| r.id.clone())
        .collect();
    let gone: Vec<String> = delivered
        .loaded
        .keys()
        .filter(|id| !listing.records.contains_key(*id))
        .cloned()
        .collect();
    if listing.problems.is_empty() {
        Plan {
            add,
            remove: gone,
            withheld: 0,
        }
    } else {
        Plan {
            add,
            remove: Vec::new(),
            withheld: gone.len(),
        }
    }
}

/// Why supervision of one enclave ended.
#[derive(Debug)]
struct Lost {
    reason: String,
    /// It had been initialised (resets the restart backoff).
    was_ready: bool,
}

impl Lost {
    fn new(reason: impl Into<String>, was_ready: bool) -> Self {
        Self {
            reason: reason.into(),
            was_ready,
        }
    }
}

enum InitStep {
    Done,
    Retry,
    Lost(String),
}

/// Starts, initialises, watches and restarts one enclave at a time.
pub struct Supervisor {
    config: SupervisorConfig,
    launcher: Launcher,
    keys: KeySource,
    credentials: CredentialSource,
    reconcile_now: Arc<Notify>,
    kms_proxy: Option<(Arc<ForwardStats>, AllowedRemote)>,
    kms_failures_seen: u64,
    reported_problems: BTreeSet<KeyProblem>,
    db_secret: Option<DbSecretSource>,
    /// The last failure to read the database secret (logged once as an error,
    /// then at debug while it repeats).
    db_secret_failure: Option<String>,
}

impl Supervisor {
    pub fn new(
        config: SupervisorConfig,
        launcher: Launcher,
        keys: KeySource,
        credentials: CredentialSource,
        reconcile_now: Arc<Notify>,
    ) -> Self {
        Self {
            config,
            launcher,
            keys,
            credentials,
            reconcile_now,
            kms_proxy: None,
            kms_failures_seen: 0,
            reported_problems: BTreeSet::new(),
            db_secret: None,
            db_secret_failure: None,
        }
    }

    /// Read the slashing database's credentials from this secret, send them
    /// in `Init` and deliver changes (`--db-secret-arn`).
    pub fn with_db_secret(mut self, source: Option<DbSecretSource>) -> Self {
        self.db_secret = source;
        self
    }

    /// The database credentials, when configured: `Ok(None)` without
    /// `--db-secret-arn`, `Err` (logged) when the secret cannot be used.
    async fn database_credentials(&mut self) -> Result<Option<DatabaseCredentials>, ()> {
        let Some(source) = &self.db_secret else {
            return Ok(None);
        };
        match source.fetch().await {
            Ok(c) => {
                if self.db_secret_failure.take().is_some() {
                    tracing::info!(secret = %source.arn(), "the database secret is readable again");
                }
                Ok(Some(c))
            }
            Err(e) => {
                let text = e.to_string();
                if self.db_secret_failure.as_deref() == Some(text.as_str()) {
                    tracing::debug!("database secret still unusable: {text}");
                } else {
                    tracing::error!("{text}");
                }
                self.db_secret_failure = Some(text);
                Err(())
            }
        }
    }

    /// Watch the KMS proxy's failed connections, to say "KMS unreachable"
    /// from the host's side too.
    pub fn with_kms_proxy_stats(mut self, stats: Arc<ForwardStats>, remote: AllowedRemote) -> Self {
        self.kms_proxy = Some((stats, remote));
        self
    }

    /// Run until `shutdown` completes, then terminate the enclave.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        self.launcher.clear_leftover().await;
        let mut restart = Backoff::new(self.config.restart_backoff);
        loop {
            tracing::info!(phase = "starting", "starting the enclave");
            let started = tokio::select! {
                () = &mut shutdown => return,
                r = self.launcher.start() => r,
            };
            let mut enclave = match started {
                Ok(e) => e,
                Err(e) => {
                    let delay = restart.next_delay();
                    tracing::error!(phase = "start-failed", error = %e, retry_in = ?delay,
                        "cannot start the enclave");
                    tokio::select! {
                        () = &mut shutdown => return,
                        () = tokio::time::sleep(delay) => continue,
                    }
                }
            };
            tracing::info!(phase = "booting", enclave = %enclave.describe(),
                control = %self.config.control, "enclave started; waiting for its control port");
            let outcome = tokio::select! {
                () = &mut shutdown => None,
                lost = self.supervise(&mut enclave) => Some(lost),
            };
            let Some(lost) = outcome else {
                tracing::info!(phase = "stopping", enclave = %enclave.describe(),
                    "shutting down: terminating the enclave");
                enclave.terminate().await;
                return;
            };
            if lost.was_ready {
                restart.reset();
            }
            let delay = restart.next_delay();
            tracing::error!(phase = "lost", enclave = %enclave.describe(), reason = %lost.reason,
                restart_in = ?delay, "enclave lost; terminating it and starting a new one");
            enclave.terminate().await;
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn connect(&self) -> Result<ControlClient, ControlError> {
        ControlClient::connect_with(&self.config.control, self.config.control_client.clone()).await
    }

    async fn connect_and_status(&self) -> Result<(ControlClient, StatusReply), String> {
        let mut client = self.connect().await.map_err(|e| e.to_string())?;
        match tokio::time::timeout(self.config.status_timeout, client.status()).await {
            Ok(Ok(status)) => Ok((client, status)),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("Status timed out".into()),
        }
    }

    /// Poll the control port (backing off 50 ms → 2 s) until it answers
    /// `Hello` and `Status`, the enclave dies, or the boot timeout passes.
    async fn wait_for_control(&self, enclave: &mut Enclave) -> Result<StatusReply, String> {
        let deadline = Instant::now() + self.config.boot_timeout;
        let mut backoff = Backoff::new((Duration::from_millis(50), Duration::from_secs(2)));
        loop {
            enclave.check_alive().await?;
            let last = match self.connect_and_status().await {
                Ok((_, status)) => return Ok(status),
                Err(e) => e,
            };
            let delay = backoff.next_delay();
            if Instant::now() + delay > deadline {
                return Err(format!(
                    "the control port {} did not answer within {:?}: {last}",
                    self.config.control, self.config.boot_timeout
                ));
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                why = enclave.exited() => return Err(why),
            }
        }
    }

    async fn supervise(&mut self, enclave: &mut Enclave) -> Lost {
        let status = match self.wait_for_control(enclave).await {
            Ok(s) => s,
            Err(why) => return Lost::new(why, false),
        };
        match status.state {
            EnclaveState::WaitingForInit | EnclaveState::Failed { .. } => {}
            other => {
                return Lost::new(
                    format!(
                        "a freshly started enclave reports {other:?} instead of waiting for Init"
                    ),
                    false,
                )
            }
        }
        tracing::info!(
            phase = "initialising",
            "enclave control port answers; sending Init"
        );

        let mut delivered = Delivered::default();
        let mut backoff = Backoff::new(self.config.init_backoff);
        loop {
            match self.init(&mut delivered).await {
                InitStep::Done => break,
                InitStep::Lost(why) => return Lost::new(why, false),
                InitStep::Retry => {
                    self.check_kms_proxy();
                    let delay = backoff.next_delay();
                    tracing::warn!(phase = "initialising", retry_in = ?delay,
                        "enclave not initialised; will retry Init (SIGHUP retries at once)");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = self.reconcile_now.notified() => {
                            tracing::info!("SIGHUP: retrying Init now");
                        }
                        why = enclave.exited() => return Lost::new(why, false),
                    }
                }
            }
        }
        tracing::info!(
            phase = "ready",
            loaded = delivered.loaded.len(),
            failed = delivered.failed.len(),
            "enclave ready"
        );

        let poll = self.config.poll_interval;
        let mut ticker = tokio::time::interval_at(Instant::now() + poll, poll);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut unanswered = 0u32;
        loop {
            let forced = tokio::select! {
                _ = ticker.tick() => false,
                () = self.reconcile_now.notified() => {
                    tracing::info!("SIGHUP: reconciling keys now");
                    true
                }
                why = enclave.exited() => return Lost::new(why, true),
            };
            if let Err(why) = enclave.check_alive().await {
                return Lost::new(why, true);
            }
            self.check_kms_proxy();
            let mut client = match self.connect_and_status().await {
                Ok((client, status)) => match status.state {
                    EnclaveState::Ready => {
                        unanswered = 0;
                        client
                    }
                    EnclaveState::Failed { reason } => {
                        return Lost::new(format!("the enclave reports Failed: {}", explain(&reason)), true)
                    }
                    other => {
                        return Lost::new(
                            format!("the enclave reports {other:?} after it was ready (restarted behind the host's back?)"),
                            true,
                        )
                    }
                },
                Err(e) => {
                    unanswered += 1;
                    if unanswered >= self.config.unreachable_limit {
                        return Lost::new(
                            format!("the control port did not answer {unanswered} polls in a row: {e}"),
                            true,
                        );
                    }
                    tracing::warn!(unanswered, limit = self.config.unreachable_limit,
                        "enclave control port did not answer: {e}");
                    continue;
                }
            };
            self.refresh_credentials_if_due(&mut client, &mut delivered)
                .await;
            self.refresh_database_credentials(&mut client, &mut delivered)
                .await;
            self.reconcile(&mut client, &mut delivered, forced).await;
        }
    }

    /// Credentials and keys, then `Init`.
    async fn init(&mut self, delivered: &mut Delivered) -> InitStep {
        let credentials = match self.credentials.fetch().await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(
                    phase = "initialising",
                    "cannot get AWS credentials for the enclave: {e}"
                );
                return InitStep::Retry;
            }
        };
        // With --db-secret-arn, never Init without the credentials: the enclave would connect
        // with its URL as configured instead.
        let Ok(database) = self.database_credentials().await else {
            return InitStep::Retry;
        };
        let Some(listing) = self.list_keys().await else {
            // Never Init with an empty set because the source failed.
            return InitStep::Retry;
        };
        let mut client = match self.connect().await {
            Ok(c) => c,
            Err(e) => return InitStep::Lost(format!("control port unreachable before Init: {e}")),
        };
        let expiration = credentials.expiration;
        let access_key_id = credentials.access_key_id.clone();
        let keys: Vec<EncryptedKeyRecord> = listing.records.values().cloned().collect();
        tracing::info!(phase = "initialising", keys = keys.len(), inactive = listing.inactive,
            access_key_id = %access_key_id,
            database_user = database.as_ref().map(|d| d.username.as_str()),
            "sending Init");
        let request = InitRequest {
            credentials,
            region: self.config.region.clone(),
            kms_endpoint: self.config.kms_endpoint.clone(),
            keys: keys.clone(),
            tls: None,
            database: database.clone(),
        };
        match client.init(request).await {
            Ok(report) => {
                delivered.credentials_expiration = expiration;
                delivered.access_key_id = access_key_id;
                delivered.database = database;
                let retry = self.key_retry();
                delivered.record(&report, &keys, Instant::now(), retry);
                tracing::info!(
                    phase = "initialising",
                    loaded = report.loaded.len(),
                    failed = report.failed.len(),
                    "enclave accepted Init"
                );
                InitStep::Done
            }
            Err(ControlError::Remote {
                code: ErrorCode::HandlerFailed,
                message,
            }) => {
                tracing::error!(
                    phase = "initialising",
                    "the enclave refused Init: {}",
                    explain(&message)
                );
                InitStep::Retry
            }
            Err(ControlError::Remote {
                code: ErrorCode::InitialisationInProgress,
                ..
            }) => InitStep::Retry,
            Err(e) => InitStep::Lost(format!("Init failed: {e}")),
        }
    }

    /// Retry delay of a failed key after `attempts` failures: the poll
    /// interval, doubling, capped.
    fn key_retry(&self) -> impl Fn(u32) -> Duration {
        let poll = self.config.poll_interval;
        let cap = self.config.key_retry_cap;
        move |attempts| {
            let factor = 1u32 << attempts.saturating_sub(1).min(16);
            (poll * factor).min(cap)
        }
    }

    async fn list_keys(&mut self) -> Option<KeyListing> {
        match self.keys.list().await {
            Ok(listing) => {
                let now: BTreeSet<KeyProblem> = listing.problems.iter().cloned().collect();
                for p in now.difference(&self.reported_problems) {
                    tracing::warn!("skipping key record {p}");
                }
                self.reported_problems = now;
                tracing::debug!(
                    active = listing.records.len(),
                    inactive = listing.inactive,
                    problems = listing.problems.len(),
                    pages = listing.pages,
                    "key source listed"
                );
                Some(listing)
            }
            Err(e) => {
                tracing::error!("key source unavailable; the enclave's keys stay as they are: {e}");
                None
            }
        }
    }

    async fn refresh_credentials_if_due(&self, client: &mut ControlClient, d: &mut Delivered) {
        let Some(expires) = d.credentials_expiration else {
            return;
        };
        let now = unix_seconds(SystemTime::now());
        if now.saturating_add(self.config.credentials_refresh_margin.as_secs()) < expires {
            return;
        }
        let fresh = match self.credentials.fetch().await {
            Ok(c) => c,
            Err(e) => {
                if now >= expires {
                    tracing::error!(
                        expired_at = expires,
                        "the enclave's AWS credentials have EXPIRED and cannot be refreshed \
                         (its KMS calls will fail): {e}"
                    );
                } else {
                    tracing::error!(
                        expires_at = expires,
                        "cannot refresh the enclave's AWS credentials: {e}"
                    );
                }
                return;
            }
        };
        if fresh.access_key_id == d.access_key_id && fresh.expiration == Some(expires) {
            tracing::debug!("no newer credentials yet");
            return;
        }
        let expiration = fresh.expiration;
        let access_key_id = fresh.access_key_id.clone();
        match client.refresh_credentials(fresh).await {
            Ok(()) => {
                tracing::info!(access_key_id = %access_key_id, expires_at = ?expiration,
                    "enclave credentials refreshed");
                d.credentials_expiration = expiration;
                d.access_key_id = access_key_id;
            }
            Err(e) => tracing::error!("RefreshCredentials failed: {e}"),
        }
    }

    /// Re-read the database secret and deliver it if it changed (rotation).
    /// A failure leaves the enclave with what it has, and is retried at the
    /// next poll.
    async fn refresh_database_credentials(
        &mut self,
        client: &mut ControlClient,
        d: &mut Delivered,
    ) {
        let Ok(Some(fresh)) = self.database_credentials().await else {
            return;
        };
        if d.database.as_ref() == Some(&fresh) {
            return;
        }
        let user = fresh.username.clone();
        match client.refresh_database_credentials(fresh.clone()).await {
            Ok(()) => {
                tracing::info!(database_user = %user,
                    "the database secret changed; the enclave now connects with the new credentials");
                d.database = Some(fresh);
            }
            Err(e) => tracing::error!(database_user = %user,
                "RefreshDatabaseCredentials failed (retried at the next poll): {}",
                explain(&e.to_string())),
        }
    }

    async fn reconcile(&mut self, client: &mut ControlClient, d: &mut Delivered, forced: bool) {
        let Some(listing) = self.list_keys().await else {
            return;
        };
        d.failed.retain(|id, _| listing.records.contains_key(id));
        let plan = plan(&listing, d, Instant::now(), forced);
        if plan.withheld > 0 {
            tracing::warn!(
                withheld = plan.withheld,
                unreadable = listing.problems.len(),
                "not removing keys missing from the source while some records cannot be read"
            );
        }
        if !plan.remove.is_empty() {
            tracing::info!(count = plan.remove.len(), keys = ?plan.remove, "removing keys from the enclave (RemoveKeys)");
            match client
                .remove_keys(RemoveKeysRequest {
                    pubkeys: plan.remove.clone(),
                })
                .await
            {
                Ok(report) => {
                    for id in report.removed.iter().chain(&report.not_found) {
                        d.loaded.remove(id);
                    }
                    tracing::info!(
                        removed = report.removed.len(),
                        not_found = report.not_found.len(),
                        "keys removed"
                    );
                }
                Err(e) => {
                    tracing::error!("RemoveKeys failed: {e}");
                    return;
                }
            }
        }
        if !plan.add.is_empty() {
            let keys: Vec<EncryptedKeyRecord> = plan
                .add
                .iter()
                .filter_map(|id| listing.records.get(id).cloned())
                .collect();
            tracing::info!(count = keys.len(), keys = ?plan.add, "delivering keys to the enclave (AddKeys)");
            match client.add_keys(AddKeysRequest { keys: keys.clone() }).await {
                Ok(report) => {
                    let retry = self.key_retry();
                    d.record(&report, &keys, Instant::now(), retry);
                    tracing::info!(
                        loaded = report.loaded.len(),
                        failed = report.failed.len(),
                        "keys added"
                    );
                }
                Err(ControlError::Remote { code, message }) => {
                    tracing::error!(%code, "the enclave refused AddKeys: {}", explain(&message));
                    // Count it against each key, so they back off.
                    let report = KeysReport {
                        loaded: vec![],
                        failed: keys
                            .iter()
                            .map(|k| enclave_bridge::control::KeyFailure {
                                id: k.id.clone(),
                                reason: message.clone(),
                            })
                            .collect(),
                    };
                    let retry = self.key_retry();
                    d.record(&report, &keys, Instant::now(), retry);
                }
                Err(e) => tracing::error!("AddKeys failed: {e}"),
            }
        }
    }

    fn check_kms_proxy(&mut self) {
        let Some((stats, remote)) = &self.kms_proxy else {
            return;
        };
        let failed = stats.target_failed();
        if failed > self.kms_failures_seen {
            tracing::error!(remote = %remote, failed_connections = failed - self.kms_failures_seen,
                "KMS unreachable: the host's KMS proxy could not connect to {remote}");
            self.kms_failures_seen = failed;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{BlsPubkey, KeyRecord};
    use enclave_bridge::control::KeyFailure;
    use enclave_bridge::secret::Base64Bytes;

    fn rec(n: u8, blob: u8) -> EncryptedKeyRecord {
        let pk = BlsPubkey::try_from(format!("0x{}", format!("{n:02x}").repeat(48))).unwrap();
        KeyRecord {
            pubkey: pk,
            ciphertext: Base64Bytes(vec![blob]),
            active: true,
            kms_key_id: None,
            encryption_context: Default::default(),
        }
        .to_control()
    }

    fn listing(records: &[EncryptedKeyRecord]) -> KeyListing {
        KeyListing {
            records: records.iter().map(|r| (r.id.clone(), r.clone())).collect(),
            ..KeyListing::default()
        }
    }

    #[test]
    fn plan_adds_removes_and_backs_off() {
        let (a, b, c) = (rec(1, 1), rec(2, 2), rec(3, 3));
        let now = Instant::now();
        let mut d = Delivered::default();
        let p = plan(&listing(&[a.clone(), b.clone()]), &d, now, false);
        assert_eq!(p.add, vec![a.id.clone(), b.id.clone()]);
        assert!(p.remove.is_empty());

        // a loaded, b failed.
        let report = KeysReport {
            loaded: vec![a.id.clone()],
            failed: vec![KeyFailure {
                id: b.id.clone(),
                reason: "KMS denied access: x".into(),
            }],
        };
        d.record(&report, &[a.clone(), b.clone()], now, |_| {
            Duration::from_secs(60)
        });
        // b waits for its retry time, c is new.
        let p = plan(&listing(&[a.clone(), b.clone(), c.clone()]), &d, now, false);
        assert_eq!(p.add, vec![c.id.clone()]);
        // ... unless forced (SIGHUP), its record changed, or the time came.
        let p = plan(&listing(&[a.clone(), b.clone()]), &d, now, true);
        assert_eq!(p.add, vec![b.id.clone()]);
        let b2 = {
            let mut r = b.clone();
            r.ciphertext.0 = vec![9];
            r
        };
        let p = plan(&listing(&[a.clone(), b2]), &d, now, false);
        assert_eq!(p.add, vec![b.id.clone()]);
        let p = plan(
            &listing(&[a.clone(), b.clone()]),
            &d,
            now + Duration::from_secs(61),
            false,
        );
        assert_eq!(p.add, vec![b.id.clone()]);

        // a gone from the source: removed; but not from a listing with problems.
        let p = plan(&listing(std::slice::from_ref(&c)), &d, now, false);
        assert_eq!(p.remove, vec![a.id.clone()]);
        let mut dirty = listing(std::slice::from_ref(&c));
        dirty.problems.push(KeyProblem {
            source: "x.json".into(),
            reason: "bad".into(),
        });
        let p = plan(&dirty, &d, now, false);
        assert!(p.remove.is_empty());
        assert_eq!(p.withheld, 1);
    }

    #[test]
    fn backoff_doubles_to_a_cap_and_resets() {
        let mut b = Backoff::new((Duration::from_secs(1), Duration::from_secs(5)));
        let got: Vec<u64> = (0..5).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(got, vec![1, 2, 4, 5, 5]);
        b.reset();
        assert_eq!(b.next_delay().as_secs(), 1);
    }
}
