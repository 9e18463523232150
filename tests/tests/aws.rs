//! AWS key sources through the release binary, against moto's server on loopback (the real
//! KMS and Secrets Manager APIs; `scripts/moto-server` installs it): a BLS key encrypted with a
//! real KMS `Encrypt` call (`type: aws-kms-encrypted`) and a key in Secrets Manager loaded by
//! Web3Signer's `--aws-secrets-enabled` bulk options both load and sign; a key config whose KMS
//! endpoint is unreachable fails alone.

use test_support::moto;

use base64::Engine;
use serde_json::json;
use tests::body::attestation;
use tests::{pubkey_hex, test_secret, Runner, SignerBuilder};

const REGION: &str = "us-east-1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_and_secrets_manager_keys_sign() {
    let Some(moto) = tokio::task::spawn_blocking(moto::Moto::start)
        .await
        .unwrap()
    else {
        return;
    };
    let auth = keystore::AwsAuth::Specified {
        access_key_id: "testing".into(),
        secret_access_key: zeroize::Zeroizing::new("testing".into()),
    };
    let config = keystore::aws::sdk_config(&auth, Some(REGION), Some(&moto.url))
        .await
        .unwrap();
    let kms = aws_sdk_kms::Client::new(&config);
    let sm = aws_sdk_secretsmanager::Client::new(&config);

    let (kms_secret, sm_secret) = (test_secret(b"kms key"), test_secret(b"secrets manager key"));
    let key_id = tests::create_kms_key(&kms).await;
    let blob = kms
        .encrypt()
        .key_id(&key_id)
        .plaintext(aws_sdk_kms::primitives::Blob::new(kms_secret.to_vec()))
        .send()
        .await
        .unwrap();
    let ciphertext =
        base64::engine::general_purpose::STANDARD.encode(blob.ciphertext_blob().unwrap().as_ref());
    sm.create_secret()
        .name("validators/one")
        .secret_string(format!("0x{}\n", hex::encode(sm_secret)))
        .send()
        .await
        .unwrap();
    sm.create_secret()
        .name("other/ignored")
        .secret_string(hex::encode(test_secret(b"no")))
        .send()
        .await
        .unwrap();

    let closed = moto::free_port();
    let s = SignerBuilder::new()
        .key_config(
            "kms.yaml",
            &format!(
                "type: aws-kms-encrypted\nciphertext: {ciphertext}\nregion: {REGION}\n\
                 authenticationMode: SPECIFIED\naccessKeyId: testing\nsecretAccessKey: testing\n\
                 endpointOverride: {}\n",
                moto.url
            ),
        )
        .key_config(
            "unreachable.yaml",
            &format!(
                "type: aws-kms-encrypted\nciphertext: {ciphertext}\nregion: {REGION}\n\
                 authenticationMode: SPECIFIED\naccessKeyId: testing\nsecretAccessKey: testing\n\
                 endpointOverride: http://127.0.0.1:{closed}\n"
            ),
        )
        .eth2_arg("--aws-secrets-enabled")
        .eth2_arg("--aws-secrets-access-key-id=testing")
        .eth2_arg("--aws-secrets-secret-access-key=testing")
        .eth2_arg(&format!("--aws-secrets-region={REGION}"))
        .eth2_arg("--aws-secrets-prefixes-filter=validators/")
        .eth2_arg(&format!("--aws-endpoint-override={}", moto.url))
        .start(Runner::Binary)
        .await;

    let mut expected = vec![pubkey_hex(&kms_secret), pubkey_hex(&sm_secret)];
    expected.sort();
    assert_eq!(
        s.get("/api/v1/eth2/publicKeys").await.json(),
        json!(expected)
    );
    for pk in &expected {
        assert_eq!(s.sign(pk, &attestation(1, 2, 1)).await.status, 200);
    }
    let health = s.get("/healthcheck").await;
    assert_eq!(
        health.status, 503,
        "the unreachable KMS config is an error: {}",
        health.body
    );
    let groups = health.json()["checks"][1]["checks"].clone();
    let by_id = |id: &str| {
        groups
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == id)
            .cloned()
            .unwrap()
    };
    assert_eq!(
        by_id("config-files-loading")["data"],
        json!({"keys-loaded": 1, "error-count": 1})
    );
    assert_eq!(
        by_id("aws-bulk-loading")["data"],
        json!({"keys-loaded": 1, "error-count": 0})
    );
    s.stop().await;
}
