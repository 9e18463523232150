//! Test material (cargo feature `test-util`; never enable in production):
//! a throw-away attestation PKI and [`TestAttestor`], and a [`FakeKms`] that
//! checks Recipient attestation documents and answers with real CMS.
//!
//! Feature `insecure-test-attestor` alone brings only the PKI and attestor
//! (for `ensign --enclave-attestation insecure-test:<dir>`), not the fake KMS.

#[cfg(feature = "test-util")]
mod fake_kms;
mod pki;

#[cfg(feature = "test-util")]
pub use fake_kms::{CmsEncoding, FakeKms, FakeKmsConfig, FakeKmsStats, Tamper};
pub use pki::{
    TestAttestor, TestCert, TestExtension, TestPki, TestPkiOptions, TEST_PKI_FILE, TEST_ROOT_FILE,
};
