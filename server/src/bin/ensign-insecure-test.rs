//! `ensign` built with the INSECURE test attestor (cargo feature `insecure-test-attestation`):
//! `--enclave-attestation insecure-test:<dir>` signs attestation documents with a throw-away
//! test PKI, to run enclave mode off-enclave. For the end-to-end tests and
//! scripts/enclave-demo only; the `ensign` binary, which the enclave image ships, never has it.

#[path = "../main.rs"]
mod ensign;

fn main() -> std::process::ExitCode {
    ensign::main()
}
