//! Harness pieces the tests of several crates share, so that each exists once:
//!
//! - [`moto`]: moto's server as a local stand-in for AWS (KMS, Secrets Manager, DynamoDB),
//!   installed by `scripts/moto-server`;
//! - [`pg`]: a fresh PostgreSQL schema per test on the machine's server;
//! - [`fake_kms`]: a KMS that checks Recipient attestation documents against a PCR0 key policy
//!   and answers with real CMS (`examples/fake-kms.rs` serves one for `scripts/enclave-demo`);
//! - [`enclave`]: a free loopback listener and the DynamoDB keys table.
//!
//! # Invariants
//!
//! - Only ever a `[dev-dependencies]` entry: nothing here reaches a production build (checked by
//!   `tests/tests/dockerfiles.rs`, which reads the manifests).
//! - A stand-in that cannot run makes its test say `SKIPPED` loudly, or fail when the matching
//!   `ENSIGN_REQUIRE_*` variable is set (CI sets them): CI never skips silently.

#![forbid(unsafe_code)]

pub mod enclave;
pub mod fake_kms;
pub mod moto;
pub mod pg;
