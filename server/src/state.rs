//! What the HTTP handlers share ([`AppState`]), apart from the routes that use it, so that
//! `app`, `keymanager` and `enclave` each read it without importing one another.

use std::sync::{Arc, Mutex, RwLock};

use api_spec::network::Network;
use serde_json::Value;
use slashing::SlashingProtection;

use crate::config::KeySources;
use crate::keys::{KeyRing, SigningPool};

/// Shared state of the HTTP handlers.
pub struct AppState {
    pub network: Network,
    /// The current keys; replaced whole by a reload or a key manager change. In-flight requests
    /// keep the `Arc<ValidatorKey>` they looked up, so a reload never pulls a key from under them.
    pub keys: RwLock<Arc<KeyRing>>,
    pub sources: KeySources,
    pub reload: Mutex<ReloadState>,
    pub slashing: Option<Arc<dyn SlashingProtection>>,
    pub host_allowlist: Vec<String>,
    /// The BLS signing threads.
    pub signer: SigningPool,
    /// Bearer token of the key manager API; `None` when the API is disabled.
    pub key_manager_token: Option<String>,
    /// Permits for sign requests being processed (`--max-in-flight-signing`).
    pub in_flight: Arc<tokio::sync::Semaphore>,
    /// Enclave mode's state (`None` outside it): gates the API until initialised, reports in
    /// `/healthcheck`, serves `/api/v1/attestation`.
    pub enclave: Option<Arc<dyn EnclaveStatus>>,
}

impl AppState {
    /// A snapshot of the current keys.
    pub fn keyring(&self) -> Arc<KeyRing> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the keys.
    pub fn set_keyring(&self, ring: KeyRing) {
        metrics::gauge!("signing_signers_loaded_count").set(ring.len() as f64);
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(ring);
    }
}

/// Web3Signer's `/reload` status.
#[derive(Debug, Clone, Default)]
pub struct ReloadState {
    pub running: bool,
    /// `idle` before the first reload, then `completed`, `completed_with_errors` or `failed`.
    pub last: Option<&'static str>,
    pub last_time: Option<String>,
    pub last_error: Option<String>,
}

/// What the routes need of enclave mode (`crate::enclave` implements it).
pub trait EnclaveStatus: Send + Sync + std::fmt::Debug {
    /// Initialised (an `Init` succeeded).
    fn ready(&self) -> bool;
    /// The `/healthcheck` entry.
    fn health_entry(&self) -> Value;
    /// `--enclave-allow-voluntary-exits` (the sign handler refuses exits without it).
    fn allow_voluntary_exits(&self) -> bool;
}

/// Now, to the second, as an RFC 3339 UTC time (`2026-12-07T10:15:37Z`).
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    time::OffsetDateTime::from_unix_timestamp(secs as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}
