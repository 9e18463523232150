//! Prometheus metrics, served on their own listener (`--metrics-enabled`, `--metrics-host`,
//! `--metrics-port`), never on the signing API's port. The listener is served by `conn` with
//! the signing API's timeouts and a small cap of its own ([`MAX_CONNECTIONS`]), so clients that
//! connect and send nothing cannot hold it either.
//!
//! Names follow Web3Signer where it has the metric (`signing_bls_signing_duration`,
//! `signing_bls_missing_identifier_count_total`, `http_bls_malformed_request_count_total`,
//! `signing_signers_loaded_count`, `eth2_slashingprotection_permitted_signings_total`,
//! `eth2_slashingprotection_prevented_signings_total`,
//! `eth2_slashingprotection_database_duration`); ensign's own additions start with `ensign_` or
//! `http_requests`. HTTP metrics are labelled by the matched route template, never by the raw
//! path, which holds a public key. Every metric is listed in `docs/metrics.md`.

use std::sync::OnceLock;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Latency buckets (seconds) for ensign's histograms: a signature takes ~0.4-0.8 ms, a durable
/// record a few ms, and a saturated server tens of ms.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder (once) and returns its handle.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Prefix("ensign_".into()), &BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Prefix("http_request_duration".into()),
                        &BUCKETS,
                    )
                })
                .expect("non-empty buckets")
                .build_recorder();
            let handle = recorder.handle();
            // Tests start several servers in one process; only the first install can win.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_histogram!(
        "signing_bls_signing_duration",
        Unit::Seconds,
        "Time to answer a sign request, slashing protection included (Web3Signer's name)"
    );
    describe_counter!(
        "signing_bls_missing_identifier_count_total",
        "Sign requests for a key that is not loaded"
    );
    describe_counter!(
        "http_bls_malformed_request_count_total",
        "Sign requests rejected as malformed (400)"
    );
    describe_gauge!("signing_signers_loaded_count", "Keys loaded");
    describe_counter!(
        "eth2_slashingprotection_permitted_signings_total",
        "Sign requests permitted by slashing protection (every type)"
    );
    describe_counter!(
        "eth2_slashingprotection_prevented_signings_total",
        "Blocks and attestations refused by slashing protection"
    );
    describe_histogram!(
        "eth2_slashingprotection_database_duration",
        Unit::Seconds,
        "Time to check and durably record one block or attestation"
    );
    describe_counter!(
        "ensign_signing_requests_total",
        "Sign requests by type and outcome (signed, refused, error)"
    );
    describe_histogram!(
        "ensign_signing_duration_seconds",
        Unit::Seconds,
        "Sign request latency by type (signed requests)"
    );
    describe_counter!(
        "http_requests_total",
        "HTTP requests by method, matched route and status"
    );
    describe_histogram!(
        "http_request_duration_seconds",
        Unit::Seconds,
        "HTTP request latency by method and matched route"
    );
    describe_gauge!(
        "ensign_key_loading_processed",
        "Keys processed so far in the running or last load, by source"
    );
    describe_gauge!(
        "ensign_key_loading_keys",
        "Keys to process in the running or last load, by source"
    );
}

/// Middleware: counts and times every request by its matched route template.
pub async fn track_http(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let method = req.method().as_str().to_string();
    let started = std::time::Instant::now();
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("http_request_duration_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// Most connections to the metrics listener at once: a scraper or two use one each. Past it,
/// connections that wait for their client are reclaimed as on the signing API (`conn`).
pub const MAX_CONNECTIONS: usize = 16;

/// Serves `GET /metrics` on `addr` with the signing API's connection timeouts (`limits`) and a
/// cap of [`MAX_CONNECTIONS`]; returns the bound address and the serving task (aborting it
/// closes every connection).
pub async fn serve(
    addr: &str,
    limits: crate::conn::Limits,
) -> std::io::Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    let handle = install();
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let h = handle.clone();
            async move {
                h.run_upkeep();
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4",
                    )],
                    h.render(),
                )
            }
        }),
    );
    let limits = crate::conn::Limits {
        max_connections: MAX_CONNECTIONS,
        ..limits
    };
    let task = tokio::spawn(async move {
        // Serves until the server stops (`Running::stop` aborts this task).
        let forever = std::future::pending();
        if let Err(e) = crate::conn::serve(listener, None, app, limits, "metrics", forever).await {
            tracing::error!(error = %e, "metrics listener failed");
        }
    });
    tracing::info!("metrics on http://{local}/metrics");
    Ok((local, task))
}
