//! The AWS credentials the host hands to the enclave (for its KMS calls)
//! and uses itself (DynamoDB).
//!
//! - `imds` (default): the instance role, from the instance metadata service
//!   with IMDSv2 session tokens only (aws-config's `ImdsCredentialsProvider`,
//!   which never falls back to IMDSv1). Instance-role credentials expire
//!   (hours); EC2 makes new ones available well before that (at least five
//!   minutes, per the EC2 user guide on instance-role credentials), and the
//!   supervisor refreshes the enclave's copy `--credentials-refresh-margin-secs`
//!   before expiry.
//! - `env`: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`
//!   (development).
//! - `static-for-tests`: fixed dummy credentials, for local stand-ins that do
//!   not check signatures.
//!
//! The secret parts go straight into [`SecretString`]s; nothing here logs or
//! formats them.

use std::time::SystemTime;

use aws_sdk_kms::config::{Credentials, ProvideCredentials, SharedCredentialsProvider};
use clap::ValueEnum;

use enclave_bridge::control::AwsCredentials;
use enclave_bridge::kms::unix_seconds;
use enclave_bridge::secret::SecretString;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CredentialsMode {
    /// The instance role through IMDSv2.
    Imds,
    /// The AWS_* environment variables.
    Env,
    /// Fixed dummy credentials (local stand-ins only).
    StaticForTests,
}

/// Why credentials could not be had.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("cannot get AWS credentials ({mode}): {message}")]
    Provider { mode: &'static str, message: String },
    #[error(
        "the AWS credentials from {mode} (access key {access_key_id}) expired at {expired_at} \
         (seconds since the epoch); IMDS should have rotated them — check the instance profile"
    )]
    Expired {
        mode: &'static str,
        access_key_id: String,
        expired_at: u64,
    },
    #[error("invalid IMDS endpoint `{0}`")]
    ImdsEndpoint(String),
}

/// The access key id used by `static-for-tests`.
pub const STATIC_TEST_ACCESS_KEY_ID: &str = "ENSIGNSTATICTESTKEY";

/// One source of credentials, shared by the supervisor (for the enclave) and
/// the host's own AWS clients.
#[derive(Clone, Debug)]
pub struct CredentialSource {
    mode: CredentialsMode,
    provider: SharedCredentialsProvider,
}

impl CredentialSource {
    /// `imds_endpoint` overrides the metadata service address (tests).
    pub fn new(
        mode: CredentialsMode,
        imds_endpoint: Option<&str>,
    ) -> Result<Self, CredentialsError> {
        let provider = match mode {
            CredentialsMode::Imds => {
                let pc = aws_config::provider_config::ProviderConfig::without_region()
                    .with_http_client(super::https_client());
                let mut client = aws_config::imds::Client::builder().configure(&pc);
                if let Some(url) = imds_endpoint {
                    client = client
                        .endpoint(url)
                        .map_err(|_| CredentialsError::ImdsEndpoint(url.to_owned()))?;
                }
                SharedCredentialsProvider::new(
                    aws_config::imds::credentials::ImdsCredentialsProvider::builder()
                        .configure(&pc)
                        .imds_client(client.build())
                        .build(),
                )
            }
            CredentialsMode::Env => SharedCredentialsProvider::new(
                aws_config::environment::EnvironmentVariableCredentialsProvider::new(),
            ),
            CredentialsMode::StaticForTests => SharedCredentialsProvider::new(Credentials::new(
                STATIC_TEST_ACCESS_KEY_ID,
                "ensign-static-test-secret",
                None,
                None,
                "ensign-static-for-tests",
            )),
        };
        Ok(Self { mode, provider })
    }

    pub fn mode(&self) -> CredentialsMode {
        self.mode
    }

    fn mode_name(&self) -> &'static str {
        match self.mode {
            CredentialsMode::Imds => "instance role via IMDSv2",
            CredentialsMode::Env => "environment",
            CredentialsMode::StaticForTests => "static-for-tests",
        }
    }

    /// The provider, for the host's own SDK clients.
    pub fn provider(&self) -> SharedCredentialsProvider {
        self.provider.clone()
    }

    /// Fetch fresh credentials in the control protocol's form. Refuses
    /// credentials that have already expired.
    pub async fn fetch(&self) -> Result<AwsCredentials, CredentialsError> {
        let creds = self.provider.provide_credentials().await.map_err(|e| {
            CredentialsError::Provider {
                mode: self.mode_name(),
                // Display only: the Debug form carries raw IMDS responses.
                message: super::error_chain(&e),
            }
        })?;
        let expiration = creds.expiry();
        if let Some(exp) = expiration {
            if exp <= SystemTime::now() {
                return Err(CredentialsError::Expired {
                    mode: self.mode_name(),
                    access_key_id: creds.access_key_id().to_owned(),
                    expired_at: unix_seconds(exp),
                });
            }
        }
        Ok(AwsCredentials {
            access_key_id: creds.access_key_id().to_owned(),
            secret_access_key: SecretString::new(creds.secret_access_key()),
            session_token: creds.session_token().map(SecretString::new),
            expiration: expiration.map(unix_seconds),
        })
    }
}
