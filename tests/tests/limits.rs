//! Connection-level limits against hostile or broken clients, over raw TCP: oversized request
//! heads (431), a client that never finishes its head (disconnected after
//! `--http-header-read-timeout-seconds`, even when it trickles bytes), a client that never
//! finishes its body (408 and disconnected after `--http-request-body-timeout-seconds`, even
//! when it trickles bytes, while a large body on a slow link that keeps the minimum rate is
//! served), idle kept-alive connections (closed after `--idle-connection-timeout-seconds`), and
//! the connection cap (`--http-max-connections`: connections that wait for their client give
//! their slot to new ones, others wait). The metrics listener has the same limits. In each case
//! the server keeps serving everyone else.
//!
//! Waits are for events (a response, the server closing the socket); the time bounds are
//! safety nets that fail the test, or the property under test (answered within a second,
//! closed by the deadline), plus one "no answer yet" check that cannot pass wrongly.

use std::time::Duration;

use tokio::time::Instant;

use tests::{Runner, SignerBuilder, TestSigner};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;

/// Far longer than any limit under test: reaching it fails the test.
const SAFETY: Duration = Duration::from_secs(60);

/// A client that keeps no idle connection, so that only the test's own sockets hold the
/// server's connection slots.
fn unpooled() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

async fn signer(args: &[&str]) -> TestSigner {
    start(Runner::InProcess, SignerBuilder::new(), args).await
}

/// Starts `b` with `runner`, the global options `args` and a client without idle connections.
async fn start(runner: Runner, b: SignerBuilder, args: &[&str]) -> TestSigner {
    let mut b = b.client(unpooled());
    for a in args {
        b = b.global_arg(a);
    }
    b.start(runner).await
}

async fn assert_serving(s: &TestSigner) {
    let up = s.get("/upcheck").await;
    assert_eq!((up.status, up.body.as_str()), (200, "OK"));
}

/// Reads one response (head and `Content-Length` body) and returns its status.
async fn read_response(stream: &mut TcpStream) -> u16 {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut buf).await.expect("read response");
        assert!(n > 0, "connection closed before a response: {raw:?}");
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_string();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        })
        .map(|(_, v)| v.trim().parse().unwrap())
        .unwrap_or(0);
    while raw.len() < head_end + len {
        let n = stream.read(&mut buf).await.expect("read body");
        assert!(n > 0, "connection closed inside the body");
        raw.extend_from_slice(&buf[..n]);
    }
    head.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Waits until the server closes `stream` (EOF or reset); fails after [`SAFETY`].
async fn await_closed(stream: &mut TcpStream, what: &str) {
    let mut buf = [0u8; 1024];
    let got = tokio::time::timeout(SAFETY, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(got.is_ok(), "the server never closed {what}");
}

/// A new connection to `addr` that has sent `bytes`.
async fn connect_and_send(addr: &str, bytes: &[u8]) -> TcpStream {
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(bytes).await.unwrap();
    c
}

/// Keeps writing `byte` on `stream` every `pace` (a slowloris client) until the server closes
/// it; the read half, to watch for that, and the writing task come back.
fn trickle_bytes(
    stream: TcpStream,
    byte: &'static [u8],
    pace: Duration,
) -> (OwnedReadHalf, tokio::task::JoinHandle<()>) {
    let (read, mut write) = stream.into_split();
    let dripping = tokio::spawn(async move {
        // Pacing, not an assertion: stops when the server has closed the connection.
        while write.write_all(byte).await.is_ok() {
            tokio::time::sleep(pace).await;
        }
    });
    (read, dripping)
}

fn upcheck(extra_headers: &str) -> String {
    format!("GET /upcheck HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra_headers}\r\n")
}

#[tokio::test]
async fn oversized_request_heads_get_431_and_the_server_keeps_serving() {
    let s = signer(&[]).await;

    // One header field past the 16 KiB head limit.
    let big = format!("X-Big: {}\r\n", "a".repeat(20 * 1024));
    let mut c = connect_and_send(s.addr(), upcheck(&big).as_bytes()).await;
    assert_eq!(read_response(&mut c).await, 431);

    // More than 100 header fields.
    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let mut c = connect_and_send(s.addr(), upcheck(&many).as_bytes()).await;
    assert_eq!(read_response(&mut c).await, 431);

    // A head that never ends: refused once the read buffer is full, not buffered forever.
    let mut c = TcpStream::connect(s.addr()).await.unwrap();
    let endless = format!(
        "GET /upcheck HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Endless: {}",
        "b".repeat(256 * 1024)
    );
    // The server may stop reading (and close) before everything is written.
    let _ = c.write_all(endless.as_bytes()).await;
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(SAFETY, c.read_to_end(&mut raw))
        .await
        .expect("the server kept a never-ending head open");
    let text = String::from_utf8_lossy(&raw);
    assert!(raw.is_empty() || text.starts_with("HTTP/1.1 431"), "{text}");

    // A large but legitimate head is still served.
    let fine = format!("X-Fine: {}\r\n", "c".repeat(8 * 1024));
    let mut c = connect_and_send(s.addr(), upcheck(&fine).as_bytes()).await;
    assert_eq!(read_response(&mut c).await, 200);

    assert_serving(&s).await;
    s.stop().await;
}

#[tokio::test]
async fn a_client_that_never_finishes_its_head_is_disconnected() {
    // Idle connections are never closed here, so only the header timeout can end them.
    let s = signer(&[
        "--http-header-read-timeout-seconds",
        "1",
        "--idle-connection-timeout-seconds",
        "0",
    ])
    .await;

    // Sends half a head and stops.
    let mut stalled =
        connect_and_send(s.addr(), b"GET /upcheck HTTP/1.1\r\nHost: 127.0.0.1\r\n").await;
    // Connects and sends nothing at all.
    let mut silent = TcpStream::connect(s.addr()).await.unwrap();
    // Keeps sending one byte of a header at a time (slowloris): the timeout runs from the
    // head's first byte, not from the last one.
    let trickle = connect_and_send(
        s.addr(),
        b"GET /upcheck HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ",
    )
    .await;
    let (mut trickle_read, dripping) = trickle_bytes(trickle, b"z", Duration::from_millis(200));

    // Everyone else is served meanwhile.
    assert_serving(&s).await;

    await_closed(&mut stalled, "a connection with half a head").await;
    await_closed(&mut silent, "a connection that sent nothing").await;
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(SAFETY, async {
        loop {
            match trickle_read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the server never closed a slowloris connection"
    );
    let _ = tokio::time::timeout(SAFETY, dripping).await;

    assert_serving(&s).await;
    s.stop().await;
}

#[tokio::test]
async fn idle_kept_alive_connections_are_closed() {
    // A long header timeout: only the idle timeout can close the connection below.
    let s = signer(&[
        "--idle-connection-timeout-seconds",
        "1",
        "--http-header-read-timeout-seconds",
        "600",
    ])
    .await;
    let mut c = connect_and_send(s.addr(), upcheck("").as_bytes()).await;
    assert_eq!(read_response(&mut c).await, 200);
    // Kept alive: a second request on the same connection is answered.
    c.write_all(upcheck("").as_bytes()).await.unwrap();
    assert_eq!(read_response(&mut c).await, 200);
    await_closed(&mut c, "an idle kept-alive connection").await;
    assert_serving(&s).await;
    s.stop().await;
}

#[tokio::test]
async fn past_the_cap_the_connection_waiting_longest_gives_up_its_slot() {
    // Nothing times out during the test: only the cap can close a connection.
    let s = signer(&[
        "--http-max-connections",
        "2",
        "--idle-connection-timeout-seconds",
        "0",
        "--http-header-read-timeout-seconds",
        "600",
    ])
    .await;

    // Two kept-alive connections, each proven accepted by an answer; `first` idles longest.
    let mut first = connect_and_send(s.addr(), upcheck("").as_bytes()).await;
    assert_eq!(read_response(&mut first).await, 200);
    let mut second = connect_and_send(s.addr(), upcheck("").as_bytes()).await;
    assert_eq!(read_response(&mut second).await, 200);

    // A third is served although both slots are held: the connection idle longest makes room.
    let mut third = connect_and_send(s.addr(), upcheck("").as_bytes()).await;
    let status = tokio::time::timeout(SAFETY, read_response(&mut third))
        .await
        .expect("a connection past the cap was never served");
    assert_eq!(status, 200);
    await_closed(&mut first, "the connection idle longest, past the cap").await;
    // The other one kept its slot.
    second.write_all(upcheck("").as_bytes()).await.unwrap();
    assert_eq!(read_response(&mut second).await, 200);

    drop(second);
    drop(third);
    assert_serving(&s).await;
    s.stop().await;
}

/// The connection cap of the stalled-body tests: small, so that filling it is quick.
const CAP: usize = 32;
/// Their body timeout.
const BODY_TIMEOUT: Duration = Duration::from_secs(2);
/// How long past its deadline a connection may take to close: scheduling slack, not a wait.
const SLACK: Duration = Duration::from_secs(3);

/// Reads what the server sends on `stream` until it closes it, which must happen by
/// `deadline`; returns what it sent.
async fn read_until_closed(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    deadline: Instant,
) -> String {
    let mut raw = Vec::new();
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout_at(deadline, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&raw).to_string();
    assert!(
        closed.is_ok(),
        "a stalled connection was still open past its deadline (got {text:?})"
    );
    text
}

/// The attack: the cap's worth of connections send a sign request's head announcing a
/// body and then nothing (one trickles a byte every 500 ms). `/upcheck` and signing are served
/// meanwhile, within a second and before any body deadline; a stalled body holds no signing
/// permit (`--max-in-flight-signing=1`); every stalled connection is closed by its deadline,
/// with 408 unless it gave its slot to one of the two requests served meanwhile.
async fn stalled_bodies(runner: Runner) {
    let key = tests::test_secret(b"stalled bodies");
    let pk = tests::pubkey_hex(&key);
    let cap = CAP.to_string();
    let timeout = BODY_TIMEOUT.as_secs().to_string();
    let s = start(
        runner,
        SignerBuilder::new().raw_keys([key]),
        &[
            "--http-max-connections",
            cap.as_str(),
            "--http-request-body-timeout-seconds",
            timeout.as_str(),
            "--http-request-body-min-bytes-per-second",
            "32768",
            // Only the body deadline (or the cap) can close the connections below.
            "--http-header-read-timeout-seconds",
            "600",
            "--idle-connection-timeout-seconds",
            "0",
            "--max-in-flight-signing",
            "1",
        ],
    )
    .await;
    let head = format!(
        "POST /api/v1/eth2/sign/{pk} HTTP/1.1\r\nHost: 127.0.0.1\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    );
    let opened = Instant::now();
    let mut stalled = Vec::new();
    for _ in 0..CAP - 1 {
        let c = connect_and_send(s.addr(), head.as_bytes()).await;
        stalled.push(c);
    }
    let trickle = connect_and_send(s.addr(), head.as_bytes()).await;
    let (mut trickle_read, dripping) = trickle_bytes(trickle, b" ", Duration::from_millis(500));

    // Served meanwhile (these connections queue behind the stalled ones in the backlog).
    let up = tokio::time::timeout(Duration::from_secs(1), s.get("/upcheck"))
        .await
        .expect("/upcheck did not answer within 1 s while stalled bodies held the cap");
    assert_eq!((up.status, up.body.as_str()), (200, "OK"));
    let signed = tokio::time::timeout(
        Duration::from_secs(1),
        s.sign(&pk, &tests::body::attestation(1, 2, 3)),
    )
    .await
    .expect("signing did not answer within 1 s while stalled bodies held the cap");
    assert_eq!(signed.status, 200, "{signed:?}");
    assert!(
        opened.elapsed() < BODY_TIMEOUT,
        "served only after {:?}: the body deadline may have freed the slots",
        opened.elapsed()
    );

    // Every stalled connection closes by its deadline (the trickle earns ~0.1 ms).
    let deadline = opened + BODY_TIMEOUT + SLACK;
    let mut answers = Vec::new();
    for c in &mut stalled {
        answers.push(read_until_closed(c, deadline).await);
    }
    answers.push(read_until_closed(&mut trickle_read, deadline).await);
    let _ = tokio::time::timeout(SAFETY, dripping).await;
    let timed_out = answers
        .iter()
        .filter(|a| {
            a.starts_with("HTTP/1.1 408 ")
                && a.to_ascii_lowercase().contains("connection: close")
                && a.ends_with("Request Timeout: the request body did not arrive in time")
        })
        .count();
    // A few gave their slot to the test client's new connections (closed without an answer):
    // /upcheck, the sign request, and one more when the kept-alive connection of the
    // readiness probe, reclaimed first as the oldest, made the client reconnect.
    assert!(
        answers
            .iter()
            .all(|a| a.is_empty() || a.starts_with("HTTP/1.1 408 ")),
        "{answers:?}"
    );
    assert!(
        (CAP - 3..=CAP - 1).contains(&timed_out),
        "{timed_out} of {CAP} timed out: {answers:?}"
    );

    assert_serving(&s).await;
    s.stop().await;
}

#[tokio::test]
async fn stalled_bodies_are_closed_and_do_not_lock_out_the_server() {
    stalled_bodies(Runner::InProcess).await;
}

#[tokio::test]
async fn stalled_bodies_are_closed_and_do_not_lock_out_the_release_binary() {
    stalled_bodies(Runner::Binary).await;
}

#[tokio::test]
async fn a_large_body_on_a_slow_link_is_served() {
    let key = tests::test_secret(b"slow link");
    let timeout = BODY_TIMEOUT.as_secs().to_string();
    let s = start(
        Runner::InProcess,
        SignerBuilder::new().raw_keys([key]),
        &[
            "--http-request-body-timeout-seconds",
            timeout.as_str(),
            "--http-request-body-min-bytes-per-second",
            "32768",
        ],
    )
    .await;
    // A valid sign request padded to 192 KiB, sent at about 64 KiB/s: it takes longer than the
    // body timeout, but every byte extends the deadline.
    let mut body = serde_json::to_vec(&tests::body::attestation(1, 2, 3)).unwrap();
    body.resize(body.len() + 192 * 1024, b' ');
    let head = format!(
        "POST /api/v1/eth2/sign/{} HTTP/1.1\r\nHost: 127.0.0.1\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        tests::pubkey_hex(&key),
        body.len()
    );
    let mut c = TcpStream::connect(s.addr()).await.unwrap();
    let started = Instant::now();
    c.write_all(head.as_bytes()).await.unwrap();
    for chunk in body.chunks(8 * 1024) {
        c.write_all(chunk).await.unwrap();
        // Pacing the upload, not waiting for anything.
        tokio::time::sleep(Duration::from_millis(125)).await;
    }
    assert_eq!(read_response(&mut c).await, 200);
    assert!(
        started.elapsed() > BODY_TIMEOUT,
        "the upload was not slower than the body timeout"
    );
    s.stop().await;
}

#[tokio::test]
async fn the_metrics_listener_has_the_same_limits() {
    let s = start(
        Runner::InProcess,
        SignerBuilder::new()
            .global_arg("--metrics-enabled")
            .global_arg("--metrics-port=0"),
        &[
            "--http-header-read-timeout-seconds",
            "2",
            "--idle-connection-timeout-seconds",
            "0",
        ],
    )
    .await;
    let base = s.metrics_base.clone().expect("metrics listener");
    let addr = base.trim_start_matches("http://").to_string();
    // Three times its cap of connections that send nothing or half a head.
    let opened = Instant::now();
    let mut stalled = Vec::new();
    for i in 0..3 * server::metrics::MAX_CONNECTIONS {
        let mut c = TcpStream::connect(&addr).await.unwrap();
        if i % 2 == 1 {
            c.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                .await
                .unwrap();
        }
        stalled.push(c);
    }
    let scrape = tokio::time::timeout(
        Duration::from_secs(1),
        unpooled().get(format!("{base}/metrics")).send(),
    )
    .await
    .expect("/metrics did not answer within 1 s while stalled connections held its cap")
    .unwrap();
    assert_eq!(scrape.status(), 200);
    // The header timeout closes the rest (those not closed to make room).
    let deadline = opened + Duration::from_secs(2) + SLACK;
    for c in &mut stalled {
        let sent = read_until_closed(c, deadline).await;
        assert!(sent.is_empty(), "{sent}");
    }
    s.stop().await;
}

#[tokio::test]
async fn stop_finishes_a_request_in_flight() {
    let secret = tests::test_secret(b"graceful stop");
    let s = SignerBuilder::new()
        .client(unpooled())
        .raw_keys([secret])
        .start(Runner::InProcess)
        .await;
    let addr = s.addr().to_string();
    let body = serde_json::to_vec(&tests::body::attestation(1, 2, 3)).unwrap();
    let (first, rest) = body.split_at(body.len() / 2);
    let mut c = TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /api/v1/eth2/sign/{} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Accept: application/json\r\nContent-Length: {}\r\n\r\n",
        tests::pubkey_hex(&secret),
        body.len()
    );
    c.write_all(head.as_bytes()).await.unwrap();
    c.write_all(first).await.unwrap();

    // Stop while the request waits for the rest of its body, and wait until the listener is
    // gone (new connections refused).
    let stopping = tokio::spawn(s.stop());
    tokio::time::timeout(SAFETY, async {
        while TcpStream::connect(&addr).await.is_ok() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the listener stayed open after stop");

    // The request in flight is still answered, then stop returns.
    c.write_all(rest).await.unwrap();
    assert_eq!(read_response(&mut c).await, 200);
    tokio::time::timeout(SAFETY, stopping)
        .await
        .expect("stop never returned")
        .unwrap();
}
