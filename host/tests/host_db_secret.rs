//! ensign-host's database secret (`--db-secret-arn`) against moto's Secrets
//! Manager: an RDS-shaped secret is read (and a new version seen), and a
//! secret of another shape, a binary secret or a missing one each fail with
//! an error naming the ARN and never a value. Skipped with a notice when moto
//! cannot be installed, unless `ENSIGN_REQUIRE_MOTO` is set.

use test_support::moto;

use aws_sdk_kms::config::{Credentials, SharedCredentialsProvider};
use aws_sdk_secretsmanager::primitives::Blob;
use enclave_bridge::control::AwsRegion;
use host::db_secret::{secrets_manager_client, DbSecretError, DbSecretSource};

#[tokio::test]
async fn database_secret_from_moto() {
    let Some(moto) = moto::Moto::start() else {
        return;
    };
    let creds =
        SharedCredentialsProvider::new(Credentials::new("testing", "testing", None, None, "test"));
    let region = AwsRegion::try_from("us-east-1".to_owned()).unwrap();
    let client = secrets_manager_client(&region, creds, Some(&moto.url));
    // Creates a secret; its ARN.
    let create = |name: &'static str, text: Option<&str>, binary: Option<&[u8]>| {
        let request = client
            .create_secret()
            .name(name)
            .set_secret_string(text.map(str::to_owned))
            .set_secret_binary(binary.map(|b| Blob::new(b.to_vec())));
        async move {
            let out = request.send().await.unwrap();
            out.arn().unwrap().to_string()
        }
    };

    // As RDS generates it, with members ensign does not use.
    let rds = r#"{"engine":"postgres","host":"db.internal","port":5432,"dbname":"ensign","username":"ensign","password":"pw:@/%?#1"}"#;
    let arn = create("ensign/slashing-db", Some(rds), None).await;
    let source = DbSecretSource::new(client.clone(), arn.clone());
    let c = source.fetch().await.unwrap();
    assert_eq!(
        (c.username.as_str(), c.password.in_clear().unwrap().expose()),
        ("ensign", "pw:@/%?#1")
    );
    // Rotation: the current version is read each time.
    client
        .put_secret_value()
        .secret_id(&arn)
        .secret_string(r#"{"username":"ensign","password":"pw2"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(
        source
            .fetch()
            .await
            .unwrap()
            .password
            .in_clear()
            .unwrap()
            .expose(),
        "pw2"
    );

    let plain = create("plain", Some("hunter2-not-json"), None).await;
    let e = DbSecretSource::new(client.clone(), plain.clone())
        .fetch()
        .await
        .unwrap_err();
    assert!(matches!(e, DbSecretError::Shape { .. }), "{e}");
    let text = e.to_string();
    assert!(text.contains(&plain) && !text.contains("hunter2"), "{text}");

    let binary = create("binary", None, Some(b"hunter2")).await;
    let e = DbSecretSource::new(client.clone(), binary.clone())
        .fetch()
        .await
        .unwrap_err();
    assert_eq!(e, DbSecretError::NotText { arn: binary });

    let missing = arn.replace("slashing-db", "nonexistent");
    let e = DbSecretSource::new(client.clone(), missing.clone())
        .fetch()
        .await
        .unwrap_err();
    assert!(matches!(e, DbSecretError::Fetch { .. }), "{e}");
    assert!(e.to_string().contains(&missing), "{e}");
}
