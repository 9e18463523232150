//! The enclave side of the control protocol: accept loop, framing,
//! handshake, the state machine, dispatch to a [`ControlHandler`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Mutex, Semaphore};
use tokio::task::JoinSet;

use super::frame::{read_frame, to_json_zeroizing, write_frame, FrameError, MAX_FRAME_LEN};
use super::messages::*;
use crate::transport::{BoxStream, Listener, Peer};

/// A refusal or failure from the enclave application. The message goes to the
/// host verbatim: it must never contain secret material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct HandlerError {
    pub message: String,
}

impl HandlerError {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

/// What the enclave application implements. The server calls at most one
/// method at a time (they are serialised), `init` only in the states that
/// allow it, and the others only when the enclave is [`EnclaveState::Ready`].
/// Each call runs in a task of its own, so a host that disconnects mid-call
/// does not cancel it.
pub trait ControlHandler: Send + Sync + 'static {
    /// Decrypt and load the keys (and TLS key). `Err` leaves the enclave in
    /// [`EnclaveState::Failed`], from which a new `Init` is accepted; `Ok`
    /// makes it [`EnclaveState::Ready`] (keys that failed are reported in the
    /// [`KeysReport`], not as an error).
    fn init(
        &self,
        request: InitRequest,
    ) -> impl Future<Output = Result<KeysReport, HandlerError>> + Send;

    fn add_keys(
        &self,
        request: AddKeysRequest,
    ) -> impl Future<Output = Result<KeysReport, HandlerError>> + Send;

    fn remove_keys(
        &self,
        request: RemoveKeysRequest,
    ) -> impl Future<Output = Result<RemoveReport, HandlerError>> + Send;

    fn refresh_credentials(
        &self,
        credentials: AwsCredentials,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;

    /// New credentials for the slashing-protection database. The default
    /// refuses: an enclave application without a database has no use for them.
    fn refresh_database_credentials(
        &self,
        credentials: DatabaseCredentials,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        drop(credentials);
        async {
            Err(HandlerError::new(
                "this enclave takes no database credentials",
            ))
        }
    }
}

/// Limits of a [`ControlServer`].
#[derive(Clone, Debug)]
pub struct ControlServerConfig {
    /// Largest frame accepted (the length prefix is checked before reading).
    pub max_frame_len: u32,
    /// Connections served at once; one more gets a `Busy` error and is closed.
    pub max_connections: usize,
    /// How long a connection may sit without completing a frame.
    pub idle_timeout: Duration,
}

impl Default for ControlServerConfig {
    fn default() -> Self {
        Self {
            max_frame_len: MAX_FRAME_LEN,
            max_connections: 8,
            idle_timeout: Duration::from_secs(120),
        }
    }
}

/// The control server. Cheap to clone (shared state); `serve` may run on
/// several listeners at once.
pub struct ControlServer<H> {
    inner: Arc<Inner<H>>,
}

impl<H> Clone for ControlServer<H> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<H> {
    handler: Arc<H>,
    config: ControlServerConfig,
    state: watch::Sender<EnclaveState>,
    /// Serialises handler calls.
    op: Mutex<()>,
}

/// How one connection ended (for logs).
enum Close {
    Clean,
    Protocol(ErrorCode),
    Transport(String),
}

impl<H: ControlHandler> ControlServer<H> {
    pub fn new(handler: H, config: ControlServerConfig) -> Self {
        Self::with_shared_handler(Arc::new(handler), config)
    }

    pub fn with_shared_handler(handler: Arc<H>, config: ControlServerConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                handler,
                config,
                state: watch::Sender::new(EnclaveState::WaitingForInit),
                op: Mutex::new(()),
            }),
        }
    }

    /// The current state.
    pub fn state(&self) -> EnclaveState {
        self.inner.state.borrow().clone()
    }

    /// Watch state changes (the enclave's main task waits for `Ready` here
    /// before opening its data port).
    pub fn subscribe(&self) -> watch::Receiver<EnclaveState> {
        self.inner.state.subscribe()
    }

    /// Accept and serve connections until `shutdown` completes. Nothing a
    /// client does ends this loop; accept errors are logged and retried.
    /// On shutdown, open connections are dropped (a handler call already
    /// started still runs to its end).
    pub async fn serve(&self, listener: Listener, shutdown: impl Future<Output = ()>) {
        let slots = Arc::new(Semaphore::new(self.inner.config.max_connections));
        let mut conns = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
                accepted = listener.accept() => {
                    let (mut stream, peer) = match accepted {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::warn!(error = %e, "control accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    let Ok(permit) = slots.clone().try_acquire_owned() else {
                        tracing::warn!(%peer, "control server at its connection cap; refusing");
                        let max = self.inner.config.max_frame_len;
                        conns.spawn(async move {
                            let busy = error(ErrorCode::Busy, "too many control connections");
                            if tokio::time::timeout(Duration::from_secs(1), send(&mut stream, &busy, max))
                                .await
                                .is_ok()
                            {
                                linger(&mut stream).await;
                            }
                        });
                        continue;
                    };
                    let server = self.clone();
                    conns.spawn(async move {
                        server.connection(stream, peer, Some(permit)).await;
                    });
                }
            }
        }
        conns.shutdown().await;
    }

    /// Serve one already-accepted connection to its end.
    pub async fn serve_connection(&self, stream: BoxStream, peer: Peer) {
        self.connection(stream, peer, None).await;
    }

    async fn connection(
        &self,
        mut stream: BoxStream,
        peer: Peer,
        slot: Option<tokio::sync::OwnedSemaphorePermit>,
    ) {
        let close = self.converse(&mut stream).await;
        // A connection that is only being drained no longer counts.
        drop(slot);
        match close {
            Close::Clean => tracing::debug!(%peer, "control connection closed"),
            Close::Protocol(code) => {
                tracing::warn!(%peer, %code, "control connection closed after a protocol error");
                linger(&mut stream).await;
            }
            Close::Transport(e) => tracing::warn!(%peer, error = %e, "control connection dropped"),
        }
    }

    async fn converse(&self, stream: &mut BoxStream) -> Close {
        let max = self.inner.config.max_frame_len;
        let mut greeted = false;
        loop {
            let frame =
                match tokio::time::timeout(self.inner.config.idle_timeout, read_frame(stream, max))
                    .await
                {
                    Err(_) => return Close::Transport(FrameError::Timeout.to_string()),
                    Ok(Ok(None)) => return Close::Clean,
                    Ok(Ok(Some(f))) => f,
                    Ok(Err(FrameError::TooLarge { len, max })) => {
                        let reply = error(
                            ErrorCode::FrameTooLarge,
                            &format!("frame of {len} bytes exceeds the {max}-byte cap"),
                        );
                        let _ = send(stream, &reply, max).await;
                        return Close::Protocol(ErrorCode::FrameTooLarge);
                    }
                    Ok(Err(e)) => return Close::Transport(e.to_string()),
                };
            let request: Request = match serde_json::from_slice(&frame) {
                Ok(r) => r,
                Err(e) => {
                    let reply = error(ErrorCode::MalformedMessage, &describe_json_error(&e));
                    let _ = send(stream, &reply, max).await;
                    return Close::Protocol(ErrorCode::MalformedMessage);
                }
            };
            drop(frame);
            let reply = match (greeted, request) {
                (false, Request::Hello(hello)) if hello.protocol_version == PROTOCOL_VERSION => {
                    greeted = true;
                    Response::Hello(Hello {
                        protocol_version: PROTOCOL_VERSION,
                    })
                }
                (false, Request::Hello(hello)) => error(
                    ErrorCode::UnsupportedVersion,
                    &format!(
                        "protocol version {} is not supported; this enclave speaks {PROTOCOL_VERSION}",
                        hello.protocol_version
                    ),
                ),
                (false, other) => error(
                    ErrorCode::HandshakeRequired,
                    &format!("expected Hello first, got {}", other.kind()),
                ),
                (true, Request::Hello(_)) => {
                    error(ErrorCode::MalformedMessage, "Hello was already exchanged")
                }
                (true, request) => self.dispatch(request).await,
            };
            let closes = match &reply {
                Response::Error(e) => e.code.closes_connection().then_some(e.code),
                _ => None,
            };
            if let Err(e) = send(stream, &reply, max).await {
                return Close::Transport(e.to_string());
            }
            if let Some(code) = closes {
                return Close::Protocol(code);
            }
        }
    }

    async fn dispatch(&self, request: Request) -> Response {
        tracing::debug!(request = request.kind(), "control request");
        match request {
            Request::Hello(_) => unreachable!("handled by the caller"),
            Request::Status => Response::Status(StatusReply {
                state: self.state(),
                protocol_version: PROTOCOL_VERSION,
            }),
            Request::Init(init) => self.init(init).await,
            Request::AddKeys(req) => {
                self.when_ready(
                    move |h| async move { h.add_keys(req).await.map(Response::KeysAdded) },
                )
                .await
            }
            Request::RemoveKeys(req) => {
                self.when_ready(move |h| async move {
                    h.remove_keys(req).await.map(Response::KeysRemoved)
                })
                .await
            }
            Request::RefreshCredentials(creds) => {
                self.when_ready(move |h| async move {
                    h.refresh_credentials(creds)
                        .await
                        .map(|()| Response::CredentialsRefreshed)
                })
                .await
            }
            Request::RefreshDatabaseCredentials(creds) => {
                self.when_ready(move |h| async move {
                    h.refresh_database_credentials(creds)
                        .await
                        .map(|()| Response::DatabaseCredentialsRefreshed)
                })
                .await
            }
        }
    }

    async fn init(&self, init: InitRequest) -> Response {
        // Check-and-set in one step: two concurrent `Init`s cannot both pass.
        let mut refusal = None;
        self.inner.state.send_if_modified(|state| match state {
            EnclaveState::WaitingForInit | EnclaveState::Failed { .. } => {
                *state = EnclaveState::Initialising;
                true
            }
            EnclaveState::Initialising => {
                refusal = Some(error(
                    ErrorCode::InitialisationInProgress,
                    "an Init is already being processed",
                ));
                false
            }
            EnclaveState::Ready => {
                refusal = Some(error(
                    ErrorCode::AlreadyInitialised,
                    "the enclave is already initialised; restart it to initialise again",
                ));
                false
            }
        });
        if let Some(refusal) = refusal {
            tracing::warn!("Init refused: enclave state does not allow it");
            return refusal;
        }
        let inner = self.inner.clone();
        let task = tokio::spawn(async move {
            let _op = inner.op.lock().await;
            let outcome = inner.handler.init(init).await;
            let next = match &outcome {
                Ok(_) => EnclaveState::Ready,
                Err(e) => EnclaveState::Failed {
                    reason: e.message.clone(),
                },
            };
            inner.state.send_replace(next);
            outcome
        });
        match task.await {
            Ok(Ok(report)) => {
                tracing::info!(
                    loaded = report.loaded.len(),
                    failed = report.failed.len(),
                    "enclave initialised"
                );
                Response::Initialised(report)
            }
            Ok(Err(e)) => {
                tracing::warn!(reason = %e, "enclave initialisation failed");
                error(ErrorCode::HandlerFailed, &e.message)
            }
            Err(join) => {
                self.inner.state.send_replace(EnclaveState::Failed {
                    reason: "initialisation aborted".into(),
                });
                tracing::error!(error = %join, "enclave initialisation task died");
                error(ErrorCode::Internal, "initialisation aborted")
            }
        }
    }

    async fn when_ready<F, Fut>(&self, op: F) -> Response
    where
        F: FnOnce(Arc<H>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Response, HandlerError>> + Send + 'static,
    {
        if *self.inner.state.borrow() != EnclaveState::Ready {
            return error(
                ErrorCode::NotReady,
                "the enclave is not initialised (send Init first)",
            );
        }
        let inner = self.inner.clone();
        let task = tokio::spawn(async move {
            let _op = inner.op.lock().await;
            op(inner.handler.clone()).await
        });
        match task.await {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => error(ErrorCode::HandlerFailed, &e.message),
            Err(join) => {
                tracing::error!(error = %join, "control handler task died");
                error(ErrorCode::Internal, "request aborted")
            }
        }
    }
}

/// Close after an error reply without losing it: closing a TCP socket with
/// unread input sends a reset, which can discard the reply before the peer
/// reads it. So: send FIN, then read and drop what the peer still sends, for
/// a bounded time and amount, before dropping the socket.
async fn linger(stream: &mut BoxStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = stream.shutdown().await;
    let drain = async {
        let mut buf = [0u8; 8192];
        let mut left: usize = 1 << 20;
        while left > 0 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
}

fn error(code: ErrorCode, message: &str) -> Response {
    Response::Error(ErrorReply {
        code,
        message: message.to_owned(),
    })
}

async fn send(stream: &mut BoxStream, reply: &Response, max: u32) -> Result<(), FrameError> {
    let bytes = to_json_zeroizing(reply).map_err(|e| FrameError::Io(std::io::Error::other(e)))?;
    write_frame(stream, &bytes, max).await
}

/// A JSON error described without echoing values from the frame (a value
/// could be a secret sent in the wrong field): serde's messages about field
/// and variant *names* are kept, anything else is reduced to its position.
pub(crate) fn describe_json_error(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let names_only = [
        "unknown field",
        "missing field",
        "unknown variant",
        "duplicate field",
    ];
    if e.is_data() && names_only.iter().any(|p| text.starts_with(p)) {
        return format!("invalid request: {text}");
    }
    let what = match e.classify() {
        serde_json::error::Category::Io => "unreadable",
        serde_json::error::Category::Syntax => "not valid JSON",
        serde_json::error::Category::Data => "a value of the wrong type or form",
        serde_json::error::Category::Eof => "truncated JSON",
    };
    format!(
        "invalid request: {what} at line {} column {}",
        e.line(),
        e.column()
    )
}
