//! A sample of the official EIP-3076 interchange tests through the real binary: each step's
//! interchange goes in with `ensign eth2 import`, each attempt is an HTTP sign request. The
//! verdicts must equal those of the `slashing` store itself (which runs all 38 files in its own
//! tests) given the same imports and the same signing roots, and every attempt the vector marks
//! as never safe (`should_succeed_complete: false`) must be refused with 412.
//!
//! Every file with at least one attempt runs. A vector's signing roots cannot be reproduced over
//! HTTP (ours are computed from the request payload), so the attempts carry our own roots and
//! the reference store gets the same ones; a different root can only turn a permitted identical
//! repeat into a refusal, never the reverse, so the never-safe assertion holds as stated. The
//! keys are the public "interop" test keys 0-2.

use std::path::Path;
use std::sync::Arc;

use serde_json::{json, Value};
use slashing::{Pubkey, Root, SlashingProtection, StoreConfig};
use tests::body::signing_root;
use tests::{pubkey_hex, run_binary, Runner, SignerBuilder};

/// Interop keys 0, 1, 2 (public test material of the Ethereum client test networks).
const INTEROP: [&str; 3] = [
    "25295f0d1d592a90b333e26e85149708208e9f8e8bc18f6c77bd62f8ad7a6866",
    "51d0b65185db6989ab0b560d6deed19c7ead0e24b9b6372cbecb1f26bdfad000",
    "315ed405fafe339603932eebe8dbfd650ce5dafa561f6928664c75db85f97857",
];

fn secret(i: usize) -> [u8; 32] {
    let mut k = [0u8; 32];
    hex::decode_to_slice(INTEROP[i], &mut k).unwrap();
    k
}

fn bytes<const N: usize>(v: &Value) -> [u8; N] {
    let mut out = [0u8; N];
    hex::decode_to_slice(v.as_str().unwrap().trim_start_matches("0x"), &mut out).unwrap();
    out
}

fn num(v: &Value) -> u64 {
    v.as_str().unwrap().parse().unwrap()
}

fn fork_info(gvr: &str) -> Value {
    json!({"fork": {"previous_version": "0x05000000", "current_version": "0x05000000", "epoch": "0"},
           "genesis_validators_root": gvr})
}

/// The request for one attempt, and the message data the store sees for it.
fn request(attempt: &Value, block: bool, gvr: &str) -> Value {
    let r = |n: u64| format!("0x{n:064x}");
    if block {
        json!({"type": "BLOCK_V2", "fork_info": fork_info(gvr), "beacon_block": {"version": "ELECTRA",
            "block_header": {"slot": attempt["slot"], "proposer_index": "1", "parent_root": r(7),
                             "state_root": r(8), "body_root": r(9)}}})
    } else {
        let (s, t) = (&attempt["source_epoch"], &attempt["target_epoch"]);
        json!({"type": "ATTESTATION", "fork_info": fork_info(gvr), "attestation": {
            "slot": (num(t) * 32).to_string(), "index": "0", "beacon_block_root": r(5),
            "source": {"epoch": s, "root": r(1)}, "target": {"epoch": t, "root": r(2)}}})
    }
}

async fn run_file(name: &str, test: &Value) -> usize {
    let gvr = test["genesis_validators_root"].as_str().unwrap();
    let data = tempfile::TempDir::new().unwrap();
    let work = tempfile::TempDir::new().unwrap();
    let reference_dir = tempfile::TempDir::new().unwrap();
    let reference: Arc<dyn SlashingProtection> = slashing::open(&StoreConfig::Sqlite {
        path: reference_dir.path().join("ref.sqlite"),
        init: false,
    })
    .unwrap();
    let pin_key = tests::test_secret(b"pins the chain");
    let builder = || {
        SignerBuilder::new()
            .raw_keys((0..3).map(secret).chain([pin_key]))
            .data_dir(data.path())
    };
    // The vectors assume a signer already on the test's chain: pin its genesis validators
    // root with one attestation by a key that is not in the vectors.
    let g = Root(bytes(&test["genesis_validators_root"]));
    reference.pin_genesis_validators_root(g).unwrap();
    let signer = builder().start(Runner::Binary).await;
    let pin = request(
        &json!({"source_epoch": "0", "target_epoch": "0"}),
        false,
        gvr,
    );
    assert_eq!(signer.sign(&pubkey_hex(&pin_key), &pin).await.status, 200);
    signer.stop().await;
    let mut attempts = 0;
    for (i, step) in test["steps"].as_array().unwrap().iter().enumerate() {
        let file = work.path().join(format!("step-{i}.json"));
        std::fs::write(&file, serde_json::to_vec(&step["interchange"]).unwrap()).unwrap();
        let mut args = builder().args_in(work.path());
        args.extend(["import".into(), "--from".into(), file.display().to_string()]);
        let (code, err) = run_binary(&args);
        let expected_ok = reference
            .import_interchange(&serde_json::to_string(&step["interchange"]).unwrap())
            .is_ok();
        assert_eq!(
            code == 0,
            expected_ok,
            "{name} step {i}: import exit {code}: {err}"
        );
        assert_eq!(
            expected_ok,
            step["should_succeed"].as_bool().unwrap(),
            "{name} step {i}: import"
        );

        let signer = builder().start(Runner::Binary).await;
        let blocks = step["blocks"].as_array().unwrap().iter().map(|a| (a, true));
        let atts = step["attestations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| (a, false));
        for (attempt, is_block) in blocks.chain(atts) {
            let pk_hex = attempt["pubkey"].as_str().unwrap();
            let body = request(attempt, is_block, gvr);
            let root = Root(signing_root(&body));
            let pk = Pubkey(bytes(&attempt["pubkey"]));
            let verdict = if is_block {
                reference.sign_block(g, pk, num(&attempt["slot"]), root)
            } else {
                reference.sign_attestation(
                    g,
                    pk,
                    num(&attempt["source_epoch"]),
                    num(&attempt["target_epoch"]),
                    root,
                )
            };
            let got = signer.sign(pk_hex, &body).await.status;
            let want = if verdict.is_ok() { 200 } else { 412 };
            assert_eq!(
                got, want,
                "{name} step {i}: {attempt} (reference: {verdict:?})"
            );
            if attempt["should_succeed_complete"] == json!(false) {
                assert_eq!(
                    got, 412,
                    "{name} step {i}: never-safe attempt signed: {attempt}"
                );
            }
            attempts += 1;
        }
        signer.stop().await;
    }
    attempts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interchange_sample_through_release_binary() {
    for (i, prefix) in ["0xa99a76ed77", "0xb89bebc699", "0xa3a32b0f8b"]
        .iter()
        .enumerate()
    {
        assert!(
            pubkey_hex(&secret(i)).starts_with(prefix),
            "interop key {i}"
        );
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../slashing/tests/vectors/interchange");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.retain(|p| p.extension().is_some_and(|x| x == "json"));
    files.sort();
    let (mut total, mut ran) = (0, 0);
    for path in &files {
        let test: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let has_attempts = test["steps"].as_array().unwrap().iter().any(|s| {
            !s["blocks"].as_array().unwrap().is_empty()
                || !s["attestations"].as_array().unwrap().is_empty()
        });
        if has_attempts {
            total += run_file(&path.file_stem().unwrap().to_string_lossy(), &test).await;
            ran += 1;
        }
    }
    assert!(
        ran >= 25 && total >= 100,
        "only {ran} files / {total} attempts ran"
    );
    eprintln!("{ran} interchange files, {total} attempts through HTTP");
}
