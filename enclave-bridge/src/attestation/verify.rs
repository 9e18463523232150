//! Verifying an attestation document against a given root, following
//! aws-nitro-enclaves-nsm-api `docs/attestation_process.md` §3: decode,
//! check field types and sizes, check the certificate chain
//! (leaf → `cabundle` → root, each signature, each validity period, CA
//! constraints, no critical extension other than those understood here) and
//! the COSE_Sign1 ES384 signature by the leaf key.
//! No revocation check: the Nitro PKI publishes no CRLs.
//!
//! What a verified document says is then for the caller to judge; two checks
//! every relying party wants are here as [`VerifiedDoc`] methods: that the
//! enclave does not run in debug mode ([`VerifiedDoc::check_not_debug_mode`])
//! and that the document was made for the request at hand
//! ([`VerifiedDoc::check_timestamp`]).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use const_oid::AssociatedOid;
use coset::{
    iana, CborSerializable, CoseSign1, RegisteredLabelWithPrivate, TaggedCborSerializable,
};
use der::asn1::{AnyRef, BitStringRef};
use der::{Decode, Encode, Sequence};
use p384::ecdsa::signature::Verifier;
use p384::ecdsa::{DerSignature, Signature, VerifyingKey};
use p384::pkcs8::DecodePublicKey;
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage, KeyUsages};
use x509_cert::Certificate;

use super::{AttestationDoc, AttestationError};

/// ecdsa-with-SHA384 (RFC 5758 §3.2): the only signature algorithm of the
/// Nitro PKI.
const ECDSA_WITH_SHA384: der::oid::ObjectIdentifier =
    der::oid::ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");

/// Critical extensions this verifier recognises, and enforces in
/// [`check_link`] and on the leaf. They are the two that AWS's attestation
/// process (aws-nitro-enclaves-nsm-api `docs/attestation_process.md`
/// §3.2.3.2, §3.2.3.3) names as the certificates' critical extensions, and
/// the only ones the AWS Nitro root G1 marks critical.
const RECOGNISED_CRITICAL_EXTENSIONS: [der::oid::ObjectIdentifier; 2] =
    [BasicConstraints::OID, KeyUsage::OID];

/// Clock skew a verifier should allow between its clock and the Nitro
/// hypervisor's when checking a document's `timestamp`
/// ([`VerifiedDoc::check_timestamp`]).
///
/// Why 60 s: the hypervisor's clock is kept by AWS's time sync, but the
/// verifier's may be off by a few seconds (NTP not yet settled, a laptop or VM
/// resumed from sleep) and the hypervisor rounds nothing; a minute tolerates
/// that without a spurious failure, and is still short enough that a
/// document prepared in advance for a known nonce (`--nonce` given twice) or
/// kept from an earlier exchange is refused.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(60);

/// What a verified document says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedDoc {
    pub module_id: String,
    /// Milliseconds since the Unix epoch.
    pub timestamp: u64,
    pub pcrs: BTreeMap<u8, Vec<u8>>,
    pub public_key: Option<Vec<u8>>,
    pub user_data: Option<Vec<u8>>,
    pub nonce: Option<Vec<u8>>,
    /// The DER leaf certificate that signed the document.
    pub certificate: Vec<u8>,
}

impl VerifiedDoc {
    /// PCR `index`, if the document has it.
    pub fn pcr(&self, index: u8) -> Option<&[u8]> {
        self.pcrs.get(&index).map(Vec::as_slice)
    }

    /// Whether the document comes from an enclave started in debug mode
    /// (`nitro-cli run-enclave --debug-mode`): its PCR0 is all zeros. The AWS
    /// Nitro Enclaves User Guide (nitro-cli run-enclave, `--debug-mode`)
    /// says a debug enclave's attestation documents carry all-zero PCRs and
    /// cannot be used for cryptographic attestation; its console is open to
    /// the parent instance. No image measures to zero (PCR0 is a SHA-384
    /// digest), so a zero PCR0 never stands for an image.
    pub fn is_debug_mode(&self) -> bool {
        self.pcr(0).is_some_and(|pcr0| pcr0.iter().all(|&b| b == 0))
    }

    /// [`AttestationError::DebugModeEnclave`] if [`Self::is_debug_mode`]. A
    /// relying party calls this whatever PCR0 it expects: comparing with an
    /// expected PCR0 of zeros would otherwise accept any debug enclave.
    pub fn check_not_debug_mode(&self) -> Result<(), AttestationError> {
        if self.is_debug_mode() {
            return Err(AttestationError::DebugModeEnclave);
        }
        Ok(())
    }

    /// Check that the document was made for a request sent at `requested_at`
    /// and answered by `received_at`: its `timestamp` (milliseconds since the
    /// Unix epoch, UTC, per the attestation document specification in the
    /// AWS Nitro Enclaves User Guide, "Verifying the root of trust") must lie
    /// in `[requested_at - skew, received_at + skew]`. `skew` allows for the
    /// difference between the caller's clock and the hypervisor's; see
    /// [`MAX_CLOCK_SKEW`].
    ///
    /// A fresh nonce already shows that a document was made after it was
    /// chosen; this check also covers a nonce that is not fresh (chosen by
    /// the caller, reused) and bounds how long a document can be held back.
    pub fn check_timestamp(
        &self,
        requested_at: SystemTime,
        received_at: SystemTime,
        skew: Duration,
    ) -> Result<(), AttestationError> {
        let ms = |t: SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        };
        let skew_ms = u64::try_from(skew.as_millis()).unwrap_or(u64::MAX);
        let earliest = ms(requested_at).saturating_sub(skew_ms);
        let latest = ms(received_at).saturating_add(skew_ms);
        if self.timestamp < earliest {
            return Err(AttestationError::DocumentTooOld {
                timestamp_ms: self.timestamp,
                early_ms: ms(requested_at) - self.timestamp,
                skew_ms,
            });
        }
        if self.timestamp > latest {
            return Err(AttestationError::DocumentFromTheFuture {
                timestamp_ms: self.timestamp,
                late_ms: self.timestamp - ms(received_at),
                skew_ms,
            });
        }
        Ok(())
    }
}

/// The outer certificate structure with the TBS part kept as it was
/// encoded: the signature is over those exact bytes (RFC 5280 §4.1.1.3).
#[derive(Sequence)]
struct RawCertificate<'a> {
    tbs: AnyRef<'a>,
    algorithm: AnyRef<'a>,
    signature: BitStringRef<'a>,
}

struct ParsedCert {
    cert: Certificate,
    tbs: Vec<u8>,
    which: String,
}

fn parse_cert(der_bytes: &[u8], which: String) -> Result<ParsedCert, AttestationError> {
    let bad = |problem: String| AttestationError::Certificate {
        which: which.clone(),
        problem,
    };
    let cert = Certificate::from_der(der_bytes).map_err(|e| bad(format!("not DER X.509: {e}")))?;
    let raw =
        RawCertificate::from_der(der_bytes).map_err(|e| bad(format!("not DER X.509: {e}")))?;
    let tbs = raw
        .tbs
        .to_der()
        .map_err(|e| bad(format!("cannot re-encode TBS: {e}")))?;
    Ok(ParsedCert { cert, tbs, which })
}

fn verifying_key(cert: &ParsedCert) -> Result<VerifyingKey, AttestationError> {
    let spki = cert
        .cert
        .tbs_certificate()
        .subject_public_key_info()
        .to_der()
        .map_err(|e| AttestationError::Certificate {
            which: cert.which.clone(),
            problem: format!("public key: {e}"),
        })?;
    VerifyingKey::from_public_key_der(&spki).map_err(|_| {
        AttestationError::UnsupportedAlgorithm(format!(
            "certificate {} key is not an ECDSA P-384 key",
            cert.which
        ))
    })
}

/// Check `child`'s signature by `issuer`, names, validity, and that `issuer`
/// may sign certificates.
fn check_link(
    child: &ParsedCert,
    issuer: &ParsedCert,
    cas_below_issuer: usize,
) -> Result<(), AttestationError> {
    let cert_err = |which: &str, problem: &str| AttestationError::Certificate {
        which: which.to_owned(),
        problem: problem.to_owned(),
    };
    if child.cert.tbs_certificate().issuer() != issuer.cert.tbs_certificate().subject() {
        return Err(cert_err(
            &child.which,
            "issuer name does not match the next certificate's subject",
        ));
    }
    // The issuer must be a CA (RFC 5280 §4.2.1.9), within its path length,
    // and, if it restricts key usage, allowed to sign certificates
    // (§4.2.1.3).
    let bc = issuer
        .cert
        .tbs_certificate()
        .get_extension::<BasicConstraints>()
        .map_err(|e| cert_err(&issuer.which, &format!("basicConstraints: {e}")))?;
    match bc {
        Some((_, bc)) if bc.ca => {
            if let Some(max) = bc.path_len_constraint {
                if cas_below_issuer > usize::from(max) {
                    return Err(cert_err(&issuer.which, "path length constraint exceeded"));
                }
            }
        }
        _ => return Err(cert_err(&issuer.which, "is not a CA certificate")),
    }
    let ku = issuer
        .cert
        .tbs_certificate()
        .get_extension::<KeyUsage>()
        .map_err(|e| cert_err(&issuer.which, &format!("keyUsage: {e}")))?;
    if let Some((_, ku)) = ku {
        if !ku.0.contains(KeyUsages::KeyCertSign) {
            return Err(cert_err(
                &issuer.which,
                "key usage does not allow keyCertSign",
            ));
        }
    }
    check_cert_signature(child, &verifying_key(issuer)?)
}

fn check_cert_signature(cert: &ParsedCert, key: &VerifyingKey) -> Result<(), AttestationError> {
    let alg = cert.cert.signature_algorithm();
    if alg.oid != ECDSA_WITH_SHA384 || alg.parameters.is_some() {
        return Err(AttestationError::UnsupportedAlgorithm(format!(
            "certificate {} is signed with {} (only ecdsa-with-SHA384)",
            cert.which, alg.oid
        )));
    }
    let sig_bytes =
        cert.cert
            .signature()
            .as_bytes()
            .ok_or_else(|| AttestationError::CertificateSignature {
                which: cert.which.clone(),
            })?;
    let sig = DerSignature::from_bytes(sig_bytes).map_err(|_| {
        AttestationError::CertificateSignature {
            which: cert.which.clone(),
        }
    })?;
    key.verify(&cert.tbs, &sig)
        .map_err(|_| AttestationError::CertificateSignature {
            which: cert.which.clone(),
        })
}

/// RFC 5280 §4.2: "A certificate-using system MUST reject the certificate if
/// it encounters a critical extension it does not recognize or a critical
/// extension that contains information that it cannot process." Only
/// basicConstraints and keyUsage are recognised (and processed, in
/// [`check_link`] and on the leaf); any other critical extension means a
/// constraint this verifier would silently ignore.
fn check_critical_extensions(cert: &ParsedCert) -> Result<(), AttestationError> {
    let extensions = cert.cert.tbs_certificate().extensions();
    for ext in extensions.into_iter().flatten() {
        if ext.critical && !RECOGNISED_CRITICAL_EXTENSIONS.contains(&ext.extn_id) {
            return Err(AttestationError::UnrecognisedCriticalExtension {
                which: cert.which.clone(),
                oid: ext.extn_id.to_string(),
            });
        }
    }
    Ok(())
}

fn check_validity(cert: &ParsedCert, now: SystemTime) -> Result<(), AttestationError> {
    let validity = cert.cert.tbs_certificate().validity();
    let not_before = validity.not_before.to_system_time();
    let not_after = validity.not_after.to_system_time();
    if now < not_before || now > not_after {
        return Err(AttestationError::CertificateNotValidAt {
            which: cert.which.clone(),
        });
    }
    Ok(())
}

/// Verify `document` (COSE_Sign1 bytes, tagged or not) against the trusted
/// root `root_cert_der` at time `now`.
///
/// The first `cabundle` entry must be byte-for-byte the trusted root (the
/// document's copy is never trusted on its own); the chain root →
/// intermediates → leaf is checked link by link; then the COSE signature.
pub fn verify_attestation(
    document: &[u8],
    root_cert_der: &[u8],
    now: SystemTime,
) -> Result<VerifiedDoc, AttestationError> {
    let sign1 = CoseSign1::from_slice(document)
        .or_else(|_| CoseSign1::from_tagged_slice(document))
        .map_err(|e| AttestationError::Decode(format!("COSE_Sign1: {e}")))?;
    match &sign1.protected.header.alg {
        Some(RegisteredLabelWithPrivate::Assigned(iana::Algorithm::ES384)) => {}
        other => {
            return Err(AttestationError::UnsupportedAlgorithm(format!(
                "COSE algorithm {other:?} (only ES384)"
            )))
        }
    }
    let payload = sign1
        .payload
        .as_deref()
        .ok_or_else(|| AttestationError::Decode("COSE_Sign1 has no payload".into()))?;
    let doc = AttestationDoc::from_cbor(payload)?;

    if doc.cabundle[0] != root_cert_der {
        return Err(AttestationError::UntrustedRoot);
    }
    // chain[0] is the trusted root, then the intermediates, then the leaf.
    let mut chain = Vec::with_capacity(doc.cabundle.len() + 1);
    chain.push(parse_cert(root_cert_der, "root".into())?);
    for (i, der_bytes) in doc.cabundle.iter().enumerate().skip(1) {
        chain.push(parse_cert(der_bytes, format!("cabundle[{i}]"))?);
    }
    chain.push(parse_cert(&doc.certificate, "leaf".into())?);

    for cert in &chain {
        // The trusted root too: an extension it marks critical constrains
        // the whole chain, and it is not understood here.
        check_critical_extensions(cert)?;
        check_validity(cert, now)?;
    }
    // The root is trusted as given, but a root whose self-signature fails is
    // not what the caller thinks it is.
    check_cert_signature(&chain[0], &verifying_key(&chain[0])?)?;
    let cas = chain.len() - 1; // certificates that act as CAs: all but the leaf
    for i in 1..chain.len() {
        // CAs strictly between chain[i-1] and the leaf.
        let cas_below = cas - i;
        check_link(&chain[i], &chain[i - 1], cas_below)?;
    }
    let leaf = chain
        .last()
        .expect("the chain holds at least root and leaf");
    if let Some((_, bc)) = leaf
        .cert
        .tbs_certificate()
        .get_extension::<BasicConstraints>()
        .ok()
        .flatten()
    {
        if bc.ca {
            return Err(AttestationError::Certificate {
                which: "leaf".into(),
                problem: "is a CA certificate".into(),
            });
        }
    }
    if let Some((_, ku)) = leaf
        .cert
        .tbs_certificate()
        .get_extension::<KeyUsage>()
        .ok()
        .flatten()
    {
        if !ku.0.contains(KeyUsages::DigitalSignature) {
            return Err(AttestationError::Certificate {
                which: "leaf".into(),
                problem: "key usage does not allow digitalSignature".into(),
            });
        }
    }

    // RFC 9053 §2.1: ES384 signatures are r || s, 48 bytes each, over the
    // Sig_structure ["Signature1", protected, external_aad = b"", payload].
    let leaf_key = verifying_key(leaf)?;
    sign1.verify_signature(b"", |sig, data| {
        let sig = Signature::from_slice(sig).map_err(|_| AttestationError::DocumentSignature)?;
        leaf_key
            .verify(data, &sig)
            .map_err(|_| AttestationError::DocumentSignature)
    })?;

    Ok(VerifiedDoc {
        module_id: doc.module_id,
        timestamp: doc.timestamp,
        pcrs: doc.pcrs,
        public_key: doc.public_key,
        user_data: doc.user_data,
        nonce: doc.nonce,
        certificate: doc.certificate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    #[test]
    fn embedded_aws_root_has_the_documented_fingerprint_and_self_signature() {
        let der_bytes = crate::attestation::aws_nitro_root_g1_der();
        assert_eq!(
            hex::encode(Sha256::digest(&der_bytes)),
            crate::attestation::AWS_NITRO_ROOT_G1_SHA256
        );
        let root = parse_cert(&der_bytes, "root".into()).unwrap();
        check_cert_signature(&root, &verifying_key(&root).unwrap()).unwrap();
        assert_eq!(
            root.cert.tbs_certificate().subject().to_string(),
            "CN=aws.nitro-enclaves,OU=AWS,O=Amazon,C=US"
        );
    }

    #[test]
    fn the_aws_roots_critical_extensions_are_all_recognised() {
        let root = parse_cert(&crate::attestation::aws_nitro_root_g1_der(), "root".into()).unwrap();
        let critical: Vec<_> = root
            .cert
            .tbs_certificate()
            .extensions()
            .into_iter()
            .flatten()
            .filter(|e| e.critical)
            .map(|e| e.extn_id)
            .collect();
        assert_eq!(critical, [BasicConstraints::OID, KeyUsage::OID]);
        check_critical_extensions(&root).unwrap();
    }
}
