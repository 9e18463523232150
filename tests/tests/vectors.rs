//! Signatures for every type, fork and network equal an independent implementation's.
//!
//! The vectors under `tests/vectors/signing/` were produced by Lodestar's published packages
//! (`tests/vectors/generator/`). With `ENSIGN_VECTORS_DIR` set (CI does so with a fresh random
//! seed), the same check also runs on that directory against the release binary.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tests::{Runner, SignerBuilder};

fn committed_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("vectors")
        .join("signing")
}

fn hex32(s: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s.trim_start_matches("0x"), &mut out).expect("32-byte hex secret");
    out
}

/// Runs every case of one vector file through a signer started with `runner`; returns the
/// number of cases checked.
async fn run_file(path: &Path, runner: Runner) -> usize {
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let network = doc["network"].as_str().expect("network");
    let cases = doc["cases"].as_array().expect("cases");
    assert!(!cases.is_empty(), "{} has no cases", path.display());
    let keys = cases
        .iter()
        .map(|c| hex32(c["secret_key"].as_str().unwrap()));
    // Slashing protection stays on: every case has its own key, so nothing is slashable.
    let signer = SignerBuilder::new()
        .network(network)
        .raw_keys(keys)
        .start(runner)
        .await;
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let pubkey = case["pubkey"].as_str().unwrap();
        let expected = case["signature"].as_str().unwrap();
        let mut request = case["request"].clone();

        // JSON response, no signingRoot.
        let got = signer.sign(pubkey, &request).await;
        assert_eq!(got.status, 200, "{network} {name}: {}", got.body);
        assert_eq!(
            got.json()["signature"].as_str(),
            Some(expected),
            "{network} {name} (json)"
        );

        // Bare text response (no Accept header, as Teku sends), with the signingRoot cross-check.
        request["signingRoot"] = case["signing_root"].clone();
        let text = signer
            .sign_raw(pubkey, serde_json::to_vec(&request).unwrap(), None)
            .await;
        assert_eq!(text.status, 200, "{network} {name}: {}", text.body);
        assert!(
            text.content_type.starts_with("text/plain"),
            "{name}: {}",
            text.content_type
        );
        assert_eq!(text.body, expected, "{network} {name} (text)");
    }
    signer.stop().await;
    cases.len()
}

fn vector_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        // The generator writes the network table beside the vectors.
        .filter(|p| p.file_name().is_some_and(|n| n != "networks.json"))
        .collect();
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_vectors_in_process() {
    let files = vector_files(&committed_dir());
    assert!(
        files.len() >= 5,
        "expected one vector file per built-in network"
    );
    let mut total = 0;
    for f in &files {
        total += run_file(f, Runner::InProcess).await;
    }
    eprintln!("checked {total} committed vectors in {} files", files.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_vectors_against_release_binary() {
    let Some(dir) = std::env::var_os("ENSIGN_VECTORS_DIR") else {
        eprintln!("ENSIGN_VECTORS_DIR not set: fresh random vectors not checked in this run");
        return;
    };
    let files = vector_files(Path::new(&dir));
    assert!(!files.is_empty(), "no vector files in {dir:?}");
    let mut total = 0;
    for f in &files {
        total += run_file(f, Runner::Binary).await;
    }
    eprintln!("checked {total} fresh vectors against the release binary");
}

/// Every type and every fork the issue names is covered by the committed vectors.
#[test]
fn committed_vectors_cover_every_type_and_fork() {
    let mut seen = std::collections::BTreeSet::new();
    for f in vector_files(&committed_dir()) {
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
        for c in doc["cases"].as_array().unwrap() {
            let name = c["name"].as_str().unwrap();
            let mut parts = name.split('/');
            seen.insert((
                parts.next().unwrap().to_string(),
                parts.next().unwrap_or("").to_string(),
            ));
        }
    }
    let forks = [
        "PHASE0",
        "ALTAIR",
        "BELLATRIX",
        "CAPELLA",
        "DENEB",
        "ELECTRA",
        "FULU",
    ];
    let mut missing = vec![];
    let mut need = |t: &str, f: &str| {
        if !seen.contains(&(t.to_string(), f.to_string())) {
            missing.push(format!("{t}/{f}"));
        }
    };
    need("BLOCK", "PHASE0");
    for f in forks {
        for t in [
            "BLOCK_V2",
            "ATTESTATION",
            "AGGREGATION_SLOT",
            "AGGREGATE_AND_PROOF",
            "AGGREGATE_AND_PROOF_V2",
            "RANDAO_REVEAL",
            "VOLUNTARY_EXIT",
        ] {
            need(t, f);
        }
        if f != "PHASE0" {
            for t in [
                "SYNC_COMMITTEE_MESSAGE",
                "SYNC_COMMITTEE_SELECTION_PROOF",
                "SYNC_COMMITTEE_CONTRIBUTION_AND_PROOF",
            ] {
                need(t, f);
            }
        }
    }
    need("DEPOSIT", "NONE");
    need("VALIDATOR_REGISTRATION", "NONE");
    assert!(missing.is_empty(), "no vectors for: {missing:?}");
}

/// ensign's built-in fork schedules equal Lodestar's (`tests/vectors/networks.json`).
#[test]
fn built_in_networks_match_lodestar() {
    use api_spec::network::{Fork, Network};
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("vectors")
        .join("networks.json");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let nets = doc["networks"].as_object().expect("networks");
    for name in Network::BUILT_IN {
        let ours = Network::by_name(name).unwrap();
        let theirs = &nets[name];
        assert_eq!(
            ours.genesis_fork_version().to_string(),
            theirs["genesis_fork_version"].as_str().unwrap(),
            "{name}"
        );
        assert_eq!(
            ours.slots_per_epoch,
            theirs["slots_per_epoch"].as_u64().unwrap(),
            "{name}"
        );
        for fork in &Fork::ALL[1..] {
            let t = &theirs["forks"][fork.name()];
            assert_eq!(
                ours.fork_version(*fork).map(|v| v.to_string()).as_deref(),
                t["version"].as_str(),
                "{name} {fork}"
            );
            assert_eq!(
                ours.fork_epoch(*fork),
                t["epoch"].as_u64(),
                "{name} {fork} epoch"
            );
        }
    }
}
