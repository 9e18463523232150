//! A throw-away attestation PKI and [`TestAttestor`] (feature `insecure-test-attestor`; never in
//! a production build): what `ensign --enclave-attestation
//! insecure-test:<dir>` (the `ensign-insecure-test` build) and the tests attest with. The fake
//! KMS and other test doubles are in the `test-support` crate (a dev-dependency only).

mod pki;

pub use pki::{
    TestAttestor, TestCert, TestExtension, TestPki, TestPkiOptions, TEST_PKI_FILE, TEST_ROOT_FILE,
};
