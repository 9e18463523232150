//! A Web3Signer deployment's environment and configuration file, unchanged, through the release
//! binary (issue 17): `WEB3SIGNER_…` variables and `--config-file` keys are options, never
//! ignored in silence.

use tests::body::attestation;
use tests::{pubkey_hex, run_binary_env, test_secret, PgSchema, Runner, SignerBuilder};

/// Started with nothing but what `web3signer` says (key store path, data path, port, network,
/// PostgreSQL URL, given the Web3Signer way), the signer signs on the database named, and that
/// database protects.
async fn signs_on_the_database_named(test: &str, web3signer: fn(SignerBuilder) -> SignerBuilder) {
    let Some(pg) = PgSchema::new(test) else {
        return;
    };
    let data = tempfile::TempDir::new().unwrap();
    let key = test_secret(test.as_bytes());
    let pk = pubkey_hex(&key);
    let builder = SignerBuilder::new()
        .raw_keys([key])
        .network("hoodi")
        .data_dir(data.path())
        .eth2_arg("--slashing-protection-db-url")
        .eth2_arg(&pg.url());
    let s = web3signer(builder).start(Runner::Binary).await;
    assert_eq!(s.sign(&pk, &attestation(1, 2, 1)).await.status, 200);
    assert_eq!(pg.count("signed_attestations"), 1);
    // A double vote against that history is refused.
    assert_eq!(s.sign(&pk, &attestation(1, 2, 9)).await.status, 412);
    assert!(
        !data.path().join("slashing-protection.sqlite").exists(),
        "a local database was made beside the one named"
    );
}

/// Nothing but Web3Signer variables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_web3signer_environment_alone_signs_on_the_database_it_names() {
    signs_on_the_database_named(
        "a_web3signer_environment_alone_signs_on_the_database_it_names",
        SignerBuilder::as_web3signer_env,
    )
    .await;
}

/// Nothing but a Web3Signer configuration file (`--config-file FILE eth2`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_web3signer_config_file_alone_signs_on_the_database_it_names() {
    signs_on_the_database_named(
        "a_web3signer_config_file_alone_signs_on_the_database_it_names",
        SignerBuilder::as_web3signer_config_file,
    )
    .await;
}

/// The case that made this necessary: the database URL in a Web3Signer variable was ignored
/// and the signer started on a fresh local database. Now the URL is used: unreachable, the
/// start fails, and no local database appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_in_a_web3signer_variable_fails_the_start() {
    let data = tempfile::TempDir::new().unwrap();
    let started = SignerBuilder::new()
        .raw_keys([test_secret(b"unreachable")])
        .data_dir(data.path())
        .eth2_arg("--slashing-protection-db-url=postgresql://postgres@127.0.0.1:1/test")
        .as_web3signer_env()
        .try_start(Runner::Binary)
        .await;
    let Err(e) = started else {
        panic!("started although the database named cannot be reached")
    };
    assert!(e.contains("127.0.0.1:1"), "{e}");
    assert!(!data.path().join("slashing-protection.sqlite").exists());
}

#[test]
fn conflicting_and_unsupported_web3signer_variables_stop_the_start() {
    let (code, stderr) = run_binary_env(
        &["eth2"],
        &[
            ("ENSIGN_HTTP_LISTEN_PORT", "19001"),
            ("WEB3SIGNER_HTTP_LISTEN_PORT", "19002"),
        ],
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("ENSIGN_HTTP_LISTEN_PORT")
            && stderr.contains("WEB3SIGNER_HTTP_LISTEN_PORT"),
        "{stderr}"
    );

    // An option ensign does not have: refused by name, as an unknown flag is.
    let (code, stderr) = run_binary_env(
        &["eth2"],
        &[("WEB3SIGNER_ETH2_AZURE_VAULT_ENABLED", "true")],
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("WEB3SIGNER_ETH2_AZURE_VAULT_ENABLED"),
        "{stderr}"
    );

    // A configuration file with a key ensign does not know: refused, naming the line.
    let dir = tempfile::TempDir::new().unwrap();
    let file = dir.path().join("config.yaml");
    std::fs::write(
        &file,
        "http-listen-port: 0\neth2.commit-boost-api-enabled: true\n",
    )
    .unwrap();
    let (code, stderr) = run_binary_env(&["--config-file", file.to_str().unwrap(), "eth2"], &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("line 2") && stderr.contains("eth2.commit-boost-api-enabled"),
        "{stderr}"
    );
    // The file's name from Web3Signer's variable.
    let (code, stderr) = run_binary_env(
        &["eth2"],
        &[("WEB3SIGNER_CONFIG_FILE", file.to_str().unwrap())],
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("line 2"), "{stderr}");

    // A value clap refuses is clap's error, naming the option.
    let (code, stderr) =
        run_binary_env(&["eth2"], &[("WEB3SIGNER_HTTP_LISTEN_PORT", "not-a-port")]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--http-listen-port"), "{stderr}");
}

/// Web3Signer's command-line forms: a boolean's value as the next word (`--metrics-enabled true`),
/// `-l` for `--logging`, `--enable-key-manager-api`, and the allow-list value `all`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web3signer_command_line_forms_are_accepted() {
    let s = SignerBuilder::new()
        .raw_keys([test_secret(b"command line forms")])
        .global_arg("--metrics-enabled")
        .global_arg("true")
        .global_arg("-l")
        .global_arg("DEBUG")
        .global_arg("--http-host-allowlist")
        .global_arg("all")
        .eth2_arg("--enable-key-manager-api")
        .eth2_arg("false")
        .start(Runner::Binary)
        .await;
    assert!(s.metrics_base.is_some(), "--metrics-enabled true");
    assert_eq!(
        s.get_with_host("/upcheck", "evil.example").await.status,
        200
    );
    // `none`: no host at all (so not even the readiness probe: the binary is awaited by its
    // "listening on" line instead).
    let data = tempfile::TempDir::new().unwrap();
    let args: Vec<String> = [
        "--http-listen-port=0",
        "--http-host-allowlist=none",
        "--data-path",
        data.path().to_str().unwrap(),
        "eth2",
    ]
    .map(String::from)
    .to_vec();
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (mut child, addr, _) = tests::spawn_binary_logged(&args, log).await.unwrap();
    let r = reqwest::get(format!("http://{addr}/upcheck"))
        .await
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(r.status().as_u16(), 403);
}

/// `eth2 import` / `eth2 export` with `--from` / `--to` from `WEB3SIGNER_ETH2_IMPORT_FROM` /
/// `WEB3SIGNER_ETH2_EXPORT_TO`, as Web3Signer names them: the history goes in and comes back.
#[test]
fn import_and_export_take_their_files_from_web3signer_s_variables() {
    let dir = tempfile::TempDir::new().unwrap();
    let data = dir.path().join("data");
    let data = ["--data-path", data.to_str().unwrap(), "eth2"];
    let gvr = "0x04700007fabc8282644aed6d1c7c9e21d38a03a0c4ba193f3afe428824b3a673";
    let pk = pubkey_hex(&test_secret(b"interchange"));
    let input = dir.path().join("in.json");
    let interchange = serde_json::json!({
        "metadata": {"interchange_format_version": "5", "genesis_validators_root": gvr},
        "data": [{"pubkey": pk, "signed_blocks": [{"slot": "7"}], "signed_attestations": []}],
    });
    std::fs::write(&input, interchange.to_string()).unwrap();
    let (code, stderr) = run_binary_env(
        &[&data[..], &["import"]].concat(),
        &[("WEB3SIGNER_ETH2_IMPORT_FROM", input.to_str().unwrap())],
    );
    assert_eq!(code, 0, "{stderr}");
    let out = dir.path().join("out.json");
    let (code, stderr) = run_binary_env(
        &[&data[..], &["export"]].concat(),
        &[("WEB3SIGNER_ETH2_EXPORT_TO", out.to_str().unwrap())],
    );
    assert_eq!(code, 0, "{stderr}");
    let exported: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(exported["metadata"]["genesis_validators_root"], gvr);
    assert_eq!(exported["data"][0]["pubkey"], pk.as_str());
}
