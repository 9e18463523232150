//! ensign-host's DynamoDB key source against moto's server: a consistent
//! Scan followed over every page, inactive and malformed items skipped; and
//! the host reconciling a table with its (fake) enclave. Skipped with a
//! notice when moto cannot be installed, unless `ENSIGN_REQUIRE_MOTO` is set.

use test_support::moto;

#[path = "common/host_harness.rs"]
mod harness;

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_kms::config::{Credentials, SharedCredentialsProvider};
use enclave_bridge::control::AwsRegion;
use harness::{holds_exactly, Fixture, Host, TestKey, GOOD_PCR0};
use host::keys::{dynamodb_client, DynamoKeySource};
use test_support::enclave::create_keys_table;

fn region() -> AwsRegion {
    AwsRegion::try_from("us-east-1".to_owned()).unwrap()
}

fn client(moto: &moto::Moto) -> aws_sdk_dynamodb::Client {
    let creds =
        SharedCredentialsProvider::new(Credentials::new("testing", "testing", None, None, "test"));
    dynamodb_client(&region(), creds, Some(&moto.url))
}

async fn put(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    pubkey: &str,
    ciphertext: AttributeValue,
    active: Option<bool>,
) {
    let mut call = client
        .put_item()
        .table_name(table)
        .item("pubkey", AttributeValue::S(pubkey.to_owned()))
        .item("ciphertext", ciphertext)
        .item("added_at", AttributeValue::S("2025-06-01T12:00:00Z".into()));
    if let Some(active) = active {
        call = call.item("active", AttributeValue::Bool(active));
    }
    call.send().await.unwrap();
}

fn pubkey(n: u8) -> String {
    format!("0x{}", format!("{n:02x}").repeat(48))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_follows_every_page_and_keeps_only_active_records() {
    let Some(moto) = moto::Moto::start() else {
        return;
    };
    let client = client(&moto);
    create_keys_table(&client, "validator-keys").await;
    for n in 1..=7u8 {
        put(
            &client,
            "validator-keys",
            &pubkey(n),
            AttributeValue::B(Blob::new(vec![n; 40])),
            Some(true),
        )
        .await;
    }
    for n in 20..=22u8 {
        put(
            &client,
            "validator-keys",
            &pubkey(n),
            AttributeValue::B(Blob::new(vec![n; 40])),
            Some(false),
        )
        .await;
    }
    // No `active` attribute: not active.
    put(
        &client,
        "validator-keys",
        &pubkey(30),
        AttributeValue::B(Blob::new(vec![1])),
        None,
    )
    .await;
    // Ciphertext as a string: malformed, reported, skipped.
    put(
        &client,
        "validator-keys",
        &pubkey(40),
        AttributeValue::S("AAEC".into()),
        Some(true),
    )
    .await;

    // Pages of two items: 12 items need at least six pages.
    let source = DynamoKeySource::new(client.clone(), "validator-keys".into(), Some(2));
    let listing = source.list().await.unwrap();
    assert!(listing.pages >= 6, "only {} pages", listing.pages);
    assert_eq!(listing.records.len(), 7);
    for n in 1..=7u8 {
        let rec = &listing.records[&pubkey(n)];
        assert_eq!(rec.ciphertext.0, vec![n; 40]);
        assert_eq!(rec.pubkey.as_deref(), Some(pubkey(n).as_str()));
    }
    assert_eq!(listing.inactive, 4);
    assert_eq!(listing.problems.len(), 1, "{:?}", listing.problems);
    assert!(listing.problems[0].source.contains(&pubkey(40)));
    assert!(listing.problems[0].reason.contains("binary (B)"));

    // DynamoDB's own page size: the same records.
    let whole = DynamoKeySource::new(client.clone(), "validator-keys".into(), None)
        .list()
        .await
        .unwrap();
    assert_eq!(whole.records.len(), 7);
    assert!(whole.pages < listing.pages);

    // A table that does not exist fails the whole listing (changing nothing).
    let err = DynamoKeySource::new(client, "no-such-table".into(), None)
        .list()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no-such-table"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_reconciles_a_dynamodb_table_with_its_enclave() {
    let Some(moto) = moto::Moto::start() else {
        return;
    };
    let client = client(&moto);
    create_keys_table(&client, "keys").await;
    let fx = Fixture::new().await;
    let (k1, k2, k3) = (TestKey::new(11), TestKey::new(12), TestKey::new(13));
    for k in [&k1, &k2] {
        put(
            &client,
            "keys",
            &k.pubkey,
            AttributeValue::B(Blob::new(fx.ciphertext(k))),
            Some(true),
        )
        .await;
    }

    // The directory source of the harness replaced by the table.
    let mut args = fx.host_args(GOOD_PCR0, 3600);
    let at = args.iter().position(|a| a == "--keys-dir").unwrap();
    args.drain(at..at + 2);
    args.extend([
        "--keys-table".into(),
        "keys".into(),
        "--dynamodb-endpoint".into(),
        moto.url.clone(),
        "--dynamodb-page-size".into(),
        "1".into(),
    ]);
    let mut host = Host::start(args).await;
    host.wait_report(|r| holds_exactly(r, &[&k1, &k2]), "the table's two keys")
        .await;

    // A new item, then SIGHUP: delivered without restarting the enclave.
    let pid = host.report().await.unwrap()["pid"].clone();
    put(
        &client,
        "keys",
        &k3.pubkey,
        AttributeValue::B(Blob::new(fx.ciphertext(&k3))),
        Some(true),
    )
    .await;
    host.sighup();
    let r = host
        .wait_report(|r| holds_exactly(r, &[&k1, &k2, &k3]), "k3 added")
        .await;
    assert_eq!(r["pid"], pid, "the enclave was not restarted");

    // Deactivated: removed.
    client
        .update_item()
        .table_name("keys")
        .key("pubkey", AttributeValue::S(k1.pubkey.clone()))
        .update_expression("SET active = :f")
        .expression_attribute_values(":f", AttributeValue::Bool(false))
        .send()
        .await
        .unwrap();
    host.sighup();
    let r = host
        .wait_report(|r| holds_exactly(r, &[&k2, &k3]), "k1 removed")
        .await;
    assert_eq!(r["pid"], pid);

    let secrets: Vec<String> = [&k1, &k2, &k3]
        .iter()
        .flat_map(|k| k.leak_forms())
        .collect();
    host.assert_not_logged(&secrets);
}
