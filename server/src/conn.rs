//! The accept loop: TCP (optionally TLS) connections served by hyper's HTTP/1.1, with the
//! connection-level limits that keep a hostile or broken client from holding the server. Any
//! listener implementing [`Accept`] works the same way (enclave mode serves vsock; the metrics
//! listener is served here too, with a small cap of its own).
//!
//! Limits, each a bound on what one peer can hold:
//! - at most `max_connections` connections at once; past it, a connection that is not running
//!   a request is closed to admit the new one (see "Reclaiming slots" below), else new ones wait
//!   in the kernel's listen backlog: bounds file descriptors and per-connection memory;
//! - request heads of at most [`MAX_HEADER_BYTES`] and [`MAX_HEADERS`] fields (hyper answers
//!   431 past them);
//! - `tls_handshake_timeout` to finish the TLS handshake;
//! - `header_read_timeout` to deliver a complete request head, counted from the connection
//!   being ready or from the first byte of the next request on a kept-alive connection
//!   (slowloris);
//! - a deadline for the request body: `body_timeout` from the end of the head, extended by
//!   one second per `body_min_rate` bytes received (the rule of Apache's mod_reqtimeout,
//!   `body=T,MinRate=R`). A sign request of a few KiB arrives well within `body_timeout`; a
//!   2 MiB key manager import on a slow link keeps going as long as it averages about
//!   `body_min_rate`; a client that stalls, or trickles a byte a second, gains nothing
//!   (1/`body_min_rate` s a byte). Past the deadline the handler's body read fails, the client
//!   gets 408 Request Timeout with `Connection: close`, and the connection is closed;
//! - `idle_timeout` between requests on a kept-alive connection (Web3Signer's
//!   `--idle-connection-timeout-seconds`), after which the connection is closed; a connection
//!   that still does not finish (a peer that never reads its response, its 408 included) is
//!   dropped one `header_read_timeout` later.
//!
//! Reclaiming slots: a connection waiting for its client — in the TLS handshake, for a request
//! head, for the rest of a request body, or idle between requests — holds a slot without
//! using it. When the cap is reached and a new connection is waiting to be accepted, the one
//! that has waited longest (since its handshake, head, body or idle period began) is closed
//! to make room, as nginx reuses idle connections when it runs out. A flood of sockets that
//! send nothing therefore cannot lock anyone out, not even until their timeouts: each new
//! connection displaces the oldest idle one. Connections running a request (head and body
//! received, handler working) are never closed this way; when every slot runs one, new
//! connections wait for a slot as before. A request whose body has not fully arrived has
//! produced no effect yet (its handler has not got its input), so closing it loses nothing
//! the client cannot retry.
//!
//! hyper's own `header_read_timeout` is not used: it also runs while a kept-alive connection
//! is idle, so it cannot be shorter than the idle timeout. Body size (413), the Host allow-list
//! (403) and the in-flight signing bound (503) are enforced by the router (`app`); a sign
//! request takes its in-flight permit only once its whole body has arrived.
//!
//! Graceful shutdown: the listener is closed, every connection is told to finish its current
//! request and close (an idle one closes at once; one still receiving a body has until its body
//! deadline), and the loop returns once all have ended, so the router's state (and the slashing
//! store it holds) is released before `stop` returns.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::error::ApiError;

/// Largest request head (request line and header fields). Sign requests carry a handful of
/// short headers; 16 KiB is what common proxies accept by default.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Most header fields in one request.
pub const MAX_HEADERS: usize = 100;
/// hyper's read buffer cap: also bounds a head that never ends (431 once it is full).
const MAX_READ_BUFFER: usize = 64 * 1024;
/// The most a body's received bytes can add to its deadline: keeps the arithmetic far from
/// `Instant`'s range whatever the rate (the body limit ends any real body long before).
const MAX_BODY_EXTENSION: Duration = Duration::from_secs(24 * 3600);

/// Connection-level limits (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    /// `None`: idle kept-alive connections are never closed by the server.
    pub idle_timeout: Option<Duration>,
    pub tls_handshake_timeout: Duration,
    /// Time a request body has from the end of its head, before received bytes extend it.
    pub body_timeout: Duration,
    /// Bytes per second: each byte received extends the body deadline by `1 / body_min_rate`
    /// seconds. 0: the whole body within `body_timeout`.
    pub body_min_rate: u64,
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
/// shuts down gracefully and returns once every connection has ended. `name` (with the option
/// that sets its cap) identifies the listener in log lines.
pub async fn serve<L: Accept>(
    listener: L,
    tls: Option<TlsAcceptor>,
    router: Router,
    limits: Limits,
    name: &'static str,
    shutdown: impl std::future::Future<Output = ()>,
) -> io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    // Told when a connection may have become reclaimable (see `reclaim_slot`).
    let pool = Arc::new(Notify::new());
    // Every connection's activity, to choose one to reclaim; ended ones are pruned.
    let mut live: Vec<Weak<Activity>> = Vec::new();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut last_full_warning: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        while let Some(done) = tasks.try_join_next() {
            log_task_end(done);
        }
        // Accept first, then find a slot: only a connection actually waiting can justify
        // closing another one (past the first, new connections wait in the listen backlog).
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
        let permit = match permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if last_full_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                    tracing::warn!(
                        listener = name,
                        max = limits.max_connections,
                        "connection limit reached: closing connections that wait for their \
                         client to admit new ones (new ones wait while every connection runs \
                         a request)"
                    );
                    last_full_warning = Some(Instant::now());
                }
                tokio::select! {
                    _ = &mut shutdown => break,
                    p = reclaim_slot(&permits, &pool, &mut live) => p,
                }
            }
        };
        let activity = Arc::new(Activity::new(Instant::now(), pool.clone()));
        if live.len() >= 2 * limits.max_connections {
            live.retain(|a| a.strong_count() > 0);
        }
        live.push(Arc::downgrade(&activity));
        let slot = Slot {
            activity,
            _permit: permit,
        };
        tasks.spawn(connection(
            stream,
            peer,
            tls.clone(),
            router.clone(),
            limits,
            stop_rx.clone(),
            slot,
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

/// The cap is reached and a connection waits to be admitted: closes the connection that has
/// waited longest for its client (see the module documentation) and returns its slot; while
/// every connection runs a request, waits for a slot or for a connection to become reclaimable.
async fn reclaim_slot(
    permits: &Arc<Semaphore>,
    pool: &Notify,
    live: &mut Vec<Weak<Activity>>,
) -> OwnedSemaphorePermit {
    loop {
        // Registered before looking, so that a change while looking still wakes this loop.
        let changed = pool.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        live.retain(|a| a.strong_count() > 0);
        let conns: Vec<Arc<Activity>> = live.iter().filter_map(Weak::upgrade).collect();
        let choice = reclaim_choice(conns.iter().map(|a| {
            let s = a.lock();
            (waiting_since(&s), s.reclaim)
        }));
        if let Some(i) = choice {
            if !conns[i].reclaim() {
                // It started a request since it was looked at: look again.
                continue;
            }
        }
        drop(conns);
        tokio::select! {
            p = permits.clone().acquire_owned() => return p.expect("the semaphore is never closed"),
            _ = &mut changed => {}
        }
    }
}

/// Which connection to close for a new one, from each live connection's (waiting since, already
/// being reclaimed): the one that has waited longest. `None` while one is already being
/// reclaimed (it closes as soon as its task runs) or when every connection runs a request.
fn reclaim_choice(conns: impl IntoIterator<Item = (Option<Instant>, bool)>) -> Option<usize> {
    let mut oldest: Option<(usize, Instant)> = None;
    for (i, (since, reclaiming)) in conns.into_iter().enumerate() {
        if reclaiming {
            return None;
        }
        if let Some(t) = since {
            if oldest.is_none_or(|(_, o)| t < o) {
                oldest = Some((i, t));
            }
        }
    }
    oldest.map(|(i, _)| i)
}

/// A connection's place under the cap: its activity (which the accept loop may reclaim) and
/// the permit, held until the connection ends.
struct Slot {
    activity: Arc<Activity>,
    _permit: OwnedSemaphorePermit,
}

/// One connection: the TLS handshake (bounded), then HTTP/1.1. The slot is held until the
/// connection ends.
async fn connection<IO>(
    stream: IO,
    peer: String,
    tls: Option<TlsAcceptor>,
    router: Router,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
    slot: Slot,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = slot.activity.clone();
    match tls {
        None => serve_http(stream, peer, router, limits, activity, stop).await,
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
                // The slot went to a new connection (the handshake waits for its client).
                _ = activity.reclaimed() => {
                    tracing::debug!(%peer, "closing connection in TLS handshake: its slot is needed");
                    return;
                }
            };
            serve_http(tls_stream, peer, router, limits, activity, stop).await
        }
    }
    // Only now is the slot free for another connection.
    drop(slot);
}

/// What a connection is doing, as far as the timeouts and the accept loop care.
#[derive(Debug)]
struct State {
    /// Requests handed to the router and not yet answered.
    in_flight: usize,
    /// When the current request head started (the connection was accepted or became ready,
    /// or the first byte of a request arrived on an idle kept-alive connection); `None`
    /// between requests.
    head_since: Option<Instant>,
    /// When the last response was produced (or the connection became ready).
    idle_since: Instant,
    /// The current request's body while it is still arriving: from the end of the head until
    /// its last byte, or until the handler drops it.
    body: Option<BodyProgress>,
    /// When the watchdog gave up on the current request's body (the handler's body read fails,
    /// the client gets 408).
    body_expired: Option<Instant>,
    /// Who to wake when the body is given up: the handler waiting for its next bytes.
    body_waker: Option<Waker>,
    /// The accept loop took this connection's slot for a new one. Set only while the
    /// connection waits for its client, and cleared if it starts running a request instead.
    reclaim: bool,
}

#[derive(Debug, Clone, Copy)]
struct BodyProgress {
    /// The end of the request head.
    since: Instant,
    /// Body bytes received so far.
    received: u64,
}

impl State {
    /// Clears a reclaim the connection no longer qualifies for (it runs a request now);
    /// `true` if it did, so that the accept loop looks for another one.
    fn keep_if_running(&mut self) -> bool {
        let cancel = self.reclaim && waiting_since(self).is_none();
        if cancel {
            self.reclaim = false;
        }
        cancel
    }
}

/// Shared between the connection's I/O, its service, its request bodies, its watchdog, and
/// the accept loop.
#[derive(Debug)]
struct Activity {
    state: Mutex<State>,
    /// Wakes the watchdog when the state changes (a head starts, a request ends, a reclaim).
    changed: Notify,
    /// The accept loop's: told when this connection may have become reclaimable.
    pool: Arc<Notify>,
}

impl Activity {
    fn new(now: Instant, pool: Arc<Notify>) -> Activity {
        Activity {
            state: Mutex::new(State {
                in_flight: 0,
                // Waiting for the client from the start: the TLS handshake, then the head.
                head_since: Some(now),
                idle_since: now,
                body: None,
                body_expired: None,
                body_waker: None,
                reclaim: false,
            }),
            changed: Notify::new(),
            pool,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The connection is ready for HTTP (after the TLS handshake, if any): the first request
    /// head must arrive within the header timeout from now.
    fn ready(&self, now: Instant) {
        let mut s = self.lock();
        s.head_since = Some(now);
        s.idle_since = now;
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

    /// hyper parsed a complete head and hands the request to the router; `has_body`: a body
    /// is still to come.
    fn request_started(self: &Arc<Self>, has_body: bool) -> RequestGuard {
        let now = Instant::now();
        let mut s = self.lock();
        s.in_flight += 1;
        s.head_since = None;
        s.body = has_body.then_some(BodyProgress {
            since: now,
            received: 0,
        });
        s.body_expired = None;
        let cancelled = s.keep_if_running();
        drop(s);
        self.notify(cancelled);
        RequestGuard(self.clone())
    }

    /// Body bytes arrived.
    fn body_received(&self, n: usize) {
        if let Some(b) = self.lock().body.as_mut() {
            b.received = b.received.saturating_add(n as u64);
        }
    }

    /// The body is complete, failed or dropped: its request runs (or has ended).
    fn body_finished(&self) {
        let mut s = self.lock();
        if s.body.take().is_none() {
            return;
        }
        s.body_waker = None;
        let cancelled = s.keep_if_running();
        drop(s);
        self.notify(cancelled);
    }

    /// The body reader waits for bytes: `false` if the body was given up (the read fails).
    fn await_body(&self, waker: &Waker) -> bool {
        let mut s = self.lock();
        if s.body_expired.is_some() {
            return false;
        }
        match &mut s.body_waker {
            Some(w) if w.will_wake(waker) => {}
            w => *w = Some(waker.clone()),
        }
        true
    }

    fn body_expired(&self) -> bool {
        self.lock().body_expired.is_some()
    }

    /// The body deadline passed: the handler's body read fails from now on.
    fn expire_body(&self, now: Instant) {
        let mut s = self.lock();
        s.body_expired = Some(now);
        let waker = s.body_waker.take();
        drop(s);
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// The accept loop takes this connection's slot: granted (and the watchdog told) if the
    /// connection still waits for its client.
    fn reclaim(&self) -> bool {
        let mut s = self.lock();
        if waiting_since(&s).is_none() {
            return false;
        }
        s.reclaim = true;
        drop(s);
        self.changed.notify_one();
        true
    }

    /// Resolves once the accept loop has taken this connection's slot (for the TLS handshake,
    /// which runs before the watchdog).
    async fn reclaimed(&self) {
        loop {
            let changed = self.changed.notified();
            if self.lock().reclaim {
                return;
            }
            changed.await;
        }
    }

    /// Wakes the watchdog, and the accept loop when `for_pool` (a connection may have become
    /// reclaimable, or a reclaim was cancelled).
    fn notify(&self, for_pool: bool) {
        self.changed.notify_one();
        if for_pool {
            self.pool.notify_waiters();
        }
    }
}

/// Ends a request when dropped (answered or cancelled).
struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.in_flight -= 1;
        let idle = s.in_flight == 0;
        if idle {
            s.idle_since = Instant::now();
        }
        drop(s);
        // Idle now: reclaimable.
        self.0.notify(idle);
    }
}

/// A request body that reports its progress to the watchdog and fails once the watchdog has
/// given up on it.
struct TimedBody {
    inner: Incoming,
    activity: Arc<Activity>,
}

/// The error a handler's body read gets past the body deadline (answered with 408).
#[derive(Debug)]
struct BodyTimedOut;

impl std::fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request body not received in time")
    }
}

impl std::error::Error for BodyTimedOut {}

impl hyper::body::Body for TimedBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.activity.body_expired() {
            return Poll::Ready(Some(Err(BodyTimedOut.into())));
        }
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.activity.body_received(data.len());
                }
                if self.inner.is_end_stream() {
                    self.activity.body_finished();
                }
            }
            // The end, or an error (the peer went away): either way no more bytes to wait for.
            Poll::Ready(_) => self.activity.body_finished(),
            Poll::Pending => {
                if !self.activity.await_body(cx.waker()) {
                    return Poll::Ready(Some(Err(BodyTimedOut.into())));
                }
            }
        }
        polled.map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for TimedBody {
    fn drop(&mut self) {
        self.activity.body_finished();
    }
}

/// The answer to a request whose body missed its deadline, whatever the handler made of the
/// failed read (axum's extractors answer 400); the connection closes after it.
fn body_timeout_response() -> Response {
    let mut r = ApiError::BodyTimeout.into_response();
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// The watchdog's decision.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Nothing to do before `Some(deadline)` (or before the state changes).
    Wait(Option<Instant>),
    /// The head did not arrive in time: drop the connection.
    HeaderTimeout,
    /// The body did not arrive in time: fail the handler's read (408), then close.
    BodyTimeout,
    /// Idle for too long: close gracefully.
    Idle,
    /// Closing, but the peer does not let the connection finish: drop it.
    Stuck,
    /// The accept loop took the slot for a new connection: drop this one (it waits for its
    /// client).
    Reclaimed,
}

/// `fire` once `deadline` has passed, else wait for it.
fn at(deadline: Instant, now: Instant, fire: Verdict) -> Verdict {
    if now >= deadline {
        fire
    } else {
        Verdict::Wait(Some(deadline))
    }
}

/// When a body must have arrived: `body_timeout` after the end of the head, plus
/// `1 / body_min_rate` seconds for every byte received so far.
fn body_deadline(b: &BodyProgress, limits: &Limits) -> Instant {
    let earned = match limits.body_min_rate {
        0 => Duration::ZERO,
        rate => {
            let nanos = u128::from(b.received) * 1_000_000_000 / u128::from(rate);
            Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
        }
    };
    b.since + limits.body_timeout + earned.min(MAX_BODY_EXTENSION)
}

/// Since when the connection has been waiting for its client (in the TLS handshake, for a
/// head, for the rest of a body, or idle), or `None` while it runs a request.
fn waiting_since(s: &State) -> Option<Instant> {
    if s.in_flight == 0 {
        Some(s.head_since.unwrap_or(s.idle_since))
    } else {
        s.body.map(|b| b.since)
    }
}

fn verdict(s: &State, limits: &Limits, closing_since: Option<Instant>, now: Instant) -> Verdict {
    if s.reclaim && waiting_since(s).is_some() {
        return Verdict::Reclaimed;
    }
    if s.in_flight > 0 {
        return match (s.body, s.body_expired) {
            // The handler was told (its read fails, 408): it has a grace period to answer.
            (_, Some(expired)) => at(expired + limits.header_read_timeout, now, Verdict::Stuck),
            (Some(body), None) => at(body_deadline(&body, limits), now, Verdict::BodyTimeout),
            // A request runs: the router's own bounds apply, and shutdown waits for it.
            (None, None) => Verdict::Wait(None),
        };
    }
    if let Some(start) = s.head_since {
        return at(
            start + limits.header_read_timeout,
            now,
            Verdict::HeaderTimeout,
        );
    }
    if let Some(closing) = closing_since {
        let deadline = closing.max(s.idle_since) + limits.header_read_timeout;
        return at(deadline, now, Verdict::Stuck);
    }
    match limits.idle_timeout {
        None => Verdict::Wait(None),
        Some(idle) => at(s.idle_since + idle, now, Verdict::Idle),
    }
}

async fn serve_http<IO>(
    io: IO,
    peer: String,
    router: Router,
    limits: Limits,
    activity: Arc<Activity>,
    mut stop: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    activity.ready(Instant::now());
    let io = TokioIo::new(Watched {
        inner: io,
        activity: activity.clone(),
    });
    let service = hyper::service::service_fn({
        let activity = activity.clone();
        move |req: hyper::Request<Incoming>| {
            let guard = activity.request_started(!req.body().is_end_stream());
            let req = req.map(|inner| {
                Body::new(TimedBody {
                    inner,
                    activity: activity.clone(),
                })
            });
            let router = router.clone();
            async move {
                let response = router.oneshot(req).await;
                let timed_out = guard.0.body_expired();
                drop(guard);
                if timed_out {
                    Ok(body_timeout_response())
                } else {
                    response
                }
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
            Verdict::Reclaimed => {
                tracing::debug!(%peer, "closing connection waiting for its client: its slot is needed");
                return;
            }
            Verdict::BodyTimeout => {
                tracing::debug!(%peer, "request body not received in time: answering 408 and closing");
                activity.expire_body(now);
                if closing_since.is_none() {
                    conn.as_mut().graceful_shutdown();
                    closing_since = Some(now);
                }
                continue;
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

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn limits() -> Limits {
        Limits {
            max_connections: 1,
            header_read_timeout: secs(10),
            idle_timeout: Some(secs(30)),
            tls_handshake_timeout: secs(10),
            body_timeout: secs(5),
            body_min_rate: 1000,
        }
    }

    fn state(in_flight: usize, head_since: Option<Instant>, idle_since: Instant) -> State {
        State {
            in_flight,
            head_since,
            idle_since,
            body: None,
            body_expired: None,
            body_waker: None,
            reclaim: false,
        }
    }

    /// A request whose body started arriving at `since` and has `received` bytes so far.
    fn receiving(since: Instant, received: u64) -> State {
        State {
            body: Some(BodyProgress { since, received }),
            ..state(1, None, since)
        }
    }

    #[test]
    fn watchdog_deadlines() {
        let t0 = Instant::now();
        let l = limits();
        let s = state;
        // A fresh connection must send its head within the header timeout.
        assert_eq!(
            verdict(&s(0, Some(t0), t0), &l, None, t0 + secs(9)),
            Verdict::Wait(Some(t0 + secs(10)))
        );
        assert_eq!(
            verdict(&s(0, Some(t0), t0), &l, None, t0 + secs(10)),
            Verdict::HeaderTimeout
        );
        // A running request (its body received) is never cut, whatever the clocks say.
        assert_eq!(
            verdict(&s(1, None, t0), &l, None, t0 + secs(1000)),
            Verdict::Wait(None)
        );
        // Idle between requests: the idle timeout, not the header timeout.
        assert_eq!(
            verdict(&s(0, None, t0), &l, None, t0 + secs(20)),
            Verdict::Wait(Some(t0 + secs(30)))
        );
        assert_eq!(
            verdict(&s(0, None, t0), &l, None, t0 + secs(30)),
            Verdict::Idle
        );
        // The next head started at 25 s: it has until 35 s.
        assert_eq!(
            verdict(&s(0, Some(t0 + secs(25)), t0), &l, None, t0 + secs(31)),
            Verdict::Wait(Some(t0 + secs(35)))
        );
        // Closing but not finishing (a peer that does not read): dropped after a grace period.
        assert_eq!(
            verdict(&s(0, None, t0), &l, Some(t0 + secs(30)), t0 + secs(40)),
            Verdict::Stuck
        );
        let never = Limits {
            idle_timeout: None,
            ..l
        };
        assert_eq!(
            verdict(&s(0, None, t0), &never, None, t0 + secs(1_000_000)),
            Verdict::Wait(None)
        );
    }

    #[test]
    fn a_body_has_its_timeout_plus_what_its_bytes_earn() {
        let t0 = Instant::now();
        let l = limits(); // 5 s, then 1000 bytes a second
        let ms = Duration::from_millis;
        let wait = |d| Verdict::Wait(Some(t0 + d));
        // (bytes received, time since the head, verdict)
        let cases = [
            // Nothing received: 5 s.
            (0, ms(4999), wait(secs(5))),
            (0, secs(5), Verdict::BodyTimeout),
            // A trickle of a byte a second for 10 s earns 10 ms: cut at 5.01 s, not later.
            (5, ms(5004), wait(ms(5005))),
            (10, secs(10), Verdict::BodyTimeout),
            // A large body at the minimum rate or faster keeps going: 2 MB at 1000 B/s after
            // 30 min (1.8 MB received) has until 5 s + 1800 s.
            (1_800_000, secs(1800), wait(secs(1805))),
        ];
        for (received, now, expected) in cases {
            assert_eq!(
                verdict(&receiving(t0, received), &l, None, t0 + now),
                expected,
                "{received} bytes after {now:?}"
            );
        }
        // Rate 0: the whole body within the timeout, however much has arrived.
        let fixed = Limits {
            body_min_rate: 0,
            ..l
        };
        assert_eq!(
            verdict(&receiving(t0, 1 << 20), &fixed, None, t0 + secs(5)),
            Verdict::BodyTimeout
        );
        // No rate makes the arithmetic overflow.
        let slow = Limits {
            body_min_rate: 1,
            ..l
        };
        assert_eq!(
            verdict(&receiving(t0, u64::MAX), &slow, None, t0),
            Verdict::Wait(Some(t0 + secs(5) + MAX_BODY_EXTENSION))
        );
        // Given up at 5 s (the handler's read fails, 408): one header timeout to answer and close,
        // whether or not the handler still holds the body.
        let mut expired = receiving(t0, 0);
        expired.body_expired = Some(t0 + secs(5));
        assert_eq!(
            verdict(&expired, &l, Some(t0 + secs(5)), t0 + secs(14)),
            Verdict::Wait(Some(t0 + secs(15)))
        );
        assert_eq!(
            verdict(&expired, &l, Some(t0 + secs(5)), t0 + secs(15)),
            Verdict::Stuck
        );
        expired.body = None;
        assert_eq!(
            verdict(&expired, &l, Some(t0 + secs(5)), t0 + secs(15)),
            Verdict::Stuck
        );
    }

    #[test]
    fn only_connections_waiting_for_their_client_are_reclaimed() {
        let t0 = Instant::now();
        let l = limits();
        let mut idle = state(0, None, t0);
        let mut head = state(0, Some(t0 + secs(1)), t0);
        let mut body = receiving(t0 + secs(2), 10);
        let mut running = state(1, None, t0);
        assert_eq!(waiting_since(&idle), Some(t0));
        assert_eq!(waiting_since(&head), Some(t0 + secs(1)));
        assert_eq!(waiting_since(&body), Some(t0 + secs(2)));
        assert_eq!(waiting_since(&running), None);
        for s in [&mut idle, &mut head, &mut body] {
            s.reclaim = true;
            assert_eq!(verdict(s, &l, None, t0), Verdict::Reclaimed);
            assert!(!s.keep_if_running());
        }
        // A request that started running keeps its connection, and the mark is dropped.
        running.reclaim = true;
        assert_eq!(verdict(&running, &l, None, t0), Verdict::Wait(None));
        assert!(running.keep_if_running());
        assert!(!running.reclaim);
    }

    #[test]
    fn the_connection_waiting_longest_is_reclaimed_first() {
        let t0 = Instant::now();
        let at = |s| Some(t0 + secs(s));
        assert_eq!(
            reclaim_choice([
                (at(5), false),
                (None, false),
                (at(2), false),
                (at(9), false)
            ]),
            Some(2)
        );
        // Every connection runs a request: nothing to reclaim (new ones wait for a slot).
        assert_eq!(reclaim_choice([(None, false), (None, false)]), None);
        assert_eq!(reclaim_choice([]), None);
        // One is already being reclaimed: its slot is the one to wait for.
        assert_eq!(reclaim_choice([(at(1), false), (at(3), true)]), None);
    }
}
