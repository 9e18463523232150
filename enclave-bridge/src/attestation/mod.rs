//! Nitro attestation documents: producing them ([`Attestor`]) and checking
//! them ([`verify_attestation`]).
//!
//! Format (aws-nitro-enclaves-nsm-api `docs/attestation_process.md`): an
//! untagged COSE_Sign1 (RFC 9052 §4.2) with protected header `{1: -35}`
//! (ES384) whose payload is a CBOR map: `module_id` (text), `digest`
//! (`"SHA384"`), `timestamp` (ms since the epoch), `pcrs` (index → 32/48/64
//! bytes), `certificate` (DER leaf), `cabundle` (DER chain, root first), and
//! optional `public_key`, `user_data`, `nonce`. The leaf is a P-384 key
//! certified through the `cabundle` by the AWS Nitro root.

mod doc;
#[cfg(feature = "nsm")]
mod nsm;
mod verify;

pub use doc::{AttestationDoc, MAX_OPTIONAL_FIELD_LEN};
#[cfg(feature = "nsm")]
pub use nsm::NsmAttestor;
pub use verify::{verify_attestation, VerifiedDoc, MAX_CLOCK_SKEW};

/// The AWS Nitro Enclaves root certificate ("G1"), PEM, as published in
/// `https://aws-nitro-enclaves.amazonaws.com/AWS_NitroEnclaves_Root-G1.zip`.
///
/// Provenance: the zip's SHA-256 is
/// `8cf60e2b2efca96c6a9e71e851d00c1b6991cc09eadbe64a6a1d1b1eb9faff7c` (the
/// value AWS documents for the download; it is sometimes quoted as the
/// root's fingerprint, but it is the zip's). The certificate inside was taken from a
/// copy of that zip whose hash matched; its DER SHA-256 is
/// [`AWS_NITRO_ROOT_G1_SHA256`], the certificate fingerprint AWS documents on
/// its "Verifying the root of trust" page. A unit test checks the constant
/// against that fingerprint. Subject `CN=aws.nitro-enclaves, OU=AWS,
/// O=Amazon, C=US`, P-384, valid 2019-10-28 to 2049-10-28.
pub const AWS_NITRO_ROOT_G1_PEM: &str = "-----BEGIN CERTIFICATE-----
MIICETCCAZagAwIBAgIRAPkxdWgbkK/hHUbMtOTn+FYwCgYIKoZIzj0EAwMwSTEL
MAkGA1UEBhMCVVMxDzANBgNVBAoMBkFtYXpvbjEMMAoGA1UECwwDQVdTMRswGQYD
VQQDDBJhd3Mubml0cm8tZW5jbGF2ZXMwHhcNMTkxMDI4MTMyODA1WhcNNDkxMDI4
MTQyODA1WjBJMQswCQYDVQQGEwJVUzEPMA0GA1UECgwGQW1hem9uMQwwCgYDVQQL
DANBV1MxGzAZBgNVBAMMEmF3cy5uaXRyby1lbmNsYXZlczB2MBAGByqGSM49AgEG
BSuBBAAiA2IABPwCVOumCMHzaHDimtqQvkY4MpJzbolL//Zy2YlES1BR5TSksfbb
48C8WBoyt7F2Bw7eEtaaP+ohG2bnUs990d0JX28TcPQXCEPZ3BABIeTPYwEoCWZE
h8l5YoQwTcU/9KNCMEAwDwYDVR0TAQH/BAUwAwEB/zAdBgNVHQ4EFgQUkCW1DdkF
R+eWw5b6cp3PmanfS5YwDgYDVR0PAQH/BAQDAgGGMAoGCCqGSM49BAMDA2kAMGYC
MQCjfy+Rocm9Xue4YnwWmNJVA44fA0P5W2OpYow9OYCVRaEevL8uO1XYru5xtMPW
rfMCMQCi85sWBbJwKKXdS6BptQFuZbT73o/gBh1qUxl/nNr12UO8Yfwr6wPLb+6N
IwLz3/Y=
-----END CERTIFICATE-----
";

/// SHA-256 of the DER encoding of [`AWS_NITRO_ROOT_G1_PEM`], hex.
pub const AWS_NITRO_ROOT_G1_SHA256: &str =
    "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b";

/// The AWS Nitro root G1 certificate, DER (decoded from the PEM constant).
pub fn aws_nitro_root_g1_der() -> Vec<u8> {
    use base64::Engine as _;
    let body: String = AWS_NITRO_ROOT_G1_PEM
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .expect("the embedded root PEM is valid base64")
}

/// The optional fields one attestation document binds, each at most
/// [`MAX_OPTIONAL_FIELD_LEN`] bytes. KMS `Recipient` needs `public_key` = the
/// DER SubjectPublicKeyInfo of an RSA-2048 key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AttestFields<'a> {
    pub user_data: Option<&'a [u8]>,
    pub nonce: Option<&'a [u8]>,
    pub public_key: Option<&'a [u8]>,
}

impl AttestFields<'_> {
    /// The NSM's size limit, checked in the order `user_data`, `nonce`,
    /// `public_key`: every attestor refuses an oversize field the same way,
    /// before anything is signed.
    pub fn check_sizes(&self) -> Result<(), AttestationError> {
        for (field, v) in [
            ("user_data", self.user_data),
            ("nonce", self.nonce),
            ("public_key", self.public_key),
        ] {
            if let Some(v) = v.filter(|v| v.len() > MAX_OPTIONAL_FIELD_LEN) {
                return Err(AttestationError::InputTooLarge {
                    field,
                    len: v.len(),
                    max: MAX_OPTIONAL_FIELD_LEN,
                });
            }
        }
        Ok(())
    }
}

/// Produces attestation documents (COSE_Sign1 bytes).
///
/// In an enclave this is the Nitro Secure Module ([`NsmAttestor`]); tests use
/// `test_util::TestAttestor`.
pub trait Attestor: Send + Sync {
    /// An attestation document binding `fields` (refused with
    /// [`AttestationError::InputTooLarge`] when one is over
    /// [`MAX_OPTIONAL_FIELD_LEN`]: see [`AttestFields::check_sizes`]).
    fn attest_fields(&self, fields: AttestFields<'_>) -> Result<Vec<u8>, AttestationError>;

    /// [`attest_fields`](Self::attest_fields) with the fields given one by
    /// one, the form callers use.
    fn attest(
        &self,
        user_data: Option<&[u8]>,
        nonce: Option<&[u8]>,
        public_key: Option<&[u8]>,
    ) -> Result<Vec<u8>, AttestationError> {
        self.attest_fields(AttestFields {
            user_data,
            nonce,
            public_key,
        })
    }
}

impl<T: Attestor + ?Sized> Attestor for std::sync::Arc<T> {
    fn attest_fields(&self, fields: AttestFields<'_>) -> Result<Vec<u8>, AttestationError> {
        (**self).attest_fields(fields)
    }
}

/// Why a document could not be made or was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttestationError {
    #[error("the Nitro Secure Module is not available: {0}")]
    NsmUnavailable(String),
    #[error("the Nitro Secure Module refused the request: {0}")]
    Nsm(String),
    #[error("attestation input too large: {field} is {len} bytes (max {max})")]
    InputTooLarge {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("attestation document is not valid COSE_Sign1/CBOR: {0}")]
    Decode(String),
    #[error("attestation document field `{field}`: {problem}")]
    Field {
        field: &'static str,
        problem: String,
    },
    #[error("unsupported algorithm: {0}")]
    UnsupportedAlgorithm(String),
    #[error("the chain does not start at the trusted root")]
    UntrustedRoot,
    #[error("certificate {which}: {problem}")]
    Certificate { which: String, problem: String },
    #[error("certificate {which} is not valid at the given time")]
    CertificateNotValidAt { which: String },
    #[error("certificate {which}: signature by its issuer does not verify")]
    CertificateSignature { which: String },
    #[error("the document's COSE signature does not verify")]
    DocumentSignature,
    /// RFC 5280 §4.2: "A certificate-using system MUST reject the certificate if it
    /// encounters a critical extension it does not recognize".
    #[error(
        "certificate {which} carries critical extension {oid}, which this verifier does not \
         recognise (RFC 5280 section 4.2: such a certificate must be rejected)"
    )]
    UnrecognisedCriticalExtension { which: String, oid: String },
    /// PCR0 is all zeros: what the Nitro hypervisor reports for an enclave started in debug
    /// mode (`nitro-cli run-enclave --debug-mode`), whose console and memory the parent
    /// instance can read. Its measurements say nothing about what runs in it.
    #[error(
        "PCR0 is all zeros: the enclave runs in debug mode, so its measurements prove \
         nothing and the parent instance can read its console and memory"
    )]
    DebugModeEnclave,
    /// The document was made before the verifier asked for it (minus the allowed clock skew).
    #[error(
        "the document's timestamp ({timestamp_ms} ms since the epoch) is {early_ms} ms before \
         the request was sent (allowed clock skew {skew_ms} ms): not made for this request"
    )]
    DocumentTooOld {
        timestamp_ms: u64,
        early_ms: u64,
        skew_ms: u64,
    },
    /// The document is dated after the verifier received it (plus the allowed clock skew).
    #[error(
        "the document's timestamp ({timestamp_ms} ms since the epoch) is {late_ms} ms after \
         it was received (allowed clock skew {skew_ms} ms): the enclave's clock or ours is wrong"
    )]
    DocumentFromTheFuture {
        timestamp_ms: u64,
        late_ms: u64,
        skew_ms: u64,
    },
    #[error("cannot build attestation document: {0}")]
    Build(String),
}
