//! Enclave mode end to end, off-enclave: TCP stands in for vsock, the insecure-test attestation
//! PKI for the Nitro Secure Module (PCR0 = SHA-384 of the enclave's executable), and
//! `enclave_bridge`'s fake KMS for KMS (it verifies each Recipient attestation document against
//! the test root, applies a PCR0 key policy, and answers with a real CMS envelope).
//!
//! - The whole flow: records made by `ensign keys encrypt` (KMS Encrypt at the fake KMS),
//!   `ensign-host` starting the release `ensign-insecure-test` (`ensign` built with the test
//!   attestor, cargo feature `insecure-test-attestation`) in enclave mode (`--run-command`),
//!   Init through the host's KMS proxy and the enclave's loopback forwarder, a validator-style
//!   sign request through the host's listen port over TLS pinned to the enclave's attested
//!   certificate
//!   (signature checked with blst), `ensign verify-attestation` (right PCR0: exit 0; wrong: not),
//!   keys added and removed by editing the host's key directory, a second Init refused.
//! - A wrong PCR0 policy: no key anywhere, signing 503, the reason in /healthcheck and in the
//!   host's log, the host still running.
//! - The enclave alone: fail-closed before Init, an Init sent before the host's KMS proxy
//!   exists (refused, with the reason; a later Init works), garbage and oversize frames on the
//!   control port, a mislabelled record.
//! - The slashing database's credentials from Secrets Manager (moto) through ensign-host
//!   (`--db-secret-arn`) into the enclave, which opens PostgreSQL at Init as the secret's user:
//!   a nonexistent user fails Init with the database's reason, a fixed secret and SIGHUP
//!   initialise, a rotated secret is delivered at the next poll; the password is never logged.
//! - The release `ensign` (default features, as the enclave image builds it) refuses
//!   `--enclave-attestation insecure-test:<dir>`; `ensign-insecure-test` accepts it.
//! - The plain-Decrypt path against moto (whose KMS ignores Recipient): `ensign keys encrypt`
//!   into DynamoDB and a directory, read back with ensign-host's own readers, Init with them in
//!   an in-process enclave-mode signer whose attestation is off (a code-only test mode).

use test_support::moto;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use enclave_bridge::control::{
    read_frame, write_frame, AddKeysRequest, AwsCredentials, ControlClient, ControlError,
    EncryptedKeyRecord, EndpointUrl, ErrorCode, InitRequest, RemoveKeysRequest,
};
use enclave_bridge::secret::{Base64Bytes, SecretString};
use enclave_bridge::test_util::{TestPki, TEST_ROOT_FILE};
use enclave_bridge::Endpoint;
use serde_json::{json, Value};
use sha2::Digest;
use tempfile::TempDir;
use test_support::fake_kms::{FakeKms, FakeKmsConfig, Tamper};
use tests::body::{attestation, signing_root};
use tests::Resp;

const REGION: &str = "us-east-1";
const PASSWORD: &str = "enclave test pässword";
/// The consensus specs' BLS signature domain separation tag (proof of possession).
const DST: &[u8] = b"BLS_SIG_BLS12381G2_XMD:SHA-256_SSWU_RO_POP_";
/// How long a step that awaits a readiness signal may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(120);

/// A loopback port nobody listens on right now (for endpoints ensign-host must know ahead).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn sha384_file(path: &Path) -> [u8; 48] {
    sha2::Sha384::digest(std::fs::read(path).unwrap()).into()
}

/// The release `ensign` as production builds it: the operator's tools (`keys encrypt`,
/// `verify-attestation`) and the refusal of `insecure-test:<dir>`.
fn ensign() -> PathBuf {
    let bin = tests::binary_path();
    assert!(
        bin.is_file(),
        "{} does not exist: build it with `cargo build --release -p server`",
        bin.display()
    );
    bin
}

/// The enclave these tests run: the release build with the test attestor
/// (`ensign-insecure-test`); PCR0 is its SHA-384.
fn enclave_ensign() -> PathBuf {
    tests::test_attestation_binary_path()
}

fn host_binary(test: &str) -> Option<PathBuf> {
    match tests::ensign_host_path() {
        Ok(p) => Some(p),
        Err(e) if std::env::var_os("ENSIGN_REQUIRE_ENSIGN_HOST").is_some() => {
            panic!("ENSIGN_REQUIRE_ENSIGN_HOST is set but ensign-host is unavailable: {e}")
        }
        Err(e) => {
            eprintln!(
                "\n*** NOT RUN: {test}: {e}; set ENSIGN_REQUIRE_ENSIGN_HOST=1 to fail instead ***\n"
            );
            None
        }
    }
}

/// An EIP-2335 keystore (fast PBKDF2) and its password file.
struct KeyFiles {
    keystore: PathBuf,
    password: PathBuf,
    secret: [u8; 32],
    pubkey: String,
}

fn key_files(dir: &Path, seed: &[u8]) -> KeyFiles {
    let secret = tests::test_secret(seed);
    let key = keystore::ValidatorKey::from_secret_bytes(&secret).unwrap();
    let json = keystore::encrypt(&key, PASSWORD, keystore::Kdf::Pbkdf2 { c: 16 }).unwrap();
    let pubkey = tests::pubkey_hex(&secret);
    std::fs::create_dir_all(dir).unwrap();
    let keystore = dir.join(format!("{pubkey}.keystore.json"));
    let password = dir.join(format!("{pubkey}.password.txt"));
    std::fs::write(&keystore, json).unwrap();
    std::fs::write(&password, format!("{PASSWORD}\n")).unwrap();
    KeyFiles {
        keystore,
        password,
        secret,
        pubkey,
    }
}

/// An AWS SDK configuration for moto at `url` (its fixed test credentials, [`REGION`]).
async fn moto_sdk_config(url: &str) -> keystore::aws::SdkConfig {
    let auth = keystore::AwsAuth::Specified {
        access_key_id: "testing".into(),
        secret_access_key: zeroize::Zeroizing::new("testing".into()),
    };
    keystore::aws::sdk_config(&auth, Some(REGION), Some(url))
        .await
        .unwrap()
}

/// A test PKI under `dir/pki` and a fake KMS whose key policy admits `pcr0` (`None`: this
/// build's `ensign-insecure-test`, the image an enclave test runs). The KMS serves HTTPS as
/// `kms.<REGION>.amazonaws.com` with a certificate from a test CA, written to `dir/kms-ca.pem`
/// (what an image would carry as its roots), and plain HTTP for test set-up.
async fn pki_and_kms(dir: &Path, pcr0: Option<Vec<u8>>) -> (PathBuf, TestPki, FakeKms) {
    let pki_dir = dir.join("pki");
    let pki = TestPki::load_or_generate(&pki_dir).unwrap();
    let mut config = FakeKmsConfig::new(pki.root_der.clone());
    config.required_pcr0 = Some(pcr0.unwrap_or_else(|| sha384_file(&enclave_ensign()).to_vec()));
    let kms = FakeKms::start_https(config, &[&format!("kms.{REGION}.amazonaws.com")])
        .await
        .unwrap();
    std::fs::write(dir.join("kms-ca.pem"), kms.ca_pem().unwrap()).unwrap();
    (pki_dir, pki, kms)
}

/// The fake KMS's HTTPS port (for a forwarder to it).
fn kms_tls_port(kms: &FakeKms) -> u16 {
    kms_tls_addr(kms)
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// The fake KMS's HTTPS `HOST:PORT`.
fn kms_tls_addr(kms: &FakeKms) -> String {
    kms.https_url()
        .unwrap()
        .trim_start_matches("https://")
        .to_string()
}

/// The enclave's global options that its image would fix: the KMS key, endpoint (its real
/// name, port `forward`: the enclave's loopback forwarder) and roots (the test CA written by
/// [`pki_and_kms`]), the known client; and development mode, for SQLite in the enclave's
/// memory (tests/tests/enclave.rs's production-configuration test checks the refusals).
fn enclave_globals(dir: &Path, kms: &FakeKms, forward: u16) -> Vec<String> {
    vec![
        "--enclave-kms-key-arn".into(),
        kms.key_arn().into(),
        "--enclave-kms-endpoint".into(),
        format!("https://kms.{REGION}.amazonaws.com:{forward}"),
        "--enclave-kms-ca-file".into(),
        dir.join("kms-ca.pem").display().to_string(),
        "--tls-known-clients-file".into(),
        known_clients_file(dir).display().to_string(),
        "--enclave-development-mode=true".into(),
    ]
}

/// A keystore made from `seed` and its key record, encrypted under `kms` by `ensign keys
/// encrypt` the way an operator makes one, in `dir/records` (returned).
async fn record_in_dir(dir: &Path, kms: &FakeKms, seed: &[u8]) -> (PathBuf, KeyFiles) {
    let keys_dir = dir.join("records");
    let k = key_files(&dir.join("keystores"), seed);
    let (code, out) = keys_encrypt(
        &k,
        kms.url(),
        kms.key_arn(),
        &["--out-dir", &keys_dir.display().to_string()],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    (keys_dir, k)
}

/// `ensign keys encrypt` with dummy AWS credentials (the stand-ins do not check signatures).
async fn keys_encrypt(k: &KeyFiles, endpoint: &str, key_id: &str, dest: &[&str]) -> (i32, String) {
    let mut args: Vec<String> = [
        "keys",
        "encrypt",
        "--kms-key-id",
        key_id,
        "--region",
        REGION,
        "--endpoint-url",
        endpoint,
        "--keystore",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(k.keystore.display().to_string());
    args.push("--password-file".into());
    args.push(k.password.display().to_string());
    args.extend(dest.iter().map(|s| s.to_string()));
    run_ensign(
        args,
        &[
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
        ],
    )
    .await
}

/// Runs the release `ensign` with `args` (and `env`, without `AWS_PROFILE`) to its end, on a
/// blocking thread (stand-ins such as the fake KMS run on the test's runtime: never block a
/// worker on the child); (exit code, stdout and stderr).
async fn run_ensign(args: Vec<String>, env: &[(&'static str, &'static str)]) -> (i32, String) {
    let bin = ensign();
    let env = env.to_vec();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(bin)
            .args(&args)
            .envs(env)
            .env_remove("AWS_PROFILE")
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// `ensign verify-attestation`, against `root` or (`None`) the default root, AWS's; (exit code,
/// output).
async fn verify_attestation(url: &str, pcr0: &[u8], root: Option<&Path>) -> (i32, String) {
    let mut args = vec![
        "verify-attestation".to_string(),
        "--url".into(),
        url.into(),
        "--expected-pcr0".into(),
        hex::encode(pcr0),
    ];
    if let Some(root) = root {
        args.extend(["--root-cert".into(), root.display().to_string()]);
    }
    args.extend(client_cert_args());
    run_ensign(args, &[]).await
}

/// The validator client's certificate (self-signed; its key and certificate PEM) and its
/// known-clients line: enclave mode requires client certificates, and every enclave these tests
/// start knows this one.
struct ClientCert {
    cert_pem: String,
    key_pem: String,
    identity_pem: String,
    known_clients_line: String,
}

fn client_cert() -> &'static ClientCert {
    static CERT: std::sync::OnceLock<ClientCert> = std::sync::OnceLock::new();
    CERT.get_or_init(|| {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "validator client");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.self_signed(&key).unwrap();
        let fingerprint: Vec<String> = sha2::Sha256::digest(cert.der())
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect();
        ClientCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            identity_pem: format!("{}{}", cert.pem(), key.serialize_pem()),
            known_clients_line: format!("validator {}\n", fingerprint.join(":")),
        }
    })
}

/// `dir/known-clients.txt`, naming [`client_cert`].
fn known_clients_file(dir: &Path) -> PathBuf {
    let path = dir.join("known-clients.txt");
    std::fs::write(&path, &client_cert().known_clients_line).unwrap();
    path
}

/// `verify-attestation`'s options presenting [`client_cert`] (files written in a fresh
/// temporary directory that lives as long as the process: the tests run it to its end).
fn client_cert_args() -> Vec<String> {
    static DIR: std::sync::OnceLock<TempDir> = std::sync::OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let d = TempDir::new().unwrap();
        std::fs::write(d.path().join("client.pem"), &client_cert().cert_pem).unwrap();
        std::fs::write(d.path().join("client.key"), &client_cert().key_pem).unwrap();
        d
    });
    vec![
        "--tls-client-cert-file".into(),
        dir.path().join("client.pem").display().to_string(),
        "--tls-client-key-file".into(),
        dir.path().join("client.key").display().to_string(),
    ]
}

fn with_identity(b: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
    b.identity(reqwest::Identity::from_pem(client_cert().identity_pem.as_bytes()).unwrap())
}

/// A client for probing before the certificate has been checked (accepts any), with the known
/// client certificate.
fn unverified_client() -> reqwest::Client {
    with_identity(reqwest::Client::builder().danger_accept_invalid_certs(true))
        .build()
        .unwrap()
}

/// A validator client's: trusts exactly the enclave's certificate, presents its own.
fn pinned_client(pem: &str) -> reqwest::Client {
    with_identity(
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap()),
    )
    .build()
    .unwrap()
}

async fn get(client: &reqwest::Client, url: &str) -> Resp {
    Resp::read(client.get(url).send().await.expect("GET")).await
}

async fn sign(client: &reqwest::Client, base: &str, pubkey: &str, body: &Value) -> Resp {
    let r = client
        .post(format!("{base}/api/v1/eth2/sign/{pubkey}"))
        .header("accept", "application/json")
        .json(body)
        .send()
        .await
        .expect("POST");
    Resp::read(r).await
}

/// `key` signs `request` through the server at `base` (200), and the signature verifies.
async fn assert_signs(client: &reqwest::Client, base: &str, key: &KeyFiles, request: &Value) {
    let r = sign(client, base, &key.pubkey, request).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_valid_signature(
        &key.secret,
        request,
        r.json()["signature"].as_str().unwrap(),
    );
}

/// The signature answers `request` for `secret`'s key (blst, independent of the server).
fn assert_valid_signature(secret: &[u8; 32], request: &Value, signature_hex: &str) {
    let pk = blst::min_pk::SecretKey::from_bytes(secret)
        .unwrap()
        .sk_to_pk();
    let sig = hex::decode(signature_hex.trim_start_matches("0x")).unwrap();
    let sig = blst::min_pk::Signature::from_bytes(&sig).expect("a compressed G2 point");
    let root = signing_root(request);
    assert_eq!(
        sig.verify(true, &root, DST, &[], &pk, true),
        blst::BLST_ERROR::BLST_SUCCESS,
        "the signature does not verify"
    );
}

/// Polls `probe` until it returns `Some` (a readiness check, with short pauses between
/// probes), or fails the test after [`DEADLINE`] with `what` and `context()`.
async fn wait_until<T, F, Fut>(what: &str, context: impl Fn() -> String, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        if start.elapsed() > DEADLINE {
            panic!("timed out waiting for {what}\n{}", context());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// [`wait_until`] GET `url` through `client` answers in a way `check` accepts (`Some`); a
/// request that fails (nothing listening yet) is not an answer.
async fn wait_for_answer<T>(
    what: &str,
    proc: &Proc,
    client: &reqwest::Client,
    url: &str,
    check: impl Fn(Resp) -> Option<T>,
) -> T {
    let check = &check;
    wait_until(
        what,
        || proc.tail(),
        move || async move {
            let r = client.get(url).send().await.ok()?;
            check(Resp::read(r).await)
        },
    )
    .await
}

/// The check `id` of a `/healthcheck` body (Web3Signer's `checks` list), if it has one.
fn health_check(health: &Value, id: &str) -> Option<Value> {
    health["checks"]
        .as_array()?
        .iter()
        .find(|c| c["id"] == id)
        .cloned()
}

/// A child process whose stdout and stderr lines are collected (and echoed with
/// `ENSIGN_TEST_ECHO`). Dropping it stops it with SIGTERM (so ensign-host terminates its
/// enclave process group), then SIGKILL.
struct Proc {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    /// Output pipes closed so far (2: the process and its children are gone).
    closed: Arc<std::sync::atomic::AtomicUsize>,
}

impl Proc {
    fn spawn(mut cmd: Command, label: &'static str) -> Proc {
        let mut child = cmd
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {label}: {e}"));
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let closed: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
        let out: Vec<Box<dyn std::io::Read + Send>> = vec![
            Box::new(child.stdout.take().unwrap()),
            Box::new(child.stderr.take().unwrap()),
        ];
        for pipe in out {
            let (lines, closed) = (lines.clone(), closed.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if std::env::var_os("ENSIGN_TEST_ECHO").is_some() {
                        eprintln!("[{label}] {line}");
                    }
                    lines.lock().unwrap().push(line);
                }
                closed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            });
        }
        Proc {
            child,
            lines,
            closed,
        }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    fn tail(&self) -> String {
        let lines = self.lines();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// The first line containing `marker`, once written (fails at once if the process ended
    /// without writing it).
    async fn line_with(&self, marker: &str) -> String {
        let (lines, closed) = (self.lines.clone(), self.closed.clone());
        let found = wait_until(
            &format!("a line with {marker:?}"),
            || self.tail(),
            || {
                let found = lines
                    .lock()
                    .unwrap()
                    .iter()
                    .find(|l| l.contains(marker))
                    .cloned();
                let ended = closed.load(std::sync::atomic::Ordering::SeqCst) == 2;
                async move {
                    match found {
                        Some(l) => Some(Some(l)),
                        None if ended => Some(None),
                        None => None,
                    }
                }
            },
        )
        .await;
        found.unwrap_or_else(|| {
            panic!(
                "the process ended without a line with {marker:?}:\n{}",
                self.tail()
            )
        })
    }

    fn terminate(&mut self) -> ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().unwrap()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let until = Instant::now() + Duration::from_secs(15);
        while Instant::now() < until {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value after `key=` in a log line, up to white space or a quote.
fn field(line: &str, key: &str) -> String {
    line.split(key)
        .nth(1)
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
        .split(|c: char| c.is_whitespace() || c == '"')
        .next()
        .unwrap()
        .to_string()
}

/// ensign-host with the release ensign-insecure-test as its enclave (TCP endpoints, insecure-test
/// attestation, a loopback KMS forwarder to the host's proxy, SQLite slashing protection).
struct HostRun {
    proc: Proc,
    /// `https://127.0.0.1:PORT`: the host's listen port (validator clients').
    base: String,
    control: Endpoint,
}

impl HostRun {
    /// [`wait_for_answer`] from the host's `/healthcheck` (no certificate check: the enclave's
    /// certificate is what is being waited for).
    async fn wait_for_health<T>(&self, what: &str, check: impl Fn(Resp) -> Option<T>) -> T {
        let url = format!("{}/healthcheck", self.base);
        wait_for_answer(what, &self.proc, &unverified_client(), &url, check).await
    }
}

async fn start_host(
    host_bin: &Path,
    dir: &Path,
    kms: &FakeKms,
    keys_dir: &Path,
    pki_dir: &Path,
) -> HostRun {
    start_host_with(
        host_bin,
        dir,
        kms,
        keys_dir,
        pki_dir,
        &HostExtras::default(),
    )
    .await
}

/// Additions to [`start_host`]'s command lines.
#[derive(Default)]
struct HostExtras {
    /// More ensign-host options.
    host_args: Vec<String>,
    /// More global options of the enclave's ensign (a shell fragment: `$ENSIGN_HOST_*` expand).
    ensign_global: String,
    /// More eth2 options of the enclave's ensign (a shell fragment).
    ensign_eth2: String,
}

async fn start_host_with(
    host_bin: &Path,
    dir: &Path,
    kms: &FakeKms,
    keys_dir: &Path,
    pki_dir: &Path,
    extras: &HostExtras,
) -> HostRun {
    let (data, control, forward, kms_proxy) = (free_port(), free_port(), free_port(), free_port());
    let image: Vec<String> = enclave_globals(dir, kms, forward)
        .iter()
        .map(|a| format!("'{a}'"))
        .collect();
    let ensign_cmd = format!(
        "exec '{ensign}' --enclave-mode=true \
         --enclave-forward \"tcp:127.0.0.1:{forward}=$ENSIGN_HOST_KMS_PROXY\" {image} {global} \
         --enclave-attestation 'insecure-test:{pki}' --data-path '{data_path}' \
         eth2 --network mainnet {eth2}",
        ensign = enclave_ensign().display(),
        image = image.join(" "),
        pki = pki_dir.display(),
        data_path = dir.join("enclave-data").display(),
        global = extras.ensign_global,
        eth2 = extras.ensign_eth2,
    );
    let mut cmd = Command::new(host_bin);
    cmd.args(["--region", REGION, "--keys-dir"])
        .arg(keys_dir)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--enclave-transport",
            "tcp",
            "--data-port",
            &data.to_string(),
            "--control-port",
            &control.to_string(),
            "--kms-proxy-listen",
            &format!("tcp:127.0.0.1:{kms_proxy}"),
            // The proxy's target; the enclave's endpoint name is its image's.
            "--kms-endpoint",
            &kms_tls_addr(kms),
            "--credentials",
            "static-for-tests",
            "--poll-interval-secs",
            "1",
            "--enclave-boot-timeout-secs",
            "60",
            "--run-command",
            &ensign_cmd,
        ])
        .args(&extras.host_args);
    let proc = Proc::spawn(cmd, "host");
    let line = proc.line_with("data path listening").await;
    let listen = field(&line, "listen=tcp:");
    HostRun {
        proc,
        base: format!("https://{listen}"),
        control: format!("tcp:127.0.0.1:{control}").parse().unwrap(),
    }
}

/// The attestation endpoint's certificate (PEM), fetched without checking it.
async fn certificate(base: &str) -> String {
    let r = get(
        &unverified_client(),
        &format!("{base}/api/v1/attestation?nonce=00"),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    r.json()["certificate"].as_str().unwrap().to_string()
}

fn all_logs_free_of(logs: &[String], secrets: &[String]) {
    for line in logs {
        for s in secrets {
            assert!(
                !line.contains(s.as_str()),
                "secret material in a log line: {line}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_flow_through_ensign_host() {
    let Some(host_bin) = host_binary("whole_flow_through_ensign_host") else {
        return;
    };
    let dir = TempDir::new().unwrap();
    let pcr0 = sha384_file(&enclave_ensign());
    let (pki_dir, _, kms) = pki_and_kms(dir.path(), None).await;

    // A key record made the way an operator makes one.
    let (keys_dir, k1) = record_in_dir(dir.path(), &kms, b"enclave whole flow 1").await;
    let record: Value = serde_json::from_slice(
        &std::fs::read(keys_dir.join(format!("{}.json", k1.pubkey))).unwrap(),
    )
    .unwrap();
    assert_eq!(record["pubkey"], k1.pubkey.as_str());
    assert_eq!(record["kms_key_id"], kms.key_arn());
    assert_eq!(
        record["encryption_context"]["ensign-pubkey"],
        k1.pubkey.as_str()
    );

    let mut host = start_host(&host_bin, dir.path(), &kms, &keys_dir, &pki_dir).await;
    let base = host.base.clone();
    host.wait_for_health(
        "the enclave to be initialised (healthcheck 200 through the host)",
        |r| (r.status == 200).then_some(()),
    )
    .await;
    assert!(
        kms.stats()
            .decrypt_with_recipient
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    assert_eq!(
        kms.stats()
            .decrypt_plain
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );

    // The client checks the image and the TLS key before it trusts the certificate.
    let root = pki_dir.join(TEST_ROOT_FILE);
    let (code, out) = verify_attestation(&base, &pcr0, Some(&root)).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("attestation verified"), "{out}");
    let pem = certificate(&base).await;
    let fp = server::tls::fingerprint_hex(&server::tls::fingerprint(&pem_der(&pem)));
    assert!(
        out.contains(&fp),
        "the fingerprint to pin is printed: {out}"
    );
    let mut wrong = pcr0;
    wrong[0] ^= 1;
    let (code, out) = verify_attestation(&base, &wrong, Some(&root)).await;
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("PCR0 is"), "{out}");
    // The default root (AWS's) does not accept a test document.
    let (code, out) = verify_attestation(&base, &pcr0, None).await;
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("trusted root"), "{out}");

    // A validator-style request through the host, over TLS pinned to the attested certificate.
    let client = pinned_client(&pem);
    let keys = get(&client, &format!("{base}/api/v1/eth2/publicKeys")).await;
    assert_eq!(keys.status, 200, "{keys:?}");
    assert_eq!(keys.json(), json!([k1.pubkey]));
    assert_signs(&client, &base, &k1, &attestation(10, 11, 1)).await;
    // Slashing protection runs inside the enclave as anywhere: a double vote is refused.
    let r = sign(&client, &base, &k1.pubkey, &attestation(10, 11, 2)).await;
    assert_eq!(r.status, 412, "{r:?}");

    // A second Init, from anyone reaching the control port, is refused; the enclave serves on.
    let mut control = ControlClient::connect(&host.control).await.unwrap();
    let err = control.init(init_request(vec![])).await.unwrap_err();
    assert_eq!(
        err.remote_code(),
        Some(ErrorCode::AlreadyInitialised),
        "{err}"
    );

    // A record added to the host's directory is delivered (AddKeys) and signs; a record removed
    // is unloaded (RemoveKeys).
    let (_, k2) = record_in_dir(dir.path(), &kms, b"enclave whole flow 2").await;
    let mut sorted: Vec<String> = vec![k1.pubkey.clone(), k2.pubkey.clone()];
    sorted.sort();
    wait_for_answer(
        "the added key to be loaded",
        &host.proc,
        &client,
        &format!("{base}/api/v1/eth2/publicKeys"),
        |r| (r.json() == json!(sorted)).then_some(()),
    )
    .await;
    assert_signs(&client, &base, &k2, &attestation(20, 21, 1)).await;
    std::fs::remove_file(keys_dir.join(format!("{}.json", k1.pubkey))).unwrap();
    wait_for_answer(
        "the removed key to be unloaded",
        &host.proc,
        &client,
        &format!("{base}/api/v1/eth2/publicKeys"),
        |r| (r.json() == json!([k2.pubkey])).then_some(()),
    )
    .await;
    let r = sign(&client, &base, &k1.pubkey, &attestation(30, 31, 1)).await;
    assert_eq!(r.status, 404, "{r:?}");

    assert!(host.proc.running(), "the host keeps running");
    let status = host.proc.terminate();
    assert!(
        status.success(),
        "ensign-host did not stop cleanly: {status}\n{}",
        host.proc.tail()
    );
    let logs = host.proc.lines();
    assert!(
        logs.iter().any(|l| l.contains("enclave ready")),
        "{}",
        host.proc.tail()
    );
    all_logs_free_of(
        &logs,
        &[
            PASSWORD.to_string(),
            hex::encode(k1.secret),
            hex::encode(k2.secret),
        ],
    );
}

fn pem_der(pem: &str) -> Vec<u8> {
    use base64::Engine as _;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}

fn credentials() -> AwsCredentials {
    AwsCredentials {
        access_key_id: "ASIATESTENCLAVE".into(),
        secret_access_key: SecretString::new("testing"),
        session_token: None,
        expiration: None,
    }
}

/// An Init as ensign-host sends it: credentials, region and records (the KMS endpoint is the
/// enclave image's).
fn init_request(keys: Vec<EncryptedKeyRecord>) -> InitRequest {
    InitRequest {
        credentials: credentials(),
        region: serde_json::from_value(json!(REGION)).unwrap(),
        kms_endpoint: None,
        keys,
        tls: None,
        database: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_pcr0_policy_keeps_every_key_out() {
    let Some(host_bin) = host_binary("wrong_pcr0_policy_keeps_every_key_out") else {
        return;
    };
    let dir = TempDir::new().unwrap();
    // The key policy names another image.
    let (pki_dir, _, kms) = pki_and_kms(dir.path(), Some(vec![0x11; 48])).await;
    let (keys_dir, k) = record_in_dir(dir.path(), &kms, b"enclave wrong pcr0").await;

    let mut host = start_host(&host_bin, dir.path(), &kms, &keys_dir, &pki_dir).await;
    let base = host.base.clone();
    let probe = unverified_client();
    // The enclave may not listen yet (the host's forwarder then closes the connection).
    let health = host
        .wait_for_health("/healthcheck to report the refused Init", |r| {
            r.body.contains("last-init-error").then_some(r)
        })
        .await;
    assert_eq!(health.status, 503, "{health:?}");
    let entry = health_check(&health.json(), "enclave").unwrap();
    assert_eq!(entry["status"], "DOWN");
    // Clients of the data port learn that Init failed, not KMS's message (which names the key's
    // ARN and account): that reaches the host, in the control reply (below).
    let reason = entry["data"]["last-init-error"].as_str().unwrap();
    assert_eq!(reason, server::enclave::INIT_FAILED_PUBLIC);
    assert!(!health.body.contains("111122223333"), "{health:?}");

    // Closed: no signing, no key list; attestation and upcheck still answer.
    let r = sign(&probe, &base, &k.pubkey, &attestation(1, 2, 1)).await;
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.body.contains("not initialised"), "{r:?}");
    let r = get(&probe, &format!("{base}/api/v1/eth2/publicKeys")).await;
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(get(&probe, &format!("{base}/upcheck")).await.status, 200);
    certificate(&base).await;

    // The host reports the refusal with its likely cause, and keeps running (it retries).
    let refused = host.proc.line_with("refused Init").await;
    assert!(refused.contains("PCR0"), "{refused}");
    assert!(host.proc.running(), "the host keeps running");
    let stats = kms.stats();
    assert!(stats.denied.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    assert_eq!(
        stats
            .decrypt_with_recipient
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    assert_eq!(
        stats
            .decrypt_plain
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    let status = host.proc.terminate();
    assert!(status.success(), "{status}\n{}", host.proc.tail());
    all_logs_free_of(
        &host.proc.lines(),
        &[PASSWORD.to_string(), hex::encode(k.secret)],
    );
}

/// The release ensign-insecure-test in enclave mode on its own (no host), TCP endpoints on port 0.
struct Enclave {
    proc: Proc,
    base: String,
    control: Endpoint,
}

/// `forwards`: (local port, remote port) loopback pairs; `globals` before `eth2` (e.g.
/// [`enclave_globals`]), `eth2_args` after it.
async fn start_enclave(
    data_path: &Path,
    pki_dir: &Path,
    forwards: &[(u16, u16)],
    globals: &[String],
    eth2_args: &[String],
) -> Enclave {
    let mut cmd = Command::new(enclave_ensign());
    cmd.args([
        "--enclave-mode=true",
        "--enclave-control-endpoint",
        "tcp:127.0.0.1:0",
        "--enclave-data-endpoint",
        "tcp:127.0.0.1:0",
        "--enclave-attestation",
        &format!("insecure-test:{}", pki_dir.display()),
        "--data-path",
        &data_path.display().to_string(),
    ]);
    for (local, remote) in forwards {
        cmd.args([
            "--enclave-forward",
            &format!("tcp:127.0.0.1:{local}=tcp:127.0.0.1:{remote}"),
        ]);
    }
    cmd.args(globals);
    cmd.args(["eth2", "--network", "mainnet"]);
    cmd.args(eth2_args);
    let proc = Proc::spawn(cmd, "enclave");
    let control = proc.line_with("enclave control endpoint listening").await;
    let listening = proc.line_with("listening on https://").await;
    Enclave {
        base: format!("https://{}", field(&listening, "listening on https://")),
        control: field(&control, "control=").parse().unwrap(),
        proc,
    }
}

/// A record for the fake KMS made without HTTP (plaintext in ensign's format).
fn fake_record(kms: &FakeKms, k: &KeyFiles, label: &str) -> EncryptedKeyRecord {
    let keystore: serde_json::Map<String, Value> =
        serde_json::from_slice(&std::fs::read(&k.keystore).unwrap()).unwrap();
    let plaintext = server::key_records::encode_plaintext(&keystore, PASSWORD).unwrap();
    let context =
        std::collections::BTreeMap::from([("ensign-pubkey".to_string(), label.to_string())]);
    EncryptedKeyRecord {
        id: label.to_string(),
        pubkey: Some(label.to_string()),
        ciphertext: Base64Bytes(kms.encrypt(&plaintext[..], &context)),
        encryption_context: context,
        kms_key_id: Some(kms.key_arn().to_string()),
    }
}

/// One frame's JSON reply to raw bytes written on a fresh control connection.
async fn control_reply(control: &Endpoint, raw: &[u8]) -> Value {
    use tokio::io::AsyncWriteExt;
    let mut s = control.connect().await.unwrap();
    s.write_all(raw).await.unwrap();
    let frame = read_frame(&mut s, 1 << 20)
        .await
        .unwrap()
        .expect("a reply frame");
    serde_json::from_slice(&frame).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enclave_alone_fails_closed_and_refuses_bad_control_input() {
    let dir = TempDir::new().unwrap();
    let (pki_dir, pki, kms) = pki_and_kms(dir.path(), None).await;
    let kms_addr = kms_tls_addr(&kms);
    // The enclave's KMS forwarder points at the host's proxy port, where nothing listens yet.
    let (forward, proxy_port) = (free_port(), free_port());
    let e = start_enclave(
        &dir.path().join("enclave-data"),
        &pki_dir,
        &[(forward, proxy_port)],
        &enclave_globals(dir.path(), &kms, forward),
        &[],
    )
    .await;
    let probe = unverified_client();

    // Before Init: upcheck, health (DOWN, waiting) and attestation only.
    assert_eq!(
        get(&probe, &format!("{}/upcheck", e.base)).await.status,
        200
    );
    let h = get(&probe, &format!("{}/healthcheck", e.base)).await;
    assert_eq!(h.status, 503, "{h:?}");
    assert!(h.body.contains("waiting-for-init"), "{h:?}");
    // The store is reported DOWN before Init (it is opened or trusted only once initialised).
    let db = health_check(&h.json(), "slashing-protection-db-health-check");
    assert_eq!(
        db.map(|c| c["status"].clone()),
        Some(json!("DOWN")),
        "{h:?}"
    );
    for path in [
        "/api/v1/eth2/publicKeys",
        "/api/v1/eth2/highWatermark",
        "/reload",
        "/api-docs/openapi.yaml",
    ] {
        let r = get(&probe, &format!("{}{path}", e.base)).await;
        assert_eq!(r.status, 503, "{path}: {r:?}");
    }
    // The attestation binds the certificate this connection sees, and our nonce.
    let r = get(
        &probe,
        &format!("{}/api/v1/attestation?nonce=0123abcd", e.base),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let answer = r.json();
    let doc = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(answer["attestation_document"].as_str().unwrap())
            .unwrap()
    };
    let verified = enclave_bridge::attestation::verify_attestation(
        &doc,
        &pki.root_der,
        std::time::SystemTime::now(),
    )
    .unwrap();
    assert_eq!(
        verified.nonce.as_deref(),
        Some(&[0x01, 0x23, 0xab, 0xcd][..])
    );
    let cert = pem_der(answer["certificate"].as_str().unwrap());
    assert_eq!(
        verified.user_data.as_deref(),
        Some(&server::enclave::spki_sha256(&cert).unwrap()[..])
    );
    for bad in [
        "nonce=zz",
        "nonce=abc",
        "other=1",
        &format!("nonce={}", "00".repeat(65)),
    ] {
        let r = get(&probe, &format!("{}/api/v1/attestation?{bad}", e.base)).await;
        assert_eq!(r.status, 400, "{bad}: {r:?}");
    }

    // Garbage and oversize frames on the control port: refused, connection closed, enclave fine.
    let reply = control_reply(&e.control, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(reply["body"]["code"], "FrameTooLarge", "{reply}");
    let reply = control_reply(&e.control, &[0xff, 0xff, 0xff, 0xff]).await;
    assert_eq!(reply["body"]["code"], "FrameTooLarge", "{reply}");
    let reply = control_reply(&e.control, &[0, 0, 0, 5, b'h', b'e', b'l', b'l', b'o']).await;
    assert_eq!(reply["body"]["code"], "MalformedMessage", "{reply}");
    let mut framed = vec![];
    write_frame(&mut framed, br#"{"type":"Init","body":{}}"#, 1 << 20)
        .await
        .unwrap();
    let reply = control_reply(&e.control, &framed).await;
    assert_eq!(reply["body"]["code"], "MalformedMessage", "{reply}");
    let mut framed = vec![];
    write_frame(&mut framed, br#"{"type":"Status"}"#, 1 << 20)
        .await
        .unwrap();
    let reply = control_reply(&e.control, &framed).await;
    assert_eq!(reply["body"]["code"], "HandshakeRequired", "{reply}");

    // Init before the host's KMS proxy is up: refused with the reason, nothing loaded.
    let k = key_files(&dir.path().join("keystores"), b"enclave alone");
    let stranger = key_files(&dir.path().join("keystores"), b"someone else");
    let mut control = ControlClient::connect(&e.control).await.unwrap();
    let err = control
        .init(init_request(vec![fake_record(&kms, &k, &k.pubkey)]))
        .await
        .unwrap_err();
    let ControlError::Remote { code, message } = &err else {
        panic!("{err}")
    };
    assert_eq!(*code, ErrorCode::HandlerFailed);
    assert!(message.contains("KMS request failed"), "{message}");
    // The host hears the reason; the data port's clients only that Init failed.
    let h = get(&probe, &format!("{}/healthcheck", e.base)).await;
    assert_eq!(h.status, 503);
    assert!(
        h.body.contains("\"failed\"")
            && h.body.contains(server::enclave::INIT_FAILED_PUBLIC)
            && !h.body.contains("KMS"),
        "{h:?}"
    );
    assert_eq!(
        sign(&probe, &e.base, &k.pubkey, &attestation(1, 2, 1))
            .await
            .status,
        503
    );

    // The host's proxy comes up: the next Init works. A record labelled with another key's
    // public key is refused alone (and counted in the health check until removed).
    relay(proxy_port, kms_addr);
    let report = control
        .init(init_request(vec![fake_record(&kms, &k, &k.pubkey)]))
        .await
        .unwrap();
    assert_eq!(report.loaded, vec![k.pubkey.clone()]);
    // A record whose encryption context (and label) names another key than the one inside:
    // refused with the one fixed text, which says nothing of the plaintext.
    let report = control
        .add_keys(AddKeysRequest {
            keys: vec![fake_record(&kms, &k, &stranger.pubkey)],
        })
        .await
        .unwrap();
    assert!(report.loaded.is_empty(), "{report:?}");
    assert_eq!(report.failed.len(), 1);
    assert_eq!(
        report.failed[0].reason,
        server::enclave::RECORD_UNUSABLE,
        "{:?}",
        report.failed
    );
    let h = get(&probe, &format!("{}/healthcheck", e.base)).await;
    assert_eq!(h.status, 503, "a record failed to load: {h:?}");
    assert!(h.body.contains("\"error-count\":1"), "{h:?}");
    let removed = control
        .remove_keys(RemoveKeysRequest {
            pubkeys: vec![stranger.pubkey.clone()],
        })
        .await
        .unwrap();
    assert_eq!(removed.not_found, vec![stranger.pubkey.clone()]);
    let h = get(&probe, &format!("{}/healthcheck", e.base)).await;
    assert_eq!(h.status, 200, "{h:?}");

    let pem = certificate(&e.base).await;
    let client = pinned_client(&pem);
    assert_signs(&client, &e.base, &k, &attestation(5, 6, 1)).await;
    let r = client
        .post(format!("{}/reload", e.base))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        409,
        "reload does not apply in enclave mode"
    );

    // Re-init refused; the enclave keeps its keys.
    let err = control.init(init_request(vec![])).await.unwrap_err();
    assert_eq!(
        err.remote_code(),
        Some(ErrorCode::AlreadyInitialised),
        "{err}"
    );
    let r = sign(&client, &e.base, &k.pubkey, &attestation(6, 7, 1)).await;
    assert_eq!(r.status, 200, "{r:?}");
    all_logs_free_of(
        &e.proc.lines(),
        &[PASSWORD.to_string(), hex::encode(k.secret)],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enclave_mode_refuses_local_key_sources() {
    let dir = TempDir::new().unwrap();
    for extra in [
        vec!["--key-store-path", "/nonexistent"],
        vec!["--tls-cert-file", "/x.pem", "--tls-key-file", "/x.key"],
    ] {
        let mut args: Vec<String> = vec![
            "--enclave-mode=true".into(),
            "--data-path".into(),
            dir.path().display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend(["eth2".to_string()]);
        let (code, stderr) = tests::run_binary(&args);
        assert_eq!(code, 2, "{stderr}");
        assert!(
            stderr.contains("cannot be used with --enclave-mode=true"),
            "{stderr}"
        );
    }
    let (code, stderr) = tests::run_binary(&[
        "--enclave-mode=true".into(),
        "--enclave-forward".into(),
        "tcp:0.0.0.0:443=vsock:3:8000".into(),
        "eth2".into(),
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("loopback"), "{stderr}");
    // Off-enclave, the default attestation (the NSM) is not there: a clear start-up error
    // (enclave_mode_refuses_an_unsafe_configuration, once the configuration is safe).
}

/// A production build (`cargo build --release -p server`, default features: what
/// docker/Dockerfile.enclave builds) has no test attestor: `insecure-test:<dir>`, on the
/// command line or in the environment, is a configuration error (exit 2) that says how to get
/// the test build; that build gets past it to the next check.
#[test]
fn production_build_refuses_insecure_test_attestation() {
    let dir = TempDir::new().unwrap();
    let pki = format!("insecure-test:{}", dir.path().join("pki").display());
    let args = |attestation: Option<&str>| -> Vec<String> {
        let mut a = vec!["--enclave-mode=true".to_string()];
        if let Some(mode) = attestation {
            a.extend(["--enclave-attestation".to_string(), mode.to_string()]);
        }
        // Refused in enclave mode after the options parse: the test build's answer.
        a.extend(["--key-store-path", "/nonexistent", "eth2"].map(String::from));
        a
    };
    let refused = |out: std::process::Output| {
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            stderr.contains("has no test attestor"),
            "{} accepted {pki} (built with feature insecure-test-attestation? rebuild it with \
             `cargo build --release -p server`): {stderr}",
            ensign().display()
        );
        assert!(
            stderr.contains("--features insecure-test-attestation --bin ensign-insecure-test"),
            "{stderr}"
        );
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(!dir.path().join("pki").exists(), "a test PKI was made");
    };
    let run = |bin: PathBuf, args: Vec<String>, env: Option<&str>| {
        let mut cmd = Command::new(bin);
        cmd.args(args).env("NO_COLOR", "1");
        match env {
            Some(v) => cmd.env("ENSIGN_ENCLAVE_ATTESTATION", v),
            None => cmd.env_remove("ENSIGN_ENCLAVE_ATTESTATION"),
        };
        cmd.output().unwrap()
    };
    refused(run(ensign(), args(Some(&pki)), None));
    refused(run(ensign(), args(None), Some(&pki)));

    let out = run(enclave_ensign(), args(Some(&pki)), None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("cannot be used with --enclave-mode=true") && !stderr.contains("attestor"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_decrypt_path_against_moto() {
    let Some(moto) = tokio::task::spawn_blocking(moto::Moto::start)
        .await
        .unwrap()
    else {
        return;
    };
    let sdk = moto_sdk_config(&moto.url).await;
    let kms = aws_sdk_kms::Client::new(&sdk);
    let key_id = tests::create_kms_key(&kms).await;
    let ddb = aws_sdk_dynamodb::Client::new(&sdk);
    test_support::enclave::create_keys_table(&ddb, "ensign-keys").await;

    let dir = TempDir::new().unwrap();
    let k = key_files(&dir.path().join("keystores"), b"enclave moto");
    let (code, out) =
        keys_encrypt(&k, &moto.url, &key_id, &["--dynamodb-table", "ensign-keys"]).await;
    assert_eq!(code, 0, "{out}");
    let records_dir = dir.path().join("records");
    let to_records = records_dir.display().to_string();
    let to_records = ["--out-dir", to_records.as_str()];
    let (code, out) = keys_encrypt(&k, &moto.url, &key_id, &to_records).await;
    assert_eq!(code, 0, "{out}");
    // A wrong password is found before anything is encrypted.
    std::fs::write(&k.password, "not the password").unwrap();
    let (code, out) = keys_encrypt(&k, &moto.url, &key_id, &to_records).await;
    assert_ne!(code, 0, "{out}");

    // ensign-host's own readers take what `keys encrypt` wrote.
    use host::keys::{dynamodb_client, DirKeySource, DynamoKeySource};
    let creds = aws_sdk_kms::config::SharedCredentialsProvider::new(
        aws_sdk_kms::config::Credentials::new("testing", "testing", None, None, "test"),
    );
    let region: enclave_bridge::control::AwsRegion = serde_json::from_value(json!(REGION)).unwrap();
    let from_table = DynamoKeySource::new(
        dynamodb_client(&region, creds, Some(&moto.url)),
        "ensign-keys".into(),
        None,
    )
    .list()
    .await
    .unwrap();
    assert!(from_table.problems.is_empty(), "{:?}", from_table.problems);
    let from_dir = DirKeySource::new(&records_dir).list().await.unwrap();
    assert!(from_dir.problems.is_empty(), "{:?}", from_dir.problems);
    assert_eq!(from_table.records.len(), 1);
    assert_eq!(from_dir.records.len(), 1);
    let record = from_table.records[&k.pubkey].clone();
    assert_eq!(record.encryption_context["ensign-pubkey"], k.pubkey);
    let dir_record = from_dir.records[&k.pubkey].clone();

    // An in-process enclave-mode signer with attestation off (code-only test mode): Init with
    // both records through plain KMS Decrypt at moto.
    let args: Vec<String> = [
        "ensign",
        "--enclave-mode=true",
        "--enclave-control-endpoint",
        "tcp:127.0.0.1:0",
        "--enclave-data-endpoint",
        "tcp:127.0.0.1:0",
        "--data-path",
        &dir.path().join("data").display().to_string(),
        "--enclave-kms-region",
        REGION,
        "--enclave-development-mode=true",
        "--tls-allow-any-client=true",
        "eth2",
        "--network",
        "mainnet",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let cli = <server::cli::Cli as clap::Parser>::try_parse_from(&args).unwrap();
    let server::cli::Mode::Eth2(eth2) = &cli.mode else {
        unreachable!()
    };
    let mut config = server::Config::from_cli(&cli.global, eth2).unwrap();
    let enclave = config.enclave.as_mut().unwrap();
    enclave.attestation = server::config::AttestationMode::UnattestedPlainDecryptForTests;
    // moto speaks plain HTTP: an endpoint only code can set (the options take https:// only).
    enclave.kms.endpoint = EndpointUrl::try_from(moto.url.clone()).unwrap();
    let running = server::start(config).await.unwrap();
    let endpoints = running.enclave.clone().unwrap();
    let base = format!("https://{}", running.addr);
    let mut control = ControlClient::connect(&endpoints.control).await.unwrap();
    let mut dup = dir_record.clone();
    dup.id = "from-directory".into();
    let report = control.init(init_request(vec![record, dup])).await.unwrap();
    assert_eq!(
        report.loaded,
        vec![k.pubkey.clone(), "from-directory".to_string()],
        "{report:?}"
    );
    let client = unverified_client();
    assert_signs(&client, &base, &k, &attestation(3, 4, 1)).await;
    // No attestor in this mode: no document either.
    assert_eq!(
        get(&client, &format!("{base}/api/v1/attestation"))
            .await
            .status,
        500
    );
    running.stop().await.unwrap();
}

/// Production's slashing setup in an enclave: PostgreSQL reached through a loopback forwarder.
/// The history outlives the enclave (a new one, with fresh memory, still refuses a double vote),
/// which SQLite in an enclave's memory-backed file system could not do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slashing_history_in_postgresql_survives_an_enclave_restart() {
    let Some(schema) =
        tests::PgSchema::new("slashing_history_in_postgresql_survives_an_enclave_restart")
    else {
        return;
    };
    let dir = TempDir::new().unwrap();
    let (pki_dir, _, kms) = pki_and_kms(dir.path(), None).await;
    let k = key_files(&dir.path().join("keystores"), b"enclave postgres");
    let (pg_forward, kms_forward) = (free_port(), free_port());
    let kms_port = kms_tls_port(&kms);
    let eth2 = vec![
        "--slashing-protection-db-url".to_string(),
        schema.url_via(Some(&format!("127.0.0.1:{pg_forward}"))),
    ];
    let mut refused_after_restart = false;
    for round in 0..2 {
        // A fresh data path each time: what an enclave's memory holds is gone after a restart.
        let data_path = dir.path().join(format!("enclave-data-{round}"));
        let mut e = start_enclave(
            &data_path,
            &pki_dir,
            &[(pg_forward, 5432), (kms_forward, kms_port)],
            &enclave_globals(dir.path(), &kms, kms_forward),
            &eth2,
        )
        .await;
        // Plaintext PostgreSQL through the parent (development mode only): the operator is told
        // it is not authenticated.
        assert!(
            e.proc
                .lines()
                .iter()
                .any(|l| l.contains("database is not authenticated")),
            "{}",
            e.proc.tail()
        );
        let mut control = ControlClient::connect(&e.control).await.unwrap();
        let report = control
            .init(init_request(vec![fake_record(&kms, &k, &k.pubkey)]))
            .await
            .unwrap();
        assert_eq!(report.loaded, vec![k.pubkey.clone()], "{report:?}");
        let client = pinned_client(&certificate(&e.base).await);
        if round == 0 {
            let r = sign(&client, &e.base, &k.pubkey, &attestation(10, 11, 1)).await;
            assert_eq!(r.status, 200, "{r:?}");
        }
        // A double vote for target 11: refused in this enclave and in its successor.
        let r = sign(&client, &e.base, &k.pubkey, &attestation(10, 11, 2 + round)).await;
        assert_eq!(r.status, 412, "round {round}: {r:?}");
        if round == 0 {
            // The parent instance, holding the database's credentials, deletes the history
            // (issue 15, finding 3): the enclave remembers what it signed since it started and
            // still refuses the double vote and a surrounding one.
            let schema_name = schema.name.clone();
            pg_rows(format!(
                "DELETE FROM {schema_name}.signed_attestations; \
                 DELETE FROM {schema_name}.low_watermarks"
            ))
            .await;
            for (source, target) in [(10, 11), (9, 12)] {
                let r = sign(&client, &e.base, &k.pubkey, &attestation(source, target, 7)).await;
                assert_eq!(
                    r.status, 412,
                    "history deleted, ({source}, {target}): {r:?}"
                );
            }
            // The disagreement is logged (awaited: the log is read on another thread).
            e.proc.line_with("disagree").await;
        }
        refused_after_restart = round == 1;
        let status = e.proc.terminate();
        assert!(status.success(), "{status}\n{}", e.proc.tail());
    }
    assert!(refused_after_restart);
}

/// Runs admin SQL on the test server (as its superuser) from a plain thread, as the harness
/// does (the synchronous client must not run inside the tests' runtime); the first column of
/// every row, as text.
async fn pg_rows(sql: String) -> Vec<String> {
    tokio::task::spawn_blocking(move || {
        let mut c = postgres::Client::connect(&tests::pg_base_url(), postgres::NoTls).unwrap();
        c.simple_query(&sql)
            .unwrap()
            .into_iter()
            .filter_map(|m| match m {
                postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("").to_string()),
                _ => None,
            })
            .collect()
    })
    .await
    .unwrap()
}

/// Sessions of `role` open on the server.
async fn sessions_of(role: &str) -> usize {
    pg_rows(format!(
        "SELECT count(*) FROM pg_stat_activity WHERE usename = '{role}'"
    ))
    .await[0]
        .parse()
        .unwrap()
}

/// Fresh LOGIN roles for one test, dropped with everything they own (the schema included).
struct PgRoles(Vec<String>);

impl Drop for PgRoles {
    fn drop(&mut self) {
        let roles = self.0.join(", ");
        let sql = format!("DROP OWNED BY {roles} CASCADE; DROP ROLE IF EXISTS {roles}");
        let _ = std::thread::spawn(move || {
            let mut c = postgres::Client::connect(&tests::pg_base_url(), postgres::NoTls)?;
            c.batch_execute(&sql)
        })
        .join();
    }
}

/// The slashing database's credentials travel from Secrets Manager (moto) through ensign-host
/// into the enclave: the enclave's URL names no user, so the role that owns
/// the tables and holds the sessions proves which credentials were used. The test server trusts
/// every local login, so the user name is what shows delivery; the password (with characters a
/// URL would need encoded) must never appear in a log line.
///
/// 1. The secret names a role that does not exist: Init fails with the database's reason, in
///    /healthcheck and the host's log; signing stays 503.
/// 2. The secret is fixed and the host gets SIGHUP: Init succeeds as that role, which creates
///    and owns the tables; an attestation is signed and recorded.
/// 3. The secret is rotated to a second role: the host delivers it at its next poll; the enclave
///    reconnects as the new role (the old pool's sessions close) and signs on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_credentials_from_secrets_manager_reach_the_enclave() {
    let test = "database_credentials_from_secrets_manager_reach_the_enclave";
    let Some(host_bin) = host_binary(test) else {
        return;
    };
    let Some(schema) = tests::PgSchema::new(test) else {
        return;
    };
    let Some(moto) = tokio::task::spawn_blocking(moto::Moto::start)
        .await
        .unwrap()
    else {
        return;
    };
    let tag = format!("{}_{}", std::process::id(), rand::random::<u32>());
    let (first, second, missing) = (
        format!("ensign_db_a_{tag}"),
        format!("ensign_db_b_{tag}"),
        format!("ensign_db_missing_{tag}"),
    );
    // The second role acts for the first (rotation keeps the tables' owner).
    pg_rows(format!(
        "CREATE ROLE {first} LOGIN; CREATE ROLE {second} LOGIN IN ROLE {first}; \
         ALTER SCHEMA {} OWNER TO {first}",
        schema.name
    ))
    .await;
    let _roles = PgRoles(vec![first.clone(), second.clone()]);

    const DB_PASSWORD: &str = "dB-pa55:w/rd@%?#&=+ü";
    let secret_json = |user: &str| {
        json!({"username": user, "password": DB_PASSWORD, "engine": "postgres", "port": 5432})
            .to_string()
    };
    let sdk = moto_sdk_config(&moto.url).await;
    let sm = aws_sdk_secretsmanager::Client::new(&sdk);
    let arn = sm
        .create_secret()
        .name("ensign-test/slashing-db")
        .secret_string(secret_json(&missing))
        .send()
        .await
        .unwrap()
        .arn()
        .unwrap()
        .to_string();

    let dir = TempDir::new().unwrap();
    let (pki_dir, _, kms) = pki_and_kms(dir.path(), None).await;
    let (keys_dir, k) = record_in_dir(dir.path(), &kms, b"enclave database secret").await;

    // Production's path: enclave → loopback forwarder → the host's database proxy → PostgreSQL.
    let (db_proxy, pg_forward) = (free_port(), free_port());
    let pg_server = tests::pg_base_url()
        .split('@')
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap()
        .to_string();
    // The URL names no user: the image leaves the choice to the secret (an image that names
    // one refuses credentials for another: enclave_refuses_database_credentials_of_another_user).
    let url = schema
        .url_via(Some(&format!("127.0.0.1:{pg_forward}")))
        .replacen("postgresql://postgres@", "postgresql://", 1);
    assert!(url.starts_with("postgresql://127.0.0.1:"), "{url}");
    let extras = HostExtras {
        host_args: [
            "--db-endpoint",
            &pg_server,
            "--db-proxy-listen",
            &format!("tcp:127.0.0.1:{db_proxy}"),
            "--db-secret-arn",
            &arn,
            "--secrets-manager-endpoint",
            &moto.url,
        ]
        .map(String::from)
        .to_vec(),
        ensign_global: format!(
            "--enclave-forward \"tcp:127.0.0.1:{pg_forward}=$ENSIGN_HOST_DB_PROXY\""
        ),
        ensign_eth2: format!("--slashing-protection-db-url '{url}'"),
    };
    let host = start_host_with(&host_bin, dir.path(), &kms, &keys_dir, &pki_dir, &extras).await;
    let base = host.base.clone();
    let probe = unverified_client();

    // 1. A role that does not exist: Init fails, and says it is the database.
    // The data path answers once the enclave listens; errors before that are normal.
    let reason = host
        .wait_for_health("Init to fail on the database", |r| {
            let h: Value = serde_json::from_str(&r.body).ok()?;
            let enclave = health_check(&h, "enclave")?;
            (enclave["data"]["state"] == "failed")
                .then(|| {
                    enclave["data"]["last-init-error"]
                        .as_str()
                        .map(String::from)
                })
                .flatten()
        })
        .await;
    // The data port's clients learn only that Init failed; the host hears the database's reason.
    assert_eq!(reason, server::enclave::INIT_FAILED_PUBLIC);
    let refused = host.proc.line_with("the enclave refused Init").await;
    assert!(
        refused.contains("slashing protection database")
            && refused.contains(&missing)
            && refused.contains("does not exist"),
        "{refused}"
    );
    let r = sign(&probe, &base, &k.pubkey, &attestation(20, 21, 1)).await;
    assert_eq!(r.status, 503, "{r:?}");

    // 2. Fixed, and SIGHUP: Init succeeds as `first`, which makes and owns the tables.
    sm.put_secret_value()
        .secret_id(&arn)
        .secret_string(secret_json(&first))
        .send()
        .await
        .unwrap();
    let _ = Command::new("kill")
        .args(["-HUP", &host.proc.child.id().to_string()])
        .status();
    host.wait_for_health("the enclave to become ready", |r| {
        (r.status == 200).then_some(())
    })
    .await;
    let client = pinned_client(&certificate(&base).await);
    assert_signs(&client, &base, &k, &attestation(20, 21, 1)).await;
    let owners = pg_rows(format!(
        "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = '{}'",
        schema.name
    ))
    .await;
    assert_eq!(owners, vec![first.clone()], "the tables' owner");
    let recorded = pg_rows(format!(
        "SELECT count(*) FROM {}.signed_attestations WHERE target_epoch = 21",
        schema.name
    ))
    .await;
    assert_eq!(recorded, vec!["1".to_string()]);
    assert!(
        sessions_of(&first).await >= 1,
        "the enclave's sessions are {first}'s"
    );
    assert_eq!(sessions_of(&second).await, 0);

    // 3. Rotated: delivered at the next poll; new connections are `second`'s, the old pool's
    //    sessions close, and signing goes on (and still refuses a double vote).
    sm.put_secret_value()
        .secret_id(&arn)
        .secret_string(secret_json(&second))
        .send()
        .await
        .unwrap();
    let delivered = host.proc.line_with("the database secret changed").await;
    assert!(delivered.contains(&second), "{delivered}");
    assert!(
        sessions_of(&second).await >= 1,
        "new sessions are {second}'s"
    );
    wait_until(
        "the old pool's sessions to close",
        || host.proc.tail(),
        || async { (sessions_of(&first).await == 0).then_some(()) },
    )
    .await;
    let request = attestation(21, 22, 1);
    let r = sign(&client, &base, &k.pubkey, &request).await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = sign(&client, &base, &k.pubkey, &attestation(20, 21, 2)).await;
    assert_eq!(r.status, 412, "{r:?}");
    assert!(sessions_of(&second).await >= 1);
    assert_eq!(sessions_of(&first).await, 0);

    all_logs_free_of(
        &host.proc.lines(),
        &[DB_PASSWORD.to_string(), PASSWORD.to_string()],
    );
}

/// A VOLUNTARY_EXIT request (Web3Signer's body).
fn voluntary_exit(epoch: u64, validator_index: u64) -> Value {
    json!({
        "type": "VOLUNTARY_EXIT",
        "fork_info": tests::body::fork_info(),
        "voluntary_exit": {"epoch": epoch.to_string(), "validator_index": validator_index.to_string()},
    })
}

/// A record whose plaintext is `plaintext` as KMS holds it (context: `pubkey`).
fn raw_record(kms: &FakeKms, id: &str, pubkey: &str, plaintext: &[u8]) -> EncryptedKeyRecord {
    let context =
        std::collections::BTreeMap::from([("ensign-pubkey".to_string(), pubkey.to_string())]);
    EncryptedKeyRecord {
        id: id.to_string(),
        pubkey: Some(pubkey.to_string()),
        ciphertext: Base64Bytes(kms.encrypt(plaintext, &context)),
        encryption_context: context,
        kms_key_id: Some(kms.key_arn().to_string()),
    }
}

/// An enclave (data path `dir/data_dir`) whose KMS forwarder reaches `kms` through a relay
/// the test plays the host's proxy with, with [`enclave_globals`] and `extra_globals`.
async fn start_enclave_with_kms(
    dir: &Path,
    pki_dir: &Path,
    kms: &FakeKms,
    data_dir: &str,
    extra_globals: &[&str],
) -> Enclave {
    let (forward, proxy_port) = (free_port(), free_port());
    relay(proxy_port, kms_tls_addr(kms));
    let mut globals = enclave_globals(dir, kms, forward);
    globals.extend(extra_globals.iter().map(|g| g.to_string()));
    start_enclave(
        &dir.join(data_dir),
        pki_dir,
        &[(forward, proxy_port)],
        &globals,
        &[],
    )
    .await
}

/// A TCP pipe from `127.0.0.1:port` to `target`: the host's KMS proxy, played by the test.
fn relay(port: u16, target: String) {
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let target = target.clone();
            tokio::spawn(async move {
                if let Ok(mut out) = tokio::net::TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
            });
        }
    });
}

/// Tampered `CiphertextForRecipient`s (issue 15): the content is AES-CBC without integrity, so
/// a relay that could alter KMS's answers would make the enclave decrypt chosen variants of the
/// plaintext and read the plaintext back from how each one fails.
// (`&mut Vec`: the fake KMS's `Tamper` signature, which a truncation needs.)
#[allow(clippy::ptr_arg)]
fn flip_last_byte(envelope: &mut Vec<u8>) {
    if let Some(b) = envelope.last_mut() {
        *b ^= 0x01;
    }
}
#[allow(clippy::ptr_arg)]
fn flip_early_content_byte(envelope: &mut Vec<u8>) {
    let at = envelope.len().saturating_sub(200);
    envelope[at] ^= 0x80;
}
fn drop_last_block(envelope: &mut Vec<u8>) {
    envelope.truncate(envelope.len().saturating_sub(16));
}

/// The parent instance as the attacker (issue 15, finding 1), playing ensign-host itself against
/// an enclave whose image fixes KMS's endpoint, roots and key:
/// - an Init naming a KMS endpoint (http:// or any other) or another region is refused;
/// - whatever goes wrong once KMS has answered (tampered envelopes, a plaintext that is not a
///   record, a wrong password, a key other than the one its encryption context names) gives
///   the one fixed text, byte for byte, never anything derived from the plaintext;
/// - a batch stops after such a failure (the records still queued are not sent to KMS);
/// - every Decrypt used a fresh RSA key (KMS never saw one twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malicious_host_cannot_choose_kms_or_learn_from_failures() {
    let dir = TempDir::new().unwrap();
    let (pki_dir, _, kms) = pki_and_kms(dir.path(), None).await;
    let e = start_enclave_with_kms(dir.path(), &pki_dir, &kms, "enclave-data", &[]).await;
    let k = key_files(&dir.path().join("keystores"), b"malicious host");
    let other = key_files(&dir.path().join("keystores"), b"malicious host, other key");
    let mut control = ControlClient::connect(&e.control).await.unwrap();

    // The endpoint is the image's: an Init that names one is refused, whatever its scheme.
    for url in [
        format!("http://127.0.0.1:{}", kms.url().rsplit(':').next().unwrap()),
        format!("https://kms.{REGION}.amazonaws.com"),
    ] {
        let mut init = init_request(vec![fake_record(&kms, &k, &k.pubkey)]);
        init.kms_endpoint = Some(EndpointUrl::try_from(url.clone()).unwrap());
        let err = control.init(init).await.unwrap_err();
        assert!(
            err.to_string().contains("fixed by its image"),
            "{url}: {err}"
        );
    }
    let mut init = init_request(vec![fake_record(&kms, &k, &k.pubkey)]);
    init.region = serde_json::from_value(json!("eu-west-1")).unwrap();
    let err = control.init(init).await.unwrap_err();
    assert!(err.to_string().contains("region eu-west-1"), "{err}");
    assert_eq!(
        kms.stats()
            .decrypt_with_recipient
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "nothing reached KMS"
    );
    let report = control
        .init(init_request(vec![fake_record(&kms, &k, &k.pubkey)]))
        .await
        .unwrap();
    assert_eq!(report.loaded, vec![k.pubkey.clone()]);

    // Every failure after KMS answered: the same text.
    let keystore_json: serde_json::Map<String, Value> =
        serde_json::from_slice(&std::fs::read(&k.keystore).unwrap()).unwrap();
    let wrong_password =
        server::key_records::encode_plaintext(&keystore_json, "not the password").unwrap();
    let mut cases: Vec<(&str, EncryptedKeyRecord, Option<Tamper>)> = vec![];
    for (name, tamper) in [
        ("last byte flipped", flip_last_byte as Tamper),
        ("early content byte flipped", flip_early_content_byte),
        ("last block dropped", drop_last_block),
    ] {
        cases.push((name, fake_record(&kms, &k, &k.pubkey), Some(tamper)));
    }
    cases.push((
        "plaintext not a record",
        raw_record(
            &kms,
            "not-json",
            &k.pubkey,
            b"{\"keystore\": {\"secret\": \"abc\"}, \"x\": 1}",
        ),
        None,
    ));
    cases.push((
        "wrong password",
        raw_record(&kms, "wrong-password", &k.pubkey, &wrong_password),
        None,
    ));
    cases.push((
        "context names another key",
        fake_record(&kms, &k, &other.pubkey),
        None,
    ));
    for (name, record, tamper) in cases {
        kms.set_tamper(tamper);
        let report = control
            .add_keys(AddKeysRequest { keys: vec![record] })
            .await
            .unwrap();
        assert!(report.loaded.is_empty(), "{name}: {report:?}");
        assert_eq!(report.failed.len(), 1, "{name}: {report:?}");
        assert_eq!(
            report.failed[0].reason,
            server::enclave::RECORD_UNUSABLE,
            "{name}"
        );
    }
    kms.set_tamper(None);

    // A batch stops at its first unusable record: the records queued behind it are not sent.
    // Every envelope of this batch is tampered with, so whichever answer comes first fails, and
    // it marks the batch stopped before freeing its KMS slot: only the records already holding
    // a slot (the enclave's KMS_CONCURRENCY, 8) can have reached KMS, whatever the timing.
    let before = kms
        .stats()
        .decrypt_with_recipient
        .load(std::sync::atomic::Ordering::Relaxed);
    let keys = (0..41)
        .map(|i| {
            let mut r = fake_record(&kms, &other, &other.pubkey);
            r.id = format!("record-{i}");
            r
        })
        .collect();
    kms.set_tamper(Some(flip_last_byte));
    let report = control.add_keys(AddKeysRequest { keys }).await.unwrap();
    kms.set_tamper(None);
    let sent = kms
        .stats()
        .decrypt_with_recipient
        .load(std::sync::atomic::Ordering::Relaxed)
        - before;
    let unusable = report
        .failed
        .iter()
        .filter(|f| f.reason == server::enclave::RECORD_UNUSABLE)
        .count() as u64;
    assert!(
        report
            .failed
            .iter()
            .all(|f| f.reason == server::enclave::RECORD_UNUSABLE
                || f.reason.starts_with("not attempted")),
        "{report:?}"
    );
    assert!(
        (1..=8).contains(&sent),
        "{sent} of 41 records were sent to KMS: {report:?}"
    );
    assert_eq!(unusable, sent, "{report:?}");
    assert!(report.loaded.is_empty(), "{report:?}");
    assert_eq!(report.failed.len(), 41);

    // KMS saw a new RSA key in every Decrypt.
    let stats = kms.stats();
    assert!(
        stats
            .decrypt_with_recipient
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 7
    );
    assert_eq!(
        stats
            .recipient_key_reused
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    all_logs_free_of(
        &e.proc.lines(),
        &[
            PASSWORD.to_string(),
            hex::encode(k.secret),
            hex::encode(other.secret),
            "abc".into(),
        ],
    );
}

/// Findings 2 (issue 15): the data port requires a client certificate (the parent instance can
/// connect to it), and an enclave signs no voluntary exit unless its image says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enclave_requires_client_certificates_and_refuses_exits() {
    let dir = TempDir::new().unwrap();
    let (pki_dir, _, kms) = pki_and_kms(dir.path(), None).await;
    let k = key_files(&dir.path().join("keystores"), b"client certificates");
    for allow_exits in [false, true] {
        let extra: &[&str] = if allow_exits {
            &["--enclave-allow-voluntary-exits=true"]
        } else {
            &[]
        };
        let mut e = start_enclave_with_kms(
            dir.path(),
            &pki_dir,
            &kms,
            &format!("enclave-data-{allow_exits}"),
            extra,
        )
        .await;
        let mut control = ControlClient::connect(&e.control).await.unwrap();
        let report = control
            .init(init_request(vec![fake_record(&kms, &k, &k.pubkey)]))
            .await
            .unwrap();
        assert_eq!(report.loaded, vec![k.pubkey.clone()]);

        // Without a certificate: no TLS session, so no request at all (not even /upcheck).
        let anonymous = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .build()
            .unwrap();
        let refused = anonymous.get(format!("{}/upcheck", e.base)).send().await;
        assert!(refused.is_err(), "{refused:?}");
        let client = pinned_client(&certificate(&e.base).await);
        assert_eq!(
            get(&client, &format!("{}/upcheck", e.base)).await.status,
            200
        );

        let r = sign(&client, &e.base, &k.pubkey, &voluntary_exit(300_000, 7)).await;
        if allow_exits {
            assert_eq!(r.status, 200, "{r:?}");
        } else {
            assert_eq!(r.status, 403, "{r:?}");
            assert!(r.body.contains("voluntary exits"), "{r:?}");
        }
        // Everything else signs as ever.
        let r = sign(&client, &e.base, &k.pubkey, &attestation(1, 2, 1)).await;
        assert_eq!(r.status, 200, "{r:?}");
        let status = e.proc.terminate();
        assert!(status.success(), "{status}\n{}", e.proc.tail());
    }
}

/// What the production `ensign` (the enclave image's) refuses to start with in enclave mode
/// (issue 15), each with exit code 2 and a message naming the option: no client
/// authentication, every client accepted, no pinned KMS key or region, a KMS endpoint that is
/// not https://, a malformed key ARN, SQLite (history lost with the enclave's memory),
/// PostgreSQL without verify-full.
#[test]
fn enclave_mode_refuses_an_unsafe_configuration() {
    let dir = TempDir::new().unwrap();
    let known = known_clients_file(dir.path());
    let arn = "arn:aws:kms:us-east-1:111122223333:key/00000000-1111-2222-3333-444444444444";
    let base = |extra: &[&str], eth2: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "--enclave-mode=true",
            "--enclave-control-endpoint",
            "tcp:127.0.0.1:0",
            "--enclave-data-endpoint",
            "tcp:127.0.0.1:0",
            "--data-path",
        ]
        .map(String::from)
        .to_vec();
        a.push(dir.path().display().to_string());
        a.extend(extra.iter().map(|s| s.to_string()));
        a.push("eth2".into());
        a.extend(eth2.iter().map(|s| s.to_string()));
        a
    };
    let known = known.display().to_string();
    let auth = ["--tls-known-clients-file", known.as_str()];
    let pg = "postgresql://postgres@127.0.0.1:5432/test";
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            base(&["--enclave-kms-key-arn", arn], &[]),
            "requires client certificates",
        ),
        (
            base(
                &["--enclave-kms-key-arn", arn, "--tls-allow-any-client=true"],
                &[],
            ),
            "requires client certificates",
        ),
        (
            base(
                &[
                    &auth[..],
                    &["--tls-allow-any-client=true", "--enclave-kms-key-arn", arn],
                ]
                .concat(),
                &[],
            ),
            "--tls-allow-any-client",
        ),
        (base(&auth, &[]), "--enclave-kms-key-arn"),
        (
            base(
                &[&auth[..], &["--enclave-kms-key-arn", "alias/ensign"]].concat(),
                &[],
            ),
            "not an ARN",
        ),
        (
            base(
                &[
                    &auth[..],
                    &[
                        "--enclave-kms-key-arn",
                        arn,
                        "--enclave-kms-endpoint",
                        "http://kms.us-east-1.amazonaws.com",
                    ],
                ]
                .concat(),
                &[],
            ),
            "must be https://",
        ),
        (
            base(
                &[
                    &auth[..],
                    &[
                        "--enclave-kms-key-arn",
                        arn,
                        "--enclave-kms-region",
                        "eu-west-1",
                    ],
                ]
                .concat(),
                &[],
            ),
            "differs from the region",
        ),
        (
            base(&[&auth[..], &["--enclave-kms-key-arn", arn]].concat(), &[]),
            "history is lost when the enclave restarts",
        ),
        (
            base(
                &[&auth[..], &["--enclave-kms-key-arn", arn]].concat(),
                &["--slashing-protection-db-url", pg],
            ),
            "database is not authenticated",
        ),
    ];
    for (args, expected) in cases {
        let (code, stderr) = tests::run_binary(&args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{args:?}: expected `{expected}` in {stderr}"
        );
    }
    // Past all of these, the production build stops only at the missing Nitro Secure Module.
    let (code, stderr) = tests::run_binary(&base(
        &[
            &auth[..],
            &[
                "--enclave-kms-key-arn",
                arn,
                "--enclave-development-mode=true",
            ],
        ]
        .concat(),
        &[],
    ));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("/dev/nsm"), "{stderr}");
}

/// A KMS stand-in of the parent instance's choosing (issue 15, finding 1): the host relays the
/// enclave's KMS connection to a server whose certificate does not chain to the image's roots.
/// The enclave's TLS handshake fails, so the stand-in receives no request (no attestation
/// document, no ciphertext to replay) and Init is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kms_outside_the_image_roots_gets_nothing() {
    let dir = TempDir::new().unwrap();
    let (pki_dir, _, kms) = pki_and_kms(dir.path(), None).await;
    // The image trusts another CA than the one that issued this KMS's certificate.
    let other_ca = {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().pem()
    };
    std::fs::write(dir.path().join("kms-ca.pem"), other_ca).unwrap();
    let e = start_enclave_with_kms(dir.path(), &pki_dir, &kms, "enclave-data", &[]).await;
    let k = key_files(&dir.path().join("keystores"), b"untrusted kms");
    let mut control = ControlClient::connect(&e.control).await.unwrap();
    let err = control
        .init(init_request(vec![fake_record(&kms, &k, &k.pubkey)]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("KMS request failed"), "{err}");
    let stats = kms.stats();
    for (what, n) in [
        ("Recipient decrypts", &stats.decrypt_with_recipient),
        ("plain decrypts", &stats.decrypt_plain),
        ("denials", &stats.denied),
    ] {
        assert_eq!(n.load(std::sync::atomic::Ordering::Relaxed), 0, "{what}");
    }
}

/// The image names the database user (issue 15, finding 3): credentials the parent instance
/// sends for another user, in Init or as a rotation, are refused before anything is opened, so
/// the host cannot move the enclave to tables another role sees; credentials for the named user
/// are used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enclave_refuses_database_credentials_of_another_user() {
    let Some(schema) = tests::PgSchema::new("enclave_refuses_database_credentials_of_another_user")
    else {
        return;
    };
    let dir = TempDir::new().unwrap();
    let (pki_dir, _, kms) = pki_and_kms(dir.path(), None).await;
    let (pg_forward, kms_forward) = (free_port(), free_port());
    let kms_port = kms_tls_port(&kms);
    let url = schema.url_via(Some(&format!("127.0.0.1:{pg_forward}")));
    assert!(url.starts_with("postgresql://postgres@"), "{url}");
    let e = start_enclave(
        &dir.path().join("enclave-data"),
        &pki_dir,
        &[(pg_forward, 5432), (kms_forward, kms_port)],
        &enclave_globals(dir.path(), &kms, kms_forward),
        &["--slashing-protection-db-url".to_string(), url],
    )
    .await;
    let k = key_files(&dir.path().join("keystores"), b"pinned database user");
    let credentials = |user: &str| enclave_bridge::control::DatabaseCredentials {
        username: user.to_string(),
        password: enclave_bridge::control::DatabasePassword::Plain(SecretString::new("any")),
    };
    let mut control = ControlClient::connect(&e.control).await.unwrap();
    let mut init = init_request(vec![fake_record(&kms, &k, &k.pubkey)]);
    init.database = Some(credentials("someone_else"));
    let err = control.init(init).await.unwrap_err();
    assert!(
        err.to_string().contains("user someone_else")
            && err.to_string().contains("names user postgres"),
        "{err}"
    );
    let mut init = init_request(vec![fake_record(&kms, &k, &k.pubkey)]);
    init.database = Some(credentials("postgres"));
    let report = control.init(init).await.unwrap();
    assert_eq!(report.loaded, vec![k.pubkey.clone()]);
    let err = control
        .refresh_database_credentials(credentials("someone_else"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("names user postgres"), "{err}");
    // Still on the named user's store: signing works.
    let client = pinned_client(&certificate(&e.base).await);
    let r = sign(&client, &e.base, &k.pubkey, &attestation(1, 2, 1)).await;
    assert_eq!(r.status, 200, "{r:?}");
}

/// Issue 15, finding 3: the database password is the enclave's alone. `ensign database
/// provision` (the administrator) migrates a schema, makes a least-privilege role with a random
/// password and writes it KMS-encrypted for the image; an enclave in production configuration
/// (no development mode: client certificates, `verify-full` to the database by name) refuses a
/// password in clear from the host and one bound to another purpose, decrypts the provisioned
/// one through attested KMS, and signs with the role's sessions in the named schema. A tampered
/// KMS answer gets one fixed text. (The test server trusts local connections, so the password
/// itself is not checked by PostgreSQL here; which role holds the sessions is.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_password_reaches_only_the_enclave() {
    let test = "the_database_password_reaches_only_the_enclave";
    let Some(schema) = tests::PgSchema::new(test) else {
        return;
    };
    let cert_file = pg_rows("SHOW ssl_cert_file".into()).await[0].clone();
    if pg_rows("SHOW ssl".into()).await[0] != "on" {
        eprintln!("NOT RUN: {test}: the PostgreSQL server has ssl=off (verify-full is needed)");
        return;
    }
    let role = format!("{}_signer", schema.name);
    let _roles = PgRoles(vec![role.clone()]);
    let dir = TempDir::new().unwrap();
    let (pki_dir, _, kms) = pki_and_kms(dir.path(), None).await;

    // The administrator provisions (the fake KMS's plain endpoint stands in for the real one).
    let document = dir.path().join("db-secret.json");
    let provision = |extra: Vec<String>| {
        let mut args: Vec<String> = [
            "database",
            "provision",
            "--admin-db-url",
            &tests::pg_base_url(),
            "--schema",
            &schema.name,
            "--role",
            &role,
            "--kms-key-id",
            kms.key_arn(),
            "--region",
            REGION,
            "--endpoint-url",
            kms.url(),
        ]
        .map(String::from)
        .to_vec();
        args.extend(extra);
        run_ensign(
            args,
            &[
                ("AWS_ACCESS_KEY_ID", "testing"),
                ("AWS_SECRET_ACCESS_KEY", "testing"),
            ],
        )
    };
    let (code, out) = provision(vec!["--out".into(), document.display().to_string()]).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("role {role} has a new password")),
        "{out}"
    );
    let doc: Value = serde_json::from_slice(&std::fs::read(&document).unwrap()).unwrap();
    assert_eq!(doc["username"], role.as_str());
    assert_eq!(
        doc["encrypted_password"]["encryption_context"],
        json!({"ensign-purpose": "slashing-db-password", "ensign-db-user": role})
    );
    let blob: enclave_bridge::control::EncryptedBlob =
        serde_json::from_value(doc["encrypted_password"].clone()).unwrap();
    // What the role may do: no DELETE (slashing/tests/least_privilege.rs has the rest).
    let denied = pg_rows(format!(
        "SELECT has_table_privilege('{role}', '{}.signed_attestations', 'DELETE')::TEXT",
        schema.name
    ))
    .await;
    assert_eq!(denied, vec!["false".to_string()]);
    // A bad name is refused before anything happens.
    let (code, out) = run_ensign(
        [
            "database",
            "provision",
            "--admin-db-url",
            "postgresql://x@127.0.0.1:1/x",
            "--role",
            "Bad-Name",
            "--kms-key-id",
            "k",
            "--out",
            "/nonexistent",
        ]
        .map(String::from)
        .to_vec(),
        &[],
    )
    .await;
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("not a plain PostgreSQL name"), "{out}");

    // The enclave, configured as an image would be: no development mode.
    let (pg_forward, kms_forward) = (free_port(), free_port());
    let kms_port = kms_tls_port(&kms);
    let globals: Vec<String> = enclave_globals(dir.path(), &kms, kms_forward)
        .into_iter()
        .filter(|a| a != "--enclave-development-mode=true")
        .collect();
    let url = format!(
        "postgresql://{role}@localhost:{pg_forward}/test?hostaddr=127.0.0.1&sslmode=verify-full&sslrootcert={cert_file}"
    );
    let e = start_enclave(
        &dir.path().join("enclave-data"),
        &pki_dir,
        &[(pg_forward, 5432), (kms_forward, kms_port)],
        &globals,
        &[
            "--slashing-protection-db-url".to_string(),
            url,
            "--slashing-protection-db-schema".to_string(),
            schema.name.clone(),
        ],
    )
    .await;
    let k = key_files(&dir.path().join("keystores"), b"provisioned database role");
    let with = |password: enclave_bridge::control::DatabasePassword| {
        let mut init = init_request(vec![fake_record(&kms, &k, &k.pubkey)]);
        init.database = Some(enclave_bridge::control::DatabaseCredentials {
            username: role.clone(),
            password,
        });
        init
    };
    use enclave_bridge::control::DatabasePassword;
    let mut control = ControlClient::connect(&e.control).await.unwrap();
    // In clear from the host: refused, nothing opened.
    let err = control
        .init(with(DatabasePassword::Plain(SecretString::new(
            "a-password-the-host-knows",
        ))))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("arrived in clear"), "{err}");
    assert_eq!(sessions_of(&role).await, 0);
    // A ciphertext bound to another purpose (a key record's context): refused before KMS.
    let mut other = blob.clone();
    other.encryption_context = k_context(&k);
    let before = kms
        .stats()
        .decrypt_with_recipient
        .load(std::sync::atomic::Ordering::SeqCst);
    let err = control
        .init(with(DatabasePassword::Encrypted(Box::new(other))))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("encryption context must be"),
        "{err}"
    );
    assert_eq!(
        kms.stats()
            .decrypt_with_recipient
            .load(std::sync::atomic::Ordering::SeqCst),
        before
    );
    // A tampered KMS answer: the fixed text, nothing derived from the plaintext.
    kms.set_tamper(Some(flip_last_byte));
    let err = control
        .init(with(DatabasePassword::Encrypted(Box::new(blob.clone()))))
        .await
        .unwrap_err();
    kms.set_tamper(None);
    assert!(
        err.to_string()
            .contains("the database password could not be used once KMS had answered"),
        "{err}"
    );
    // The provisioned ciphertext: decrypted inside, the role's sessions sign.
    let report = control
        .init(with(DatabasePassword::Encrypted(Box::new(blob.clone()))))
        .await
        .unwrap();
    assert_eq!(report.loaded, vec![k.pubkey.clone()]);
    let client = pinned_client(&certificate(&e.base).await);
    let r = sign(&client, &e.base, &k.pubkey, &attestation(1, 2, 1)).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(sessions_of(&role).await > 0);
    let rows = pg_rows(format!(
        "SELECT count(*) FROM {}.signed_attestations",
        schema.name
    ))
    .await;
    assert_eq!(rows, vec!["1".to_string()]);
    // A rotation: provisioning again, the new ciphertext delivered by refresh.
    let (code, out) = provision(vec!["--out".into(), document.display().to_string()]).await;
    assert_eq!(code, 0, "{out}");
    let doc: Value = serde_json::from_slice(&std::fs::read(&document).unwrap()).unwrap();
    let rotated: enclave_bridge::control::EncryptedBlob =
        serde_json::from_value(doc["encrypted_password"].clone()).unwrap();
    assert_ne!(rotated.ciphertext, blob.ciphertext);
    control
        .refresh_database_credentials(enclave_bridge::control::DatabaseCredentials {
            username: role.clone(),
            password: DatabasePassword::Encrypted(Box::new(rotated)),
        })
        .await
        .unwrap();
    let r = sign(&client, &e.base, &k.pubkey, &attestation(2, 3, 1)).await;
    assert_eq!(r.status, 200, "{r:?}");
}

/// A key record's encryption context (`ensign-pubkey`), to try on a database password.
fn k_context(k: &KeyFiles) -> std::collections::BTreeMap<String, String> {
    std::collections::BTreeMap::from([("ensign-pubkey".to_string(), k.pubkey.clone())])
}
