//! TLS on the signing API: server certificates from PEM files and from a PKCS#12 keystore,
//! client certificates accepted by fingerprint (Web3Signer's known-clients file) or by a client
//! CA, or not required (`--tls-allow-any-client=true`), and the start-up errors of a bad
//! configuration. Every certificate is made here, fresh, with rcgen.

use std::path::PathBuf;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use tests::body::{attestation, signing_root};
use tests::{pubkey_hex, run_binary, test_secret, Runner, SignerBuilder, TestSigner};
use tokio::io::AsyncReadExt;

/// A certificate and its private key, PEM.
struct Cred {
    cert_pem: String,
    key_pem: String,
    cert_der: Vec<u8>,
    key_der: Vec<u8>,
}

impl Cred {
    /// Web3Signer's known-clients fingerprint: SHA-256 of the DER, colon-separated hex.
    fn fingerprint(&self) -> String {
        Sha256::digest(&self.cert_der)
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":")
    }
}

/// A CA that issues the server's certificate and client certificates.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cred: Cred,
}

fn finish(cert: rcgen::Certificate, key: &KeyPair) -> Cred {
    Cred {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        cert_der: cert.der().to_vec(),
        key_der: key.serialize_der(),
    }
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        let cred = finish(cert, &key);
        Ca {
            issuer: Issuer::new(params, key),
            cred,
        }
    }

    fn leaf(&self, name: &str, usage: ExtendedKeyUsagePurpose) -> Cred {
        let key = KeyPair::generate().unwrap();
        let sans = if usage == ExtendedKeyUsagePurpose::ServerAuth {
            vec!["localhost".to_string(), "127.0.0.1".to_string()]
        } else {
            vec![]
        };
        let mut params = CertificateParams::new(sans).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        finish(cert, &key)
    }

    fn server(&self) -> Cred {
        self.leaf("ensign test server", ExtendedKeyUsagePurpose::ServerAuth)
    }

    fn client(&self, name: &str) -> Cred {
        self.leaf(name, ExtendedKeyUsagePurpose::ClientAuth)
    }
}

/// A self-signed client certificate (what the known-clients file pins).
fn self_signed_client(name: &str) -> Cred {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.self_signed(&key).unwrap();
    finish(cert, &key)
}

/// The files of one test's TLS setup.
struct Files {
    dir: TempDir,
}

impl Files {
    fn new() -> Files {
        Files {
            dir: TempDir::new().unwrap(),
        }
    }

    fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> String {
        let p: PathBuf = self.dir.path().join(name);
        std::fs::write(&p, contents).unwrap();
        p.display().to_string()
    }

    /// A PKCS#12 keystore holding the server key and its chain (leaf, CA), under `password`.
    fn pkcs12(&self, server: &Cred, ca: &Cred, password: &str) -> String {
        let chain = [&server.cert_der, &ca.cert_der]
            .into_iter()
            .map(|d| p12_keystore::Certificate::from_der(d).unwrap());
        let entry = p12_keystore::PrivateKeyChain::new(&server.key_der, [7u8; 20], chain);
        let mut ks = p12_keystore::KeyStore::new();
        ks.add_entry(
            "ensign",
            p12_keystore::KeyStoreEntry::PrivateKeyChain(entry),
        );
        let der = ks.writer(password).write().unwrap();
        self.write("server.p12", der)
    }
}

/// A client trusting only `ca`, presenting `identity` when given.
fn client(ca: &Cred, identity: Option<&Cred>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.cert_pem.as_bytes()).unwrap());
    if let Some(id) = identity {
        let pem = format!("{}{}", id.key_pem, id.cert_pem);
        b = b.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
    }
    b.build().unwrap()
}

/// Signs an attestation through `s` and checks the signature with blst.
async fn signs_verifiably(s: &TestSigner, secret: &[u8; 32]) {
    let body = attestation(3, 4, 1);
    let sig_hex = s.signature(&pubkey_hex(secret), &body).await;
    let sig = blst::min_pk::Signature::from_bytes(
        &hex::decode(sig_hex.trim_start_matches("0x")).unwrap(),
    )
    .unwrap();
    let pk = blst::min_pk::SecretKey::from_bytes(secret)
        .unwrap()
        .sk_to_pk();
    let dst = b"BLS_SIG_BLS12381G2_XMD:SHA-256_SSWU_RO_POP_";
    assert_eq!(
        sig.verify(true, &signing_root(&body), dst, &[], &pk, true),
        blst::BLST_ERROR::BLST_SUCCESS
    );
}

/// GET /upcheck with `c`: `Ok(status)` or the client's error (a refused handshake).
async fn upcheck_with(s: &TestSigner, c: &reqwest::Client) -> Result<u16, String> {
    c.get(format!("{}/upcheck", s.base))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| format!("{e:?}"))
}

fn pem_args(b: SignerBuilder, files: &Files, server: &Cred) -> SignerBuilder {
    let cert = files.write("server.crt", &server.cert_pem);
    let key = files.write("server.key", &server.key_pem);
    b.global_arg("--tls-cert-file")
        .global_arg(&cert)
        .global_arg("--tls-key-file")
        .global_arg(&key)
}

/// A signer holding `secret` that serves `server`'s certificate and admits only the clients in
/// `known_file`; the test reaches it as `known`, trusting `ca`.
fn known_clients_signer(
    files: &Files,
    server: &Cred,
    known_file: &str,
    secret: [u8; 32],
    ca: &Ca,
    known: &Cred,
) -> SignerBuilder {
    pem_args(SignerBuilder::new(), files, server)
        .global_arg("--tls-known-clients-file")
        .global_arg(known_file)
        .raw_keys([secret])
        .https(client(&ca.cred, Some(known)))
}

#[tokio::test]
async fn known_client_signs_and_every_other_client_is_refused() {
    let ca = Ca::new("ensign test CA");
    let server = ca.server();
    let known = self_signed_client("validator client");
    let stranger = self_signed_client("stranger");
    let ca_signed = ca.client("CA-signed client");
    let files = Files::new();
    let known_file = files.write(
        "known_clients.txt",
        format!(
            "# Web3Signer's format\n\nlighthouse {}\n",
            known.fingerprint()
        ),
    );
    let secret = test_secret(b"tls known client");
    let s = known_clients_signer(&files, &server, &known_file, secret, &ca, &known)
        .global_arg("--metrics-enabled")
        .global_arg("--metrics-port")
        .global_arg("0")
        .start(Runner::InProcess)
        .await;
    assert!(s.base.starts_with("https://"), "{}", s.base);
    signs_verifiably(&s, &secret).await;

    for (what, c) in [
        ("no certificate", client(&ca.cred, None)),
        ("an unknown certificate", client(&ca.cred, Some(&stranger))),
        (
            "a CA-signed certificate without CA mode",
            client(&ca.cred, Some(&ca_signed)),
        ),
    ] {
        let got = upcheck_with(&s, &c).await;
        assert!(got.is_err(), "a client with {what} was served: {got:?}");
    }
    // Plain HTTP on the TLS port gets no answer either.
    let plain = reqwest::get(format!("http://{}/upcheck", s.addr())).await;
    assert!(
        plain.as_ref().map_or(true, |r| r.status() != 200),
        "{plain:?}"
    );
    // The known client still gets through, and the metrics listener stays plain HTTP.
    assert_eq!(s.get("/upcheck").await.status, 200);
    let metrics = reqwest::get(format!("{}/metrics", s.metrics_base.as_ref().unwrap()))
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    s.stop().await;
}

#[tokio::test]
async fn ca_mode_accepts_ca_signed_clients_from_a_pkcs12_keystore_server() {
    let ca = Ca::new("ensign test CA");
    let other_ca = Ca::new("some other CA");
    let server = ca.server();
    let files = Files::new();
    let keystore = files.pkcs12(&server, &ca.cred, "keystore pass");
    let password = files.write("keystore.pass", "keystore pass\n");
    let ca_file = files.write("client-ca.pem", &ca.cred.cert_pem);
    let pinned = self_signed_client("pinned");
    let known_file = files.write(
        "known_clients.txt",
        format!("pinned {}\n", pinned.fingerprint().to_lowercase()),
    );
    let secret = test_secret(b"tls ca mode");
    let ca_client = ca.client("validator client");
    let s = SignerBuilder::new()
        .global_arg("--tls-keystore-file")
        .global_arg(&keystore)
        .global_arg("--tls-keystore-password-file")
        .global_arg(&password)
        .global_arg("--tls-allow-ca-clients=true")
        .global_arg("--tls-ca-clients-file")
        .global_arg(&ca_file)
        .global_arg("--tls-known-clients-file")
        .global_arg(&known_file)
        .raw_keys([secret])
        .https(client(&ca.cred, Some(&ca_client)))
        .start(Runner::InProcess)
        .await;
    signs_verifiably(&s, &secret).await;
    // Both rules at once: the pinned self-signed certificate is accepted too.
    assert_eq!(
        upcheck_with(&s, &client(&ca.cred, Some(&pinned))).await,
        Ok(200)
    );
    for (what, c) in [
        ("no certificate", client(&ca.cred, None)),
        (
            "an unknown self-signed certificate",
            client(&ca.cred, Some(&self_signed_client("stranger"))),
        ),
        (
            "a certificate from another CA",
            client(&ca.cred, Some(&other_ca.client("impostor"))),
        ),
    ] {
        let got = upcheck_with(&s, &c).await;
        assert!(got.is_err(), "a client with {what} was served: {got:?}");
    }
    s.stop().await;
}

#[tokio::test]
async fn allow_any_client_through_the_release_binary() {
    let ca = Ca::new("ensign test CA");
    let server = ca.server();
    let files = Files::new();
    let keystore = files.pkcs12(&server, &ca.cred, "binary pass");
    let password = files.write("keystore.pass", "binary pass");
    let secret = test_secret(b"tls binary");
    let s = SignerBuilder::new()
        .global_arg("--tls-keystore-file")
        .global_arg(&keystore)
        .global_arg("--tls-keystore-password-file")
        .global_arg(&password)
        .global_arg("--tls-allow-any-client=true")
        .raw_keys([secret])
        .https(client(&ca.cred, None))
        .start(Runner::Binary)
        .await;
    assert!(s.base.starts_with("https://"), "{}", s.base);
    signs_verifiably(&s, &secret).await;
    // A client presenting a certificate nobody listed is fine too.
    assert_eq!(
        upcheck_with(&s, &client(&ca.cred, Some(&self_signed_client("any")))).await,
        Ok(200)
    );
    s.stop().await;
}

#[tokio::test]
async fn wrong_keystore_password_stops_the_binary_with_a_clear_message() {
    let ca = Ca::new("ensign test CA");
    let files = Files::new();
    let keystore = files.pkcs12(&ca.server(), &ca.cred, "right password");
    let password = files.write("keystore.pass", "hunter2-wrong\n");
    let args = SignerBuilder::new()
        .global_arg("--tls-keystore-file")
        .global_arg(&keystore)
        .global_arg("--tls-keystore-password-file")
        .global_arg(&password)
        .global_arg("--tls-allow-any-client=true")
        .args_in(files.dir.path());
    let (code, stderr) = run_binary(&args);
    assert_ne!(code, 0, "{stderr}");
    assert!(
        stderr.contains("wrong password") && stderr.contains("server.p12"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "the password leaked: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Starts in-process with extra global arguments; the start-up error message.
async fn start_error(files: &Files, args: &[&str]) -> String {
    let mut b = SignerBuilder::new();
    for a in args {
        b = b.global_arg(a);
    }
    match b.try_start(Runner::InProcess).await {
        Ok(s) => {
            let base = s.base.clone();
            s.stop().await;
            panic!(
                "started at {base} with {args:?} (files in {})",
                files.dir.path().display()
            )
        }
        Err(e) => e,
    }
}

#[tokio::test]
async fn bad_tls_configurations_are_clear_start_errors() {
    let ca = Ca::new("ensign test CA");
    let server = ca.server();
    let files = Files::new();
    let cert = files.write("server.crt", &server.cert_pem);
    let key = files.write("server.key", &server.key_pem);
    let known = self_signed_client("known");
    let good_known = files.write("known.txt", format!("vc {}\n", known.fingerprint()));
    let bad_known = files.write(
        "bad-known.txt",
        format!(
            "# ok\nvc {}\nbroken-line-without-fingerprint\n",
            known.fingerprint()
        ),
    );
    let not_pem = files.write("not.pem", "this is not PEM\n");
    let missing = files.dir.path().join("missing.pem").display().to_string();
    let keystore = files.pkcs12(&server, &ca.cred, "pw");
    let pw = files.write("pw.txt", "pw\n");
    let ca_file = files.write("ca.pem", &ca.cred.cert_pem);
    let other_key = files.write("other.key", &known.key_pem);

    let pem = ["--tls-cert-file", &cert, "--tls-key-file", &key];
    let cases: Vec<(Vec<&str>, &[&str])> = vec![
        // No client-authentication rule chosen.
        (
            pem.to_vec(),
            &["--tls-known-clients-file", "--tls-allow-any-client"],
        ),
        // A malformed known-clients line: the file and the line are named.
        (
            [&pem[..], &["--tls-known-clients-file", &bad_known]].concat(),
            &["bad-known.txt", "line 3"],
        ),
        // Missing and unreadable files.
        (
            [
                "--tls-cert-file",
                &missing,
                "--tls-key-file",
                &key,
                "--tls-known-clients-file",
                &good_known,
            ]
            .to_vec(),
            &["missing.pem"],
        ),
        (
            [
                "--tls-cert-file",
                &not_pem,
                "--tls-key-file",
                &key,
                "--tls-known-clients-file",
                &good_known,
            ]
            .to_vec(),
            &["not.pem", "CERTIFICATE"],
        ),
        (
            [
                "--tls-cert-file",
                &cert,
                "--tls-key-file",
                &not_pem,
                "--tls-known-clients-file",
                &good_known,
            ]
            .to_vec(),
            &["not.pem", "PRIVATE KEY"],
        ),
        // Keystore and PEM files together; a keystore without its password file.
        (
            [
                &pem[..],
                &[
                    "--tls-keystore-file",
                    &keystore,
                    "--tls-keystore-password-file",
                    &pw,
                    "--tls-allow-any-client=true",
                ],
            ]
            .concat(),
            &["alternatives"],
        ),
        (
            [
                "--tls-keystore-file",
                &keystore,
                "--tls-allow-any-client=true",
            ]
            .to_vec(),
            &["--tls-keystore-password-file"],
        ),
        // CA mode without the CA file; any-client combined with a client rule.
        (
            [&pem[..], &["--tls-allow-ca-clients=true"]].concat(),
            &["--tls-ca-clients-file"],
        ),
        (
            [
                &pem[..],
                &[
                    "--tls-allow-any-client=true",
                    "--tls-allow-ca-clients=true",
                    "--tls-ca-clients-file",
                    &ca_file,
                ],
            ]
            .concat(),
            &["--tls-allow-any-client"],
        ),
        // Client rules without a server certificate.
        (
            ["--tls-known-clients-file", &good_known].to_vec(),
            &["without a server certificate"],
        ),
        // The server key does not match its certificate.
        (
            [
                "--tls-cert-file",
                &cert,
                "--tls-key-file",
                &other_key,
                "--tls-known-clients-file",
                &good_known,
            ]
            .to_vec(),
            &["TLS server certificate and key"],
        ),
    ];
    for (args, expect) in cases {
        let e = start_error(&files, &args).await;
        for want in expect {
            assert!(e.contains(want), "{args:?}: {e:?} lacks {want:?}");
        }
    }
}

#[tokio::test]
async fn a_client_that_never_finishes_the_handshake_is_disconnected() {
    let ca = Ca::new("ensign test CA");
    let server = ca.server();
    let known = self_signed_client("vc");
    let files = Files::new();
    let known_file = files.write("known.txt", format!("vc {}\n", known.fingerprint()));
    let secret = test_secret(b"tls handshake timeout");
    let s = known_clients_signer(&files, &server, &known_file, secret, &ca, &known)
        .global_arg("--tls-handshake-timeout-seconds")
        .global_arg("1")
        .start(Runner::InProcess)
        .await;
    // Connects, never sends a ClientHello.
    let mut silent = tokio::net::TcpStream::connect(s.addr()).await.unwrap();
    // Others are served meanwhile.
    signs_verifiably(&s, &secret).await;
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(std::time::Duration::from_secs(60), silent.read(&mut buf))
        .await
        .expect("the server never closed a connection that did not handshake");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    assert_eq!(s.get("/upcheck").await.status, 200);
    s.stop().await;
}

/// Keystores as operators make them: `openssl pkcs12 -export`, in OpenSSL 3's default format
/// (PBES2/AES, HMAC-SHA-256) and in the legacy one (RC2/3DES, SHA-1) older tools write.
/// Skipped with a notice when `openssl` is missing, unless `ENSIGN_REQUIRE_OPENSSL` is set.
#[tokio::test]
async fn keystores_made_by_openssl_work() {
    if std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_err()
    {
        if std::env::var_os("ENSIGN_REQUIRE_OPENSSL").is_some() {
            panic!("ENSIGN_REQUIRE_OPENSSL is set but `openssl` cannot be run");
        }
        eprintln!("not run: keystores_made_by_openssl_work: `openssl` not found; set ENSIGN_REQUIRE_OPENSSL=1 to fail instead");
        return;
    }
    let ca = Ca::new("ensign test CA");
    let server = ca.server();
    let known = self_signed_client("vc");
    let files = Files::new();
    let cert = files.write("server.crt", &server.cert_pem);
    let key = files.write("server.key", &server.key_pem);
    let chain = files.write("ca.crt", &ca.cred.cert_pem);
    let pass = files.write("server.pass", "openssl pass\n");
    let known_file = files.write("known.txt", format!("vc {}\n", known.fingerprint()));
    for legacy in [false, true] {
        let out = files
            .dir
            .path()
            .join(format!("server-{legacy}.p12"))
            .display()
            .to_string();
        let mut cmd = std::process::Command::new("openssl");
        cmd.args([
            "pkcs12",
            "-export",
            "-inkey",
            &key,
            "-in",
            &cert,
            "-certfile",
            &chain,
        ])
        .args(["-passout", &format!("file:{pass}"), "-out", &out]);
        if legacy {
            cmd.arg("-legacy");
        }
        let made = cmd.output().unwrap();
        assert!(made.status.success(), "{made:?}");
        let s = SignerBuilder::new()
            .global_arg("--tls-keystore-file")
            .global_arg(&out)
            .global_arg("--tls-keystore-password-file")
            .global_arg(&pass)
            .global_arg("--tls-known-clients-file")
            .global_arg(&known_file)
            .https(client(&ca.cred, Some(&known)))
            .start(Runner::InProcess)
            .await;
        assert_eq!(s.get("/upcheck").await.status, 200, "legacy: {legacy}");
        s.stop().await;
    }
}
