//! Stand-ins for the enclave deployment's surroundings: a fake KMS ([`crate::fake_kms`]), a free
//! loopback listener for control and data ports, and the DynamoDB keys table as the CDK stack
//! makes it (for tests against moto).

/// A TCP listener on a free loopback port (`tcp:127.0.0.1:0`), for tests that serve on a real
/// socket; `Listener::local_endpoint` says where.
pub async fn loopback_listener() -> enclave_bridge::Listener {
    enclave_bridge::Endpoint::Tcp {
        host: "127.0.0.1".into(),
        port: 0,
    }
    .bind()
    .await
    .expect("bind a free loopback port")
}

/// Creates the DynamoDB table ensign-host reads keys from (`--keys-table`): partition key
/// `pubkey` (a string), on-demand billing, as the CDK stack makes it. For tests against moto.
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
