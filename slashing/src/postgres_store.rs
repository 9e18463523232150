//! PostgreSQL store, for one or several signer processes sharing a database.
//!
//! Every decision is one READ COMMITTED transaction whose first statement
//! after registering the validator is `pg_advisory_xact_lock(kind, id)`
//! (kind 1 = blocks, 2 = attestations; 0 is used for migrations). The lock
//! lives in the server and is released at COMMIT, so processes sharing the
//! database serialise per (validator, duty) and can never both permit
//! conflicting messages; different validators proceed in parallel over a
//! small connection pool. Reads after the lock see everything committed
//! before it (READ COMMITTED takes a new snapshot per statement).
//!
//! # Every wait is bounded
//!
//! A database that stops answering (a network partition: the TCP connection stays open and
//! nothing arrives) must turn into a prompt store error (HTTP 500, no signature), not a request
//! that hangs until the network heals. The bound is [`PostgresOptions::timeout`]
//! (`--slashing-protection-db-timeout-seconds`):
//!
//! - **Client side, the guarantee.** Each connection is a `tokio_postgres` client whose I/O is
//!   driven by a current-thread runtime of its own, polled only while a caller waits on it (what
//!   the synchronous `postgres` crate does internally, minus its unbounded `block_on`). Every
//!   wait is a `tokio::time::timeout` on that runtime: the pool checkout, connecting (TCP, TLS,
//!   start-up and authentication, session settings), and every round trip. A decision (signing,
//!   health check, watermarks, enabling a validator) must finish within one timeout *as a
//!   whole*, checkout and connect included; a bulk operation (import, export, pruning,
//!   migrations) may take as long as it needs, but its checkout and connect are bounded by the
//!   timeout and each of its round trips by the timeout or [`BULK_TIMEOUT_FLOOR`], whichever is
//!   longer.
//! - A connection whose wait ran out is in an unknown state (a request may be half sent, an
//!   answer may still come): it is marked broken, never returned to the pool, and closed by
//!   dropping its socket; the next operation opens a fresh one.
//! - **Server side.** Each session runs `SET statement_timeout` and
//!   `SET idle_in_transaction_session_timeout` to the timeout (bulk transactions raise
//!   `statement_timeout` with `SET LOCAL`), so the server does not go on working for, or holding
//!   the advisory locks of, a client that gave up or vanished mid-transaction: it cancels the
//!   statement, or ends the session, after the timeout rather than when TCP notices (hours), and
//!   the other signers can decide for that validator again.
//! - **TCP.** Unless the URL sets them: keepalive probes after 30 s idle, every timeout,
//!   3 of them, and `tcp_user_timeout` (Linux) = the timeout, so the kernel itself gives up on
//!   a peer that stopped acknowledging — a dead idle pooled connection fails at once instead of
//!   at its next use's deadline. These do not fire when something on the path still
//!   acknowledges (a proxy or load balancer that stopped forwarding); the client-side deadline
//!   does.
//!
//! Other designs considered: an I/O wrapper that fails reads after a silence, installed through
//! `MakeTlsConnect` — tokio-postgres never calls the TLS connector for a plaintext connection
//! (`sslmode=disable`), so plaintext would stay unbounded; and cancelling the query from a
//! watchdog thread (`CancelToken`) — that needs a second connection through the same broken
//! network and leaves the waiting call blocked.
//!
//! **Never a signature without a record.** A decision returns `Ok` only after `COMMIT` has
//! returned (`PostgresStore::run`); any timeout before that is an `Err`, so the server
//! drops the signature it computed. A timeout while `COMMIT` is in flight leaves the outcome
//! open: either the server committed the record (a later identical request is a repeat,
//! `SameAsRecorded`; a conflicting one is refused — the same as if the signature had been
//! released) or it never received or completed the `COMMIT` and rolls the transaction back (when
//! the session ends, or at the latest after `idle_in_transaction_session_timeout`): no record,
//! and no signature either. Records whose signature was released were committed before the
//! release, so no later abort can take them away.

use std::cell::Cell;
use std::collections::HashMap;
use std::future::Future;
use std::str::FromStr;
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, IsolationLevel, NoTls, Statement};

use crate::pg_tls::{self, TlsMode};
use crate::rules::{LowWatermarks, SignedAttestation, SignedBlock};
use crate::store::{self, pg_placeholders, sql, LockKind, Txn};
use crate::{
    Error, HighWatermark, ImportSummary, Permit, PruneSummary, Pubkey, Root, SlashingProtection,
};

/// Numbered migrations, applied in order; `schema_version` records the last.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/postgres/0001_init.sql")),
    (
        2,
        include_str!("../migrations/postgres/0002_history_only_grows_stricter.sql"),
    ),
];

/// The names the store's SQL uses for its own tables and functions: each is qualified with the
/// store's schema ([`qualify`]), so what a session's `search_path` says never decides whose
/// tables are read (issue 15: a schema earlier in the path, such as one named after the user,
/// would otherwise shadow the history with empty tables).
const OWN_NAMES: &[&str] = &[
    "schema_version",
    "metadata",
    "validators",
    "signed_blocks",
    "signed_attestations",
    "low_watermarks",
    "guard_low_watermarks",
    "guard_signed_blocks",
    "guard_signed_attestations",
    "guard_metadata",
    "prune_blocks_below",
    "prune_attestations_below",
];

/// Default pool size: enough parallelism for many validators without
/// exhausting the server's `max_connections`.
pub const DEFAULT_POOL_SIZE: usize = 8;
/// Default bound on waiting for the database (see the module docs).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Each wait of a bulk operation (import, export, pruning, migrations) may take at least this
/// long: they legitimately wait behind each other's locks and touch many rows.
pub const BULK_TIMEOUT_FLOOR: Duration = Duration::from_secs(60);
/// The largest timeout used (PostgreSQL's timeouts are `int` milliseconds).
const MAX_TIMEOUT: Duration = Duration::from_millis(i32::MAX as u64);
/// How long closing a healthy connection waits for its goodbye (`Terminate`) to go out.
const CLOSE_WAIT: Duration = Duration::from_secs(1);
/// TCP keepalive: idle time before the first probe, unless the URL sets it.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
const KEEPALIVE_RETRIES: u32 = 3;
/// tokio-postgres's default `keepalives_idle` (2 hours): "not set in the URL".
const KEEPALIVE_IDLE_DEFAULT: Duration = Duration::from_secs(2 * 60 * 60);
/// Deadlocks (two imports) and serialisation failures are retried.
const RETRIES: usize = 3;

/// How a [`PostgresStore`] uses its connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresOptions {
    /// Connections kept open at most.
    pub pool_size: usize,
    /// The bound on waiting for the database (module docs); must be positive.
    pub timeout: Duration,
    /// The schema holding the tables (a lowercase SQL identifier, [`check_identifier`]);
    /// `None`: the session's `current_schema()` when the store opens (the first schema of its
    /// `search_path` that exists, `public` by default). Either way every statement names it.
    pub schema: Option<String>,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            pool_size: DEFAULT_POOL_SIZE,
            timeout: DEFAULT_TIMEOUT,
            schema: None,
        }
    }
}

/// A name ensign creates or configures in PostgreSQL (a schema, a role): a lowercase letter or
/// `_`, then lowercase letters, digits and `_`, at most 63 bytes (PostgreSQL's `NAMEDATALEN`).
/// Such a name means the same quoted or not.
pub fn check_identifier(what: &str, name: &str) -> Result<(), Error> {
    let ok = (1..=63).contains(&name.len())
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::Open(format!(
            "{what} {name:?} is not a plain PostgreSQL name (a lowercase letter or _, then \
             lowercase letters, digits and _, at most 63)"
        )))
    }
}

/// `name` as a quoted SQL identifier.
pub(crate) fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `sql` with every one of [`OWN_NAMES`] that is not already qualified (preceded by `.`)
/// prefixed with `schema` (quoted). Works on whole identifier tokens, so `validator_id` or
/// `signed_attestations_source` are left alone.
pub(crate) fn qualify(sql: &str, schema: &str) -> String {
    let b = sql.as_bytes();
    let mut out = String::with_capacity(sql.len() + 128);
    let (mut i, mut copied) = (0, 0);
    let word_byte = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    while i < b.len() {
        if b[i].is_ascii_alphabetic() || b[i] == b'_' {
            let start = i;
            while i < b.len() && word_byte(b[i]) {
                i += 1;
            }
            let qualified = start > 0 && matches!(b[start - 1], b'.' | b'"');
            if !qualified && OWN_NAMES.contains(&&sql[start..i]) {
                out.push_str(&sql[copied..start]);
                out.push_str(schema);
                out.push('.');
                copied = start;
            }
        } else if b[i].is_ascii_digit() {
            while i < b.len() && word_byte(b[i]) {
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    out.push_str(&sql[copied..]);
    out
}

/// How long the waits of one operation may take.
#[derive(Debug, Clone, Copy)]
struct Budget {
    /// Checking out a pooled connection; connecting: always the timeout.
    setup: Duration,
    /// A round trip.
    each: Duration,
    /// The whole operation must be over by then (decisions only).
    until: Option<Instant>,
}

impl Budget {
    /// What the next round trip may take (zero once the operation's time is spent).
    fn next(&self) -> Duration {
        self.within(self.each)
    }

    /// What the checkout, or the connect, may take.
    fn setup(&self) -> Duration {
        self.within(self.setup)
    }

    fn within(&self, limit: Duration) -> Duration {
        match self.until {
            Some(t) => limit.min(t.saturating_duration_since(Instant::now())),
            None => limit,
        }
    }
}

/// What an operation is, for its [`Budget`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Checkout, connect and transaction within one timeout.
    Decision,
    /// Each wait within max(timeout, [`BULK_TIMEOUT_FLOOR`]).
    Bulk,
}

/// Why a wait on the database failed.
enum Fail {
    Pg(tokio_postgres::Error),
    /// No answer within this long: the connection is broken.
    TimedOut(Duration),
}

/// Drives one connection's I/O (see the module docs): a current-thread runtime of its own,
/// polled only while a caller waits in [`Link::wait`].
struct Link {
    rt: Runtime,
    /// The tokio-postgres connection future, spawned on `rt`.
    task: JoinHandle<()>,
    /// A wait ran out: the connection's state is unknown; it is never reused.
    broken: Cell<bool>,
}

impl Link {
    /// Waits for `fut` at most `limit`; past it the connection is marked broken.
    fn wait<T>(
        &self,
        limit: Duration,
        fut: impl Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, Fail> {
        // The timer is made inside `block_on`: it belongs to this connection's runtime.
        match self
            .rt
            .block_on(async { tokio::time::timeout(limit, fut).await })
        {
            Ok(r) => r.map_err(Fail::Pg),
            Err(_) => {
                self.broken.set(true);
                Err(Fail::TimedOut(limit))
            }
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // The client was dropped before (field order of `Conn`): a healthy connection now
        // says goodbye (`Terminate`) and ends. A broken one is just cut (the runtime's drop
        // closes the socket); the server rolls back whatever it had open.
        if !self.broken.get() {
            let _ = self
                .rt
                .block_on(async { tokio::time::timeout(CLOSE_WAIT, &mut self.task).await });
        }
    }
}

/// A pooled connection. Field order matters: the client is dropped before its [`Link`].
struct Conn {
    client: Client,
    stmts: HashMap<&'static str, Statement>,
    link: Link,
}

impl Conn {
    fn reusable(&self) -> bool {
        !self.link.broken.get() && !self.client.is_closed()
    }
}

// The pool is hand-written because the pool crates lose properties this store relies on
// (checked against r2d2 0.8.10 and deadpool 0.13.1):
//
// - r2d2 opens connections on its own worker threads, never in the checkout that needs one. A
//   failed connect does not wake the waiting checkout, so the checkout waits out its whole
//   `get_timeout`, and at most one waiter gets the reason (`last_error.take()`). Measured with
//   a 5 s timeout against a closed port: each checkout failed after 5.0 s (this pool fails at
//   once with "cannot connect: …"). Of 4 checkouts at the same time, 3 got only "timed out
//   waiting for connection", with no reason. The workers also kept reconnecting with nobody
//   waiting (7 attempts in 11 s), for as long as the pool lived. Against a silent server, where
//   the connect and the checkout share one deadline, 8 of 10 checkouts lost "no answer within
//   …" (which `tests/pg_timeouts.rs` expects). So during an outage every signing request
//   would hold a blocking worker for the whole timeout instead of failing at once, and would
//   not say why.
// - deadpool's checkout is a future. Bounding its wait needs a tokio timer, so the checkout runs
//   inside a runtime. There, `Manager::create` cannot open a connection on a current-thread
//   runtime of its own (`block_on` inside a runtime panics). That per-connection runtime is
//   what bounds every wait of a connection (module docs).
//
// What remains here is small: a Mutex and Condvar over the idle connections and the open count.
// A checkout waits until its deadline. A missing connection is opened in the caller's thread,
// within what remains of the caller's budget. Connections are closed on a plain thread
// (`Drop for Pool`).
struct PoolState {
    idle: Vec<Conn>,
    open: usize,
}

struct Pool {
    config: tokio_postgres::Config,
    /// `None`: plaintext (see [`pg_tls`] for what the URL can ask).
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    max: usize,
    /// Run once per new session: the server-side timeouts.
    session_setup: String,
    state: Mutex<PoolState>,
    freed: Condvar,
    /// Host/port/db only: never the password.
    shown: String,
}

// A connection is closed by blocking on its own runtime (`Link`'s drop), which panics (and,
// inside a destructor, aborts) if the drop happens on an async runtime's thread — as it does
// when a server holding the store shuts down. So the pool's connections are always dropped on a
// plain thread of their own.
impl Drop for Pool {
    fn drop(&mut self) {
        let idle =
            std::mem::take(&mut self.state.get_mut().unwrap_or_else(|p| p.into_inner()).idle);
        if !idle.is_empty() {
            let _ = std::thread::spawn(move || drop(idle)).join();
        }
    }
}

impl Pool {
    /// A new session, everything up to its settings within `limit`.
    fn connect(&self, limit: Duration) -> Result<Conn, Error> {
        let cannot = |why: String| self.error(format!("cannot connect: {why}"));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| cannot(format!("no runtime: {e}")))?;
        let opened = rt.block_on(async { tokio::time::timeout(limit, self.open_session()).await });
        let (client, task) = match opened {
            Ok(Ok(opened)) => opened,
            Ok(Err(e)) => return Err(cannot(pg_msg(&e))),
            Err(_) => return Err(cannot(no_answer(limit))),
        };
        Ok(Conn {
            client,
            stmts: HashMap::new(),
            link: Link {
                rt,
                task,
                broken: Cell::new(false),
            },
        })
    }

    /// Connects (on the caller's runtime, which then drives the connection) and applies the
    /// session settings.
    async fn open_session(&self) -> Result<(Client, JoinHandle<()>), tokio_postgres::Error> {
        let (client, task) = match &self.tls {
            Some(tls) => {
                let (client, connection) = self.config.connect(tls.clone()).await?;
                (
                    client,
                    tokio::spawn(async move {
                        let _ = connection.await;
                    }),
                )
            }
            None => {
                let (client, connection) = self.config.connect(NoTls).await?;
                (
                    client,
                    tokio::spawn(async move {
                        let _ = connection.await;
                    }),
                )
            }
        };
        client.batch_execute(&self.session_setup).await?;
        Ok((client, task))
    }

    fn get(&self, budget: Budget) -> Result<Conn, Error> {
        let wait = budget.setup();
        let deadline = Instant::now() + wait;
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(c) = st.idle.pop() {
                if c.reusable() {
                    return Ok(c);
                }
                st.open -= 1;
                continue;
            }
            if st.open < self.max {
                st.open += 1;
                drop(st);
                return self
                    .connect(budget.setup())
                    .inspect_err(|_| self.release(None));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(self.error(format!("no pooled connection free within {wait:?}")));
            }
            st = self
                .freed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Return a connection (None, or a broken or closed one: it is dropped).
    fn release(&self, conn: Option<Conn>) {
        // Dropped here, outside the lock.
        let reusable = conn.filter(Conn::reusable);
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match reusable {
            Some(c) => st.idle.push(c),
            None => st.open -= 1,
        }
        drop(st);
        self.freed.notify_one();
    }

    /// A store error naming the database (never the password).
    fn error(&self, what: String) -> Error {
        Error::Store(format!("PostgreSQL {}: {what}", self.shown))
    }

    fn fail(&self, f: &Fail) -> Error {
        match f {
            Fail::Pg(e) => self.error(pg_msg(e)),
            Fail::TimedOut(d) => {
                self.error(format!("{} (the connection is dropped)", no_answer(*d)))
            }
        }
    }

    /// Deadlocks and serialisation failures are worth another attempt; nothing else is.
    fn classify(&self, f: Fail) -> Retry {
        let e = self.fail(&f);
        match f {
            Fail::Pg(pg)
                if pg.code() == Some(&SqlState::T_R_DEADLOCK_DETECTED)
                    || pg.code() == Some(&SqlState::T_R_SERIALIZATION_FAILURE) =>
            {
                Retry::Again(e)
            }
            _ => Retry::Fail(e),
        }
    }
}

fn no_answer(waited: Duration) -> String {
    format!("no answer within {:.1} s", waited.as_secs_f64())
}

/// The PostgreSQL slashing-protection store (see the module docs).
pub struct PostgresStore {
    pool: Pool,
    timeout: Duration,
    /// The tables' schema (unquoted): every statement names it ([`qualify`]).
    schema: String,
    /// The GVR never changes once pinned, so it is cached after first read.
    gvr: OnceLock<Root>,
    /// Validator ids are never deleted or reused; cached once seen committed.
    ids: Mutex<HashMap<Pubkey, i64>>,
}

fn pg_msg(e: &tokio_postgres::Error) -> String {
    // `Display` of a server error is terse ("db error"); show the detail.
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(inner) = src {
                s.push_str(&format!(": {inner}"));
                src = inner.source();
            }
            s
        }
    }
}

/// The URL without Web3Signer's `jdbc:` prefix (`jdbc:postgresql://host:port/db`, credentials
/// given separately): the remainder is an ordinary libpq URL.
pub(crate) fn libpq_url(url: &str) -> &str {
    let url = url.trim();
    url.strip_prefix("jdbc:").unwrap_or(url)
}

/// The user a PostgreSQL URL names, if it names one (`postgresql://USER@host/db`, or
/// `?user=USER`); `None` for an unparsable URL (opening it reports why).
pub(crate) fn url_user(url: &str) -> Option<String> {
    let (plain, _) = pg_tls::split_tls(libpq_url(url)).ok()?;
    let config = tokio_postgres::Config::from_str(&plain).ok()?;
    config.get_user().map(str::to_string)
}

/// Parse `postgresql://`, `postgres://` or `jdbc:postgresql://` URLs; what the URL leaves
/// unset of the connect timeout, TCP keepalive and `tcp_user_timeout` follows `timeout`.
pub(crate) fn parse_url(
    url: &str,
    username: Option<&str>,
    password: Option<&str>,
    timeout: Duration,
) -> Result<(tokio_postgres::Config, TlsMode), Error> {
    let plain = libpq_url(url);
    if !(plain.starts_with("postgresql://") || plain.starts_with("postgres://")) {
        return Err(Error::Open(
            "unsupported PostgreSQL URL: expected postgresql://, postgres:// or jdbc:postgresql://"
                .into(),
        ));
    }
    let (plain, tls) = pg_tls::split_tls(plain)?;
    let mut config = tokio_postgres::Config::from_str(&plain)
        .map_err(|e| Error::Open(format!("invalid PostgreSQL URL: {e}")))?;
    if let Some(u) = username {
        config.user(u);
    }
    if let Some(p) = password {
        config.password(p);
    }
    if config.get_user().is_none() {
        config.user("postgres");
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(timeout);
    }
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(timeout);
    }
    if config.get_keepalives_idle() == KEEPALIVE_IDLE_DEFAULT {
        config.keepalives_idle(KEEPALIVE_IDLE);
    }
    if config.get_keepalives_interval().is_none() {
        config.keepalives_interval(timeout);
    }
    if config.get_keepalives_retries().is_none() {
        config.keepalives_retries(KEEPALIVE_RETRIES);
    }
    Ok((config, tls))
}

fn describe(config: &tokio_postgres::Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            #[cfg(unix)]
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}/{}", config.get_dbname().unwrap_or(""))
}

/// `SET` statements giving PostgreSQL's `names` the value `limit` (whole milliseconds).
fn set_timeouts(scope: &str, names: &[&str], limit: Duration) -> String {
    names
        .iter()
        .map(|n| format!("SET {scope}{n} = {}", limit.as_millis()))
        .collect::<Vec<_>>()
        .join("; ")
}

impl PostgresStore {
    /// Connect, migrate, and keep up to [`DEFAULT_POOL_SIZE`] connections, each wait bounded
    /// by [`DEFAULT_TIMEOUT`].
    pub fn open(url: &str, username: Option<&str>, password: Option<&str>) -> Result<Self, Error> {
        Self::open_with(url, username, password, PostgresOptions::default())
    }

    pub fn open_with_pool_size(
        url: &str,
        username: Option<&str>,
        password: Option<&str>,
        pool_size: usize,
    ) -> Result<Self, Error> {
        let options = PostgresOptions {
            pool_size,
            ..PostgresOptions::default()
        };
        Self::open_with(url, username, password, options)
    }

    /// Connect and migrate with these options.
    pub fn open_with(
        url: &str,
        username: Option<&str>,
        password: Option<&str>,
        options: PostgresOptions,
    ) -> Result<Self, Error> {
        if options.timeout.is_zero() {
            return Err(Error::Open(
                "the PostgreSQL timeout must be positive".into(),
            ));
        }
        let timeout = options.timeout.min(MAX_TIMEOUT);
        if let Some(schema) = &options.schema {
            check_identifier("the schema", schema)?;
        }
        let (config, tls) = parse_url(url, username, password, timeout)?;
        let shown = describe(&config);
        let mut store = PostgresStore {
            pool: Pool {
                config,
                tls: pg_tls::connector(&tls)?,
                max: options.pool_size.max(1),
                session_setup: set_timeouts(
                    "",
                    &["statement_timeout", "idle_in_transaction_session_timeout"],
                    timeout,
                ),
                state: Mutex::new(PoolState {
                    idle: Vec::new(),
                    open: 0,
                }),
                freed: Condvar::new(),
                shown,
            },
            timeout,
            schema: options.schema.clone().unwrap_or_default(),
            gvr: OnceLock::new(),
            ids: Mutex::new(HashMap::new()),
        };
        let as_open = |e| match e {
            Error::Store(m) => Error::Open(m),
            other => other,
        };
        if options.schema.is_none() {
            let found = store
                .run(Kind::Bulk, |tx| {
                    let found =
                        tx.scalar::<Option<String>>("SELECT current_schema()::TEXT", &[])?;
                    Ok(found.flatten())
                })
                .map_err(as_open)?;
            let schema = found.ok_or_else(|| {
                Error::Open(
                    "no schema: the session's search_path names none that exists; create it \
                     or name one (--slashing-protection-db-schema)"
                        .into(),
                )
            })?;
            store.schema = schema;
        }
        store.run(Kind::Bulk, migrate).map_err(as_open)?;
        Ok(store)
    }

    fn budget(&self, kind: Kind) -> Budget {
        match kind {
            Kind::Decision => Budget {
                setup: self.timeout,
                each: self.timeout,
                until: Some(Instant::now() + self.timeout),
            },
            Kind::Bulk => Budget {
                setup: self.timeout,
                each: self.timeout.max(BULK_TIMEOUT_FLOOR),
                until: None,
            },
        }
    }

    /// Run `f` in one READ COMMITTED transaction; commit iff it returned Ok, and return Ok
    /// only after COMMIT returned. Every wait is bounded by `kind`'s [`Budget`].
    fn run<R>(
        &self,
        kind: Kind,
        mut f: impl FnMut(&mut PgTx<'_, '_>) -> Result<R, Error>,
    ) -> Result<R, Error> {
        let budget = self.budget(kind);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut conn = self.pool.get(budget)?;
            let out = self.run_once(&mut conn, kind, budget, &mut f);
            self.pool.release(Some(conn));
            match out {
                Err(Retry::Again(_)) if attempt < RETRIES => continue,
                Err(Retry::Again(e)) | Err(Retry::Fail(e)) => return Err(e),
                Ok(v) => return Ok(v),
            }
        }
    }

    fn run_once<R>(
        &self,
        conn: &mut Conn,
        kind: Kind,
        budget: Budget,
        f: &mut impl FnMut(&mut PgTx<'_, '_>) -> Result<R, Error>,
    ) -> Result<R, Retry> {
        let Conn {
            client,
            stmts,
            link,
        } = conn;
        let pool = &self.pool;
        let start = client
            .build_transaction()
            .isolation_level(IsolationLevel::ReadCommitted)
            .start();
        let tx = link
            .wait(budget.next(), start)
            .map_err(|e| pool.classify(e))?;
        if kind == Kind::Bulk {
            let raise = set_timeouts("LOCAL ", &["statement_timeout"], budget.each);
            link.wait(budget.next(), tx.batch_execute(&raise))
                .map_err(|e| pool.classify(e))?;
        }
        let result = {
            let mut t = PgTx {
                tx: &tx,
                stmts,
                link,
                budget,
                store: self,
                last_err: None,
            };
            let r = f(&mut t);
            match (r, t.last_err.take()) {
                (Err(_), Some(e)) => Err(pool.classify(e)),
                (r, _) => r.map_err(Retry::Fail),
            }
        };
        match result {
            Ok(v) => {
                // Ok is returned only after COMMIT returned: the record is durable.
                link.wait(budget.next(), tx.commit())
                    .map_err(|e| pool.classify(e))?;
                Ok(v)
            }
            Err(e) => {
                // Wait for the ROLLBACK (it releases the advisory locks now); a broken
                // connection is cut instead, which makes the server roll back.
                if !link.broken.get() {
                    let _ = link.wait(budget.next(), tx.rollback());
                }
                Err(e)
            }
        }
    }
}

/// What a signer role may do, granted by [`provision`]: read everything; add rows; change only
/// the columns the store changes (migration 2's triggers keep even those changes one-way); prune
/// through the schema's functions; no DELETE, TRUNCATE or DDL.
const SIGNER_GRANTS: &str = "\
    GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role}; \
    GRANT INSERT ON metadata, validators, signed_blocks, signed_attestations, low_watermarks \
        TO {role}; \
    GRANT UPDATE (genesis_validators_root, high_watermark_epoch, high_watermark_slot) \
        ON metadata TO {role}; \
    GRANT UPDATE (enabled) ON validators TO {role}; \
    GRANT UPDATE (signing_root) ON signed_blocks, signed_attestations TO {role}; \
    GRANT UPDATE (slot, source_epoch, target_epoch) ON low_watermarks TO {role}; \
    GRANT USAGE ON ALL SEQUENCES IN SCHEMA {schema} TO {role}; \
    GRANT EXECUTE ON FUNCTION prune_blocks_below(BIGINT, BIGINT), \
        prune_attestations_below(BIGINT, BIGINT) TO {role}";

/// `ensign database provision`: as an administrator (`url` and credentials), migrate the schema
/// `options.schema` (required; created if missing), then create `role` — or, if it exists,
/// reset it — as a login role with `role_password` and only [`SIGNER_GRANTS`] on the schema.
/// The password reaches the server only as a SCRAM-SHA-256 verifier. Refuses a role that is the
/// administrator itself or a superuser.
pub fn provision(
    url: &str,
    username: Option<&str>,
    password: Option<&str>,
    options: PostgresOptions,
    role: &str,
    role_password: &str,
) -> Result<(), Error> {
    let schema = options
        .schema
        .clone()
        .ok_or_else(|| Error::Open("provisioning needs the schema named".into()))?;
    check_identifier("the schema", &schema)?;
    check_identifier("the role", role)?;
    if role_password.len() < 16 {
        return Err(Error::Open("the role's password is too short".into()));
    }
    let store = PostgresStore::open_with(url, username, password, options)?;
    let verifier = postgres_protocol::password::scram_sha_256(role_password.as_bytes());
    let (schema_q, role_q) = (quote_identifier(&schema), quote_identifier(role));
    store.run(Kind::Bulk, |tx| {
        let me: Option<String> = tx.scalar("SELECT current_user::TEXT", &[])?;
        if me.as_deref() == Some(role) {
            return Err(Error::Store(format!(
                "the signer role {role} is the administrator running this: give the signer a \
                 role of its own"
            )));
        }
        let existing = tx.query(
            "SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = ?1",
            &[&role],
        )?;
        let verb = match existing.first() {
            Some(row) if get::<bool>(row, 0)? => {
                return Err(Error::Store(format!(
                    "the role {role} is a superuser (or bypasses row security): not a signer role"
                )))
            }
            Some(_) => "ALTER",
            None => "CREATE",
        };
        tx.batch(&format!(
            "{verb} ROLE {role_q} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT \
             NOREPLICATION NOBYPASSRLS PASSWORD '{verifier}'; \
             REVOKE ALL ON ALL TABLES IN SCHEMA {schema_q} FROM {role_q}; \
             REVOKE ALL ON ALL SEQUENCES IN SCHEMA {schema_q} FROM {role_q}; \
             REVOKE ALL ON ALL FUNCTIONS IN SCHEMA {schema_q} FROM {role_q}; \
             REVOKE ALL ON SCHEMA {schema_q} FROM {role_q}; \
             GRANT USAGE ON SCHEMA {schema_q} TO {role_q}"
        ))?;
        tx.batch(
            &SIGNER_GRANTS
                .replace("{schema}", &schema_q)
                .replace("{role}", &role_q),
        )
    })
}

enum Retry {
    Again(Error),
    Fail(Error),
}

/// The schema's version: 0 when it has no `schema_version` table yet.
fn schema_version(tx: &mut PgTx<'_, '_>) -> Result<i64, Error> {
    let table = format!("{}.schema_version", quote_identifier(&tx.store.schema));
    if tx.scalar("SELECT to_regclass(?1) IS NOT NULL", &[&table])? != Some(true) {
        return Ok(0);
    }
    let version = tx.scalar(
        "SELECT COALESCE(MAX(version), 0)::BIGINT FROM schema_version",
        &[],
    )?;
    Ok(version.unwrap_or(0))
}

/// The schema, migrated under advisory lock 0 (two processes starting together: one at a time).
/// A schema already at this build's version is only read: a role without DDL rights (`ensign
/// database provision`) opens it; one behind needs its owner to migrate it.
fn migrate(tx: &mut PgTx<'_, '_>) -> Result<(), Error> {
    let latest = MIGRATIONS.last().map_or(0, |m| m.0);
    let newer = |current: i64| {
        Error::Store(format!(
            "schema version {current} is newer than this build supports ({latest})"
        ))
    };
    let current = schema_version(tx)?;
    if current > latest {
        return Err(newer(current));
    }
    if current == latest {
        return Ok(());
    }
    let schema = tx.store.schema.clone();
    // Asked first, so that the answer is a clear error rather than the first DDL's refusal.
    let rows = tx.query(
        "WITH s AS (SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = ?1) AS e) \
         SELECT e, CASE WHEN e THEN has_schema_privilege(?1, 'CREATE') \
         ELSE has_database_privilege(current_database(), 'CREATE') END FROM s",
        &[&schema],
    )?;
    let (exists, may_migrate): (bool, bool) = match rows.first() {
        Some(row) => (get(row, 0)?, get(row, 1)?),
        None => (false, false),
    };
    if !may_migrate {
        return Err(Error::Store(format!(
            "the schema {schema} is at version {current} and this build needs {latest}, but this \
             role may not change it: its owner migrates it (`ensign database provision`)"
        )));
    }
    tx.exec("SELECT pg_advisory_xact_lock(0, 0)", &[])?;
    // Only when missing: PostgreSQL checks the right to create in the database before it
    // looks whether the schema exists, even with IF NOT EXISTS.
    if !exists {
        tx.batch(&format!(
            "CREATE SCHEMA IF NOT EXISTS {}",
            quote_identifier(&schema)
        ))?;
    }
    tx.batch("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")?;
    // Again under the lock: another process may have migrated meanwhile.
    let current = schema_version(tx)?;
    if current > latest {
        return Err(newer(current));
    }
    for (n, text) in MIGRATIONS.iter().filter(|(n, _)| *n > current) {
        tx.batch(text)
            .map_err(|e| Error::Store(format!("migration {n}: {e}")))?;
        tx.exec("INSERT INTO schema_version (version) VALUES (?1)", &[n])?;
    }
    Ok(())
}

/// [`Txn`] over one pooled connection's transaction.
pub(crate) struct PgTx<'a, 'b> {
    tx: &'a tokio_postgres::Transaction<'b>,
    stmts: &'a mut HashMap<&'static str, Statement>,
    link: &'a Link,
    budget: Budget,
    store: &'a PostgresStore,
    /// The last failed wait, to classify retries.
    last_err: Option<Fail>,
}

type Param<'x> = &'x (dyn tokio_postgres::types::ToSql + Sync);

impl PgTx<'_, '_> {
    fn stmt(&mut self, sql: &'static str) -> Result<Statement, Error> {
        if let Some(s) = self.stmts.get(sql) {
            return Ok(s.clone());
        }
        let text = pg_placeholders(&qualify(sql, &quote_identifier(&self.store.schema)));
        let prepared = self.link.wait(self.budget.next(), self.tx.prepare(&text));
        let s = prepared.map_err(|e| self.fail(e))?;
        self.stmts.insert(sql, s.clone());
        Ok(s)
    }

    fn fail(&mut self, e: Fail) -> Error {
        let out = self.store.pool.fail(&e);
        self.last_err = Some(e);
        out
    }

    fn query(
        &mut self,
        sql: &'static str,
        p: &[Param<'_>],
    ) -> Result<Vec<tokio_postgres::Row>, Error> {
        let st = self.stmt(sql)?;
        let rows = self.link.wait(self.budget.next(), self.tx.query(&st, p));
        rows.map_err(|e| self.fail(e))
    }

    fn exec(&mut self, sql: &'static str, p: &[Param<'_>]) -> Result<u64, Error> {
        let st = self.stmt(sql)?;
        let n = self.link.wait(self.budget.next(), self.tx.execute(&st, p));
        n.map_err(|e| self.fail(e))
    }

    /// The first column of the first row of the answer, if there is a row.
    fn scalar<T: tokio_postgres::types::FromSqlOwned>(
        &mut self,
        sql: &'static str,
        p: &[Param<'_>],
    ) -> Result<Option<T>, Error> {
        match self.query(sql, p)?.first() {
            Some(row) => get(row, 0).map(Some),
            None => Ok(None),
        }
    }

    /// Statements without parameters or results (simple query protocol).
    fn batch(&mut self, sql: &str) -> Result<(), Error> {
        let sql = qualify(sql, &quote_identifier(&self.store.schema));
        let done = self
            .link
            .wait(self.budget.next(), self.tx.batch_execute(&sql));
        done.map_err(|e| self.fail(e))
    }
}

fn db_ref(e: &tokio_postgres::Error) -> Error {
    Error::Store(format!("postgres: {}", pg_msg(e)))
}

fn get<'r, T: tokio_postgres::types::FromSql<'r>>(
    row: &'r tokio_postgres::Row,
    i: usize,
) -> Result<T, Error> {
    row.try_get(i).map_err(|e| db_ref(&e))
}

fn to_blocks(rows: Vec<tokio_postgres::Row>) -> Result<Vec<SignedBlock>, Error> {
    rows.iter()
        .map(|r| {
            Ok(SignedBlock {
                slot: store::to_u64(get(r, 0)?)?,
                signing_root: store::root_from_bytes(get(r, 1)?)?,
            })
        })
        .collect()
}

fn to_atts(rows: Vec<tokio_postgres::Row>) -> Result<Vec<SignedAttestation>, Error> {
    rows.iter()
        .map(|r| {
            Ok(SignedAttestation {
                source_epoch: store::to_u64(get(r, 0)?)?,
                target_epoch: store::to_u64(get(r, 1)?)?,
                signing_root: store::root_from_bytes(get(r, 2)?)?,
            })
        })
        .collect()
}

impl Txn for PgTx<'_, '_> {
    fn gvr(&mut self) -> Result<Option<Root>, Error> {
        if let Some(g) = self.store.gvr.get() {
            return Ok(Some(*g));
        }
        let rows = self.query(sql::GVR, &[])?;
        let r = match rows.first() {
            Some(row) => store::root_from_bytes(get(row, 0)?)?,
            None => None,
        };
        // Not cached here: it may be our own uncommitted insert. The store
        // caches it after a committed Ok (`remember_gvr`).
        Ok(r)
    }

    fn insert_gvr_if_absent(&mut self, gvr: Root) -> Result<(), Error> {
        self.exec(sql::INSERT_GVR, &[&gvr.0.as_slice()]).map(drop)
    }

    fn high_watermark(&mut self) -> Result<Option<HighWatermark>, Error> {
        let rows = self.query(sql::HIGH, &[])?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let (e, s): (Option<i64>, Option<i64>) = (get(row, 0)?, get(row, 1)?);
        if e.is_none() && s.is_none() {
            return Ok(None);
        }
        Ok(Some(HighWatermark {
            epoch: store::opt_u64(e)?,
            slot: store::opt_u64(s)?,
        }))
    }

    fn set_high_watermark(&mut self, hw: Option<HighWatermark>) -> Result<(), Error> {
        let hw = hw.unwrap_or_default();
        let (e, s) = (store::opt_i64(hw.epoch)?, store::opt_i64(hw.slot)?);
        self.exec(sql::SET_HIGH, &[&e, &s]).map(drop)
    }

    fn validator_id(&mut self, pk: &Pubkey) -> Result<i64, Error> {
        if let Some(id) = self
            .store
            .ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(pk)
        {
            return Ok(*id);
        }
        let key = pk.0.as_slice();
        if let Some(row) = self.query(sql::VALIDATOR_ID, &[&key])?.first() {
            let id: i64 = get(row, 0)?;
            // Seen by a plain SELECT before we inserted anything: committed.
            self.store
                .ids
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(*pk, id);
            return Ok(id);
        }
        if let Some(row) = self.query(sql::INSERT_VALIDATOR, &[&key])?.first() {
            return get(row, 0);
        }
        // Another process inserted it concurrently (ON CONFLICT DO NOTHING
        // waited for its commit); READ COMMITTED now sees it.
        match self.query(sql::VALIDATOR_ID, &[&key])?.first() {
            Some(row) => get(row, 0),
            None => Err(Error::Store("validator registration vanished".into())),
        }
    }

    fn lock(&mut self, kind: LockKind, id: i64) -> Result<(), Error> {
        const LOCK: &str = "SELECT pg_advisory_xact_lock(?1::int4, ?2::int4)";
        let id32 = i32::try_from(id).map_err(|_| {
            Error::Store(format!(
                "validator id {id} exceeds the advisory lock key range"
            ))
        })?;
        self.exec(LOCK, &[&(kind as i32), &id32]).map(drop)
    }

    fn enabled(&mut self, id: i64) -> Result<bool, Error> {
        match self.query(sql::ENABLED, &[&id])?.first() {
            Some(row) => get(row, 0),
            None => Err(Error::Store(format!("validator {id} not found"))),
        }
    }

    fn set_enabled(&mut self, id: i64, enabled: bool) -> Result<(), Error> {
        self.exec(sql::SET_ENABLED, &[&id, &enabled]).map(drop)
    }

    fn blocks_at(&mut self, id: i64, slot: i64) -> Result<Vec<SignedBlock>, Error> {
        to_blocks(self.query(sql::BLOCKS_AT, &[&id, &slot])?)
    }

    fn relevant_attestations(
        &mut self,
        id: i64,
        source: i64,
        target: i64,
    ) -> Result<Vec<SignedAttestation>, Error> {
        to_atts(self.query(sql::RELEVANT_ATTS, &[&id, &source, &target])?)
    }

    fn low(&mut self, id: i64) -> Result<LowWatermarks, Error> {
        match self.query(sql::LOW, &[&id])?.first() {
            Some(r) => store::low_from_row(get(r, 0)?, get(r, 1)?, get(r, 2)?),
            None => Ok(LowWatermarks::default()),
        }
    }

    fn set_low(&mut self, id: i64, low: LowWatermarks) -> Result<(), Error> {
        let slot = store::opt_i64(low.slot)?;
        let s = store::opt_i64(low.epochs.map(|e| e.0))?;
        let t = store::opt_i64(low.epochs.map(|e| e.1))?;
        self.exec(sql::SET_LOW, &[&id, &slot, &s, &t]).map(drop)
    }

    fn insert_block(&mut self, id: i64, slot: i64, root: Option<Root>) -> Result<(), Error> {
        let r = root.map(|r| r.0.to_vec());
        self.exec(sql::INSERT_BLOCK, &[&id, &slot, &r]).map(drop)
    }

    fn set_block_root(&mut self, id: i64, slot: i64, root: Option<Root>) -> Result<(), Error> {
        let r = root.map(|r| r.0.to_vec());
        self.exec(sql::SET_BLOCK_ROOT, &[&id, &slot, &r]).map(drop)
    }

    fn insert_attestation(
        &mut self,
        id: i64,
        source: i64,
        target: i64,
        root: Option<Root>,
    ) -> Result<(), Error> {
        let r = root.map(|r| r.0.to_vec());
        self.exec(sql::INSERT_ATT, &[&id, &source, &target, &r])
            .map(drop)
    }

    fn set_attestation_root(
        &mut self,
        id: i64,
        target: i64,
        root: Option<Root>,
    ) -> Result<(), Error> {
        let r = root.map(|r| r.0.to_vec());
        self.exec(sql::SET_ATT_ROOT, &[&id, &target, &r]).map(drop)
    }

    fn validators(&mut self) -> Result<Vec<(i64, Pubkey)>, Error> {
        self.query(sql::VALIDATORS, &[])?
            .iter()
            .map(|r| Ok((get(r, 0)?, store::pubkey_from_bytes(get(r, 1)?)?)))
            .collect()
    }

    fn all_blocks(&mut self, id: i64) -> Result<Vec<SignedBlock>, Error> {
        to_blocks(self.query(sql::ALL_BLOCKS, &[&id])?)
    }

    fn all_attestations(&mut self, id: i64) -> Result<Vec<SignedAttestation>, Error> {
        to_atts(self.query(sql::ALL_ATTS, &[&id])?)
    }

    // Pruning goes through the schema's functions (migration 2), which raise the watermark
    // themselves before deleting: a role may prune without any DELETE right.
    fn delete_blocks_below(&mut self, id: i64, slot: i64) -> Result<u64, Error> {
        let n: Option<i64> = self.scalar("SELECT prune_blocks_below(?1, ?2)", &[&id, &slot])?;
        Ok(n.unwrap_or(0).max(0) as u64)
    }

    fn delete_attestations_below(&mut self, id: i64, target: i64) -> Result<u64, Error> {
        let n: Option<i64> =
            self.scalar("SELECT prune_attestations_below(?1, ?2)", &[&id, &target])?;
        Ok(n.unwrap_or(0).max(0) as u64)
    }

    fn health(&mut self) -> Result<(), Error> {
        self.query("SELECT 1", &[]).map(drop)
    }
}

impl PostgresStore {
    fn remember_gvr(&self, r: &Result<impl Sized, Error>, gvr: Root) {
        // After a committed Ok the GVR is pinned to `gvr` for good.
        if r.is_ok() {
            let _ = self.gvr.set(gvr);
        }
    }
}

impl SlashingProtection for PostgresStore {
    fn decide(
        &self,
        gvr: Root,
        pubkey: Pubkey,
        check: crate::Check,
        signing_root: Root,
    ) -> Result<Permit, Error> {
        let r = self.run(Kind::Decision, |tx| match check {
            crate::Check::Block { slot } => store::sign_block(tx, gvr, pubkey, slot, signing_root),
            crate::Check::Attestation {
                source_epoch,
                target_epoch,
            } => store::sign_attestation(tx, gvr, pubkey, source_epoch, target_epoch, signing_root),
        });
        self.remember_gvr(&r, gvr);
        r
    }

    fn health_check(&self) -> Result<(), Error> {
        self.run(Kind::Decision, |tx| tx.health())
    }

    fn high_watermark(&self) -> Result<Option<HighWatermark>, Error> {
        self.run(Kind::Decision, |tx| tx.high_watermark())
    }

    fn set_high_watermark(&self, hw: Option<HighWatermark>) -> Result<(), Error> {
        self.run(Kind::Decision, |tx| tx.set_high_watermark(hw))
    }

    fn import_interchange(&self, json: &str) -> Result<ImportSummary, Error> {
        let parsed = crate::interchange::parse(json)?;
        let r = self.run(Kind::Bulk, |tx| store::import(tx, &parsed));
        self.remember_gvr(&r, parsed.genesis_validators_root);
        r
    }

    fn export_interchange(&self) -> Result<String, Error> {
        self.run(Kind::Bulk, |tx| store::export(tx))
    }

    fn genesis_validators_root(&self) -> Result<Option<Root>, Error> {
        self.run(Kind::Decision, |tx| tx.gvr())
    }

    fn pin_genesis_validators_root(&self, gvr: Root) -> Result<(), Error> {
        let r = self.run(Kind::Decision, |tx| store::check_gvr(tx, gvr));
        self.remember_gvr(&r, gvr);
        r
    }

    fn set_validator_enabled(&self, pubkey: Pubkey, enabled: bool) -> Result<(), Error> {
        self.run(Kind::Decision, |tx| store::set_enabled(tx, pubkey, enabled))
    }

    fn prune(&self, epochs_to_keep: u64, slots_per_epoch: u64) -> Result<PruneSummary, Error> {
        self.run(Kind::Bulk, |tx| {
            store::prune(tx, epochs_to_keep, slots_per_epoch)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qualify_names_the_schema_for_whole_table_tokens_only() {
        let q = |sql| qualify(sql, "\"s\"");
        assert_eq!(
            q("SELECT id FROM validators WHERE public_key = ?1"),
            "SELECT id FROM \"s\".validators WHERE public_key = ?1"
        );
        // Columns, indexes and sequences that contain a table's name are other tokens; a name
        // already qualified (after '.') or quoted is left alone.
        assert_eq!(
            q("UPDATE metadata SET x = 1 WHERE metadata.genesis_validators_root IS NULL AND excluded.validators = 2"),
            "UPDATE \"s\".metadata SET x = 1 WHERE \"s\".metadata.genesis_validators_root IS NULL AND excluded.validators = 2"
        );
        assert_eq!(
            q("CREATE INDEX signed_attestations_source ON signed_attestations (validator_id)"),
            "CREATE INDEX signed_attestations_source ON \"s\".signed_attestations (validator_id)"
        );
        assert_eq!(
            q("SELECT prune_blocks_below(?1, ?2) -- é"),
            "SELECT \"s\".prune_blocks_below(?1, ?2) -- é"
        );
        assert_eq!(
            q("GRANT USAGE ON SCHEMA \"metadata\""),
            "GRANT USAGE ON SCHEMA \"metadata\""
        );
        assert_eq!(quote_identifier("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn the_user_a_url_names() {
        for (url, user) in [
            ("postgresql://ensign@db:5432/x", Some("ensign")),
            (
                "postgresql://ensign:pw@db/x?sslmode=verify-full&sslrootcert=/ca.pem",
                Some("ensign"),
            ),
            ("jdbc:postgresql://db:5432/x?user=ensign", Some("ensign")),
            ("postgresql://db:5432/x", None),
        ] {
            assert_eq!(url_user(url).as_deref(), user, "{url}");
        }
    }

    #[test]
    fn tcp_settings_follow_the_timeout_unless_the_url_sets_them() {
        let t = Duration::from_secs(2);
        let (c, _) = parse_url("postgresql://u@db:5432/x", None, None, t).unwrap();
        assert_eq!(c.get_connect_timeout(), Some(&t));
        assert_eq!(c.get_tcp_user_timeout(), Some(&t));
        assert!(c.get_keepalives());
        assert_eq!(c.get_keepalives_idle(), KEEPALIVE_IDLE);
        assert_eq!(c.get_keepalives_interval(), Some(t));
        assert_eq!(c.get_keepalives_retries(), Some(KEEPALIVE_RETRIES));
        let url = "postgresql://u@db:5432/x?connect_timeout=9&tcp_user_timeout=8\
                   &keepalives_idle=70&keepalives_interval=6&keepalives_retries=5";
        let (c, _) = parse_url(url, None, None, t).unwrap();
        assert_eq!(c.get_connect_timeout(), Some(&Duration::from_secs(9)));
        assert_eq!(c.get_tcp_user_timeout(), Some(&Duration::from_secs(8)));
        assert_eq!(c.get_keepalives_idle(), Duration::from_secs(70));
        assert_eq!(c.get_keepalives_interval(), Some(Duration::from_secs(6)));
        assert_eq!(c.get_keepalives_retries(), Some(5));
    }

    #[test]
    fn a_decision_has_one_timeout_in_all_a_bulk_operation_one_per_wait() {
        let t = Duration::from_secs(2);
        let decision = Budget {
            setup: t,
            each: t,
            until: Some(Instant::now() + Duration::from_millis(500)),
        };
        assert!(decision.next() <= Duration::from_millis(500));
        assert!(decision.setup() <= Duration::from_millis(500));
        let spent = Budget {
            until: Some(Instant::now()),
            ..decision
        };
        assert_eq!(spent.next(), Duration::ZERO);
        let bulk = Budget {
            setup: t,
            each: t.max(BULK_TIMEOUT_FLOOR),
            until: None,
        };
        assert_eq!((bulk.setup(), bulk.next()), (t, BULK_TIMEOUT_FLOOR));
    }

    #[test]
    fn session_settings() {
        assert_eq!(
            set_timeouts(
                "",
                &["statement_timeout", "idle_in_transaction_session_timeout"],
                Duration::from_millis(2500)
            ),
            "SET statement_timeout = 2500; SET idle_in_transaction_session_timeout = 2500"
        );
        assert_eq!(
            set_timeouts("LOCAL ", &["statement_timeout"], BULK_TIMEOUT_FLOOR),
            "SET LOCAL statement_timeout = 60000"
        );
    }
}
