//! A fresh PostgreSQL schema per test on the machine's server (`ENSIGN_TEST_PG_URL`, default the
//! local `test` database with trust authentication), dropped with everything in it afterwards.
//!
//! Every statement of its own runs on a plain thread: the synchronous `postgres` client drives a
//! runtime of its own, which must not be started or dropped inside a test's async runtime.

use std::sync::atomic::{AtomicU64, Ordering};

/// The PostgreSQL server the tests use.
pub fn pg_base_url() -> String {
    std::env::var("ENSIGN_TEST_PG_URL")
        .unwrap_or_else(|_| "postgresql://postgres@127.0.0.1:5432/test".into())
}

/// Runs `f` with an administrator's connection, on a thread of its own.
pub fn with_admin<T: Send + 'static>(
    f: impl FnOnce(&mut postgres::Client) -> Result<T, postgres::Error> + Send + 'static,
) -> Result<T, String> {
    std::thread::spawn(move || {
        let mut c = postgres::Client::connect(&pg_base_url(), postgres::NoTls)
            .map_err(|e| e.to_string())?;
        f(&mut c).map_err(|e| e.to_string())
    })
    .join()
    .map_err(|_| "admin thread panicked".to_string())?
}

/// Runs `sql` (statements without results) as the administrator.
pub fn pg_admin(sql: String) -> Result<(), String> {
    with_admin(move |c| c.batch_execute(&sql))
}

/// A uniquely named schema, dropped (CASCADE) on drop. Connections made with [`url`](Self::url)
/// see only it (`search_path`).
pub struct PgSchema {
    pub name: String,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

impl PgSchema {
    /// `None` after a loud `SKIPPED` line when PostgreSQL is unusable, unless
    /// `ENSIGN_REQUIRE_PG` is set (CI), in which case it panics: CI never skips these tests.
    pub fn new(test: &str) -> Option<PgSchema> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!(
            "ensign_test_{}_{}_{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
        );
        match pg_admin(format!("CREATE SCHEMA {name}")) {
            Ok(()) => Some(PgSchema { name }),
            Err(e) if std::env::var_os("ENSIGN_REQUIRE_PG").is_some() => {
                panic!(
                    "ENSIGN_REQUIRE_PG is set but PostgreSQL at {} is unusable: {e}",
                    pg_base_url()
                )
            }
            Err(e) => {
                eprintln!(
                    "SKIPPED: {test}: PostgreSQL at {} unusable ({e}); set ENSIGN_REQUIRE_PG=1 \
                     to fail instead",
                    pg_base_url()
                );
                None
            }
        }
    }

    /// A URL whose sessions use only this schema, optionally reached through `host_port` (a
    /// proxy) instead of the server's own address.
    pub fn url_via(&self, host_port: Option<&str>) -> String {
        let mut base = pg_base_url();
        if let Some(hp) = host_port {
            base = base.replace("127.0.0.1:5432", hp);
        }
        let sep = if base.contains('?') { '&' } else { '?' };
        format!("{base}{sep}options=-c%20search_path%3D{}", self.name)
    }

    /// [`url_via`](Self::url_via) without a proxy.
    pub fn url(&self) -> String {
        self.url_via(None)
    }

    /// The number of rows in this schema's `table`.
    pub fn count(&self, table: &str) -> i64 {
        let sql = format!("SELECT COUNT(*) FROM {}.{table}", self.name);
        with_admin(move |c| c.query_one(&sql, &[]).map(|r| r.get(0))).expect("count rows")
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let _ = pg_admin(format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name));
    }
}
