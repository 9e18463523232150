//! The local multi-instance topology end to end, as docs/local-cluster.md starts it:
//! `scripts/local-cluster` runs two release-binary signers on one PostgreSQL schema behind
//! HAProxy (Debian's package, installed by the script). Through the load balancer: signing works
//! and gives the same signature as either instance; many concurrent conflicting requests spread
//! over both instances give exactly one signature; and `kill -9` of one instance under load loses
//! no slashing record of any signature a client received, never lets a slashable pair through,
//! and the survivor keeps serving behind HAProxy's /upcheck health checks.
//!
//! Needs PostgreSQL (skipped without it unless `ENSIGN_REQUIRE_PG=1`) and HAProxy ("not run"
//! when the script cannot install it, unless `ENSIGN_REQUIRE_HAPROXY=1`).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tests::body::{attestation, block_header, signing_root};
use tests::{binary_path, export_interchange, pubkey_hex, test_secret, PgSchema, SignerBuilder};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("scripts/local-cluster")
}

/// HAProxy present or installed by the script; false (after a "not run" notice) otherwise.
fn haproxy_available(test: &str) -> bool {
    let out = Command::new(script())
        .arg("install")
        .output()
        .expect("run scripts/local-cluster install");
    if out.status.success() {
        return true;
    }
    let why = String::from_utf8_lossy(&out.stderr);
    if std::env::var_os("ENSIGN_REQUIRE_HAPROXY").is_some() {
        panic!("ENSIGN_REQUIRE_HAPROXY is set but HAProxy is unavailable: {why}");
    }
    eprintln!("not run: {test}: HAProxy is unavailable ({why}); set ENSIGN_REQUIRE_HAPROXY=1 to fail instead");
    false
}

/// What every cluster test needs: HAProxy, then a fresh PostgreSQL schema (`None` when either is
/// missing, after the loud notice of the missing one).
fn cluster_prerequisites(test: &str) -> Option<PgSchema> {
    if !haproxy_available(test) {
        return None;
    }
    PgSchema::new(test)
}

/// A cluster started by `scripts/local-cluster start`, stopped (by the script) on drop.
struct Cluster {
    state: tempfile::TempDir,
    env: HashMap<String, String>,
    _keys: tempfile::TempDir,
}

impl Cluster {
    async fn start(keys: &[[u8; 32]], db_url: &str) -> Cluster {
        let keys_dir = tempfile::TempDir::new().unwrap();
        for (i, k) in keys.iter().enumerate() {
            std::fs::write(
                keys_dir.path().join(format!("key-{i}.yaml")),
                format!(
                    "type: file-raw\nkeyType: BLS\nprivateKey: \"0x{}\"\n",
                    hex::encode(k)
                ),
            )
            .unwrap();
        }
        let state = tempfile::TempDir::new().unwrap();
        let bin = binary_path();
        assert!(
            bin.exists(),
            "{} does not exist: build it with `cargo build --release -p server` (or set ENSIGN_BIN)",
            bin.display()
        );
        let mut cmd = Command::new(script());
        cmd.arg("start")
            .arg("--state-dir")
            .arg(state.path())
            .arg("--key-store-path")
            .arg(keys_dir.path())
            .args(["--db-url", db_url])
            .arg("--bin")
            .arg(&bin);
        let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "local-cluster start failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("LB_URL=http://127.0.0.1:"), "{stdout}");
        let env = std::fs::read_to_string(state.path().join("cluster.env"))
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
            .collect();
        Cluster {
            state,
            env,
            _keys: keys_dir,
        }
    }

    fn var(&self, k: &str) -> String {
        self.env
            .get(k)
            .unwrap_or_else(|| panic!("{k} not in cluster.env: {:?}", self.env))
            .clone()
    }

    fn lb(&self) -> String {
        self.var("LB_URL")
    }

    fn pid(&self, i: usize) -> u32 {
        self.var(&format!("ENSIGN_{i}_PID")).parse().unwrap()
    }

    fn stop_blocking(&self) -> String {
        let out = Command::new(script())
            .arg("stop")
            .arg("--state-dir")
            .arg(self.state.path())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// HAProxy's view of each signer: "ensign-1" -> "UP" / "DOWN".
    async fn backend_status(&self, client: &reqwest::Client) -> BTreeMap<String, String> {
        let csv = get_text(client, &format!("{};csv", self.var("STATS_URL"))).await;
        csv.lines()
            .map(|l| l.split(',').collect::<Vec<_>>())
            .filter(|f| f.len() > 17 && f[0] == "ensign" && f[1] != "BACKEND")
            .map(|f| (f[1].to_string(), f[17].to_string()))
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_blocking();
    }
}

/// Whether `pid` runs. An exited process its parent has not reaped yet (a zombie: the script's
/// children are reparented to init, which may reap late) counts as gone.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(") ")
            .map(|(_, rest)| !rest.starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// A client that opens a new connection per request, so HAProxy balances every request.
fn fresh_conn_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

async fn sign(client: &reqwest::Client, base: &str, pk: &str, body: &Value) -> (u16, String) {
    match client
        .post(format!("{base}/api/v1/eth2/sign/{pk}"))
        .header("accept", "application/json")
        .json(body)
        .send()
        .await
    {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.text().await.unwrap_or_default())
        }
        Err(e) => (0, e.to_string()),
    }
}

/// The body of GET `url`.
async fn get_text(client: &reqwest::Client, url: &str) -> String {
    client.get(url).send().await.unwrap().text().await.unwrap()
}

/// Sign requests an instance has answered so far (its `ensign_signing_requests_total`).
async fn signing_requests(client: &reqwest::Client, metrics_url: &str) -> f64 {
    let text = get_text(client, metrics_url).await;
    text.lines()
        .filter(|l| l.starts_with("ensign_signing_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_balancer_signs_and_one_winner_across_instances() {
    let Some(pg) = cluster_prerequisites("load_balancer_signs_and_one_winner_across_instances")
    else {
        return;
    };
    let key = test_secret(b"cluster one winner");
    let pk = pubkey_hex(&key);
    let cluster = Cluster::start(&[key], &pg.url()).await;
    let client = fresh_conn_client();

    // Through the load balancer, and the same signature as an instance gives directly.
    let randao = serde_json::json!({
        "type": "RANDAO_REVEAL", "fork_info": tests::body::fork_info(), "randao_reveal": {"epoch": "7"}
    });
    let (status, body) = sign(&client, &cluster.lb(), &pk, &randao).await;
    assert_eq!(status, 200, "{body}");
    let via_lb: Value = serde_json::from_str(&body).unwrap();
    for i in [1, 2] {
        let (s, b) = sign(
            &client,
            &cluster.var(&format!("ENSIGN_{i}_URL")),
            &pk,
            &randao,
        )
        .await;
        assert_eq!(s, 200, "{b}");
        let direct: Value = serde_json::from_str(&b).unwrap();
        assert_eq!(direct["signature"], via_lb["signature"], "instance {i}");
    }
    assert_eq!(
        client
            .get(format!("{}/upcheck", cluster.lb()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "OK"
    );

    // Many conflicting messages for one validator, all at once, spread over both instances by
    // the load balancer: exactly one is signed, every other one refused.
    let before = [
        signing_requests(&client, &cluster.var("ENSIGN_1_METRICS_URL")).await,
        signing_requests(&client, &cluster.var("ENSIGN_2_METRICS_URL")).await,
    ];
    for (kind, bodies) in [
        (
            "attestations",
            (0..200)
                .map(|i| attestation(10, 20, 1000 + i))
                .collect::<Vec<_>>(),
        ),
        (
            "blocks",
            (0..200).map(|i| block_header(777, 1000 + i)).collect(),
        ),
    ] {
        let mut tasks = vec![];
        for body in bodies {
            let (client, lb, pk) = (client.clone(), cluster.lb(), pk.clone());
            tasks.push(tokio::spawn(async move {
                sign(&client, &lb, &pk, &body).await.0
            }));
        }
        let mut statuses = vec![];
        for t in tasks {
            statuses.push(t.await.unwrap());
        }
        let n = |code: u16| statuses.iter().filter(|&&s| s == code).count();
        assert_eq!(n(200), 1, "{kind}: {statuses:?}");
        assert_eq!(n(412), 199, "{kind}: {statuses:?}");
    }
    let after = [
        signing_requests(&client, &cluster.var("ENSIGN_1_METRICS_URL")).await,
        signing_requests(&client, &cluster.var("ENSIGN_2_METRICS_URL")).await,
    ];
    let served = [after[0] - before[0], after[1] - before[1]];
    eprintln!("conflicting requests answered per instance: {served:?}");
    assert_eq!(served[0] + served[1], 400.0);
    assert!(
        served[0] > 0.0 && served[1] > 0.0,
        "the load balancer must spread the race over both instances: {served:?}"
    );

    // `stop` ends every process it started.
    let pids = [
        cluster.pid(1),
        cluster.pid(2),
        cluster.var("HAPROXY_PID").parse().unwrap(),
    ];
    let said = cluster.stop_blocking();
    assert!(said.contains("stopped"), "{said}");
    for pid in pids {
        assert!(!alive(pid), "pid {pid} still running after stop");
    }
}

/// One record of a signature a client received through the load balancer.
#[derive(Clone)]
struct Received {
    validator: usize,
    body: Value,
    signature: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_one_instance_under_load_loses_no_record() {
    let Some(pg) = cluster_prerequisites("kill9_one_instance_under_load_loses_no_record") else {
        return;
    };
    let keys: Vec<[u8; 32]> = (0..8u8).map(|i| test_secret(&[b'k', b'9', i])).collect();
    let pubkeys: Vec<String> = keys.iter().map(pubkey_hex).collect();
    let cluster = Cluster::start(&keys, &pg.url()).await;
    let client = fresh_conn_client();

    let received = Arc::new(tokio::sync::Mutex::new(Vec::<Received>::new()));
    // Set once HAProxy has taken the killed instance out: what is signed from then on is the
    // survivor serving through the load balancer.
    let down = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let after_down: Arc<Vec<AtomicUsize>> =
        Arc::new((0..keys.len()).map(|_| AtomicUsize::new(0)).collect());
    let failures = Arc::new(AtomicUsize::new(0));

    // One client per validator, advancing one epoch per request through the load balancer. A
    // failed request (the killed instance's in-flight ones) is not retried: its message may or
    // may not be recorded, and the next epoch is a fresh message either way.
    let mut tasks = vec![];
    for (v, pk) in pubkeys.iter().enumerate() {
        let (client, lb, pk) = (client.clone(), cluster.lb(), pk.clone());
        let (received, down, stop, after_down, failures) = (
            received.clone(),
            down.clone(),
            stop.clone(),
            after_down.clone(),
            failures.clone(),
        );
        tasks.push(tokio::spawn(async move {
            for epoch in 1..5_000u64 {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let body = attestation(epoch - 1, epoch, v as u64);
                let was_down = down.load(Ordering::SeqCst);
                let (status, text) = sign(&client, &lb, &pk, &body).await;
                if status != 200 {
                    assert!(
                        status != 412,
                        "validator {v} epoch {epoch}: a fresh, non-conflicting attestation was refused: {text}"
                    );
                    failures.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                let sig: Value = serde_json::from_str(&text).unwrap();
                received.lock().await.push(Received {
                    validator: v,
                    body,
                    signature: sig["signature"].as_str().unwrap().to_string(),
                });
                if was_down {
                    after_down[v].fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }

    let deadline = Instant::now() + Duration::from_secs(180);
    while received.lock().await.len() < 200 {
        assert!(Instant::now() < deadline, "no load through the cluster");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let victim = cluster.pid(1);
    assert!(Command::new("kill")
        .args(["-9", &victim.to_string()])
        .status()
        .unwrap()
        .success());
    let at_kill = received.lock().await.len();

    // HAProxy's /upcheck health checks take the dead instance out and keep the survivor in.
    loop {
        let status = cluster.backend_status(&client).await;
        if status.get("ensign-1").map(String::as_str) == Some("DOWN") {
            assert_eq!(
                status.get("ensign-2").map(String::as_str),
                Some("UP"),
                "{status:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "HAProxy never marked the killed instance DOWN: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    down.store(true, Ordering::SeqCst);

    // The survivor serves every validator through the load balancer from then on.
    while after_down.iter().any(|c| c.load(Ordering::SeqCst) < 25) {
        assert!(
            Instant::now() < deadline,
            "the survivor did not keep serving through the load balancer: {:?}",
            after_down
                .iter()
                .map(|c| c.load(Ordering::SeqCst))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    assert!(!alive(victim));
    let received = received.lock().await.clone();
    eprintln!(
        "kill -9 test: {} signatures received ({at_kill} before the kill), {} requests failed around it",
        received.len(),
        failures.load(Ordering::SeqCst)
    );

    // Every signature a client received is recorded: the survivor re-signs the identical
    // message to the identical signature and refuses a double vote for it.
    let survivor = cluster.var("ENSIGN_2_URL");
    for r in &received {
        let pk = &pubkeys[r.validator];
        let (s, text) = sign(&client, &survivor, pk, &r.body).await;
        assert_eq!(s, 200, "{text}");
        let again: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(again["signature"].as_str(), Some(r.signature.as_str()));
        let source: u64 = r.body["attestation"]["source"]["epoch"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let double = attestation(source, source + 1, 9_999);
        assert_eq!(
            sign(&client, &survivor, pk, &double).await.0,
            412,
            "validator {} target {}",
            r.validator,
            source + 1
        );
    }

    // The shared database's EIP-3076 export lists every received signature's signing root,
    // and holds no slashable pair (no double vote, no surround vote) for any validator.
    let work = tempfile::TempDir::new().unwrap();
    let file = work.path().join("interchange.json");
    let shared_db = SignerBuilder::new()
        .eth2_arg("--slashing-protection-db-url")
        .eth2_arg(&pg.url());
    let doc = export_interchange(&shared_db, work.path(), &file);
    let mut recorded: HashMap<(String, u64), String> = HashMap::new();
    for d in doc["data"].as_array().unwrap() {
        let pk = d["pubkey"].as_str().unwrap().to_string();
        let atts: Vec<(u64, u64, String)> = d["signed_attestations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                (
                    a["source_epoch"].as_str().unwrap().parse().unwrap(),
                    a["target_epoch"].as_str().unwrap().parse().unwrap(),
                    a["signing_root"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        for (i, a) in atts.iter().enumerate() {
            assert!(a.0 <= a.1, "{pk}: source above target {a:?}");
            for b in &atts[i + 1..] {
                assert!(a.1 != b.1, "{pk}: double vote {a:?} / {b:?}");
                // EIP-3076 / is_slashable_attestation_data: one vote surrounds the other.
                let surrounds =
                    |x: &(u64, u64, String), y: &(u64, u64, String)| x.0 < y.0 && y.1 < x.1;
                assert!(
                    !surrounds(a, b) && !surrounds(b, a),
                    "{pk}: surround vote {a:?} / {b:?}"
                );
            }
            recorded.insert((pk.clone(), a.1), a.2.clone());
        }
    }
    for r in &received {
        let target: u64 = r.body["attestation"]["target"]["epoch"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let root = const_hex::encode_prefixed(signing_root(&r.body));
        assert_eq!(
            recorded.get(&(pubkeys[r.validator].clone(), target)),
            Some(&root),
            "validator {} target {target}",
            r.validator
        );
    }
}
