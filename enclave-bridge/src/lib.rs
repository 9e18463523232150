//! Parent/enclave bridge for running ensign inside an AWS Nitro Enclave.
//!
//! # Purpose
//!
//! Everything that crosses the enclave boundary, and nothing that signs:
//!
//! - [`transport`]: one byte-stream abstraction over `AF_VSOCK`, TCP and Unix
//!   sockets ([`Endpoint`], parsed from `vsock:16:5000`, `tcp:127.0.0.1:9000`,
//!   `unix:/run/x.sock`), so every piece below runs over TCP in tests and over
//!   vsock in production.
//! - [`forward`]: a capped byte pipe between two endpoints (parent TCP 8443 →
//!   enclave data port; enclave loopback → parent outbound proxy).
//! - [`proxy`]: the parent-side outbound proxy, one listener per allowed
//!   destination (the model of AWS's `vsock-proxy`).
//! - [`control`]: the parent ⇄ enclave control protocol — length-prefixed,
//!   size-capped, versioned JSON frames on a port of its own, a
//!   [`control::ControlServer`] dispatch loop for the enclave (which supplies a
//!   [`control::ControlHandler`]) and a [`control::ControlClient`] for the host.
//! - [`attestation`]: the [`attestation::Attestor`] trait (the NSM in an
//!   enclave), and [`attestation::verify_attestation`], a verifier of the NSM's
//!   COSE_Sign1 attestation documents against a root given by the caller
//!   ([`attestation::AWS_NITRO_ROOT_G1_PEM`] for real enclaves).
//! - [`kms`]: KMS `Decrypt` behind the [`kms::KeyDecryptor`] trait — with a
//!   `Recipient` (attested ephemeral RSA key, answer opened from the CMS
//!   `EnvelopedData` in `CiphertextForRecipient`) or plain.
//! - `host` (feature `host`, on by default): the parent-instance binary
//!   `ensign-host`'s library half — key record sources (directory,
//!   DynamoDB), instance-role credentials, the enclave supervisor.
//! - `test_util` (feature `test-util`, never in production builds): a
//!   throw-away attestation PKI and attestor, and a fake KMS HTTP server that
//!   checks the attestation and a PCR0 key policy and answers with real CMS.
//!
//! # Invariants
//!
//! - **No plaintext key material goes to the parent.** Secrets travel parent →
//!   enclave only (AWS credentials, KMS ciphertexts); replies carry counts,
//!   ids and reasons, never a plaintext. Every secret is held in a zeroizing
//!   type whose `Debug` is redacted ([`secret`]), and no error or log line
//!   carries one.
//! - **Every control frame is size-checked before memory is allocated for
//!   it**: the 4-byte length is compared with the cap (default
//!   [`control::MAX_FRAME_LEN`], 4 MiB) first; a larger frame is refused and
//!   the connection closed.
//! - **A bad client never stops a listener**: garbage, oversize or truncated
//!   frames, a wrong protocol version, or a peer that vanishes end that one
//!   connection (with an error frame where the peer can still read it); the
//!   accept loops keep running.
//! - **The control port is not the data port.** The control protocol runs on
//!   its own endpoint, so a network peer reaching the data path can never
//!   speak it (the AWS sample shared port 5000 for both).
//! - **Initialisation happens once.** `Init` is accepted only while the
//!   enclave waits for it (or after a failed attempt); a second `Init` on an
//!   initialised enclave is refused with [`control::ErrorCode::AlreadyInitialised`].
//! - **The outbound proxy reaches one destination per listener**, fixed at
//!   start and checked against an allowlist; nothing a client sends can pick
//!   another destination.
//! - **Attestation roots are parameters.** The verifier trusts exactly the
//!   root it is given; the AWS root is a documented constant, never read from
//!   the document being checked.
//!
//! # Wiring
//!
//! How `server` (the enclave side: `server/src/enclave.rs`) and `ensign-host` (`host`) use
//! these pieces — ports, messages, which side holds what — is in ARCHITECTURE.md ("Enclave
//! mode"). Inside an enclave the HTTPS client needs CA roots in the image (or the roots the
//! image names: `kms::KmsClientConfig::trust_roots_pem`).
//!
//! This crate is a leaf: it knows nothing of BLS keys, slashing protection or
//! HTTP signing; the `server` crate wires it in.

#![forbid(unsafe_code)]

pub mod attestation;
pub mod control;
pub mod forward;
#[cfg(feature = "host")]
pub mod host;
pub mod kms;
pub mod proxy;
pub mod secret;
pub mod transport;

#[cfg(any(feature = "test-util", feature = "insecure-test-attestor"))]
pub mod test_util;

pub use transport::{BoxStream, Endpoint, Listener};
