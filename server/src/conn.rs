//! The accept loop: TCP (optionally TLS) connections served by hyper's HTTP/1.1, with the
//! connection-level limits that keep a hostile or broken client from holding the server. Any
//! listener implementing [`Accept`] works the same way (enclave mode serves vsock).
//!
//! Limits, each a bound on what one peer can hold:
//! - at most `max_connections` connections at once (past it, new ones wait in the kernel's
//!   listen backlog): bounds file descriptors and per-connection memory;
//! - request heads of at most [`MAX_HEADER_BYTES`] and [`MAX_HEADERS`] fields (hyper answers
//!   431 past them);
//! - `tls_handshake_timeout` to finish the TLS handshake;
//! - `header_read_timeout` to deliver a complete request head, counted from the connection
//!   being ready or from the first byte of the next request on a kept-alive connection
//!   (slowloris);
//! - `idle_timeout` between requests on a kept-alive connection (Web3Signer's
//!   `--idle-connection-timeout-seconds`), after which the connection is closed; a connection
//!   that still does not finish (a peer that never reads its response) is dropped one
//!   `header_read_timeout` later.
//!
//! hyper's own `header_read_timeout` is not used: it also runs while a kept-alive connection
//! is idle, so it cannot be shorter than the idle timeout. Body size (413), the Host allow-list
//! (403) and the in-flight signing bound (503) are enforced by the router (`app`).
//!
//! Graceful shutdown: the listener is closed, every connection is told to finish its current
//! request and close (an idle one closes at once), and the loop returns once all have ended,
//! so the router's state (and the slashing store it holds) is released before `stop` returns.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

/// Largest request head (request line and header fields). Sign requests carry a handful of
/// short headers; 16 KiB is what common proxies accept by default.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Most header fields in one request.
pub const MAX_HEADERS: usize = 100;
/// hyper's read buffer cap: also bounds a head that never ends (431 once it is full).
const MAX_READ_BUFFER: usize = 64 * 1024;

/// Connection-level limits (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    /// `None`: idle kept-alive connections are never closed by the server.
    pub idle_timeout: Option<Duration>,
    pub tls_handshake_timeout: Duration,
}

/// Where connections come from: a TCP listener, or (enclave mode) `enclave_bridge`'s listener
/// of any transport — vsock inside an enclave, TCP or Unix sockets in tests.
pub trait Accept: Send + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// The next connection and a printable name of its peer.
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Io, String)>> + Send;
}

impl Accept for TcpListener {
    type Io = tokio::net::TcpStream;

    async fn accept(&self) -> io::Result<(Self::Io, String)> {
        let (stream, peer) = TcpListener::accept(self).await?;
        // Requests and responses are small; Nagle would only add latency.
        let _ = stream.set_nodelay(true);
        Ok((stream, peer.to_string()))
    }
}

impl Accept for enclave_bridge::Listener {
    type Io = enclave_bridge::BoxStream;

    async fn accept(&self) -> io::Result<(Self::Io, String)> {
        // TCP streams come with Nagle off already (enclave_bridge sets it).
        let (stream, peer) = enclave_bridge::Listener::accept(self).await?;
        Ok((stream, peer.to_string()))
    }
}

/// Serves `router` on `listener` until `shutdown` resolves (or its sender is dropped), then
/// shuts down gracefully and returns once every connection has ended.
pub async fn serve<L: Accept>(
    listener: L,
    tls: Option<TlsAcceptor>,
    router: Router,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()>,
) -> io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut last_full_warning: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        while let Some(done) = tasks.try_join_next() {
            log_task_end(done);
        }
        if permits.available_permits() == 0
            && last_full_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
        {
            tracing::warn!(
                max = limits.max_connections,
                "connection limit reached (--http-max-connections): new connections wait"
            );
            last_full_warning = Some(Instant::now());
        }
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        };
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                // The peer gave up before we accepted: nothing to do.
                Err(e) if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::ConnectionRefused
                ) => continue,
                // Typically EMFILE/ENFILE (out of descriptors): retrying at once would spin.
                Err(e) => {
                    tracing::error!(error = %e, "accepting a connection failed; retrying in 1 s");
                    tokio::select! {
                        _ = &mut shutdown => break,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            },
        };
        tasks.spawn(connection(
            stream,
            peer,
            tls.clone(),
            router.clone(),
            limits,
            stop_rx.clone(),
            permit,
        ));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    while let Some(done) = tasks.join_next().await {
        log_task_end(done);
    }
    Ok(())
}

fn log_task_end(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        tracing::error!(error = %e, "connection task failed");
    }
}

/// One connection: the TLS handshake (bounded), then HTTP/1.1. The permit is held until the
/// connection ends.
async fn connection<IO>(
    stream: IO,
    peer: String,
    tls: Option<TlsAcceptor>,
    router: Router,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    match tls {
        None => serve_http(stream, peer, router, limits, stop).await,
        Some(acceptor) => {
            let handshake =
                tokio::time::timeout(limits.tls_handshake_timeout, acceptor.accept(stream));
            let tls_stream = tokio::select! {
                done = handshake => match done {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::info!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::info!(%peer, "TLS handshake timed out");
                        return;
                    }
                },
                // No request yet: nothing to finish.
                _ = stop.wait_for(|s| *s) => return,
            };
            serve_http(tls_stream, peer, router, limits, stop).await
        }
    }
}

/// What a connection is doing, as far as the timeouts care.
#[derive(Debug)]
struct State {
    /// Requests handed to the router and not yet answered.
    in_flight: usize,
    /// When the current request head started (the connection became ready, or the first byte
    /// of a request arrived on an idle kept-alive connection); `None` between requests.
    head_since: Option<Instant>,
    /// When the last response was produced (or the connection became ready).
    idle_since: Instant,
}

/// Shared between the connection's I/O, its service and its watchdog.
#[derive(Debug)]
struct Activity {
    state: Mutex<State>,
    /// Wakes the watchdog when the state changes (a head starts, a request ends).
    changed: Notify,
}

impl Activity {
    fn new(now: Instant) -> Activity {
        Activity {
            state: Mutex::new(State {
                in_flight: 0,
                // The first request's head must arrive within the header timeout.
                head_since: Some(now),
                idle_since: now,
            }),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes arrived from the peer.
    fn bytes_read(&self) {
        let mut s = self.lock();
        if s.in_flight == 0 && s.head_since.is_none() {
            s.head_since = Some(Instant::now());
            drop(s);
            self.changed.notify_one();
        }
    }

    /// hyper parsed a complete head and hands the request to the router.
    fn request_started(self: &Arc<Self>) -> RequestGuard {
        let mut s = self.lock();
        s.in_flight += 1;
        s.head_since = None;
        drop(s);
        self.changed.notify_one();
        RequestGuard(self.clone())
    }
}

/// Ends a request when dropped (answered or cancelled).
struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.in_flight -= 1;
        if s.in_flight == 0 {
            s.idle_since = Instant::now();
        }
        drop(s);
        self.0.changed.notify_one();
    }
}

/// The watchdog's decision.
enum Verdict {
    /// Nothing to do before `Some(deadline)` (or before the state changes).
    Wait(Option<Instant>),
    /// The head did not arrive in time: drop the connection.
    HeaderTimeout,
    /// Idle for too long: close gracefully.
    Idle,
    /// Closing, but the peer does not let the connection finish: drop it.
    Stuck,
}

fn verdict(s: &State, limits: &Limits, closing_since: Option<Instant>, now: Instant) -> Verdict {
    if s.in_flight > 0 {
        // A request runs: the router's own bounds apply, and shutdown waits for it.
        return Verdict::Wait(None);
    }
    if let Some(start) = s.head_since {
        let deadline = start + limits.header_read_timeout;
        return if now >= deadline {
            Verdict::HeaderTimeout
        } else {
            Verdict::Wait(Some(deadline))
        };
    }
    if let Some(closing) = closing_since {
        let deadline = closing.max(s.idle_since) + limits.header_read_timeout;
        return if now >= deadline {
            Verdict::Stuck
        } else {
            Verdict::Wait(Some(deadline))
        };
    }
    match limits.idle_timeout {
        None => Verdict::Wait(None),
        Some(idle) => {
            let deadline = s.idle_since + idle;
            if now >= deadline {
                Verdict::Idle
            } else {
                Verdict::Wait(Some(deadline))
            }
        }
    }
}

async fn serve_http<IO>(
    io: IO,
    peer: String,
    router: Router,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new(Instant::now()));
    let io = TokioIo::new(Watched {
        inner: io,
        activity: activity.clone(),
    });
    let service = hyper::service::service_fn({
        let activity = activity.clone();
        move |req: hyper::Request<Incoming>| {
            let guard = activity.request_started();
            let router = router.clone();
            async move {
                let response = router.oneshot(req.map(Body::new)).await;
                drop(guard);
                response
            }
        }
    });
    let mut builder = http1::Builder::new();
    builder
        .keep_alive(true)
        .max_buf_size(MAX_READ_BUFFER)
        .max_header_size(MAX_HEADER_BYTES)
        .max_headers(MAX_HEADERS)
        // Ours is below (see the module documentation).
        .header_read_timeout(None);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let mut closing_since: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let v = verdict(&activity.lock(), &limits, closing_since, now);
        let wake = match v {
            Verdict::Wait(wake) => wake,
            Verdict::HeaderTimeout => {
                tracing::debug!(%peer, "closing connection: request head not received in time");
                return;
            }
            Verdict::Stuck => {
                tracing::debug!(%peer, "dropping connection that does not finish closing");
                return;
            }
            Verdict::Idle => {
                tracing::debug!(%peer, "closing idle connection");
                conn.as_mut().graceful_shutdown();
                closing_since = Some(now);
                continue;
            }
        };
        tokio::select! {
            done = conn.as_mut() => {
                if let Err(e) = done {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = stop.wait_for(|s| *s), if closing_since.is_none() => {
                conn.as_mut().graceful_shutdown();
                closing_since = Some(Instant::now());
            }
            _ = activity.changed.notified() => {}
            _ = sleep_until(wake) => {}
        }
    }
}

/// Sleeps until `deadline`, or forever.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// The connection's byte stream, reporting reads to the watchdog.
struct Watched<IO> {
    inner: IO,
    activity: Arc<Activity>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.bytes_read();
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_connections: 1,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Some(Duration::from_secs(30)),
            tls_handshake_timeout: Duration::from_secs(10),
        }
    }

    #[test]
    fn watchdog_deadlines() {
        let t0 = Instant::now();
        let l = limits();
        let s = |in_flight, head_since, idle_since| State {
            in_flight,
            head_since,
            idle_since,
        };
        let secs = Duration::from_secs;
        // A fresh connection must send its head within the header timeout.
        assert!(
            matches!(verdict(&s(0, Some(t0), t0), &l, None, t0 + secs(9)),
            Verdict::Wait(Some(d)) if d == t0 + secs(10))
        );
        assert!(matches!(
            verdict(&s(0, Some(t0), t0), &l, None, t0 + secs(10)),
            Verdict::HeaderTimeout
        ));
        // A running request is never cut, whatever the clocks say.
        assert!(matches!(
            verdict(&s(1, None, t0), &l, None, t0 + secs(1000)),
            Verdict::Wait(None)
        ));
        // Idle between requests: the idle timeout, not the header timeout.
        assert!(matches!(verdict(&s(0, None, t0), &l, None, t0 + secs(20)),
            Verdict::Wait(Some(d)) if d == t0 + secs(30)));
        assert!(matches!(
            verdict(&s(0, None, t0), &l, None, t0 + secs(30)),
            Verdict::Idle
        ));
        // The next head started at 25 s: it has until 35 s.
        assert!(
            matches!(verdict(&s(0, Some(t0 + secs(25)), t0), &l, None, t0 + secs(31)),
            Verdict::Wait(Some(d)) if d == t0 + secs(35))
        );
        // Closing but not finishing (a peer that does not read): dropped after a grace period.
        assert!(matches!(
            verdict(&s(0, None, t0), &l, Some(t0 + secs(30)), t0 + secs(40)),
            Verdict::Stuck
        ));
        let never = Limits {
            idle_timeout: None,
            ..l
        };
        assert!(matches!(
            verdict(&s(0, None, t0), &never, None, t0 + secs(1_000_000)),
            Verdict::Wait(None)
        ));
    }
}
