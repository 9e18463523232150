//! Turning the enclave's failure messages into an operator's next step.
//!
//! The enclave reports why `Init` or a key failed as text (KMS error codes
//! and messages as `aws-sdk-kms` gives them, see [`enclave_bridge::kms::KmsError`]);
//! the host adds what that usually means on a Nitro deployment. The
//! original message is always logged too.

/// The usual causes the host can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// KMS `AccessDeniedException`: the key policy refused this enclave.
    AccessDenied,
    /// The AWS credentials are expired or not valid.
    ExpiredCredentials,
    /// KMS could not be reached (proxy, VPC endpoint, DNS, timeouts).
    KmsUnreachable,
    /// The ciphertext is not one KMS can decrypt with this key/context.
    BadCiphertext,
    /// The attestation document was refused.
    Attestation,
}

impl Cause {
    /// What to check.
    pub fn hint(self) -> &'static str {
        match self {
            Cause::AccessDenied => {
                "KMS denied access (AccessDenied): the enclave image's measurement (PCR0) does not \
                 match the key policy's kms:RecipientAttestation:ImageSha384 condition (wrong or \
                 rebuilt EIF, or a debug-mode enclave, whose PCRs read as zeros), or the instance \
                 role may not call kms:Decrypt on this key"
            }
            Cause::ExpiredCredentials => {
                "the AWS credentials are expired or invalid: check the instance profile and that \
                 IMDSv2 answers (hop limit), and the host's credential refresh"
            }
            Cause::KmsUnreachable => {
                "KMS unreachable from the enclave: check the host's KMS proxy (--kms-proxy-port, \
                 --kms-endpoint), DNS or the VPC endpoint for kms.<region>.amazonaws.com, and \
                 security groups"
            }
            Cause::BadCiphertext => {
                "KMS could not decrypt the ciphertext: wrong KMS key, encryption context, or a \
                 corrupted record"
            }
            Cause::Attestation => {
                "the attestation document was refused: the enclave's NSM output or its \
                 certificate chain is not what KMS accepts"
            }
        }
    }
}

/// Recognise a cause in an enclave's failure message.
pub fn diagnose(message: &str) -> Option<Cause> {
    let m = message.to_ascii_lowercase();
    let has = |needles: &[&str]| needles.iter().any(|n| m.contains(n));
    if has(&[
        "expiredtoken",
        "token is expired",
        "security token included in the request is expired",
        "unrecognizedclient",
        "invalidsignature",
        "signature expired",
        "credentials expired",
    ]) {
        Some(Cause::ExpiredCredentials)
    } else if has(&["accessdenied", "denied access", "not authorized"]) {
        Some(Cause::AccessDenied)
    } else if has(&["invalidciphertext", "incorrectkey", "notfoundexception"]) {
        Some(Cause::BadCiphertext)
    } else if has(&["attestation document", "attestation:"]) {
        Some(Cause::Attestation)
    } else if has(&[
        "kms request failed",
        "dispatch failure",
        "timed out",
        "timeout",
        "connection refused",
        "connection reset",
        "dns",
        "unreachable",
        "io error",
    ]) {
        Some(Cause::KmsUnreachable)
    } else {
        None
    }
}

/// `message`, followed by the hint if a cause is recognised.
pub fn explain(message: &str) -> String {
    match diagnose(message) {
        Some(cause) => format!("{message} — likely cause: {}", cause.hint()),
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_the_usual_failures() {
        // As enclave_bridge::kms::KmsError displays them.
        assert_eq!(
            diagnose("KMS denied access: User is not authorized to perform: kms:Decrypt"),
            Some(Cause::AccessDenied)
        );
        assert_eq!(
            diagnose("KMS error ExpiredTokenException: The security token included in the request is expired"),
            Some(Cause::ExpiredCredentials)
        );
        assert_eq!(
            diagnose(
                "KMS request failed: dispatch failure: io error: Connection refused (os error 111)"
            ),
            Some(Cause::KmsUnreachable)
        );
        assert_eq!(
            diagnose("KMS error InvalidCiphertextException: "),
            Some(Cause::BadCiphertext)
        );
        assert_eq!(diagnose("something else"), None);
        assert!(explain("KMS denied access: x").contains("PCR0"));
        assert_eq!(explain("plain"), "plain");
    }
}
