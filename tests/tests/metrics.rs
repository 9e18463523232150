//! Prometheus metrics through the release binary: a sign, a refusal, an unknown key and a
//! malformed request move the right counters; the route label is the template, never a pubkey;
//! `promtool check metrics` accepts the output.

use std::io::Write;
use std::process::{Command, Stdio};

use tests::body::attestation;
use tests::{pubkey_hex, test_secret, Runner, SignerBuilder};

/// The value of the sample line starting with `series` (exact series text incl. labels).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_and_promtool_accepts_the_output() {
    let key = test_secret(b"metrics");
    let pk = pubkey_hex(&key);
    let s = SignerBuilder::new()
        .raw_keys([key])
        .global_arg("--metrics-enabled")
        .global_arg("--metrics-port=0")
        .start(Runner::Binary)
        .await;
    let metrics_url = format!(
        "{}/metrics",
        s.metrics_base.clone().expect("metrics listener logged")
    );
    let scrape = || async {
        reqwest::get(&metrics_url)
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };

    assert_eq!(s.sign(&pk, &attestation(1, 2, 1)).await.status, 200);
    assert_eq!(s.sign(&pk, &attestation(1, 2, 2)).await.status, 412);
    assert_eq!(
        s.sign(&pubkey_hex(&test_secret(b"absent")), &attestation(1, 2, 1))
            .await
            .status,
        404
    );
    assert_eq!(
        s.sign_raw(&pk, b"{not json".to_vec(), Some("application/json"))
            .await
            .status,
        400
    );

    let text = scrape().await;
    let att = r#"{type="ATTESTATION""#;
    assert_eq!(
        sample(
            &text,
            &format!(r#"ensign_signing_requests_total{att},outcome="signed"}}"#)
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            &format!(r#"ensign_signing_requests_total{att},outcome="refused"}}"#)
        ),
        1.0
    );
    assert_eq!(
        sample(&text, "eth2_slashingprotection_prevented_signings_total"),
        1.0
    );
    assert_eq!(
        sample(&text, "eth2_slashingprotection_permitted_signings_total"),
        1.0
    );
    assert_eq!(
        sample(&text, "signing_bls_missing_identifier_count_total"),
        1.0
    );
    assert_eq!(sample(&text, "http_bls_malformed_request_count_total"), 1.0);
    assert_eq!(sample(&text, "signing_signers_loaded_count"), 1.0);
    assert!(text.contains("signing_bls_signing_duration"), "{text}");
    assert!(text
        .contains(r#"eth2_slashingprotection_database_duration{signingOperation="attestation""#));
    assert!(
        text.contains(r#"route="/api/v1/eth2/sign/{identifier}""#),
        "{text}"
    );
    assert!(
        !text.contains(pk.trim_start_matches("0x")),
        "a public key leaked into a label"
    );

    match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(mut child) => {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            let said = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            // Two of Web3Signer's names break Prometheus' naming conventions; they are kept so
            // that Web3Signer dashboards work (docs/metrics.md). Anything else fails the test,
            // and so does any parse error.
            let known = [
                "signing_signers_loaded_count non-histogram and non-summary metrics should not have \"_count\" suffix",
                "eth2_slashingprotection_database_duration label names should be written in 'snake_case' not 'camelCase'",
            ];
            let unexpected: Vec<&str> = said
                .lines()
                .filter(|l| !l.trim().is_empty() && !known.contains(&l.trim()))
                .collect();
            assert!(unexpected.is_empty(), "promtool check metrics: {said}");
            assert!(
                out.status.success() || !said.trim().is_empty(),
                "promtool failed silently"
            );
        }
        Err(e) if std::env::var_os("ENSIGN_REQUIRE_PROMTOOL").is_some() => {
            panic!("promtool is required: {e}")
        }
        Err(e) => eprintln!(
            "SKIPPED: promtool check metrics ({e}); install Debian's `prometheus` package"
        ),
    }
    s.stop().await;
}
