//! The HTTP contract: endpoints, content negotiation and one test per error status, each run
//! in-process and against the release binary with the same helpers.

use serde_json::json;
use tests::body::{attestation, block_header, fork_info};
use tests::{pubkey_hex, test_secret, Runner, SignerBuilder, TestSigner};

async fn two_key_signer(runner: Runner) -> (TestSigner, String, String) {
    let (a, b) = (test_secret(b"api-a"), test_secret(b"api-b"));
    let signer = SignerBuilder::new().raw_keys([a, b]).start(runner).await;
    (signer, pubkey_hex(&a), pubkey_hex(&b))
}

async fn assert_still_serving(s: &TestSigner) {
    let up = s.get("/upcheck").await;
    assert_eq!((up.status, up.body.as_str()), (200, "OK"));
}

async fn endpoints(runner: Runner) {
    let (s, a, b) = two_key_signer(runner).await;

    let up = s.get("/upcheck").await;
    assert_eq!(up.status, 200);
    assert!(up.content_type.starts_with("text/plain"));
    assert_eq!(up.body, "OK");

    let keys = s.get("/api/v1/eth2/publicKeys").await;
    assert_eq!(keys.status, 200);
    let mut expected = vec![a.clone(), b.clone()];
    expected.sort();
    assert_eq!(keys.json(), json!(expected));

    let health = s.get("/healthcheck").await;
    assert_eq!(health.status, 200, "{}", health.body);
    let h = health.json();
    assert_eq!(h["status"], "UP");
    assert_eq!(h["outcome"], "UP");
    let checks = h["checks"].as_array().unwrap();
    let keys_check = checks
        .iter()
        .find(|c| c["id"] == "keys-check")
        .expect("keys-check");
    let files = &keys_check["checks"].as_array().unwrap()[0];
    assert_eq!(files["id"], "config-files-loading");
    assert_eq!(files["data"]["keys-loaded"], 2);
    assert_eq!(files["data"]["error-count"], 0);
    let db = checks
        .iter()
        .find(|c| c["id"] == "slashing-protection-db-health-check")
        .expect("db check");
    assert_eq!(db["status"], "UP");

    let hw = s.get("/api/v1/eth2/highWatermark").await;
    assert_eq!(
        (hw.status, hw.json()),
        (200, json!({})),
        "no high watermark set"
    );

    // Accept negotiation, and identifiers without 0x / in upper case.
    let body = serde_json::to_vec(&attestation(1, 2, 9)).unwrap();
    let text = s.sign_raw(&a, body.clone(), None).await;
    assert_eq!(text.status, 200, "{}", text.body);
    assert!(text.content_type.starts_with("text/plain"));
    assert!(
        text.body.starts_with("0x") && text.body.len() == 2 + 192,
        "{}",
        text.body
    );
    let json_resp = s.sign_raw(&a, body.clone(), Some("*/*")).await;
    assert!(json_resp.content_type.starts_with("application/json"));
    assert_eq!(json_resp.json()["signature"], text.body.as_str());
    let upper = a.trim_start_matches("0x").to_uppercase();
    let again = s.sign_raw(&upper, body, Some("text/plain")).await;
    assert_eq!(
        (again.status, again.body.as_str()),
        (200, text.body.as_str()),
        "identical re-sign"
    );
    s.stop().await;
}

async fn error_statuses(runner: Runner) {
    let (s, a, _) = two_key_signer(runner).await;

    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("malformed JSON", b"{\"type\": \"ATTESTATION\",".to_vec(), 400),
        ("unknown type", br#"{"type": "NOT_A_TYPE"}"#.to_vec(), 400),
        ("missing type", br#"{"attestation": {}}"#.to_vec(), 400),
        (
            "wrong field type",
            serde_json::to_vec(&json!({"type": "AGGREGATION_SLOT", "fork_info": fork_info(), "aggregation_slot": {"slot": [1]}})).unwrap(),
            400,
        ),
        ("payload missing", br#"{"type": "RANDAO_REVEAL"}"#.to_vec(), 400),
        (
            "missing fork_info",
            serde_json::to_vec(&json!({"type": "RANDAO_REVEAL", "randao_reveal": {"epoch": "3"}})).unwrap(),
            500,
        ),
    ];
    for (what, body, status) in cases {
        let r = s.sign_raw(&a, body, Some("application/json")).await;
        assert_eq!(r.status, status, "{what}: {}", r.body);
        assert!(
            r.body.len() < 300,
            "{what}: error body should be short: {}",
            r.body
        );
        assert_still_serving(&s).await;
    }

    // A 10 MB body: 413, and the server keeps serving.
    let r = s
        .post_oversized(&format!("/api/v1/eth2/sign/{a}"), 10 * 1024 * 1024)
        .await;
    assert_eq!(r.status, 413, "10 MB body: {}", r.body);
    assert_still_serving(&s).await;

    // Unknown key: 404.
    let other = pubkey_hex(&test_secret(b"not loaded"));
    let r = s.sign(&other, &attestation(1, 2, 1)).await;
    assert_eq!(r.status, 404, "{}", r.body);
    let r = s.sign("0x1234", &attestation(1, 2, 1)).await;
    assert_eq!(r.status, 404, "{}", r.body);

    // A signingRoot that does not match the payload: 500, nothing signed.
    let mut bad = attestation(1, 2, 1);
    bad["signingRoot"] = json!(format!("0x{}", "00".repeat(32)));
    let r = s.sign(&a, &bad).await;
    assert_eq!(r.status, 500, "{}", r.body);

    // Slashing refusal: 412 for a double block proposal and a double vote.
    assert_eq!(s.sign(&a, &block_header(100, 1)).await.status, 200);
    let r = s.sign(&a, &block_header(100, 2)).await;
    assert_eq!(r.status, 412, "{}", r.body);
    assert_eq!(s.sign(&a, &attestation(3, 4, 1)).await.status, 200);
    assert_eq!(s.sign(&a, &attestation(3, 4, 2)).await.status, 412);
    // The refused messages never produced a signature; an identical repeat still signs.
    assert_eq!(s.sign(&a, &block_header(100, 1)).await.status, 200);

    // Host allow-list: 403 with Web3Signer's JSON body.
    let r = s.get_with_host("/upcheck", "evil.example").await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json(), json!({"message": "Host not authorized."}));

    assert_still_serving(&s).await;
    s.stop().await;
}

tests::on_both_runners!(endpoints: endpoints_in_process, endpoints_release_binary);

tests::on_both_runners!(error_statuses: error_statuses_in_process, error_statuses_release_binary);

/// EIP-2335 keystores from `--keystores-path` with per-keystore password files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keystores_path_release_binary() {
    let secret = test_secret(b"keystore key");
    let key = keystore::ValidatorKey::from_secret_bytes(&secret).expect("valid secret");
    let json =
        keystore::encrypt(&key, "correct horse", keystore::Kdf::Pbkdf2 { c: 16 }).expect("encrypt");
    let s = SignerBuilder::new()
        .keystore("validator-1", json, "correct horse")
        .start(Runner::Binary)
        .await;
    let pk = pubkey_hex(&secret);
    let keys = s.get("/api/v1/eth2/publicKeys").await.json();
    assert!(
        keys.as_array().unwrap().iter().any(|k| k == &json!(pk)),
        "{keys}"
    );
    let sig = s.signature(&pk, &attestation(5, 6, 1)).await;
    assert_eq!(sig.len(), 2 + 192);
    let health = s.get("/healthcheck").await.json();
    let ks = health["checks"][1]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "keystores-bulk-loading")
        .cloned()
        .expect("keystores-bulk-loading check");
    assert_eq!(ks["data"]["keys-loaded"], 1);
    s.stop().await;
}

/// Past `--max-in-flight-signing` a request gets 503 at once; the others sign and the server
/// keeps serving. JSON logs (`--log-format json`) start and serve as text logs do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn excess_sign_requests_get_503_and_json_logs_work() {
    let key = test_secret(b"in flight");
    let pk = pubkey_hex(&key);
    let s = std::sync::Arc::new(
        SignerBuilder::new()
            .raw_keys([key])
            .global_arg("--max-in-flight-signing=1")
            .global_arg("--log-format=json")
            .start(Runner::Binary)
            .await,
    );
    let mut tasks = vec![];
    for i in 0..200u64 {
        let (s, pk) = (s.clone(), pk.clone());
        tasks.push(tokio::spawn(async move {
            let body = json!({"type": "AGGREGATION_SLOT", "fork_info": fork_info(),
                              "aggregation_slot": {"slot": (1000 + i).to_string()}});
            s.sign(&pk, &body).await.status
        }));
    }
    let mut statuses = vec![];
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    let ok = statuses.iter().filter(|&&c| c == 200).count();
    let busy = statuses.iter().filter(|&&c| c == 503).count();
    assert_eq!(ok + busy, 200, "{statuses:?}");
    assert!(ok >= 1 && busy >= 1, "ok {ok}, 503 {busy}");
    assert_still_serving(&s).await;
}

/// Issue 5: exactly one log line per sign request — type, key, slot/epoch, outcome, status and
/// duration — at INFO, refusals at WARN; and the secret key appears in no line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_log_line_per_sign_request_and_no_secret_in_logs() {
    let key = test_secret(b"log lines");
    let pk = pubkey_hex(&key);
    let s = SignerBuilder::new()
        .raw_keys([key])
        .global_arg("--log-format=json")
        .start(Runner::Binary)
        .await;
    assert_eq!(s.sign(&pk, &attestation(4, 5, 1)).await.status, 200);
    assert_eq!(s.sign(&pk, &attestation(4, 5, 2)).await.status, 412);
    let unknown = pubkey_hex(&test_secret(b"not loaded"));
    assert_eq!(s.sign(&unknown, &attestation(4, 5, 1)).await.status, 404);
    assert_eq!(s.sign_raw(&pk, b"{".to_vec(), None).await.status, 400);
    assert_eq!(
        s.sign_raw("0xzz%0Aforged%20line", b"{}".to_vec(), None)
            .await
            .status,
        400
    );

    // The binary writes its log on a background thread: wait for the five lines.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let sign_lines = loop {
        let lines: Vec<serde_json::Value> = s
            .log_lines()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .filter(|v: &serde_json::Value| v["fields"]["message"] == "sign")
            .collect();
        if lines.len() >= 5 || std::time::Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(sign_lines.len(), 5, "{sign_lines:#?}");
    let f = |i: usize| &sign_lines[i]["fields"];
    assert_eq!(sign_lines[0]["level"], "INFO");
    assert_eq!(f(0)["type"], "ATTESTATION");
    assert_eq!(f(0)["pubkey"], pk.as_str());
    assert_eq!(f(0)["epoch"], 5);
    assert_eq!(f(0)["outcome"], "signed");
    assert!(f(0)["duration_us"].as_u64().is_some());
    assert_eq!(sign_lines[1]["level"], "WARN");
    assert_eq!(f(1)["outcome"], "refused");
    assert_eq!(f(1)["status"], 412);
    assert_eq!(f(2)["outcome"], "error");
    assert_eq!(f(2)["status"], 404);
    assert_eq!(f(2)["pubkey"], unknown.as_str());
    assert_eq!(f(3)["status"], 400);
    assert_eq!(f(3)["type"], "unknown");
    // A path that is not a public key is never echoed into the log.
    assert_eq!(f(4)["pubkey"], "(malformed)");

    let secret_hex = hex::encode(key);
    for line in s.log_lines() {
        assert!(
            !line.contains(&secret_hex),
            "secret key in a log line: {line}"
        );
        assert!(
            !line.contains("forged line"),
            "client text in a log line: {line}"
        );
    }
    s.stop().await;
}
