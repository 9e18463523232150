//! The signer's least-privilege PostgreSQL role (issue 15, finding 3), against the machine's real
//! server: `provision` migrates a schema as the administrator and makes a role that can sign,
//! import, export and prune through the store, but cannot delete history, change the schema, or
//! weaken what is recorded by any statement of its own; and the store names its schema in every
//! statement, so a schema that shadows the tables in the role's `search_path` changes nothing.
//!
//! The server here trusts every local connection, so these tests do not prove the password (the
//! enclave tests deliver it KMS-encrypted); they prove what the role may do once connected.

mod common;

use common::{pg_base_url, pk, root, PgSchema, GVR};
use slashing::{Error, Permit, PostgresOptions, PostgresStore, Refusal, SlashingProtection};

/// A role made for one test, dropped (with its grants) afterwards.
struct Role {
    name: String,
}

impl Drop for Role {
    fn drop(&mut self) {
        if let Ok(mut admin) = postgres::Client::connect(&pg_base_url(), postgres::NoTls) {
            let _ = admin.batch_execute(&format!(
                "DROP SCHEMA IF EXISTS {0} CASCADE; DROP OWNED BY {0}; DROP ROLE IF EXISTS {0}",
                self.name
            ));
        }
    }
}

fn options(schema: &str) -> PostgresOptions {
    PostgresOptions {
        schema: Some(schema.to_string()),
        ..PostgresOptions::default()
    }
}

/// The base URL as `user` (no search_path: the server's default, `"$user", public`).
fn url_as(user: &str) -> String {
    pg_base_url().replacen("postgres@", &format!("{user}@"), 1)
}

const PASSWORD: &str = "a-long-random-role-password-0123456789";

/// `provision_postgres` as the test server's administrator.
fn provision(schema: &str, role: &str, password: &str) -> Result<(), Error> {
    slashing::provision_postgres(&pg_base_url(), None, None, options(schema), role, password)
}

fn provisioned(test: &str) -> Option<(PgSchema, Role)> {
    let schema = PgSchema::new(test)?;
    let role = Role {
        name: format!("{}_signer", schema.name),
    };
    provision(&schema.name, &role.name, PASSWORD).expect("provision");
    Some((schema, role))
}

/// The SQLSTATE of a statement run as `user`, or "ok".
fn outcome(user: &str, sql: &str) -> String {
    let mut c = postgres::Client::connect(&url_as(user), postgres::NoTls).unwrap();
    match c.batch_execute(sql) {
        Ok(()) => "ok".into(),
        Err(e) => e
            .code()
            .map(|c| c.code().to_string())
            .unwrap_or_else(|| e.to_string()),
    }
}

const DENIED: &str = "42501"; // insufficient_privilege
const OWNER_ONLY: &str = "42501";
const GUARDED: &str = "23514"; // check_violation, raised by migration 2's triggers

#[test]
fn the_signer_role_signs_but_cannot_delete_rewrite_or_change_the_schema() {
    let Some((schema, role)) =
        provisioned("the_signer_role_signs_but_cannot_delete_rewrite_or_change_the_schema")
    else {
        return;
    };
    let s = &schema.name.clone();
    // A schema named after the role comes first in its default search_path; filled with empty
    // look-alike tables, it would hide the history from unqualified statements.
    let mut admin = postgres::Client::connect(&pg_base_url(), postgres::NoTls).unwrap();
    admin
        .batch_execute(&format!(
            "CREATE SCHEMA {r} AUTHORIZATION {r}; \
             CREATE TABLE {r}.signed_blocks (LIKE {s}.signed_blocks); \
             CREATE TABLE {r}.low_watermarks (LIKE {s}.low_watermarks); \
             GRANT ALL ON ALL TABLES IN SCHEMA {r} TO {r}",
            r = role.name
        ))
        .unwrap();

    let store =
        PostgresStore::open_with(&url_as(&role.name), None, Some(PASSWORD), options(s)).unwrap();
    assert_eq!(
        store.sign_block(GVR, pk(1), 10, root(1)).unwrap(),
        Permit::New
    );
    assert_eq!(
        store.sign_attestation(GVR, pk(1), 1, 2, root(2)).unwrap(),
        Permit::New
    );
    assert!(matches!(
        store.sign_block(GVR, pk(1), 10, root(3)),
        Err(Error::Refused(Refusal::DoubleBlockProposal))
    ));
    // The history is in the provisioned schema, not the shadow.
    assert_eq!(schema.count("signed_blocks"), 1);
    let shadow: i64 = admin
        .query_one(
            &format!("SELECT COUNT(*) FROM {}.signed_blocks", role.name),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(shadow, 0);
    // Everything the store does works with the role's rights: import (with a conflicting root:
    // an UPDATE to NULL), export, enable/disable, the high watermark, pruning.
    let interchange = store.export_interchange().unwrap();
    let conflicting = interchange.replace(
        &const_hex::encode_prefixed(root(1).0),
        &const_hex::encode_prefixed(root(9).0),
    );
    assert_ne!(interchange, conflicting);
    let summary = store.import_interchange(&conflicting).unwrap();
    assert_eq!(summary.conflicts, 1, "{summary:?}");
    store.set_validator_enabled(pk(2), false).unwrap();
    store.set_validator_enabled(pk(2), true).unwrap();
    store.set_high_watermark(None).unwrap();
    for slot in [20, 30, 40] {
        store.sign_block(GVR, pk(1), slot, root(slot)).unwrap();
    }
    let pruned = store.prune(1, 1).unwrap();
    assert_eq!(pruned.blocks_deleted, 3, "{pruned:?}");
    assert!(store.sign_block(GVR, pk(1), 35, root(35)).is_err());

    let r = &role.name;
    // No deletion, no truncation, no DDL, no switching the guards off.
    for sql in [
        format!("DELETE FROM {s}.signed_blocks"),
        format!("DELETE FROM {s}.signed_attestations"),
        format!("DELETE FROM {s}.low_watermarks"),
        format!("TRUNCATE {s}.signed_attestations"),
        format!("CREATE TABLE {s}.x (i INT)"),
        format!("CREATE FUNCTION {s}.f() RETURNS INT LANGUAGE sql AS 'SELECT 1'"),
        format!("UPDATE {s}.signed_blocks SET slot = slot + 1"),
        format!("UPDATE {s}.validators SET public_key = public_key"),
    ] {
        assert_eq!(outcome(r, &sql), DENIED, "{sql}");
    }
    for sql in [
        format!("DROP TABLE {s}.low_watermarks"),
        format!("ALTER TABLE {s}.signed_blocks DISABLE TRIGGER ensign_guard"),
        format!("DROP TRIGGER ensign_guard ON {s}.low_watermarks"),
    ] {
        assert_eq!(outcome(r, &sql), OWNER_ONLY, "{sql}");
    }
    // What the role may update, it may only make stricter.
    for sql in [
        format!("UPDATE {s}.low_watermarks SET slot = 0"),
        format!("UPDATE {s}.low_watermarks SET source_epoch = NULL, target_epoch = NULL"),
        format!(
            "UPDATE {s}.signed_blocks SET signing_root = '\\x{}'",
            "00".repeat(32)
        ),
        format!(
            "UPDATE {s}.signed_attestations SET signing_root = '\\x{}'",
            "11".repeat(32)
        ),
        format!(
            "UPDATE {s}.metadata SET genesis_validators_root = '\\x{}'",
            "22".repeat(32)
        ),
    ] {
        assert_eq!(outcome(r, &sql), GUARDED, "{sql}");
    }
    assert_eq!(
        outcome(
            r,
            &format!("UPDATE {s}.signed_blocks SET signing_root = NULL")
        ),
        "ok"
    );
    // The pruning functions are the only way to delete, and they raise the watermark first: a
    // role calling one with any bound can only make more messages refused.
    let id: i64 = admin
        .query_one(
            &format!("SELECT id FROM {s}.validators ORDER BY id LIMIT 1"),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        outcome(r, &format!("SELECT {s}.prune_blocks_below({id}, 1000)")),
        "ok"
    );
    assert_eq!(schema.count("signed_blocks"), 0);
    assert!(matches!(
        store.sign_block(GVR, pk(1), 999, root(999)),
        Err(Error::Refused(_))
    ));
    assert_eq!(
        outcome(
            r,
            &format!("SELECT {s}.prune_attestations_below({id}, 1000)")
        ),
        "ok"
    );
    assert!(matches!(
        store.sign_attestation(GVR, pk(1), 500, 999, root(7)),
        Err(Error::Refused(_))
    ));
    // Nobody else may call them.
    assert_eq!(
        outcome(
            "postgres",
            &format!(
                "CREATE ROLE {r}_other LOGIN; SET ROLE {r}_other; \
                 SELECT {s}.prune_blocks_below({id}, 2000)"
            )
        ),
        DENIED
    );
    let _ = admin.batch_execute(&format!("DROP ROLE IF EXISTS {r}_other"));
}

#[test]
fn the_signer_role_cannot_migrate_and_provisioning_refuses_admin_roles() {
    let Some((schema, role)) =
        provisioned("the_signer_role_cannot_migrate_and_provisioning_refuses_admin_roles")
    else {
        return;
    };
    // A schema that is not migrated: the role cannot create it; the error says who can.
    let unmigrated = format!("{}_new", schema.name);
    let err = PostgresStore::open_with(&url_as(&role.name), None, None, options(&unmigrated))
        .err()
        .expect("the role cannot migrate");
    assert!(
        err.to_string().contains("ensign database provision"),
        "{err}"
    );
    // A role that owns an empty schema (but may not create schemas) migrates it itself: no
    // database-wide right is asked for a schema that exists.
    let owned = format!("{}_own", schema.name);
    let mut admin = postgres::Client::connect(&pg_base_url(), postgres::NoTls).unwrap();
    admin
        .batch_execute(&format!(
            "CREATE SCHEMA {owned} AUTHORIZATION {}",
            role.name
        ))
        .unwrap();
    let store = PostgresStore::open_with(&url_as(&role.name), None, None, options(&owned));
    let _ = admin.batch_execute(&format!("DROP SCHEMA {owned} CASCADE"));
    assert!(store.is_ok(), "{:?}", store.err());
    // Provisioning again (a password rotation) keeps the role and its grants working.
    provision(
        &schema.name,
        &role.name,
        "another-long-random-role-password",
    )
    .unwrap();
    let store =
        PostgresStore::open_with(&url_as(&role.name), None, None, options(&schema.name)).unwrap();
    assert_eq!(
        store.sign_block(GVR, pk(3), 1, root(1)).unwrap(),
        Permit::New
    );
    // The administrator itself, and any superuser, are not signer roles.
    let err = provision(&schema.name, "postgres", PASSWORD).unwrap_err();
    assert!(err.to_string().contains("administrator"), "{err}");
    for bad in ["Signer", "a-b", "1x", ""] {
        let err = provision(&schema.name, bad, PASSWORD).unwrap_err();
        assert!(
            err.to_string().contains("not a plain PostgreSQL name"),
            "{err}"
        );
    }
}
