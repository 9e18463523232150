//! End-to-end harness for ensign.
//!
//! Purpose: start a signer the way an operator would — same command line — either in-process
//! (port 0, fresh data directory per test) or as the release binary, and drive both through
//! the same request helpers, so every end-to-end test can run against the shipped binary.
//!
//! Invariants: no fixed ports (port 0, the bound port read back), no sleeps where readiness can
//! be awaited (the binary's "listening on" line, then `/upcheck`), every signer gets its own
//! temporary directory, removed when the handle drops.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use clap_free::parse_cli;
use serde_json::Value;
use tempfile::TempDir;

/// Request bodies shared by the end-to-end tests (mainnet, Electra fork).
pub mod body {
    use serde_json::{json, Value};

    /// Mainnet's genesis validators root.
    pub const GVR: &str = "0x4b363db94e286120d76eb905340fdd4e54bfe9f06bf33ff6cf5ad27f511bfe95";

    /// A mainnet Electra `fork_info`.
    pub fn fork_info() -> Value {
        json!({
            "fork": {"previous_version": "0x04000000", "current_version": "0x05000000", "epoch": "364032"},
            "genesis_validators_root": GVR,
        })
    }

    fn root(b: u64) -> String {
        format!("0x{b:064x}")
    }

    /// An ATTESTATION request; `root` varies the beacon block root (and so the signing root).
    pub fn attestation(source: u64, target: u64, root_n: u64) -> Value {
        json!({
            "type": "ATTESTATION",
            "fork_info": fork_info(),
            "attestation": {
                "slot": (target * 32).to_string(),
                "index": "0",
                "beacon_block_root": root(root_n),
                "source": {"epoch": source.to_string(), "root": root(1)},
                "target": {"epoch": target.to_string(), "root": root(2)},
            }
        })
    }

    /// A BLOCK_V2 (Electra header) request; `root_n` varies the parent root.
    pub fn block_header(slot: u64, root_n: u64) -> Value {
        json!({
            "type": "BLOCK_V2",
            "fork_info": fork_info(),
            "beacon_block": {
                "version": "ELECTRA",
                "block_header": {
                    "slot": slot.to_string(),
                    "proposer_index": "5",
                    "parent_root": root(root_n),
                    "state_root": root(3),
                    "body_root": root(4),
                }
            }
        })
    }

    /// The signing root ensign computes for a request on mainnet (via `api-spec`).
    pub fn signing_root(request: &Value) -> [u8; 32] {
        let network = api_spec::network::Network::by_name("mainnet").unwrap();
        let req =
            api_spec::sign::SignRequest::parse(&serde_json::to_vec(request).unwrap()).unwrap();
        req.signable(&network).unwrap().signing_root.0
    }
}

/// A new symmetric KMS key (on a stand-in such as moto); its id.
pub async fn create_kms_key(kms: &aws_sdk_kms::Client) -> String {
    kms.create_key()
        .send()
        .await
        .expect("CreateKey")
        .key_metadata()
        .expect("key metadata")
        .key_id()
        .to_string()
}

/// A response, reduced to what tests assert on.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

impl Resp {
    /// Reads a whole response (a body that cannot be read counts as empty).
    pub async fn read(r: reqwest::Response) -> Resp {
        let status = r.status().as_u16();
        let content_type = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = r.text().await.unwrap_or_default();
        Resp {
            status,
            content_type,
            body,
        }
    }

    /// The body as JSON (panics with the body when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// A deterministic BLS secret key from a seed byte string (EIP-2333 `KeyGen`, test use only).
pub fn test_secret(seed: &[u8]) -> [u8; 32] {
    let mut ikm = [0u8; 32];
    for (i, b) in seed.iter().enumerate() {
        ikm[i % 32] ^= b.wrapping_add(i as u8);
    }
    blst::min_pk::SecretKey::key_gen(&ikm, &[])
        .expect("32-byte ikm")
        .to_bytes()
}

/// The compressed public key of a secret key, as lowercase 0x hex.
pub fn pubkey_hex(secret: &[u8; 32]) -> String {
    let sk = blst::min_pk::SecretKey::from_bytes(secret).expect("valid secret");
    format!("0x{}", hex::encode(sk.sk_to_pk().compress()))
}

/// How to run the signer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runner {
    /// `server::start` inside the test process.
    InProcess,
    /// The release binary as a child process.
    Binary,
}

/// One scenario, an `async fn(Runner)`, as two tests: `$in_process` runs it against
/// [`Runner::InProcess`], `$release_binary` against [`Runner::Binary`]. The names are spelled
/// out (not derived) so that they stay greppable and filterable as before.
#[macro_export]
macro_rules! on_both_runners {
    ($scenario:ident: $in_process:ident, $release_binary:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $in_process() {
            $scenario($crate::Runner::InProcess).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $release_binary() {
            $scenario($crate::Runner::Binary).await;
        }
    };
}

/// Builds a signer's command line and files.
pub struct SignerBuilder {
    network: String,
    raw_keys: Vec<[u8; 32]>,
    key_configs: Vec<(String, String)>,
    keystores: Vec<(String, String, String)>,
    global_args: Vec<String>,
    eth2_args: Vec<String>,
    data_dir: Option<PathBuf>,
    /// The client of every request, when not a default one (see [`SignerBuilder::client`]).
    client: Option<reqwest::Client>,
    /// The signer serves TLS (see [`SignerBuilder::https`]).
    https: bool,
    /// The release binary gets its options the Web3Signer way (see
    /// [`SignerBuilder::as_web3signer_env`], [`SignerBuilder::as_web3signer_config_file`]).
    web3signer: Option<Web3SignerSource>,
}

/// How a Web3Signer deployment would give the release binary its options.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Web3SignerSource {
    Env,
    ConfigFile,
}

impl Default for SignerBuilder {
    fn default() -> Self {
        SignerBuilder {
            network: "mainnet".into(),
            raw_keys: vec![],
            key_configs: vec![],
            keystores: vec![],
            global_args: vec![],
            eth2_args: vec![],
            data_dir: None,
            client: None,
            https: false,
            web3signer: None,
        }
    }
}

impl SignerBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// `--network`.
    pub fn network(mut self, n: &str) -> Self {
        self.network = n.into();
        self
    }

    /// Keys written as `file-raw` key configuration files in `--key-store-path`.
    pub fn raw_keys(mut self, keys: impl IntoIterator<Item = [u8; 32]>) -> Self {
        self.raw_keys.extend(keys);
        self
    }

    /// A key configuration file (name, YAML) written into `--key-store-path`.
    pub fn key_config(mut self, name: &str, yaml: &str) -> Self {
        self.key_configs.push((name.into(), yaml.into()));
        self
    }

    /// An EIP-2335 keystore (file name stem, keystore JSON, password) for `--keystores-path`.
    pub fn keystore(mut self, stem: &str, json: String, password: &str) -> Self {
        self.keystores.push((stem.into(), json, password.into()));
        self
    }

    /// Extra global options.
    pub fn global_arg(mut self, a: &str) -> Self {
        self.global_args.push(a.into());
        self
    }

    /// Extra eth2 options.
    pub fn eth2_arg(mut self, a: &str) -> Self {
        self.eth2_args.push(a.into());
        self
    }

    /// Use this data directory instead of a fresh one (to restart on the same database).
    pub fn data_dir(mut self, p: &Path) -> Self {
        self.data_dir = Some(p.to_path_buf());
        self
    }

    /// The signer serves HTTPS (its `--tls-*` options given with [`global_arg`](Self::global_arg)):
    /// the base URL becomes `https://…` and every request, the readiness probe included, goes
    /// through `client` (which trusts the test CA and, when the signer requires it, presents a
    /// client certificate).
    pub fn https(mut self, client: reqwest::Client) -> Self {
        self.https = true;
        self.client(client)
    }

    /// Every request, the readiness probe included, goes through `client` instead of a default
    /// one (e.g. one that keeps no idle connection, for tests that count connections).
    pub fn client(mut self, client: reqwest::Client) -> Self {
        self.client = Some(client);
        self
    }

    /// Started as the release binary, the signer gets every option as a Web3Signer environment
    /// variable (`WEB3SIGNER_<OPTION>`, `WEB3SIGNER_ETH2_<OPTION>`) and nothing on its command
    /// line but `eth2`: a Web3Signer deployment's environment, unchanged (issue 17).
    pub fn as_web3signer_env(mut self) -> Self {
        self.web3signer = Some(Web3SignerSource::Env);
        self
    }

    /// Started as the release binary, the signer gets every option in a Web3Signer YAML
    /// configuration file (`name: value`, `eth2.name: value`) and nothing on its command line
    /// but `--config-file FILE eth2` (issue 17).
    pub fn as_web3signer_config_file(mut self) -> Self {
        self.web3signer = Some(Web3SignerSource::ConfigFile);
        self
    }

    fn prepare(&self, dir: &Path) -> Vec<String> {
        let keys_dir = dir.join("keys");
        std::fs::create_dir_all(&keys_dir).unwrap();
        for (i, k) in self.raw_keys.iter().enumerate() {
            let yaml = format!(
                "type: file-raw\nkeyType: BLS\nprivateKey: \"0x{}\"\n",
                hex::encode(k)
            );
            std::fs::write(keys_dir.join(format!("key-{i}.yaml")), yaml).unwrap();
        }
        for (name, yaml) in &self.key_configs {
            std::fs::write(keys_dir.join(name), yaml).unwrap();
        }
        let data = self.data_dir.clone().unwrap_or_else(|| dir.join("data"));
        let mut args: Vec<String> = vec![
            "ensign".into(),
            "--http-listen-port".into(),
            "0".into(),
            "--key-store-path".into(),
            keys_dir.display().to_string(),
            "--data-path".into(),
            data.display().to_string(),
        ];
        args.extend(self.global_args.iter().cloned());
        args.push("eth2".into());
        args.push("--network".into());
        args.push(self.network.clone());
        if !self.keystores.is_empty() {
            let ks = dir.join("keystores");
            let pw = dir.join("passwords");
            std::fs::create_dir_all(&ks).unwrap();
            std::fs::create_dir_all(&pw).unwrap();
            for (stem, json, password) in &self.keystores {
                std::fs::write(ks.join(format!("{stem}.json")), json).unwrap();
                std::fs::write(pw.join(format!("{stem}.txt")), password).unwrap();
            }
            args.extend([
                "--keystores-path".into(),
                ks.display().to_string(),
                "--keystores-passwords-path".into(),
                pw.display().to_string(),
            ]);
        }
        args.extend(self.eth2_args.iter().cloned());
        args
    }

    /// Starts the signer with `runner` and waits until `/upcheck` answers.
    pub async fn start(self, runner: Runner) -> TestSigner {
        self.try_start(runner)
            .await
            .unwrap_or_else(|e| panic!("signer did not start: {e}"))
    }

    /// Like [`start`](Self::start), but a start-up failure is returned (its message, or the
    /// binary's stderr) instead of panicking.
    pub async fn try_start(self, runner: Runner) -> Result<TestSigner, String> {
        let dir = TempDir::new().unwrap();
        let args = self.prepare(dir.path());
        let scheme = if self.https { "https" } else { "http" };
        let log = Arc::new(Mutex::new(Vec::new()));
        let (base, metrics_base, inner) = match runner {
            Runner::InProcess => {
                let (global, eth2) = parse_cli(&args);
                let config = server::Config::from_cli(&global, &eth2).map_err(|e| e.to_string())?;
                let running = server::start(config).await.map_err(|e| e.to_string())?;
                let metrics = running.metrics_addr.map(|a| format!("http://{a}"));
                (
                    format!("{scheme}://{}", running.addr),
                    metrics,
                    Inner::InProcess(Some(running)),
                )
            }
            Runner::Binary => {
                let (args, env) = match self.web3signer {
                    None => (args[1..].to_vec(), vec![]),
                    Some(Web3SignerSource::Env) => web3signer_env(&args[1..]),
                    Some(Web3SignerSource::ConfigFile) => {
                        let (rest, options) = web3signer_options(&args[1..]);
                        let yaml: String = options
                            .iter()
                            .map(|(eth2, name, value)| {
                                // A JSON string is a YAML double-quoted scalar.
                                let key = if *eth2 {
                                    format!("eth2.{name}")
                                } else {
                                    name.clone()
                                };
                                format!("{key}: {}\n", serde_json::to_string(value).unwrap())
                            })
                            .collect();
                        let file = dir.path().join("web3signer-config.yaml");
                        std::fs::write(&file, yaml).unwrap();
                        let mut args =
                            vec!["--config-file".to_string(), file.display().to_string()];
                        args.extend(rest);
                        (args, vec![])
                    }
                };
                let (child, addr, metrics) = spawn_binary_env(&args, &env, log.clone()).await?;
                (
                    format!("{scheme}://{addr}"),
                    metrics.map(|m| format!("http://{m}")),
                    Inner::Process(child),
                )
            }
        };
        let signer = TestSigner {
            base,
            metrics_base,
            client: self.client.unwrap_or_default(),
            inner,
            log,
            _dir: dir,
        };
        signer.await_ready().await;
        Ok(signer)
    }

    /// The argument list (without the program name) this builder runs, with its files written
    /// under `dir`; for driving `ensign eth2 import/export` with the same options.
    pub fn args_in(&self, dir: &Path) -> Vec<String> {
        self.prepare(dir)[1..].to_vec()
    }
}

mod clap_free {
    use clap::Parser;
    use server::cli::{Cli, Eth2Options, GlobalOptions, Mode};

    /// The same parser the binary uses.
    pub fn parse_cli(args: &[String]) -> (GlobalOptions, Eth2Options) {
        let cli = Cli::try_parse_from(args).unwrap_or_else(|e| panic!("bad test arguments: {e}"));
        let Mode::Eth2(eth2) = cli.mode else {
            panic!("test arguments must select the eth2 mode")
        };
        (cli.global, eth2)
    }
}

/// This test's target directory (`<target>/<profile>/deps/<test-exe>`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

/// The release binary, as production builds it (default features: no test attestor):
/// `$ENSIGN_BIN`, else `release/ensign` in this test's target directory.
pub fn binary_path() -> PathBuf {
    match std::env::var("ENSIGN_BIN") {
        Ok(p) => PathBuf::from(p),
        Err(_) => target_dir().join("release").join("ensign"),
    }
}

/// The release build with the INSECURE test attestor, for enclave mode off-enclave
/// (`--enclave-attestation insecure-test:<dir>`): `$ENSIGN_TEST_ATTESTATION_BIN`, else
/// `release/ensign-insecure-test` in this test's target directory (scripts/test builds it).
/// Panics, saying how to build it, when it is not there.
pub fn test_attestation_binary_path() -> PathBuf {
    let bin = match std::env::var("ENSIGN_TEST_ATTESTATION_BIN") {
        Ok(p) => PathBuf::from(p),
        Err(_) => target_dir().join("release").join("ensign-insecure-test"),
    };
    assert!(
        bin.is_file(),
        "{} does not exist: build it with `cargo build --release -p server --features \
         insecure-test-attestation --bin ensign-insecure-test` (scripts/test does), or set \
         ENSIGN_TEST_ATTESTATION_BIN",
        bin.display()
    );
    bin
}

/// `ensign-host` (crate `host`), the parent-instance binary of enclave mode:
/// `$ENSIGN_HOST_BIN`, else `release/ensign-host` or `debug/ensign-host` in this test's target
/// directory, else built once now (`cargo build --release -p host --bin ensign-host`, in the
/// same target directory). `Err` says why when it can be neither found
/// nor built; callers skip with a "not run" notice then, unless `ENSIGN_REQUIRE_ENSIGN_HOST`
/// is set (CI), in which case they fail.
pub fn ensign_host_path() -> Result<PathBuf, String> {
    static FOUND: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    FOUND
        .get_or_init(|| {
            if let Ok(p) = std::env::var("ENSIGN_HOST_BIN") {
                return Ok(PathBuf::from(p));
            }
            let target = binary_path()
                .parent()
                .and_then(Path::parent)
                .map(Path::to_path_buf)
                .ok_or("no target directory")?;
            for profile in ["release", "debug"] {
                let p = target.join(profile).join("ensign-host");
                if p.is_file() {
                    return Ok(p);
                }
            }
            // Build it: it is this workspace's own binary, not an outside tool.
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
            eprintln!(
                "ensign-host not found under {}: building it",
                target.display()
            );
            let status = Command::new(cargo)
                .args(["build", "--release", "-p", "host", "--bin", "ensign-host"])
                .env("CARGO_TARGET_DIR", &target)
                .current_dir(&workspace)
                .stdin(Stdio::null())
                .status()
                .map_err(|e| format!("cannot run cargo to build ensign-host: {e}"))?;
            let built = target.join("release").join("ensign-host");
            if status.success() && built.is_file() {
                Ok(built)
            } else {
                Err(format!(
                    "ensign-host could not be built ({status}); build it with `cargo build \
                     --release -p host --bin ensign-host` or set ENSIGN_HOST_BIN"
                ))
            }
        })
        .clone()
}

/// Runs the binary with `args` and returns it with the address it logged.
pub async fn spawn_binary(args: &[String]) -> Result<(Child, String, Option<String>), String> {
    spawn_binary_logged(args, Arc::new(Mutex::new(Vec::new()))).await
}

/// [`spawn_binary`], keeping every line the binary writes to stdout (its log) in `log`.
pub async fn spawn_binary_logged(
    args: &[String],
    log: Arc<Mutex<Vec<String>>>,
) -> Result<(Child, String, Option<String>), String> {
    spawn_binary_env(args, &[], log).await
}

/// `ensign [global options] eth2 [eth2 options]` as Web3Signer's environment would give the same
/// options: `(["eth2"], [(WEB3SIGNER_…, value)])`.
pub fn web3signer_env(args: &[String]) -> (Vec<String>, Vec<(String, String)>) {
    let (rest, options) = web3signer_options(args);
    let env = options
        .into_iter()
        .map(|(eth2, name, value)| {
            let scope = if eth2 {
                "WEB3SIGNER_ETH2_"
            } else {
                "WEB3SIGNER_"
            };
            (
                format!("{scope}{}", name.to_ascii_uppercase().replace('-', "_")),
                value,
            )
        })
        .collect();
    (rest, env)
}

/// `ensign [global options] eth2 [eth2 options]` taken apart: `(["eth2"], [(is an eth2 option,
/// long name, value)])`. A flag without a value is `true`.
pub fn web3signer_options(args: &[String]) -> (Vec<String>, Vec<(bool, String, String)>) {
    let mut options = Vec::new();
    let mut eth2 = false;
    let mut rest = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        let Some(option) = a.strip_prefix("--") else {
            assert_eq!(
                a, "eth2",
                "only the eth2 mode's options can be given another way"
            );
            eth2 = true;
            rest.push(a.clone());
            continue;
        };
        let (name, value) = match option.split_once('=') {
            Some((n, v)) => (n.to_string(), v.to_string()),
            None if args
                .get(i)
                .is_some_and(|v| !v.starts_with("--") && v != "eth2") =>
            {
                i += 1;
                (option.to_string(), args[i - 1].clone())
            }
            None => (option.to_string(), "true".to_string()),
        };
        options.push((eth2, name, value));
    }
    (rest, options)
}

/// [`spawn_binary_logged`] with extra environment variables.
pub async fn spawn_binary_env(
    args: &[String],
    env: &[(String, String)],
    log: Arc<Mutex<Vec<String>>>,
) -> Result<(Child, String, Option<String>), String> {
    let bin = binary_path();
    if !bin.exists() {
        return Err(format!(
            "{} does not exist: build it with `cargo build --release -p server` (or set ENSIGN_BIN)",
            bin.display()
        ));
    }
    let mut child = Command::new(&bin)
        .args(args)
        .env("NO_COLOR", "1")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    let (tx, rx) = mpsc::channel::<Result<(String, Option<String>), String>>();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let tx2 = tx.clone();
    // Keep draining both pipes for the life of the child so it never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut metrics = None;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // The address ends at a quote (JSON logs) or white space (text logs).
            let after = |marker: &str| {
                line.split(marker).nth(1).map(|rest| {
                    rest.split(|c: char| c == '"' || c.is_whitespace())
                        .next()
                        .unwrap_or("")
                        .to_string()
                })
            };
            if let Some(m) = after("metrics on http://") {
                metrics = Some(m.trim_end_matches("/metrics").to_string());
            }
            // `https://` with TLS (the metrics listener above stays plain HTTP).
            if let Some(addr) =
                after("listening on http://").or_else(|| after("listening on https://"))
            {
                let _ = tx.send(Ok((addr, metrics.clone())));
            }
            if std::env::var_os("ENSIGN_TEST_ECHO").is_some() {
                eprintln!("[ensign] {line}");
            }
            log.lock().unwrap().push(line);
        }
        // EOF: the stderr reader reports the exit, with what ensign said.
    });
    std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[ensign stderr] {line}");
            all.push_str(&line);
            all.push('\n');
        }
        let _ = tx2.send(Err(format!("ensign stderr closed: {all}")));
    });
    let got = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(120)))
        .await
        .map_err(|e| e.to_string())?;
    match got {
        Ok(Ok((addr, metrics))) => Ok((child, addr, metrics)),
        Ok(Err(e)) => {
            let _ = child.kill();
            Err(e)
        }
        Err(_) => {
            let _ = child.kill();
            Err("ensign did not report its address within 120 s".into())
        }
    }
}

enum Inner {
    InProcess(Option<server::Running>),
    Process(Child),
}

/// A running signer and the request helpers that drive it.
pub struct TestSigner {
    pub base: String,
    /// `http://host:port` of the metrics listener, when `--metrics-enabled`.
    pub metrics_base: Option<String>,
    client: reqwest::Client,
    inner: Inner,
    /// Stdout lines of the release binary (empty in process: its logs go to the test's).
    log: Arc<Mutex<Vec<String>>>,
    _dir: TempDir,
}

impl TestSigner {
    /// The log lines the release binary wrote so far (always empty for an in-process signer).
    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    async fn await_ready(&self) {
        for _ in 0..200 {
            if let Ok(r) = self
                .client
                .get(format!("{}/upcheck", self.base))
                .send()
                .await
            {
                if r.status().as_u16() == 200 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("signer at {} never answered /upcheck", self.base);
    }

    /// `host:port` of the signing API (the base URL without its scheme).
    pub fn addr(&self) -> &str {
        self.base
            .split_once("://")
            .map_or(self.base.as_str(), |(_, a)| a)
    }

    /// The signer's temporary directory (`keys/` holds its key config files).
    pub fn dir(&self) -> &Path {
        self._dir.path()
    }

    /// A request builder for anything else (methods, headers).
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, format!("{}{path}", self.base))
    }

    /// Sends a request built with [`request`](Self::request).
    pub async fn send(&self, req: reqwest::RequestBuilder) -> Resp {
        Resp::read(req.send().await.expect("request")).await
    }

    /// GET `path`.
    pub async fn get(&self, path: &str) -> Resp {
        Resp::read(
            self.client
                .get(format!("{}{path}", self.base))
                .send()
                .await
                .expect("GET"),
        )
        .await
    }

    /// GET `path` with a Host header.
    pub async fn get_with_host(&self, path: &str, host: &str) -> Resp {
        let r = self
            .client
            .get(format!("{}{path}", self.base))
            .header("host", host)
            .send()
            .await;
        Resp::read(r.expect("GET")).await
    }

    /// POST raw bytes to the sign endpoint of `identifier`, with an optional Accept header.
    /// Without one, the request goes out with no Accept header at all (as Teku sends it),
    /// which reqwest cannot do: it adds `Accept: */*` by default.
    pub async fn sign_raw(&self, identifier: &str, body: Vec<u8>, accept: Option<&str>) -> Resp {
        let Some(accept) = accept else {
            return self
                .raw_post(&format!("/api/v1/eth2/sign/{identifier}"), "", &body)
                .await;
        };
        let req = self
            .client
            .post(format!("{}/api/v1/eth2/sign/{identifier}", self.base))
            .header("content-type", "application/json")
            .header("accept", accept)
            .body(body);
        Resp::read(req.send().await.expect("POST")).await
    }

    /// POSTs a body of `len` spaces over a raw connection and returns the answer. The server
    /// may answer (413) and close before the body is fully written; what counts is the
    /// response it sent.
    pub async fn post_oversized(&self, path: &str, len: usize) -> Resp {
        self.raw_post(path, "Accept: application/json\r\n", &vec![b' '; len])
            .await
    }

    /// A minimal HTTP/1.1 POST over a fresh connection, with exactly the headers written here
    /// plus `extra_headers` (each ending in CRLF). Body write errors are ignored: a server may
    /// answer before reading the whole body.
    async fn raw_post(&self, path: &str, extra_headers: &str, body: &[u8]) -> Resp {
        self.raw_request("POST", path, extra_headers, body).await
    }

    /// [`raw_post`](Self::raw_post) with any method: for requests reqwest cannot send (no
    /// Accept header) or may fail to read the answer of (a body the server refuses midway).
    pub async fn raw_request(
        &self,
        method: &str,
        path: &str,
        extra_headers: &str,
        body: &[u8],
    ) -> Resp {
        self.raw_exchange(method, path, extra_headers, body, body.len())
            .await
    }

    /// A request over a fresh connection that announces a body of `declared` bytes and sends
    /// none of it, then reads whatever the server answers until it closes the connection.
    pub async fn stalled_request(
        &self,
        method: &str,
        path: &str,
        extra_headers: &str,
        declared: usize,
    ) -> Resp {
        self.raw_exchange(method, path, extra_headers, &[], declared)
            .await
    }

    /// Sends a head announcing `content_length` bytes and then `body`, and reads the answer
    /// until the server closes the connection.
    async fn raw_exchange(
        &self,
        method: &str,
        path: &str,
        extra_headers: &str,
        body: &[u8],
        content_length: usize,
    ) -> Resp {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = self.base.trim_start_matches("http://");
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
             {extra_headers}Content-Length: {content_length}\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.expect("write");
        for chunk in body.chunks(64 * 1024) {
            if stream.write_all(chunk).await.is_err() {
                break;
            }
        }
        let mut raw = Vec::new();
        let _ = stream.read_to_end(&mut raw).await;
        let text = String::from_utf8_lossy(&raw).to_string();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text.as_str(), ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let content_type = head
            .lines()
            .find_map(|l| {
                l.split_once(':')
                    .filter(|(k, _)| k.eq_ignore_ascii_case("content-type"))
            })
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default();
        Resp {
            status,
            content_type,
            body: body.to_string(),
        }
    }

    /// POST a JSON sign request, asking for JSON.
    pub async fn sign(&self, identifier: &str, body: &Value) -> Resp {
        self.sign_raw(
            identifier,
            serde_json::to_vec(body).unwrap(),
            Some("application/json"),
        )
        .await
    }

    /// The signature of a 200 JSON sign response.
    pub async fn signature(&self, identifier: &str, body: &Value) -> String {
        let r = self.sign(identifier, body).await;
        assert_eq!(r.status, 200, "sign failed: {}", r.body);
        r.json()["signature"]
            .as_str()
            .expect("signature field")
            .to_string()
    }

    /// Stops the signer gracefully (SIGTERM for the binary) and waits for it.
    pub async fn stop(mut self) {
        match &mut self.inner {
            Inner::InProcess(r) => {
                if let Some(r) = r.take() {
                    r.stop().await.expect("clean stop");
                }
            }
            Inner::Process(child) => {
                let _ = Command::new("kill")
                    .args(["-TERM", &child.id().to_string()])
                    .status();
                let status = child.wait().expect("wait for ensign");
                // A graceful stop is part of the contract: exit 0, no panic on the way out.
                assert!(status.success(), "ensign did not stop cleanly: {status}");
            }
        }
    }

    /// Kills the binary with SIGKILL (crash tests).
    pub fn kill9(&mut self) {
        if let Inner::Process(child) = &mut self.inner {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for TestSigner {
    fn drop(&mut self) {
        if let Inner::Process(child) = &mut self.inner {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `ensign … export --to file` with `builder`'s options (its files written under `work`), which
/// must succeed; the EIP-3076 document it wrote.
pub fn export_interchange(builder: &SignerBuilder, work: &Path, file: &Path) -> Value {
    let mut args = builder.args_in(work);
    args.extend(["export".into(), "--to".into(), file.display().to_string()]);
    let (code, stderr) = run_binary(&args);
    assert_eq!(code, 0, "{stderr}");
    serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap()
}

/// Runs the binary to completion; returns its exit code and its stderr.
pub fn run_binary(args: &[String]) -> (i32, String) {
    run_binary_env(args, &[])
}

/// [`run_binary`] with extra environment variables.
pub fn run_binary_env(args: &[impl AsRef<std::ffi::OsStr>], env: &[(&str, &str)]) -> (i32, String) {
    let out = Command::new(binary_path())
        .args(args)
        .envs(env.iter().copied())
        .env("NO_COLOR", "1")
        .output()
        .expect("run ensign");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

pub use test_support::pg::{pg_admin, pg_base_url, PgSchema};

/// A loopback TCP proxy to `target` that can be cut (every connection dropped, new ones
/// refused) to simulate a database going away mid-run, or frozen (sockets kept open, nothing
/// forwarded, the kernel still acknowledging) to simulate a network partition that neither side's
/// TCP notices.
pub struct TcpProxy {
    pub addr: String,
    task: tokio::task::JoinHandle<()>,
    conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    gates: Arc<Gates>,
}

/// The proxy's switches: `true` holds the bytes of that direction.
struct Gates {
    /// Client to target.
    up: tokio::sync::watch::Sender<bool>,
    /// Target to client.
    down: tokio::sync::watch::Sender<bool>,
    /// Once the client sends these bytes (delivered), replies are held.
    hold_replies_after: Mutex<Option<Vec<u8>>>,
    /// Connections accepted so far.
    accepted: std::sync::atomic::AtomicUsize,
}

impl Gates {
    /// Before forwarding `chunk` upwards: hold the replies if it carries the armed bytes (so
    /// that not even a quick reply slips through).
    fn sending_up(&self, chunk: &[u8]) {
        let mut armed = self.hold_replies_after.lock().unwrap();
        let hit = armed
            .as_ref()
            .is_some_and(|p| chunk.windows(p.len()).any(|w| w == p.as_slice()));
        if hit {
            *armed = None;
            self.down.send_replace(true);
        }
    }
}

/// Copies `from` to `to` while `gate` is open; what is read while it is closed (bytes, or the
/// end of the stream) waits for it.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut gate: tokio::sync::watch::Receiver<bool>,
    gates: Option<Arc<Gates>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut buf).await.unwrap_or(0);
        if let Some(g) = &gates {
            g.sending_up(&buf[..n]);
        }
        if gate.wait_for(|held| !held).await.is_err() {
            return;
        }
        if n == 0 {
            let _ = to.shutdown().await;
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl TcpProxy {
    /// Starts forwarding a fresh loopback port to `target`.
    pub async fn start(target: &str) -> TcpProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let addr = listener.local_addr().unwrap().to_string();
        let target = target.to_string();
        let conns = Arc::new(Mutex::new(Vec::new()));
        let gates = Arc::new(Gates {
            up: tokio::sync::watch::channel(false).0,
            down: tokio::sync::watch::channel(false).0,
            hold_replies_after: Mutex::new(None),
            accepted: Default::default(),
        });
        let (tracked, shared) = (conns.clone(), gates.clone());
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                shared
                    .accepted
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let (target, gates) = (target.clone(), shared.clone());
                let h = tokio::spawn(async move {
                    let Ok(outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    let (client_r, client_w) = inbound.into_split();
                    let (target_r, target_w) = outbound.into_split();
                    let up = pump(
                        client_r,
                        target_w,
                        gates.up.subscribe(),
                        Some(gates.clone()),
                    );
                    let down = pump(target_r, client_w, gates.down.subscribe(), None);
                    tokio::join!(up, down);
                });
                tracked.lock().unwrap().push(h);
            }
        });
        TcpProxy {
            addr,
            task,
            conns,
            gates,
        }
    }

    /// Drops every connection and stops listening.
    pub fn cut(&self) {
        self.task.abort();
        for h in self.conns.lock().unwrap().drain(..) {
            h.abort();
        }
    }

    /// Holds every byte, both ways, on every connection (new ones are still accepted), until
    /// [`thaw`](Self::thaw).
    pub fn freeze(&self) {
        self.gates.up.send_replace(true);
        self.gates.down.send_replace(true);
    }

    /// Forwards everything again, held bytes first.
    pub fn thaw(&self) {
        *self.gates.hold_replies_after.lock().unwrap() = None;
        self.gates.up.send_replace(false);
        self.gates.down.send_replace(false);
    }

    /// Once a client has sent `bytes` (they reach the target), holds every reply until
    /// [`thaw`](Self::thaw): the target acts on the request, the client never hears back.
    pub fn hold_replies_after(&self, bytes: &[u8]) {
        *self.gates.hold_replies_after.lock().unwrap() = Some(bytes.to_vec());
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.gates
            .accepted
            .load(std::sync::atomic::Ordering::SeqCst)
    }
}
