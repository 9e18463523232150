//! Plain KMS Encrypt/Decrypt against moto's server (a real HTTP KMS stand-in),
//! through this crate's client and `PlainDecryptor`. moto ignores
//! `Recipient` and answers with `Plaintext`, which `RecipientDecryptor` must
//! refuse. Skipped with a notice when moto cannot be installed, unless
//! `ENSIGN_REQUIRE_MOTO` is set (the keystore crate's helper, shared).

use test_support::moto;

use std::collections::BTreeMap;
use std::sync::Arc;

use enclave_bridge::control::{AwsCredentials, EndpointUrl};
use enclave_bridge::kms::{
    kms_client, DecryptRequest, KeyDecryptor, KmsClientConfig, KmsError, PlainDecryptor,
    RecipientDecryptor,
};
use enclave_bridge::secret::SecretString;
use enclave_bridge::test_util::{TestAttestor, TestPki};

#[tokio::test]
async fn plain_encrypt_decrypt_against_moto() {
    let Some(moto) = moto::Moto::start() else {
        return;
    };
    let client = kms_client(&KmsClientConfig {
        region: serde_json::from_value(serde_json::json!("us-east-1")).unwrap(),
        credentials: AwsCredentials {
            access_key_id: "testing".into(),
            secret_access_key: SecretString::new("testing"),
            session_token: None,
            expiration: None,
        },
        endpoint_url: Some(EndpointUrl::try_from(moto.url.clone()).unwrap()),
        resolve_to: None,
        trust_roots_pem: None,
    });
    let key_id = client
        .create_key()
        .description("enclave-bridge test")
        .send()
        .await
        .unwrap()
        .key_metadata
        .unwrap()
        .key_id;
    let secret = [0x42u8; 32];
    let context = BTreeMap::from([("pubkey".to_owned(), "0xa99a".to_owned())]);
    let mut call = client
        .encrypt()
        .key_id(&key_id)
        .plaintext(aws_sdk_kms::primitives::Blob::new(secret));
    for (k, v) in &context {
        call = call.encryption_context(k, v);
    }
    let blob = call
        .send()
        .await
        .unwrap()
        .ciphertext_blob
        .unwrap()
        .into_inner();

    let plain = PlainDecryptor::new(client.clone())
        .decrypt(DecryptRequest::with_context(&blob, Some(&key_id), &context))
        .await
        .unwrap();
    assert_eq!(plain.expose(), secret);

    // Wrong context: refused by KMS, reported as a service error.
    let err = PlainDecryptor::new(client.clone())
        .decrypt(DecryptRequest::new(&blob))
        .await
        .unwrap_err();
    assert!(matches!(err, KmsError::Service { .. }), "{err}");

    // moto ignores Recipient and returns Plaintext: a Recipient decryptor
    // must refuse such an answer rather than use it.
    let pki = Arc::new(TestPki::generate());
    let attestor = TestAttestor::new(pki, [0; 48]);
    let c = client.clone();
    let dec = tokio::task::spawn_blocking(move || RecipientDecryptor::new(c, attestor).unwrap())
        .await
        .unwrap();
    let err = dec
        .decrypt(DecryptRequest::with_context(&blob, Some(&key_id), &context))
        .await
        .unwrap_err();
    assert!(matches!(err, KmsError::UnexpectedPlaintext), "{err}");
}
