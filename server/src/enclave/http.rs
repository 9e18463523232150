use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::{RawQuery, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use enclave_bridge::attestation::Attestor;
use enclave_bridge::control::EnclaveState;
use serde_json::{json, Value};
use tokio::sync::{watch, Semaphore};

use crate::error::ApiError;
use crate::state::EnclaveStatus;

use super::identity::TlsIdentity;
use super::{INIT_FAILED_PUBLIC, MAX_NONCE_LEN, SERVED_BEFORE_INIT};

/// State shared by the HTTP side (gate, health, attestation) and the control handler.
pub struct EnclaveShared {
    pub(super) state: watch::Receiver<EnclaveState>,
    /// Whether the last `Init` failed (shared with the control handler, which sets it).
    pub(super) last_init_failed: Arc<AtomicBool>,
    pub(super) attestor: Option<Arc<dyn Attestor>>,
    pub tls: TlsIdentity,
    pub(super) attest_slots: Semaphore,
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
    fn state_name(&self) -> &'static str {
        match &*self.state.borrow() {
            EnclaveState::WaitingForInit => "waiting-for-init",
            EnclaveState::Initialising => "initialising",
            EnclaveState::Ready => "ready",
            EnclaveState::Failed { .. } => "failed",
        }
    }
}

impl EnclaveStatus for EnclaveShared {
    fn ready(&self) -> bool {
        *self.state.borrow() == EnclaveState::Ready
    }

    fn allow_voluntary_exits(&self) -> bool {
        self.allow_voluntary_exits
    }

    /// The state and, until initialised, whether the last `Init` failed. Only that: the reason
    /// (KMS's messages name key ARNs and the account, the database's its user) goes to
    /// ensign-host in the control reply, not to every client of the data port (issue 15).
    fn health_entry(&self) -> Value {
        let ready = self.ready();
        let mut data = json!({"state": self.state_name()});
        if !ready && self.last_init_failed.load(Ordering::SeqCst) {
            data["last-init-error"] = json!(INIT_FAILED_PUBLIC);
        }
        json!({"id": "enclave", "status": if ready { "UP" } else { "DOWN" }, "data": data})
    }
}

/// Answers 503 for everything but [`SERVED_BEFORE_INIT`] until the enclave is initialised.
pub async fn gate(
    State(enclave): State<Option<Arc<EnclaveShared>>>,
    req: Request,
    next: Next,
) -> Response {
    if let Some(enclave) = &enclave {
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
    State(enclave): State<Option<Arc<EnclaveShared>>>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let Some(enclave) = enclave else {
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
