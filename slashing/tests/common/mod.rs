//! Shared test helpers: fresh SQLite files / PostgreSQL schemas and keys.
#![allow(dead_code)]

use std::sync::Arc;

pub mod races;
pub mod sequences;

use slashing::{
    Error, Permit, PostgresStore, Pubkey, Refusal, Root, SlashingProtection, SqliteStore,
};

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

/// The refusal in `r`; panics on anything else.
pub fn refused(r: Result<Permit, Error>) -> Refusal {
    match r {
        Err(Error::Refused(x)) => x,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// An EIP-3076 interchange document (format version 5) under `gvr` with `body` as its `data`.
pub fn interchange(gvr: Root, body: &str) -> String {
    format!(
        r#"{{"metadata":{{"interchange_format_version":"5","genesis_validators_root":"0x{}"}},"data":[{body}]}}"#,
        hex::encode(gvr.0)
    )
}

/// One `data` entry of an interchange document: validator `pk(n)` with these JSON lists.
pub fn entry(n: u64, blocks: &str, atts: &str) -> String {
    format!(
        r#"{{"pubkey":"0x{}","signed_blocks":[{blocks}],"signed_attestations":[{atts}]}}"#,
        hex::encode(pk(n).0)
    )
}

/// A message to sign on chain `GVR`: an attestation `(source, target, root)` or a block
/// `(slot, root)`.
#[derive(Debug, Clone, Copy)]
pub enum Msg {
    Att(u64, u64, Root),
    Block(u64, Root),
}

/// Signs each message for `key` in turn and asserts its verdict.
pub fn expect_verdicts(
    s: &dyn SlashingProtection,
    key: Pubkey,
    steps: &[(Msg, Result<Permit, Refusal>)],
) {
    for (msg, want) in steps {
        let got = sequences::verdict(match *msg {
            Msg::Att(source, target, r) => s.sign_attestation(GVR, key, source, target, r),
            Msg::Block(slot, r) => s.sign_block(GVR, key, slot, r),
        });
        assert_eq!(&got, want, "{key:?}: {msg:?}");
    }
}
