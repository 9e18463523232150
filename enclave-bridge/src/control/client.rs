//! The host side of the control protocol.

use std::time::Duration;

use super::frame::{read_frame, to_json_zeroizing, write_frame, FrameError, MAX_FRAME_LEN};
use super::messages::*;
use super::ControlError;
use crate::transport::{BoxStream, Endpoint};

/// Limits of a [`ControlClient`].
#[derive(Clone, Debug)]
pub struct ControlClientConfig {
    pub max_frame_len: u32,
    /// Connecting plus the `Hello` exchange.
    pub connect_timeout: Duration,
    /// One request and its reply. `Init` decrypts every key through KMS, so
    /// this is generous.
    pub request_timeout: Duration,
}

impl Default for ControlClientConfig {
    fn default() -> Self {
        Self {
            max_frame_len: MAX_FRAME_LEN,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(600),
        }
    }
}

/// A connection to an enclave's control port, past the version handshake.
pub struct ControlClient {
    stream: BoxStream,
    config: ControlClientConfig,
}

impl std::fmt::Debug for ControlClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlClient").finish_non_exhaustive()
    }
}

impl ControlClient {
    /// Connect with default limits and do the `Hello` exchange.
    pub async fn connect(endpoint: &Endpoint) -> Result<Self, ControlError> {
        Self::connect_with(endpoint, ControlClientConfig::default()).await
    }

    pub async fn connect_with(
        endpoint: &Endpoint,
        config: ControlClientConfig,
    ) -> Result<Self, ControlError> {
        let timeout = config.connect_timeout;
        tokio::time::timeout(timeout, async {
            let stream = endpoint.connect().await.map_err(ControlError::Connect)?;
            Self::handshake(stream, config).await
        })
        .await
        .map_err(|_| ControlError::Timeout)?
    }

    /// Do the `Hello` exchange on an already-connected stream.
    pub async fn handshake(
        stream: BoxStream,
        config: ControlClientConfig,
    ) -> Result<Self, ControlError> {
        let mut client = Self { stream, config };
        let reply = client
            .request(&Request::Hello(Hello {
                protocol_version: PROTOCOL_VERSION,
            }))
            .await?;
        match reply {
            Response::Hello(h) if h.protocol_version == PROTOCOL_VERSION => Ok(client),
            Response::Hello(h) => Err(ControlError::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: h.protocol_version,
            }),
            other => Err(unexpected("Hello", other)),
        }
    }

    pub async fn status(&mut self) -> Result<StatusReply, ControlError> {
        match self.request(&Request::Status).await? {
            Response::Status(s) => Ok(s),
            other => Err(unexpected("Status", other)),
        }
    }

    pub async fn init(&mut self, request: InitRequest) -> Result<KeysReport, ControlError> {
        match self.request(&Request::Init(request)).await? {
            Response::Initialised(r) => Ok(r),
            other => Err(unexpected("Initialised", other)),
        }
    }

    pub async fn add_keys(&mut self, request: AddKeysRequest) -> Result<KeysReport, ControlError> {
        match self.request(&Request::AddKeys(request)).await? {
            Response::KeysAdded(r) => Ok(r),
            other => Err(unexpected("KeysAdded", other)),
        }
    }

    pub async fn remove_keys(
        &mut self,
        request: RemoveKeysRequest,
    ) -> Result<RemoveReport, ControlError> {
        match self.request(&Request::RemoveKeys(request)).await? {
            Response::KeysRemoved(r) => Ok(r),
            other => Err(unexpected("KeysRemoved", other)),
        }
    }

    pub async fn refresh_credentials(
        &mut self,
        credentials: AwsCredentials,
    ) -> Result<(), ControlError> {
        match self
            .request(&Request::RefreshCredentials(credentials))
            .await?
        {
            Response::CredentialsRefreshed => Ok(()),
            other => Err(unexpected("CredentialsRefreshed", other)),
        }
    }

    pub async fn refresh_database_credentials(
        &mut self,
        credentials: DatabaseCredentials,
    ) -> Result<(), ControlError> {
        match self
            .request(&Request::RefreshDatabaseCredentials(credentials))
            .await?
        {
            Response::DatabaseCredentialsRefreshed => Ok(()),
            other => Err(unexpected("DatabaseCredentialsRefreshed", other)),
        }
    }

    /// Send one request and read its reply. An `Error` reply becomes
    /// [`ControlError::Remote`].
    pub async fn request(&mut self, request: &Request) -> Result<Response, ControlError> {
        let max = self.config.max_frame_len;
        let payload = to_json_zeroizing(request).map_err(ControlError::Encode)?;
        let exchange = async {
            write_frame(&mut self.stream, &payload, max).await?;
            read_frame(&mut self.stream, max).await
        };
        let frame = match tokio::time::timeout(self.config.request_timeout, exchange).await {
            Err(_) => return Err(ControlError::Timeout),
            Ok(Err(e)) => return Err(ControlError::Frame(e)),
            Ok(Ok(None)) => {
                return Err(ControlError::Frame(FrameError::Truncated {
                    got: 0,
                    expected: 4,
                }))
            }
            Ok(Ok(Some(f))) => f,
        };
        let response: Response = serde_json::from_slice(&frame)
            .map_err(|e| ControlError::Malformed(super::server::describe_json_error(&e)))?;
        match response {
            Response::Error(e) => Err(ControlError::Remote {
                code: e.code,
                message: e.message,
            }),
            other => Ok(other),
        }
    }
}

fn unexpected(wanted: &'static str, got: Response) -> ControlError {
    let got = match got {
        Response::Hello(_) => "Hello",
        Response::Status(_) => "Status",
        Response::Initialised(_) => "Initialised",
        Response::KeysAdded(_) => "KeysAdded",
        Response::KeysRemoved(_) => "KeysRemoved",
        Response::CredentialsRefreshed => "CredentialsRefreshed",
        Response::DatabaseCredentialsRefreshed => "DatabaseCredentialsRefreshed",
        Response::Error(_) => "Error",
    };
    ControlError::UnexpectedReply { wanted, got }
}
