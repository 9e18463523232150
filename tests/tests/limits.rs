//! Connection-level limits against hostile or broken clients, over raw TCP: oversized request
//! heads (431), a client that never finishes its head (disconnected after
//! `--http-header-read-timeout-seconds`, even when it trickles bytes), idle kept-alive
//! connections (closed after `--idle-connection-timeout-seconds`), and the connection cap
//! (`--http-max-connections`). In each case the server keeps serving everyone else.
//!
//! Waits are for events (a response, the server closing the socket); the only time bounds are
//! safety nets that fail the test, plus one "no answer yet" check that cannot pass wrongly.

use std::time::Duration;

use tests::{Runner, SignerBuilder, TestSigner};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
    let mut b = SignerBuilder::new().client(unpooled());
    for a in args {
        b = b.global_arg(a);
    }
    b.start(Runner::InProcess).await
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

fn upcheck(extra_headers: &str) -> String {
    format!("GET /upcheck HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra_headers}\r\n")
}

#[tokio::test]
async fn oversized_request_heads_get_431_and_the_server_keeps_serving() {
    let s = signer(&[]).await;

    // One header field past the 16 KiB head limit.
    let mut c = TcpStream::connect(s.addr()).await.unwrap();
    let big = format!("X-Big: {}\r\n", "a".repeat(20 * 1024));
    c.write_all(upcheck(&big).as_bytes()).await.unwrap();
    assert_eq!(read_response(&mut c).await, 431);

    // More than 100 header fields.
    let mut c = TcpStream::connect(s.addr()).await.unwrap();
    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    c.write_all(upcheck(&many).as_bytes()).await.unwrap();
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
    let mut c = TcpStream::connect(s.addr()).await.unwrap();
    let fine = format!("X-Fine: {}\r\n", "c".repeat(8 * 1024));
    c.write_all(upcheck(&fine).as_bytes()).await.unwrap();
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
    let mut stalled = TcpStream::connect(s.addr()).await.unwrap();
    stalled
        .write_all(b"GET /upcheck HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .unwrap();
    // Connects and sends nothing at all.
    let mut silent = TcpStream::connect(s.addr()).await.unwrap();
    // Keeps sending one byte of a header at a time (slowloris): the timeout runs from the
    // head's first byte, not from the last one.
    let mut trickle = TcpStream::connect(s.addr()).await.unwrap();
    trickle
        .write_all(b"GET /upcheck HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        .await
        .unwrap();
    let (mut trickle_read, mut trickle_write) = trickle.into_split();
    let dripping = tokio::spawn(async move {
        // Pacing, not an assertion: stops when the server has closed the connection.
        while trickle_write.write_all(b"z").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });

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
    let mut c = TcpStream::connect(s.addr()).await.unwrap();
    c.write_all(upcheck("").as_bytes()).await.unwrap();
    assert_eq!(read_response(&mut c).await, 200);
    // Kept alive: a second request on the same connection is answered.
    c.write_all(upcheck("").as_bytes()).await.unwrap();
    assert_eq!(read_response(&mut c).await, 200);
    await_closed(&mut c, "an idle kept-alive connection").await;
    assert_serving(&s).await;
    s.stop().await;
}

#[tokio::test]
async fn connections_past_the_cap_wait_until_one_closes() {
    // Nothing times out during the test: only closing a connection frees a slot.
    let s = signer(&[
        "--http-max-connections",
        "2",
        "--idle-connection-timeout-seconds",
        "0",
        "--http-header-read-timeout-seconds",
        "600",
    ])
    .await;

    // Two kept-alive connections, each proven accepted by an answer.
    let mut first = TcpStream::connect(s.addr()).await.unwrap();
    first.write_all(upcheck("").as_bytes()).await.unwrap();
    assert_eq!(read_response(&mut first).await, 200);
    let mut second = TcpStream::connect(s.addr()).await.unwrap();
    second.write_all(upcheck("").as_bytes()).await.unwrap();
    assert_eq!(read_response(&mut second).await, 200);

    // The third waits in the listen backlog: no answer while both slots are held. (This
    // bound cannot make a wrong server pass: one that serves the third answers at once.)
    let mut third = TcpStream::connect(s.addr()).await.unwrap();
    third.write_all(upcheck("").as_bytes()).await.unwrap();
    let mut probe = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(1500), third.peek(&mut probe)).await;
    assert!(
        early.is_err(),
        "a connection past the cap was served: {early:?}"
    );

    // Closing one frees its slot: the third is answered.
    drop(first);
    let status = tokio::time::timeout(SAFETY, read_response(&mut third))
        .await
        .expect("the waiting connection was never served");
    assert_eq!(status, 200);

    drop(second);
    drop(third);
    assert_serving(&s).await;
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
