//! `ensign-host` end to end, off-enclave: the real binary, with
//! `ensign-fake-enclave` as its enclave (`--run-command`), Unix sockets for
//! the enclave's endpoints and the KMS proxy, and a FakeKms that checks the
//! attestation document and a PCR0 key policy behind the host's KMS proxy.
//! Effects are awaited by polling the fake enclave's `/keys` report through
//! the host's data path, or the host's log lines, each within a deadline.

#[path = "common/host_harness.rs"]
mod harness;

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use enclave_bridge::control::ControlClient;
use harness::{holds_exactly, report_keys, Fixture, Host, TestKey, GOOD_PCR0, HOST_BIN};
use host::credentials::STATIC_TEST_ACCESS_KEY_ID;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_keys_forwards_data_and_reconciles_on_sighup() {
    let fx = Fixture::new().await;
    let (k1, k2, k3) = (TestKey::new(1), TestKey::new(2), TestKey::new(3));
    fx.write_key_file("k1.json", &k1);
    fx.write_key_file("k2.json", &k2);
    // A long poll interval: only SIGHUP can make the later reconciles happen.
    let mut host = Host::start(fx.host_args(GOOD_PCR0, 3600)).await;

    // Delivered and decrypted inside the (fake) enclave through the proxy.
    let report = host
        .wait_report(|r| holds_exactly(r, &[&k1, &k2]), "the two initial keys")
        .await;
    assert_eq!(report["access_key_id"], STATIC_TEST_ACCESS_KEY_ID);
    assert!(
        fx.kms
            .stats()
            .decrypt_with_recipient
            .load(Ordering::Relaxed)
            >= 2
    );
    assert_eq!(fx.kms.stats().decrypt_plain.load(Ordering::Relaxed), 0);
    host.wait_log(|l| l.contains("enclave ready"), "the ready transition")
        .await;

    // The data path reaches the enclave's data port...
    assert_eq!(host.get("/upcheck").await.unwrap(), (200, "OK".to_owned()));
    // ...and never its control port: the control handshake gets no answer
    // from the other end of --listen.
    let stream = tokio::net::TcpStream::connect(host.listen).await.unwrap();
    let handshake = tokio::time::timeout(
        Duration::from_secs(20),
        ControlClient::handshake(Box::new(stream), Default::default()),
    )
    .await
    .expect("the data port answers or closes");
    assert!(
        handshake.is_err(),
        "the data path spoke the control protocol"
    );

    // Add a file, SIGHUP: AddKeys.
    fx.write_key_file("k3.json", &k3);
    host.sighup();
    host.wait_report(
        |r| holds_exactly(r, &[&k1, &k2, &k3]),
        "k3 added after SIGHUP",
    )
    .await;
    host.wait_log(|l| l.contains("AddKeys"), "an AddKeys log line")
        .await;

    // Remove a file, SIGHUP: RemoveKeys.
    std::fs::remove_file(fx.keys_dir.join("k1.json")).unwrap();
    host.sighup();
    let report = host
        .wait_report(|r| holds_exactly(r, &[&k2, &k3]), "k1 removed after SIGHUP")
        .await;
    assert!(!report_keys(&report).contains_key(&k1.pubkey));
    host.wait_log(|l| l.contains("keys removed"), "a RemoveKeys log line")
        .await;

    // An unreadable record never unloads keys: with a broken file present,
    // a removed file's key stays.
    std::fs::write(fx.keys_dir.join("broken.json"), "{\"pubkey\": ").unwrap();
    std::fs::remove_file(fx.keys_dir.join("k2.json")).unwrap();
    host.sighup();
    host.wait_log(
        |l| l.contains("not removing keys missing from the source"),
        "removal withheld",
    )
    .await;
    let report = host.report().await.unwrap();
    assert!(holds_exactly(&report, &[&k2, &k3]), "{report}");

    let mut secrets: Vec<String> = [&k1, &k2, &k3]
        .iter()
        .flat_map(|k| k.leak_forms())
        .collect();
    secrets.push("ensign-static-test-secret".into());
    host.assert_not_logged(&secrets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_enclave_is_restarted_and_initialised_again() {
    let fx = Fixture::new().await;
    let k1 = TestKey::new(7);
    fx.write_key_file("k1.json", &k1);
    let mut host = Host::start(fx.host_args(GOOD_PCR0, 1)).await;
    let first = host
        .wait_report(|r| holds_exactly(r, &[&k1]), "the key loaded")
        .await;
    let pid = first["pid"].as_u64().unwrap();

    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();

    let second = host
        .wait_report(
            |r| r["pid"].as_u64() != Some(pid) && holds_exactly(r, &[&k1]),
            "a new enclave process with the key",
        )
        .await;
    assert_ne!(second["pid"], first["pid"]);
    host.wait_log(|l| l.contains("enclave lost"), "the lost transition")
        .await;
    // The report can show the new enclave holding the key a moment before the host has logged
    // that Init was accepted: wait for the second line (bounded) rather than count at once.
    host.wait_logs(
        2,
        |l| l.contains("enclave accepted Init"),
        "Init accepted by both enclaves",
    )
    .await;
    host.assert_not_logged(&k1.leak_forms());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_pcr0_is_logged_and_the_host_keeps_running() {
    let fx = Fixture::new().await;
    let k1 = TestKey::new(9);
    fx.write_key_file("k1.json", &k1);
    let mut host = Host::start(fx.host_args([0x11; 48], 1)).await;

    // Init refused with the enclave's message and the host's hint, and
    // retried (backed off) rather than giving up.
    let line = host
        .wait_logs(
            2,
            |l| l.contains("the enclave refused Init"),
            "two refused Inits",
        )
        .await;
    assert!(line.contains("KMS denied access"), "{line}");
    assert!(line.contains("PCR0"), "{line}");
    assert!(fx.kms.stats().denied.load(Ordering::Relaxed) >= 2);
    assert_eq!(
        fx.kms
            .stats()
            .decrypt_with_recipient
            .load(Ordering::Relaxed),
        0
    );
    assert!(host.is_running());

    // Fail closed: the data path still reaches upcheck, nothing else.
    assert_eq!(host.get("/upcheck").await.unwrap().0, 200);
    assert_eq!(host.get("/keys").await.unwrap().0, 503);
    host.assert_not_logged(&k1.leak_forms());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_kms_is_named_in_the_logs() {
    let fx = Fixture::new().await;
    let k1 = TestKey::new(5);
    fx.write_key_file("k1.json", &k1);
    // A port nobody listens on any more, as the KMS the proxy reaches.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let mut args = fx.host_args(GOOD_PCR0, 1);
    let at = args.iter().position(|a| a == "--kms-endpoint").unwrap();
    args[at + 1] = format!("127.0.0.1:{closed_port}");
    let mut host = Host::start(args).await;

    host.wait_log(
        |l| l.contains("KMS unreachable from the host"),
        "the start-up probe",
    )
    .await;
    let refused = host
        .wait_log(|l| l.contains("the enclave refused Init"), "a refused Init")
        .await;
    assert!(refused.contains("KMS unreachable"), "{refused}");
    host.wait_log(
        |l| l.contains("KMS unreachable: the host's KMS proxy could not connect"),
        "the proxy's failures reported",
    )
    .await;
    assert!(host.is_running());
    assert_eq!(host.get("/keys").await.unwrap().0, 503);
}

// ---------------------------------------------------------------------------
// Instance-role credentials through a fake IMDS (IMDSv2 token flow).

struct FakeImds {
    url: String,
    issued: Arc<AtomicU64>,
    _task: tokio::task::JoinHandle<()>,
}

/// RFC 3339 UTC for a Unix time, as IMDS writes it.
fn rfc3339(secs: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs as i64)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

impl FakeImds {
    /// Each credentials request gets a new access key (`ASIAFAKE<n>`),
    /// valid for 30 minutes; requests without the session token are 401.
    async fn start() -> Self {
        use axum::http::{HeaderMap, StatusCode};
        use axum::response::IntoResponse;
        use axum::routing::{get, put};
        const TOKEN: &str = "fake-imds-session-token";
        let issued = Arc::new(AtomicU64::new(0));
        let counter = issued.clone();
        let authorised = |h: &HeaderMap| {
            h.get("x-aws-ec2-metadata-token")
                .is_some_and(|v| v.as_bytes() == TOKEN.as_bytes())
        };
        let app = axum::Router::new()
            .route(
                "/latest/api/token",
                put(|h: HeaderMap| async move {
                    match h.get("x-aws-ec2-metadata-token-ttl-seconds") {
                        Some(ttl) => (
                            StatusCode::OK,
                            [("x-aws-ec2-metadata-token-ttl-seconds", ttl.clone())],
                            TOKEN.to_owned(),
                        )
                            .into_response(),
                        None => StatusCode::BAD_REQUEST.into_response(),
                    }
                }),
            )
            .route(
                "/latest/meta-data/iam/security-credentials/",
                get(move |h: HeaderMap| async move {
                    if authorised(&h) {
                        (StatusCode::OK, "ensign-role".to_owned())
                    } else {
                        (StatusCode::UNAUTHORIZED, String::new())
                    }
                }),
            )
            .route(
                "/latest/meta-data/iam/security-credentials/ensign-role",
                get(move |h: HeaderMap| {
                    let counter = counter.clone();
                    async move {
                        if !authorised(&h) {
                            return (StatusCode::UNAUTHORIZED, String::new());
                        }
                        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                        let now = SystemTime::now()
                            .duration_since(UNIX_EPOCH)
                            .unwrap()
                            .as_secs();
                        let body = serde_json::json!({
                            "Code": "Success",
                            "LastUpdated": rfc3339(now),
                            "Type": "AWS-HMAC",
                            "AccessKeyId": format!("ASIAFAKE{n}"),
                            "SecretAccessKey": format!("imds-secret-{n}"),
                            "Token": format!("imds-token-{n}"),
                            "Expiration": rfc3339(now + 1800),
                        });
                        (StatusCode::OK, body.to_string())
                    }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url,
            issued,
            _task: task,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_role_credentials_are_delivered_and_refreshed() {
    let fx = Fixture::new().await;
    let k1 = TestKey::new(4);
    fx.write_key_file("k1.json", &k1);
    let imds = FakeImds::start().await;
    let mut args = fx.host_args(GOOD_PCR0, 1);
    let at = args.iter().position(|a| a == "static-for-tests").unwrap();
    args[at] = "imds".into();
    args.extend([
        "--imds-endpoint".into(),
        imds.url.clone(),
        // Credentials live 30 minutes; a one-hour margin makes every poll
        // a refresh.
        "--credentials-refresh-margin-secs".into(),
        "3600".into(),
    ]);
    let mut host = Host::start(args).await;

    let first = host
        .wait_report(|r| holds_exactly(r, &[&k1]), "the key loaded")
        .await;
    let first_key = first["access_key_id"].as_str().unwrap().to_owned();
    assert!(first_key.starts_with("ASIAFAKE"), "{first}");
    let later = host
        .wait_report(
            |r| {
                r["credential_refreshes"].as_u64() >= Some(1)
                    && r["access_key_id"].as_str() != Some(first_key.as_str())
            },
            "refreshed credentials in the enclave",
        )
        .await;
    assert!(later["access_key_id"]
        .as_str()
        .unwrap()
        .starts_with("ASIAFAKE"));
    assert!(imds.issued.load(Ordering::SeqCst) >= 2);
    host.wait_log(
        |l| l.contains("enclave credentials refreshed"),
        "the refresh log line",
    )
    .await;

    // The secret parts never reach a log line.
    let n = imds.issued.load(Ordering::SeqCst);
    let mut secrets: Vec<String> = (1..=n)
        .flat_map(|i| [format!("imds-secret-{i}"), format!("imds-token-{i}")])
        .collect();
    secrets.push("fake-imds-session-token".into());
    secrets.extend(k1.leak_forms());
    host.assert_not_logged(&secrets);
}

// ---------------------------------------------------------------------------
// Command-line errors.

fn run_host(args: &[&str]) -> (i32, String) {
    let out = Command::new(HOST_BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn command_line_errors_are_clear_and_fail() {
    // Each line is refused before anything starts (exit status 2), with every listed phrase in
    // the message; `--region eu-west-1` is put in front of each.
    let usage_errors: [(&str, &[&str], &[&str]); 5] = [
        (
            "no key source",
            &["--run-command", "true"],
            &["--keys-table", "--keys-dir"],
        ),
        (
            "a bad endpoint",
            &[
                "--keys-dir",
                "/k",
                "--run-command",
                "true",
                "--data-endpoint",
                "udp:10.0.0.1:5000",
            ],
            &["--data-endpoint", "must start with vsock:, tcp: or unix:"],
        ),
        (
            "a KMS endpoint without a port",
            &[
                "--keys-dir",
                "/k",
                "--kms-endpoint",
                "kms.eu-west-1.amazonaws.com",
            ],
            &["expected HOST:PORT"],
        ),
        (
            "data and control on one endpoint",
            &[
                "--keys-dir",
                "/k",
                "--run-command",
                "true",
                "--control-port",
                "5000",
            ],
            &["must never reach the control port"],
        ),
        (
            "no EIF for nitro-cli",
            &["--keys-dir", "/k", "--eif", "/nonexistent/ensign.eif"],
            &["/nonexistent/ensign.eif does not exist"],
        ),
    ];
    for (case, args, phrases) in usage_errors {
        let (code, err) = run_host(&[&["--region", "eu-west-1"], args].concat());
        assert_eq!(code, 2, "{case}: {err}");
        for phrase in phrases {
            assert!(err.contains(phrase), "{case}: {err}");
        }
    }

    // --listen taken: a start-up failure, exit status 1.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = run_host(&[
        "--region",
        "eu-west-1",
        "--keys-dir",
        dir.path().to_str().unwrap(),
        "--run-command",
        "true",
        "--listen",
        &addr,
        "--enclave-transport",
        "unix",
        "--enclave-socket-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("cannot listen on tcp:{addr}")),
        "{err}"
    );
}

#[test]
fn help_lists_the_documented_flags() {
    let out = Command::new(HOST_BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen",
        "--enclave-cid",
        "--data-port",
        "--control-port",
        "--kms-proxy-port",
        "--region",
        "--kms-endpoint",
        "--keys-table",
        "--keys-dir",
        "--db-endpoint",
        "--db-proxy-port",
        "--eif",
        "--enclave-cpus",
        "--enclave-memory-mib",
        "--enclave-debug-mode",
        "--run-command",
        "--enclave-transport",
        "--data-endpoint",
        "--control-endpoint",
        "--kms-proxy-listen",
        "--credentials",
        "--poll-interval-secs",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}
