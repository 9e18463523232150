//! Control protocol: framing, handshake, state machine, and a server that
//! survives bad clients.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use enclave_bridge::control::*;
use enclave_bridge::secret::{Base64Bytes, SecretString};
use enclave_bridge::transport::{BoxStream, Endpoint};
use test_support::enclave::loopback_listener;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const STEP: Duration = Duration::from_secs(10);
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
const TOKEN: &str = "FwoGZXIvYXdzEXAMPLESESSIONTOKEN";

// ---------------------------------------------------------------- framing

#[tokio::test]
async fn frames_round_trip() {
    let (mut a, mut b) = tokio::io::duplex(64 * 1024);
    let payloads: Vec<Vec<u8>> = vec![
        vec![],
        b"{}".to_vec(),
        (0..100_000u32).map(|i| i as u8).collect(),
    ];
    let sent = payloads.clone();
    let writer = tokio::spawn(async move {
        for p in &sent {
            write_frame(&mut a, p, MAX_FRAME_LEN).await.unwrap();
        }
    });
    for p in &payloads {
        let got = read_frame(&mut b, MAX_FRAME_LEN).await.unwrap().unwrap();
        assert_eq!(&got[..], &p[..]);
    }
    writer.await.unwrap();
    // Clean close between frames.
    assert!(read_frame(&mut b, MAX_FRAME_LEN).await.unwrap().is_none());
}

#[tokio::test]
async fn oversize_frame_is_refused_from_its_header_alone() {
    for len in [MAX_FRAME_LEN + 1, u32::MAX] {
        let (mut a, mut b) = tokio::io::duplex(64);
        // Only the header; the writer stays open, so a reader that tried to
        // read (or allocate for) the payload would wait for ever.
        a.write_all(&len.to_be_bytes()).await.unwrap();
        let res = tokio::time::timeout(STEP, read_frame(&mut b, MAX_FRAME_LEN))
            .await
            .expect("the cap is checked before reading the payload");
        match res {
            Err(FrameError::TooLarge { len: l, max }) => {
                assert_eq!(l, u64::from(len));
                assert_eq!(max, MAX_FRAME_LEN);
            }
            other => panic!("{other:?}"),
        }
        drop(a);
    }
    // A smaller cap applies too, and the writer refuses oversize payloads.
    let (mut a, mut b) = tokio::io::duplex(64);
    a.write_all(&11u32.to_be_bytes()).await.unwrap();
    assert!(matches!(
        read_frame(&mut b, 10).await,
        Err(FrameError::TooLarge { len: 11, max: 10 })
    ));
    assert!(matches!(
        write_frame(&mut a, &[0u8; 11], 10).await,
        Err(FrameError::TooLarge { .. })
    ));
}

#[tokio::test]
async fn truncated_frames_are_errors() {
    // Inside the header.
    let (mut a, mut b) = tokio::io::duplex(64);
    a.write_all(&[0, 0]).await.unwrap();
    drop(a);
    assert!(matches!(
        read_frame(&mut b, MAX_FRAME_LEN).await,
        Err(FrameError::Truncated {
            got: 2,
            expected: 4
        })
    ));
    // Inside the payload.
    let (mut a, mut b) = tokio::io::duplex(64);
    a.write_all(&10u32.to_be_bytes()).await.unwrap();
    a.write_all(b"abc").await.unwrap();
    drop(a);
    assert!(matches!(
        read_frame(&mut b, MAX_FRAME_LEN).await,
        Err(FrameError::Truncated {
            got: 3,
            expected: 10
        })
    ));
}

// ---------------------------------------------------------------- messages

fn credentials() -> AwsCredentials {
    AwsCredentials {
        access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
        secret_access_key: SecretString::new(SECRET),
        session_token: Some(SecretString::new(TOKEN)),
        expiration: Some(1_900_000_000),
    }
}

fn record(id: &str) -> EncryptedKeyRecord {
    EncryptedKeyRecord {
        id: id.into(),
        pubkey: Some(format!("0x{id}")),
        ciphertext: Base64Bytes(id.as_bytes().to_vec()),
        encryption_context: Default::default(),
        kms_key_id: None,
    }
}

fn init_request(ids: &[&str]) -> InitRequest {
    InitRequest {
        credentials: credentials(),
        region: serde_json::from_value(serde_json::json!("eu-west-1")).unwrap(),
        kms_endpoint: None,
        keys: ids.iter().map(|id| record(id)).collect(),
        tls: None,
        database: None,
    }
}

#[test]
fn secrets_never_appear_in_debug_output() {
    let req = Request::Init(init_request(&["k1"]));
    let debug = format!("{req:?}");
    assert!(!debug.contains(SECRET), "{debug}");
    assert!(!debug.contains(TOKEN), "{debug}");
    assert!(
        debug.contains("AKIAIOSFODNN7EXAMPLE"),
        "the key id is not secret"
    );
    // ...but they do travel on the wire (to the enclave).
    let json = serde_json::to_string(&req).unwrap();
    assert!(json.contains(SECRET));
}

#[test]
fn messages_refuse_unknown_fields_and_bad_values() {
    let ok = r#"{"type":"Hello","body":{"protocol_version":1}}"#;
    assert!(serde_json::from_str::<Request>(ok).is_ok());
    for bad in [
        r#"{"type":"Hello","body":{"protocol_version":1,"extra":true}}"#,
        r#"{"type":"Hello","body":{"protocol_version":1},"extra":1}"#,
        r#"{"type":"Status","body":{}}"#,
        r#"{"type":"Reboot"}"#,
        r#"{"type":"RemoveKeys","body":{"pubkeys":["0x1"],"force":true}}"#,
        r#"{"type":"Init","body":{"credentials":{"access_key_id":"a","secret_access_key":"b"},"region":"EU WEST","keys":[]}}"#,
        r#"{"type":"Init","body":{"credentials":{"access_key_id":"a","secret_access_key":"b"},"region":"eu-west-1","kms_endpoint":"ftp://x","keys":[]}}"#,
        r#"{"type":"Init","body":{"credentials":{"access_key_id":"a","secret_access_key":"b"},"region":"eu-west-1","keys":[{"id":"k","ciphertext":"***"}]}}"#,
    ] {
        assert!(
            serde_json::from_str::<Request>(bad).is_err(),
            "accepted: {bad}"
        );
    }
    let status = r#"{"type":"Status"}"#;
    assert!(matches!(
        serde_json::from_str::<Request>(status).unwrap(),
        Request::Status
    ));
}

// ---------------------------------------------------------------- server

#[derive(Default)]
struct TestHandler {
    inits: AtomicUsize,
    fail_next_init: AtomicBool,
    keys: Mutex<BTreeSet<String>>,
    last_secret_len: AtomicUsize,
}

impl ControlHandler for TestHandler {
    async fn init(&self, request: InitRequest) -> Result<KeysReport, HandlerError> {
        self.inits.fetch_add(1, Ordering::SeqCst);
        if self.fail_next_init.swap(false, Ordering::SeqCst) {
            return Err(HandlerError::new("KMS unreachable"));
        }
        self.last_secret_len.store(
            request.credentials.secret_access_key.expose().len(),
            Ordering::SeqCst,
        );
        let mut keys = self.keys.lock().unwrap();
        let mut report = KeysReport::default();
        for k in request.keys {
            if k.id.starts_with("bad") {
                report.failed.push(KeyFailure {
                    id: k.id,
                    reason: "cannot decrypt".into(),
                });
            } else {
                keys.insert(k.id.clone());
                report.loaded.push(k.id);
            }
        }
        Ok(report)
    }

    async fn add_keys(&self, request: AddKeysRequest) -> Result<KeysReport, HandlerError> {
        let mut keys = self.keys.lock().unwrap();
        let loaded = request
            .keys
            .into_iter()
            .map(|k| {
                keys.insert(k.id.clone());
                k.id
            })
            .collect();
        Ok(KeysReport {
            loaded,
            failed: vec![],
        })
    }

    async fn remove_keys(&self, request: RemoveKeysRequest) -> Result<RemoveReport, HandlerError> {
        let mut keys = self.keys.lock().unwrap();
        let mut report = RemoveReport::default();
        for pk in request.pubkeys {
            let id = pk.trim_start_matches("0x").to_owned();
            if keys.remove(&id) {
                report.removed.push(pk);
            } else {
                report.not_found.push(pk);
            }
        }
        Ok(report)
    }

    async fn refresh_credentials(&self, _credentials: AwsCredentials) -> Result<(), HandlerError> {
        Ok(())
    }
}

struct Running {
    endpoint: Endpoint,
    server: ControlServer<TestHandler>,
    handler: Arc<TestHandler>,
}

async fn start(config: ControlServerConfig) -> Running {
    let handler = Arc::new(TestHandler::default());
    let server = ControlServer::with_shared_handler(handler.clone(), config);
    let listener = loopback_listener().await;
    let endpoint = listener.local_endpoint().unwrap();
    let s = server.clone();
    tokio::spawn(async move { s.serve(listener, std::future::pending()).await });
    Running {
        endpoint,
        server,
        handler,
    }
}

async fn raw(ep: &Endpoint) -> BoxStream {
    ep.connect().await.unwrap()
}

/// Read one reply frame as a Response.
async fn reply(s: &mut BoxStream) -> Response {
    let frame = tokio::time::timeout(STEP, read_frame(s, MAX_FRAME_LEN))
        .await
        .unwrap()
        .unwrap()
        .expect("a reply frame");
    serde_json::from_slice(&frame).unwrap()
}

/// The server has closed this connection: a read ends with EOF (or reset).
async fn assert_closed(s: &mut BoxStream) {
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(STEP, s.read(&mut buf))
        .await
        .expect("the server closes the connection")
        .unwrap_or(0);
    assert_eq!(n, 0, "connection still open");
}

fn error_code(r: &Response) -> ErrorCode {
    match r {
        Response::Error(e) => e.code,
        other => panic!("expected an error reply, got {other:?}"),
    }
}

async fn still_serving(ep: &Endpoint) {
    let mut c = tokio::time::timeout(STEP, ControlClient::connect(ep))
        .await
        .unwrap()
        .expect("the server still accepts and answers");
    c.status().await.unwrap();
}

async fn send_json(s: &mut BoxStream, json: &str) {
    write_frame(s, json.as_bytes(), MAX_FRAME_LEN)
        .await
        .unwrap();
}

#[tokio::test]
async fn bad_clients_are_refused_and_the_server_keeps_running() {
    let srv = start(ControlServerConfig::default()).await;
    let ep = &srv.endpoint;

    // Garbage that is a well-formed frame but not JSON.
    let mut s = raw(ep).await;
    write_frame(&mut s, b"\x00\xffnot json at all", MAX_FRAME_LEN)
        .await
        .unwrap();
    assert_eq!(
        error_code(&reply(&mut s).await),
        ErrorCode::MalformedMessage
    );
    assert_closed(&mut s).await;
    still_serving(ep).await;

    // Raw garbage bytes: the "length" is huge, so it is an oversize frame.
    let mut s = raw(ep).await;
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(error_code(&reply(&mut s).await), ErrorCode::FrameTooLarge);
    assert_closed(&mut s).await;
    still_serving(ep).await;

    // An oversize length prefix, nothing else.
    let mut s = raw(ep).await;
    s.write_all(&(MAX_FRAME_LEN + 1).to_be_bytes())
        .await
        .unwrap();
    let r = reply(&mut s).await;
    assert_eq!(error_code(&r), ErrorCode::FrameTooLarge);
    assert_closed(&mut s).await;
    still_serving(ep).await;

    // Wrong protocol version.
    let mut s = raw(ep).await;
    send_json(&mut s, r#"{"type":"Hello","body":{"protocol_version":2}}"#).await;
    assert_eq!(
        error_code(&reply(&mut s).await),
        ErrorCode::UnsupportedVersion
    );
    assert_closed(&mut s).await;
    still_serving(ep).await;

    // No handshake.
    let mut s = raw(ep).await;
    send_json(&mut s, r#"{"type":"Status"}"#).await;
    assert_eq!(
        error_code(&reply(&mut s).await),
        ErrorCode::HandshakeRequired
    );
    assert_closed(&mut s).await;
    still_serving(ep).await;

    // Unknown field after a good handshake; the error names the field but
    // never echoes values.
    let mut s = raw(ep).await;
    send_json(&mut s, r#"{"type":"Hello","body":{"protocol_version":1}}"#).await;
    assert!(matches!(reply(&mut s).await, Response::Hello(_)));
    send_json(
        &mut s,
        &format!(r#"{{"type":"RefreshCredentials","body":{{"access_key_id":"a","secret_access_key":"{SECRET}","session_tokn":"x"}}}}"#),
    )
    .await;
    match reply(&mut s).await {
        Response::Error(e) => {
            assert_eq!(e.code, ErrorCode::MalformedMessage);
            assert!(e.message.contains("session_tokn"), "{}", e.message);
            assert!(!e.message.contains(SECRET));
        }
        other => panic!("{other:?}"),
    }
    assert_closed(&mut s).await;

    // A secret in a field of the wrong type is not echoed either.
    let mut s = raw(ep).await;
    send_json(&mut s, r#"{"type":"Hello","body":{"protocol_version":1}}"#).await;
    reply(&mut s).await;
    send_json(
        &mut s,
        &format!(r#"{{"type":"RefreshCredentials","body":{{"access_key_id":"a","secret_access_key":"b","expiration":"{SECRET}"}}}}"#),
    )
    .await;
    match reply(&mut s).await {
        Response::Error(e) => {
            assert_eq!(e.code, ErrorCode::MalformedMessage);
            assert!(!e.message.contains(SECRET), "{}", e.message);
        }
        other => panic!("{other:?}"),
    }

    // Truncated frame: header promises 100 bytes, 5 arrive, then the peer
    // goes away.
    let mut s = raw(ep).await;
    s.write_all(&100u32.to_be_bytes()).await.unwrap();
    s.write_all(b"{\"typ").await.unwrap();
    drop(s);
    still_serving(ep).await;

    // A peer that connects and leaves.
    drop(raw(ep).await);
    still_serving(ep).await;

    // None of this touched the state.
    assert_eq!(srv.server.state(), EnclaveState::WaitingForInit);
    assert_eq!(srv.handler.inits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn init_once_then_refused_and_key_operations() {
    let srv = start(ControlServerConfig::default()).await;
    let mut c = ControlClient::connect(&srv.endpoint).await.unwrap();

    assert_eq!(
        c.status().await.unwrap().state,
        EnclaveState::WaitingForInit
    );
    // Key operations need an initialised enclave.
    let err = c
        .add_keys(AddKeysRequest {
            keys: vec![record("k9")],
        })
        .await
        .unwrap_err();
    assert_eq!(err.remote_code(), Some(ErrorCode::NotReady));

    let report = c.init(init_request(&["k1", "bad2", "k3"])).await.unwrap();
    assert_eq!(report.loaded, vec!["k1", "k3"]);
    assert_eq!(report.failed.len(), 1);
    assert_eq!(report.failed[0].id, "bad2");
    assert_eq!(c.status().await.unwrap().state, EnclaveState::Ready);
    // The secret arrived intact.
    assert_eq!(
        srv.handler.last_secret_len.load(Ordering::SeqCst),
        SECRET.len()
    );

    // Re-init on the same connection and on a new one: refused, nothing run.
    let err = c.init(init_request(&["k4"])).await.unwrap_err();
    assert_eq!(
        err.remote_code(),
        Some(ErrorCode::AlreadyInitialised),
        "{err}"
    );
    let mut c2 = ControlClient::connect(&srv.endpoint).await.unwrap();
    let err = c2.init(init_request(&["k4"])).await.unwrap_err();
    assert_eq!(err.remote_code(), Some(ErrorCode::AlreadyInitialised));
    assert!(err.to_string().contains("already initialised"), "{err}");
    assert_eq!(srv.handler.inits.load(Ordering::SeqCst), 1);
    assert_eq!(srv.server.state(), EnclaveState::Ready);

    // The connection stays usable after an application-level refusal.
    let added = c
        .add_keys(AddKeysRequest {
            keys: vec![record("k5")],
        })
        .await
        .unwrap();
    assert_eq!(added.loaded, vec!["k5"]);
    let removed = c
        .remove_keys(RemoveKeysRequest {
            pubkeys: vec!["0xk1".into(), "0xnope".into()],
        })
        .await
        .unwrap();
    assert_eq!(removed.removed, vec!["0xk1"]);
    assert_eq!(removed.not_found, vec!["0xnope"]);
    c.refresh_credentials(credentials()).await.unwrap();
    assert_eq!(
        *srv.handler.keys.lock().unwrap(),
        ["k3", "k5"].iter().map(|s| s.to_string()).collect()
    );
}

#[tokio::test]
async fn failed_init_can_be_retried() {
    let srv = start(ControlServerConfig::default()).await;
    srv.handler.fail_next_init.store(true, Ordering::SeqCst);
    let mut watch = srv.server.subscribe();
    let mut c = ControlClient::connect(&srv.endpoint).await.unwrap();
    let err = c.init(init_request(&["k1"])).await.unwrap_err();
    assert_eq!(err.remote_code(), Some(ErrorCode::HandlerFailed));
    assert_eq!(
        c.status().await.unwrap().state,
        EnclaveState::Failed {
            reason: "KMS unreachable".into()
        }
    );
    c.init(init_request(&["k1"])).await.unwrap();
    assert_eq!(c.status().await.unwrap().state, EnclaveState::Ready);
    // Watchers see the end state.
    tokio::time::timeout(STEP, watch.wait_for(|s| *s == EnclaveState::Ready))
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn connections_over_the_cap_get_busy() {
    let srv = start(ControlServerConfig {
        max_connections: 1,
        ..ControlServerConfig::default()
    })
    .await;
    let mut first = ControlClient::connect(&srv.endpoint).await.unwrap();
    let err = ControlClient::connect(&srv.endpoint).await.unwrap_err();
    assert_eq!(err.remote_code(), Some(ErrorCode::Busy), "{err}");
    first.status().await.unwrap();
    drop(first);
    // The slot comes back once the first connection's task has ended.
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        match ControlClient::connect(&srv.endpoint).await {
            Ok(mut c) => {
                c.status().await.unwrap();
                break;
            }
            Err(e) if e.remote_code() == Some(ErrorCode::Busy) => {
                assert!(tokio::time::Instant::now() < deadline, "slot never freed");
                tokio::task::yield_now().await;
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[tokio::test]
async fn idle_connections_are_closed() {
    let srv = start(ControlServerConfig {
        idle_timeout: Duration::from_millis(200),
        ..ControlServerConfig::default()
    })
    .await;
    let mut s = raw(&srv.endpoint).await;
    // Half a header, then silence.
    s.write_all(&[0, 0]).await.unwrap();
    assert_closed(&mut s).await;
    still_serving(&srv.endpoint).await;
}

#[tokio::test]
async fn client_reports_version_mismatch_and_malformed_replies() {
    // A fake "enclave" that answers Hello with another version.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ep = Endpoint::from(listener.local_addr().unwrap());
    tokio::spawn(async move {
        for answer in [
            r#"{"type":"Hello","body":{"protocol_version":7}}"#,
            r#"{"type":"Helo"}"#,
        ] {
            let (mut s, _) = listener.accept().await.unwrap();
            let _ = read_frame(&mut s, MAX_FRAME_LEN).await;
            write_frame(&mut s, answer.as_bytes(), MAX_FRAME_LEN)
                .await
                .unwrap();
        }
    });
    let err = ControlClient::connect(&ep).await.unwrap_err();
    assert!(
        matches!(err, ControlError::VersionMismatch { ours: 1, theirs: 7 }),
        "{err}"
    );
    let err = ControlClient::connect(&ep).await.unwrap_err();
    assert!(matches!(err, ControlError::Malformed(_)), "{err}");
}
