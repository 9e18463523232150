//! Every wait on PostgreSQL is bounded (`PostgresOptions::timeout`): a server that accepts the
//! connection and never answers, and a partition in the middle of a run (a proxy that keeps the
//! sockets open and forwards nothing, so no TCP timer fires), fail the operation within the
//! timeout; the stuck connection is replaced, not reused, once the network is back.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{pk, root, GVR};
use slashing::{Error, Permit, PostgresOptions, PostgresStore, Refusal, SlashingProtection};

const TIMEOUT: Duration = Duration::from_secs(1);

fn options() -> PostgresOptions {
    PostgresOptions {
        pool_size: 2,
        timeout: TIMEOUT,
        schema: None,
    }
}

/// Runs `f` on a thread; fails the test if it has not returned after 30 s (instead of hanging).
fn bounded<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> (T, Duration) {
    let (tx, rx) = std::sync::mpsc::channel();
    let started = Instant::now();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    let out = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("no answer within 30 s: the call hangs on the database");
    (out, started.elapsed())
}

/// A store error that says it gave up waiting.
fn timed_out<T>(r: &Result<T, Error>) -> bool {
    matches!(r, Err(Error::Store(m) | Error::Open(m)) if m.contains("no answer within"))
}

#[test]
fn a_server_that_never_answers_fails_the_open_within_the_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // Accepts, keeps the sockets open, says nothing.
    std::thread::spawn(move || {
        let held: Vec<TcpStream> = listener.incoming().map_while(Result::ok).collect();
        drop(held);
    });
    let url = format!("postgresql://postgres@{addr}/test");
    let (r, took) = bounded(move || PostgresStore::open_with(&url, None, None, options()));
    let r = r.map(drop);
    eprintln!("open against a silent server: {r:?} after {took:?}");
    assert!(timed_out(&r), "{r:?}");
    assert!(took < TIMEOUT * 4, "took {took:?}");
}

/// A loopback proxy to PostgreSQL whose forwarding can be frozen: the sockets stay open and
/// the kernel acknowledges, but no byte passes until it thaws.
struct Proxy {
    addr: String,
    frozen: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
}

impl Proxy {
    fn start(target: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let frozen = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (f, a) = (frozen.clone(), accepted.clone());
        std::thread::spawn(move || {
            for inbound in listener.incoming().map_while(Result::ok) {
                a.fetch_add(1, Ordering::SeqCst);
                let Ok(outbound) = TcpStream::connect(&target) else {
                    continue;
                };
                let back = (outbound.try_clone().unwrap(), inbound.try_clone().unwrap());
                for (from, to) in [(inbound, outbound), back] {
                    let f = f.clone();
                    std::thread::spawn(move || forward(from, to, &f));
                }
            }
        });
        Proxy {
            addr,
            frozen,
            accepted,
        }
    }
}

fn forward(mut from: TcpStream, mut to: TcpStream, frozen: &AtomicBool) {
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n @ 1..) = from.read(&mut buf) {
        while frozen.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(10));
        }
        if to.write_all(&buf[..n]).is_err() {
            return;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

#[test]
fn a_partition_fails_decisions_within_the_timeout_and_the_connection_is_replaced() {
    let Some(schema) = common::PgSchema::new("pg_partition") else {
        return;
    };
    let direct = schema.url();
    let Some((before, after)) = direct.split_once("127.0.0.1:5432") else {
        eprintln!("NOT RUN: pg_partition needs a test URL on 127.0.0.1:5432");
        return;
    };
    let proxy = Proxy::start("127.0.0.1:5432".into());
    let url = format!("{before}{}{after}", proxy.addr);
    let store = Arc::new(PostgresStore::open_with(&url, None, None, options()).unwrap());
    let vote = |store: &PostgresStore, target: u64, r: u64| {
        store.sign_attestation(GVR, pk(1), target - 1, target, root(r))
    };
    assert_eq!(vote(&store, 2, 1).unwrap(), Permit::New);

    proxy.frozen.store(true, Ordering::SeqCst);
    // On the pooled connection: the request goes out, no answer comes back.
    let s = store.clone();
    let (r, took) = bounded(move || vote(&s, 3, 1));
    assert!(timed_out(&r), "{r:?}");
    eprintln!("vote through the partition: {r:?} after {took:?}");
    assert!(took >= TIMEOUT / 2 && took < TIMEOUT * 3, "took {took:?}");
    // On a fresh connection: its start-up gets no answer either.
    let s = store.clone();
    let (r, took) = bounded(move || s.health_check());
    eprintln!("health check through the partition: {r:?} after {took:?}");
    assert!(r.is_err(), "health check through a partition");
    assert!(took < TIMEOUT * 3, "took {took:?}");

    proxy.frozen.store(false, Ordering::SeqCst);
    let before_heal = proxy.accepted.load(Ordering::SeqCst);
    // Nothing of the failed vote was recorded; the stuck connection was not reused.
    assert_eq!(vote(&store, 3, 1).unwrap(), Permit::New);
    assert!(
        proxy.accepted.load(Ordering::SeqCst) > before_heal,
        "a fresh connection after the partition"
    );
    assert!(matches!(
        vote(&store, 3, 2),
        Err(Error::Refused(Refusal::DoubleVote))
    ));
    assert!(matches!(
        vote(&store, 2, 2),
        Err(Error::Refused(Refusal::DoubleVote))
    ));
}
