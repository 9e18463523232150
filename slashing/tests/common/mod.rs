//! Shared test helpers: fresh SQLite files / PostgreSQL schemas and keys.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub mod races;
pub mod sequences;

use slashing::{PostgresStore, Pubkey, Root, SlashingProtection, SqliteStore};

pub const GVR: Root = Root([7; 32]);

/// A distinct pubkey per number.
pub fn pk(n: u64) -> Pubkey {
    let mut b = [0u8; 48];
    b[0] = 0xa0;
    b[40..48].copy_from_slice(&n.to_be_bytes());
    Pubkey(b)
}

/// A distinct root per number (never all-zero for n > 0).
pub fn root(n: u64) -> Root {
    let mut b = [0u8; 32];
    b[24..32].copy_from_slice(&n.to_be_bytes());
    Root(b)
}

/// A temp dir with a fresh SQLite store in it.
pub struct SqliteDb {
    pub dir: tempfile::TempDir,
    pub store: Arc<SqliteStore>,
}

impl SqliteDb {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let store =
            Arc::new(SqliteStore::open(&dir.path().join("slashing.sqlite")).expect("open sqlite"));
        SqliteDb { dir, store }
    }
    pub fn path(&self) -> std::path::PathBuf {
        self.dir.path().join("slashing.sqlite")
    }
}

pub fn pg_base_url() -> String {
    std::env::var("ENSIGN_TEST_PG_URL")
        .unwrap_or_else(|_| "postgresql://postgres@127.0.0.1:5432/test".into())
}

/// A uniquely named schema, dropped on drop. Stores opened with [`url`]
/// see only it (`search_path`).
pub struct PgSchema {
    pub name: String,
    admin: postgres::Client,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

impl PgSchema {
    /// None (after a loud SKIPPED line) if PostgreSQL is unreachable and
    /// `ENSIGN_REQUIRE_PG` is not set; panics if it is set.
    pub fn new(test: &str) -> Option<Self> {
        let url = pg_base_url();
        let mut admin = match postgres::Client::connect(&url, postgres::NoTls) {
            Ok(c) => c,
            Err(e) => {
                if std::env::var_os("ENSIGN_REQUIRE_PG").is_some() {
                    panic!("ENSIGN_REQUIRE_PG is set but PostgreSQL at {url} is unreachable: {e}");
                }
                eprintln!(
                    "SKIPPED: {test}: PostgreSQL at {url} unreachable ({e}); set ENSIGN_REQUIRE_PG=1 to fail instead"
                );
                return None;
            }
        };
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!(
            "ensign_test_{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            nanos
        );
        admin
            .batch_execute(&format!("CREATE SCHEMA {name}"))
            .expect("create schema");
        Some(PgSchema { name, admin })
    }

    /// URL whose connections use only this schema.
    pub fn url(&self) -> String {
        let base = pg_base_url();
        let sep = if base.contains('?') { '&' } else { '?' };
        format!("{base}{sep}options=-c%20search_path%3D{}", self.name)
    }

    pub fn open(&self) -> PostgresStore {
        PostgresStore::open(&self.url(), None, None).expect("open postgres store")
    }

    pub fn open_pool(&self, n: usize) -> PostgresStore {
        PostgresStore::open_with_pool_size(&self.url(), None, None, n).expect("open postgres store")
    }

    pub fn count(&mut self, table: &str) -> i64 {
        self.admin
            .query_one(&format!("SELECT COUNT(*) FROM {}.{table}", self.name), &[])
            .unwrap()
            .get(0)
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let _ = self
            .admin
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name));
    }
}

pub fn is_ok_new(r: &Result<slashing::Permit, slashing::Error>) -> bool {
    matches!(r, Ok(slashing::Permit::New))
}

/// Keep `dyn` usable in generic helpers.
pub fn as_dyn<S: SlashingProtection>(s: &S) -> &dyn SlashingProtection {
    s
}
