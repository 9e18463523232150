//! A minimal HTTP/1.1 keep-alive client for the load phases.
//!
//! Why not a general client: the load generator shares the machine's two cores with the signer
//! it measures, so every microsecond it spends is taken from the server and shows up as a lower
//! ratio to the raw signing rate. A general client (pooling, header maps, redirects, JSON
//! values) cost 0.16–0.19 cores at 4,000 requests/s; this one writes a request rendered into a
//! reused buffer and reads exactly one response per request. It still speaks real HTTP over TCP
//! to the release binary, and every response is checked (status 200 and a signature-shaped
//! body), so a fast wrong answer counts as an error, not as throughput.

use std::fmt::Write as _;
use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Upper bound on a response head plus body; the signer's answers are a few hundred bytes.
const MAX_RESPONSE: usize = 64 * 1024;

/// One keep-alive connection.
pub struct Conn {
    stream: TcpStream,
    host: String,
    request: Vec<u8>,
    response: Vec<u8>,
}

/// A response: its status and body.
pub struct Response<'a> {
    pub status: u16,
    pub body: &'a [u8],
}

impl Conn {
    /// Connects to `addr` (`HOST:PORT`).
    pub async fn connect(addr: &str) -> io::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        // Requests are single small writes; do not let Nagle hold them back.
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            host: addr.to_string(),
            request: Vec::with_capacity(1024),
            response: Vec::with_capacity(1024),
        })
    }

    /// POSTs `body` (JSON) to `path` asking for a JSON answer, and reads the whole response.
    pub async fn post_json(&mut self, path: &str, body: &str) -> io::Result<Response<'_>> {
        self.request.clear();
        let mut head = String::with_capacity(256);
        let _ = write!(
            head,
            "POST {path} HTTP/1.1\r\nhost: {}\r\naccept: application/json\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\r\n",
            self.host,
            body.len()
        );
        self.request.extend_from_slice(head.as_bytes());
        self.request.extend_from_slice(body.as_bytes());
        self.stream.write_all(&self.request).await?;
        self.read_response().await
    }

    async fn read_response(&mut self) -> io::Result<Response<'_>> {
        self.response.clear();
        let mut chunk = [0u8; 4096];
        // Read until the head is complete.
        let head_end = loop {
            if let Some(i) = find(&self.response, b"\r\n\r\n") {
                break i + 4;
            }
            self.fill(&mut chunk).await?;
        };
        let head = std::str::from_utf8(&self.response[..head_end])
            .map_err(|_| bad("response head is not UTF-8"))?;
        let status = head
            .get(9..12)
            .and_then(|s| s.parse::<u16>().ok())
            .filter(|_| head.starts_with("HTTP/1.1 "))
            .ok_or_else(|| bad("not an HTTP/1.1 status line"))?;
        let mut length = None;
        for line in head.split("\r\n").skip(1) {
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse::<usize>().ok();
                } else if name.eq_ignore_ascii_case("transfer-encoding") {
                    return Err(bad("chunked responses are not expected from the signer"));
                }
            }
        }
        let length = length.ok_or_else(|| bad("response without content-length"))?;
        if head_end + length > MAX_RESPONSE {
            return Err(bad("response too large"));
        }
        while self.response.len() < head_end + length {
            self.fill(&mut chunk).await?;
        }
        if self.response.len() > head_end + length {
            // One request in flight per connection: anything more is a protocol error.
            return Err(bad("bytes after the response"));
        }
        Ok(Response {
            status,
            body: &self.response[head_end..],
        })
    }

    async fn fill(&mut self, chunk: &mut [u8]) -> io::Result<()> {
        let n = self.stream.read(chunk).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed by the server",
            ));
        }
        if self.response.len() + n > MAX_RESPONSE {
            return Err(bad("response too large"));
        }
        self.response.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

/// True when `body` is `{"signature":"0x<192 hex digits>"}`, the only success answer.
pub fn is_signature_json(body: &[u8]) -> bool {
    const PREFIX: &[u8] = b"{\"signature\":\"0x";
    body.len() == PREFIX.len() + 192 + 2
        && body.starts_with(PREFIX)
        && body.ends_with(b"\"}")
        && body[PREFIX.len()..PREFIX.len() + 192]
            .iter()
            .all(|b| b.is_ascii_hexdigit())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_shape() {
        let good = format!("{{\"signature\":\"0x{}\"}}", "ab".repeat(96));
        assert!(is_signature_json(good.as_bytes()));
        let short = format!("{{\"signature\":\"0x{}\"}}", "ab".repeat(95));
        assert!(!is_signature_json(short.as_bytes()));
        let not_hex = format!("{{\"signature\":\"0x{}\"}}", "zz".repeat(96));
        assert!(!is_signature_json(not_hex.as_bytes()));
        assert!(!is_signature_json(b"{\"message\":\"refused\"}"));
    }

    /// A real exchange with a tiny server on port 0: head split over two writes, body after.
    #[tokio::test]
    async fn reads_one_response_per_request() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            for answer in [&b"{\"a\":1}"[..], &b"{}"[..]] {
                let mut buf = vec![0u8; 4096];
                let mut got = vec![];
                // Read the request's head and its 2-byte body.
                while find(&got, b"\r\n\r\n").is_none_or(|i| got.len() < i + 4 + 2) {
                    let n = s.read(&mut buf).await.unwrap();
                    got.extend_from_slice(&buf[..n]);
                }
                assert!(got.starts_with(b"POST /x HTTP/1.1\r\n"));
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n", answer.len());
                s.write_all(head.as_bytes()).await.unwrap();
                s.write_all(b"\r\n").await.unwrap();
                s.write_all(answer).await.unwrap();
            }
        });
        let mut c = Conn::connect(&addr).await.unwrap();
        let r = c.post_json("/x", "{}").await.unwrap();
        assert_eq!((r.status, r.body), (200, &b"{\"a\":1}"[..]));
        let r = c.post_json("/x", "{}").await.unwrap();
        assert_eq!((r.status, r.body), (200, &b"{}"[..]));
        server.await.unwrap();
    }
}
