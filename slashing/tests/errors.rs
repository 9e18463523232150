//! Opening failures are clear `Error::Open` messages, never panics.

mod common;

use slashing::{open, Error, SqliteStore, StoreConfig};

fn open_msg(config: StoreConfig) -> String {
    match open(&config) {
        Err(e @ Error::Open(_)) => e.to_string(),
        Err(other) => panic!("expected Error::Open, got {other:?}"),
        Ok(_) => panic!("expected an error opening {config:?}"),
    }
}

#[test]
fn sqlite_missing_parent_directory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("does-not-exist").join("slashing.sqlite");
    let msg = open_msg(StoreConfig::Sqlite {
        path: path.clone(),
        init: false,
    });
    assert!(msg.contains("does not exist"), "{msg}");
    assert!(msg.contains("does-not-exist"), "{msg}");
    assert!(
        !path.parent().unwrap().exists(),
        "must not create directories"
    );
}

#[test]
fn sqlite_parent_is_a_regular_file() {
    // Tests run as root, so a read-only directory would still be writable:
    // a path under a regular file fails for everyone.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let msg = open_msg(StoreConfig::Sqlite {
        path: file.join("slashing.sqlite"),
        init: false,
    });
    assert!(msg.contains("not a directory"), "{msg}");
}

#[test]
fn sqlite_path_is_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let msg = open_msg(StoreConfig::Sqlite {
        path: dir.path().to_path_buf(),
        init: false,
    });
    assert!(msg.contains("is a directory"), "{msg}");
}

#[test]
fn sqlite_not_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("garbage.sqlite");
    std::fs::write(&path, vec![0x42u8; 8192]).unwrap();
    let msg = open_msg(StoreConfig::Sqlite { path, init: false });
    assert!(msg.contains("garbage.sqlite"), "{msg}");
}

#[test]
fn sqlite_second_open_is_refused_while_locked() {
    let db = common::SqliteDb::new();
    let msg = match SqliteStore::open(&db.path()) {
        Err(e @ Error::Open(_)) => e.to_string(),
        other => panic!(
            "second open must fail while the first holds the lock: {:?}",
            other.err()
        ),
    };
    assert!(msg.contains("locked"), "{msg}");
    // After the first store is gone the file opens again.
    let path = db.path();
    let common::SqliteDb { dir, store } = db;
    drop(store);
    SqliteStore::open(&path).unwrap();
    drop(dir);
}

#[test]
fn sqlite_creates_file_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.sqlite");
    {
        let s = open(&StoreConfig::Sqlite {
            path: path.clone(),
            init: false,
        })
        .unwrap();
        s.pin_genesis_validators_root(common::GVR).unwrap();
        s.health_check().unwrap();
    }
    assert!(path.exists());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "database file must be owner-only");
    }
    let s = open(&StoreConfig::Sqlite { path, init: false }).unwrap();
    assert_eq!(s.genesis_validators_root().unwrap(), Some(common::GVR));
}

#[test]
fn postgres_closed_port() {
    let started = std::time::Instant::now();
    let msg = open_msg(StoreConfig::Postgres {
        url: "postgresql://postgres@127.0.0.1:1/test".into(),
        username: None,
        password: None,
        timeout: slashing::DEFAULT_POSTGRES_TIMEOUT,
        schema: None,
    });
    assert!(msg.contains("cannot connect"), "{msg}");
    assert!(msg.contains("127.0.0.1:1"), "{msg}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

#[test]
fn postgres_password_is_not_echoed() {
    let msg = open_msg(StoreConfig::Postgres {
        url: "jdbc:postgresql://127.0.0.1:1/test".into(),
        username: Some("postgres".into()),
        password: Some("s3cret-pw".into()),
        timeout: slashing::DEFAULT_POSTGRES_TIMEOUT,
        schema: None,
    });
    assert!(msg.contains("cannot connect"), "{msg}");
    assert!(!msg.contains("s3cret-pw"), "{msg}");
}

#[test]
fn postgres_bad_urls() {
    for url in ["mysql://x/y", "127.0.0.1:5432/test", "jdbc:mysql://x/y", ""] {
        let msg = open_msg(StoreConfig::Postgres {
            url: url.into(),
            username: None,
            password: None,
            timeout: slashing::DEFAULT_POSTGRES_TIMEOUT,
            schema: None,
        });
        assert!(msg.contains("PostgreSQL URL"), "{url}: {msg}");
    }
}

#[test]
fn postgres_url_forms() {
    let Some(schema) = common::PgSchema::new("postgres_url_forms") else {
        return;
    };
    let url = schema.url(); // postgresql://postgres@127.0.0.1:5432/test?options=...
    let Some(rest) = url.strip_prefix("postgresql://postgres@") else {
        eprintln!("SKIPPED: postgres_url_forms needs a postgresql://postgres@… test URL");
        return;
    };
    for (u, user) in [
        (format!("postgres://postgres@{rest}"), None),
        (
            format!("jdbc:postgresql://{rest}"),
            Some("postgres".to_string()),
        ),
    ] {
        let s = open(&StoreConfig::Postgres {
            url: u.clone(),
            username: user,
            password: None,
            timeout: slashing::DEFAULT_POSTGRES_TIMEOUT,
            schema: None,
        })
        .unwrap_or_else(|e| panic!("{u}: {e}"));
        s.health_check().unwrap();
    }
}

#[test]
fn show_messages() {
    // Printed for the record (cargo test -- --nocapture).
    let dir = tempfile::tempdir().unwrap();
    for c in [
        StoreConfig::Sqlite {
            path: dir.path().join("nope/x.sqlite"),
            init: false,
        },
        StoreConfig::Postgres {
            url: "postgresql://postgres@127.0.0.1:1/test".into(),
            username: None,
            password: None,
            timeout: slashing::DEFAULT_POSTGRES_TIMEOUT,
            schema: None,
        },
        StoreConfig::Postgres {
            url: "mysql://x".into(),
            username: None,
            password: None,
            timeout: slashing::DEFAULT_POSTGRES_TIMEOUT,
            schema: None,
        },
    ] {
        eprintln!("{}", open_msg(c));
    }
    let db = common::SqliteDb::new();
    eprintln!("{}", SqliteStore::open(&db.path()).err().unwrap());
}
