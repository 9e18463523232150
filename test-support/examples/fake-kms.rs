//! A standalone fake KMS for trying enclave mode on one machine
//! (`scripts/enclave-demo`). Test material only (crate `test-support`).
//!
//! ```text
//! cargo run -p test-support --example fake-kms -- \
//!     --pki-dir DIR [--policy-pcr0 HEX96]
//! ```
//!
//! - `--pki-dir`: the shared throw-away attestation PKI
//!   (`TestPki::load_or_generate`: `DIR/test-pki.json`, `DIR/test-root.pem`);
//!   Recipient attestation documents must chain to its root. An enclave-mode
//!   `ensign --enclave-attestation insecure-test:DIR` signs with the same PKI.
//! - `--policy-pcr0`: the key policy's `kms:RecipientAttestation:ImageSha384`
//!   condition (96 hex digits); without it plain `Decrypt` is allowed too.
//!
//! Prints `url=http://127.0.0.1:PORT` (for `ensign keys encrypt`),
//! `https_url=https://127.0.0.1:PORT` (the same KMS over TLS as
//! `kms.us-east-1.amazonaws.com`, for the enclave, whose roots are
//! `DIR/kms-ca.pem`, written here) and `key_arn=...` on standard output (one
//! per line) once listening, then serves until interrupted. Ciphertexts are
//! valid only for this run (the blob key is made at start).

use enclave_bridge::test_util::TestPki;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use test_support::fake_kms::{FakeKms, FakeKmsConfig};

fn usage() -> ExitCode {
    eprintln!("usage: fake-kms --pki-dir DIR [--policy-pcr0 HEX96]");
    ExitCode::from(2)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let mut pki_dir: Option<PathBuf> = None;
    let mut pcr0: Option<Vec<u8>> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--pki-dir", Some(v)) => pki_dir = Some(v.into()),
            ("--policy-pcr0", Some(v)) => match hex::decode(v.trim()) {
                Ok(b) if b.len() == 48 => pcr0 = Some(b),
                _ => {
                    eprintln!("--policy-pcr0 must be 96 hex digits (a SHA-384 PCR)");
                    return ExitCode::from(2);
                }
            },
            _ => return usage(),
        }
    }
    let Some(pki_dir) = pki_dir else {
        return usage();
    };
    let pki = match TestPki::load_or_generate(&pki_dir) {
        Ok(p) => p,
        Err(e) => {
            eprintln!(
                "cannot load or create the test PKI in {}: {e}",
                pki_dir.display()
            );
            return ExitCode::FAILURE;
        }
    };
    let mut config = FakeKmsConfig::new(pki.root_der.clone());
    config.required_pcr0 = pcr0;
    let kms = match FakeKms::start_https(config, &["kms.us-east-1.amazonaws.com"]).await {
        Ok(k) => k,
        Err(e) => {
            eprintln!("cannot start the fake KMS: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "fake-kms: TEST MATERIAL ONLY: attestation root {}",
        pki_dir.join("test-root.pem").display()
    );
    let ca = pki_dir.join("kms-ca.pem");
    if let Err(e) = std::fs::write(&ca, kms.ca_pem().unwrap_or_default()) {
        eprintln!("cannot write {}: {e}", ca.display());
        return ExitCode::FAILURE;
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "url={}", kms.url());
    let _ = writeln!(out, "https_url={}", kms.https_url().unwrap_or_default());
    let _ = writeln!(out, "key_arn={}", kms.key_arn());
    let _ = out.flush();
    drop(out);
    let _ = tokio::signal::ctrl_c().await;
    ExitCode::SUCCESS
}
