//! The one place where errors become HTTP statuses.
//!
//! Clients rely on status codes only (Lighthouse, Teku, Lodestar: 200/400/404/412/500). The
//! body is Web3Signer's plain reason phrase, followed by a short client-facing explanation where
//! the fault is the client's. Internal detail (store errors, task failures) goes to the log,
//! never to the client. A slashing refusal (412) is a verdict, not a fault.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

/// Everything a request handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Request(#[from] api_spec::Error),
    #[error("no key loaded for identifier {0}")]
    UnknownKey(String),
    #[error("refused by slashing protection: {0}")]
    Refused(slashing::Refusal),
    #[error("slashing protection store failed: {0}")]
    SlashingStore(String),
    #[error("internal error: {0}")]
    Internal(String),
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// Enclave mode, before a successful `Init`: only status and attestation are served.
    #[error("enclave not ready: {0}")]
    EnclaveNotReady(String),
    /// `/api/v1/attestation` outside enclave mode.
    #[error("attestation requested outside enclave mode")]
    NotEnclaveMode,
    /// The request body did not arrive by its deadline (`conn`); the connection is closed.
    #[error("request body not received in time")]
    BodyTimeout,
    /// A message this signer is configured never to sign (a policy, not slashing protection:
    /// 403, distinct from a slashing refusal's 412).
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
}

impl From<slashing::Error> for ApiError {
    fn from(e: slashing::Error) -> Self {
        match e {
            slashing::Error::Refused(r) => ApiError::Refused(r),
            other => ApiError::SlashingStore(other.to_string()),
        }
    }
}

impl ApiError {
    /// The status this error maps to.
    pub fn status(&self) -> StatusCode {
        use api_spec::Error as E;
        match self {
            ApiError::Request(E::Malformed(_)) => StatusCode::BAD_REQUEST,
            // Web3Signer answers these two with 500 (they are raised outside its 400 block);
            // validator clients expect that, so ensign does the same.
            ApiError::Request(E::MissingForkInfo | E::SigningRootMismatch { .. }) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            ApiError::Request(E::Config(_)) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::UnknownKey(_) => StatusCode::NOT_FOUND,
            ApiError::Refused(_) => StatusCode::PRECONDITION_FAILED,
            ApiError::SlashingStore(_) | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Unavailable(_) | ApiError::EnclaveNotReady(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::NotEnclaveMode => StatusCode::NOT_FOUND,
            ApiError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
        }
    }

    /// What the client may read beyond the reason phrase.
    fn client_detail(&self) -> Option<String> {
        use api_spec::Error as E;
        match self {
            ApiError::Request(E::Malformed(m)) => Some(m.clone()),
            ApiError::Request(E::MissingForkInfo) => {
                Some("fork_info is required for this type".into())
            }
            ApiError::Request(E::SigningRootMismatch { .. }) => {
                Some("signingRoot does not match the payload".into())
            }
            ApiError::UnknownKey(_) => Some("no key loaded for this identifier".into()),
            ApiError::Refused(_) => Some("slashing protection refused to sign".into()),
            // The state name only (the reasons are in /healthcheck).
            ApiError::EnclaveNotReady(m) => Some(m.clone()),
            ApiError::NotEnclaveMode => Some(
                "attestation documents are served only in enclave mode (--enclave-mode=true)"
                    .into(),
            ),
            ApiError::BodyTimeout => Some("the request body did not arrive in time".into()),
            ApiError::Forbidden(m) => Some((*m).into()),
            _ => None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        // A closed enclave answering 503 is expected (health checks, early clients), not a fault.
        // The two 500s a client causes (Web3Signer's statuses, see `status`) are the client's
        // fault, not ensign's: WARN, so a misbehaving client cannot flood the error log.
        let client_caused = matches!(
            self,
            ApiError::Request(
                api_spec::Error::MissingForkInfo | api_spec::Error::SigningRootMismatch { .. }
            )
        );
        if client_caused {
            tracing::warn!(error = %self, status = status.as_u16(), "request failed");
        } else if status.is_server_error() && !matches!(self, ApiError::EnclaveNotReady(_)) {
            tracing::error!(error = %self, status = status.as_u16(), "request failed");
        } else {
            tracing::debug!(error = %self, status = status.as_u16(), "request rejected");
        }
        let reason = status.canonical_reason().unwrap_or("Error");
        let body = match self.client_detail() {
            // One line, bounded: a parse error can quote the input.
            Some(d) => format!("{reason}: {}", truncate(&d, 200)),
            None => reason.to_string(),
        };
        (
            status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            body,
        )
            .into_response()
    }
}

fn truncate(s: &str, max: usize) -> String {
    let line = s.lines().next().unwrap_or("");
    if line.len() <= max {
        return line.to_string();
    }
    let mut end = max;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &line[..end])
}
