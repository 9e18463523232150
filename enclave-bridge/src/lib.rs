//! Parent/enclave bridge for running ensign inside an AWS Nitro Enclave: everything that crosses
//! the enclave boundary, and nothing that signs. The map (ports, messages, which side holds what)
//! is ARCHITECTURE.md, "Enclave mode".
//!
//! Modules: [`transport`] (one byte stream over vsock, TCP and Unix: [`Endpoint`]), [`forward`]
//! (capped byte pipes), [`proxy`] (the parent's outbound proxy, one destination per listener),
//! [`control`] (the parent ⇄ enclave protocol: frames, messages, server and client),
//! [`attestation`] (the `Attestor` trait, the NSM, the document verifier), [`kms`] (`Decrypt`,
//! attested or plain), [`records`] (the encrypted key record, one definition for writer and
//! reader), [`secret`] (zeroizing, redacted types); `test_util` (feature `insecure-test-attestor`,
//! never in production builds) holds the test PKI and attestor. Both sides use this crate: the
//! enclave through `server`, the parent instance through the `host` crate (`ensign-host`).
//!
//! # Contract
//!
//! - No plaintext key material goes to the parent: secrets travel parent → enclave only, replies
//!   carry ids, counts and reasons, and every secret is a zeroizing type with a redacted `Debug`.
//! - A control frame's length is checked against the cap ([`control::MAX_FRAME_LEN`]) before
//!   anything is allocated for it; a bad peer ends its own connection, never a listener.
//! - The control port is not the data port, and `Init` is accepted once (until it succeeds).
//! - Each outbound proxy listener reaches the one destination fixed at start.
//! - Attestation roots are parameters: the verifier trusts exactly the root it is given.
//! - A leaf: no BLS keys, slashing protection or HTTP signing here; `server` wires it in.

#![forbid(unsafe_code)]

pub mod attestation;
pub mod control;
pub mod forward;
pub mod kms;
pub mod proxy;
pub mod records;
pub mod secret;
pub mod transport;

#[cfg(feature = "insecure-test-attestor")]
pub mod test_util;

pub use transport::{BoxStream, Endpoint, Listener};
