//! The Web3Signer-compatible wire contract of ensign and the consensus-spec signing roots.
//!
//! Purpose: turn a sign request body into the exact 32-byte signing root the consensus specs
//! define for it (phase0 `compute_signing_root` with the domain of the message's type and
//! fork), plus what slashing protection must check. Also: the SSZ containers involved, the
//! built-in networks' fork schedules, and the JSON shapes of the other endpoints.
//!
//! Invariants:
//! - The signing root is always recomputed from the typed payload; a client-supplied root is
//!   only compared with it (a mismatch is an error, never signed).
//! - Every size limit (list lengths, bitfield lengths, fixed byte lengths) is enforced while
//!   parsing, so a request that parses has a well-defined SSZ root.
//! - No I/O and no key material here: this crate is pure functions over request bytes.

pub mod containers;
pub mod network;
pub mod openapi;
pub mod primitives;
pub mod sign;

/// Errors of request parsing and signing-root computation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The body is not a well-formed request (HTTP 400).
    #[error("{0}")]
    Malformed(String),
    /// The type's domain depends on `fork_info`, and the request has none.
    #[error("fork_info is required for this type")]
    MissingForkInfo,
    /// The client's `signingRoot` differs from the root computed from the payload.
    #[error("signing root mismatch: supplied {supplied}, computed {computed}")]
    SigningRootMismatch {
        /// As sent by the client.
        supplied: primitives::Root,
        /// As computed from the payload.
        computed: primitives::Root,
    },
    /// A network configuration could not be read.
    #[error("{0}")]
    Config(String),
}
