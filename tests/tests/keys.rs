//! Key lifecycle through the release binary: the key manager API (with slashing data, token,
//! restart) and `/reload` picking up added and removed key files without dropping requests.

use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use tests::body::{attestation, GVR};
use tests::{pubkey_hex, test_secret, Runner, SignerBuilder, TestSigner};

async fn km(
    s: &TestSigner,
    method: Method,
    token: Option<&str>,
    body: Option<Value>,
) -> tests::Resp {
    let mut req = s.request(method, "/eth/v1/keystores");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    s.send(req).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_manager_round_trip() {
    let data = tempfile::TempDir::new().unwrap();
    let builder = || {
        SignerBuilder::new()
            .data_dir(data.path())
            .eth2_arg("--key-manager-api-enabled")
    };
    let s = builder().start(Runner::Binary).await;
    let token = std::fs::read_to_string(data.path().join("api-token.txt")).unwrap();
    let token = token.trim();

    assert_eq!(km(&s, Method::GET, None, None).await.status, 401);
    assert_eq!(km(&s, Method::GET, Some("wrong"), None).await.status, 403);
    assert_eq!(
        km(&s, Method::GET, Some(token), None).await.json(),
        json!({"data": []})
    );

    let secret = test_secret(b"key manager");
    let pk = pubkey_hex(&secret);
    let key = keystore::ValidatorKey::from_secret_bytes(&secret).unwrap();
    let ks = keystore::encrypt(&key, "pw", keystore::Kdf::Pbkdf2 { c: 16 }).unwrap();
    let history = json!({
        "metadata": {"interchange_format_version": "5", "genesis_validators_root": GVR},
        "data": [{"pubkey": pk, "signed_blocks": [], "signed_attestations": [{"source_epoch": "5", "target_epoch": "10"}]}]
    });
    let body = json!({"keystores": [ks, ks, "{}"], "passwords": ["pw", "pw", "x"], "slashing_protection": history.to_string()});
    let r = km(&s, Method::POST, Some(token), Some(body)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let statuses: Vec<_> = r.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["status"].clone())
        .collect();
    assert_eq!(
        statuses,
        vec![json!("imported"), json!("duplicate"), json!("error")]
    );
    let wrong = json!({"keystores": [keystore::encrypt(&keystore::ValidatorKey::from_secret_bytes(&test_secret(b"other")).unwrap(), "right", keystore::Kdf::Pbkdf2 { c: 16 }).unwrap()], "passwords": ["wrong"]});
    let r = km(&s, Method::POST, Some(token), Some(wrong)).await;
    assert_eq!(r.json()["data"][0]["status"], "error");

    // The imported history is enforced; newer messages sign.
    assert_eq!(s.sign(&pk, &attestation(9, 10, 1)).await.status, 412);
    assert_eq!(s.sign(&pk, &attestation(10, 11, 1)).await.status, 200);
    let listed = km(&s, Method::GET, Some(token), None).await.json();
    assert_eq!(listed["data"][0]["validating_pubkey"], pk.as_str());
    assert_eq!(listed["data"][0]["readonly"], false);
    s.stop().await;

    // Imported keys survive a restart.
    let s = builder().start(Runner::Binary).await;
    assert_eq!(s.sign(&pk, &attestation(11, 12, 1)).await.status, 200);

    let r = km(
        &s,
        Method::DELETE,
        Some(token),
        Some(json!({"pubkeys": [pk, pubkey_hex(&test_secret(b"never"))]})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let d = r.json();
    assert_eq!(d["data"][0]["status"], "deleted");
    assert_eq!(d["data"][1]["status"], "not_found");
    let exported: Value = serde_json::from_str(d["slashing_protection"].as_str().unwrap()).unwrap();
    let targets: Vec<_> = exported["data"][0]["signed_attestations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["target_epoch"].clone())
        .collect();
    assert!(targets.contains(&json!("12")), "{exported}");
    assert_eq!(
        s.sign(&pk, &attestation(12, 13, 1)).await.status,
        404,
        "deleted key does not sign"
    );
    let again = km(
        &s,
        Method::DELETE,
        Some(token),
        Some(json!({"pubkeys": [pk]})),
    )
    .await
    .json();
    assert_eq!(again["data"][0]["status"], "not_active");
    s.stop().await;

    let s = builder().start(Runner::Binary).await;
    assert_eq!(
        s.sign(&pk, &attestation(12, 13, 1)).await.status,
        404,
        "still gone after restart"
    );
}

async fn wait_reload(s: &TestSigner) -> Value {
    for _ in 0..400 {
        let r = s.get("/reload").await.json();
        if r["status"] != "running" && r["status"] != "idle" {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("reload did not finish");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_picks_up_added_and_removed_keys_without_dropping_requests() {
    let (a, b) = (test_secret(b"reload a"), test_secret(b"reload b"));
    let s = Arc::new(
        SignerBuilder::new()
            .raw_keys([a])
            .start(Runner::Binary)
            .await,
    );
    assert_eq!(s.get("/reload").await.json()["status"], "idle");
    let keys_dir = s.dir().join("keys");
    std::fs::write(
        keys_dir.join("added.yaml"),
        format!("type: file-raw\nprivateKey: \"0x{}\"\n", hex::encode(b)),
    )
    .unwrap();

    // Key A signs continuously while its key file set is reloaded twice.
    let signer = s.clone();
    let pa = pubkey_hex(&a);
    let load = tokio::spawn(async move {
        let mut ok = 0;
        for epoch in 1..200u64 {
            let r = signer.sign(&pa, &attestation(epoch - 1, epoch, 1)).await;
            assert_eq!(r.status, 200, "request dropped during reload: {}", r.body);
            ok += 1;
        }
        ok
    });
    let r = s.send(s.request(Method::POST, "/reload")).await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(wait_reload(&s).await["status"], "completed");
    let pb = pubkey_hex(&b);
    assert_eq!(
        s.sign(&pb, &attestation(1, 2, 1)).await.status,
        200,
        "added key signs after reload"
    );
    assert_eq!(load.await.unwrap(), 199);

    std::fs::remove_file(keys_dir.join("added.yaml")).unwrap();
    assert_eq!(s.send(s.request(Method::POST, "/reload")).await.status, 202);
    let status = wait_reload(&s).await;
    assert_eq!(status["status"], "completed");
    assert!(
        status["lastOperationTime"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{status}"
    );
    assert_eq!(
        s.sign(&pb, &attestation(2, 3, 1)).await.status,
        404,
        "removed key no longer signs"
    );
    let keys = s.get("/api/v1/eth2/publicKeys").await.json();
    assert_eq!(keys, json!([pubkey_hex(&a)]));
}

/// Key manager edge cases found by probing the release binary (issue 14): deleting on a database
/// that has recorded nothing yet (no genesis validators root), a read-only key in a delete, a
/// lowercase `bearer` scheme, and slashing history sent with keystores that are not imported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_manager_history_only_for_imported_keys_and_delete_on_an_empty_database() {
    let data = tempfile::TempDir::new().unwrap();
    let loaded = test_secret(b"read-only key");
    let pk = pubkey_hex(&loaded);
    let s = SignerBuilder::new()
        .raw_keys([loaded])
        .data_dir(data.path())
        .eth2_arg("--key-manager-api-enabled")
        .start(Runner::Binary)
        .await;
    let token = std::fs::read_to_string(data.path().join("api-token.txt")).unwrap();
    let token = token.trim();

    // The scheme name is case-insensitive (RFC 9110 §11.1).
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let req = s
            .request(Method::GET, "/eth/v1/keystores")
            .header("authorization", format!("{scheme} {token}"));
        assert_eq!(s.send(req).await.status, 200, "scheme {scheme}");
    }

    // Nothing recorded yet: a delete still answers 200 with a valid EIP-3076 document (the
    // network's genesis validators root, no data), and the read-only key gets its own status.
    let never = pubkey_hex(&test_secret(b"never loaded"));
    let r = km(
        &s,
        Method::DELETE,
        Some(token),
        Some(json!({"pubkeys": [pk, never]})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let d = r.json();
    assert_eq!(d["data"][0]["status"], "error", "{d}");
    assert!(
        d["data"][0]["message"]
            .as_str()
            .unwrap()
            .contains("read-only"),
        "{d}"
    );
    assert_eq!(d["data"][1]["status"], "not_found", "{d}");
    let doc: Value = serde_json::from_str(d["slashing_protection"].as_str().unwrap()).unwrap();
    assert_eq!(
        doc,
        json!({"metadata": {"interchange_format_version": "5", "genesis_validators_root": GVR}, "data": []})
    );

    // History sent along with keystores that are not imported is not applied: a wrong password
    // (error), then the right one for a key that is already loaded (duplicate).
    let key = keystore::ValidatorKey::from_secret_bytes(&loaded).unwrap();
    let ks = keystore::encrypt(&key, "right", keystore::Kdf::Pbkdf2 { c: 16 }).unwrap();
    let history = |target: u64| {
        json!({
            "metadata": {"interchange_format_version": "5", "genesis_validators_root": GVR},
            "data": [{"pubkey": pk, "signed_blocks": [],
                "signed_attestations": [{"source_epoch": (target - 1).to_string(), "target_epoch": target.to_string()}]}]
        })
        .to_string()
    };
    for (password, status, target) in [("wrong", "error", 10), ("right", "duplicate", 20)] {
        let body = json!({"keystores": [ks], "passwords": [password], "slashing_protection": history(target)});
        let r = km(&s, Method::POST, Some(token), Some(body)).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["data"][0]["status"], status, "{}", r.body);
    }
    // Had either history been applied, target 7 would be at or below its low watermark.
    assert_eq!(
        s.sign(&pk, &attestation(6, 7, 1)).await.status,
        200,
        "the loaded key's history was changed by keystores that were not imported"
    );
    s.stop().await;
}
