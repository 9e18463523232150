//! TLS for the signing API: Web3Signer's options (a PKCS#12 keystore, client certificates
//! required unless `--tls-allow-any-client=true`, accepted by a known-clients file of
//! fingerprints and/or by a CA), plus ensign's PEM files and client-CA bundle.
//!
//! Invariants:
//! - Everything is read and checked before the server binds: a missing file, a wrong password,
//!   a bad PEM block or a malformed known-clients line is a start-up error naming the file (and
//!   line), never a panic and never a message holding the password.
//! - A client is accepted only when its certificate's SHA-256 fingerprint is listed, or, in CA
//!   mode, when its chain verifies to a configured CA; in both cases rustls still checks the
//!   handshake signature against the certificate's key (the provider's verification, below), so
//!   a client must hold the private key of the certificate it presents.
//! - One crypto provider (`ring`) is used explicitly; no process-wide default is installed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DistinguishedName, RootCertStore, ServerConfig};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// The handshake-signature half of a rustls certificate verifier, for a verifier whose field
/// `$provider` is its `Arc<CryptoProvider>`: whatever the verifier decides about the
/// certificate, the peer's handshake signature is checked against it with the provider's
/// algorithms, so a peer must hold the private key of the certificate it presents.
macro_rules! provider_signatures {
    ($provider:tt) => {
        // The trait's methods and rustls's checks share their names (TLS 1.2 and 1.3).
        $crate::tls::provider_signatures!(@verify $provider, verify_tls12_signature);
        $crate::tls::provider_signatures!(@verify $provider, verify_tls13_signature);

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.$provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    };
    (@verify $provider:tt, $check:ident) => {
        fn $check(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            let algorithms = &self.$provider.signature_verification_algorithms;
            rustls::crypto::$check(message, cert, dss, algorithms)
        }
    };
}
pub(crate) use provider_signatures;

/// A TLS configuration that cannot be used. The messages name files and lines, never secrets.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{0}")]
    Options(&'static str),
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("TLS keystore password file {0} is empty")]
    EmptyPassword(PathBuf),
    #[error("TLS keystore {0}: wrong password (the PKCS#12 integrity check failed)")]
    WrongPassword(PathBuf),
    #[error("TLS keystore {path} is not a usable PKCS#12 file: {reason}")]
    Keystore { path: PathBuf, reason: String },
    #[error("{what} {path}: {reason}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("TLS known clients file {path}, line {line}: {reason}")]
    KnownClients {
        path: PathBuf,
        line: usize,
        reason: KnownClientError,
    },
    #[error("TLS known clients file {0} lists no client")]
    NoKnownClients(PathBuf),
    #[error("TLS client CA file {path}: {reason}")]
    ClientCa { path: PathBuf, reason: String },
    #[error("TLS server certificate and key: {0}")]
    ServerCert(#[from] rustls::Error),
}

/// Why a line of a known-clients file is not `<name> <SHA-256 fingerprint>`.
#[derive(Debug, thiserror::Error)]
pub enum KnownClientError {
    #[error("not UTF-8 text")]
    NotUtf8,
    #[error("expected `<name> <SHA-256 fingerprint>`, found {0} field(s)")]
    Fields(usize),
    #[error(
        "fingerprint {0:?} is not 32 colon-separated hex bytes (the SHA-256 of the \
         certificate's DER, e.g. from `openssl x509 -noout -fingerprint -sha256`)"
    )]
    Fingerprint(String),
}

/// The TLS options of the signing API (`--tls-*`, resolved by `config`), as files and switches.
#[derive(Debug, Clone, Default)]
pub struct TlsSettings {
    /// PKCS#12 keystore with the server's key and chain (with its password file).
    pub tls_keystore_file: Option<PathBuf>,
    pub tls_keystore_password_file: Option<PathBuf>,
    /// PEM chain and key: the alternative to the keystore.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// Clients: any, or those listed by fingerprint and/or issued by a CA of the bundle.
    pub tls_allow_any_client: bool,
    pub tls_known_clients_file: Option<PathBuf>,
    pub tls_allow_ca_clients: bool,
    pub tls_ca_clients_file: Option<PathBuf>,
}

/// The SHA-256 fingerprint of a certificate's DER encoding (what the known-clients file lists).
pub type Fingerprint = [u8; 32];

/// Builds the TLS server configuration, or `None` when no server certificate is configured.
pub fn server_config(opts: &TlsSettings) -> Result<Option<Arc<ServerConfig>>, TlsError> {
    let (chain, key) =
        match (
            &opts.tls_keystore_file,
            &opts.tls_cert_file,
            &opts.tls_key_file,
        ) {
            (None, None, None) => {
                // Client options without a server certificate would silently do nothing.
                if opts.tls_keystore_password_file.is_some()
                    || opts.tls_allow_any_client
                    || opts.tls_known_clients_file.is_some()
                    || opts.tls_allow_ca_clients
                    || opts.tls_ca_clients_file.is_some()
                {
                    return Err(TlsError::Options(
                        "TLS options given without a server certificate: add --tls-keystore-file \
                     (with --tls-keystore-password-file) or --tls-cert-file with --tls-key-file",
                    ));
                }
                return Ok(None);
            }
            (Some(keystore), None, None) => {
                let Some(pw) = &opts.tls_keystore_password_file else {
                    return Err(TlsError::Options(
                        "--tls-keystore-file needs --tls-keystore-password-file",
                    ));
                };
                load_pkcs12(keystore, pw)?
            }
            (None, Some(cert), Some(key)) => {
                if opts.tls_keystore_password_file.is_some() {
                    return Err(TlsError::Options(
                    "--tls-keystore-password-file belongs to --tls-keystore-file, not to PEM files",
                ));
                }
                (load_cert_chain(cert)?, load_private_key(key)?)
            }
            (None, Some(_), None) | (None, None, Some(_)) => {
                return Err(TlsError::Options(
                    "--tls-cert-file and --tls-key-file go together",
                ))
            }
            (Some(_), _, _) => return Err(TlsError::Options(
                "--tls-keystore-file and --tls-cert-file/--tls-key-file are alternatives: give one",
            )),
        };

    server_config_with_key(opts, chain, key).map(Some)
}

/// The TLS server configuration for a given certificate chain and key, with the client
/// certificate options of `opts` (with none of them, starting fails: clients are
/// authenticated unless --tls-allow-any-client=true says otherwise).
pub fn server_config_with_key(
    opts: &TlsSettings,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let client_options = opts.tls_known_clients_file.is_some()
        || opts.tls_allow_ca_clients
        || opts.tls_ca_clients_file.is_some();
    let builder = if opts.tls_allow_any_client {
        if client_options {
            return Err(TlsError::Options(
                "--tls-allow-any-client=true accepts every client: it cannot be combined with \
                 --tls-known-clients-file or --tls-allow-ca-clients",
            ));
        }
        builder.with_no_client_auth()
    } else {
        let known = match &opts.tls_known_clients_file {
            Some(path) => {
                let text = read(path, "TLS known clients file")?;
                let text = String::from_utf8(text).map_err(|_| TlsError::KnownClients {
                    path: path.clone(),
                    line: 0,
                    reason: KnownClientError::NotUtf8,
                })?;
                let known = parse_known_clients(&text).map_err(|(line, reason)| {
                    TlsError::KnownClients {
                        path: path.clone(),
                        line,
                        reason,
                    }
                })?;
                if known.is_empty() {
                    return Err(TlsError::NoKnownClients(path.clone()));
                }
                known
            }
            None => BTreeMap::new(),
        };
        let ca =
            match (opts.tls_allow_ca_clients, &opts.tls_ca_clients_file) {
                (true, Some(path)) => Some(client_ca_verifier(path, provider.clone())?),
                (true, None) => return Err(TlsError::Options(
                    "--tls-allow-ca-clients=true needs --tls-ca-clients-file (a PEM bundle of the \
                     client CAs; ensign does not trust a system store for client certificates)",
                )),
                (false, Some(_)) => {
                    return Err(TlsError::Options(
                        "--tls-ca-clients-file is used only with --tls-allow-ca-clients=true",
                    ))
                }
                (false, None) => None,
            };
        if known.is_empty() && ca.is_none() {
            return Err(TlsError::Options(
                "TLS requires client certificates: give --tls-known-clients-file and/or \
                 --tls-allow-ca-clients=true with --tls-ca-clients-file, or accept every client \
                 with --tls-allow-any-client=true",
            ));
        }
        builder.with_client_cert_verifier(Arc::new(ClientVerifier {
            known,
            ca,
            provider,
        }))
    };
    let mut config = builder.with_single_cert(chain, key)?;
    // HTTP/1.1 only (see `conn`): say so, so that a client offering h2 settles on HTTP/1.1.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// The server's key and chain from a PKCS#12 keystore (the format Web3Signer takes).
fn load_pkcs12(
    path: &Path,
    password_file: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let data = read(path, "TLS keystore")?;
    let raw = Zeroizing::new(read(password_file, "TLS keystore password file")?);
    // The first line, as Web3Signer reads its password files; a trailing CR (a file written on
    // Windows) is not part of the password.
    let first = raw.split(|b| *b == b'\n').next().unwrap_or(&[]);
    let first = first.strip_suffix(b"\r").unwrap_or(first);
    let password =
        Zeroizing::new(
            String::from_utf8(first.to_vec()).map_err(|_| TlsError::Read {
                what: "TLS keystore password file",
                path: password_file.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"),
            })?,
        );
    if password.is_empty() {
        return Err(TlsError::EmptyPassword(password_file.to_path_buf()));
    }
    let store = p12_keystore::KeyStore::from_pkcs12(&data, &password).map_err(|e| match e {
        p12_keystore::error::Error::MacError(_) => TlsError::WrongPassword(path.to_path_buf()),
        other => TlsError::Keystore {
            path: path.to_path_buf(),
            reason: other.to_string(),
        },
    })?;
    let Some((_alias, chain)) = store.private_key_chain() else {
        return Err(TlsError::Keystore {
            path: path.to_path_buf(),
            reason: "no private key with its certificate".into(),
        });
    };
    if chain.chain().is_empty() {
        return Err(TlsError::Keystore {
            path: path.to_path_buf(),
            reason: "the private key has no certificate".into(),
        });
    }
    let certs = chain
        .chain()
        .iter()
        .map(|c| CertificateDer::from(c.as_der().to_vec()))
        .collect();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(chain.key().to_vec()));
    Ok((certs, key))
}

pub(crate) fn load_cert_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path, "TLS certificate file")?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what: "TLS certificate file",
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what: "TLS certificate file",
            path: path.to_path_buf(),
            reason: "no CERTIFICATE block".into(),
        });
    }
    Ok(certs)
}

pub(crate) fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = Zeroizing::new(read(path, "TLS key file")?);
    // Only the kind of error is reported: pki-types' messages never include key material, but
    // a key file is no place to quote from anyway.
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Pem {
        what: "TLS key file",
        path: path.to_path_buf(),
        reason: match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "no PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY block".into()
            }
            _ => "not a valid PEM private key".into(),
        },
    })
}

/// Verifier of client certificates against the client CAs in a PEM bundle.
fn client_ca_verifier(
    path: &Path,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let pem = read(path, "TLS client CA file")?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| TlsError::ClientCa {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        roots.add(cert).map_err(|e| TlsError::ClientCa {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    }
    if roots.is_empty() {
        return Err(TlsError::ClientCa {
            path: path.to_path_buf(),
            reason: "no CERTIFICATE block".into(),
        });
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| TlsError::ClientCa {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

/// Parses Web3Signer's known-clients format: one `<name> <fingerprint>` per line, the
/// fingerprint the SHA-256 of the certificate's DER as 32 colon-separated hex bytes (any case);
/// `#` starts a comment line; blank lines are ignored. Errors carry the 1-based line number.
pub fn parse_known_clients(
    text: &str,
) -> Result<BTreeMap<Fingerprint, String>, (usize, KnownClientError)> {
    let mut known = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [name, fp] = fields[..] else {
            return Err((n, KnownClientError::Fields(fields.len())));
        };
        let fingerprint = parse_fingerprint(fp).map_err(|reason| (n, reason))?;
        known.insert(fingerprint, name.to_string());
    }
    Ok(known)
}

fn parse_fingerprint(s: &str) -> Result<Fingerprint, KnownClientError> {
    let bad = || KnownClientError::Fingerprint(s.to_string());
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 32 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (byte, part) in out.iter_mut().zip(parts) {
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// The SHA-256 fingerprint of a DER certificate.
pub fn fingerprint(der: &[u8]) -> Fingerprint {
    Sha256::digest(der).into()
}

/// Formats a fingerprint as the known-clients file writes it (`AB:CD:…`).
pub fn fingerprint_hex(fp: &Fingerprint) -> String {
    fp.iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Accepts a client whose certificate is listed by fingerprint, else (in CA mode) one whose
/// chain verifies to a client CA. Handshake signatures are verified by the crypto provider in
/// both cases, so a listed certificate is useless without its private key.
#[derive(Debug)]
struct ClientVerifier {
    known: BTreeMap<Fingerprint, String>,
    ca: Option<Arc<dyn ClientCertVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The CA subjects help a client choose among several certificates; a pinned
        // self-signed certificate has no CA to hint, and an empty list means "send any".
        match &self.ca {
            Some(ca) => ca.root_hint_subjects(),
            None => &[],
        }
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let fp = fingerprint(end_entity);
        if let Some(name) = self.known.get(&fp) {
            tracing::debug!(client = %name, "TLS client accepted by fingerprint");
            return Ok(ClientCertVerified::assertion());
        }
        let refused = |reason: &str| {
            tracing::info!(
                fingerprint = %fingerprint_hex(&fp),
                reason,
                "TLS client certificate refused"
            );
        };
        match &self.ca {
            Some(ca) => ca
                .verify_client_cert(end_entity, intermediates, now)
                .inspect_err(|e| refused(&format!("not a known client, and {e}"))),
            None => {
                refused("not in the known clients file");
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::ApplicationVerificationFailure,
                ))
            }
        }
    }

    provider_signatures!(provider);
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP: &str = "02:D0:A8:C0:6A:59:90:40:54:67:D4:BD:AE:5A:D4:F5:14:A9:79:38:98:E0:62:93:C1:77:13:FC:B4:60:65:CE";

    #[test]
    fn known_clients_file_parses() {
        let text = format!(
            "# validator clients\n\nlighthouse {FP}\n  teku {}  \n",
            FP.to_lowercase()
        );
        let known = parse_known_clients(&text).unwrap();
        // Same fingerprint twice (case differs): one entry.
        assert_eq!(known.len(), 1);
        let (fp, _) = known.iter().next().unwrap();
        assert_eq!(fingerprint_hex(fp), FP);
    }

    #[test]
    fn malformed_known_clients_lines_name_the_line() {
        for (text, line) in [
            (format!("a {FP}\nonly-a-name\n"), 2),
            (format!("# c\na {FP} extra\n"), 2),
            ("a 02D0A8C06A59904054\n".to_string(), 1),
            (format!("\n\na {}\n", FP.replace(':', "")), 3),
            (format!("a {}:00\n", FP), 1),
            (format!("a {}\n", FP.replacen("02", "0G", 1)), 1),
            (format!("a {}\n", FP.replacen("02", "2", 1)), 1),
        ] {
            let (n, reason) = parse_known_clients(&text).unwrap_err();
            assert_eq!(n, line, "{text:?}: {reason}");
        }
    }

    #[test]
    fn fingerprint_is_sha256_of_der() {
        // SHA-256("abc"), FIPS 180-2 appendix B.1.
        assert_eq!(
            fingerprint_hex(&fingerprint(b"abc")),
            "BA:78:16:BF:8F:01:CF:EA:41:41:40:DE:5D:AE:22:23:B0:03:61:A3:96:17:7A:9C:B4:10:FF:61:F2:00:15:AD"
        );
    }
}
