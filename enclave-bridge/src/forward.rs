//! A capped byte forwarder: every connection accepted on one endpoint is
//! piped to a connection to another.
//!
//! Used on the parent for client TCP → enclave data port (vsock), inside the
//! enclave for loopback TCP → parent outbound proxy (vsock), and by
//! [`crate::proxy`]. The bytes are not looked at: TLS runs end to end through
//! it.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::transport::{BoxStream, Endpoint, Listener};

/// Copy bytes both ways until both sides have closed; returns the byte counts
/// (a → b, b → a). Each direction's EOF is passed on as a write shutdown.
pub async fn pipe(mut a: BoxStream, mut b: BoxStream) -> io::Result<(u64, u64)> {
    tokio::io::copy_bidirectional(&mut a, &mut b).await
}

/// Limits of one [`Forwarder`].
#[derive(Clone, Debug)]
pub struct ForwardLimits {
    /// Connections piped at once; one more is accepted and closed at once.
    pub max_connections: usize,
    /// How long connecting to the target may take.
    pub connect_timeout: Duration,
}

impl Default for ForwardLimits {
    fn default() -> Self {
        Self {
            max_connections: 256,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// Counters of one [`Forwarder`], readable while it runs.
#[derive(Debug, Default)]
pub struct ForwardStats {
    /// Connections accepted and piped to a connected target.
    pub piped: AtomicU64,
    /// Connections closed at once because `max_connections` were active.
    pub refused_at_cap: AtomicU64,
    /// Connections closed because the target could not be reached.
    pub target_failed: AtomicU64,
}

impl ForwardStats {
    pub fn piped(&self) -> u64 {
        self.piped.load(Ordering::Relaxed)
    }
    pub fn refused_at_cap(&self) -> u64 {
        self.refused_at_cap.load(Ordering::Relaxed)
    }
    pub fn target_failed(&self) -> u64 {
        self.target_failed.load(Ordering::Relaxed)
    }
}

/// Accepts on a listener and pipes each connection to `target`.
pub struct Forwarder {
    listener: Listener,
    target: Endpoint,
    limits: ForwardLimits,
    stats: Arc<ForwardStats>,
}

impl Forwarder {
    pub fn new(listener: Listener, target: Endpoint, limits: ForwardLimits) -> Self {
        Self {
            listener,
            target,
            limits,
            stats: Arc::default(),
        }
    }

    /// The endpoint clients connect to.
    pub fn local_endpoint(&self) -> io::Result<Endpoint> {
        self.listener.local_endpoint()
    }

    pub fn stats(&self) -> Arc<ForwardStats> {
        self.stats.clone()
    }

    /// Run until `shutdown` completes; then every pipe still open is dropped
    /// (both sockets closed). Accept errors are logged and do not stop the
    /// loop.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let slots = Arc::new(Semaphore::new(self.limits.max_connections));
        let mut tasks = JoinSet::new();
        let listen = self
            .listener
            .local_endpoint()
            .map(|e| e.to_string())
            .unwrap_or_default();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                accepted = self.listener.accept() => {
                    let (client, peer) = match accepted {
                        Ok(c) => c,
                        Err(e) => {
                            // EMFILE and friends: back off instead of spinning.
                            tracing::warn!(listen = %listen, error = %e, "forwarder accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    let Ok(permit) = slots.clone().try_acquire_owned() else {
                        self.stats.refused_at_cap.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(listen = %listen, %peer, max = self.limits.max_connections,
                            "forwarder at its connection cap; connection closed");
                        drop(client);
                        continue;
                    };
                    let target = self.target.clone();
                    let timeout = self.limits.connect_timeout;
                    let stats = self.stats.clone();
                    tasks.spawn(async move {
                        let _permit = permit;
                        let upstream = match tokio::time::timeout(timeout, target.connect()).await {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                stats.target_failed.fetch_add(1, Ordering::Relaxed);
                                tracing::warn!(%target, error = %e, "forwarder cannot reach its target");
                                return;
                            }
                            Err(_) => {
                                stats.target_failed.fetch_add(1, Ordering::Relaxed);
                                tracing::warn!(%target, "forwarder timed out connecting to its target");
                                return;
                            }
                        };
                        stats.piped.fetch_add(1, Ordering::Relaxed);
                        match pipe(client, upstream).await {
                            Ok((up, down)) => tracing::debug!(%peer, %target, up, down, "pipe closed"),
                            Err(e) => tracing::debug!(%peer, %target, error = %e, "pipe ended with an error"),
                        }
                    });
                }
            }
        }
        tasks.shutdown().await;
    }
}
