//! The outbound proxy: one fixed, allowlisted destination per listener.

use std::time::Duration;

use enclave_bridge::forward::ForwardLimits;
use enclave_bridge::proxy::{AllowedRemote, Allowlist, OutboundProxy, ProxyError};
use enclave_bridge::transport::Endpoint;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const STEP: Duration = Duration::from_secs(10);

/// A server that records what it receives and answers "pong".
async fn recording_server() -> (u16, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 1024];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let _ = tx.send(buf[..n].to_vec());
                let _ = s.write_all(b"pong").await;
            });
        }
    });
    (port, rx)
}

#[test]
fn allowlist_parsing_and_matching() {
    let list = Allowlist::parse(
        "kms.eu-west-1.amazonaws.com:443, KMS-FIPS.eu-west-1.amazonaws.com:443,[::1]:8443",
    )
    .unwrap();
    assert!(list.allows(&AllowedRemote::new("KMS.EU-WEST-1.amazonaws.com", 443)));
    assert!(list.allows(&AllowedRemote::new("kms-fips.eu-west-1.amazonaws.com", 443)));
    assert!(list.allows(&"[::1]:8443".parse().unwrap()));
    assert!(!list.allows(&AllowedRemote::new("kms.eu-west-1.amazonaws.com", 80)));
    assert!(!list.allows(&AllowedRemote::new("kms.us-east-1.amazonaws.com", 443)));
    assert!(!list.allows(&AllowedRemote::new("evil.amazonaws.com.example", 443)));
    assert!(Allowlist::parse("no-port").is_err());
    assert!(Allowlist::parse("host:99999").is_err());
    assert_eq!(
        Allowlist::kms("eu-west-1"),
        Allowlist::parse("kms.eu-west-1.amazonaws.com:443,kms-fips.eu-west-1.amazonaws.com:443")
            .unwrap()
    );
    assert_eq!(AllowedRemote::new("::1", 1).to_string(), "[::1]:1");
}

#[tokio::test]
async fn destination_not_on_the_allowlist_is_refused_at_start() {
    let (port, _rx) = recording_server().await;
    let allowlist = Allowlist::parse("kms.eu-west-1.amazonaws.com:443").unwrap();
    let listen: Endpoint = "tcp:127.0.0.1:0".parse().unwrap();
    let err = OutboundProxy::bind(
        &listen,
        AllowedRemote::new("127.0.0.1", port),
        &allowlist,
        ForwardLimits::default(),
    )
    .await
    .err()
    .expect("a destination off the allowlist must be refused");
    assert!(
        matches!(&err, ProxyError::NotAllowed { remote } if remote.port() == port),
        "{err}"
    );
}

#[tokio::test]
async fn allowed_destination_is_piped_and_clients_cannot_pick_another() {
    let (port, mut seen) = recording_server().await;
    let remote = AllowedRemote::new("127.0.0.1", port);
    let allowlist = Allowlist::new([remote.clone()]);
    let proxy = OutboundProxy::bind(
        &"tcp:127.0.0.1:0".parse().unwrap(),
        remote,
        &allowlist,
        ForwardLimits::default(),
    )
    .await
    .unwrap();
    let front = proxy.local_endpoint().unwrap();
    let stats = proxy.stats();
    tokio::spawn(proxy.run(std::future::pending()));

    // Whatever the client sends — even something that looks like a request
    // for another destination — goes, verbatim, to the one configured remote.
    let attempt = b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example\r\n\r\n";
    let mut s = front.connect().await.unwrap();
    s.write_all(attempt).await.unwrap();
    let mut reply = [0u8; 4];
    tokio::time::timeout(STEP, s.read_exact(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&reply, b"pong");
    let got = tokio::time::timeout(STEP, seen.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, attempt);
    assert_eq!(stats.piped(), 1);
}
