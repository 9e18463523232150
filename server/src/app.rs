//! HTTP routes and handlers (Web3Signer's eth2 API).

use std::sync::Arc;
use std::time::{Duration, Instant};

use api_spec::sign::{SignRequest, SlashingCheck};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::{Json, Router};
use serde_json::{json, Value};
use slashing::SlashingProtection;

use crate::enclave::{self, EnclaveShared};
use crate::error::ApiError;
use crate::keys::{parse_identifier, KeyRing};
use crate::state::{now_rfc3339, AppState};

/// Largest request body accepted. The largest legitimate request, a phase0/altair block with
/// every operation list full, is a few hundred KiB of JSON.
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

/// How long `/healthcheck` waits for the slashing database (Web3Signer's default timeout).
const DB_HEALTH_TIMEOUT: Duration = Duration::from_secs(3);

/// Every route ensign serves, as (path template, methods): the one table the router is built
/// from ([`router`]), and the one the OpenAPI document (`api-spec/openapi/ensign.yaml`) is
/// checked against in both directions (`tests/tests/openapi.rs`). A route therefore cannot be
/// served without being listed here, nor listed without a handler (the router panics at
/// start-up). [`crate::keymanager::PATH`] is mounted only with the key manager API enabled.
pub const ROUTES: &[(&str, &[&str])] = &[
    ("/upcheck", &["GET"]),
    ("/healthcheck", &["GET"]),
    ("/api/v1/eth2/publicKeys", &["GET"]),
    ("/api/v1/eth2/sign/{identifier}", &["POST"]),
    ("/api/v1/eth2/highWatermark", &["GET"]),
    ("/reload", &["GET", "POST"]),
    (OPENAPI_PATH, &["GET"]),
    (crate::keymanager::PATH, &["GET", "POST", "DELETE"]),
    // Enclave mode only (404 otherwise).
    (enclave::ATTESTATION_PATH, &["GET"]),
];

/// Where the OpenAPI document is served.
pub const OPENAPI_PATH: &str = "/api-docs/openapi.yaml";

/// The handler of one (path, method) of [`ROUTES`].
fn endpoint(
    state: &Arc<AppState>,
    enclave: &Option<Arc<EnclaveShared>>,
    path: &str,
    method: &str,
) -> MethodRouter<Arc<AppState>> {
    match (path, method) {
        ("/upcheck", "GET") => get(upcheck),
        ("/healthcheck", "GET") => get(healthcheck),
        ("/api/v1/eth2/publicKeys", "GET") => get(public_keys),
        ("/api/v1/eth2/sign/{identifier}", "POST") => post(sign),
        ("/api/v1/eth2/highWatermark", "GET") => get(high_watermark),
        ("/reload", "POST") => post(start_reload),
        ("/reload", "GET") => get(reload_status),
        (OPENAPI_PATH, "GET") => get(openapi),
        (enclave::ATTESTATION_PATH, "GET") => {
            get::<_, _, Option<Arc<EnclaveShared>>>(enclave::attestation)
                .with_state(enclave.clone())
        }
        (crate::keymanager::PATH, m) => crate::keymanager::endpoint(state.clone(), m)
            .unwrap_or_else(|| panic!("ROUTES lists {m} {path}, which has no handler")),
        _ => panic!("ROUTES lists {method} {path}, which has no handler"),
    }
}

/// Builds the router from [`ROUTES`]; `enclave` is enclave mode's state (`None` outside it).
pub fn router(state: Arc<AppState>, enclave: Option<Arc<EnclaveShared>>) -> Router {
    let mut router = Router::new();
    for &(path, methods) in ROUTES {
        if path == crate::keymanager::PATH && state.key_manager_token.is_none() {
            continue;
        }
        let methods = methods
            .iter()
            .map(|m| endpoint(&state, &enclave, path, m))
            .reduce(MethodRouter::merge)
            .expect("every route has a method");
        router = router.route(path, methods);
    }
    router
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .route_layer(middleware::from_fn(crate::metrics::track_http))
        // Enclave mode: closed until initialised (inside the Host check, which stays first).
        .layer(middleware::from_fn_with_state(enclave, enclave::gate))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            host_allowlist,
        ))
        .with_state(state)
}

/// `GET /api-docs/openapi.yaml`: the document built into this binary.
async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/yaml")],
        api_spec::openapi::OPENAPI_YAML,
    )
}

async fn upcheck() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], "OK")
}

async fn public_keys(State(st): State<Arc<AppState>>) -> Json<Vec<String>> {
    Json(
        st.keyring()
            .pubkeys()
            .iter()
            .map(const_hex::encode_prefixed)
            .collect(),
    )
}

fn status_str(up: bool) -> &'static str {
    if up {
        "UP"
    } else {
        "DOWN"
    }
}

/// Web3Signer's health document: `default-check`, a `keys-check` group with one entry per key
/// source (`keys-loaded`, `error-count`; DOWN when a key failed), and the slashing database.
async fn healthcheck(State(st): State<Arc<AppState>>) -> Response {
    let ring = st.keyring();
    let mut checks = vec![json!({"id": "default-check", "status": "UP"})];
    let key_checks: Vec<_> = ring
        .sources
        .iter()
        .map(|s| {
            json!({
                "id": s.id,
                "status": status_str(s.error_count == 0),
                "data": {"keys-loaded": s.keys_loaded, "error-count": s.error_count},
            })
        })
        .collect();
    let keys_up = ring.sources.iter().all(|s| s.error_count == 0);
    checks.push(json!({"id": "keys-check", "status": status_str(keys_up), "checks": key_checks}));
    let mut all_up = keys_up;
    if let Some(enclave) = &st.enclave {
        all_up &= enclave.ready();
        checks.push(enclave.health_entry());
    }
    // An enclave opens its PostgreSQL store at Init: before that the database is reported DOWN
    // without a probe (and without a warning per health check while it waits for ensign-host).
    let before_init = st.enclave.as_ref().is_some_and(|e| !e.ready());
    if let Some(sp) = st.slashing.clone() {
        let db_up = !before_init && probe_store(sp).await;
        all_up &= db_up;
        checks.push(
            json!({"id": "slashing-protection-db-health-check", "status": status_str(db_up)}),
        );
    }
    let status = status_str(all_up);
    let code = if all_up {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(json!({"status": status, "checks": checks, "outcome": status})),
    )
        .into_response()
}

/// One bounded health probe of the slashing store (off the reactor); failures are logged.
async fn probe_store(sp: Arc<dyn SlashingProtection>) -> bool {
    let probe = tokio::task::spawn_blocking(move || sp.health_check());
    match tokio::time::timeout(DB_HEALTH_TIMEOUT, probe).await {
        Ok(Ok(Ok(()))) => true,
        Ok(Ok(Err(e))) => {
            tracing::warn!(error = %e, "slashing protection database health check failed");
            false
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "slashing protection health check task failed");
            false
        }
        Err(_) => {
            tracing::warn!("slashing protection database health check timed out");
            false
        }
    }
}

/// Web3Signer's `highWatermark`: `{"epoch", "slot"}` as decimal strings, or `{}` when none is
/// set. 404 when slashing protection is disabled (Web3Signer has no route then).
async fn high_watermark(State(st): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let Some(sp) = st.slashing.clone() else {
        return Ok((StatusCode::NOT_FOUND, "Not Found").into_response());
    };
    let hw = tokio::task::spawn_blocking(move || sp.high_watermark())
        .await
        .map_err(|e| ApiError::Internal(format!("high watermark task: {e}")))??;
    let mut body = serde_json::Map::new();
    if let Some(hw) = hw {
        if let Some(e) = hw.epoch {
            body.insert("epoch".into(), json!(e.to_string()));
        }
        if let Some(s) = hw.slot {
            body.insert("slot".into(), json!(s.to_string()));
        }
    }
    Ok(Json(Value::Object(body)).into_response())
}

/// `POST /reload`: reloads every key source in the background. 202 when started, 409 while
/// one is running (Web3Signer since 25.12).
async fn start_reload(State(st): State<Arc<AppState>>) -> Response {
    if st.enclave.is_some() {
        // The keys are the host's records (AddKeys/RemoveKeys); there is nothing to re-read,
        // and reloading the (empty) local sources would drop them.
        let body = json!({"status": "error", "message":
            "enclave mode: keys are delivered by ensign-host (AddKeys/RemoveKeys); reload does not apply"});
        return (StatusCode::CONFLICT, Json(body)).into_response();
    }
    {
        let mut r = st.reload.lock().unwrap_or_else(|e| e.into_inner());
        if r.running {
            let body = json!({"status": "error", "message": "Reload already in progress"});
            return (StatusCode::CONFLICT, Json(body)).into_response();
        }
        r.running = true;
    }
    let state = st.clone();
    tokio::spawn(async move {
        let sources = state.sources.clone();
        let outcome = tokio::task::spawn_blocking(move || KeyRing::load(&sources)).await;
        let mut r = state.reload.lock().unwrap_or_else(|e| e.into_inner());
        match outcome {
            Ok(ring) => {
                let errors: usize = ring.sources.iter().map(|s| s.error_count).sum();
                tracing::info!(keys = ring.len(), errors, "keys reloaded");
                r.last = Some(if errors == 0 {
                    "completed"
                } else {
                    "completed_with_errors"
                });
                r.last_error = (errors > 0).then(|| format!("{errors} keys failed to load"));
                state.set_keyring(ring);
            }
            Err(e) => {
                tracing::error!(error = %e, "reload task failed");
                r.last = Some("failed");
                r.last_error = Some("reload failed".into());
            }
        }
        r.last_time = Some(now_rfc3339());
        r.running = false;
    });
    (
        StatusCode::ACCEPTED,
        Json(json!({"status": "accepted", "message": "Reload initiated"})),
    )
        .into_response()
}

/// `GET /reload`: Web3Signer's status document.
async fn reload_status(State(st): State<Arc<AppState>>) -> Json<Value> {
    let r = st.reload.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let status = if r.running {
        "running"
    } else {
        r.last.unwrap_or("idle")
    };
    let mut body = json!({"status": status});
    if let Some(t) = r.last_time {
        body["lastOperationTime"] = json!(t);
    }
    if let Some(e) = r.last_error {
        body["lastError"] = json!(e);
    }
    Json(body)
}

/// Web3Signer's negotiation: JSON when any Accept media range is `application/json` or `*/*`;
/// otherwise (including no Accept header, which Teku sends) the bare hex signature as text.
fn wants_json(headers: &HeaderMap) -> bool {
    headers.get_all(header::ACCEPT).iter().any(|value| {
        value.to_str().unwrap_or("").split(',').any(|range| {
            let media = range.split(';').next().unwrap_or("").trim();
            media.eq_ignore_ascii_case("application/json") || media == "*/*"
        })
    })
}

async fn sign(
    State(st): State<Arc<AppState>>,
    Path(identifier): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    // Bounded work: past the limit a request is refused at once (503), it does not queue.
    // `body` is extracted before this runs, so a permit is taken only once the whole body has
    // arrived: a client that stalls its body holds none (and `conn` cuts it off with 408).
    let Ok(_permit) = st.in_flight.clone().try_acquire_owned() else {
        metrics::counter!("ensign_signing_requests_total", "type" => "unknown", "outcome" => "overloaded").increment(1);
        return Err(ApiError::Unavailable(
            "too many sign requests in flight".into(),
        ));
    };
    let mut info = SignInfo::default();
    let result = sign_inner(&st, &identifier, &headers, &body, &mut info).await;
    let sign_type = info.sign_type;
    let duration_us = started.elapsed().as_micros() as u64;
    let outcome = match &result {
        Ok(_) => {
            let secs = started.elapsed().as_secs_f64();
            metrics::histogram!("signing_bls_signing_duration").record(secs);
            metrics::histogram!("ensign_signing_duration_seconds", "type" => sign_type)
                .record(secs);
            "signed"
        }
        Err(ApiError::Refused(_)) => "refused",
        Err(e) => {
            match e {
                ApiError::Request(api_spec::Error::Malformed(_)) => {
                    metrics::counter!("http_bls_malformed_request_count_total").increment(1)
                }
                ApiError::UnknownKey(_) => {
                    metrics::counter!("signing_bls_missing_identifier_count_total").increment(1)
                }
                _ => {}
            }
            "error"
        }
    };
    metrics::counter!("ensign_signing_requests_total", "type" => sign_type, "outcome" => outcome)
        .increment(1);
    // One line per sign request (issue 5): type, key, slot/epoch, outcome, duration. The
    // identifier is client input: it is logged only once it parsed as a public key, and then
    // in canonical hex, so a request cannot inject text into the log.
    let pubkey = info.pubkey.map(const_hex::encode_prefixed);
    let pubkey = pubkey.as_deref().unwrap_or("(malformed)");
    match &result {
        Ok(_) => tracing::info!(
            r#type = sign_type,
            pubkey,
            slot = info.slot,
            epoch = info.epoch,
            outcome,
            duration_us,
            "sign"
        ),
        Err(e) => {
            // Refusals are the signer doing its job but mean a validator client is about to be
            // slashed elsewhere or misconfigured: operators must see them.
            let status = e.status().as_u16();
            if matches!(e, ApiError::Refused(_) | ApiError::Internal(_)) {
                tracing::warn!(
                    r#type = sign_type, pubkey, slot = info.slot, epoch = info.epoch,
                    outcome, status, duration_us, error = %e, "sign"
                )
            } else {
                tracing::info!(
                    r#type = sign_type, pubkey, slot = info.slot, epoch = info.epoch,
                    outcome, status, duration_us, error = %e, "sign"
                )
            }
        }
    }
    result
}

/// What the sign handler learned about a request before it finished, for its log line.
#[derive(Default)]
struct SignInfo {
    sign_type: &'static str,
    /// The identifier, when it is a well-formed public key.
    pubkey: Option<[u8; 48]>,
    slot: Option<u64>,
    epoch: Option<u64>,
}

async fn sign_inner(
    st: &Arc<AppState>,
    identifier: &str,
    headers: &HeaderMap,
    body: &[u8],
    info: &mut SignInfo,
) -> Result<Response, ApiError> {
    info.sign_type = "unknown";
    info.pubkey = parse_identifier(identifier);
    let request = SignRequest::parse(body)?;
    info.sign_type = request.sign_type.name();
    if let Some(enclave) = &st.enclave {
        // Issue 15: the parent instance can reach the data port; an exit is irreversible.
        if request.sign_type == api_spec::sign::SignType::VoluntaryExit
            && !enclave.allow_voluntary_exits()
        {
            return Err(ApiError::Forbidden(
                "this enclave does not sign voluntary exits (--enclave-allow-voluntary-exits)",
            ));
        }
    }
    let key = info
        .pubkey
        .and_then(|pk| st.keyring().get(&pk))
        .ok_or_else(|| ApiError::UnknownKey(identifier.to_string()))?;
    let signable = request.signable(&st.network)?;
    info.slot = signable.slot;
    info.epoch = signable.epoch;

    // The BLS signature (CPU, ~0.4-0.8 ms) is computed while slashing protection checks and
    // records the message (I/O, a group commit), but it is RELEASED only after the record is
    // durable: on a refusal or a store error it is dropped inside this process, never sent.
    // (The project rule: a signature leaves the process only after its record is durable.) Do
    // not return `signature` on any other path.
    let signing = st.signer.sign(key.clone(), signable.signing_root.0);
    if let (Some(sp), Some((gvr, check))) = (st.slashing.clone(), signable.slashing) {
        let pubkey = slashing::Pubkey(key.pubkey());
        let gvr = slashing::Root(gvr.0);
        let root = slashing::Root(signable.signing_root.0);
        let db_started = Instant::now();
        let submitted = match check {
            SlashingCheck::Block { slot } => slashing::Check::Block { slot },
            SlashingCheck::Attestation {
                source_epoch,
                target_epoch,
            } => slashing::Check::Attestation {
                source_epoch,
                target_epoch,
            },
        };
        let operation = match submitted {
            slashing::Check::Block { .. } => "block",
            slashing::Check::Attestation { .. } => "attestation",
        };
        // SQLite decides on its writer thread and answers this task directly; PostgreSQL's
        // decision is a blocking round trip and gets a blocking thread.
        let verdict = match sp.submit(gvr, pubkey, submitted, root) {
            Some(pending) => pending.await.map_err(|_| {
                ApiError::Internal("slashing store stopped before answering".into())
            })?,
            None => tokio::task::spawn_blocking(move || sp.decide(gvr, pubkey, submitted, root))
                .await
                .map_err(|e| ApiError::Internal(format!("slashing task: {e}")))?,
        };
        metrics::histogram!("eth2_slashingprotection_database_duration", "signingOperation" => operation)
            .record(db_started.elapsed().as_secs_f64());
        if matches!(verdict, Err(slashing::Error::Refused(_))) {
            metrics::counter!("eth2_slashingprotection_prevented_signings_total").increment(1);
        }
        if let Err(e) = verdict {
            return Err(ApiError::from(e));
        }
    }
    let signature = signing
        .await
        .map_err(|_| ApiError::Internal("signing pool stopped".into()))?;
    if st.slashing.is_some() {
        // Web3Signer counts every permitted request, of any type.
        metrics::counter!("eth2_slashingprotection_permitted_signings_total").increment(1);
    }
    let signature = const_hex::encode_prefixed(signature);
    Ok(if wants_json(headers) {
        Json(json!({ "signature": signature })).into_response()
    } else {
        (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            signature,
        )
            .into_response()
    })
}

/// Web3Signer's Host allow-list: the Host header's host part must be listed (case-insensitive)
/// unless the list holds `*`; otherwise 403 with `{"message": "Host not authorized."}`.
async fn host_allowlist(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if st.host_allowlist.iter().any(|h| h == "*") {
        return next.run(req).await;
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(host_part)
        .unwrap_or_default();
    if st
        .host_allowlist
        .iter()
        .any(|allowed| allowed.trim().eq_ignore_ascii_case(&host))
    {
        next.run(req).await
    } else {
        tracing::debug!(host = %host, "host not in allow-list");
        (
            StatusCode::FORBIDDEN,
            Json(json!({"message": "Host not authorized."})),
        )
            .into_response()
    }
}

/// The host of a Host header value: without the port, IPv6 brackets removed.
fn host_part(value: &str) -> String {
    let v = value.trim();
    if let Some(rest) = v.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("").to_string();
    }
    v.rsplit_once(':').map_or(v, |(h, _)| h).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_is_rfc3339_utc_to_the_second() {
        let now = now_rfc3339();
        let shape: String = now
            .chars()
            .map(|c| if c.is_ascii_digit() { '9' } else { c })
            .collect();
        assert_eq!(shape, "9999-99-99T99:99:99Z", "{now}");
        assert!(now.as_str() > "2026-01-01", "{now}");
    }

    #[test]
    fn accept_negotiation_matches_web3signer() {
        let mut h = HeaderMap::new();
        assert!(!wants_json(&h));
        h.insert(header::ACCEPT, "text/plain".parse().unwrap());
        assert!(!wants_json(&h));
        h.insert(
            header::ACCEPT,
            "text/plain, application/json;q=0.5".parse().unwrap(),
        );
        assert!(wants_json(&h));
        h.insert(header::ACCEPT, "*/*".parse().unwrap());
        assert!(wants_json(&h));
        h.insert(header::ACCEPT, "application/*".parse().unwrap());
        assert!(!wants_json(&h));
    }

    #[test]
    fn host_part_strips_port_and_brackets() {
        assert_eq!(host_part("127.0.0.1:9000"), "127.0.0.1");
        assert_eq!(host_part("localhost"), "localhost");
        assert_eq!(host_part("[::1]:9000"), "::1");
    }
}
