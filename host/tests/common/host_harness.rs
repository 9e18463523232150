//! Running `ensign-host` with `ensign-fake-enclave` as its enclave, for the
//! host tests: a temp dir with the test PKI, Unix sockets for the enclave
//! endpoints and the KMS proxy (no ports to collide), a FakeKms behind the
//! host's KMS proxy, the host's log lines (its stderr, which the fake
//! enclave inherits) collected for assertions.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use enclave_bridge::test_util::TestPki;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use sha2::{Digest, Sha256};
use test_support::fake_kms::{FakeKms, FakeKmsConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const HOST_BIN: &str = env!("CARGO_BIN_EXE_ensign-host");
pub const FAKE_ENCLAVE_BIN: &str = env!("CARGO_BIN_EXE_ensign-fake-enclave");
pub const GOOD_PCR0: [u8; 48] = [0x5a; 48];
/// Generous: the fake enclave makes an RSA-2048 key per batch, and CI
/// machines are slow. Nothing waits this long unless something is broken.
pub const DEADLINE: Duration = Duration::from_secs(90);

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A test validator key: its made-up public key and secret.
#[derive(Clone, Debug)]
pub struct TestKey {
    pub pubkey: String,
    pub secret: [u8; 32],
}

impl TestKey {
    pub fn new(n: u8) -> Self {
        let mut secret = [0u8; 32];
        for (i, b) in secret.iter_mut().enumerate() {
            *b = n.wrapping_mul(31).wrapping_add(i as u8 * 7) ^ 0xc3;
        }
        Self {
            pubkey: format!("0x{}", format!("{n:02x}").repeat(48)),
            secret,
        }
    }

    /// What the fake enclave reports for it.
    pub fn digest(&self) -> String {
        hex(&Sha256::digest(self.secret))
    }

    /// Forms in which the secret must never appear in the host's logs.
    pub fn leak_forms(&self) -> Vec<String> {
        vec![
            hex(&self.secret),
            base64::engine::general_purpose::STANDARD.encode(self.secret),
        ]
    }
}

/// Temp dir, test PKI, FakeKms.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub pki_file: PathBuf,
    pub keys_dir: PathBuf,
    pub kms: FakeKms,
}

impl Fixture {
    /// A FakeKms whose key policy requires [`GOOD_PCR0`].
    pub async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pki = TestPki::generate();
        let pki_file = dir.path().join("pki.json");
        std::fs::write(&pki_file, pki.to_bytes()).unwrap();
        let keys_dir = dir.path().join("keys");
        std::fs::create_dir(&keys_dir).unwrap();
        let mut config = FakeKmsConfig::new(pki.root_der.clone());
        config.required_pcr0 = Some(GOOD_PCR0.to_vec());
        let kms = FakeKms::start(config).await.unwrap();
        Self {
            dir,
            pki_file,
            keys_dir,
            kms,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn kms_port(&self) -> u16 {
        self.kms.url().rsplit(':').next().unwrap().parse().unwrap()
    }

    pub fn ciphertext(&self, key: &TestKey) -> Vec<u8> {
        self.kms.encrypt(&key.secret, &Default::default())
    }

    /// Write `key`'s record file into the keys directory.
    pub fn write_key_file(&self, name: &str, key: &TestKey) {
        let record = serde_json::json!({
            "pubkey": key.pubkey,
            "ciphertext": base64::engine::general_purpose::STANDARD.encode(self.ciphertext(key)),
            "active": true,
        });
        // Written aside and renamed, as an operator's tooling should.
        let tmp = self.keys_dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, record.to_string()).unwrap();
        std::fs::rename(tmp, self.keys_dir.join(name)).unwrap();
    }

    /// The host's arguments: fake enclave with `pcr0` via --run-command,
    /// Unix sockets, the FakeKms behind the KMS proxy, static credentials.
    pub fn host_args(&self, pcr0: [u8; 48], poll_secs: u64) -> Vec<String> {
        let p = self.path().display();
        vec![
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--region".into(),
            "us-east-1".into(),
            "--keys-dir".into(),
            self.keys_dir.display().to_string(),
            "--run-command".into(),
            format!(
                "exec '{FAKE_ENCLAVE_BIN}' --test-pki '{}' --pcr0 {}",
                self.pki_file.display(),
                hex(&pcr0)
            ),
            "--data-endpoint".into(),
            format!("unix:{p}/data.sock"),
            "--control-endpoint".into(),
            format!("unix:{p}/control.sock"),
            "--kms-proxy-listen".into(),
            format!("unix:{p}/kms.sock"),
            "--kms-endpoint".into(),
            format!("127.0.0.1:{}", self.kms_port()),
            // The name the enclave's client uses (it resolves it to its
            // loopback forwarder); the FakeKms speaks plain HTTP.
            "--kms-endpoint-url".into(),
            "http://kms.us-east-1.amazonaws.com".into(),
            "--credentials".into(),
            "static-for-tests".into(),
            "--poll-interval-secs".into(),
            poll_secs.to_string(),
            "--enclave-boot-timeout-secs".into(),
            "60".into(),
        ]
    }
}

/// A running `ensign-host`; terminated (SIGTERM, then SIGKILL) on drop.
pub struct Host {
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
    pub listen: SocketAddr,
}

impl Host {
    pub async fn start(args: Vec<String>) -> Host {
        let mut child = Command::new(HOST_BIN)
            .args(&args)
            .env("RUST_LOG", "info,ensign_host=debug,enclave_bridge=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run ensign-host");
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[host] {line}");
                sink.lock().unwrap().push(line);
            }
        });
        let mut host = Host {
            child,
            logs,
            listen: "127.0.0.1:0".parse().unwrap(),
        };
        let line = host
            .wait_log(
                |l| l.contains("data path listening"),
                "the data path listening",
            )
            .await;
        let addr = line
            .split("listen=tcp:")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no listen address in `{line}`"));
        host.listen = addr.parse().unwrap();
        host
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Wait (polling, bounded by [`DEADLINE`]) for a log line matching `pred`.
    pub async fn wait_log(&mut self, pred: impl Fn(&str) -> bool, what: &str) -> String {
        self.wait_logs(1, pred, what).await
    }

    /// Wait for `n` matching log lines; returns the last.
    pub async fn wait_logs(&mut self, n: usize, pred: impl Fn(&str) -> bool, what: &str) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            {
                let logs = self.logs.lock().unwrap();
                let hits: Vec<&String> = logs.iter().filter(|l| pred(l)).collect();
                if hits.len() >= n {
                    return hits[n - 1].clone();
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("ensign-host exited ({status}) while waiting for {what}");
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn sighup(&self) {
        kill(self.pid(), Signal::SIGHUP).unwrap();
    }

    /// `GET path` through the host's data path: `(status, body)`.
    pub async fn get(&self, path: &str) -> Result<(u16, String), String> {
        let mut s = tokio::net::TcpStream::connect(self.listen)
            .await
            .map_err(|e| e.to_string())?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .map_err(|e| e.to_string())?;
        let mut raw = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
            .await
            .map_err(|_| "read timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&raw);
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("not an HTTP answer: {text:?}"))?;
        let body = text
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_owned();
        Ok((status, body))
    }

    /// The fake enclave's `/keys` report, if it is initialised.
    pub async fn report(&self) -> Option<Value> {
        match self.get("/keys").await {
            Ok((200, body)) => serde_json::from_str(&body).ok(),
            _ => None,
        }
    }

    /// Poll `/keys` through the data path until `pred` holds.
    pub async fn wait_report(&mut self, pred: impl Fn(&Value) -> bool, what: &str) -> Value {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(r) = self.report().await {
                if pred(&r) {
                    return r;
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("ensign-host exited ({status}) while waiting for {what}");
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Assert that none of `needles` appears in anything the host (or its
    /// enclave child) logged.
    pub fn assert_not_logged(&self, needles: &[String]) {
        let logs = self.logs();
        for n in needles {
            assert!(
                !logs.contains(n.as_str()),
                "secret material `{n}` in the host's logs"
            );
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = kill(self.pid(), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if !matches!(self.child.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The report's key map: id → digest.
pub fn report_keys(report: &Value) -> std::collections::BTreeMap<String, String> {
    report["keys"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether the report holds exactly `keys`, each with the right digest.
pub fn holds_exactly(report: &Value, keys: &[&TestKey]) -> bool {
    let got = report_keys(report);
    got.len() == keys.len()
        && keys
            .iter()
            .all(|k| got.get(&k.pubkey).is_some_and(|d| *d == k.digest()))
}
