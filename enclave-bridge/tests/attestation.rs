//! Attestation documents: the test attestor's output verifies; every kind of
//! tampering, a foreign root, an expired chain and a certificate with an
//! unrecognised critical extension do not. A debug-mode PCR0 and a timestamp
//! outside the request's window are caught by the `VerifiedDoc` checks.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use enclave_bridge::attestation::{
    aws_nitro_root_g1_der, verify_attestation, AttestationDoc, AttestationError, Attestor,
    VerifiedDoc, MAX_CLOCK_SKEW,
};
use enclave_bridge::test_util::{TestAttestor, TestCert, TestExtension, TestPki, TestPkiOptions};

const PCR0: [u8; 48] = [0xa5; 48];

fn pki() -> Arc<TestPki> {
    static PKI: OnceLock<Arc<TestPki>> = OnceLock::new();
    PKI.get_or_init(|| Arc::new(TestPki::generate())).clone()
}

fn attestor() -> TestAttestor {
    TestAttestor::new(pki(), PCR0)
}

fn now() -> SystemTime {
    SystemTime::now()
}

#[test]
fn a_test_document_verifies_and_returns_its_fields() {
    let doc = attestor()
        .attest(Some(b"user data"), Some(b"nonce-123"), Some(b"spki bytes"))
        .unwrap();
    // Untagged COSE_Sign1, as the NSM returns it: array(4), bstr protected.
    assert_eq!(doc[0], 0x84);
    let v = verify_attestation(&doc, &pki().root_der, now()).unwrap();
    assert_eq!(v.pcr(0), Some(&PCR0[..]));
    assert_eq!(v.pcr(1), Some(&[0u8; 48][..]));
    assert_eq!(v.pcr(9), None);
    assert_eq!(v.public_key.as_deref(), Some(&b"spki bytes"[..]));
    assert_eq!(v.user_data.as_deref(), Some(&b"user data"[..]));
    assert_eq!(v.nonce.as_deref(), Some(&b"nonce-123"[..]));
    assert_eq!(v.certificate, pki().leaf_der);
    assert!(v.module_id.starts_with("i-"));
    let age = now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        - v.timestamp;
    assert!(age < 600_000, "timestamp is now-ish");

    // Optional fields may be absent (null).
    let bare = attestor().attest(None, None, None).unwrap();
    let v = verify_attestation(&bare, &pki().root_der, now()).unwrap();
    assert_eq!((v.public_key, v.user_data, v.nonce), (None, None, None));
}

#[test]
fn a_flipped_signature_byte_is_refused() {
    let mut doc = attestor().attest(None, None, Some(b"k")).unwrap();
    let last = doc.len() - 1; // the signature is the last field
    doc[last] ^= 0x01;
    assert_eq!(
        verify_attestation(&doc, &pki().root_der, now()),
        Err(AttestationError::DocumentSignature)
    );
}

#[test]
fn a_changed_payload_is_refused() {
    const KEY: &[u8] = b"PUBLIC-KEY-0123456789";
    let doc = attestor().attest(None, None, Some(KEY)).unwrap();
    let find = |needle: &[u8]| {
        doc.windows(needle.len())
            .position(|w| w == needle)
            .expect("value is in the document")
    };
    // PCR0 changed inside the signed payload (same length, still valid CBOR).
    let mut forged = doc.clone();
    forged[find(&PCR0)] = 0x00;
    assert_eq!(
        verify_attestation(&forged, &pki().root_der, now()),
        Err(AttestationError::DocumentSignature)
    );
    // The public key a KMS would encrypt to, swapped.
    let mut forged = doc.clone();
    forged[find(KEY)] = b'X';
    assert_eq!(
        verify_attestation(&forged, &pki().root_der, now()),
        Err(AttestationError::DocumentSignature)
    );
}

#[test]
fn a_document_from_another_pki_is_refused() {
    let other = Arc::new(TestPki::generate());
    let doc = TestAttestor::new(other.clone(), PCR0)
        .attest(None, None, None)
        .unwrap();
    // Against our root: the chain does not start there.
    assert_eq!(
        verify_attestation(&doc, &pki().root_der, now()),
        Err(AttestationError::UntrustedRoot)
    );
    // Against the AWS root too.
    assert_eq!(
        verify_attestation(&doc, &aws_nitro_root_g1_der(), now()),
        Err(AttestationError::UntrustedRoot)
    );
    // A forger who puts our root first in the cabundle but signs with their
    // own chain fails on the links.
    let a = TestAttestor::new(other.clone(), PCR0);
    let mut payload = a.document(None, None, None);
    payload.cabundle[0] = pki().root_der.clone();
    let forged = other.sign(&payload);
    assert!(matches!(
        verify_attestation(&forged, &pki().root_der, now()),
        Err(AttestationError::Certificate { .. } | AttestationError::CertificateSignature { .. })
    ));
}

#[test]
fn a_chain_missing_its_intermediate_is_refused() {
    let a = attestor();
    let mut payload = a.document(None, None, None);
    payload.cabundle.truncate(1); // root only
    let doc = pki().sign(&payload);
    assert!(matches!(
        verify_attestation(&doc, &pki().root_der, now()),
        Err(AttestationError::Certificate { which, .. }) if which == "leaf"
    ));
}

#[test]
fn expired_and_not_yet_valid_chains_are_refused() {
    let doc = attestor().attest(None, None, None).unwrap();
    // The leaf lives three hours (as AWS's do).
    let later = now() + Duration::from_secs(4 * 3600);
    assert_eq!(
        verify_attestation(&doc, &pki().root_der, later),
        Err(AttestationError::CertificateNotValidAt {
            which: "leaf".into()
        })
    );
    let earlier = now() - Duration::from_secs(2 * 3600);
    assert!(matches!(
        verify_attestation(&doc, &pki().root_der, earlier),
        Err(AttestationError::CertificateNotValidAt { .. })
    ));
    // A PKI generated already expired.
    let old = Arc::new(TestPki::generate_with(&TestPkiOptions {
        not_before: now() - Duration::from_secs(10 * 3600),
        ca_not_after: now() + Duration::from_secs(3600),
        leaf_not_after: now() - Duration::from_secs(3600),
        ..TestPkiOptions::default()
    }));
    let doc = TestAttestor::new(old.clone(), PCR0)
        .attest(None, None, None)
        .unwrap();
    assert_eq!(
        verify_attestation(&doc, &old.root_der, now()),
        Err(AttestationError::CertificateNotValidAt {
            which: "leaf".into()
        })
    );
}

#[test]
fn malformed_documents_are_refused_cleanly() {
    let root = pki().root_der.clone();
    for junk in [
        &b""[..],
        b"\x00",
        b"\x84\x40\xa0\x40\x40",
        &[0xffu8; 300][..],
    ] {
        assert!(verify_attestation(junk, &root, now()).is_err());
    }
    // Field checks: a digest other than SHA384, an oversize nonce, a PCR of
    // the wrong size, no PCRs.
    let a = attestor();
    let mut bad = a.document(None, None, None);
    bad.digest = "SHA256".into();
    let err = verify_attestation(&pki().sign(&bad), &root, now()).unwrap_err();
    assert!(
        matches!(
            err,
            AttestationError::Field {
                field: "digest",
                ..
            }
        ),
        "{err}"
    );

    let mut bad = a.document(None, Some(&[1u8; 1025]), None);
    bad.module_id = "m".into();
    let err = verify_attestation(&pki().sign(&bad), &root, now()).unwrap_err();
    assert!(
        matches!(err, AttestationError::Field { field: "nonce", .. }),
        "{err}"
    );

    let bad = a
        .clone()
        .with_pcr(2, vec![0; 20])
        .document(None, None, None);
    let err = verify_attestation(&pki().sign(&bad), &root, now()).unwrap_err();
    assert!(
        matches!(err, AttestationError::Field { field: "pcrs", .. }),
        "{err}"
    );

    let mut bad = a.document(None, None, None);
    bad.pcrs.clear();
    let err = verify_attestation(&pki().sign(&bad), &root, now()).unwrap_err();
    assert!(
        matches!(err, AttestationError::Field { field: "pcrs", .. }),
        "{err}"
    );

    // The payload codec round-trips.
    let doc = a.document(Some(b"u"), None, Some(b"p"));
    assert_eq!(AttestationDoc::from_cbor(&doc.to_cbor()).unwrap(), doc);
    // Oversize inputs to the attestor are refused before signing.
    assert!(matches!(
        a.attest(Some(&[0u8; 1025]), None, None),
        Err(AttestationError::InputTooLarge { .. })
    ));
}

/// An OID under an arc nobody assigned to ensign: no verifier knows it.
const UNKNOWN_OID: &str = "1.3.6.1.4.1.99999.4242.1";

fn pki_with_extension(cert: TestCert, critical: bool) -> Arc<TestPki> {
    Arc::new(TestPki::generate_with(&TestPkiOptions {
        extra_extensions: vec![TestExtension {
            cert,
            oid: UNKNOWN_OID,
            critical,
            value: vec![0x05, 0x00], // NULL
        }],
        ..TestPkiOptions::default()
    }))
}

#[test]
fn a_certificate_with_an_unrecognised_critical_extension_is_refused() {
    // RFC 5280 §4.2: a verifier must reject a certificate carrying a critical
    // extension it does not recognise, wherever it is in the chain.
    for (cert, which) in [
        (TestCert::Leaf, "leaf"),
        (TestCert::Intermediate, "cabundle[1]"),
        (TestCert::Root, "root"),
    ] {
        let pki = pki_with_extension(cert, true);
        let doc = TestAttestor::new(pki.clone(), PCR0)
            .attest(None, None, None)
            .unwrap();
        let err = verify_attestation(&doc, &pki.root_der, now()).unwrap_err();
        assert_eq!(
            err,
            AttestationError::UnrecognisedCriticalExtension {
                which: which.into(),
                oid: UNKNOWN_OID.into(),
            },
            "{cert:?}"
        );
        assert!(err.to_string().contains("RFC 5280"), "{err}");
    }
}

#[test]
fn an_unrecognised_non_critical_extension_is_ignored() {
    // Non-critical extensions a verifier does not know may be ignored (RFC
    // 5280 §4.2); basicConstraints and keyUsage, critical in every test
    // certificate as in AWS's, are recognised.
    for cert in [TestCert::Leaf, TestCert::Intermediate, TestCert::Root] {
        let pki = pki_with_extension(cert, false);
        let doc = TestAttestor::new(pki.clone(), PCR0)
            .attest(None, None, None)
            .unwrap();
        verify_attestation(&doc, &pki.root_der, now()).unwrap();
    }
}

#[test]
fn a_debug_mode_document_verifies_but_is_flagged() {
    // A debug-mode enclave reports PCR0 (and the other image PCRs) as zeros;
    // the signature is genuine, the measurement meaningless.
    let doc = TestAttestor::new(pki(), [0; 48])
        .attest(None, None, None)
        .unwrap();
    let v = verify_attestation(&doc, &pki().root_der, now()).unwrap();
    assert!(v.is_debug_mode());
    assert_eq!(
        v.check_not_debug_mode(),
        Err(AttestationError::DebugModeEnclave)
    );

    let doc = attestor().attest(None, None, None).unwrap();
    let v = verify_attestation(&doc, &pki().root_der, now()).unwrap();
    assert!(!v.is_debug_mode());
    assert_eq!(v.check_not_debug_mode(), Ok(()));
    // A single zero byte is not debug mode.
    let mut pcr0 = [0u8; 48];
    pcr0[47] = 1;
    let doc = TestAttestor::new(pki(), pcr0)
        .attest(None, None, None)
        .unwrap();
    let v = verify_attestation(&doc, &pki().root_der, now()).unwrap();
    assert_eq!(v.check_not_debug_mode(), Ok(()));
}

fn doc_at(timestamp: u64) -> VerifiedDoc {
    VerifiedDoc {
        module_id: "m".into(),
        timestamp,
        pcrs: [(0, PCR0.to_vec())].into(),
        public_key: None,
        user_data: None,
        nonce: None,
        certificate: Vec::new(),
    }
}

#[test]
fn the_timestamp_must_fall_between_the_request_and_the_answer() {
    let at = |ms: u64| SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
    let sent = 1_700_000_000_000;
    let received = sent + 2_000;
    let skew = Duration::from_secs(60);
    let check = |ts: u64| doc_at(ts).check_timestamp(at(sent), at(received), skew);
    // Within the window, its edges included.
    for ts in [
        sent,
        sent + 1_000,
        received,
        sent - 60_000,
        received + 60_000,
    ] {
        assert_eq!(check(ts), Ok(()), "{ts}");
    }
    // Made before the request (beyond the skew): not for this request.
    assert_eq!(
        check(sent - 60_001),
        Err(AttestationError::DocumentTooOld {
            timestamp_ms: sent - 60_001,
            early_ms: 60_001,
            skew_ms: 60_000,
        })
    );
    let err = check(sent - 3_600_000).unwrap_err();
    assert!(err.to_string().contains("before the request"), "{err}");
    // Dated after the answer arrived (beyond the skew).
    assert_eq!(
        check(received + 60_001),
        Err(AttestationError::DocumentFromTheFuture {
            timestamp_ms: received + 60_001,
            late_ms: 60_001,
            skew_ms: 60_000,
        })
    );
    // No skew: exactly the window.
    let exact = |ts: u64| doc_at(ts).check_timestamp(at(sent), at(received), Duration::ZERO);
    assert_eq!(exact(sent), Ok(()));
    assert!(exact(sent - 1).is_err());
    assert!(exact(received + 1).is_err());
    // The recommended allowance is a minute.
    assert_eq!(MAX_CLOCK_SKEW, Duration::from_secs(60));

    // A real document made between two readings of the clock passes.
    let before = now();
    let doc = attestor().attest(None, None, None).unwrap();
    let after = now();
    let v = verify_attestation(&doc, &pki().root_der, after).unwrap();
    assert_eq!(v.check_timestamp(before, after, Duration::ZERO), Ok(()));
}

#[cfg(feature = "nsm")]
#[test]
fn nsm_attestor_fails_cleanly_without_dev_nsm() {
    use enclave_bridge::attestation::NsmAttestor;
    if std::path::Path::new("/dev/nsm").exists() {
        eprintln!("not run: /dev/nsm exists on this machine");
        return;
    }
    match NsmAttestor::open() {
        Err(AttestationError::NsmUnavailable(msg)) => assert!(msg.contains("/dev/nsm")),
        other => panic!("expected NsmUnavailable, got {other:?}"),
    }
}
