//! The parent ⇄ enclave control protocol.
//!
//! Runs on its own endpoint (by convention vsock port 5001 in the enclave),
//! never on the data port that clients reach. Wire format:
//!
//! - a frame is a 4-byte big-endian length and that many bytes of payload;
//!   the length is checked against a cap ([`MAX_FRAME_LEN`], 4 MiB, by
//!   default) before anything is allocated, and a larger frame is answered
//!   with [`ErrorCode::FrameTooLarge`] and the connection closed;
//! - the payload is one JSON [`Request`] or [`Response`] (see [`messages`]);
//! - the first exchange on every connection is `Hello { protocol_version }`
//!   both ways ([`PROTOCOL_VERSION`]); anything else first, or another
//!   version, is refused and the connection closed;
//! - then any number of request/reply pairs, strictly alternating.
//!
//! The enclave runs a [`ControlServer`] with its [`ControlHandler`]; the host
//! uses a [`ControlClient`].

mod client;
pub mod frame;
pub mod messages;
mod server;

pub use client::{ControlClient, ControlClientConfig};
pub use frame::{read_frame, write_frame, FrameError, MAX_FRAME_LEN};
pub use messages::*;
pub use server::{ControlHandler, ControlServer, ControlServerConfig, HandlerError};

/// Errors of the host-side client.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot connect to the enclave control port: {0}")]
    Connect(#[source] std::io::Error),
    #[error("control connection: {0}")]
    Frame(#[from] FrameError),
    #[error("control request timed out")]
    Timeout,
    #[error("cannot encode control request: {0}")]
    Encode(#[source] serde_json::Error),
    #[error("malformed reply from the enclave: {0}")]
    Malformed(String),
    #[error("enclave speaks control protocol {theirs}, we speak {ours}")]
    VersionMismatch { ours: u32, theirs: u32 },
    #[error("enclave refused the request ({code}): {message}")]
    Remote { code: ErrorCode, message: String },
    #[error("unexpected reply from the enclave: wanted {wanted}, got {got}")]
    UnexpectedReply {
        wanted: &'static str,
        got: &'static str,
    },
}

impl ControlError {
    /// The enclave's error code, if the enclave refused the request.
    pub fn remote_code(&self) -> Option<ErrorCode> {
        match self {
            ControlError::Remote { code, .. } => Some(*code),
            _ => None,
        }
    }
}
