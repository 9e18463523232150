//! The parent-side outbound proxy: the enclave's only way out.
//!
//! An enclave has no network, only vsock to its parent. For KMS it connects to
//! a port on the parent (by convention vsock port 8000, as AWS's
//! `vsock-proxy`), and the parent pipes the bytes to the real endpoint; TLS
//! runs from the enclave to KMS through the pipe, so the parent sees only
//! ciphertext.
//!
//! **Design: one listener per destination.** Each [`OutboundProxy`] forwards
//! everything it accepts to one `host:port` fixed at start, and that
//! destination must be on the [`Allowlist`] or the proxy refuses to start (and
//! logs it). The alternative — a preamble in which the client names its
//! destination — was rejected:
//!
//! - nothing a connecting client sends can choose where the bytes go, so a
//!   compromised process that reaches the port gets KMS and nothing else, and
//!   the proxy never parses attacker-controlled input;
//! - the enclave's HTTPS client needs no proxy protocol: a plain TCP (or
//!   vsock) connection to the port *is* a connection to KMS, which keeps the
//!   SDK's own connector and TLS verification (SNI and certificate name are the
//!   real KMS host name);
//! - it is the operational model of AWS's vsock-proxy (one process per remote,
//!   allowlist file), so operators know it.
//!
//! The price is one port per destination, and ensign needs only KMS (regional
//! and, optionally, FIPS).
//!
//! Names are resolved at each connection (KMS addresses change); the allowlist
//! is checked on the configured name, not on addresses.

use std::fmt;
use std::future::Future;
use std::io;
use std::str::FromStr;
use std::sync::Arc;

use crate::forward::{ForwardLimits, ForwardStats, Forwarder};
use crate::transport::{Endpoint, EndpointParseError};

/// One allowed destination, `host:port`. Host names compare ASCII
/// case-insensitively (DNS names are case-insensitive, RFC 4343).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowedRemote {
    host: String,
    port: u16,
}

impl AllowedRemote {
    pub fn new(host: &str, port: u16) -> Self {
        Self {
            host: host.to_ascii_lowercase(),
            port,
        }
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint::Tcp {
            host: self.host.clone(),
            port: self.port,
        }
    }
}

impl fmt::Display for AllowedRemote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for AllowedRemote {
    type Err = EndpointParseError;

    /// `host:port` (IPv6 in brackets).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match format!("tcp:{s}").parse::<Endpoint>()? {
            Endpoint::Tcp { host, port } => Ok(Self::new(&host, port)),
            _ => unreachable!("a tcp: string parses to Endpoint::Tcp"),
        }
    }
}

/// The destinations an [`OutboundProxy`] may be started for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Allowlist(Vec<AllowedRemote>);

impl Allowlist {
    pub fn new(entries: impl IntoIterator<Item = AllowedRemote>) -> Self {
        Self(entries.into_iter().collect())
    }

    /// The regional KMS endpoint and its FIPS twin on 443 — what the AWS
    /// sample writes into `/etc/nitro_enclaves/vsock-proxy.yaml`.
    pub fn kms(region: &str) -> Self {
        Self::new([
            AllowedRemote::new(&format!("kms.{region}.amazonaws.com"), 443),
            AllowedRemote::new(&format!("kms-fips.{region}.amazonaws.com"), 443),
        ])
    }

    /// Comma-separated `host:port` entries.
    pub fn parse(list: &str) -> Result<Self, EndpointParseError> {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::parse)
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    pub fn allows(&self, remote: &AllowedRemote) -> bool {
        self.0.iter().any(|a| a == remote)
    }

    pub fn entries(&self) -> &[AllowedRemote] {
        &self.0
    }
}

/// Why an outbound proxy did not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("outbound proxy destination {remote} is not on the allowlist")]
    NotAllowed { remote: AllowedRemote },
    #[error("outbound proxy cannot listen on {listen}: {source}")]
    Bind {
        listen: Endpoint,
        #[source]
        source: io::Error,
    },
}

/// A running-to-be outbound proxy: `listen` → `remote`.
pub struct OutboundProxy {
    forwarder: Forwarder,
    remote: AllowedRemote,
}

impl OutboundProxy {
    /// Check `remote` against `allowlist`, then bind `listen`.
    pub async fn bind(
        listen: &Endpoint,
        remote: AllowedRemote,
        allowlist: &Allowlist,
        limits: ForwardLimits,
    ) -> Result<Self, ProxyError> {
        if !allowlist.allows(&remote) {
            tracing::error!(%remote, "refusing to start outbound proxy: destination not on the allowlist");
            return Err(ProxyError::NotAllowed { remote });
        }
        let listener = listen.bind().await.map_err(|source| ProxyError::Bind {
            listen: listen.clone(),
            source,
        })?;
        Ok(Self {
            forwarder: Forwarder::new(listener, remote.endpoint(), limits),
            remote,
        })
    }

    pub fn local_endpoint(&self) -> io::Result<Endpoint> {
        self.forwarder.local_endpoint()
    }

    pub fn remote(&self) -> &AllowedRemote {
        &self.remote
    }

    pub fn stats(&self) -> Arc<ForwardStats> {
        self.forwarder.stats()
    }

    /// Forward until `shutdown` completes.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tracing::info!(remote = %self.remote, listen = ?self.forwarder.local_endpoint().ok(),
            "outbound proxy running");
        self.forwarder.run(shutdown).await;
    }
}
