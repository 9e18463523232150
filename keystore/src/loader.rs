//! Web3Signer-compatible key sources: YAML key configuration files and
//! directories of EIP-2335 keystores.
//!
//! Loading happens in two phases. First every file is listed and the cheap
//! parsing is done in order; then the expensive part (scrypt / PBKDF2) runs
//! on [`LoadOptions::threads`] workers. Results are put back in file order
//! before duplicates are removed, so "first wins" is deterministic: files
//! are taken in byte order of their names, documents in file order.
//!
//! Memory: an EIP-2335 scrypt derivation at the default cost (n = 2^18,
//! r = 8) needs 256 MiB, and a keystore may ask for up to
//! [`crate::SCRYPT_MAX_MEMORY`]. Running one per core could exhaust a small
//! machine, so concurrent scrypt derivations are bounded by a memory budget
//! ([`LoadOptions::max_kdf_memory`]): a worker takes "credits" equal to its
//! keystore's need before deriving and returns them after. PBKDF2 needs
//! none. A keystore needing more than the whole budget takes all of it and
//! so runs alone, rather than never.
//!
//! With a [`KeyCache`] in the options, keystores found in the cache skip
//! the KDF entirely; the others are decrypted and added, and entries for
//! keystores not seen in this load are dropped before the cache is saved.

use std::fmt;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};

use serde::{Deserialize, Deserializer};
use zeroize::Zeroizing;

use crate::cache::{CacheId, KeyCache};
use crate::eip2335::Keystore;
use crate::key::{ValidatorKey, SECRET_LEN};
use crate::Error;

/// Largest YAML key configuration file accepted. A config holding thousands
/// of `file-raw` documents is a few hundred KiB.
pub const MAX_CONFIG_FILE_LEN: u64 = 4 * 1024 * 1024;
/// Largest keystore JSON file accepted; real ones are about 1 KiB.
pub const MAX_KEYSTORE_FILE_LEN: u64 = 64 * 1024;
/// Largest password file accepted.
pub const MAX_PASSWORD_FILE_LEN: u64 = 64 * 1024;
/// Largest number of YAML documents read from one config file.
pub const MAX_DOCUMENTS_PER_FILE: usize = 100_000;

pub use crate::report::{LoadError, LoadReport, LoadStats};

/// Where the keystore passwords of [`load_keystores_dir`] come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordSource {
    /// A directory holding `<keystore file stem>.txt` for every keystore
    /// (Web3Signer `--keystores-passwords-path`).
    Dir(PathBuf),
    /// One password file shared by all keystores (Web3Signer
    /// `--keystores-password-file`).
    File(PathBuf),
}

/// Progress of a load, reported after each key source (keystore, raw key
/// or config error) is finished. Calls are serialised, so `done` rises by
/// one per call; `errors` counts finished sources that failed (duplicates
/// are only found at the end and are not included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub done: usize,
    pub total: usize,
    pub errors: usize,
}

/// How to run a load. [`LoadOptions::default`] gives half the available
/// memory to KDFs, one worker per core, no progress callback and no cache.
#[derive(Clone, Copy)]
pub struct LoadOptions<'a> {
    /// Bytes of memory concurrent scrypt derivations may use together
    /// (default: [`default_max_kdf_memory`]). A keystore that alone needs
    /// more runs by itself.
    pub max_kdf_memory: u64,
    /// Worker threads (default: `available_parallelism`; 0 means 1).
    pub threads: usize,
    /// Called from worker threads as sources finish.
    pub progress: Option<&'a (dyn Fn(Progress) + Sync)>,
    /// Restart cache. One cache should serve one key source: after the
    /// load, entries not seen in it are dropped.
    pub cache: Option<&'a Mutex<KeyCache>>,
}

impl Default for LoadOptions<'_> {
    fn default() -> Self {
        LoadOptions {
            max_kdf_memory: default_max_kdf_memory(),
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            progress: None,
            cache: None,
        }
    }
}

impl fmt::Debug for LoadOptions<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadOptions")
            .field("max_kdf_memory", &self.max_kdf_memory)
            .field("threads", &self.threads)
            .field("progress", &self.progress.is_some())
            .field("cache", &self.cache.is_some())
            .finish()
    }
}

/// Smallest default KDF budget: one keystore at the
/// [`crate::SCRYPT_MAX_MEMORY`] cap, so the default never serialises
/// keystores that fit it.
const MIN_DEFAULT_KDF_MEMORY: u64 = 512 * 1024 * 1024;

/// The default [`LoadOptions::max_kdf_memory`]: half of `MemAvailable`
/// from `/proc/meminfo` (leaving the rest to the signer and its
/// neighbours), but at least 512 MiB. 512 MiB if `/proc/meminfo` cannot be
/// read (non-Linux, restricted sandbox).
pub fn default_max_kdf_memory() -> u64 {
    let available = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| parse_mem_available(&text));
    match available {
        Some(bytes) => (bytes / 2).max(MIN_DEFAULT_KDF_MEMORY),
        None => MIN_DEFAULT_KDF_MEMORY,
    }
}

/// `MemAvailable:  12345678 kB` → bytes (the kernel's "kB" is KiB).
fn parse_mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?;
    let mut parts = line.split_whitespace();
    let value: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") => value.checked_mul(1024),
        None => Some(value),
        Some(_) => None,
    }
}

/// Load every non-hidden `*.yaml` / `*.yml` file in `dir` (not recursive),
/// each holding one or more YAML documents in Web3Signer's key config
/// format:
///
/// ```yaml
/// type: file-raw
/// keyType: BLS          # optional; must be BLS
/// privateKey: "0x…"     # 32-byte hex, 0x optional
/// ---
/// type: file-keystore
/// keystoreFile: key.json              # relative to this file's directory
/// keystorePasswordFile: key.txt       # one trailing newline is ignored
/// ```
///
/// With the `aws` feature (default), also `aws-secret` and
/// `aws-kms-encrypted`: see [`crate::aws`]. Those make AWS calls on a
/// runtime of their own, so this function blocks; call it from a blocking
/// thread (e.g. `tokio::task::spawn_blocking`), not from an async task.
pub fn load_key_configs(dir: &Path) -> LoadReport {
    load_key_configs_with(dir, &LoadOptions::default())
}

/// [`load_key_configs`] with explicit [`LoadOptions`].
pub fn load_key_configs_with(dir: &Path, options: &LoadOptions<'_>) -> LoadReport {
    let mut report = LoadReport::default();
    let files = match list_dir(dir, &["yaml", "yml"], &mut report) {
        Some(f) => f,
        None => return report,
    };
    let mut pending = Vec::new();
    for file in files {
        parse_config_file(&file, &mut pending);
    }
    finish(resolve_pending(pending), report, options)
}

/// Load every non-hidden `*.json` file in `dir` (not recursive) as an
/// EIP-2335 keystore, with passwords from `passwords`.
pub fn load_keystores_dir(dir: &Path, passwords: &PasswordSource) -> LoadReport {
    load_keystores_dir_with(dir, passwords, &LoadOptions::default())
}

/// [`load_keystores_dir`] with explicit [`LoadOptions`].
pub fn load_keystores_dir_with(
    dir: &Path,
    passwords: &PasswordSource,
    options: &LoadOptions<'_>,
) -> LoadReport {
    let mut report = LoadReport::default();
    let files = match list_dir(dir, &["json"], &mut report) {
        Some(f) => f,
        None => return report,
    };
    let jobs = files
        .into_iter()
        .map(|keystore| {
            let password = match passwords {
                PasswordSource::File(p) => p.clone(),
                PasswordSource::Dir(d) => {
                    let stem = keystore.file_stem().unwrap_or_default();
                    let mut name = stem.to_os_string();
                    name.push(".txt");
                    d.join(name)
                }
            };
            Job::Keystore {
                keystore,
                password: Password::File(password),
            }
        })
        .collect();
    finish(jobs, report, options)
}

/// Read, parse and decrypt one keystore file with the password in
/// `password_file` (one trailing `\n` or `\r\n` removed).
pub fn load_keystore_file(keystore: &Path, password_file: &Path) -> Result<ValidatorKey, Error> {
    // Parse first: a malformed keystore should say so even when the password
    // file is also missing, and parsing enforces the KDF limits before any
    // work is done.
    let json = read_limited(keystore, MAX_KEYSTORE_FILE_LEN)?;
    let ks = Keystore::from_json_bytes(&json)?;
    let password = read_password(password_file)?;
    ks.decrypt(trim_one_newline(password_str(&password, password_file)?))
}

/// A password file's bytes, bounded and zeroed on drop.
fn read_password(password_file: &Path) -> Result<Zeroizing<Vec<u8>>, Error> {
    read_limited(password_file, MAX_PASSWORD_FILE_LEN)
}

fn password_str<'p>(password: &'p [u8], password_file: &Path) -> Result<&'p str, Error> {
    std::str::from_utf8(password).map_err(|_| Error::PasswordNotUtf8(password_file.to_owned()))
}

/// Web3Signer policy: a password file's single trailing line ending is not
/// part of the password. (EIP-2335 normalisation would strip `\r`/`\n`
/// anyway as C0 controls; this keeps the file policy explicit.)
fn trim_one_newline(s: &str) -> &str {
    match s.strip_suffix('\n') {
        Some(s) => s.strip_suffix('\r').unwrap_or(s),
        None => s,
    }
}

// ---------------------------------------------------------------------------
// Jobs: the per-key work, cheap parts done up front, decryption deferred.
// ---------------------------------------------------------------------------

enum Job {
    /// Already resolved (a `file-raw` key, or a config error).
    Done {
        path: PathBuf,
        result: Result<ValidatorKey, Error>,
    },
    /// A keystore still to be read and decrypted.
    Keystore {
        keystore: PathBuf,
        password: Password,
    },
}

/// Where a keystore's password is.
enum Password {
    /// A password file (one trailing line ending ignored).
    File(PathBuf),
    /// Already in memory (decrypted with KMS).
    #[cfg_attr(not(feature = "aws"), allow(dead_code))]
    Value(Zeroizing<String>),
}

/// A config document's job before any network calls: either ready for the
/// decryption phase, or still needing an AWS call.
enum Pending {
    Ready(Job),
    #[cfg(feature = "aws")]
    Aws {
        path: PathBuf,
        /// Set for the keystore + `passwordCiphertext` variant.
        keystore: Option<PathBuf>,
        conn: crate::aws::Conn,
        request: crate::aws::Request,
    },
}

/// Make every AWS call of the load (one runtime, requests in parallel) and
/// turn the answers into jobs, keeping document order.
fn resolve_pending(pending: Vec<Pending>) -> Vec<Job> {
    #[cfg(feature = "aws")]
    {
        use crate::aws::Answer;
        let mut slots = Vec::new();
        let mut requests = Vec::new();
        for p in pending {
            match p {
                Pending::Ready(j) => slots.push(Ok(j)),
                Pending::Aws {
                    path,
                    keystore,
                    conn,
                    request,
                } => {
                    slots.push(Err((path, keystore)));
                    requests.push((conn, request));
                }
            }
        }
        let mut answers = crate::aws::resolve(requests).into_iter();
        let mut jobs = Vec::new();
        for slot in slots {
            match slot {
                Ok(job) => jobs.push(job),
                Err((path, keystore)) => match (answers.next(), keystore) {
                    (Some(Answer::Keys(keys)), _) => {
                        jobs.extend(keys.into_iter().map(|result| Job::Done {
                            path: path.clone(),
                            result,
                        }));
                    }
                    (Some(Answer::Password(Ok(password))), Some(keystore)) => {
                        jobs.push(Job::Keystore {
                            keystore,
                            password: Password::Value(password),
                        });
                    }
                    (Some(Answer::Password(Err(e))), _) => jobs.push(Job::Done {
                        path,
                        result: Err(e),
                    }),
                    (Some(Answer::Password(Ok(_))), None) | (None, _) => jobs.push(Job::Done {
                        path,
                        result: Err(Error::Aws {
                            service: "runtime",
                            operation: "run",
                            message: "no answer for this request".into(),
                        }),
                    }),
                },
            }
        }
        jobs
    }
    #[cfg(not(feature = "aws"))]
    {
        pending
            .into_iter()
            .map(|p| match p {
                Pending::Ready(j) => j,
            })
            .collect()
    }
}

fn finish(jobs: Vec<Job>, mut report: LoadReport, options: &LoadOptions<'_>) -> LoadReport {
    let (results, stats, seen) = run_parallel(jobs, options);
    report.stats = stats;
    report.add_outcomes(results);
    if let Some(cache) = options.cache {
        let mut cache = lock(cache);
        // Entries of keystores that were removed, changed or failed this
        // time must not outlive them in the cache.
        let removed = cache.retain_only(&seen.ids);
        if removed > 0 || seen.inserted > 0 {
            if let Err(error) = cache.save() {
                report.errors.push(LoadError {
                    path: cache.path().to_owned(),
                    error,
                });
            }
        }
    }
    report
}

/// Cache bookkeeping of one load.
#[derive(Default)]
struct Seen {
    /// Ids of every keystore that loaded (from the cache or by KDF).
    ids: Vec<CacheId>,
    /// Entries added in this load.
    inserted: usize,
}

/// Bounds the memory of concurrent scrypt derivations: a counting
/// semaphore over bytes ("credits"), plus the statistics of what it let
/// through.
struct MemoryBudget {
    capacity: u64,
    state: Mutex<BudgetState>,
    freed: Condvar,
}

#[derive(Default)]
struct BudgetState {
    /// Credits held; at most `capacity`.
    credits: u64,
    /// Derivations holding credits, and the bytes they really need.
    running: usize,
    bytes: u64,
    max_running: usize,
    peak_bytes: u64,
}

struct BudgetGuard<'a> {
    budget: &'a MemoryBudget,
    credits: u64,
    bytes: u64,
}

impl MemoryBudget {
    fn new(capacity: u64) -> Self {
        MemoryBudget {
            // A zero budget would let every derivation through for free;
            // one byte makes every scrypt run alone instead.
            capacity: capacity.max(1),
            state: Mutex::new(BudgetState::default()),
            freed: Condvar::new(),
        }
    }

    /// Block until `need` bytes fit in the budget; `None` (no wait) for a
    /// KDF that needs no budget (PBKDF2).
    fn acquire(&self, need: u64) -> Option<BudgetGuard<'_>> {
        if need == 0 {
            return None;
        }
        // Clamped so an oversized keystore can still start: it waits until
        // nothing else holds credits, then holds them all.
        let credits = need.min(self.capacity);
        let mut st = lock(&self.state);
        while st.credits + credits > self.capacity {
            st = self.freed.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        st.credits += credits;
        st.running += 1;
        st.bytes = st.bytes.saturating_add(need);
        st.max_running = st.max_running.max(st.running);
        st.peak_bytes = st.peak_bytes.max(st.bytes);
        Some(BudgetGuard {
            budget: self,
            credits,
            bytes: need,
        })
    }
}

impl Drop for BudgetGuard<'_> {
    fn drop(&mut self) {
        let mut st = lock(&self.budget.state);
        st.credits -= self.credits;
        st.running -= 1;
        st.bytes -= self.bytes;
        drop(st);
        // Wake everyone: waiters need different amounts, and the one that
        // now fits may not be first in line.
        self.budget.freed.notify_all();
    }
}

/// Shared state of the workers of one load.
struct Ctx<'a> {
    budget: MemoryBudget,
    cache: Option<&'a Mutex<KeyCache>>,
    kdf_runs: AtomicUsize,
    cache_hits: AtomicUsize,
    seen: Mutex<Seen>,
}

/// Read, parse and decrypt one keystore, through the cache and the memory
/// budget.
fn load_keystore_job(
    keystore: &Path,
    password: &Password,
    ctx: &Ctx<'_>,
) -> Result<ValidatorKey, Error> {
    // Same order as `load_keystore_file`: parse (and bound) first.
    let json = read_limited(keystore, MAX_KEYSTORE_FILE_LEN)?;
    let ks = Keystore::from_json_bytes(&json)?;
    let from_file;
    let password: &str = match password {
        Password::File(password_file) => {
            from_file = read_password(password_file)?;
            trim_one_newline(password_str(&from_file, password_file)?)
        }
        Password::Value(p) => p.as_str(),
    };

    let id = ctx.cache.map(|cache| lock(cache).id(&json, password));
    if let (Some(cache), Some(id)) = (ctx.cache, id) {
        // Unseal under the lock, derive the pubkey outside it.
        let secret = lock(cache).unseal(&id);
        if let Some(key) = secret.and_then(|s| ValidatorKey::from_secret_bytes(&*s).ok()) {
            // Same rule as `Keystore::decrypt`: the pubkey field must agree.
            if ks.claimed_pubkey().is_none_or(|pk| pk == key.pubkey()) {
                ctx.cache_hits.fetch_add(1, Ordering::Relaxed);
                lock(&ctx.seen).ids.push(id);
                return Ok(key);
            }
        }
    }

    let key = {
        let _credits = ctx.budget.acquire(ks.kdf_memory());
        ctx.kdf_runs.fetch_add(1, Ordering::Relaxed);
        ks.decrypt(password)?
    };
    if let (Some(cache), Some(id)) = (ctx.cache, id) {
        // Failing to cache (only an RNG failure) costs a KDF run on the
        // next start, not this key.
        if lock(cache).insert_by_id(id, &key).is_ok() {
            let mut seen = lock(&ctx.seen);
            seen.ids.push(id);
            seen.inserted += 1;
        }
    }
    Ok(key)
}

type Outcome = (PathBuf, Result<ValidatorKey, Error>);

/// Decrypt on `options.threads` workers: scrypt/PBKDF2 at EIP-2335 default
/// cost take ~0.1–1 s each, which dominates start-up for hundreds of keys.
/// Output order equals input order. Peak scrypt memory is bounded by
/// `options.max_kdf_memory` (see [`MemoryBudget`]).
fn run_parallel(jobs: Vec<Job>, options: &LoadOptions<'_>) -> (Vec<Outcome>, LoadStats, Seen) {
    let total = jobs.len();
    let pending = jobs
        .iter()
        .filter(|j| matches!(j, Job::Keystore { .. }))
        .count();
    let workers = options.threads.max(1).min(pending).max(1);

    let ctx = Ctx {
        budget: MemoryBudget::new(options.max_kdf_memory),
        cache: options.cache,
        kdf_runs: AtomicUsize::new(0),
        cache_hits: AtomicUsize::new(0),
        seen: Mutex::new(Seen::default()),
    };
    // (done, errors), under a lock so progress calls are serialised and
    // `done` never goes backwards.
    let progress_state = Mutex::new((0usize, 0usize));
    let slots: Vec<Mutex<Option<Job>>> = jobs.into_iter().map(|j| Mutex::new(Some(j))).collect();
    let results: Vec<Mutex<Option<Outcome>>> = slots.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);

    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(slot) = slots.get(i) else { break };
                let Some(job) = lock(slot).take() else {
                    continue;
                };
                let outcome = match job {
                    Job::Done { path, result } => (path, result),
                    Job::Keystore { keystore, password } => {
                        let result = load_keystore_job(&keystore, &password, &ctx);
                        (keystore, result)
                    }
                };
                let failed = outcome.1.is_err();
                *lock(&results[i]) = Some(outcome);
                if let Some(report) = options.progress {
                    let mut st = lock(&progress_state);
                    st.0 += 1;
                    st.1 += usize::from(failed);
                    report(Progress {
                        done: st.0,
                        total,
                        errors: st.1,
                    });
                }
            });
        }
    });

    let budget = ctx
        .budget
        .state
        .into_inner()
        .unwrap_or_else(|e| e.into_inner());
    let stats = LoadStats {
        kdf_runs: ctx.kdf_runs.into_inner(),
        cache_hits: ctx.cache_hits.into_inner(),
        max_concurrent_scrypt: budget.max_running,
        peak_kdf_memory: budget.peak_bytes,
    };
    let seen = ctx.seen.into_inner().unwrap_or_else(|e| e.into_inner());
    let outcomes = results
        .into_iter()
        .filter_map(|r| r.into_inner().unwrap_or_else(|e| e.into_inner()))
        .collect();
    (outcomes, stats, seen)
}

/// A poisoned lock here only means another worker panicked mid-job; the
/// data (an `Option`) is still coherent, so keep going.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------
// Directory listing and bounded file reads.
// ---------------------------------------------------------------------------

/// A failure to list `dir`, reported against the directory itself.
fn listing_error(dir: &Path, source: std::io::Error) -> LoadError {
    LoadError {
        path: dir.to_owned(),
        error: Error::Io {
            path: dir.to_owned(),
            source,
        },
    }
}

/// Non-hidden entries of `dir` whose extension is one of `exts` (ASCII
/// case-insensitive), directories excluded, sorted by name. Listing errors
/// go into `report`; `None` if the directory itself is unreadable.
fn list_dir(dir: &Path, exts: &[&str], report: &mut LoadReport) -> Option<Vec<PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(source) => {
            report.errors.push(listing_error(dir, source));
            return None;
        }
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = match entry {
            Ok(e) => e,
            Err(source) => {
                report.errors.push(listing_error(dir, source));
                continue;
            }
        };
        let path = entry.path();
        let name = entry.file_name();
        // Hidden files are editor swap files, `.git`, Kubernetes `..data`
        // symlinks and the like — never keys.
        if name.as_encoded_bytes().first() == Some(&b'.') {
            continue;
        }
        let ext_ok = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| exts.iter().any(|x| e.eq_ignore_ascii_case(x)));
        // `is_dir` follows symlinks; a dangling symlink is kept so that it is
        // reported as unreadable rather than silently skipped.
        if ext_ok && !path.is_dir() {
            files.push(path);
        }
    }
    files.sort();
    Some(files)
}

/// Read a whole file into a zeroizing buffer, refusing anything over
/// `limit` bytes (checked on the open handle, and again while reading in
/// case the file grows or is not a regular file).
fn read_limited(path: &Path, limit: u64) -> Result<Zeroizing<Vec<u8>>, Error> {
    let io = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    let file = fs::File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    if size > limit {
        return Err(Error::FileTooLarge {
            path: path.to_owned(),
            size,
            limit,
        });
    }
    let capacity = usize::try_from(size).unwrap_or(0).saturating_add(1);
    let mut buf = Zeroizing::new(Vec::with_capacity(capacity));
    file.take(limit + 1).read_to_end(&mut buf).map_err(io)?;
    let read = buf.len() as u64;
    if read > limit {
        return Err(Error::FileTooLarge {
            path: path.to_owned(),
            size: read,
            limit,
        });
    }
    Ok(buf)
}

// ---------------------------------------------------------------------------
// YAML key configuration (Web3Signer format; not ours, so unknown fields are
// tolerated rather than denied).
// ---------------------------------------------------------------------------

/// Shape of one YAML document. A flat struct rather than a serde-tagged
/// enum on purpose: serde buffers tagged enums through `deserialize_any`,
/// whose type errors echo the offending value, which for `privateKey` would
/// put key material into an error message.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(not(feature = "aws"), allow(dead_code))]
struct RawKeyConfig {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    key_type: Option<String>,
    #[serde(default)]
    private_key: Option<SecretString>,
    #[serde(default)]
    keystore_file: Option<PathBuf>,
    #[serde(default)]
    keystore_password_file: Option<PathBuf>,
    // AWS (`aws-secret`, `aws-kms-encrypted`); see `crate::aws`.
    #[serde(default)]
    authentication_mode: Option<String>,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    access_key_id: Option<String>,
    #[serde(default)]
    secret_access_key: Option<SecretString>,
    #[serde(default)]
    endpoint_override: Option<String>,
    #[serde(default)]
    secret_name: Option<String>,
    #[serde(default)]
    ciphertext: Option<String>,
    #[serde(default)]
    ciphertext_file: Option<PathBuf>,
    #[serde(default)]
    password_ciphertext: Option<String>,
    #[serde(default)]
    password_ciphertext_file: Option<PathBuf>,
    #[serde(default)]
    encryption_context: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default)]
    kms_key_id: Option<String>,
}

/// A string holding secret material: zeroed on drop, redacted in `Debug`,
/// and deserialised without ever echoing its value in an error. (Not
/// `secrecy::SecretString`: its `Deserialize` is `String`'s, whose error for a
/// non-string quotes the value, e.g. "invalid type: integer `123`".)
struct SecretString(Zeroizing<String>);

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretString(<redacted>)")
    }
}

impl<'de> Deserialize<'de> for SecretString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        const MSG: &str = "secret fields (privateKey, secretAccessKey) must be strings";
        /// Visitor methods that refuse their value with [`MSG`] alone.
        macro_rules! refuse_without_value {
            ($($method:ident: $ty:ty),* $(,)?) => {
                $(fn $method<E: serde::de::Error>(self, _: $ty) -> Result<SecretString, E> {
                    Err(E::custom(MSG))
                })*
            };
        }
        impl serde::de::Visitor<'_> for V {
            type Value = SecretString;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a hex string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SecretString, E> {
                Ok(SecretString(Zeroizing::new(v.to_owned())))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<SecretString, E> {
                Ok(SecretString(Zeroizing::new(v)))
            }
            // The default implementations of these put the value into the
            // error message; replace them with a value-free message.
            refuse_without_value!(
                visit_bool: bool,
                visit_i64: i64,
                visit_u64: u64,
                visit_i128: i128,
                visit_u128: u128,
                visit_f64: f64,
                visit_bytes: &[u8],
            );
        }
        d.deserialize_str(V)
    }
}

/// Parse one config file into jobs (one per document).
fn parse_config_file(path: &Path, jobs: &mut Vec<Pending>) {
    let done = |jobs: &mut Vec<Pending>, result| {
        jobs.push(Pending::Ready(Job::Done {
            path: path.to_owned(),
            result,
        }))
    };
    let bytes = match read_limited(path, MAX_CONFIG_FILE_LEN) {
        Ok(b) => b,
        Err(e) => return done(jobs, Err(e)),
    };
    let Ok(text) = std::str::from_utf8(&bytes) else {
        return done(
            jobs,
            Err(Error::InvalidConfig {
                document: 0,
                reason: "file is not valid UTF-8".into(),
            }),
        );
    };
    let base = path.parent().unwrap_or(Path::new("."));

    // Pass 1: find where the YAML stops being well-formed. serde_yaml_ng's
    // document iterator keeps yielding the same syntax error forever once
    // the parser has failed, so the second pass must stop before it.
    // `IgnoredAny` fails only on syntax (never on shape), so documents
    // before the first error are still loaded.
    let mut well_formed = 0;
    let mut syntax_error = None;
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        if well_formed >= MAX_DOCUMENTS_PER_FILE {
            syntax_error = Some(format!("more than {MAX_DOCUMENTS_PER_FILE} documents"));
            break;
        }
        match serde::de::IgnoredAny::deserialize(doc) {
            Ok(_) => well_formed += 1,
            // libyaml messages carry positions, not content.
            Err(e) => {
                syntax_error = Some(e.to_string());
                break;
            }
        }
    }

    // Pass 2: shape and meaning of each well-formed document.
    let docs = serde_yaml_ng::Deserializer::from_str(text).take(well_formed);
    for (document, doc) in docs.enumerate() {
        // `Option` so that empty documents (a stray `---`) are skipped.
        let raw = match Option::<RawKeyConfig>::deserialize(doc) {
            Ok(Some(raw)) => raw,
            Ok(None) => continue,
            Err(e) => {
                done(
                    jobs,
                    Err(Error::InvalidConfig {
                        document,
                        reason: e.to_string(),
                    }),
                );
                continue;
            }
        };
        match config_to_job(raw, document, base) {
            Ok(ConfigKey::Raw(key)) => done(jobs, Ok(key)),
            Ok(ConfigKey::Keystore { keystore, password }) => {
                jobs.push(Pending::Ready(Job::Keystore {
                    keystore,
                    password: Password::File(password),
                }))
            }
            #[cfg(feature = "aws")]
            Ok(ConfigKey::Aws {
                keystore,
                conn,
                request,
            }) => jobs.push(Pending::Aws {
                path: path.to_owned(),
                keystore,
                conn,
                request,
            }),
            Err(e) => done(jobs, Err(e)),
        }
    }
    if let Some(reason) = syntax_error {
        done(
            jobs,
            Err(Error::InvalidConfig {
                document: well_formed,
                reason,
            }),
        );
    }
}

enum ConfigKey {
    Raw(ValidatorKey),
    Keystore {
        keystore: PathBuf,
        password: PathBuf,
    },
    #[cfg(feature = "aws")]
    Aws {
        keystore: Option<PathBuf>,
        conn: crate::aws::Conn,
        request: crate::aws::Request,
    },
}

fn config_to_job(raw: RawKeyConfig, document: usize, base: &Path) -> Result<ConfigKey, Error> {
    let invalid = |reason: &str| Error::InvalidConfig {
        document,
        reason: reason.to_owned(),
    };
    // Web3Signer's signer types we support, plus our `aws-kms-encrypted`.
    match raw.kind.as_str() {
        "file-raw" | "file-keystore" => {}
        "aws-secret" | "aws-kms-encrypted" if !cfg!(feature = "aws") => {
            return Err(Error::FeatureDisabled {
                kind: raw.kind,
                feature: "aws",
            })
        }
        "aws-secret" | "aws-kms-encrypted" => {}
        _ => return Err(Error::UnsupportedKeyType(raw.kind)),
    }
    // Web3Signer defaults keyType to BLS; SECP256K1 is for Eth1 signing.
    if let Some(kt) = &raw.key_type {
        if kt != "BLS" {
            return Err(Error::UnsupportedKeyAlgorithm(kt.clone()));
        }
    }
    #[cfg(feature = "aws")]
    if raw.kind.starts_with("aws-") {
        return aws_config_to_job(raw, document, base);
    }
    if raw.kind == "file-raw" {
        let pk = raw
            .private_key
            .ok_or_else(|| invalid("file-raw requires privateKey"))?;
        let hex_str = pk.0.trim();
        let hex_str = hex_str.strip_prefix("0x").unwrap_or(hex_str);
        let mut secret = Zeroizing::new([0u8; SECRET_LEN]);
        hex::decode_to_slice(hex_str, &mut *secret)
            .map_err(|_| invalid("privateKey must be 32 bytes of hex"))?;
        return Ok(ConfigKey::Raw(ValidatorKey::from_secret_bytes(&*secret)?));
    }
    let keystore = raw
        .keystore_file
        .ok_or_else(|| invalid("file-keystore requires keystoreFile"))?;
    let password = raw
        .keystore_password_file
        .ok_or_else(|| invalid("file-keystore requires keystorePasswordFile"))?;
    // `Path::join` keeps absolute paths as they are and resolves relative
    // ones against the config file's directory.
    Ok(ConfigKey::Keystore {
        keystore: base.join(keystore),
        password: base.join(password),
    })
}

/// `aws-secret` / `aws-kms-encrypted` document → an AWS request.
#[cfg(feature = "aws")]
fn aws_config_to_job(raw: RawKeyConfig, document: usize, base: &Path) -> Result<ConfigKey, Error> {
    use crate::aws::{AwsAuth, Conn, KmsCiphertext, Request};
    let invalid = |reason: String| Error::InvalidConfig { document, reason };
    let kind = raw.kind.as_str();
    let auth = match raw.authentication_mode.as_deref().unwrap_or("SPECIFIED") {
        "SPECIFIED" => AwsAuth::Specified {
            access_key_id: raw.access_key_id.clone().ok_or_else(|| {
                invalid(format!(
                    "{kind} with authenticationMode SPECIFIED requires accessKeyId"
                ))
            })?,
            secret_access_key: raw
                .secret_access_key
                .as_ref()
                .map(|s| s.0.clone())
                .ok_or_else(|| {
                    invalid(format!(
                        "{kind} with authenticationMode SPECIFIED requires secretAccessKey"
                    ))
                })?,
        },
        "ENVIRONMENT" => AwsAuth::Environment,
        other => {
            return Err(invalid(format!(
                "authenticationMode must be SPECIFIED or ENVIRONMENT, got `{other}`"
            )))
        }
    };
    if matches!(auth, AwsAuth::Specified { .. }) && raw.region.is_none() {
        return Err(invalid(format!(
            "{kind} with authenticationMode SPECIFIED requires region"
        )));
    }
    let conn = Conn {
        auth,
        region: raw.region.clone(),
        endpoint_override: raw.endpoint_override.clone(),
    };
    if kind == "aws-secret" {
        let name = raw
            .secret_name
            .ok_or_else(|| invalid("aws-secret requires secretName".into()))?;
        return Ok(ConfigKey::Aws {
            keystore: None,
            conn,
            request: Request::Secret { name },
        });
    }
    // aws-kms-encrypted: exactly one of the two shapes.
    let key_shape = raw.ciphertext.is_some() || raw.ciphertext_file.is_some();
    let keystore_shape = raw.keystore_file.is_some()
        || raw.password_ciphertext.is_some()
        || raw.password_ciphertext_file.is_some();
    let blob = |inline: Option<String>, file: Option<PathBuf>, field: &str| match (inline, file) {
        (Some(b64), None) => decode_base64(b64.as_bytes())
            .ok_or_else(|| invalid(format!("{field} is not valid base64"))),
        (None, Some(file)) => {
            let bytes = read_limited(&base.join(file), MAX_KEYSTORE_FILE_LEN)?;
            Ok(decode_base64(&bytes).unwrap_or_else(|| bytes.to_vec()))
        }
        (Some(_), Some(_)) => Err(invalid(format!(
            "give either {field} or {field}File, not both"
        ))),
        (None, None) => Err(invalid(format!("{field} or {field}File is required"))),
    };
    let (keystore, request) = match (key_shape, keystore_shape) {
        (true, false) => {
            let ct = blob(raw.ciphertext, raw.ciphertext_file, "ciphertext")?;
            (
                None,
                Request::KmsKey(kms(ct, raw.encryption_context, raw.kms_key_id)),
            )
        }
        (false, true) => {
            let keystore = raw.keystore_file.ok_or_else(|| {
                invalid("aws-kms-encrypted with passwordCiphertext requires keystoreFile".into())
            })?;
            let ct = blob(
                raw.password_ciphertext,
                raw.password_ciphertext_file,
                "passwordCiphertext",
            )?;
            (
                Some(base.join(keystore)),
                Request::KmsPassword(kms(ct, raw.encryption_context, raw.kms_key_id)),
            )
        }
        (true, true) => {
            return Err(invalid(
                "aws-kms-encrypted takes either ciphertext or keystoreFile + \
                 passwordCiphertext, not both"
                    .into(),
            ))
        }
        (false, false) => {
            return Err(invalid(
                "aws-kms-encrypted requires ciphertext (or ciphertextFile), or keystoreFile + \
                 passwordCiphertext"
                    .into(),
            ))
        }
    };
    fn kms(
        blob: Vec<u8>,
        context: Option<std::collections::BTreeMap<String, String>>,
        key_id: Option<String>,
    ) -> KmsCiphertext {
        KmsCiphertext {
            blob,
            context: context.unwrap_or_default(),
            key_id,
        }
    }
    Ok(ConfigKey::Aws {
        keystore,
        conn,
        request,
    })
}

/// Standard base64 (padding optional, whitespace ignored), or `None` if
/// the bytes are not base64 text (e.g. a raw binary ciphertext file).
#[cfg(feature = "aws")]
fn decode_base64(text: &[u8]) -> Option<Vec<u8>> {
    use base64::Engine;
    let compact: Vec<u8> = text
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    if compact.is_empty() {
        return None;
    }
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    engine.decode(compact).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newline_trimming_is_one_line_ending_only() {
        assert_eq!(trim_one_newline("pw\n"), "pw");
        assert_eq!(trim_one_newline("pw\r\n"), "pw");
        assert_eq!(trim_one_newline("pw\n\n"), "pw\n");
        assert_eq!(trim_one_newline(" pw "), " pw ");
        assert_eq!(trim_one_newline("pw\r"), "pw\r");
    }

    #[test]
    fn mem_available_parsing() {
        let text = "MemTotal:       24576000 kB\nMemFree:  100 kB\nMemAvailable:   16000000 kB\n";
        assert_eq!(parse_mem_available(text), Some(16_000_000 * 1024));
        assert_eq!(parse_mem_available("MemTotal: 1 kB\n"), None);
        assert_eq!(parse_mem_available("MemAvailable: x kB\n"), None);
        assert_eq!(parse_mem_available("MemAvailable: 5 MB\n"), None);
        assert!(default_max_kdf_memory() >= MIN_DEFAULT_KDF_MEMORY);
    }

    #[test]
    fn budget_clamps_oversized_and_zero() {
        let budget = MemoryBudget::new(0);
        assert_eq!(budget.capacity, 1);
        assert!(budget.acquire(0).is_none());
        {
            // Larger than the whole budget: still admitted when idle.
            let g = budget.acquire(1 << 30).unwrap();
            assert_eq!(g.credits, 1);
            assert_eq!(lock(&budget.state).credits, 1);
        }
        let st = lock(&budget.state);
        assert_eq!((st.credits, st.running, st.bytes), (0, 0, 0));
        assert_eq!(st.peak_bytes, 1 << 30);
    }

    #[cfg(not(feature = "aws"))]
    #[test]
    fn aws_types_need_the_feature() {
        for kind in ["aws-secret", "aws-kms-encrypted"] {
            let doc = format!("type: {kind}\nsecretName: x\n");
            let raw: RawKeyConfig = serde_yaml_ng::from_str(&doc).unwrap();
            let err = config_to_job(raw, 0, Path::new(".")).err().unwrap();
            assert!(matches!(err, Error::FeatureDisabled { .. }), "{err}");
        }
    }

    #[test]
    fn secret_string_debug_redacted() {
        let s = SecretString(Zeroizing::new("deadbeef".into()));
        assert!(!format!("{s:?}").contains("deadbeef"));
    }

    #[test]
    fn private_key_never_echoed() {
        for doc in [
            "type: file-raw\nprivateKey: 123456789\n",
            "type: file-raw\nprivateKey: 0x1234567\n",
            "type: file-raw\nprivateKey: [123456789]\n",
            "type: file-raw\nprivateKey: {a: 123456789}\n",
            "type: file-raw\nprivateKey: true\n",
        ] {
            let mut jobs = Vec::new();
            for (i, d) in serde_yaml_ng::Deserializer::from_str(doc).enumerate() {
                let r = Option::<RawKeyConfig>::deserialize(d)
                    .map_err(|e| e.to_string())
                    .and_then(|raw| {
                        config_to_job(raw.unwrap(), i, Path::new("."))
                            .map(|_| ())
                            .map_err(|e| e.to_string())
                    });
                jobs.push(r);
            }
            let msg = jobs[0].clone().unwrap_err();
            assert!(!msg.contains("123456789"), "{msg}");
            assert!(!msg.contains("1234567"), "{msg}");
        }
    }
}
