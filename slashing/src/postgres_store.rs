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

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Duration;

use postgres::error::SqlState;
use postgres::{Client, IsolationLevel, NoTls, Statement};

use crate::pg_tls::{self, TlsMode};
use crate::rules::{LowWatermarks, SignedAttestation, SignedBlock};
use crate::store::{self, pg_placeholders, sql, LockKind, Txn};
use crate::{
    Error, HighWatermark, ImportSummary, Permit, PruneSummary, Pubkey, Root, SlashingProtection,
};

/// Numbered migrations, applied in order; `schema_version` records the last.
const MIGRATIONS: &[(i64, &str)] = &[(1, include_str!("../migrations/postgres/0001_init.sql"))];

/// Default pool size: enough parallelism for many validators without
/// exhausting the server's `max_connections`.
pub const DEFAULT_POOL_SIZE: usize = 8;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadlocks (two imports) and serialisation failures are retried.
const RETRIES: usize = 3;

struct Conn {
    client: Client,
    stmts: HashMap<&'static str, Statement>,
}

struct PoolState {
    idle: Vec<Conn>,
    open: usize,
}

struct Pool {
    config: postgres::Config,
    /// `None`: plaintext (see [`pg_tls`] for what the URL can ask).
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    max: usize,
    state: Mutex<PoolState>,
    freed: Condvar,
    /// Host/port/db only: never the password.
    shown: String,
}

// `postgres::Client` closes its connection by blocking on its own runtime when dropped, which
// panics (and, inside a destructor, aborts) if the drop happens on an async runtime's thread —
// as it does when a server holding the store shuts down. So the pool's connections are always
// dropped on a plain thread of their own.
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
    fn connect(&self) -> Result<Conn, Error> {
        let connected = match &self.tls {
            Some(tls) => self.config.connect(tls.clone()),
            None => self.config.connect(NoTls),
        };
        let client = connected.map_err(|e| {
            Error::Store(format!(
                "PostgreSQL {}: cannot connect: {}",
                self.shown,
                pg_msg(&e)
            ))
        })?;
        Ok(Conn {
            client,
            stmts: HashMap::new(),
        })
    }

    fn get(&self) -> Result<Conn, Error> {
        let deadline = std::time::Instant::now() + CHECKOUT_TIMEOUT;
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(c) = st.idle.pop() {
                if !c.client.is_closed() {
                    return Ok(c);
                }
                st.open -= 1;
                continue;
            }
            if st.open < self.max {
                st.open += 1;
                drop(st);
                return self.connect().inspect_err(|_| self.release(None));
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return Err(Error::Store(format!(
                    "PostgreSQL {}: no pooled connection free after {:?}",
                    self.shown, CHECKOUT_TIMEOUT
                )));
            }
            st = self
                .freed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Return a connection (None: it was broken and is dropped).
    fn release(&self, conn: Option<Conn>) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match conn {
            Some(c) if !c.client.is_closed() => st.idle.push(c),
            _ => st.open -= 1,
        }
        drop(st);
        self.freed.notify_one();
    }
}

/// The PostgreSQL slashing-protection store (see the module docs).
pub struct PostgresStore {
    pool: Pool,
    /// The GVR never changes once pinned, so it is cached after first read.
    gvr: OnceLock<Root>,
    /// Validator ids are never deleted or reused; cached once seen committed.
    ids: Mutex<HashMap<Pubkey, i64>>,
}

fn pg_msg(e: &postgres::Error) -> String {
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

fn db(e: postgres::Error) -> Error {
    Error::Store(format!("postgres: {}", pg_msg(&e)))
}

/// The URL without Web3Signer's `jdbc:` prefix (`jdbc:postgresql://host:port/db`, credentials
/// given separately): the remainder is an ordinary libpq URL.
pub(crate) fn libpq_url(url: &str) -> &str {
    let url = url.trim();
    url.strip_prefix("jdbc:").unwrap_or(url)
}

/// Parse `postgresql://`, `postgres://` or `jdbc:postgresql://` URLs.
pub(crate) fn parse_url(
    url: &str,
    username: Option<&str>,
    password: Option<&str>,
) -> Result<(postgres::Config, TlsMode), Error> {
    let plain = libpq_url(url);
    if !(plain.starts_with("postgresql://") || plain.starts_with("postgres://")) {
        return Err(Error::Open(
            "unsupported PostgreSQL URL: expected postgresql://, postgres:// or jdbc:postgresql://"
                .into(),
        ));
    }
    let (plain, tls) = pg_tls::split_tls(plain)?;
    let mut config = postgres::Config::from_str(&plain)
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
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    Ok((config, tls))
}

fn describe(config: &postgres::Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            postgres::config::Host::Tcp(h) => h.clone(),
            #[cfg(unix)]
            postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}/{}", config.get_dbname().unwrap_or(""))
}

impl PostgresStore {
    /// Connect, migrate, and keep up to [`DEFAULT_POOL_SIZE`] connections.
    pub fn open(url: &str, username: Option<&str>, password: Option<&str>) -> Result<Self, Error> {
        Self::open_with_pool_size(url, username, password, DEFAULT_POOL_SIZE)
    }

    pub fn open_with_pool_size(
        url: &str,
        username: Option<&str>,
        password: Option<&str>,
        pool_size: usize,
    ) -> Result<Self, Error> {
        let (config, tls) = parse_url(url, username, password)?;
        let shown = describe(&config);
        let store = PostgresStore {
            pool: Pool {
                config,
                tls: pg_tls::connector(&tls)?,
                max: pool_size.max(1),
                state: Mutex::new(PoolState {
                    idle: Vec::new(),
                    open: 0,
                }),
                freed: Condvar::new(),
                shown,
            },
            gvr: OnceLock::new(),
            ids: Mutex::new(HashMap::new()),
        };
        let mut conn = store.pool.get().map_err(|e| match e {
            Error::Store(m) => Error::Open(m),
            other => other,
        })?;
        let r = migrate(&mut conn.client);
        store.pool.release(Some(conn));
        r.map_err(|e| Error::Open(format!("PostgreSQL {}: {e}", store.pool.shown)))?;
        Ok(store)
    }

    /// Run `f` in one READ COMMITTED transaction; commit iff it returned Ok.
    fn run<R>(&self, mut f: impl FnMut(&mut PgTx<'_, '_>) -> Result<R, Error>) -> Result<R, Error> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut conn = self.pool.get()?;
            let out = self.run_once(&mut conn, &mut f);
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
        f: &mut impl FnMut(&mut PgTx<'_, '_>) -> Result<R, Error>,
    ) -> Result<R, Retry> {
        let Conn { client, stmts } = conn;
        let mut tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::ReadCommitted)
            .start()
            .map_err(classify)?;
        let result = {
            let mut t = PgTx {
                tx: &mut tx,
                stmts,
                store: self,
                last_err: None,
            };
            let r = f(&mut t);
            match (r, t.last_err.take()) {
                (Err(_), Some(e)) => Err(classify(e)),
                (r, _) => r.map_err(Retry::Fail),
            }
        };
        match result {
            Ok(v) => {
                // Ok is returned only after COMMIT returned: the record is durable.
                tx.commit().map_err(classify)?;
                Ok(v)
            }
            Err(e) => {
                let _ = tx.rollback();
                Err(e)
            }
        }
    }
}

enum Retry {
    Again(Error),
    Fail(Error),
}

fn classify(e: postgres::Error) -> Retry {
    match e.code() {
        Some(c)
            if *c == SqlState::T_R_DEADLOCK_DETECTED
                || *c == SqlState::T_R_SERIALIZATION_FAILURE =>
        {
            Retry::Again(db(e))
        }
        _ => Retry::Fail(db(e)),
    }
}

fn migrate(client: &mut Client) -> Result<(), Error> {
    let mut tx = client.transaction().map_err(db)?;
    // Two processes starting together: only one migrates at a time.
    tx.execute("SELECT pg_advisory_xact_lock(0, 0)", &[])
        .map_err(db)?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")
        .map_err(db)?;
    let current: i64 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0)::BIGINT FROM schema_version",
            &[],
        )
        .map_err(db)?
        .get(0);
    let latest = MIGRATIONS.last().map_or(0, |m| m.0);
    if current > latest {
        return Err(Error::Store(format!(
            "schema version {current} is newer than this build supports ({latest})"
        )));
    }
    for (n, text) in MIGRATIONS.iter().filter(|(n, _)| *n > current) {
        tx.batch_execute(text)
            .map_err(|e| Error::Store(format!("migration {n}: {}", pg_msg(&e))))?;
        tx.execute("INSERT INTO schema_version (version) VALUES ($1)", &[n])
            .map_err(db)?;
    }
    tx.commit().map_err(db)
}

/// [`Txn`] over one pooled connection's transaction.
pub(crate) struct PgTx<'a, 'b> {
    tx: &'a mut postgres::Transaction<'b>,
    stmts: &'a mut HashMap<&'static str, Statement>,
    store: &'a PostgresStore,
    /// The raw error of the last failed statement, to classify retries.
    last_err: Option<postgres::Error>,
}

type Param<'x> = &'x (dyn postgres::types::ToSql + Sync);

impl PgTx<'_, '_> {
    fn stmt(&mut self, sql: &'static str) -> Result<Statement, Error> {
        if let Some(s) = self.stmts.get(sql) {
            return Ok(s.clone());
        }
        let s = self
            .tx
            .prepare(&pg_placeholders(sql))
            .map_err(|e| self.fail(e))?;
        self.stmts.insert(sql, s.clone());
        Ok(s)
    }

    fn fail(&mut self, e: postgres::Error) -> Error {
        let out = db_ref(&e);
        self.last_err = Some(e);
        out
    }

    fn query(&mut self, sql: &'static str, p: &[Param<'_>]) -> Result<Vec<postgres::Row>, Error> {
        let st = self.stmt(sql)?;
        self.tx.query(&st, p).map_err(|e| self.fail(e))
    }

    fn exec(&mut self, sql: &'static str, p: &[Param<'_>]) -> Result<u64, Error> {
        let st = self.stmt(sql)?;
        self.tx.execute(&st, p).map_err(|e| self.fail(e))
    }
}

fn db_ref(e: &postgres::Error) -> Error {
    Error::Store(format!("postgres: {}", pg_msg(e)))
}

fn get<'r, T: postgres::types::FromSql<'r>>(row: &'r postgres::Row, i: usize) -> Result<T, Error> {
    row.try_get(i).map_err(|e| db_ref(&e))
}

fn to_blocks(rows: Vec<postgres::Row>) -> Result<Vec<SignedBlock>, Error> {
    rows.iter()
        .map(|r| {
            Ok(SignedBlock {
                slot: store::to_u64(get(r, 0)?)?,
                signing_root: store::root_from_bytes(get(r, 1)?)?,
            })
        })
        .collect()
}

fn to_atts(rows: Vec<postgres::Row>) -> Result<Vec<SignedAttestation>, Error> {
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

    fn delete_blocks_below(&mut self, id: i64, slot: i64) -> Result<u64, Error> {
        self.exec(sql::DELETE_BLOCKS_BELOW, &[&id, &slot])
    }

    fn delete_attestations_below(&mut self, id: i64, target: i64) -> Result<u64, Error> {
        self.exec(sql::DELETE_ATTS_BELOW, &[&id, &target])
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
    fn sign_block(
        &self,
        gvr: Root,
        pubkey: Pubkey,
        slot: u64,
        signing_root: Root,
    ) -> Result<Permit, Error> {
        let r = self.run(|tx| store::sign_block(tx, gvr, pubkey, slot, signing_root));
        self.remember_gvr(&r, gvr);
        r
    }

    fn sign_attestation(
        &self,
        gvr: Root,
        pubkey: Pubkey,
        source_epoch: u64,
        target_epoch: u64,
        signing_root: Root,
    ) -> Result<Permit, Error> {
        let r = self.run(|tx| {
            store::sign_attestation(tx, gvr, pubkey, source_epoch, target_epoch, signing_root)
        });
        self.remember_gvr(&r, gvr);
        r
    }

    fn health_check(&self) -> Result<(), Error> {
        self.run(|tx| tx.health())
    }

    fn high_watermark(&self) -> Result<Option<HighWatermark>, Error> {
        self.run(|tx| tx.high_watermark())
    }

    fn set_high_watermark(&self, hw: Option<HighWatermark>) -> Result<(), Error> {
        self.run(|tx| tx.set_high_watermark(hw))
    }

    fn import_interchange(&self, json: &str) -> Result<ImportSummary, Error> {
        let parsed = crate::interchange::parse(json)?;
        let r = self.run(|tx| store::import(tx, &parsed));
        self.remember_gvr(&r, parsed.genesis_validators_root);
        r
    }

    fn export_interchange(&self) -> Result<String, Error> {
        self.run(|tx| store::export(tx))
    }

    fn genesis_validators_root(&self) -> Result<Option<Root>, Error> {
        self.run(|tx| tx.gvr())
    }

    fn pin_genesis_validators_root(&self, gvr: Root) -> Result<(), Error> {
        let r = self.run(|tx| store::check_gvr(tx, gvr));
        self.remember_gvr(&r, gvr);
        r
    }

    fn set_validator_enabled(&self, pubkey: Pubkey, enabled: bool) -> Result<(), Error> {
        self.run(|tx| store::set_enabled(tx, pubkey, enabled))
    }

    fn prune(&self, epochs_to_keep: u64, slots_per_epoch: u64) -> Result<PruneSummary, Error> {
        self.run(|tx| store::prune(tx, epochs_to_keep, slots_per_epoch))
    }
}
