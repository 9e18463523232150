//! `authenticationMode: ENVIRONMENT`: credentials and region from the
//! standard AWS environment variables. A test binary of its own, because
//! it sets process-wide environment variables.

#![cfg(feature = "aws")]

use test_support::moto;

use aws_sdk_secretsmanager::Client;
use keystore::aws::sdk_config;
use keystore::{load_aws_secrets_bulk, load_key_configs, AwsAuth, AwsSecretsBulk, ValidatorKey};
use moto::Moto;

#[test]
fn environment_credentials_and_region() {
    let Some(moto) = Moto::start() else { return };
    // The only test in this binary, so no other thread reads the
    // environment while it changes. No IMDS probing, no real profile.
    let dir = tempfile::tempdir().unwrap();
    let none = dir.path().join("no-such-file");
    for (k, v) in [
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_CONFIG_FILE", none.to_str().unwrap()),
        ("AWS_SHARED_CREDENTIALS_FILE", none.to_str().unwrap()),
    ] {
        std::env::set_var(k, v);
    }
    std::env::remove_var("AWS_PROFILE");
    std::env::remove_var("AWS_SESSION_TOKEN");

    let mut b = [0u8; 32];
    b[0] = 0x33;
    b[31] = 1;
    let key = ValidatorKey::from_secret_bytes(&b).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let config = rt
        .block_on(sdk_config(&AwsAuth::Environment, None, Some(&moto.url)))
        .unwrap();
    rt.block_on(
        Client::new(&config)
            .create_secret()
            .name("env/one")
            .secret_string(hex::encode(b))
            .send(),
    )
    .unwrap();

    // Key config without region or credentials.
    std::fs::write(
        dir.path().join("env.yaml"),
        format!(
            "type: aws-secret\nauthenticationMode: ENVIRONMENT\nsecretName: env/one\n\
             endpointOverride: {}\n",
            moto.url
        ),
    )
    .unwrap();
    let report = load_key_configs(dir.path());
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.keys.len(), 1);
    assert_eq!(report.keys[0].pubkey(), key.pubkey());

    let report = load_aws_secrets_bulk(&AwsSecretsBulk {
        auth: AwsAuth::Environment,
        region: None,
        endpoint_override: Some(moto.url.clone()),
        prefixes: vec!["env/".into()],
        tag_names: vec![],
        tag_values: vec![],
    });
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.keys.len(), 1);
}
