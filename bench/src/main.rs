//! `ensign-bench`: measures ensign against the machine's limit, in one run.
//!
//! Purpose: on a signer, BLS signing is the physical ceiling (about 770 µs per signature per
//! core). This tool measures that ceiling on the machine it runs on, then drives the release
//! `ensign` binary over HTTP and reports throughput and latency as a ratio to it, for each
//! slashing-protection store, so the cost of durability is visible.
//!
//! Invariants: all traffic goes to a server this tool started on the loopback interface; every
//! phase is bounded in requests and time; results are data (Markdown and JSON), never asserted.

mod http;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde_json::{json, Value};

const DST: &[u8] = b"BLS_SIG_BLS12381G2_XMD:SHA-256_SSWU_RO_POP_";

#[derive(Debug, Parser)]
#[command(
    name = "ensign-bench",
    about = "Benchmark ensign against the machine's raw BLS signing rate"
)]
struct Args {
    /// Number of validators loaded into the signer.
    #[arg(long, default_value_t = 1000)]
    validators: usize,
    /// Concurrent HTTP connections.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Seconds per measured phase.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Short run: 100 validators, 3-second phases, SQLite and no-protection only.
    #[arg(long)]
    quick: bool,
    /// Smoke run for CI: tiny phases, checks that every phase works, numbers meaningless.
    #[arg(long)]
    smoke: bool,
    /// PostgreSQL server URL (without database) for the PostgreSQL phase; empty to skip.
    #[arg(long, default_value = "postgresql://postgres@127.0.0.1:5432")]
    postgres: String,
    /// The ensign binary (default: release/ensign next to this tool).
    #[arg(long)]
    ensign: Option<PathBuf>,
    /// Skip the start-up (key loading) benchmarks.
    #[arg(long)]
    no_startup: bool,
    /// Skip the signing benchmarks.
    #[arg(long)]
    no_signing: bool,
    /// Which stores to measure (comma-separated: sqlite, off, postgres); default all of them
    /// (`--quick`: sqlite and off).
    #[arg(long, value_delimiter = ',')]
    stores: Vec<String>,
    /// Where to write the JSON results.
    #[arg(long, default_value = "bench-results.json")]
    json_out: PathBuf,
}

fn main() -> Result<()> {
    let mut args = Args::parse();
    if args.quick || args.smoke {
        args.validators = args.validators.min(100);
        args.seconds = if args.smoke { 1 } else { 3 };
    }
    let ensign = args.ensign.clone().unwrap_or_else(default_ensign);
    if !ensign.exists() && args.ensign.is_none() {
        // Under `cargo run -p bench`, build the signer too: cargo builds only this package.
        if let Some(cargo) = std::env::var_os("CARGO") {
            eprintln!("== building the ensign release binary");
            let ok = Command::new(cargo)
                .args(["build", "--release", "-p", "server"])
                .status()?
                .success();
            if !ok {
                bail!("cargo build --release -p server failed");
            }
        }
    }
    if !ensign.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p server`",
            ensign.display()
        );
    }
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let phase = Duration::from_secs(args.seconds);

    let raw = if args.no_signing {
        0.0
    } else {
        eprintln!(
            "== raw BLS signing rate on {cores} cores ({}s)",
            args.seconds
        );
        let raw = raw_signing_rate(cores, phase);
        eprintln!("   {raw:.0} signatures/s");
        raw
    };

    let mut results = vec![];
    let startup_rows = if args.no_startup {
        vec![]
    } else {
        let (pbkdf2_n, scrypt_n, cache_n) = if args.smoke {
            (4, 2, 20)
        } else if args.quick {
            (100, 10, 1000)
        } else {
            (1000, 100, 10_000)
        };
        startup::run(&ensign, cores, pbkdf2_n, scrypt_n, cache_n)?
    };
    let mut stores: Vec<(&str, Store)> = vec![("sqlite", Store::Sqlite), ("off", Store::Off)];
    let postgres_asked = args.stores.iter().any(|s| s == "postgres");
    if (!args.quick || postgres_asked) && !args.postgres.is_empty() {
        stores.push(("postgres", Store::Postgres(args.postgres.clone())));
    }
    if !args.stores.is_empty() {
        for wanted in &args.stores {
            if !["sqlite", "off", "postgres"].contains(&wanted.as_str()) {
                bail!("--stores: unknown store {wanted:?} (sqlite, off, postgres)");
            }
        }
        stores.retain(|(label, _)| args.stores.iter().any(|w| w == label));
    }
    if args.no_signing {
        stores.clear();
    }
    for (label, store) in stores {
        let server = match Server::start(&ensign, args.validators, &store) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("!! {label}: cannot start ensign: {e:#}");
                continue;
            }
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let load = Load {
            addr: server.addr.clone(),
            paths: Arc::new(
                server
                    .pubkeys
                    .iter()
                    .map(|pk| format!("/api/v1/eth2/sign/{pk}"))
                    .collect(),
            ),
        };
        eprintln!(
            "== {label}: attestations, {} connections, {}s",
            args.connections, args.seconds
        );
        let pid = server.child.id().to_string();
        let cpu = |f: &dyn Fn() -> Result<Outcome>| -> Result<(Outcome, f64, f64)> {
            let (s0, c0) = (cpu_seconds(&pid), cpu_seconds("self"));
            let o = f()?;
            let secs = o.elapsed.as_secs_f64();
            Ok((
                o,
                (cpu_seconds(&pid) - s0) / secs,
                (cpu_seconds("self") - c0) / secs,
            ))
        };
        let (att, scpu, ccpu) =
            cpu(&|| rt.block_on(load.closed_loop(args.connections, phase, Mix::Attestations, 0)))?;
        eprintln!(
            "   {} | cores busy: server {scpu:.2}, client {ccpu:.2}",
            att.summary(raw)
        );
        results.push(with_cpu(
            att.row(label, "attestations, max", raw),
            scpu,
            ccpu,
        ));
        let offset = att.requests + 1;
        let half = att.throughput() / 2.0;
        eprintln!("== {label}: attestations at half of max ({half:.0}/s)");
        let (paced, scpu, ccpu) =
            cpu(&|| rt.block_on(load.open_loop(half, args.connections, phase, offset)))?;
        eprintln!(
            "   {} | cores busy: server {scpu:.2}, client {ccpu:.2}",
            paced.summary(raw)
        );
        results.push(with_cpu(
            paced.row(label, "attestations, half of max", raw),
            scpu,
            ccpu,
        ));
        let offset = offset + paced.requests + 1;
        eprintln!("== {label}: mix of all types");
        let (mix, scpu, ccpu) =
            cpu(&|| rt.block_on(load.closed_loop(args.connections, phase, Mix::All, offset)))?;
        eprintln!(
            "   {} | cores busy: server {scpu:.2}, client {ccpu:.2}",
            mix.summary(raw)
        );
        results.push(with_cpu(
            mix.row(label, "mixed types, max", raw),
            scpu,
            ccpu,
        ));
        let rss = server.peak_rss_kib();
        for r in results.iter_mut().filter(|r| r["store"] == label) {
            r["server_peak_rss_kib"] = json!(rss);
        }
        server.stop();
    }

    let doc = json!({
        "machine": {"cores": cores},
        "validators": args.validators,
        "connections": args.connections,
        "seconds_per_phase": args.seconds,
        "raw_signing_rate": raw,
        "results": results,
        "startup": startup_rows,
    });
    std::fs::write(&args.json_out, serde_json::to_string_pretty(&doc)?)?;
    println!("{}", markdown(&doc));
    if results.is_empty() && doc["startup"].as_array().is_none_or(|a| a.is_empty()) {
        bail!("no phase ran");
    }
    if results.iter().any(|r| r["ok"].as_u64() == Some(0)) {
        bail!("a phase completed no request");
    }
    Ok(())
}

fn with_cpu(mut row: Value, server: f64, client: f64) -> Value {
    row["server_cores_busy"] = json!(server);
    row["client_cores_busy"] = json!(client);
    row
}

fn default_ensign() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    exe.parent()
        .map(|d| d.join("ensign"))
        .unwrap_or_else(|| PathBuf::from("ensign"))
}

/// CPU seconds (user + system) used so far by process `pid` ("self" for this one).
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Signs 32-byte messages on `threads` threads for `d`; returns signatures per second.
fn raw_signing_rate(threads: usize, d: Duration) -> f64 {
    let count = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let count = count.clone();
            s.spawn(move || {
                let sk = blst::min_pk::SecretKey::key_gen(&[t as u8 + 1; 32], &[]).expect("ikm");
                let mut msg = [0u8; 32];
                while start.elapsed() < d {
                    msg[..8].copy_from_slice(&count.fetch_add(1, Ordering::Relaxed).to_le_bytes());
                    std::hint::black_box(sk.sign(&msg, DST, &[]).compress());
                }
            });
        }
    });
    count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

enum Store {
    Sqlite,
    Off,
    Postgres(String),
}

struct Server {
    child: Child,
    /// `HOST:PORT` it listens on.
    addr: String,
    pubkeys: Arc<Vec<String>>,
    _dir: tempfile::TempDir,
}

/// ensign on a free port, logging warnings and its own start-up lines (`listening on …`), its
/// data in `data`: the part every benchmark's command line shares.
fn ensign_command(bin: &Path, data: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args([
        "--http-listen-port",
        "0",
        "--logging",
        "WARN,server=info",
        "--data-path",
    ])
    .arg(data);
    cmd
}

impl Server {
    fn start(bin: &Path, validators: usize, store: &Store) -> Result<Server> {
        let dir = tempfile::TempDir::new()?;
        let keys = dir.path().join("keys");
        std::fs::create_dir_all(&keys)?;
        let mut pubkeys = Vec::with_capacity(validators);
        let mut yaml = String::new();
        for i in 0..validators {
            let mut ikm = [0u8; 32];
            ikm[..8].copy_from_slice(&(i as u64).to_le_bytes());
            let sk = blst::min_pk::SecretKey::key_gen(&ikm, &[]).expect("ikm");
            pubkeys.push(format!("0x{}", hex::encode(sk.sk_to_pk().compress())));
            yaml.push_str(&format!(
                "---\ntype: file-raw\nprivateKey: \"0x{}\"\n",
                hex::encode(sk.to_bytes())
            ));
        }
        std::fs::write(keys.join("bench-keys.yaml"), yaml)?;
        let mut cmd = ensign_command(bin, &dir.path().join("data"));
        cmd.arg("--key-store-path")
            .arg(&keys)
            .args(["eth2", "--network", "mainnet"]);
        match store {
            Store::Sqlite => {}
            Store::Off => {
                cmd.arg("--slashing-protection-enabled=false");
            }
            Store::Postgres(url) => {
                let db = format!("ensign_bench_{}", std::process::id());
                let admin = format!("{url}/postgres");
                for sql in [
                    format!("DROP DATABASE IF EXISTS {db}"),
                    format!("CREATE DATABASE {db}"),
                ] {
                    let ok = Command::new("psql")
                        .env("PGOPTIONS", "--client-min-messages=warning")
                        .args([&admin, "-q", "-c", &sql])
                        .status()?
                        .success();
                    if !ok {
                        bail!("psql could not run {sql:?}");
                    }
                }
                cmd.arg("--slashing-protection-db-url")
                    .arg(format!("{url}/{db}"));
            }
        }
        // Its log (one line per request) goes to a file, as it would in production: reading
        // it through a pipe would put that work on the load generator's side of the machine.
        let log_path = dir.path().join("ensign.log");
        let log = std::fs::File::create(&log_path)?;
        let mut child = cmd
            .stdout(Stdio::from(log))
            .stderr(Stdio::inherit())
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(300);
        let addr = loop {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            if let Some(rest) = text.split("listening on http://").nth(1) {
                break rest.lines().next().unwrap_or("").trim().to_string();
            }
            if let Some(status) = child.try_wait()? {
                bail!("ensign exited before serving ({status}); its log: {text}");
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("ensign did not start within 300 s");
            }
            // The log file is the only readiness signal before the port is known.
            std::thread::sleep(Duration::from_millis(20));
        };
        Ok(Server {
            child,
            addr,
            pubkeys: Arc::new(pubkeys),
            _dir: dir,
        })
    }

    /// Peak resident set (VmHWM) of the server, KiB.
    fn peak_rss_kib(&self) -> Option<u64> {
        Server::rss_of(self.child.id())
    }

    /// Peak resident set (VmHWM) of process `pid`, KiB.
    fn rss_of(pid: u32) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

#[derive(Clone, Copy)]
enum Mix {
    Attestations,
    All,
}

struct Load {
    /// `HOST:PORT` of the signer.
    addr: String,
    /// The sign path of each validator, `/api/v1/eth2/sign/0x…`.
    paths: Arc<Vec<String>>,
}

/// The `fork_info` member of every request (Fulu on mainnet), pre-rendered.
const FORK_INFO: &str = concat!(
    r#"{"fork":{"previous_version":"0x05000000","current_version":"0x06000000","epoch":"411392"},"#,
    r#""genesis_validators_root":"0x4b363db94e286120d76eb905340fdd4e54bfe9f06bf33ff6cf5ad27f511bfe95"}"#
);

/// The `k`-th request: validator `k mod N`, epochs advancing by one per round over all
/// validators, so no request is slashable and no two in flight share a validator. The body is
/// written straight into a string (what a validator client sends); a JSON value tree would cost
/// the load generator CPU that the signer then lacks.
fn request(k: u64, validators: usize, mix: Mix) -> (usize, String) {
    let v = (k % validators as u64) as usize;
    let round = k / validators as u64;
    let epoch = 420_000 + round;
    let slot = epoch * 32 + (v as u64 % 32);
    let root = format!("0x{:064x}", k);
    let kind = match mix {
        Mix::Attestations => 0,
        Mix::All => k % 10,
    };
    let f = FORK_INFO;
    let body = match kind {
        0..=5 => format!(
            r#"{{"type":"ATTESTATION","fork_info":{f},"attestation":{{"slot":"{slot}","index":"0","beacon_block_root":"{root}","source":{{"epoch":"{}","root":"{root}"}},"target":{{"epoch":"{epoch}","root":"{root}"}}}}}}"#,
            epoch - 1
        ),
        6 => format!(
            r#"{{"type":"AGGREGATION_SLOT","fork_info":{f},"aggregation_slot":{{"slot":"{slot}"}}}}"#
        ),
        7 => format!(
            r#"{{"type":"SYNC_COMMITTEE_MESSAGE","fork_info":{f},"sync_committee_message":{{"beacon_block_root":"{root}","slot":"{slot}"}}}}"#
        ),
        8 => format!(
            r#"{{"type":"RANDAO_REVEAL","fork_info":{f},"randao_reveal":{{"epoch":"{epoch}"}}}}"#
        ),
        _ => format!(
            r#"{{"type":"BLOCK_V2","fork_info":{f},"beacon_block":{{"version":"FULU","block_header":{{"slot":"{slot}","proposer_index":"{v}","parent_root":"{root}","state_root":"{root}","body_root":"{root}"}}}}}}"#
        ),
    };
    (v, body)
}

struct Outcome {
    elapsed: Duration,
    requests: u64,
    ok: u64,
    errors: u64,
    latencies_us: Vec<u64>,
}

impl Outcome {
    fn throughput(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }
    fn pct(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let i = ((self.latencies_us.len() - 1) as f64 * p).round() as usize;
        self.latencies_us[i] as f64 / 1000.0
    }
    fn summary(&self, raw: f64) -> String {
        format!(
            "{:.0}/s ({:.2} of raw), p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, errors {}",
            self.throughput(),
            self.throughput() / raw,
            self.pct(0.5),
            self.pct(0.99),
            self.pct(1.0),
            self.errors
        )
    }
    fn row(&self, store: &str, phase: &str, raw: f64) -> Value {
        json!({
            "store": store, "phase": phase, "ok": self.ok, "errors": self.errors,
            "seconds": self.elapsed.as_secs_f64(), "throughput": self.throughput(),
            "ratio_to_raw": self.throughput() / raw,
            "p50_ms": self.pct(0.5), "p90_ms": self.pct(0.9), "p99_ms": self.pct(0.99), "max_ms": self.pct(1.0),
        })
    }
}

impl Load {
    async fn one(conn: &mut http::Conn, paths: &[String], k: u64, mix: Mix) -> (bool, u64) {
        let (v, body) = request(k, paths.len(), mix);
        let t = Instant::now();
        let ok = match conn.post_json(&paths[v], &body).await {
            Ok(r) if r.status == 200 && http::is_signature_json(r.body) => true,
            Ok(r) => {
                // Rare by construction; say which, so an error count is never a mystery.
                eprintln!(
                    "   request {k} (validator {v}): {}: {}",
                    r.status,
                    String::from_utf8_lossy(r.body)
                );
                false
            }
            Err(e) => {
                eprintln!("   request {k} (validator {v}): {e}");
                false
            }
        };
        (ok, t.elapsed().as_micros() as u64)
    }

    /// `connections` workers, each on its own connection, sending its next request as soon as
    /// the last one returned.
    async fn closed_loop(
        &self,
        connections: usize,
        d: Duration,
        mix: Mix,
        offset: u64,
    ) -> Result<Outcome> {
        let mut conns = Vec::with_capacity(connections);
        for _ in 0..connections {
            conns.push(http::Conn::connect(&self.addr).await?);
        }
        let next = Arc::new(AtomicU64::new(offset));
        let start = Instant::now();
        let mut tasks = vec![];
        for mut conn in conns {
            let (next, paths, addr) = (next.clone(), self.paths.clone(), self.addr.clone());
            tasks.push(tokio::spawn(async move {
                let mut lat = vec![];
                let mut errors = 0;
                while start.elapsed() < d {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let (ok, us) = Load::one(&mut conn, &paths, k, mix).await;
                    if ok {
                        lat.push(us);
                    } else {
                        errors += 1;
                        // The connection may be unusable after an error: start a new one.
                        match http::Conn::connect(&addr).await {
                            Ok(c) => conn = c,
                            Err(_) => break,
                        }
                    }
                }
                (lat, errors)
            }));
        }
        let mut out = Outcome {
            elapsed: Duration::ZERO,
            requests: 0,
            ok: 0,
            errors: 0,
            latencies_us: vec![],
        };
        for t in tasks {
            let (lat, errors) = t.await?;
            out.ok += lat.len() as u64;
            out.errors += errors;
            out.latencies_us.extend(lat);
        }
        out.elapsed = start.elapsed();
        out.requests = next.load(Ordering::Relaxed) - offset;
        out.latencies_us.sort_unstable();
        Ok(out)
    }

    /// Requests started at a fixed `rate` (open loop), at most `cap` in flight.
    async fn open_loop(&self, rate: f64, cap: usize, d: Duration, offset: u64) -> Result<Outcome> {
        // Idle connections; a request takes one (or opens one) and gives it back.
        let idle = Arc::new(std::sync::Mutex::new(Vec::<http::Conn>::new()));
        let sem = Arc::new(tokio::sync::Semaphore::new(cap));
        let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
        let start = Instant::now();
        let mut tasks = vec![];
        let mut k = offset;
        let mut due = start;
        while start.elapsed() < d {
            tokio::time::sleep_until(due.into()).await;
            due += interval;
            let permit = sem.clone().acquire_owned().await?;
            let (idle, addr, paths) = (idle.clone(), self.addr.clone(), self.paths.clone());
            tasks.push(tokio::spawn(async move {
                let taken = idle.lock().expect("idle pool").pop();
                let mut conn = match taken {
                    Some(c) => c,
                    None => match http::Conn::connect(&addr).await {
                        Ok(c) => c,
                        Err(e) => {
                            eprintln!("   request {k}: cannot connect: {e}");
                            return (false, 0);
                        }
                    },
                };
                let r = Load::one(&mut conn, &paths, k, Mix::Attestations).await;
                if r.0 {
                    idle.lock().expect("idle pool").push(conn);
                }
                drop(permit);
                r
            }));
            k += 1;
        }
        let mut out = Outcome {
            elapsed: Duration::ZERO,
            requests: k - offset,
            ok: 0,
            errors: 0,
            latencies_us: vec![],
        };
        for t in tasks {
            let (ok, us) = t.await?;
            if ok {
                out.ok += 1;
                out.latencies_us.push(us);
            } else {
                out.errors += 1;
            }
        }
        out.elapsed = start.elapsed();
        out.latencies_us.sort_unstable();
        Ok(out)
    }
}

fn markdown(doc: &Value) -> String {
    let mut s = signing_markdown(doc);
    let rows = doc["startup"].as_array().cloned().unwrap_or_default();
    if !rows.is_empty() {
        s.push_str("\n| start-up case | keys | time to serve s | KDF lower bound s | ratio | keys loaded | server peak RSS MiB |\n|---|---|---|---|---|---|---|\n");
        for r in rows {
            s.push_str(&format!(
                "| {} | {} | {:.2} | {} | {} | {} | {:.1} |\n",
                r["case"].as_str().unwrap_or(""),
                r["keys"],
                r["seconds"].as_f64().unwrap_or(0.0),
                r["lower_bound_seconds"]
                    .as_f64()
                    .map_or("-".into(), |v| format!("{v:.2}")),
                r["ratio_to_lower_bound"]
                    .as_f64()
                    .map_or("-".into(), |v| format!("{v:.2}")),
                r["keys_loaded"],
                r["peak_rss_kib"].as_f64().unwrap_or(0.0) / 1024.0,
            ));
        }
    }
    s
}

fn signing_markdown(doc: &Value) -> String {
    if doc["results"].as_array().is_none_or(|r| r.is_empty()) {
        return String::new();
    }
    let mut s = format!(
        "Raw BLS signing rate: {:.0}/s on {} cores. {} validators, {} connections, {} s per phase.\n\n",
        doc["raw_signing_rate"].as_f64().unwrap_or(0.0),
        doc["machine"]["cores"],
        doc["validators"],
        doc["connections"],
        doc["seconds_per_phase"]
    );
    s.push_str("| store | phase | signatures/s | ratio to raw | p50 ms | p90 ms | p99 ms | max ms | errors | server cores busy | client cores busy | server peak RSS MiB |\n");
    s.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for r in doc["results"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            "| {} | {} | {:.0} | {:.2} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {:.2} | {:.2} | {} |\n",
            r["store"].as_str().unwrap_or(""),
            r["phase"].as_str().unwrap_or(""),
            r["throughput"].as_f64().unwrap_or(0.0),
            r["ratio_to_raw"].as_f64().unwrap_or(0.0),
            r["p50_ms"].as_f64().unwrap_or(0.0),
            r["p90_ms"].as_f64().unwrap_or(0.0),
            r["p99_ms"].as_f64().unwrap_or(0.0),
            r["max_ms"].as_f64().unwrap_or(0.0),
            r["errors"],
            r["server_cores_busy"].as_f64().unwrap_or(0.0),
            r["client_cores_busy"].as_f64().unwrap_or(0.0),
            r["server_peak_rss_kib"]
                .as_u64()
                .map_or("-".into(), |k| format!("{:.1}", k as f64 / 1024.0)),
        ));
    }
    s
}

/// Start-up: time until ensign serves with N keystores, against the pure key-derivation time
/// of the same machine (the lower bound), and restarts with the sealed key cache.
mod startup {
    use super::*;

    const PASSWORD: &str = "bench password";

    /// The pure key-derivation time for `n` keystores on all cores: decrypts a sample of them
    /// (up to four per core) in parallel with nothing else running, and scales to `n`. Measured
    /// in parallel, not from one thread, because scrypt is bound by memory bandwidth, which
    /// the cores share.
    fn kdf_lower_bound(dir: &Path, n: usize, cores: usize) -> Result<f64> {
        let sample = n.min(cores * 4).max(1);
        let jsons: Vec<String> = (0..sample)
            .map(|i| std::fs::read_to_string(dir.join(format!("keystore-{i:05}.json"))))
            .collect::<std::io::Result<_>>()?;
        let next = AtomicU64::new(0);
        let t = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..cores {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some(json) = jsons.get(i) else { return };
                    keystore::decrypt(json, PASSWORD).expect("decrypt");
                });
            }
        });
        Ok(t.elapsed().as_secs_f64() * n as f64 / sample as f64)
    }

    /// Writes `n` keystores with `kdf` into a new directory, on every core.
    fn write_keystores(dir: &Path, n: usize, kdf: keystore::Kdf, cores: usize) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        let next = AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..cores {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    if i >= n {
                        return;
                    }
                    let mut ikm = [7u8; 32];
                    ikm[..8].copy_from_slice(&(i as u64).to_le_bytes());
                    let sk = blst::min_pk::SecretKey::key_gen(&ikm, &[]).expect("ikm");
                    let key = keystore::ValidatorKey::from_secret(sk);
                    let json = keystore::encrypt(&key, PASSWORD, kdf).expect("encrypt");
                    std::fs::write(dir.join(format!("keystore-{i:05}.json")), json).expect("write");
                });
            }
        });
        Ok(())
    }

    /// Starts ensign on the keystores; returns (seconds until it serves, keys loaded, peak RSS KiB).
    fn time_to_serve(
        bin: &Path,
        work: &Path,
        keystores: &Path,
        cache: bool,
    ) -> Result<(f64, u64, u64)> {
        let pw = work.join("password.txt");
        std::fs::write(&pw, PASSWORD)?;
        let mut cmd = ensign_command(bin, &work.join("data"));
        cmd.args([
            "eth2",
            "--slashing-protection-enabled=false",
            "--keystores-path",
        ])
        .arg(keystores)
        .arg("--keystores-password-file")
        .arg(&pw);
        if cache {
            let secret = work.join("cache-secret");
            std::fs::write(&secret, "bench operator secret")?;
            cmd.arg("--key-cache-secret-file").arg(secret);
        }
        let started = Instant::now();
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut addr = None;
        use std::io::BufRead;
        let mut lines = std::io::BufReader::new(stdout).lines();
        for line in lines.by_ref().map_while(Result::ok) {
            if let Some(a) = line.split("listening on http://").nth(1) {
                addr = Some(a.trim().to_string());
                break;
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        std::thread::spawn(move || for _ in lines {});
        let addr = addr.context("ensign did not start")?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let keys: Vec<String> = rt.block_on(async {
            reqwest::get(format!("http://{addr}/api/v1/eth2/publicKeys"))
                .await?
                .json()
                .await
        })?;
        let server = Server::rss_of(child.id());
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let _ = child.wait();
        Ok((seconds, keys.len() as u64, server.unwrap_or(0)))
    }

    fn row(case: &str, keys: usize, t: (f64, u64, u64), lower: Option<f64>) -> Value {
        eprintln!(
            "   {case}: {:.2} s to serve {} keys{}",
            t.0,
            t.1,
            lower.map_or(String::new(), |l| format!(
                " (KDF lower bound {l:.2} s, ratio {:.2})",
                t.0 / l
            ))
        );
        json!({"case": case, "keys": keys, "seconds": t.0, "keys_loaded": t.1, "peak_rss_kib": t.2,
               "lower_bound_seconds": lower, "ratio_to_lower_bound": lower.map(|l| t.0 / l)})
    }

    pub fn run(
        bin: &Path,
        cores: usize,
        pbkdf2_n: usize,
        scrypt_n: usize,
        cache_n: usize,
    ) -> Result<Vec<Value>> {
        let work = tempfile::TempDir::new()?;
        let mut rows = vec![];
        for (label, n, kdf) in [
            (
                "pbkdf2 c=262144",
                pbkdf2_n,
                keystore::Kdf::Pbkdf2 { c: 262_144 },
            ),
            (
                "scrypt n=262144",
                scrypt_n,
                keystore::Kdf::Scrypt { n: 262_144 },
            ),
        ] {
            eprintln!("== start-up: {n} keystores, {label}");
            let dir = work.path().join(label.split(' ').next().unwrap_or("ks"));
            write_keystores(&dir, n, kdf, cores)?;
            // The lower bound: every key derived once, all cores busy, nothing else done.
            let lower = kdf_lower_bound(&dir, n, cores)?;
            let case_dir = tempfile::TempDir::new()?;
            rows.push(row(
                &format!("{n} keystores, {label}"),
                n,
                time_to_serve(bin, case_dir.path(), &dir, false)?,
                Some(lower),
            ));
        }
        // The restart cache: the KDF cost of the keystores does not matter once cached, so a
        // cheap KDF keeps the first (cache-filling) start short.
        eprintln!("== start-up: {cache_n} keystores with the restart cache");
        let dir = work.path().join("cached");
        write_keystores(&dir, cache_n, keystore::Kdf::Pbkdf2 { c: 1024 }, cores)?;
        let case_dir = tempfile::TempDir::new()?;
        let first = time_to_serve(bin, case_dir.path(), &dir, true)?;
        rows.push(row(
            &format!("{cache_n} keystores, first start filling the cache (pbkdf2 c=1024)"),
            cache_n,
            first,
            None,
        ));
        let again = time_to_serve(bin, case_dir.path(), &dir, true)?;
        rows.push(row(
            &format!("{cache_n} keystores, restart from the cache"),
            cache_n,
            again,
            None,
        ));
        Ok(rows)
    }
}
