//! `ensign verify-attestation`: does the signer at `--url` run the expected enclave image, and
//! is the TLS key it answers with the one that image made?
//!
//! 1. Connect over TLS, accepting the server's (self-signed) certificate for this one
//!    connection, but keeping it: it is what the rest checks.
//! 2. `GET /api/v1/attestation?nonce=<fresh random hex>` on that same connection.
//! 3. Verify the document (`enclave_bridge::attestation::verify_attestation`: COSE_Sign1
//!    ES384 signature, certificate chain to `--root-cert`, by default the AWS Nitro Enclaves
//!    root G1, validity now, no unrecognised critical extension).
//! 4. Refuse a debug-mode enclave (PCR0 all zeros) unless `--allow-debug-enclave`, whatever
//!    `--expected-pcr0` is; then compare PCR0 with `--expected-pcr0`, the document's nonce
//!    with ours (freshness: not a replayed document), its `timestamp` with the time the
//!    request was sent and the answer received (within
//!    `enclave_bridge::attestation::MAX_CLOCK_SKEW`), and its `user_data` with the SHA-256
//!    of the SubjectPublicKeyInfo of the certificate the connection presented (the TLS key
//!    is the attested enclave's). The `certificate` in the answer must be that certificate
//!    too.
//!
//! On success it prints the certificate's SHA-256 fingerprint, for validator clients to pin
//! (the certificate itself is in the answer, and in `/api/v1/attestation`).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use http_body_util::BodyExt as _;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

use crate::config::VerifyAttestationArgs;
use crate::enclave::{spki_sha256, ATTESTATION_PATH, MAX_NONCE_LEN};
use crate::tls::{fingerprint, fingerprint_hex, provider_signatures};

/// Largest answer read (a document is a few KiB).
const MAX_ANSWER: usize = 256 * 1024;

/// Printed (stderr) whenever `--allow-debug-enclave` is given.
const DEBUG_FLAG_WARNING: &str = "WARNING: --allow-debug-enclave is for development only: a \
     debug-mode enclave (PCR0 all zeros) will be accepted, although its measurements prove \
     nothing and the parent instance can read its console. Never pin a certificate on its word.";

/// Heads the report when a debug-mode enclave was accepted.
const DEBUG_REPORT_WARNING: &str = "WARNING: DEBUG-MODE ENCLAVE (PCR0 all zeros), accepted \
     because of --allow-debug-enclave: this attestation proves NOTHING about the code running \
     there. Do not use this signer for real keys.";

/// Accepts any server certificate (the attestation is what vouches for it), but still checks
/// that the server holds the certificate's key (handshake signatures, by the provider).
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    provider_signatures!(0);
}

/// `https://HOST[:PORT][/]` → (host, port), parsed by the `url` crate (WHATWG rules: the host is
/// percent-decoded and IDNA-normalised, an IPv6 host loses its brackets). Anything beyond the
/// origin (user, path, query, fragment) is refused: the command checks one signer, not a page.
fn parse_url(text: &str) -> Result<(String, u16), String> {
    let url = url::Url::parse(text).map_err(|e| format!("--url {text}: {e}"))?;
    if url.scheme() != "https" {
        return Err(format!("--url {text}: must start with https://"));
    }
    if !url.username().is_empty()
        || url.password().is_some()
        || url.path() != "/"
        || url.query().is_some()
        || url.fragment().is_some()
    {
        return Err(format!("--url {text}: give only https://HOST:PORT"));
    }
    let host = match url.host() {
        Some(url::Host::Domain(d)) => d.to_string(),
        Some(url::Host::Ipv4(ip)) => ip.to_string(),
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        None => return Err(format!("--url {text}: no host")),
    };
    // `port_or_known_default`: https's 443 when the URL gives none.
    let port = url
        .port_or_known_default()
        .ok_or_else(|| format!("--url {text}: no port"))?;
    Ok((host, port))
}

/// The DER of the first CERTIFICATE block of a PEM text.
fn pem_to_der(pem: &[u8], what: &str) -> Result<Vec<u8>, String> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem)
        .next()
        .ok_or_else(|| format!("{what}: no CERTIFICATE block"))?
        .map(|c| c.to_vec())
        .map_err(|e| format!("{what}: {e}"))
}

/// Runs the command; the report, or why verification failed.
pub async fn run(args: &VerifyAttestationArgs) -> Result<String, String> {
    let fail = |m: String| format!("verify-attestation FAILED: {m}");
    let (host, port) = parse_url(&args.url).map_err(fail)?;
    let root = match &args.root_cert {
        Some(path) => pem_to_der(
            &std::fs::read(path).map_err(|e| fail(format!("{}: {e}", path.display())))?,
            &path.display().to_string(),
        )
        .map_err(fail)?,
        None => enclave_bridge::attestation::aws_nitro_root_g1_der(),
    };
    let nonce = match &args.nonce {
        Some(h) => {
            let b = hex::decode(h.strip_prefix("0x").unwrap_or(h))
                .map_err(|_| fail("--nonce must be hex".into()))?;
            if b.is_empty() || b.len() > MAX_NONCE_LEN {
                return Err(fail(format!("--nonce must be 1 to {MAX_NONCE_LEN} bytes")));
            }
            b
        }
        None => rand::random::<[u8; 32]>().to_vec(),
    };
    let timeout = Duration::from_secs(args.timeout_seconds.max(1));
    if args.allow_debug_enclave {
        eprintln!("{DEBUG_FLAG_WARNING}");
    }

    let identity = match (&args.tls_client_cert_file, &args.tls_client_key_file) {
        (Some(cert), Some(key)) => Some((
            crate::tls::load_cert_chain(cert).map_err(|e| fail(e.to_string()))?,
            crate::tls::load_private_key(key).map_err(|e| fail(e.to_string()))?,
        )),
        _ => None,
    };
    let fetched = tokio::time::timeout(timeout, fetch(&host, port, &nonce, identity))
        .await
        .map_err(|_| fail(format!("no answer from {} within {timeout:?}", args.url)))?
        .map_err(fail)?;
    let received_at = SystemTime::now();
    check_answer(args, &root, &nonce, &fetched, received_at).map_err(fail)
}

/// What one request for the attestation brought back.
struct Fetched {
    /// The certificate the TLS connection presented (DER).
    presented: Vec<u8>,
    /// The answer's body.
    body: Vec<u8>,
    /// Read just before the request was sent: the document may not be dated earlier (less the
    /// clock skew).
    requested_at: SystemTime,
}

/// Checks the answer to a request for the attestation with `nonce`, received at
/// `received_at`, against `root` and `args`; the report, or why it is refused.
fn check_answer(
    args: &VerifyAttestationArgs,
    root: &[u8],
    nonce: &[u8],
    fetched: &Fetched,
    received_at: SystemTime,
) -> Result<String, String> {
    let presented = &fetched.presented;
    let answer: serde_json::Value =
        serde_json::from_slice(&fetched.body).map_err(|_| "the answer is not JSON".to_string())?;
    let document = answer["attestation_document"]
        .as_str()
        .and_then(|d| base64::engine::general_purpose::STANDARD.decode(d).ok())
        .ok_or("the answer has no base64 attestation_document")?;
    let cert_pem = answer["certificate"]
        .as_str()
        .ok_or("the answer has no certificate")?;
    let answered_cert = pem_to_der(cert_pem.as_bytes(), "the answer's certificate")?;

    let doc = enclave_bridge::attestation::verify_attestation(&document, root, received_at)
        .map_err(|e| format!("the attestation document does not verify: {e}"))?;
    let pcr0 = doc.pcr(0).ok_or("the document has no PCR0")?;
    // Before comparing PCR0: an `--expected-pcr0` of zeros must not let a debug enclave in.
    let debug_accepted = match doc.check_not_debug_mode() {
        Ok(()) => false,
        Err(_) if args.allow_debug_enclave => true,
        Err(e) => {
            return Err(format!(
                "{e} (--allow-debug-enclave accepts it, for development only)"
            ))
        }
    };
    if pcr0 != args.expected_pcr0 {
        return Err(format!(
            "PCR0 is {}, expected {}: the signer runs another image",
            hex::encode(pcr0),
            hex::encode(args.expected_pcr0)
        ));
    }
    if doc.nonce.as_deref() != Some(nonce) {
        return Err("the document's nonce is not the one sent (a replayed document?)".into());
    }
    doc.check_timestamp(
        fetched.requested_at,
        received_at,
        enclave_bridge::attestation::MAX_CLOCK_SKEW,
    )
    .map_err(|e| e.to_string())?;
    let spki = spki_sha256(presented)?;
    if doc.user_data.as_deref() != Some(spki.as_slice()) {
        return Err(
            "the document's user_data is not the SHA-256 of the public key of the TLS \
             certificate this connection presented: the TLS key is not the attested enclave's"
                .into(),
        );
    }
    if answered_cert != *presented {
        return Err("the certificate in the answer is not the one the connection presented".into());
    }
    let warning = if debug_accepted {
        format!("{DEBUG_REPORT_WARNING}\n")
    } else {
        String::new()
    };
    Ok(format!(
        "{warning}attestation verified: {url}\n\
         module_id: {module}\n\
         PCR0: {pcr0}\n\
         TLS certificate SHA-256 fingerprint (pin this): {fp}",
        url = args.url,
        module = doc.module_id,
        pcr0 = hex::encode(pcr0),
        fp = fingerprint_hex(&fingerprint(presented)),
    ))
}

/// One HTTPS GET of the attestation: the certificate the connection presented, the answer's
/// body, and when the request was sent.
/// A client certificate chain and its key, presented to the enclave.
type ClientIdentity = (
    Vec<rustls::pki_types::CertificateDer<'static>>,
    rustls::pki_types::PrivateKeyDer<'static>,
);

async fn fetch(
    host: &str,
    port: u16,
    nonce: &[u8],
    identity: Option<ClientIdentity>,
) -> Result<Fetched, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)));
    let config = match identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| format!("--tls-client-cert-file/--tls-client-key-file: {e}"))?,
        None => builder.with_no_client_auth(),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
    let name = ServerName::try_from(host.to_string())
        .map_err(|_| format!("`{host}` is not a valid TLS server name"))?;
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake with {host}:{port} failed: {e}"))?;
    let presented = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or("the server presented no certificate")?
        .to_vec();

    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    let driver = tokio::spawn(connection);
    let authority = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let request = hyper::Request::get(format!("{ATTESTATION_PATH}?nonce={}", hex::encode(nonce)))
        .header(hyper::header::HOST, authority)
        .header(hyper::header::ACCEPT, "application/json")
        .body(http_body_util::Empty::<axum::body::Bytes>::new())
        .map_err(|e| e.to_string())?;
    // The document must be dated after this (less the clock skew): read as late as possible,
    // the connection already made, so a slow handshake does not widen the window.
    let requested_at = SystemTime::now();
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    let status = response.status();
    let body = http_body_util::Limited::new(response.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
        .to_bytes()
        .to_vec();
    driver.abort();
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body);
        return Err(format!(
            "{ATTESTATION_PATH} answered {status}: {}",
            text.lines()
                .next()
                .unwrap_or("")
                .chars()
                .take(200)
                .collect::<String>()
        ));
    }
    Ok(Fetched {
        presented,
        body,
        requested_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use enclave_bridge::test_util::{TestAttestor, TestPki};

    const PCR0: [u8; 48] = [0x5a; 48];

    fn args(expected_pcr0: [u8; 48], allow_debug_enclave: bool) -> VerifyAttestationArgs {
        VerifyAttestationArgs {
            url: "https://signer.test:8443".into(),
            expected_pcr0,
            root_cert: None,
            nonce: None,
            timeout_seconds: 10,
            allow_debug_enclave,
            tls_client_cert_file: None,
            tls_client_key_file: None,
        }
    }

    /// A signer's answer as `/api/v1/attestation` gives it: a TLS certificate and a document
    /// binding its key and the nonce, made by an enclave with `pcr0`, dated `doc_age` before
    /// the request.
    struct Answer {
        pki: Arc<TestPki>,
        nonce: Vec<u8>,
        fetched: Fetched,
    }

    fn answer(pcr0: [u8; 48], doc_age: Duration) -> Answer {
        let pki = Arc::new(TestPki::generate());
        let tls = rcgen::generate_simple_self_signed(vec!["signer.test".into()]).unwrap();
        let cert_der = tls.cert.der().to_vec();
        let nonce = b"fresh nonce".to_vec();
        let requested_at = SystemTime::now();
        let attestor = TestAttestor::new(pki.clone(), pcr0);
        let spki = spki_sha256(&cert_der).unwrap();
        let mut payload = attestor.document(Some(&spki), Some(&nonce), None);
        payload.timestamp -= u64::try_from(doc_age.as_millis()).unwrap();
        let document = pki.sign(&payload);
        let body = serde_json::json!({
            "attestation_document": base64::engine::general_purpose::STANDARD.encode(document),
            "certificate": tls.cert.pem(),
        })
        .to_string()
        .into_bytes();
        Answer {
            pki,
            nonce,
            fetched: Fetched {
                presented: cert_der,
                body,
                requested_at,
            },
        }
    }

    fn check(a: &Answer, args: &VerifyAttestationArgs) -> Result<String, String> {
        check_answer(
            args,
            &a.pki.root_der,
            &a.nonce,
            &a.fetched,
            SystemTime::now(),
        )
    }

    #[test]
    fn verify_attestation_accepts_a_good_answer() {
        let a = answer(PCR0, Duration::ZERO);
        let report = check(&a, &args(PCR0, false)).unwrap();
        assert!(report.starts_with("attestation verified"), "{report}");
        assert!(!report.contains("WARNING"), "{report}");
        // The development flag changes nothing for a production enclave.
        let report = check(&a, &args(PCR0, true)).unwrap();
        assert!(!report.contains("WARNING"), "{report}");
        let mut wrong = PCR0;
        wrong[0] ^= 1;
        let err = check(&a, &args(wrong, false)).unwrap_err();
        assert!(err.contains("PCR0 is"), "{err}");
    }

    #[test]
    fn verify_attestation_refuses_a_debug_enclave_even_when_zeros_are_expected() {
        let a = answer([0; 48], Duration::ZERO);
        for expected in [[0u8; 48], PCR0] {
            let err = check(&a, &args(expected, false)).unwrap_err();
            assert!(err.contains("debug mode"), "{err}");
            assert!(err.contains("--allow-debug-enclave"), "{err}");
        }
        // Accepted with the development flag, loudly; PCR0 is still compared.
        let report = check(&a, &args([0; 48], true)).unwrap();
        assert!(
            report.starts_with("WARNING: DEBUG-MODE ENCLAVE"),
            "{report}"
        );
        assert!(report.contains("attestation verified"), "{report}");
        let err = check(&a, &args(PCR0, true)).unwrap_err();
        assert!(err.contains("PCR0 is"), "{err}");
    }

    #[test]
    fn verify_attestation_refuses_a_document_older_than_the_request() {
        // Made ten minutes before the request: right nonce, right key, but not made for it
        // (the nonce was known in advance).
        let a = answer(PCR0, Duration::from_secs(600));
        let err = check(&a, &args(PCR0, false)).unwrap_err();
        assert!(err.contains("before the request was sent"), "{err}");
        // Within the clock-skew allowance: accepted.
        let a = answer(PCR0, Duration::from_secs(30));
        check(&a, &args(PCR0, false)).unwrap();
        // Dated after the answer arrived (beyond the allowance).
        let a = answer(PCR0, Duration::ZERO);
        let err = check_answer(
            &args(PCR0, false),
            &a.pki.root_der,
            &a.nonce,
            &a.fetched,
            a.fetched.requested_at - Duration::from_secs(600),
        )
        .unwrap_err();
        assert!(err.contains("after it was received"), "{err}");
    }

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("https://127.0.0.1:8443").unwrap(),
            ("127.0.0.1".into(), 8443)
        );
        assert_eq!(
            parse_url("https://signer.example/").unwrap(),
            ("signer.example".into(), 443)
        );
        assert_eq!(parse_url("https://[::1]:9").unwrap(), ("::1".into(), 9));
        assert!(parse_url("http://127.0.0.1:1").is_err());
        assert_eq!(parse_url("https://[::1]").unwrap(), ("::1".into(), 443));
        assert!(parse_url("https://h:1/path").is_err());
        assert!(parse_url("https://h:x").is_err());
        // What the hand-written parser got wrong: percent-encoding and case in the host, the
        // scheme's default port given explicitly, and parts beyond the origin.
        assert_eq!(
            parse_url("https://Sign%65r.Example:443").unwrap(),
            ("signer.example".into(), 443)
        );
        for bad in [
            "https://user@h:1",
            "https://h:1?x=1",
            "https://h:1#f",
            "https://h:70000",
            "https://:1",
            "signer.example:443",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }
}
