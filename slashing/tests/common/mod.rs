//! Shared test helpers: fresh SQLite files / PostgreSQL schemas and keys.
#![allow(dead_code)]

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

#[allow(unused_imports)] // each test binary uses its own part
pub use test_support::pg::{pg_base_url, PgSchema};

/// Stores over a test schema.
pub trait PgStores {
    fn open(&self) -> PostgresStore;
    fn open_pool(&self, n: usize) -> PostgresStore;
}

impl PgStores for PgSchema {
    fn open(&self) -> PostgresStore {
        PostgresStore::open(&self.url(), None, None).expect("open postgres store")
    }

    fn open_pool(&self, n: usize) -> PostgresStore {
        PostgresStore::open_with_pool_size(&self.url(), None, None, n).expect("open postgres store")
    }
}

pub fn is_ok_new(r: &Result<slashing::Permit, slashing::Error>) -> bool {
    matches!(r, Ok(slashing::Permit::New))
}

/// Keep `dyn` usable in generic helpers.
pub fn as_dyn<S: SlashingProtection>(s: &S) -> &dyn SlashingProtection {
    s
}
