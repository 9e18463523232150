//! Slashing protection through the real server: one winner among concurrent conflicting
//! requests (also across two processes sharing PostgreSQL), crash safety, import/export, and
//! clear failures when the database is missing, locked or gone.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tests::body::{attestation, block_header, signing_root, GVR};
use tests::{
    export_interchange, pubkey_hex, run_binary, test_secret, PgSchema, Runner, SignerBuilder,
    TcpProxy, TestSigner,
};

/// Sends `bodies` concurrently, request `i` to `signers[i % len]`; returns the statuses.
async fn race(signers: &[Arc<TestSigner>], pubkey: &str, bodies: Vec<Value>) -> Vec<u16> {
    let mut tasks = vec![];
    for (i, body) in bodies.into_iter().enumerate() {
        let s = signers[i % signers.len()].clone();
        let pk = pubkey.to_string();
        tasks.push(tokio::spawn(async move { s.sign(&pk, &body).await.status }));
    }
    let mut out = vec![];
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

fn count(statuses: &[u16], code: u16) -> usize {
    statuses.iter().filter(|&&s| s == code).count()
}

/// 200 different attestations with one target epoch for one validator: exactly one is signed,
/// every other one is refused with 412; the same for 200 different blocks at one slot.
async fn one_winner(signers: &[Arc<TestSigner>], pubkey: &str) {
    let atts = (0..200).map(|i| attestation(10, 20, 1000 + i)).collect();
    let statuses = race(signers, pubkey, atts).await;
    assert_eq!(count(&statuses, 200), 1, "attestations: {statuses:?}");
    assert_eq!(count(&statuses, 412), 199, "attestations: {statuses:?}");
    let blocks = (0..200).map(|i| block_header(777, 1000 + i)).collect();
    let statuses = race(signers, pubkey, blocks).await;
    assert_eq!(count(&statuses, 200), 1, "blocks: {statuses:?}");
    assert_eq!(count(&statuses, 412), 199, "blocks: {statuses:?}");
}

/// Signs each body for `pk` in turn and asserts the HTTP status it gets (`what`: the case).
async fn expect_statuses(s: &TestSigner, pk: &str, cases: &[(Value, u16, &str)]) {
    for (body, status, what) in cases {
        assert_eq!(s.sign(pk, body).await.status, *status, "{what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_winner_sqlite_release_binary() {
    let key = test_secret(b"one winner sqlite");
    let s = Arc::new(
        SignerBuilder::new()
            .raw_keys([key])
            .start(Runner::Binary)
            .await,
    );
    one_winner(&[s], &pubkey_hex(&key)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_winner_two_processes_sharing_postgres() {
    let Some(pg) = PgSchema::new("one_winner_two_processes_sharing_postgres") else {
        return;
    };
    let key = test_secret(b"one winner pg");
    let start = || {
        SignerBuilder::new()
            .raw_keys([key])
            .eth2_arg("--slashing-protection-db-url")
            .eth2_arg(&pg.url())
            .start(Runner::Binary)
    };
    let a = Arc::new(start().await);
    let b = Arc::new(start().await);
    one_winner(&[a, b], &pubkey_hex(&key)).await;
}

/// `kill -9` while signing under load, restart on the same database: every signature a client
/// received is recorded (a conflicting message for it is refused, the identical one re-signs to
/// the same signature, and the export lists it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_under_load_loses_no_record() {
    let data = tempfile::TempDir::new().unwrap();
    let keys: Vec<[u8; 32]> = (0..8u8).map(|i| test_secret(&[b'c', i])).collect();
    let pubkeys: Vec<String> = keys.iter().map(pubkey_hex).collect();
    let builder = || {
        SignerBuilder::new()
            .raw_keys(keys.clone())
            .data_dir(data.path())
    };
    let mut signer = builder().start(Runner::Binary).await;
    let shared = Arc::new(tokio::sync::Mutex::new(Vec::<(usize, Value, String)>::new()));
    let signer_ref = Arc::new(signer.base.clone());

    // One client task per validator, each advancing its epochs; signatures received are kept.
    let mut tasks = vec![];
    for (v, pk) in pubkeys.iter().enumerate() {
        let (pk, got, base) = (pk.clone(), shared.clone(), signer_ref.clone());
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            for epoch in 1..10_000u64 {
                let body = attestation(epoch - 1, epoch, v as u64);
                let r = client
                    .post(format!("{base}/api/v1/eth2/sign/{pk}"))
                    .header("accept", "application/json")
                    .json(&body)
                    .send()
                    .await;
                let Ok(r) = r else { return };
                if r.status() != 200 {
                    return;
                }
                let Ok(v2) = r.json::<Value>().await else {
                    return;
                };
                got.lock()
                    .await
                    .push((v, body, v2["signature"].as_str().unwrap().to_string()));
            }
        }));
    }
    // Crash once a good number of signatures has been handed out.
    loop {
        if shared.lock().await.len() >= 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    signer.kill9();
    for t in tasks {
        let _ = t.await;
    }
    let received = shared.lock().await.clone();
    assert!(received.len() >= 200);

    let signer = builder().start(Runner::Binary).await;
    for (v, body, sig) in &received {
        let pk = &pubkeys[*v];
        // Same message: re-signed identically (it is in the database as this very root).
        assert_eq!(&signer.signature(pk, body).await, sig);
        // A different root for the same target: a double vote, refused.
        let src = body["attestation"]["source"]["epoch"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap();
        let conflicting = attestation(src, src + 1, 9_999);
        assert_eq!(
            signer.sign(pk, &conflicting).await.status,
            412,
            "validator {v} epoch {src}"
        );
    }
    signer.stop().await;

    // The export (while no server holds the database) lists every received signature's root.
    let export = data.path().join("export.json");
    let work = tempfile::TempDir::new().unwrap();
    let doc = export_interchange(&builder(), work.path(), &export);
    let mut recorded: HashMap<(String, String), String> = HashMap::new();
    for d in doc["data"].as_array().unwrap() {
        for a in d["signed_attestations"].as_array().unwrap() {
            recorded.insert(
                (
                    d["pubkey"].as_str().unwrap().to_string(),
                    a["target_epoch"].as_str().unwrap().to_string(),
                ),
                a["signing_root"].as_str().unwrap_or("").to_string(),
            );
        }
    }
    for (v, body, _) in &received {
        let target = body["attestation"]["target"]["epoch"]
            .as_str()
            .unwrap()
            .to_string();
        let root = const_hex::encode_prefixed(signing_root(body));
        assert_eq!(recorded.get(&(pubkeys[*v].clone(), target)), Some(&root));
    }
    eprintln!(
        "crash test: {} signatures received before kill -9, all recorded",
        received.len()
    );
}

/// `eth2 export` then `eth2 import` into a fresh database: the history moves with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_import_round_trip_through_cli() {
    let key = test_secret(b"export import");
    let pk = pubkey_hex(&key);
    let (d1, d2, work) = (
        tempfile::TempDir::new().unwrap(),
        tempfile::TempDir::new().unwrap(),
        tempfile::TempDir::new().unwrap(),
    );
    let s = SignerBuilder::new()
        .raw_keys([key])
        .data_dir(d1.path())
        .start(Runner::Binary)
        .await;
    assert_eq!(s.sign(&pk, &attestation(5, 6, 1)).await.status, 200);
    assert_eq!(s.sign(&pk, &block_header(300, 1)).await.status, 200);
    s.stop().await;

    let file = work.path().join("interchange.json");
    let first = SignerBuilder::new().data_dir(d1.path());
    let doc = export_interchange(&first, work.path(), &file);
    assert_eq!(doc["metadata"]["interchange_format_version"], "5");
    assert_eq!(doc["metadata"]["genesis_validators_root"], GVR);

    let mut args = SignerBuilder::new()
        .data_dir(d2.path())
        .args_in(work.path());
    args.extend(["import".into(), "--from".into(), file.display().to_string()]);
    let (code, err) = run_binary(&args);
    assert_eq!(code, 0, "{err}");

    let s = SignerBuilder::new()
        .raw_keys([key])
        .data_dir(d2.path())
        .start(Runner::Binary)
        .await;
    expect_statuses(
        &s,
        &pk,
        &[
            (attestation(5, 6, 2), 412, "double vote after import"),
            (block_header(300, 2), 412, "double block after import"),
            (attestation(6, 7, 2), 200, "a new message"),
        ],
    )
    .await;
    s.stop().await;

    // A file for another chain is refused as a whole, with a clear message and exit code.
    let mut other = doc.clone();
    other["metadata"]["genesis_validators_root"] = json!(format!("0x{}", "11".repeat(32)));
    let other_file = work.path().join("other.json");
    std::fs::write(&other_file, serde_json::to_vec(&other).unwrap()).unwrap();
    let mut args = SignerBuilder::new()
        .data_dir(d2.path())
        .args_in(work.path());
    args.extend([
        "import".into(),
        "--from".into(),
        other_file.display().to_string(),
    ]);
    let (code, err) = run_binary(&args);
    assert_ne!(code, 0);
    assert!(err.to_lowercase().contains("genesis"), "{err}");
}

/// Starts the release binary with `builder`'s arguments and expects it to fail at start: its
/// exit code and stderr. A binary that starts serving instead fails the test (killed first).
async fn start_must_fail(builder: &SignerBuilder) -> (i32, String) {
    let work = tempfile::TempDir::new().unwrap();
    let child = tokio::process::Command::new(tests::binary_path())
        .args(builder.args_in(work.path()))
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Safety net only: a refusal comes within a second; reaching it fails the test.
    match tokio::time::timeout(std::time::Duration::from_secs(60), child.wait_with_output()).await {
        Ok(out) => {
            let out = out.unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                !stdout.contains("listening on"),
                "ensign started serving: {stdout}"
            );
            (
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stderr).to_string(),
            )
        }
        Err(_) => panic!("ensign did not exit: it started instead of refusing"),
    }
}

/// A data directory that has held a slashing-protection database never starts again with an
/// empty history (issue 14, defect 2): a truncated or deleted database, or a crash followed by
/// a lost write-ahead log, stop the start (exit 3, a message saying what to do) without
/// creating anything; restoring the files brings the history back; only
/// `--init-slashing-protection=true` starts anew, and says so in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_used_data_directory_never_starts_a_fresh_history() {
    let key = test_secret(b"data dir rule");
    let pk = pubkey_hex(&key);
    let data = tempfile::TempDir::new().unwrap();
    let db = data.path().join("slashing-protection.sqlite");
    let wal = data.path().join("slashing-protection.sqlite-wal");
    let builder = || SignerBuilder::new().raw_keys([key]).data_dir(data.path());

    // A brand-new directory starts with one command.
    let s = builder().start(Runner::Binary).await;
    assert!(
        s.log_lines()
            .iter()
            .any(|l| l.contains("created a new slashing-protection database")),
        "no log line says a database was created"
    );
    assert_eq!(s.sign(&pk, &attestation(5, 6, 1)).await.status, 200);
    assert_eq!(s.sign(&pk, &block_header(300, 1)).await.status, 200);
    s.stop().await;
    assert!(data.path().join("slashing-protection.sqlite-id").exists());
    assert!(!wal.exists(), "a clean stop folds the write-ahead log in");
    let saved = std::fs::read(&db).unwrap();

    // Truncated, then deleted: refused, and nothing is created in its place.
    std::fs::write(&db, b"").unwrap();
    let (code, err) = start_must_fail(&builder()).await;
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("is empty (0 bytes)"), "{err}");
    assert!(err.contains("--init-slashing-protection=true"), "{err}");
    assert_eq!(std::fs::metadata(&db).unwrap().len(), 0);
    std::fs::remove_file(&db).unwrap();
    let (code, err) = start_must_fail(&builder()).await;
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("is missing"), "{err}");
    assert!(!db.exists(), "a refused start created a database");
    // `export` (the recommended backup) refuses the same way instead of exporting nothing.
    let mut export = builder().args_in(data.path());
    export.extend([
        "export".into(),
        "--to".into(),
        data.path().join("x.json").display().to_string(),
    ]);
    let (code, err) = run_binary(&export);
    assert_eq!(code, 3, "{err}");

    // Restored from the backup: the history is back.
    std::fs::write(&db, &saved).unwrap();
    let mut s = builder().start(Runner::Binary).await;
    expect_statuses(
        &s,
        &pk,
        &[
            (attestation(5, 6, 2), 412, "double vote"),
            (block_header(300, 2), 412, "double block"),
            (attestation(6, 7, 1), 200, "a new message"),
            (block_header(301, 1), 200, "a new message"),
        ],
    )
    .await;

    // kill -9: the newest records are in the write-ahead log. Losing it is refused.
    s.kill9();
    let wal_copy = std::fs::read(&wal).expect("the -wal file survives kill -9");
    std::fs::remove_file(&wal).unwrap();
    let (code, err) = start_must_fail(&builder()).await;
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("write-ahead log"), "{err}");
    // With the -wal file copied back, recovery keeps the crashed session's records.
    std::fs::write(&wal, &wal_copy).unwrap();
    let s = builder().start(Runner::Binary).await;
    expect_statuses(
        &s,
        &pk,
        &[
            (attestation(6, 7, 2), 412, "double vote"),
            (block_header(301, 2), 412, "double block"),
        ],
    )
    .await;
    s.stop().await;

    // Only the explicit option starts a new history, loudly; the directory then uses it.
    std::fs::remove_file(&db).unwrap();
    let s = builder()
        .eth2_arg("--init-slashing-protection=true")
        .start(Runner::Binary)
        .await;
    let log = s.log_lines();
    assert!(
        log.iter()
            .any(|l| l.contains("WARN") && l.contains("--init-slashing-protection")),
        "{log:?}"
    );
    assert!(
        log.iter()
            .any(|l| l.contains("created a new slashing-protection database")),
        "{log:?}"
    );
    s.stop().await;
    let s = builder().start(Runner::Binary).await;
    assert_eq!(s.sign(&pk, &attestation(7, 8, 1)).await.status, 200);
    s.stop().await;
}

/// Start-up failures are clear and non-zero: an unusable data path, a database already in use
/// by another instance, PostgreSQL not reachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_databases_fail_clearly_at_start() {
    let work = tempfile::TempDir::new().unwrap();
    let file = work.path().join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let err = SignerBuilder::new()
        .data_dir(&file.join("data"))
        .try_start(Runner::Binary)
        .await
        .err()
        .expect("a data path under a file must fail");
    assert!(err.contains("data path"), "{err}");

    let data = tempfile::TempDir::new().unwrap();
    let first = SignerBuilder::new()
        .data_dir(data.path())
        .start(Runner::Binary)
        .await;
    let err = SignerBuilder::new()
        .data_dir(data.path())
        .try_start(Runner::Binary)
        .await
        .err()
        .expect("a second instance on the same SQLite file must fail");
    assert!(err.contains("slashing protection"), "{err}");
    first.stop().await;

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let err = SignerBuilder::new()
        .eth2_arg("--slashing-protection-db-url")
        .eth2_arg(&format!("postgresql://postgres@127.0.0.1:{port}/test"))
        .try_start(Runner::Binary)
        .await
        .err()
        .expect("an unreachable PostgreSQL must fail");
    assert!(err.contains("slashing protection"), "{err}");
}

/// The release binary signing with one key (from `seed`; its pubkey is returned) on a fresh
/// PostgreSQL schema reached through a [`TcpProxy`], with `extra` eth2 options; `None` when
/// PostgreSQL is unavailable (see [`PgSchema::new`]).
async fn signer_through_proxy(
    test: &str,
    seed: &[u8],
    extra: &[&str],
) -> Option<(PgSchema, TcpProxy, TestSigner, String)> {
    let pg = PgSchema::new(test)?;
    let proxy = TcpProxy::start("127.0.0.1:5432").await;
    let key = test_secret(seed);
    let mut builder = SignerBuilder::new()
        .raw_keys([key])
        .eth2_arg("--slashing-protection-db-url")
        .eth2_arg(&pg.url_via(Some(&proxy.addr)));
    for arg in extra {
        builder = builder.eth2_arg(arg);
    }
    let s = builder.start(Runner::Binary).await;
    Some((pg, proxy, s, pubkey_hex(&key)))
}

/// PostgreSQL going away mid-run: blocks and attestations are refused with 500, the health
/// check is DOWN (503), types without slashing protection still sign; never a signature
/// without a record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_going_down_mid_run_refuses_signing() {
    let test = "postgres_going_down_mid_run_refuses_signing";
    let Some((_pg, proxy, s, pk)) = signer_through_proxy(test, b"pg down", &[]).await else {
        return;
    };
    assert_eq!(s.sign(&pk, &attestation(1, 2, 1)).await.status, 200);
    assert_eq!(s.get("/healthcheck").await.status, 200);

    proxy.cut();
    for i in 0..5 {
        let r = s.sign(&pk, &attestation(2 + i, 3 + i, 1)).await;
        assert_eq!(
            r.status, 500,
            "attestation with the database down: {}",
            r.body
        );
        assert_eq!(
            r.body, "Internal Server Error",
            "no internal detail to the client"
        );
        assert_eq!(s.sign(&pk, &block_header(50 + i, 1)).await.status, 500);
    }
    let h = s.get("/healthcheck").await;
    assert_eq!(h.status, 503, "{}", h.body);
    let db = h.json()["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "slashing-protection-db-health-check")
        .cloned()
        .unwrap();
    assert_eq!(db["status"], "DOWN");
    let randao = json!({"type": "RANDAO_REVEAL", "fork_info": tests::body::fork_info(), "randao_reveal": {"epoch": "9"}});
    assert_eq!(
        s.sign(&pk, &randao).await.status,
        200,
        "unprotected types do not need the database"
    );
}

/// Signs `body` and returns the status and how long the answer took; a request still
/// unanswered after 30 s fails the test instead of hanging it.
async fn timed_sign(s: &TestSigner, pk: &str, body: &Value) -> (u16, Duration) {
    let started = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(30), s.sign(pk, body))
        .await
        .unwrap_or_else(|_| panic!("no answer within 30 s: the request hangs on the database"));
    (r.status, started.elapsed())
}

/// A network partition to PostgreSQL that no TCP timer notices (the proxy keeps the sockets
/// open and holds every byte): with `--slashing-protection-db-timeout-seconds=2` a sign request
/// answers 500 within the bound instead of hanging until the network heals, on the pooled
/// connection and on a fresh one; after the partition signing works again and the history is
/// intact. A partition that swallows only the answer to COMMIT (the record committed, ensign
/// never told) also answers 500, and the record then refuses a conflicting vote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_partition_answers_500_within_the_timeout() {
    let test = "postgres_partition_answers_500_within_the_timeout";
    let timeout = ["--slashing-protection-db-timeout-seconds=2"];
    let Some((_pg, proxy, s, pk)) = signer_through_proxy(test, b"pg partition", &timeout).await
    else {
        return;
    };
    let bound = Duration::from_secs(8);
    assert_eq!(timed_sign(&s, &pk, &attestation(1, 2, 1)).await.0, 200);

    proxy.freeze();
    let (status, took) = timed_sign(&s, &pk, &attestation(2, 3, 1)).await;
    eprintln!("pooled connection, partition: {status} after {took:?}");
    assert_eq!(status, 500, "pooled connection, partition");
    assert!(took < bound, "answered after {took:?}");
    let (status, took) = timed_sign(&s, &pk, &block_header(10, 1)).await;
    eprintln!("fresh connection, partition: {status} after {took:?}");
    assert_eq!(status, 500, "fresh connection, partition");
    assert!(took < bound, "answered after {took:?}");

    proxy.thaw();
    let accepted = proxy.accepted();
    // The failed requests recorded nothing: the same messages sign now.
    assert_eq!(timed_sign(&s, &pk, &attestation(2, 3, 1)).await.0, 200);
    assert!(
        proxy.accepted() > accepted,
        "the stuck connection is replaced"
    );
    assert_eq!(timed_sign(&s, &pk, &block_header(10, 1)).await.0, 200);
    for (conflict, what) in [
        (attestation(2, 3, 2), "double vote on target 3"),
        (attestation(1, 2, 2), "double vote on target 2"),
        (block_header(10, 2), "double proposal at slot 10"),
    ] {
        assert_eq!(timed_sign(&s, &pk, &conflict).await.0, 412, "{what}");
    }

    // The COMMIT reaches the database, its answer does not.
    proxy.hold_replies_after(b"COMMIT\0");
    let (status, took) = timed_sign(&s, &pk, &attestation(3, 4, 1)).await;
    eprintln!("answer to COMMIT lost: {status} after {took:?}");
    assert_eq!(status, 500, "answer to COMMIT lost");
    assert!(took < bound, "answered after {took:?}");
    proxy.thaw();
    assert_eq!(
        timed_sign(&s, &pk, &attestation(3, 4, 2)).await.0,
        412,
        "the committed record refuses a conflicting vote"
    );
    assert_eq!(
        timed_sign(&s, &pk, &attestation(3, 4, 1)).await.0,
        200,
        "the identical vote is a repeat"
    );
    s.stop().await;
}

/// On PostgreSQL an import may run while a server signs: afterwards the server refuses what
/// the imported history makes slashable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_import_while_serving() {
    let Some(pg) = PgSchema::new("postgres_import_while_serving") else {
        return;
    };
    let key = test_secret(b"import while serving");
    let pk = pubkey_hex(&key);
    let with_db = |b: SignerBuilder| {
        b.eth2_arg("--slashing-protection-db-url")
            .eth2_arg(&pg.url())
    };
    let s = with_db(SignerBuilder::new().raw_keys([key]))
        .start(Runner::Binary)
        .await;
    assert_eq!(s.sign(&pk, &attestation(5, 6, 1)).await.status, 200);

    let work = tempfile::TempDir::new().unwrap();
    let file = work.path().join("in.json");
    let doc = json!({
        "metadata": {"interchange_format_version": "5", "genesis_validators_root": GVR},
        "data": [{"pubkey": pk, "signed_blocks": [{"slot": "900"}],
                  "signed_attestations": [{"source_epoch": "7", "target_epoch": "8"}]}]
    });
    std::fs::write(&file, serde_json::to_vec(&doc).unwrap()).unwrap();
    let mut args = with_db(SignerBuilder::new()).args_in(work.path());
    args.extend(["import".into(), "--from".into(), file.display().to_string()]);
    let (code, err) = run_binary(&args);
    assert_eq!(code, 0, "{err}");

    expect_statuses(
        &s,
        &pk,
        &[
            (attestation(7, 8, 1), 412, "imported target 8"),
            (block_header(900, 1), 412, "imported slot 900"),
            (attestation(8, 9, 1), 200, "a new message"),
        ],
    )
    .await;
    s.stop().await;
}

/// Stopping a server that holds a PostgreSQL store is clean, in-process and as the binary (the
/// synchronous client must not be dropped on an async thread).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_server_stops_cleanly() {
    let Some(pg) = PgSchema::new("postgres_server_stops_cleanly") else {
        return;
    };
    let key = test_secret(b"clean stop");
    for (runner, target) in [(Runner::InProcess, 2), (Runner::Binary, 3)] {
        let s = SignerBuilder::new()
            .raw_keys([key])
            .eth2_arg("--slashing-protection-db-url")
            .eth2_arg(&pg.url())
            .start(runner)
            .await;
        assert_eq!(
            s.sign(&pubkey_hex(&key), &attestation(target - 1, target, 1))
                .await
                .status,
            200
        );
        s.stop().await;
    }
}
