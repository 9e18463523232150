//! TLS to PostgreSQL, against the machine's real server (Debian enables `ssl` with its
//! "snakeoil" certificate for `localhost`): `sslmode=require` encrypts, `verify-full` with the
//! server's certificate as `sslrootcert` encrypts and authenticates (reaching it by `hostaddr`
//! while checking the name `localhost`), and a wrong CA or a name the certificate does not hold
//! is refused before anything is sent. Whether a session really is encrypted is read from the
//! server's own `pg_stat_ssl`, found by a unique `application_name`.
//!
//! `tests/data/unrelated-ca.pem` is a throwaway self-signed CA made for this test (its key was
//! discarded).

mod common;

use common::PgSchema;
use slashing::{PostgresStore, Pubkey, Root, SlashingProtection};

/// The server's certificate file and whether TLS is on; `None` (with a notice) when it is off.
fn server_tls(schema: &PgSchema) -> Option<String> {
    let mut admin = postgres::Client::connect(&schema.url(), postgres::NoTls).unwrap();
    let on: String = admin.query_one("SHOW ssl", &[]).unwrap().get(0);
    if on != "on" {
        eprintln!("NOT RUN: postgres_tls: the PostgreSQL server has ssl=off");
        return None;
    }
    Some(admin.query_one("SHOW ssl_cert_file", &[]).unwrap().get(0))
}

/// Is the session named `app` encrypted, per the server?
fn encrypted(schema: &PgSchema, app: &str) -> bool {
    let mut admin = postgres::Client::connect(&schema.url(), postgres::NoTls).unwrap();
    let rows = admin
        .query(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name = $1",
            &[&app],
        )
        .unwrap();
    assert!(!rows.is_empty(), "no session named {app}");
    rows.iter().all(|r| r.get::<_, bool>(0))
}

fn sign_one(store: &PostgresStore) {
    let permit = store
        .sign_attestation(Root([1; 32]), Pubkey([7; 48]), 1, 2, Root([9; 32]))
        .unwrap();
    assert_eq!(permit, slashing::Permit::New);
}

#[test]
fn require_and_verify_full_encrypt_and_a_wrong_server_is_refused() {
    let Some(schema) = PgSchema::new("postgres_tls") else {
        return;
    };
    let Some(cert_file) = server_tls(&schema) else {
        return;
    };
    let base = schema.url();
    let id = std::process::id();

    // require: encrypted, certificate not checked (libpq's meaning).
    let app = format!("ensign_tls_require_{id}");
    let store = PostgresStore::open(
        &format!("{base}&sslmode=require&application_name={app}"),
        None,
        None,
    )
    .unwrap();
    sign_one(&store);
    assert!(encrypted(&schema, &app), "sslmode=require did not encrypt");
    drop(store);

    // verify-full: reached at 127.0.0.1, authenticated as `localhost` by the server's own
    // (self-signed) certificate.
    let by_name = base.replacen("@127.0.0.1:", "@localhost:", 1);
    let app = format!("ensign_tls_verified_{id}");
    let url = format!(
        "{by_name}&hostaddr=127.0.0.1&sslmode=verify-full&sslrootcert={cert_file}&application_name={app}"
    );
    let store = PostgresStore::open(&url, None, None).unwrap();
    assert_eq!(
        store
            .sign_attestation(Root([1; 32]), Pubkey([7; 48]), 1, 2, Root([9; 32]))
            .unwrap(),
        slashing::Permit::SameAsRecorded,
        "the verified session sees the same database"
    );
    assert!(encrypted(&schema, &app), "verify-full did not encrypt");
    drop(store);

    // A CA that did not certify the server: refused at open.
    let unrelated = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/unrelated-ca.pem");
    let e = PostgresStore::open(
        &format!("{by_name}&hostaddr=127.0.0.1&sslmode=verify-full&sslrootcert={unrelated}"),
        None,
        None,
    )
    .err()
    .expect("a server certified by another CA must be refused")
    .to_string();
    assert!(e.contains("cannot connect"), "{e}");

    // The right CA but a name the certificate does not hold (the IP): refused too.
    let e = PostgresStore::open(
        &format!("{base}&sslmode=verify-full&sslrootcert={cert_file}"),
        None,
        None,
    )
    .err()
    .expect("a certificate for another name must be refused")
    .to_string();
    assert!(e.contains("cannot connect"), "{e}");
}
