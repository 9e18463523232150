//! SQLite store with group commit.
//!
//! One writer thread owns the only connection. Callers send jobs over a
//! channel and wait on a per-request reply (a blocking channel, or a oneshot
//! that wakes an async task directly: `submit`). The writer takes every
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
//!
//! # Fast path
//!
//! Because the writer thread is the only decider, it can keep an in-memory
//! [`Summary`] per validator (maxima of what is recorded, low watermarks,
//! enabled flag, row id) plus the pinned genesis validators root and the high
//! watermark. The cache always equals the database *as seen inside the
//! current transaction*: it is loaded lazily from the database, updated after
//! each write a signing request makes, dropped for a validator whose request
//! failed, cleared entirely by every other writing request (import, prune,
//! enable/disable, high watermark, GVR pin) and by any failed batch. A
//! signing request that is provably `New` from the summary alone (see
//! [`try_fast`]) is decided with one `INSERT` and no savepoint (a single
//! statement is atomic: if it fails, it undoes only itself and only its own
//! request fails). Everything else takes the full path in `store.rs` inside a
//! savepoint, exactly as before.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::history_guard;
use crate::rules::{self, LowWatermarks, SignedAttestation, SignedBlock};
use crate::store::{self, sql, LockKind, Txn};
use crate::{
    Error, HighWatermark, ImportSummary, Permit, PruneSummary, Pubkey, Root, SlashingProtection,
};

/// Numbered migrations, applied in order; `schema_version` records the last.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/sqlite/0001_init.sql")),
    (2, include_str!("../migrations/sqlite/0002_identity.sql")),
];

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
        // The caller may have gone away; nothing to do then.
        let _ = self.reply.send(outcome(self.result, commit));
    }
}

/// What the caller gets once the batch's fate is known.
fn outcome<R>(result: Option<Result<R, Error>>, commit: Result<(), &str>) -> Result<R, Error> {
    match (result, commit) {
        // A result is released only after the commit covering it returned.
        (Some(Ok(v)), Ok(())) => Ok(v),
        (Some(Err(e)), _) => Err(e),
        (Some(Ok(_)), Err(msg)) | (None, Err(msg)) => Err(Error::Store(msg.to_owned())),
        (None, Ok(())) => Err(Error::Store("request was not executed".into())),
    }
}

/// The message a signing request is about.
#[derive(Debug, Clone, Copy)]
enum Duty {
    Block { slot: u64 },
    Attestation { source: u64, target: u64 },
}

/// A signing request (the only kind the fast path can decide).
struct SignJob {
    gvr: Root,
    pubkey: Pubkey,
    duty: Duty,
    signing_root: Root,
    result: Option<Result<Permit, Error>>,
    reply: Reply,
}

/// Where a signing verdict goes: a blocked caller's channel, or an async caller's oneshot
/// (which wakes its task directly: no thread sits blocked per request).
enum Reply {
    Blocking(SyncSender<Result<Permit, Error>>),
    Async(tokio::sync::oneshot::Sender<Result<Permit, Error>>),
}

impl Reply {
    fn send(self, verdict: Result<Permit, Error>) {
        // The caller may have gone away; nothing to do then.
        match self {
            Reply::Blocking(tx) => {
                let _ = tx.send(verdict);
            }
            Reply::Async(tx) => {
                let _ = tx.send(verdict);
            }
        }
    }
}

/// What callers send to the writer thread.
enum Msg {
    Sign(SignJob),
    /// Any other request. `writes`: it may change what the cache summarises
    /// (the whole cache is then dropped after it ran).
    Other {
        job: Box<dyn Job>,
        writes: bool,
    },
}

impl Msg {
    fn finish(self, commit: Result<(), &str>) {
        match self {
            Msg::Sign(j) => j.reply.send(outcome(j.result, commit)),
            Msg::Other { job, .. } => job.finish(commit),
        }
    }
}

/// The SQLite slashing-protection store (see the module docs).
pub struct SqliteStore {
    sender: Option<Sender<Msg>>,
    writer: Option<JoinHandle<()>>,
    commits: Arc<AtomicU64>,
    path: Option<PathBuf>,
}

fn open_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Open(format!("SQLite database {}: {e}", path.display()))
}

impl SqliteStore {
    /// Open or create the database file. Its directory must exist. A directory that held a
    /// database never gets a fresh one implicitly (see [`crate::history_guard`]).
    pub fn open(path: &Path) -> Result<Self, Error> {
        Self::open_with(path, false)
    }

    /// [`open`](Self::open); with `init`, the data-directory rule's refusals become warnings
    /// (`--init-slashing-protection`): a new history is started, or the database found is
    /// accepted as this directory's.
    pub fn open_with(path: &Path, init: bool) -> Result<Self, Error> {
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
                ));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(open_err(
                    path,
                    format!("directory {} does not exist", parent.display()),
                ));
            }
            Err(e) => {
                return Err(open_err(
                    path,
                    format!("cannot access directory {}: {e}", parent.display()),
                ));
            }
        }
        if path.is_dir() {
            return Err(open_err(path, "is a directory"));
        }
        // Before SQLite opens (and would create) the file.
        let disk = history_guard::inspect(path)?;
        if let Err(problem) = history_guard::before_open(&disk) {
            refuse_unless(init, &problem, path)?;
        }
        let existed = disk.db != history_guard::DbFile::Missing;
        let mut conn = Connection::open(path).map_err(|e| open_err(path, e))?;
        prepare(&mut conn, path, true)?;
        begin_session(&mut conn, path, &disk, init)?;
        #[cfg(unix)]
        if !existed {
            // Signing history is private to the operator (as Lighthouse does).
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| open_err(path, format!("setting permissions: {e}")))?;
        }
        Self::start(conn, Some(path.to_path_buf()))
    }

    /// A private in-memory database (tests, tools).
    pub fn open_in_memory() -> Result<Self, Error> {
        let mut conn = Connection::open_in_memory()
            .map_err(|e| Error::Open(format!("SQLite in memory: {e}")))?;
        prepare(&mut conn, Path::new(":memory:"), false)?;
        Self::start(conn, None)
    }

    /// Starts the writer thread on a prepared connection.
    fn start(conn: Connection, path: Option<PathBuf>) -> Result<Self, Error> {
        let commits = Arc::new(AtomicU64::new(0));
        let (sender, receiver) = mpsc::channel::<Msg>();
        let c = Arc::clone(&commits);
        let file = path.is_some();
        let writer = std::thread::Builder::new()
            .name("slashing-sqlite-writer".into())
            .spawn(move || {
                Writer {
                    conn,
                    cache: Cache::default(),
                    commits: c,
                }
                .run(receiver, file)
            })
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

    /// Run `f` in the writer thread; `writes`: `f` may change anything the
    /// writer's cache summarises (GVR, high watermark, validators, history).
    fn submit<R, F>(&self, writes: bool, f: F) -> Result<R, Error>
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
        self.send(Msg::Other { job, writes })?;
        answer
            .recv()
            .map_err(|_| Error::Store("SQLite writer thread stopped before answering".into()))?
    }

    fn submit_sign(
        &self,
        gvr: Root,
        pubkey: Pubkey,
        duty: Duty,
        signing_root: Root,
    ) -> Result<Permit, Error> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.send(Msg::Sign(SignJob {
            gvr,
            pubkey,
            duty,
            signing_root,
            result: None,
            reply: Reply::Blocking(reply),
        }))?;
        answer
            .recv()
            .map_err(|_| Error::Store("SQLite writer thread stopped before answering".into()))?
    }

    fn send(&self, msg: Msg) -> Result<(), Error> {
        self.sender
            .as_ref()
            .ok_or_else(|| Error::Store("store is closed".into()))?
            .send(msg)
            .map_err(|_| Error::Store("SQLite writer thread has stopped".into()))
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

/// Pragmas and migrations on a new connection (`file`: a database file, not in memory).
fn prepare(conn: &mut Connection, shown: &Path, file: bool) -> Result<(), Error> {
    let e = |e: rusqlite::Error| {
        let hint = if matches!(
            e.sqlite_error_code(),
            Some(rusqlite::ErrorCode::DatabaseBusy)
        ) {
            " (another process holds the database open)"
        } else {
            ""
        };
        open_err(shown, format!("{e}{hint}"))
    };
    // Fail fast on a file held by someone else rather than waiting.
    conn.busy_timeout(Duration::from_millis(500)).map_err(e)?;
    // EXCLUSIVE before WAL: no shared-memory index, the lock is held for
    // the life of the connection (one process decides).
    conn.pragma_update(None, "locking_mode", "EXCLUSIVE")
        .map_err(e)?;
    if file {
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(e)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(open_err(
                shown,
                format!("could not enable WAL (journal_mode={mode})"),
            ));
        }
    }
    // FULL: a commit is on stable storage when COMMIT returns, which is
    // the durability the server relies on before releasing a signature.
    conn.pragma_update(None, "synchronous", "FULL").map_err(e)?;
    conn.pragma_update(None, "foreign_keys", "ON").map_err(e)?;
    migrate(conn).map_err(|err| match err {
        Error::Store(m) => open_err(shown, m),
        other => other,
    })?;
    // Every statement the store uses stays prepared (about 30).
    conn.set_prepared_statement_cache_capacity(64);
    Ok(())
}

/// Applies the data-directory rule once the database is open and migrated, then marks the
/// session as running (flag 0, checkpointed into the main file so that losing the `-wal` file
/// later cannot hide it) and writes the directory's marker if it has none.
fn begin_session(
    conn: &mut Connection,
    path: &Path,
    disk: &history_guard::OnDisk,
    init: bool,
) -> Result<(), Error> {
    let (id, clean): (String, Option<bool>) = conn
        .query_row(
            "SELECT database_id, clean_shutdown FROM store_identity WHERE id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(|e| open_err(path, e))?;
    let id = history_guard::DatabaseId::parse(&id)
        .ok_or_else(|| open_err(path, format!("malformed database identity {id:?}")))?;
    let created = disk.db != history_guard::DbFile::Present;
    let identity = history_guard::Identity {
        id: id.clone(),
        last_session_clean: if created { None } else { clean },
    };
    if let Err(problem) = history_guard::after_open(disk, &identity) {
        refuse_unless(init, &problem, path)?;
    }
    conn.execute(
        "UPDATE store_identity SET clean_shutdown = 0 WHERE id = 1",
        [],
    )
    .map_err(|e| open_err(path, e))?;
    let busy: i64 = conn
        .query_row("PRAGMA wal_checkpoint(FULL)", [], |r| r.get(0))
        .map_err(|e| open_err(path, e))?;
    if busy != 0 {
        return Err(open_err(path, "could not checkpoint the write-ahead log"));
    }
    if disk.marker.as_ref() != Some(&id) {
        history_guard::write_marker(path, &id)?;
    }
    if created {
        tracing::info!(database = %path.display(), identity = %id,
            "created a new slashing-protection database (empty history)");
    } else if disk.marker.is_none() {
        tracing::info!(database = %path.display(), identity = %id,
            "slashing-protection database marked as this directory's (marker written)");
    }
    Ok(())
}

/// A refusal of the data-directory rule, or (with `init`) a warning and on.
fn refuse_unless(init: bool, problem: &history_guard::Problem, path: &Path) -> Result<(), Error> {
    let text = history_guard::explain(problem, path);
    if init {
        tracing::warn!("--init-slashing-protection: going on although: {text}");
        Ok(())
    } else {
        Err(Error::HistoryAtRisk(text))
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

/// The pinned genesis validators root and the global high watermark.
#[derive(Debug, Clone, Copy)]
struct Meta {
    gvr: Option<Root>,
    high: Option<HighWatermark>,
}

/// What the writer knows about one registered validator, equal to the
/// database as seen inside the current transaction.
#[derive(Debug, Clone, Copy)]
struct Summary {
    id: i64,
    enabled: bool,
    /// Highest recorded block slot (None: no block recorded).
    max_slot: Option<u64>,
    /// Highest recorded source and highest recorded target; taken
    /// independently (they may come from different rows).
    max_source: Option<u64>,
    max_target: Option<u64>,
    low: LowWatermarks,
}

/// The writer thread's cache (see the module docs for when it is dropped).
#[derive(Default)]
struct Cache {
    meta: Option<Meta>,
    validators: HashMap<Pubkey, Summary>,
}

/// One validator's summary from the database (with `sql::LOW`); no row if
/// not registered. Each MAX is a single index seek. (No LEFT JOIN with
/// `low_watermarks`: SQLite re-prepares such a statement in every
/// transaction, which costs more than a second query.)
const SUMMARY: &str = "SELECT v.id, v.enabled, \
    (SELECT MAX(slot) FROM signed_blocks WHERE validator_id = v.id), \
    (SELECT MAX(source_epoch) FROM signed_attestations WHERE validator_id = v.id), \
    (SELECT MAX(target_epoch) FROM signed_attestations WHERE validator_id = v.id) \
    FROM validators v WHERE v.public_key = ?1";

type SummaryRow = (i64, bool, Option<i64>, Option<i64>, Option<i64>);

impl Cache {
    fn clear(&mut self) {
        self.meta = None;
        self.validators.clear();
    }

    fn meta(&mut self, conn: &Connection) -> Result<Meta, Error> {
        if let Some(m) = self.meta {
            return Ok(m);
        }
        let mut tx = SqlTx(conn);
        let m = Meta {
            gvr: tx.gvr()?,
            high: tx.high_watermark()?,
        };
        self.meta = Some(m);
        Ok(m)
    }

    fn summary(&mut self, conn: &Connection, pk: &Pubkey) -> Result<Option<&mut Summary>, Error> {
        use std::collections::hash_map::Entry;
        match self.validators.entry(*pk) {
            Entry::Occupied(e) => Ok(Some(e.into_mut())),
            Entry::Vacant(e) => {
                let row: Option<SummaryRow> = conn
                    .prepare_cached(SUMMARY)
                    .map_err(db)?
                    .query_row([pk.0.as_slice()], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                    })
                    .optional()
                    .map_err(db)?;
                // Unregistered: the full path registers it (not cached until
                // then, so that a refused first request leaves nothing).
                let Some((id, enabled, max_slot, max_s, max_t)) = row else {
                    return Ok(None);
                };
                let low = SqlTx(conn).low(id)?;
                Ok(Some(e.insert(Summary {
                    id,
                    enabled,
                    max_slot: store::opt_u64(max_slot)?,
                    max_source: store::opt_u64(max_s)?,
                    max_target: store::opt_u64(max_t)?,
                    low,
                })))
            }
        }
    }

    /// After the full path permitted `job` (its savepoint was released).
    fn after_full_path(&mut self, job: &SignJob, verdict: Permit) {
        // The full path pins the GVR on first use.
        if matches!(self.meta, Some(Meta { gvr: None, .. })) {
            self.meta = None;
        }
        if verdict != Permit::New {
            return; // nothing was written
        }
        // Mirror exactly what `store::sign_block` / `sign_attestation` wrote.
        if let Some(s) = self.validators.get_mut(&job.pubkey) {
            match job.duty {
                Duty::Block { slot } => {
                    s.max_slot = Some(s.max_slot.map_or(slot, |m| m.max(slot)));
                    s.low.slot = rules::low_after_block(s.low.slot, slot);
                }
                Duty::Attestation { source, target } => {
                    s.max_source = Some(s.max_source.map_or(source, |m| m.max(source)));
                    s.max_target = Some(s.max_target.map_or(target, |m| m.max(target)));
                    s.low.epochs = rules::low_after_attestation(s.low.epochs, source, target);
                }
            }
        }
    }
}

/// Decide `job` from the cache alone if it is provably [`Permit::New`], and
/// record it with a single `INSERT`. `None`: take the full path (which also
/// produces every refusal; the fast path never refuses).
///
/// Why no history needs to be read (phase0 `is_slashable_attestation_data`:
/// slashable iff `(d1 != d2 && d1.target == d2.target)` or
/// `(d1.source < d2.source && d2.target < d1.target)`): let the new vote be
/// `(s, t)` with `s <= t`, `s >= max_source` and `t > max_target`, and let
/// `(s', t')` be any recorded vote, so `s' <= max_source <= s` and
/// `t' <= max_target < t`.
/// * double vote needs `t' == t`: impossible, `t' < t`;
/// * recorded surrounds new needs `t < t'`: impossible, `t' < t`;
/// * new surrounds recorded needs `s < s'`: impossible, `s' <= s`.
///
/// So [`rules::attestation_is_relevant`] holds for no recorded row, and
/// [`rules::check_attestation`] on an empty history returns `New` once the
/// low watermarks pass (`s >= low source`, `t > low target`); those are
/// already set, so `low_after_attestation` leaves them unchanged and the
/// only write is the row itself. With no recorded row at all the history is
/// empty by definition. Blocks: `slot > max_slot` means no recorded block
/// shares the slot (phase0 `process_proposer_slashing` needs equal slots),
/// and `slot > low slot` passes EIP-3076 condition 3. The remaining checks
/// mirror the full path: same pinned GVR, validator enabled, below the high
/// watermark, values representable as i64.
fn try_fast(conn: &Connection, cache: &mut Cache, job: &SignJob) -> Option<Result<Permit, Error>> {
    // A load error just means "full path", which reports it properly.
    let meta = cache.meta(conn).ok()?;
    if meta.gvr != Some(job.gvr) {
        return None;
    }
    let s = cache.summary(conn, &job.pubkey).ok()??;
    if !s.enabled {
        return None;
    }
    let root = job.signing_root.0.as_slice();
    let inserted = match job.duty {
        Duty::Block { slot } => {
            let low = s.low.slot?;
            if slot <= low
                || s.max_slot.is_some_and(|m| slot <= m)
                || rules::check_high_block(meta.high, slot).is_err()
            {
                return None;
            }
            let slot_i = store::to_i64(slot).ok()?;
            let r = conn
                .prepare_cached(sql::INSERT_BLOCK)
                .and_then(|mut st| st.execute(params![s.id, slot_i, root]));
            if r.is_ok() {
                s.max_slot = Some(slot);
            }
            r
        }
        Duty::Attestation { source, target } => {
            let (low_source, low_target) = s.low.epochs?;
            if source > target
                || source < low_source
                || target <= low_target
                || s.max_source.is_some_and(|m| source < m)
                || s.max_target.is_some_and(|m| target <= m)
                || rules::check_high_attestation(meta.high, source, target).is_err()
            {
                return None;
            }
            let (source_i, target_i) = (store::to_i64(source).ok()?, store::to_i64(target).ok()?);
            let r = conn
                .prepare_cached(sql::INSERT_ATT)
                .and_then(|mut st| st.execute(params![s.id, source_i, target_i, root]));
            if r.is_ok() {
                s.max_source = Some(source);
                s.max_target = Some(target);
            }
            r
        }
    };
    Some(match inserted {
        Ok(_) => Ok(Permit::New),
        Err(e) => {
            // Cannot happen while the summary is right; re-read it next time.
            cache.validators.remove(&job.pubkey);
            Err(db(e))
        }
    })
}

/// The full path for a signing request (inside the caller's savepoint).
fn full_path(conn: &Connection, job: &SignJob) -> Result<Permit, Error> {
    let tx = &mut SqlTx(conn);
    match job.duty {
        Duty::Block { slot } => store::sign_block(tx, job.gvr, job.pubkey, slot, job.signing_root),
        Duty::Attestation { source, target } => {
            store::sign_attestation(tx, job.gvr, job.pubkey, source, target, job.signing_root)
        }
    }
}

/// Transaction-control statements, kept prepared.
const BEGIN: &str = "BEGIN IMMEDIATE";
const COMMIT: &str = "COMMIT";
const ROLLBACK: &str = "ROLLBACK";
const SAVEPOINT: &str = "SAVEPOINT job";
const RELEASE: &str = "RELEASE job";
const ROLLBACK_TO: &str = "ROLLBACK TO job";

struct Writer {
    conn: Connection,
    cache: Cache,
    commits: Arc<AtomicU64>,
}

impl Writer {
    /// Serves jobs until the store is dropped; then, for a database file, records the clean
    /// close as the session's last write (see [`crate::history_guard`]).
    fn run(mut self, rx: Receiver<Msg>, file: bool) {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(j) => batch.push(j),
                    Err(_) => break,
                }
            }
            self.run_batch(batch);
        }
        if file {
            if let Err(e) = self.exec("UPDATE store_identity SET clean_shutdown = 1 WHERE id = 1") {
                // The next start then checks for the write-ahead log, which a clean close
                // deletes: it would refuse. Say why here.
                tracing::error!(error = %e, "could not record the clean close of the slashing-protection database");
            }
        }
    }

    fn exec(&self, sql: &str) -> rusqlite::Result<()> {
        self.conn.prepare_cached(sql)?.execute([]).map(drop)
    }

    /// Run `f` in a savepoint, kept iff `f` returns `Ok`. `Err(msg)`: the
    /// savepoint could not be opened or closed, the batch must fail.
    fn in_savepoint<R>(
        &self,
        f: impl FnOnce(&Connection) -> R,
        ok: impl Fn(&R) -> bool,
    ) -> Result<R, String> {
        self.exec(SAVEPOINT)
            .map_err(|e| format!("sqlite: SAVEPOINT: {e}"))?;
        let r = f(&self.conn);
        if ok(&r) {
            self.exec(RELEASE)
                .map_err(|e| format!("sqlite: RELEASE: {e}"))?;
        } else {
            // Not kept: undo everything the request did.
            self.exec(ROLLBACK_TO)
                .and_then(|()| self.exec(RELEASE))
                .map_err(|e| format!("sqlite: ROLLBACK TO: {e}"))?;
        }
        Ok(r)
    }

    /// Fail every request of the batch; nothing of it is kept.
    fn fail_all(&mut self, batch: Vec<Msg>, msg: String) {
        if !self.conn.is_autocommit() {
            let _ = self.exec(ROLLBACK);
        }
        self.cache.clear();
        for m in batch {
            m.finish(Err(&msg));
        }
    }

    fn run_batch(&mut self, mut batch: Vec<Msg>) {
        if let Err(e) = self.exec(BEGIN) {
            return self.fail_all(batch, format!("sqlite: BEGIN IMMEDIATE: {e}"));
        }
        for m in batch.iter_mut() {
            let failed = match m {
                Msg::Sign(job) => {
                    let r = match try_fast(&self.conn, &mut self.cache, job) {
                        Some(r) => r,
                        None => match self.in_savepoint(|c| full_path(c, job), |r| r.is_ok()) {
                            Ok(r) => {
                                if let Ok(v) = &r {
                                    self.cache.after_full_path(job, *v);
                                }
                                r
                            }
                            Err(msg) => return self.fail_all(batch, msg),
                        },
                    };
                    let failed = r.is_err();
                    job.result = Some(r);
                    failed
                }
                Msg::Other { job, writes } => {
                    let kept = match self.in_savepoint(|c| job.run(c), |kept| *kept) {
                        Ok(kept) => kept,
                        Err(msg) => return self.fail_all(batch, msg),
                    };
                    if *writes {
                        self.cache.clear();
                    }
                    !kept
                }
            };
            // Some errors (I/O, disk full) make SQLite roll back the whole
            // transaction: the earlier requests' writes are gone.
            if failed && self.conn.is_autocommit() {
                return self.fail_all(
                    batch,
                    "sqlite: the transaction was rolled back, nothing recorded".into(),
                );
            }
        }
        match self.exec(COMMIT) {
            Ok(()) => {
                self.commits.fetch_add(1, Ordering::Relaxed);
                for m in batch {
                    m.finish(Ok(()));
                }
            }
            Err(e) => self.fail_all(
                batch,
                format!("sqlite: COMMIT failed, nothing recorded: {e}"),
            ),
        }
    }
}

fn db(e: rusqlite::Error) -> Error {
    Error::Store(format!("sqlite: {e}"))
}

/// `sql::RELEVANT_ATTS` with index hints: the unary `+` stops SQLite from
/// using the `source_epoch` index for "recorded target above" (`source_epoch
/// < ?2` matches almost the whole history, so that plan scanned every row of
/// the validator on every request) and the target index for "recorded source
/// above". Each part is then a range seek over the few rows above the new
/// vote.
const RELEVANT_ATTS: &str =
    "SELECT source_epoch, target_epoch, signing_root FROM signed_attestations \
        WHERE validator_id = ?1 AND target_epoch = ?3 \
    UNION ALL SELECT source_epoch, target_epoch, signing_root FROM signed_attestations \
        WHERE validator_id = ?1 AND target_epoch > ?3 AND +source_epoch < ?2 \
    UNION ALL SELECT source_epoch, target_epoch, signing_root FROM signed_attestations \
        WHERE validator_id = ?1 AND source_epoch > ?2 AND +target_epoch < ?3";

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
        atts(self.rows(RELEVANT_ATTS, params![id, source, target], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?)
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
            params![id, slot, root.as_ref().map(|r| r.0.as_slice())],
        )
        .map(drop)
    }

    fn set_block_root(&mut self, id: i64, slot: i64, root: Option<Root>) -> Result<(), Error> {
        self.exec(
            sql::SET_BLOCK_ROOT,
            params![id, slot, root.as_ref().map(|r| r.0.as_slice())],
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
            params![id, source, target, root.as_ref().map(|r| r.0.as_slice())],
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
            params![id, target, root.as_ref().map(|r| r.0.as_slice())],
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

/// The writer's form of a check.
fn duty_of(check: crate::Check) -> Duty {
    match check {
        crate::Check::Block { slot } => Duty::Block { slot },
        crate::Check::Attestation {
            source_epoch,
            target_epoch,
        } => Duty::Attestation {
            source: source_epoch,
            target: target_epoch,
        },
    }
}

impl SlashingProtection for SqliteStore {
    fn submit(
        &self,
        gvr: Root,
        pubkey: Pubkey,
        check: crate::Check,
        signing_root: Root,
    ) -> Option<crate::PendingVerdict> {
        let duty = duty_of(check);
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = SignJob {
            gvr,
            pubkey,
            duty,
            signing_root,
            result: None,
            reply: Reply::Async(reply),
        };
        if let Err(e) = self.send(Msg::Sign(job)) {
            // The writer is gone: answer with the error through the same channel.
            let (tx, rx) = tokio::sync::oneshot::channel();
            let _ = tx.send(Err(e));
            return Some(rx);
        }
        Some(answer)
    }

    fn decide(
        &self,
        gvr: Root,
        pubkey: Pubkey,
        check: crate::Check,
        signing_root: Root,
    ) -> Result<Permit, Error> {
        self.submit_sign(gvr, pubkey, duty_of(check), signing_root)
    }

    fn health_check(&self) -> Result<(), Error> {
        self.submit(false, |tx| tx.health())
    }

    fn high_watermark(&self) -> Result<Option<HighWatermark>, Error> {
        self.submit(false, |tx| tx.high_watermark())
    }

    fn set_high_watermark(&self, hw: Option<HighWatermark>) -> Result<(), Error> {
        self.submit(true, move |tx| tx.set_high_watermark(hw))
    }

    fn import_interchange(&self, json: &str) -> Result<ImportSummary, Error> {
        // Parse outside the writer thread; a bad file never reaches the DB.
        let parsed = crate::interchange::parse(json)?;
        self.submit(true, move |tx| store::import(tx, &parsed))
    }

    fn export_interchange(&self) -> Result<String, Error> {
        self.submit(false, |tx| store::export(tx))
    }

    fn genesis_validators_root(&self) -> Result<Option<Root>, Error> {
        self.submit(false, |tx| tx.gvr())
    }

    fn pin_genesis_validators_root(&self, gvr: Root) -> Result<(), Error> {
        self.submit(true, move |tx| store::check_gvr(tx, gvr))
    }

    fn set_validator_enabled(&self, pubkey: Pubkey, enabled: bool) -> Result<(), Error> {
        self.submit(true, move |tx| store::set_enabled(tx, pubkey, enabled))
    }

    fn prune(&self, epochs_to_keep: u64, slots_per_epoch: u64) -> Result<PruneSummary, Error> {
        self.submit(true, move |tx| {
            store::prune(tx, epochs_to_keep, slots_per_epoch)
        })
    }
}
