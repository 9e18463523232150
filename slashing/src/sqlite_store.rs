//! SQLite store with group commit.
//!
//! One writer thread owns the only connection. Callers send jobs over a
//! channel and block on a per-request reply channel. The writer takes every
//! pending job, runs them in order inside ONE `BEGIN IMMEDIATE` transaction
//! (each job in its own savepoint, so a failing job does not undo the others,
//! and each verdict sees the records of the earlier jobs of the batch),
//! commits once (`synchronous=FULL`: the commit is durable when it returns),
//! and only then answers. If the commit fails, every job of the batch gets
//! `Error::Store`, never `Ok`. So concurrent signings for different
//! validators share one fsync instead of paying one each.
//!
//! `locking_mode=EXCLUSIVE` keeps the file locked for the life of the store:
//! a second process (or a second store in this one) cannot open it, which is
//! what makes the single writer the only decider.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::rules::{LowWatermarks, SignedAttestation, SignedBlock};
use crate::store::{self, sql, LockKind, Txn};
use crate::{
    Error, HighWatermark, ImportSummary, Permit, PruneSummary, Pubkey, Root, SlashingProtection,
};

/// Numbered migrations, applied in order; `schema_version` records the last.
const MIGRATIONS: &[(i64, &str)] = &[(1, include_str!("../migrations/sqlite/0001_init.sql"))];

/// Upper bound of jobs per transaction (keeps a batch's latency bounded).
const MAX_BATCH: usize = 512;

trait Job: Send {
    /// Run inside the batch transaction; true if the job's writes are kept.
    fn run(&mut self, conn: &Connection) -> bool;
    /// Answer the caller once the batch's fate is known.
    fn finish(self: Box<Self>, commit: Result<(), &str>);
}

struct JobImpl<R, F> {
    f: Option<F>,
    result: Option<Result<R, Error>>,
    reply: SyncSender<Result<R, Error>>,
}

impl<R, F> Job for JobImpl<R, F>
where
    R: Send,
    F: FnOnce(&mut SqlTx<'_>) -> Result<R, Error> + Send,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let Some(f) = self.f.take() else { return false };
        let r = f(&mut SqlTx(conn));
        let ok = r.is_ok();
        self.result = Some(r);
        ok
    }

    fn finish(self: Box<Self>, commit: Result<(), &str>) {
        let out = match (self.result, commit) {
            // A result is released only after the commit covering it returned.
            (Some(Ok(v)), Ok(())) => Ok(v),
            (Some(Err(e)), _) => Err(e),
            (Some(Ok(_)), Err(msg)) | (None, Err(msg)) => Err(Error::Store(msg.to_owned())),
            (None, Ok(())) => Err(Error::Store("request was not executed".into())),
        };
        // The caller may have gone away; nothing to do then.
        let _ = self.reply.send(out);
    }
}

/// The SQLite slashing-protection store (see the module docs).
pub struct SqliteStore {
    sender: Option<Sender<Box<dyn Job>>>,
    writer: Option<JoinHandle<()>>,
    commits: Arc<AtomicU64>,
    path: Option<PathBuf>,
}

fn open_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Open(format!("SQLite database {}: {e}", path.display()))
}

impl SqliteStore {
    /// Open or create the database file. Its directory must exist.
    pub fn open(path: &Path) -> Result<Self, Error> {
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        match std::fs::metadata(&parent) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(open_err(
                    path,
                    format!("{} is not a directory", parent.display()),
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(open_err(
                    path,
                    format!("directory {} does not exist", parent.display()),
                ))
            }
            Err(e) => {
                return Err(open_err(
                    path,
                    format!("cannot access directory {}: {e}", parent.display()),
                ))
            }
        }
        if path.is_dir() {
            return Err(open_err(path, "is a directory"));
        }
        let existed = path.exists();
        let conn = Connection::open(path).map_err(|e| open_err(path, e))?;
        let store = Self::start(conn, Some(path.to_path_buf()))?;
        #[cfg(unix)]
        if !existed {
            // Signing history is private to the operator (as Lighthouse does).
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| open_err(path, format!("setting permissions: {e}")))?;
        }
        Ok(store)
    }

    /// A private in-memory database (tests, tools).
    pub fn open_in_memory() -> Result<Self, Error> {
        let conn = Connection::open_in_memory()
            .map_err(|e| Error::Open(format!("SQLite in memory: {e}")))?;
        Self::start(conn, None)
    }

    fn start(mut conn: Connection, path: Option<PathBuf>) -> Result<Self, Error> {
        let shown = path.clone().unwrap_or_else(|| PathBuf::from(":memory:"));
        let e = |e: rusqlite::Error| {
            let hint = if matches!(
                e.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseBusy)
            ) {
                " (another process holds the database open)"
            } else {
                ""
            };
            open_err(&shown, format!("{e}{hint}"))
        };
        // Fail fast on a file held by someone else rather than waiting.
        conn.busy_timeout(Duration::from_millis(500)).map_err(e)?;
        // EXCLUSIVE before WAL: no shared-memory index, the lock is held for
        // the life of the connection (one process decides).
        conn.pragma_update(None, "locking_mode", "EXCLUSIVE")
            .map_err(e)?;
        if path.is_some() {
            let mode: String = conn
                .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
                .map_err(e)?;
            if !mode.eq_ignore_ascii_case("wal") {
                return Err(open_err(
                    &shown,
                    format!("could not enable WAL (journal_mode={mode})"),
                ));
            }
        }
        // FULL: a commit is on stable storage when COMMIT returns, which is
        // the durability the server relies on before releasing a signature.
        conn.pragma_update(None, "synchronous", "FULL").map_err(e)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(e)?;
        migrate(&mut conn).map_err(|err| match err {
            Error::Store(m) => open_err(&shown, m),
            other => other,
        })?;

        let commits = Arc::new(AtomicU64::new(0));
        let (sender, receiver) = mpsc::channel::<Box<dyn Job>>();
        let c = Arc::clone(&commits);
        let writer = std::thread::Builder::new()
            .name("slashing-sqlite-writer".into())
            .spawn(move || writer_loop(conn, receiver, c))
            .map_err(|err| Error::Open(format!("spawning the SQLite writer thread: {err}")))?;
        Ok(SqliteStore {
            sender: Some(sender),
            writer: Some(writer),
            commits,
            path,
        })
    }

    /// Number of committed write transactions so far (group-commit metric).
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// The database file (None when in memory).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    fn submit<R, F>(&self, f: F) -> Result<R, Error>
    where
        R: Send + 'static,
        F: FnOnce(&mut SqlTx<'_>) -> Result<R, Error> + Send + 'static,
    {
        let (reply, answer) = mpsc::sync_channel(1);
        let job = Box::new(JobImpl {
            f: Some(f),
            result: None,
            reply,
        });
        let sender = self
            .sender
            .as_ref()
            .ok_or_else(|| Error::Store("store is closed".into()))?;
        sender
            .send(job)
            .map_err(|_| Error::Store("SQLite writer thread has stopped".into()))?;
        answer
            .recv()
            .map_err(|_| Error::Store("SQLite writer thread stopped before answering".into()))?
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // Closing the channel ends the writer loop after pending jobs ran.
        drop(self.sender.take());
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

fn migrate(conn: &mut Connection) -> Result<(), Error> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Exclusive)
        .map_err(db)?;
    tx.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        .map_err(db)?;
    let current: i64 = tx
        .query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_version",
            [],
            |r| r.get(0),
        )
        .map_err(db)?;
    let latest = MIGRATIONS.last().map_or(0, |m| m.0);
    if current > latest {
        return Err(Error::Store(format!(
            "schema version {current} is newer than this build supports ({latest})"
        )));
    }
    for (n, text) in MIGRATIONS.iter().filter(|(n, _)| *n > current) {
        tx.execute_batch(text)
            .map_err(|e| Error::Store(format!("migration {n}: {e}")))?;
        tx.execute("INSERT INTO schema_version (version) VALUES (?1)", [n])
            .map_err(db)?;
    }
    tx.commit().map_err(db)
}

fn writer_loop(mut conn: Connection, rx: Receiver<Box<dyn Job>>, commits: Arc<AtomicU64>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        run_batch(&mut conn, batch, &commits);
    }
}

fn run_batch(conn: &mut Connection, mut batch: Vec<Box<dyn Job>>, commits: &AtomicU64) {
    let fail_all = |batch: Vec<Box<dyn Job>>, msg: String| {
        for j in batch {
            j.finish(Err(&msg));
        }
    };
    let mut tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => return fail_all(batch, format!("sqlite: BEGIN IMMEDIATE: {e}")),
    };
    for job in batch.iter_mut() {
        let sp = match tx.savepoint() {
            Ok(sp) => sp,
            Err(e) => {
                // `tx` rolls back when dropped on return.
                return fail_all(batch, format!("sqlite: SAVEPOINT: {e}"));
            }
        };
        if job.run(&sp) {
            if let Err(e) = sp.commit() {
                return fail_all(batch, format!("sqlite: RELEASE: {e}"));
            }
        }
        // Not kept: dropping the savepoint rolls it back.
    }
    match tx.commit() {
        Ok(()) => {
            commits.fetch_add(1, Ordering::Relaxed);
            for j in batch {
                j.finish(Ok(()));
            }
        }
        Err(e) => fail_all(
            batch,
            format!("sqlite: COMMIT failed, nothing recorded: {e}"),
        ),
    }
}

fn db(e: rusqlite::Error) -> Error {
    Error::Store(format!("sqlite: {e}"))
}

/// [`Txn`] over the writer's connection (inside the batch savepoint).
pub(crate) struct SqlTx<'a>(&'a Connection);

impl SqlTx<'_> {
    fn rows<T>(
        &self,
        sql: &str,
        p: impl rusqlite::Params,
        f: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>, Error> {
        let mut st = self.0.prepare_cached(sql).map_err(db)?;
        let it = st.query_map(p, f).map_err(db)?;
        it.collect::<Result<Vec<_>, _>>().map_err(db)
    }

    fn exec(&self, sql: &str, p: impl rusqlite::Params) -> Result<usize, Error> {
        self.0
            .prepare_cached(sql)
            .map_err(db)?
            .execute(p)
            .map_err(db)
    }
}

type BlockRow = (i64, Option<Vec<u8>>);
type AttRow = (i64, i64, Option<Vec<u8>>);

fn blocks(rows: Vec<BlockRow>) -> Result<Vec<SignedBlock>, Error> {
    rows.into_iter()
        .map(|(slot, r)| {
            Ok(SignedBlock {
                slot: store::to_u64(slot)?,
                signing_root: store::root_from_bytes(r)?,
            })
        })
        .collect()
}

fn atts(rows: Vec<AttRow>) -> Result<Vec<SignedAttestation>, Error> {
    rows.into_iter()
        .map(|(s, t, r)| {
            Ok(SignedAttestation {
                source_epoch: store::to_u64(s)?,
                target_epoch: store::to_u64(t)?,
                signing_root: store::root_from_bytes(r)?,
            })
        })
        .collect()
}

impl Txn for SqlTx<'_> {
    fn gvr(&mut self) -> Result<Option<Root>, Error> {
        let r: Option<Option<Vec<u8>>> = self
            .0
            .prepare_cached(sql::GVR)
            .map_err(db)?
            .query_row([], |r| r.get(0))
            .optional()
            .map_err(db)?;
        store::root_from_bytes(r.flatten())
    }

    fn insert_gvr_if_absent(&mut self, gvr: Root) -> Result<(), Error> {
        self.exec(sql::INSERT_GVR, params![gvr.0.as_slice()])
            .map(drop)
    }

    fn high_watermark(&mut self) -> Result<Option<HighWatermark>, Error> {
        let r: Option<(Option<i64>, Option<i64>)> = self
            .0
            .prepare_cached(sql::HIGH)
            .map_err(db)?
            .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .map_err(db)?;
        Ok(match r {
            Some((e, s)) if e.is_some() || s.is_some() => Some(HighWatermark {
                epoch: store::opt_u64(e)?,
                slot: store::opt_u64(s)?,
            }),
            _ => None,
        })
    }

    fn set_high_watermark(&mut self, hw: Option<HighWatermark>) -> Result<(), Error> {
        let hw = hw.unwrap_or_default();
        let (e, s) = (store::opt_i64(hw.epoch)?, store::opt_i64(hw.slot)?);
        self.exec(sql::SET_HIGH, params![e, s]).map(drop)
    }

    fn validator_id(&mut self, pk: &Pubkey) -> Result<i64, Error> {
        let found: Option<i64> = self
            .0
            .prepare_cached(sql::VALIDATOR_ID)
            .map_err(db)?
            .query_row([pk.0.as_slice()], |r| r.get(0))
            .optional()
            .map_err(db)?;
        if let Some(id) = found {
            return Ok(id);
        }
        self.0
            .prepare_cached(sql::INSERT_VALIDATOR)
            .map_err(db)?
            .query_row([pk.0.as_slice()], |r| r.get(0))
            .map_err(db)
    }

    fn lock(&mut self, _kind: LockKind, _id: i64) -> Result<(), Error> {
        // The batch transaction is BEGIN IMMEDIATE on an exclusively locked
        // file with a single writer: already serialised.
        Ok(())
    }

    fn enabled(&mut self, id: i64) -> Result<bool, Error> {
        self.0
            .prepare_cached(sql::ENABLED)
            .map_err(db)?
            .query_row([id], |r| r.get(0))
            .map_err(db)
    }

    fn set_enabled(&mut self, id: i64, enabled: bool) -> Result<(), Error> {
        self.exec(sql::SET_ENABLED, params![id, enabled]).map(drop)
    }

    fn blocks_at(&mut self, id: i64, slot: i64) -> Result<Vec<SignedBlock>, Error> {
        blocks(self.rows(sql::BLOCKS_AT, params![id, slot], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?)
    }

    fn relevant_attestations(
        &mut self,
        id: i64,
        source: i64,
        target: i64,
    ) -> Result<Vec<SignedAttestation>, Error> {
        atts(
            self.rows(sql::RELEVANT_ATTS, params![id, source, target], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?,
        )
    }

    fn low(&mut self, id: i64) -> Result<LowWatermarks, Error> {
        let r: Option<(Option<i64>, Option<i64>, Option<i64>)> = self
            .0
            .prepare_cached(sql::LOW)
            .map_err(db)?
            .query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()
            .map_err(db)?;
        match r {
            Some((a, b, c)) => store::low_from_row(a, b, c),
            None => Ok(LowWatermarks::default()),
        }
    }

    fn set_low(&mut self, id: i64, low: LowWatermarks) -> Result<(), Error> {
        let slot = store::opt_i64(low.slot)?;
        let s = store::opt_i64(low.epochs.map(|e| e.0))?;
        let t = store::opt_i64(low.epochs.map(|e| e.1))?;
        self.exec(sql::SET_LOW, params![id, slot, s, t]).map(drop)
    }

    fn insert_block(&mut self, id: i64, slot: i64, root: Option<Root>) -> Result<(), Error> {
        self.exec(
            sql::INSERT_BLOCK,
            params![id, slot, root.map(|r| r.0.to_vec())],
        )
        .map(drop)
    }

    fn set_block_root(&mut self, id: i64, slot: i64, root: Option<Root>) -> Result<(), Error> {
        self.exec(
            sql::SET_BLOCK_ROOT,
            params![id, slot, root.map(|r| r.0.to_vec())],
        )
        .map(drop)
    }

    fn insert_attestation(
        &mut self,
        id: i64,
        source: i64,
        target: i64,
        root: Option<Root>,
    ) -> Result<(), Error> {
        self.exec(
            sql::INSERT_ATT,
            params![id, source, target, root.map(|r| r.0.to_vec())],
        )
        .map(drop)
    }

    fn set_attestation_root(
        &mut self,
        id: i64,
        target: i64,
        root: Option<Root>,
    ) -> Result<(), Error> {
        self.exec(
            sql::SET_ATT_ROOT,
            params![id, target, root.map(|r| r.0.to_vec())],
        )
        .map(drop)
    }

    fn validators(&mut self) -> Result<Vec<(i64, Pubkey)>, Error> {
        self.rows(sql::VALIDATORS, [], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
        })?
        .into_iter()
        .map(|(id, pk)| Ok((id, store::pubkey_from_bytes(pk)?)))
        .collect()
    }

    fn all_blocks(&mut self, id: i64) -> Result<Vec<SignedBlock>, Error> {
        blocks(self.rows(sql::ALL_BLOCKS, [id], |r| Ok((r.get(0)?, r.get(1)?)))?)
    }

    fn all_attestations(&mut self, id: i64) -> Result<Vec<SignedAttestation>, Error> {
        atts(self.rows(sql::ALL_ATTS, [id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?)
    }

    fn delete_blocks_below(&mut self, id: i64, slot: i64) -> Result<u64, Error> {
        self.exec(sql::DELETE_BLOCKS_BELOW, params![id, slot])
            .map(|n| n as u64)
    }

    fn delete_attestations_below(&mut self, id: i64, target: i64) -> Result<u64, Error> {
        self.exec(sql::DELETE_ATTS_BELOW, params![id, target])
            .map(|n| n as u64)
    }

    fn health(&mut self) -> Result<(), Error> {
        self.0
            .query_row("SELECT 1", [], |r| r.get::<_, i64>(0))
            .map_err(db)
            .map(drop)
    }
}

impl SlashingProtection for SqliteStore {
    fn sign_block(
        &self,
        gvr: Root,
        pubkey: Pubkey,
        slot: u64,
        signing_root: Root,
    ) -> Result<Permit, Error> {
        self.submit(move |tx| store::sign_block(tx, gvr, pubkey, slot, signing_root))
    }

    fn sign_attestation(
        &self,
        gvr: Root,
        pubkey: Pubkey,
        source_epoch: u64,
        target_epoch: u64,
        signing_root: Root,
    ) -> Result<Permit, Error> {
        self.submit(move |tx| {
            store::sign_attestation(tx, gvr, pubkey, source_epoch, target_epoch, signing_root)
        })
    }

    fn health_check(&self) -> Result<(), Error> {
        self.submit(|tx| tx.health())
    }

    fn high_watermark(&self) -> Result<Option<HighWatermark>, Error> {
        self.submit(|tx| tx.high_watermark())
    }

    fn set_high_watermark(&self, hw: Option<HighWatermark>) -> Result<(), Error> {
        self.submit(move |tx| tx.set_high_watermark(hw))
    }

    fn import_interchange(&self, json: &str) -> Result<ImportSummary, Error> {
        // Parse outside the writer thread; a bad file never reaches the DB.
        let parsed = crate::interchange::parse(json)?;
        self.submit(move |tx| store::import(tx, &parsed))
    }

    fn export_interchange(&self) -> Result<String, Error> {
        self.submit(|tx| store::export(tx))
    }

    fn genesis_validators_root(&self) -> Result<Option<Root>, Error> {
        self.submit(|tx| tx.gvr())
    }

    fn pin_genesis_validators_root(&self, gvr: Root) -> Result<(), Error> {
        self.submit(move |tx| store::check_gvr(tx, gvr))
    }

    fn set_validator_enabled(&self, pubkey: Pubkey, enabled: bool) -> Result<(), Error> {
        self.submit(move |tx| store::set_enabled(tx, pubkey, enabled))
    }

    fn prune(&self, epochs_to_keep: u64, slots_per_epoch: u64) -> Result<PruneSummary, Error> {
        self.submit(move |tx| store::prune(tx, epochs_to_keep, slots_per_epoch))
    }
}
