use der::{Decode, Encode};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Why the enclave's TLS key or certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot make the TLS key: {0}")]
    Key(rcgen::Error),
    /// A name rcgen cannot put in a certificate.
    #[error("--enclave-tls-subject-alt-names: {0}")]
    Names(rcgen::Error),
    #[error("cannot make the TLS certificate: {0}")]
    Certificate(rcgen::Error),
    /// The certificate just made does not parse back (a bug, not a configuration problem).
    #[error("{0}")]
    PublicKey(String),
}

/// The TLS identity made at start: the certificate (public) and the hash the attestation
/// binds. The private key is only inside the rustls configuration.
#[derive(Debug, Clone)]
pub struct TlsIdentity {
    pub cert_der: Vec<u8>,
    pub cert_pem: String,
    /// SHA-256 of the certificate's SubjectPublicKeyInfo DER (the document's `user_data`).
    pub spki_sha256: [u8; 32],
}

/// SHA-256 of the DER SubjectPublicKeyInfo of a DER certificate (RFC 5280 §4.1.2.7): what an
/// enclave's attestation document carries as `user_data`, and what `verify-attestation`
/// recomputes from the certificate the TLS connection presented.
pub fn spki_sha256(cert_der: &[u8]) -> Result<[u8; 32], String> {
    let cert = x509_cert::Certificate::from_der(cert_der)
        .map_err(|e| format!("not a DER X.509 certificate: {e}"))?;
    let spki = cert
        .tbs_certificate()
        .subject_public_key_info()
        .to_der()
        .map_err(|e| format!("cannot encode the certificate's public key: {e}"))?;
    Ok(Sha256::digest(&spki).into())
}

/// Makes the enclave's TLS key (ECDSA P-256, from the OS RNG through ring) and a self-signed
/// certificate for `names`.
pub(super) fn generate_tls(
    names: &[String],
) -> Result<(TlsIdentity, CertificateDer<'static>, PrivateKeyDer<'static>), IdentityError> {
    let key =
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(IdentityError::Key)?;
    let mut params = rcgen::CertificateParams::new(names.to_vec()).map_err(IdentityError::Names)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "ensign enclave");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params
        .self_signed(&key)
        .map_err(IdentityError::Certificate)?;
    let cert_der = cert.der().to_vec();
    let pkcs8 = Zeroizing::new(key.serialize_der());
    let identity = TlsIdentity {
        spki_sha256: spki_sha256(&cert_der).map_err(IdentityError::PublicKey)?,
        cert_pem: cert.pem(),
        cert_der: cert_der.clone(),
    };
    Ok((
        identity,
        CertificateDer::from(cert_der),
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8.to_vec())),
    ))
}
