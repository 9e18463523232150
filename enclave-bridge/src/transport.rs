//! One stream abstraction over `AF_VSOCK`, TCP and Unix sockets.
//!
//! An enclave talks to its parent only over vsock (virtio-vsock, addresses
//! are `(CID, port)`; the parent is CID 3, CID 1 is local loopback —
//! `VMADDR_CID_LOCAL` in Linux's `vm_sockets.h`). Every listener and client in
//! this crate takes an [`Endpoint`] instead of a socket type, so the same code
//! runs over TCP or Unix sockets in tests and on machines without vsock.
//!
//! String forms (also what [`Endpoint`]'s `Display` prints):
//!
//! | form | meaning |
//! |---|---|
//! | `vsock:16:5000` | CID 16, port 5000; the CID may be `any` (`VMADDR_CID_ANY`, for `bind`) |
//! | `tcp:127.0.0.1:9000`, `tcp:[::1]:9000`, `tcp:kms.eu-west-1.amazonaws.com:443` | a TCP address; a name is resolved at each `connect` |
//! | `unix:/run/ensign/control.sock` | a Unix stream socket path |

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

/// `VMADDR_CID_ANY`: bind on every CID of this machine.
pub const VMADDR_CID_ANY: u32 = u32::MAX;
/// `VMADDR_CID_LOCAL`: vsock loopback inside one machine (Linux ≥ 5.6).
pub const VMADDR_CID_LOCAL: u32 = 1;
/// The parent instance as seen from an enclave (`VMADDR_CID_HOST` is 2 on
/// other hypervisors; Nitro's parent is 3, as AWS's vsock-proxy binds).
pub const PARENT_CID: u32 = 3;

/// A bidirectional byte stream of any transport.
pub trait AsyncStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> AsyncStream for T {}

/// A boxed stream, what [`Endpoint::connect`] and [`Listener::accept`] return.
pub type BoxStream = Box<dyn AsyncStream>;

/// Where to connect or listen. See the module docs for the string forms.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Vsock {
        cid: u32,
        port: u32,
    },
    /// `host` is an IP literal (IPv6 without brackets) or a DNS name.
    Tcp {
        host: String,
        port: u16,
    },
    Unix(PathBuf),
}

/// Why an endpoint string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EndpointParseError {
    #[error("endpoint `{0}` must start with vsock:, tcp: or unix:")]
    UnknownScheme(String),
    #[error("endpoint `{0}`: expected HOST:PORT (or CID:PORT)")]
    MissingPort(String),
    #[error("endpoint `{input}`: invalid {what}")]
    Invalid { input: String, what: &'static str },
}

impl FromStr for Endpoint {
    type Err = EndpointParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |what| EndpointParseError::Invalid {
            input: s.to_owned(),
            what,
        };
        if let Some(rest) = s.strip_prefix("vsock:") {
            let (cid, port) = rest
                .split_once(':')
                .ok_or_else(|| EndpointParseError::MissingPort(s.to_owned()))?;
            let cid = if cid.eq_ignore_ascii_case("any") {
                VMADDR_CID_ANY
            } else {
                parse_decimal::<u32>(cid).ok_or_else(|| invalid("CID"))?
            };
            let port = parse_decimal::<u32>(port).ok_or_else(|| invalid("vsock port"))?;
            Ok(Endpoint::Vsock { cid, port })
        } else if let Some(rest) = s.strip_prefix("tcp:") {
            let (host, port) = rest
                .rsplit_once(':')
                .ok_or_else(|| EndpointParseError::MissingPort(s.to_owned()))?;
            let port = parse_decimal::<u16>(port).ok_or_else(|| invalid("TCP port"))?;
            let host = match host.strip_prefix('[') {
                Some(v6) => v6
                    .strip_suffix(']')
                    .filter(|h| h.parse::<std::net::Ipv6Addr>().is_ok())
                    .ok_or_else(|| invalid("bracketed IPv6 address"))?,
                None if host.contains(':') => return Err(invalid("host (IPv6 needs brackets)")),
                None => host,
            };
            if host.is_empty()
                || !host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b))
            {
                return Err(invalid("host"));
            }
            Ok(Endpoint::Tcp {
                host: host.to_owned(),
                port,
            })
        } else if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(invalid("socket path"));
            }
            Ok(Endpoint::Unix(PathBuf::from(path)))
        } else {
            Err(EndpointParseError::UnknownScheme(s.to_owned()))
        }
    }
}

/// Plain ASCII decimal, no sign, no leading `+`.
fn parse_decimal<T: FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Vsock { cid, port } if *cid == VMADDR_CID_ANY => {
                write!(f, "vsock:any:{port}")
            }
            Endpoint::Vsock { cid, port } => write!(f, "vsock:{cid}:{port}"),
            Endpoint::Tcp { host, port } if host.contains(':') => write!(f, "tcp:[{host}]:{port}"),
            Endpoint::Tcp { host, port } => write!(f, "tcp:{host}:{port}"),
            Endpoint::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl From<SocketAddr> for Endpoint {
    fn from(addr: SocketAddr) -> Self {
        Endpoint::Tcp {
            host: addr.ip().to_string(),
            port: addr.port(),
        }
    }
}

impl Endpoint {
    /// Connect. TCP names are resolved on every call (KMS endpoints move).
    pub async fn connect(&self) -> io::Result<BoxStream> {
        match self {
            Endpoint::Tcp { host, port } => {
                let stream = TcpStream::connect((host.as_str(), *port)).await?;
                // Control frames and TLS records are small; do not let Nagle
                // hold them back.
                stream.set_nodelay(true)?;
                Ok(Box::new(stream))
            }
            Endpoint::Unix(path) => Ok(Box::new(UnixStream::connect(path).await?)),
            Endpoint::Vsock { cid, port } => vsock::connect(*cid, *port).await,
        }
    }

    /// Start listening. A Unix path that already exists is refused
    /// (`AddrInUse`) rather than unlinked: it may belong to a live process.
    pub async fn bind(&self) -> io::Result<Listener> {
        match self {
            Endpoint::Tcp { host, port } => {
                let listener = TcpListener::bind((host.as_str(), *port)).await?;
                Ok(Listener(ListenerInner::Tcp(listener)))
            }
            Endpoint::Unix(path) => Ok(Listener(ListenerInner::Unix(
                UnixListener::bind(path)?,
                path.clone(),
            ))),
            Endpoint::Vsock { cid, port } => vsock::bind(*cid, *port),
        }
    }
}

/// Who connected to a [`Listener`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    Tcp(SocketAddr),
    Unix,
    Vsock { cid: u32, port: u32 },
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Tcp(addr) => write!(f, "tcp:{addr}"),
            Peer::Unix => f.write_str("unix"),
            Peer::Vsock { cid, port } => write!(f, "vsock:{cid}:{port}"),
        }
    }
}

/// A bound listener of any transport.
pub struct Listener(ListenerInner);

enum ListenerInner {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
    #[cfg(feature = "vsock")]
    Vsock(tokio_vsock::VsockListener),
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.local_endpoint() {
            Ok(ep) => write!(f, "Listener({ep})"),
            Err(_) => f.write_str("Listener(?)"),
        }
    }
}

impl Listener {
    /// Accept one connection.
    pub async fn accept(&self) -> io::Result<(BoxStream, Peer)> {
        match &self.0 {
            ListenerInner::Tcp(l) => {
                let (stream, addr) = l.accept().await?;
                stream.set_nodelay(true)?;
                Ok((Box::new(stream), Peer::Tcp(addr)))
            }
            ListenerInner::Unix(l, _) => {
                let (stream, _) = l.accept().await?;
                Ok((Box::new(stream), Peer::Unix))
            }
            #[cfg(feature = "vsock")]
            ListenerInner::Vsock(l) => {
                let (stream, addr) = l.accept().await?;
                Ok((
                    Box::new(stream),
                    Peer::Vsock {
                        cid: addr.cid(),
                        port: addr.port(),
                    },
                ))
            }
        }
    }

    /// The endpoint actually bound (with the port the kernel picked for 0).
    pub fn local_endpoint(&self) -> io::Result<Endpoint> {
        match &self.0 {
            ListenerInner::Tcp(l) => Ok(l.local_addr()?.into()),
            ListenerInner::Unix(_, path) => Ok(Endpoint::Unix(path.clone())),
            #[cfg(feature = "vsock")]
            ListenerInner::Vsock(l) => {
                let addr = l.local_addr()?;
                Ok(Endpoint::Vsock {
                    cid: addr.cid(),
                    port: addr.port(),
                })
            }
        }
    }
}

#[cfg(feature = "vsock")]
mod vsock {
    use super::*;
    use tokio_vsock::{VsockAddr, VsockListener, VsockStream};

    pub(super) async fn connect(cid: u32, port: u32) -> io::Result<BoxStream> {
        Ok(Box::new(
            VsockStream::connect(VsockAddr::new(cid, port)).await?,
        ))
    }

    pub(super) fn bind(cid: u32, port: u32) -> io::Result<Listener> {
        Ok(Listener(ListenerInner::Vsock(VsockListener::bind(
            VsockAddr::new(cid, port),
        )?)))
    }
}

#[cfg(not(feature = "vsock"))]
mod vsock {
    use super::*;

    fn unsupported() -> io::Error {
        io::Error::new(
            io::ErrorKind::Unsupported,
            "vsock support not compiled in (cargo feature `vsock`)",
        )
    }

    pub(super) async fn connect(_cid: u32, _port: u32) -> io::Result<BoxStream> {
        Err(unsupported())
    }

    pub(super) fn bind(_cid: u32, _port: u32) -> io::Result<Listener> {
        Err(unsupported())
    }
}
