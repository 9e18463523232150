//! TLS for the PostgreSQL store, chosen by the URL with libpq's parameter names.
//!
//! - no `sslmode`, `sslmode=disable` or `sslmode=prefer`: plaintext (what this store always did;
//!   `prefer` does not try TLS here);
//! - `sslmode=require`: TLS, the server's certificate NOT verified (libpq's meaning of
//!   `require`: protection against passive listeners only);
//! - `sslmode=verify-full&sslrootcert=FILE`: TLS, the server's chain verified against the PEM
//!   certificates in FILE and its name against the URL's host. `hostaddr=IP` connects to IP while
//!   the name checked stays the host — how an enclave reaches the database through its loopback
//!   forward and still authenticates it, so that the parent instance relaying the bytes can
//!   neither read nor alter the slashing-protection traffic. `sslrootcert` with `require` also
//!   verifies (stricter than libpq's verify-ca). `verify-ca` is refused: a chain check without the
//!   name would accept any server certified by the same CA, which on a shared CA such as AWS's
//!   RDS CA is any database.
//!
//! The `ring` provider only, as the server's own TLS.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::Error;

/// What the URL asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TlsMode {
    Plain,
    /// Encrypted, server not authenticated.
    Unverified,
    /// Encrypted and the server authenticated by these CA certificates (PEM file).
    Verified {
        root_cert: PathBuf,
    },
}

/// Takes `sslmode` / `sslrootcert` out of a `postgresql://` URL's query: the URL left for
/// `tokio_postgres::Config` (with `sslmode=require` whenever TLS is wanted) and the mode.
///
/// Only the query is taken apart here, not the whole URL: libpq's URIs allow what a WHATWG URL
/// parser refuses (several `host:port` pairs, a Unix socket directory as the host). Names and
/// values are percent-decoded as libpq does (RFC 3986: `%XX` only, `+` stays `+`); the pairs kept
/// are passed on as written, for `tokio_postgres` to decode the same way.
pub(crate) fn split_tls(url: &str) -> Result<(String, TlsMode), Error> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_string(), TlsMode::Plain));
    };
    let decode = |part: &str| {
        percent_encoding::percent_decode_str(part)
            .decode_utf8()
            .map(|d| d.into_owned())
            .map_err(|_| Error::Open("the database URL's query is not UTF-8 once decoded".into()))
    };
    let mut kept = Vec::new();
    let (mut sslmode, mut root_cert) = (None, None);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match decode(name)?.as_str() {
            "sslmode" => sslmode = Some(decode(value)?),
            "sslrootcert" => root_cert = Some(PathBuf::from(decode(value)?)),
            _ => kept.push(pair),
        }
    }
    let mode = match (sslmode.as_deref(), root_cert) {
        (Some("verify-ca"), _) => {
            return Err(Error::Open(
                "sslmode=verify-ca is not supported (it would accept any server the CA \
                 certified): use sslmode=verify-full with sslrootcert"
                    .into(),
            ))
        }
        (Some("verify-full"), None) => {
            return Err(Error::Open(
                "sslmode=verify-full needs sslrootcert=FILE (the CA certificates, PEM, that \
                 certify the database server)"
                    .into(),
            ))
        }
        (Some("disable"), _) => TlsMode::Plain,
        (Some("verify-full") | Some("require"), Some(root_cert)) => TlsMode::Verified { root_cert },
        (Some("require"), None) => TlsMode::Unverified,
        (None | Some("prefer"), Some(_)) => {
            return Err(Error::Open(
                "sslrootcert is given but sslmode is not: say sslmode=verify-full".into(),
            ))
        }
        (None | Some("prefer"), None) => TlsMode::Plain,
        (Some(other), _) => {
            return Err(Error::Open(format!(
                "invalid sslmode {other:?}: disable, prefer, require or verify-full"
            )))
        }
    };
    if mode != TlsMode::Plain {
        kept.push("sslmode=require");
    }
    let url = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((url, mode))
}

/// The connector for `mode`; `None` for plaintext.
pub(crate) fn connector(mode: &TlsMode) -> Result<Option<MakeRustlsConnect>, Error> {
    // `None`: encrypt only (any certificate); `Some`: authenticate by these roots.
    let roots = match mode {
        TlsMode::Plain => return Ok(None),
        TlsMode::Unverified => None,
        TlsMode::Verified { root_cert } => Some(roots(root_cert)?),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Open(format!("PostgreSQL TLS: {e}")))?;
    let config = match roots {
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider)))
            .with_no_client_auth(),
        Some(roots) => builder.with_root_certificates(roots).with_no_client_auth(),
    };
    Ok(Some(MakeRustlsConnect::new(config)))
}

fn roots(path: &Path) -> Result<RootCertStore, Error> {
    let shown = path.display();
    let pem = std::fs::read(path)
        .map_err(|e| Error::Open(format!("sslrootcert {shown}: cannot read: {e}")))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| Error::Open(format!("sslrootcert {shown}: not PEM: {e:?}")))?;
        roots
            .add(cert)
            .map_err(|e| Error::Open(format!("sslrootcert {shown}: {e}")))?;
    }
    if roots.is_empty() {
        return Err(Error::Open(format!(
            "sslrootcert {shown}: no certificate in the file"
        )));
    }
    Ok(roots)
}

/// `sslmode=require` without `sslrootcert`: any certificate is accepted (libpq's `require`),
/// but the handshake's signatures are still checked, so the session is really encrypted to the
/// holder of the presented key.
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
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

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_from_the_url() {
        let u = "postgresql://u@db.example:5432/ensign";
        assert_eq!(split_tls(u).unwrap(), (u.to_string(), TlsMode::Plain));
        assert_eq!(
            split_tls(&format!("{u}?sslmode=prefer&connect_timeout=3")).unwrap(),
            (format!("{u}?connect_timeout=3"), TlsMode::Plain)
        );
        assert_eq!(
            split_tls(&format!("{u}?sslmode=require")).unwrap(),
            (format!("{u}?sslmode=require"), TlsMode::Unverified)
        );
        assert_eq!(
            split_tls(&format!(
                "{u}?hostaddr=127.0.0.1&sslmode=verify-full&sslrootcert=/ca.pem"
            ))
            .unwrap(),
            (
                format!("{u}?hostaddr=127.0.0.1&sslmode=require"),
                TlsMode::Verified {
                    root_cert: "/ca.pem".into()
                }
            )
        );
        // Percent-encoded names and values (a path with a space, an encoded `=`), as libpq
        // decodes them; `+` is not a space in a URI.
        assert_eq!(
            split_tls(&format!(
                "{u}?ssl%6dode=verify-full&sslrootcert=/etc/my%20certs/ca+1%3D.pem"
            ))
            .unwrap(),
            (
                format!("{u}?sslmode=require"),
                TlsMode::Verified {
                    root_cert: "/etc/my certs/ca+1=.pem".into()
                }
            )
        );
        for bad in [
            "sslmode=verify-ca&sslrootcert=/ca.pem",
            "sslmode=verify%2Dca&sslrootcert=/ca.pem",
            "sslmode=%FF",
            "sslmode=verify-full",
            "sslrootcert=/ca.pem",
            "sslmode=allow",
        ] {
            assert!(split_tls(&format!("{u}?{bad}")).is_err(), "{bad}");
        }
    }

    #[test]
    fn root_file_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no pem here").unwrap();
        let e = roots(&empty).unwrap_err().to_string();
        assert!(
            e.contains("empty.pem") && e.contains("no certificate"),
            "{e}"
        );
        let e = roots(&dir.path().join("missing.pem"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("missing.pem") && e.contains("cannot read"),
            "{e}"
        );
    }
}
