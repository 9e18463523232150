//! Test material (cargo feature `test-util`; never enable in production):
//! a throw-away attestation PKI and [`TestAttestor`], and a [`FakeKms`] that
//! checks Recipient attestation documents and answers with real CMS.
//!
//! Feature `insecure-test-attestor` alone brings only the PKI and attestor
//! (for `ensign --enclave-attestation insecure-test:<dir>`), not the fake KMS.

#[cfg(feature = "test-util")]
mod fake_kms;
mod pki;

#[cfg(feature = "test-util")]
pub use fake_kms::{CmsEncoding, FakeKms, FakeKmsConfig, FakeKmsStats, Tamper};
pub use pki::{
    TestAttestor, TestCert, TestExtension, TestPki, TestPkiOptions, TEST_PKI_FILE, TEST_ROOT_FILE,
};

/// A TCP listener on a free loopback port (`tcp:127.0.0.1:0`), for tests that serve on a real
/// socket; [`Listener::local_endpoint`](crate::Listener::local_endpoint) says where.
#[cfg(feature = "test-util")]
pub async fn loopback_listener() -> crate::Listener {
    crate::Endpoint::Tcp {
        host: "127.0.0.1".into(),
        port: 0,
    }
    .bind()
    .await
    .expect("bind a free loopback port")
}

/// Creates the DynamoDB table ensign-host reads keys from (`--keys-table`): partition key
/// `pubkey` (a string), on-demand billing, as the CDK stack makes it. For tests against moto.
#[cfg(all(feature = "test-util", feature = "host"))]
pub async fn create_keys_table(client: &aws_sdk_dynamodb::Client, table: &str) {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    };
    client
        .create_table()
        .table_name(table)
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("pubkey")
                .key_type(KeyType::Hash)
                .build()
                .expect("key schema"),
        )
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("pubkey")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .expect("attribute definition"),
        )
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await
        .expect("create the keys table");
}
