//! Slashing protection for ensign: EIP-3076 rules, durable stores (SQLite by
//! default, PostgreSQL for several signer instances sharing one database) and
//! the EIP-3076 v5 interchange format.
//!
//! # Invariants
//!
//! * **Durable before release.** `sign_block` / `sign_attestation` return `Ok`
//!   only after the transaction that recorded the message has committed
//!   (SQLite: `synchronous=FULL` in WAL mode; PostgreSQL: `COMMIT` returned).
//!   The server releases a signature only after `Ok`.
//! * **Atomic check-and-insert per validator and duty.** The check and the
//!   insert run in one transaction. SQLite has one writer thread per process
//!   holding `BEGIN IMMEDIATE` plus `locking_mode=EXCLUSIVE` (a second process
//!   cannot open the file); PostgreSQL takes
//!   `pg_advisory_xact_lock(kind, validator_id)` first (kind 1 = blocks,
//!   2 = attestations), so several processes sharing the database can never
//!   both permit conflicting messages.
//! * **Complete history.** Every permitted message is stored with its signing
//!   root; imported entries without a root are stored as NULL, which never
//!   equals any new root. Identical repeats are permitted
//!   ([`Permit::SameAsRecorded`]) without a new row.
//! * **Low watermarks only move up.** Set by the first signed message, raised
//!   by imports (to the imported maximum) and by pruning; anything at or below
//!   them that is not an identical repeat is refused (EIP-3076 conditions 3-5).
//! * **One chain.** The genesis validators root is pinned on first use (first
//!   signing or first import); any other root is refused.
//! * **A refusal is not a fault.** [`Error::Refused`] means "must not sign"
//!   (HTTP 412); [`Error::Store`] / [`Error::Open`] mean the store could not
//!   decide, and nothing may be signed either.
//!
//! The rules themselves are pure functions in [`rules`]; the stores only
//! narrow the history with SQL and apply the verdict.
//!
//! [`MemoryWitness`] wraps any store with an in-memory record of what was
//! permitted since start and refuses conflicts with it whatever the store says
//! (for a database reached through an untrusted party: see [`witness`]).

use std::path::PathBuf;
use std::sync::Arc;

pub mod history_guard;
pub mod interchange;
mod pg_tls;
mod postgres_store;
pub mod rules;
mod sqlite_store;
mod store;
pub mod witness;

pub use postgres_store::{
    check_identifier as check_pg_identifier, provision as provision_postgres, PostgresOptions,
    PostgresStore, DEFAULT_TIMEOUT as DEFAULT_POSTGRES_TIMEOUT,
};
pub use sqlite_store::SqliteStore;
pub use witness::{MemoryWitness, WitnessLimits};

/// 48-byte compressed BLS public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pubkey(pub [u8; 48]);

impl std::fmt::Debug for Pubkey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "0x{}", hex::encode(self.0))
    }
}

/// 32-byte root (signing root or genesis validators root).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Root(pub [u8; 32]);

/// Why a request was refused (HTTP 412), as opposed to a store fault.
/// The Display texts go to logs; the HTTP body is just "Precondition Failed".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Refusal {
    /// The request's (or import's) genesis validators root differs from the
    /// one pinned in the store: the message is for another chain.
    #[error("genesis validators root differs from the one recorded")]
    GenesisValidatorsRootMismatch,
    /// A different (or unknown, NULL-root) block was already signed at this
    /// slot (phase0 `process_proposer_slashing`; EIP-3076 condition 2).
    #[error("double block proposal: another block was signed at this slot")]
    DoubleBlockProposal,
    /// The slot is at or below the validator's block low watermark
    /// (EIP-3076 condition 3).
    #[error("block slot is not above the low watermark")]
    SlotNotAboveLowWatermark,
    /// `source_epoch > target_epoch`: never a valid vote.
    #[error("attestation source epoch exceeds target epoch")]
    SourceExceedsTarget,
    /// A different (or NULL-root) attestation with the same target was signed
    /// (`is_slashable_attestation_data`, double vote; EIP-3076 condition 5).
    #[error("double vote: another attestation was signed for this target")]
    DoubleVote,
    /// The new attestation surrounds a recorded one
    /// (`is_slashable_attestation_data`, surround vote).
    #[error("surrounding vote: the attestation surrounds a recorded one")]
    SurroundingVote,
    /// A recorded attestation surrounds the new one.
    #[error("surrounded vote: a recorded attestation surrounds this one")]
    SurroundedVote,
    /// `source_epoch` is below the low source watermark (EIP-3076 condition 4).
    #[error("attestation source epoch is below the low watermark")]
    SourceBelowLowWatermark,
    /// `target_epoch` is at or below the low target watermark
    /// (EIP-3076 condition 5).
    #[error("attestation target epoch is not above the low watermark")]
    TargetNotAboveLowWatermark,
    /// At or beyond the global high watermark (Web3Signer watermark repair).
    #[error("at or above the high watermark")]
    AtOrAboveHighWatermark,
    /// The validator was disabled (key deleted or unloaded).
    #[error("validator is disabled")]
    ValidatorDisabled,
    /// A slot or epoch above `i64::MAX` cannot be recorded; refusing is safe.
    #[error("slot or epoch too large to record")]
    ValueTooLarge,
}

/// Errors of the slashing crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Signing (or an import) must not happen; not a fault.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The store could not be opened (path, permissions, lock, connection).
    #[error("cannot open slashing protection store: {0}")]
    Open(String),
    /// The store failed while deciding or recording; nothing may be signed.
    #[error("slashing protection store: {0}")]
    Store(String),
    /// Opening the store could lose signing history (a used data directory without its
    /// database, another database in its place, a lost write-ahead log): see
    /// [`history_guard`]. The text says what was found and what to do.
    #[error("refusing to open the slashing protection database: {0}")]
    HistoryAtRisk(String),
    /// An interchange document is malformed or unsupported.
    #[error("slashing protection interchange: {0}")]
    Interchange(String),
}

impl Error {
    /// True for [`Error::Refused`] (HTTP 412), false for faults.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Error::Refused(_))
    }
}

/// Whether the permitted message is new or a repeat of an identical one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    New,
    SameAsRecorded,
}

/// Web3Signer's global high watermark (metadata row): refuse any slot /
/// epoch at or beyond it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HighWatermark {
    pub epoch: Option<u64>,
    pub slot: Option<u64>,
}

/// What an import did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ImportSummary {
    /// Distinct validators in the file.
    pub validators: usize,
    pub blocks_inserted: usize,
    pub attestations_inserted: usize,
    /// Entries identical to what was already recorded.
    pub unchanged: usize,
    /// Entries that conflicted with a recorded one at the same slot/target;
    /// the recorded root became NULL so that nothing can be signed there.
    pub conflicts: usize,
}

/// What a prune did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PruneSummary {
    pub blocks_deleted: u64,
    pub attestations_deleted: u64,
}

/// Where the slashing-protection database lives. `Debug` never prints the password.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// SQLite file (created if missing; its directory must exist). A directory that held a
    /// database never gets a new one unless `init` ([`history_guard`]).
    Sqlite { path: PathBuf, init: bool },
    /// PostgreSQL: `postgresql://…`, `postgres://…` or Web3Signer's
    /// `jdbc:postgresql://host:port/db`; `username` / `password` override the
    /// URL's. `timeout` bounds every wait for the database ([`PostgresOptions::timeout`]).
    Postgres {
        url: String,
        username: Option<String>,
        password: Option<String>,
        timeout: std::time::Duration,
        /// The tables' schema ([`PostgresOptions::schema`]).
        schema: Option<String>,
    },
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreConfig::Sqlite { path, init } => f
                .debug_struct("Sqlite")
                .field("path", path)
                .field("init", init)
                .finish(),
            // The URL may carry a password too (`postgresql://user:pw@host/db`): show only
            // what follows the last '@'.
            StoreConfig::Postgres {
                url,
                username,
                password,
                timeout,
                schema,
            } => f
                .debug_struct("Postgres")
                .field(
                    "url",
                    &url.rsplit_once('@').map_or(url.as_str(), |(_, host)| host),
                )
                .field("username", username)
                .field("password", &password.as_ref().map(|_| "***"))
                .field("timeout", timeout)
                .field("schema", schema)
                .finish(),
        }
    }
}

impl StoreConfig {
    /// True when the store authenticates the database server it talks to: SQLite (a local
    /// file), or PostgreSQL with `sslmode=verify-full` and `sslrootcert` (see the URL forms in
    /// [`PostgresStore`]'s TLS notes). False for PostgreSQL in plaintext or `sslmode=require`,
    /// where whoever relays the bytes could answer in the database's place.
    pub fn server_authenticated(&self) -> bool {
        match self {
            StoreConfig::Sqlite { .. } => true,
            StoreConfig::Postgres { url, .. } => {
                matches!(
                    pg_tls::split_tls(postgres_store::libpq_url(url)),
                    Ok((_, pg_tls::TlsMode::Verified { .. }))
                )
            }
        }
    }

    /// The database user this configuration names itself: the username option, else the URL's
    /// user; `None` for SQLite or when neither names one. (Enclave mode refuses credentials for
    /// any other user: the image, not the parent instance, says whose tables it reads.)
    pub fn configured_user(&self) -> Option<String> {
        match self {
            StoreConfig::Sqlite { .. } => None,
            StoreConfig::Postgres { url, username, .. } => {
                username.clone().or_else(|| postgres_store::url_user(url))
            }
        }
    }
}

/// What a signing check is about (the two slashable kinds, EIP-3076).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    Block {
        slot: u64,
    },
    Attestation {
        source_epoch: u64,
        target_epoch: u64,
    },
}

/// The answer to a check submitted with [`SlashingProtection::submit`]: it resolves once the
/// verdict is known and, for `Ok`, durable. Dropping it does not cancel the check.
pub type PendingVerdict = tokio::sync::oneshot::Receiver<Result<Permit, Error>>;

/// The interface the server signs through. Blocking: call it off the reactor.
pub trait SlashingProtection: Send + Sync + 'static {
    /// Check and record a message of `check`'s kind, blocking. `Ok` ⇒ the record is durable.
    fn decide(
        &self,
        gvr: Root,
        pubkey: Pubkey,
        check: Check,
        signing_root: Root,
    ) -> Result<Permit, Error>;
    /// [`decide`](Self::decide) for a block proposal.
    fn sign_block(
        &self,
        gvr: Root,
        pubkey: Pubkey,
        slot: u64,
        signing_root: Root,
    ) -> Result<Permit, Error> {
        self.decide(gvr, pubkey, Check::Block { slot }, signing_root)
    }
    /// [`decide`](Self::decide) for an attestation.
    fn sign_attestation(
        &self,
        gvr: Root,
        pubkey: Pubkey,
        source_epoch: u64,
        target_epoch: u64,
        signing_root: Root,
    ) -> Result<Permit, Error> {
        let check = Check::Attestation {
            source_epoch,
            target_epoch,
        };
        self.decide(gvr, pubkey, check, signing_root)
    }
    /// Submit a check without blocking the caller: `Some` when the store decides on a thread
    /// of its own (SQLite's writer) and answers through the returned receiver, so an async
    /// caller needs no blocking thread of its own per request; `None` when the store's
    /// decision is a blocking round trip (PostgreSQL): call [`decide`](Self::decide) on a
    /// blocking thread instead. Same verdicts and durability as the blocking methods.
    fn submit(
        &self,
        gvr: Root,
        pubkey: Pubkey,
        check: Check,
        signing_root: Root,
    ) -> Option<PendingVerdict> {
        let _ = (gvr, pubkey, check, signing_root);
        None
    }
    /// A trivial query; `Error::Store` when the database does not answer.
    fn health_check(&self) -> Result<(), Error>;
    /// The global high watermark, if one was set.
    fn high_watermark(&self) -> Result<Option<HighWatermark>, Error>;
    /// Set (or with `None` remove) the global high watermark.
    fn set_high_watermark(&self, hw: Option<HighWatermark>) -> Result<(), Error>;
    /// Import an EIP-3076 v5 document, all or nothing.
    fn import_interchange(&self, json: &str) -> Result<ImportSummary, Error>;
    /// Export everything recorded as an EIP-3076 v5 document.
    fn export_interchange(&self) -> Result<String, Error>;
    /// The pinned genesis validators root, if any.
    fn genesis_validators_root(&self) -> Result<Option<Root>, Error>;
    /// Pin `gvr` if none is pinned yet; `Refused(GenesisValidatorsRootMismatch)`
    /// if another one is (e.g. the server binds the store to its chain at
    /// startup, before any import).
    fn pin_genesis_validators_root(&self, gvr: Root) -> Result<(), Error>;
    /// Enable or disable a validator (disabled ⇒ `ValidatorDisabled` refusals
    /// on every instance sharing the store). Registers it if unknown.
    fn set_validator_enabled(&self, pubkey: Pubkey, enabled: bool) -> Result<(), Error>;
    /// Raise low watermarks to keep only the newest `epochs_to_keep` epochs
    /// per validator (snapped onto a recorded message), then delete below them.
    fn prune(&self, epochs_to_keep: u64, slots_per_epoch: u64) -> Result<PruneSummary, Error>;
}

/// Open (and migrate) the configured store.
pub fn open(config: &StoreConfig) -> Result<Arc<dyn SlashingProtection>, Error> {
    match config {
        StoreConfig::Sqlite { path, init } => Ok(Arc::new(SqliteStore::open_with(path, *init)?)),
        StoreConfig::Postgres {
            url,
            username,
            password,
            timeout,
            schema,
        } => Ok(Arc::new(PostgresStore::open_with(
            url,
            username.as_deref(),
            password.as_deref(),
            PostgresOptions {
                timeout: *timeout,
                schema: schema.clone(),
                ..PostgresOptions::default()
            },
        )?)),
    }
}

#[cfg(test)]
mod debug_tests {
    use super::StoreConfig;

    #[test]
    fn store_config_debug_hides_passwords() {
        let c = StoreConfig::Postgres {
            url: "postgresql://u:hunter2@db:5432/x".into(),
            username: Some("u".into()),
            password: Some("hunter3".into()),
            timeout: crate::DEFAULT_POSTGRES_TIMEOUT,
            schema: None,
        };
        let s = format!("{c:?}");
        assert!(!s.contains("hunter2") && !s.contains("hunter3"), "{s}");
    }
}
