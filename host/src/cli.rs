//! `ensign-host`'s command line ([`HostArgs`], clap) and its checked form
//! ([`HostConfig`]). Every option also reads an environment variable
//! `ENSIGN_HOST_<OPTION>` (for a systemd `EnvironmentFile`).

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, ArgGroup, Parser, ValueEnum};

use super::credentials::CredentialsMode;
use super::keys::KeySourceConfig;
use super::launcher::{LauncherConfig, NitroConfig};
use enclave_bridge::control::{AwsRegion, EndpointUrl};
use enclave_bridge::proxy::AllowedRemote;
use enclave_bridge::transport::{Endpoint, VMADDR_CID_ANY};

/// How the host reaches the enclave when no endpoint is given explicitly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum EnclaveTransport {
    /// `vsock:<--enclave-cid>:<port>`; proxies listen on `vsock:any:<port>`.
    Vsock,
    /// `tcp:<--enclave-tcp-host>:<port>` for everything (off-enclave).
    Tcp,
    /// Unix sockets in `--enclave-socket-dir` (`data.sock`, `control.sock`,
    /// `kms-proxy.sock`, `db-proxy.sock`).
    Unix,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The parent-instance side of ensign's enclave mode: forwards validator
/// traffic to the enclave, proxies its KMS (and PostgreSQL) connections,
/// delivers encrypted key records and instance-role credentials, and
/// restarts it when it dies. The host never sees plaintext key material:
/// it moves KMS ciphertexts only.
#[derive(Debug, Parser)]
#[command(name = "ensign-host", version)]
#[command(group(ArgGroup::new("key_source").required(true).args(["keys_table", "keys_dir"])))]
pub struct HostArgs {
    /// Address validator clients (the load balancer) connect to; each
    /// connection is piped to the enclave's data port. `HOST:PORT` or `tcp:HOST:PORT`.
    #[arg(long, env = "ENSIGN_HOST_LISTEN", default_value = "0.0.0.0:8443", value_parser = parse_listen)]
    pub listen: Endpoint,

    /// The enclave's vsock CID (4 or more; what `nitro-cli run-enclave --enclave-cid` gets).
    #[arg(long, env = "ENSIGN_HOST_ENCLAVE_CID", default_value_t = 16)]
    pub enclave_cid: u32,

    /// The enclave's data port (HTTPS of the signer; upcheck only until initialised).
    #[arg(long, env = "ENSIGN_HOST_DATA_PORT", default_value_t = 5000)]
    pub data_port: u32,

    /// The enclave's control port (the control protocol; never reachable from --listen).
    #[arg(long, env = "ENSIGN_HOST_CONTROL_PORT", default_value_t = 5001)]
    pub control_port: u32,

    /// Port of the host's KMS proxy, which the enclave connects to.
    #[arg(long, env = "ENSIGN_HOST_KMS_PROXY_PORT", default_value_t = 8000)]
    pub kms_proxy_port: u32,

    /// AWS region (KMS endpoint, DynamoDB, what the enclave is told).
    #[arg(long, env = "ENSIGN_HOST_REGION", value_parser = parse_region)]
    pub region: AwsRegion,

    /// Where the KMS proxy connects, HOST:PORT [default: kms.<region>.amazonaws.com:443]
    /// (e.g. a VPC endpoint's address). Only the proxy's target: the enclave's KMS endpoint
    /// name is part of its image, and the enclave checks KMS's certificate for that name.
    #[arg(long, env = "ENSIGN_HOST_KMS_ENDPOINT", value_parser = parse_remote)]
    pub kms_endpoint: Option<AllowedRemote>,

    /// A KMS endpoint URL sent to the enclave in Init [default: none]. For test
    /// enclaves only: ensign in enclave mode refuses an Init that carries one
    /// (its endpoint is fixed by its image, `--enclave-kms-endpoint`).
    #[arg(long, env = "ENSIGN_HOST_KMS_ENDPOINT_URL", value_parser = parse_endpoint_url)]
    pub kms_endpoint_url: Option<EndpointUrl>,

    /// DynamoDB table of key records (partition key `pubkey`).
    #[arg(long, env = "ENSIGN_HOST_KEYS_TABLE")]
    pub keys_table: Option<String>,

    /// Directory of key record files (`*.json`, one record each).
    #[arg(long, env = "ENSIGN_HOST_KEYS_DIR")]
    pub keys_dir: Option<PathBuf>,

    /// DynamoDB endpoint URL override (VPC endpoint, local stand-in).
    #[arg(long, env = "ENSIGN_HOST_DYNAMODB_ENDPOINT")]
    pub dynamodb_endpoint: Option<String>,

    /// Items per DynamoDB Scan page (`Limit`) [default: DynamoDB's 1 MB pages].
    #[arg(long, env = "ENSIGN_HOST_DYNAMODB_PAGE_SIZE",
          value_parser = clap::value_parser!(i32).range(1..))]
    pub dynamodb_page_size: Option<i32>,

    /// PostgreSQL for the shared slashing-protection database, HOST:PORT;
    /// enables the database proxy.
    #[arg(long, env = "ENSIGN_HOST_DB_ENDPOINT", value_parser = parse_remote)]
    pub db_endpoint: Option<AllowedRemote>,

    /// Port of the host's PostgreSQL proxy, which the enclave connects to.
    #[arg(long, env = "ENSIGN_HOST_DB_PROXY_PORT", default_value_t = 5432)]
    pub db_proxy_port: u32,

    /// Secrets Manager secret holding the slashing database's credentials: `username` and
    /// `encrypted_password` (a KMS ciphertext only the enclave image can decrypt), as `ensign
    /// database provision` writes it; or, for development enclaves only, `username` and
    /// `password` as RDS/Aurora generate it. Read with the host's AWS credentials, sent to the
    /// enclave in Init, re-read at every poll and SIGHUP (a change is delivered).
    #[arg(long, env = "ENSIGN_HOST_DB_SECRET_ARN")]
    pub db_secret_arn: Option<String>,

    /// Secrets Manager endpoint URL override (VPC endpoint, local stand-in).
    #[arg(long, env = "ENSIGN_HOST_SECRETS_MANAGER_ENDPOINT")]
    pub secrets_manager_endpoint: Option<String>,

    /// The enclave image.
    #[arg(
        long,
        env = "ENSIGN_HOST_EIF",
        default_value = "/opt/ensign/ensign.eif"
    )]
    pub eif: PathBuf,

    /// vCPUs for the enclave.
    #[arg(long, env = "ENSIGN_HOST_ENCLAVE_CPUS", default_value_t = 2)]
    pub enclave_cpus: u32,

    /// Memory for the enclave, MiB.
    #[arg(long, env = "ENSIGN_HOST_ENCLAVE_MEMORY_MIB", default_value_t = 2048)]
    pub enclave_memory_mib: u64,

    /// Start the enclave in debug mode (console readable; attestation PCRs read as zeros,
    /// so a PCR0 key policy refuses it). `--enclave-debug-mode` alone means true.
    #[arg(long, env = "ENSIGN_HOST_ENCLAVE_DEBUG_MODE", action = ArgAction::Set,
          num_args = 0..=1, default_value = "false", default_missing_value = "true")]
    pub enclave_debug_mode: bool,

    /// `nitro-cli --enclave-name` (the host terminates a leftover enclave of this name at start).
    #[arg(long, env = "ENSIGN_HOST_ENCLAVE_NAME", default_value = "ensign")]
    pub enclave_name: String,

    /// The nitro-cli executable.
    #[arg(long, env = "ENSIGN_HOST_NITRO_CLI", default_value = "nitro-cli")]
    pub nitro_cli: PathBuf,

    /// Run this shell command as "the enclave" instead of nitro-cli (tests,
    /// off-enclave runs); it gets ENSIGN_ENCLAVE_CONTROL_ENDPOINT,
    /// ENSIGN_ENCLAVE_DATA_ENDPOINT, ENSIGN_HOST_KMS_PROXY, ENSIGN_HOST_DB_PROXY, ENSIGN_HOST_PID.
    #[arg(long, env = "ENSIGN_HOST_RUN_COMMAND")]
    pub run_command: Option<String>,

    /// Transport to the enclave when endpoints are not given one by one.
    #[arg(
        long,
        env = "ENSIGN_HOST_ENCLAVE_TRANSPORT",
        value_enum,
        default_value = "vsock"
    )]
    pub enclave_transport: EnclaveTransport,

    /// Host for `--enclave-transport tcp`.
    #[arg(
        long,
        env = "ENSIGN_HOST_ENCLAVE_TCP_HOST",
        default_value = "127.0.0.1"
    )]
    pub enclave_tcp_host: String,

    /// Directory for `--enclave-transport unix`.
    #[arg(long, env = "ENSIGN_HOST_ENCLAVE_SOCKET_DIR")]
    pub enclave_socket_dir: Option<PathBuf>,

    /// The enclave's data endpoint (`vsock:CID:PORT`, `tcp:HOST:PORT`, `unix:PATH`).
    #[arg(long, env = "ENSIGN_HOST_DATA_ENDPOINT", value_parser = parse_endpoint)]
    pub data_endpoint: Option<Endpoint>,

    /// The enclave's control endpoint.
    #[arg(long, env = "ENSIGN_HOST_CONTROL_ENDPOINT", value_parser = parse_endpoint)]
    pub control_endpoint: Option<Endpoint>,

    /// Where the KMS proxy listens.
    #[arg(long, env = "ENSIGN_HOST_KMS_PROXY_LISTEN", value_parser = parse_endpoint)]
    pub kms_proxy_listen: Option<Endpoint>,

    /// Where the PostgreSQL proxy listens.
    #[arg(long, env = "ENSIGN_HOST_DB_PROXY_LISTEN", value_parser = parse_endpoint)]
    pub db_proxy_listen: Option<Endpoint>,

    /// Where the AWS credentials delivered to the enclave come from: the
    /// instance role through IMDSv2, the AWS_* environment variables, or fixed
    /// dummy credentials (tests only).
    #[arg(
        long,
        env = "ENSIGN_HOST_CREDENTIALS",
        value_enum,
        default_value = "imds"
    )]
    pub credentials: CredentialsMode,

    /// IMDS endpoint override (tests) [default: the SDK's, http://169.254.169.254].
    #[arg(long, env = "ENSIGN_HOST_IMDS_ENDPOINT")]
    pub imds_endpoint: Option<String>,

    /// Refresh the enclave's credentials this long before they expire.
    #[arg(
        long,
        env = "ENSIGN_HOST_CREDENTIALS_REFRESH_MARGIN_SECS",
        default_value_t = 600
    )]
    pub credentials_refresh_margin_secs: u64,

    /// Seconds between Status polls and key reconciliations (SIGHUP: at once).
    #[arg(long, env = "ENSIGN_HOST_POLL_INTERVAL_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub poll_interval_secs: u64,

    /// How long a started enclave may take to answer on its control port.
    #[arg(long, env = "ENSIGN_HOST_ENCLAVE_BOOT_TIMEOUT_SECS", default_value_t = 120,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub enclave_boot_timeout_secs: u64,

    /// Connections piped at once per listener (data path and each proxy).
    #[arg(long, env = "ENSIGN_HOST_MAX_CONNECTIONS", default_value_t = 1024,
          value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub max_connections: u64,

    /// Log format (stderr). RUST_LOG filters (default `info`).
    #[arg(
        long,
        env = "ENSIGN_HOST_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
}

fn parse_listen(s: &str) -> Result<Endpoint, String> {
    let ep = if s.starts_with("tcp:") {
        s.parse::<Endpoint>()
    } else {
        format!("tcp:{s}").parse::<Endpoint>()
    }
    .map_err(|e| e.to_string())?;
    Ok(ep)
}

fn parse_endpoint(s: &str) -> Result<Endpoint, String> {
    s.parse::<Endpoint>().map_err(|e| e.to_string())
}

fn parse_remote(s: &str) -> Result<AllowedRemote, String> {
    s.parse::<AllowedRemote>()
        .map_err(|e| format!("{e} (expected HOST:PORT)"))
}

fn parse_region(s: &str) -> Result<AwsRegion, String> {
    AwsRegion::try_from(s.to_owned())
}

fn parse_endpoint_url(s: &str) -> Result<EndpointUrl, String> {
    EndpointUrl::try_from(s.to_owned())
}

/// The PostgreSQL proxy.
#[derive(Clone, Debug)]
pub struct DbProxyConfig {
    pub listen: Endpoint,
    pub remote: AllowedRemote,
}

/// Where the slashing database's credentials come from (`--db-secret-arn`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DbSecretConfig {
    pub arn: String,
    /// `--secrets-manager-endpoint`.
    pub endpoint_url: Option<String>,
}

/// A checked configuration: what [`super::run`] needs.
#[derive(Clone, Debug)]
pub struct HostConfig {
    /// TCP, for clients.
    pub listen: Endpoint,
    pub data_endpoint: Endpoint,
    pub control_endpoint: Endpoint,
    pub kms_proxy_listen: Endpoint,
    pub kms_remote: AllowedRemote,
    pub db: Option<DbProxyConfig>,
    pub db_secret: Option<DbSecretConfig>,
    pub region: AwsRegion,
    /// `InitRequest::kms_endpoint`.
    pub init_kms_endpoint: Option<EndpointUrl>,
    pub key_source: KeySourceConfig,
    pub launcher: LauncherConfig,
    pub credentials: CredentialsMode,
    pub imds_endpoint: Option<String>,
    pub credentials_refresh_margin: Duration,
    pub poll_interval: Duration,
    pub boot_timeout: Duration,
    pub max_connections: usize,
}

/// A command line that parses but does not make sense.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("--enclave-cid {0}: an enclave CID must be at least 4 (0 is auto-assign, 1-3 are reserved) and below {max}", max = VMADDR_CID_ANY)]
    EnclaveCid(u32),
    #[error("{what} {port}: a TCP port must be 1-65535")]
    TcpPort { what: &'static str, port: u32 },
    #[error("--enclave-transport unix needs --enclave-socket-dir")]
    SocketDirMissing,
    #[error("{a} and {b} are both {endpoint}: the data, control and proxy endpoints must all differ (the data path must never reach the control port)")]
    SameEndpoint {
        a: &'static str,
        b: &'static str,
        endpoint: Endpoint,
    },
    #[error("--listen must be a TCP address, got {0}")]
    ListenNotTcp(Endpoint),
    #[error("--imds-endpoint only applies to --credentials imds")]
    ImdsEndpointWithoutImds,
    #[error("--imds-endpoint `{0}` must be an http:// or https:// URL")]
    ImdsEndpoint(String),
    #[error("--dynamodb-endpoint `{0}` must be an http:// or https:// URL")]
    DynamoDbEndpoint(String),
    #[error("a key source is required: --keys-table or --keys-dir")]
    NoKeySource,
    #[error("{0} only applies with {1}")]
    OnlyWith(&'static str, &'static str),
    #[error("--keys-table must not be empty")]
    EmptyTable,
    #[error("the enclave image {0} does not exist (set --eif, or --run-command off-enclave)")]
    EifMissing(PathBuf),
    #[error("--enclave-cpus must be at least 1 and --enclave-memory-mib at least 64")]
    EnclaveSize,
    #[error("--db-secret-arn `{0}` is not a Secrets Manager secret ARN (arn:PARTITION:secretsmanager:REGION:ACCOUNT:secret:NAME)")]
    DbSecretArn(String),
    #[error("--secrets-manager-endpoint `{0}` must be an http:// or https:// URL")]
    SecretsManagerEndpoint(String),
}

fn tcp_port(what: &'static str, port: u32) -> Result<u16, ConfigError> {
    u16::try_from(port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or(ConfigError::TcpPort { what, port })
}

fn is_url(s: &str) -> bool {
    EndpointUrl::try_from(s.to_owned()).is_ok()
}

impl HostArgs {
    /// Check the combination and build the [`HostConfig`].
    pub fn into_config(self) -> Result<HostConfig, ConfigError> {
        let transport = self.enclave_transport;
        let (data, control, kms_listen, db_listen) = match transport {
            EnclaveTransport::Vsock => {
                // nitro-cli refuses these too; connecting to them cannot reach an enclave.
                if self.enclave_cid < 4 || self.enclave_cid == VMADDR_CID_ANY {
                    return Err(ConfigError::EnclaveCid(self.enclave_cid));
                }
                let at = |cid, port| Endpoint::Vsock { cid, port };
                (
                    at(self.enclave_cid, self.data_port),
                    at(self.enclave_cid, self.control_port),
                    at(VMADDR_CID_ANY, self.kms_proxy_port),
                    at(VMADDR_CID_ANY, self.db_proxy_port),
                )
            }
            EnclaveTransport::Tcp => {
                let at = |what, port| -> Result<Endpoint, ConfigError> {
                    Ok(Endpoint::Tcp {
                        host: self.enclave_tcp_host.clone(),
                        port: tcp_port(what, port)?,
                    })
                };
                (
                    at("--data-port", self.data_port)?,
                    at("--control-port", self.control_port)?,
                    at("--kms-proxy-port", self.kms_proxy_port)?,
                    at("--db-proxy-port", self.db_proxy_port)?,
                )
            }
            EnclaveTransport::Unix => {
                let dir = self
                    .enclave_socket_dir
                    .as_ref()
                    .ok_or(ConfigError::SocketDirMissing)?;
                let at = |name: &str| Endpoint::Unix(dir.join(name));
                (
                    at("data.sock"),
                    at("control.sock"),
                    at("kms-proxy.sock"),
                    at("db-proxy.sock"),
                )
            }
        };
        let data_endpoint = self.data_endpoint.unwrap_or(data);
        let control_endpoint = self.control_endpoint.unwrap_or(control);
        let kms_proxy_listen = self.kms_proxy_listen.unwrap_or(kms_listen);
        let db = self.db_endpoint.clone().map(|remote| DbProxyConfig {
            listen: self.db_proxy_listen.clone().unwrap_or(db_listen),
            remote,
        });
        if !matches!(self.listen, Endpoint::Tcp { .. }) {
            return Err(ConfigError::ListenNotTcp(self.listen));
        }

        // All distinct: above all, the data path must not lead to the
        // control port (the AWS sample's shared port 5000 let any network
        // peer speak the control protocol before init).
        let mut named = vec![
            ("--listen", self.listen.clone()),
            ("the data endpoint", data_endpoint.clone()),
            ("the control endpoint", control_endpoint.clone()),
            ("the KMS proxy listener", kms_proxy_listen.clone()),
        ];
        if let Some(db) = &db {
            named.push(("the database proxy listener", db.listen.clone()));
        }
        // Two TCP listeners on port 0 are not the same: each bind picks its own free port.
        let ephemeral = |e: &Endpoint| matches!(e, Endpoint::Tcp { port: 0, .. });
        for (i, (a, ea)) in named.iter().enumerate() {
            for (b, eb) in &named[i + 1..] {
                if ea == eb && !ephemeral(ea) {
                    return Err(ConfigError::SameEndpoint {
                        a,
                        b,
                        endpoint: ea.clone(),
                    });
                }
            }
        }
        if let (Endpoint::Vsock { port: d, .. }, Endpoint::Vsock { port: c, .. }) =
            (&data_endpoint, &control_endpoint)
        {
            if d == c {
                return Err(ConfigError::SameEndpoint {
                    a: "--data-port",
                    b: "--control-port",
                    endpoint: control_endpoint.clone(),
                });
            }
        }

        let kms_remote = self.kms_endpoint.clone().unwrap_or_else(|| {
            AllowedRemote::new(&format!("kms.{}.amazonaws.com", self.region.as_str()), 443)
        });
        // The enclave's endpoint is its image's (issue 15); `--kms-endpoint` moves only the
        // proxy's target.
        let init_kms_endpoint = self.kms_endpoint_url.clone();

        if self.keys_table.is_none() {
            if self.dynamodb_endpoint.is_some() {
                return Err(ConfigError::OnlyWith("--dynamodb-endpoint", "--keys-table"));
            }
            if self.dynamodb_page_size.is_some() {
                return Err(ConfigError::OnlyWith(
                    "--dynamodb-page-size",
                    "--keys-table",
                ));
            }
        }
        if self.db_endpoint.is_none() && self.db_proxy_listen.is_some() {
            return Err(ConfigError::OnlyWith("--db-proxy-listen", "--db-endpoint"));
        }
        let db_secret = match (self.db_secret_arn, self.secrets_manager_endpoint) {
            (None, Some(_)) => {
                return Err(ConfigError::OnlyWith(
                    "--secrets-manager-endpoint",
                    "--db-secret-arn",
                ))
            }
            (None, None) => None,
            (Some(arn), endpoint_url) => {
                if !is_secret_arn(&arn) {
                    return Err(ConfigError::DbSecretArn(arn));
                }
                if let Some(url) = &endpoint_url {
                    if !is_url(url) {
                        return Err(ConfigError::SecretsManagerEndpoint(url.clone()));
                    }
                }
                Some(DbSecretConfig { arn, endpoint_url })
            }
        };
        let key_source = match (self.keys_table, self.keys_dir) {
            (Some(table), _) => {
                if table.is_empty() {
                    return Err(ConfigError::EmptyTable);
                }
                if let Some(url) = &self.dynamodb_endpoint {
                    if !is_url(url) {
                        return Err(ConfigError::DynamoDbEndpoint(url.clone()));
                    }
                }
                KeySourceConfig::DynamoDb {
                    table,
                    endpoint_url: self.dynamodb_endpoint,
                    page_size: self.dynamodb_page_size,
                }
            }
            (None, Some(dir)) => KeySourceConfig::Dir(dir),
            // clap's required group prevents this on the command line.
            (None, None) => return Err(ConfigError::NoKeySource),
        };

        match (&self.imds_endpoint, self.credentials) {
            (Some(_), c) if c != CredentialsMode::Imds => {
                return Err(ConfigError::ImdsEndpointWithoutImds)
            }
            (Some(url), _) if !is_url(url) => return Err(ConfigError::ImdsEndpoint(url.clone())),
            _ => {}
        }

        let launcher = match self.run_command {
            Some(command) => LauncherConfig::Command { command },
            None => {
                if self.enclave_cpus == 0 || self.enclave_memory_mib < 64 {
                    return Err(ConfigError::EnclaveSize);
                }
                if !self.eif.is_file() {
                    return Err(ConfigError::EifMissing(self.eif));
                }
                let cid = match &control_endpoint {
                    Endpoint::Vsock { cid, .. } => *cid,
                    _ => self.enclave_cid,
                };
                LauncherConfig::Nitro(NitroConfig {
                    nitro_cli: self.nitro_cli,
                    eif: self.eif,
                    cpus: self.enclave_cpus,
                    memory_mib: self.enclave_memory_mib,
                    cid,
                    debug_mode: self.enclave_debug_mode,
                    name: self.enclave_name,
                })
            }
        };

        Ok(HostConfig {
            listen: self.listen,
            data_endpoint,
            control_endpoint,
            kms_proxy_listen,
            kms_remote,
            db,
            db_secret,
            region: self.region,
            init_kms_endpoint,
            key_source,
            launcher,
            credentials: self.credentials,
            imds_endpoint: self.imds_endpoint,
            credentials_refresh_margin: Duration::from_secs(self.credentials_refresh_margin_secs),
            poll_interval: Duration::from_secs(self.poll_interval_secs),
            boot_timeout: Duration::from_secs(self.enclave_boot_timeout_secs),
            max_connections: usize::try_from(self.max_connections).unwrap_or(65536),
        })
    }
}

/// `arn:PARTITION:secretsmanager:REGION:ACCOUNT:secret:NAME`, no white space.
fn is_secret_arn(s: &str) -> bool {
    let parts: Vec<&str> = s.splitn(7, ':').collect();
    s.len() <= 2048
        && !s.bytes().any(|b| b <= b' ')
        && parts.len() == 7
        && parts[0] == "arn"
        && parts[2] == "secretsmanager"
        && parts[5] == "secret"
        && !parts[6].is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Result<HostArgs, clap::Error> {
        let mut v = vec!["ensign-host", "--region", "eu-west-1"];
        v.extend_from_slice(extra);
        HostArgs::try_parse_from(v)
    }

    #[test]
    fn defaults_are_vsock_and_regional_kms() {
        let a = args(&["--keys-dir", "/k", "--run-command", "true"]).unwrap();
        let c = a.into_config().unwrap();
        assert_eq!(c.listen.to_string(), "tcp:0.0.0.0:8443");
        assert_eq!(c.data_endpoint.to_string(), "vsock:16:5000");
        assert_eq!(c.control_endpoint.to_string(), "vsock:16:5001");
        assert_eq!(c.kms_proxy_listen.to_string(), "vsock:any:8000");
        assert_eq!(c.kms_remote.to_string(), "kms.eu-west-1.amazonaws.com:443");
        assert!(c.init_kms_endpoint.is_none());
        assert!(c.db.is_none());
        assert_eq!(c.poll_interval, Duration::from_secs(30));
        assert_eq!(c.credentials, CredentialsMode::Imds);
    }

    #[test]
    fn only_kms_endpoint_url_sets_the_init_url() {
        let c = args(&[
            "--keys-dir",
            "/k",
            "--run-command",
            "true",
            "--kms-endpoint",
            "kms-fips.eu-west-1.amazonaws.com:443",
        ])
        .unwrap()
        .into_config()
        .unwrap();
        // The proxy's target moves; the enclave is told nothing (its image names its endpoint).
        assert!(c.init_kms_endpoint.is_none());
        assert_eq!(
            c.kms_remote.to_string(),
            "kms-fips.eu-west-1.amazonaws.com:443"
        );
        let c = args(&[
            "--keys-dir",
            "/k",
            "--run-command",
            "true",
            "--kms-endpoint",
            "127.0.0.1:4566",
            "--kms-endpoint-url",
            "http://kms.local:1",
        ])
        .unwrap()
        .into_config()
        .unwrap();
        assert_eq!(c.init_kms_endpoint.unwrap().as_str(), "http://kms.local:1");
        assert_eq!(c.kms_remote.to_string(), "127.0.0.1:4566");
    }

    #[test]
    fn key_source_is_required_and_exclusive() {
        let e = args(&["--run-command", "true"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        let e = args(&["--keys-dir", "/k", "--keys-table", "t"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[test]
    fn data_and_control_must_differ() {
        let e = args(&[
            "--keys-dir",
            "/k",
            "--run-command",
            "true",
            "--data-port",
            "5001",
        ])
        .unwrap()
        .into_config()
        .unwrap_err();
        assert!(matches!(e, ConfigError::SameEndpoint { .. }), "{e}");
        let e = args(&[
            "--keys-dir",
            "/k",
            "--run-command",
            "true",
            "--data-endpoint",
            "tcp:127.0.0.1:7",
            "--control-endpoint",
            "tcp:127.0.0.1:7",
        ])
        .unwrap()
        .into_config()
        .unwrap_err();
        assert!(
            e.to_string().contains("must never reach the control port"),
            "{e}"
        );
        // Listeners on TCP port 0 each get their own port when bound: not a clash.
        let c = args(&[
            "--keys-dir",
            "/k",
            "--run-command",
            "true",
            "--listen",
            "127.0.0.1:0",
            "--kms-proxy-listen",
            "tcp:127.0.0.1:0",
        ])
        .unwrap()
        .into_config();
        assert!(c.is_ok(), "{:?}", c.err());
    }

    #[test]
    fn transports_and_overrides() {
        let c = args(&[
            "--keys-dir",
            "/k",
            "--run-command",
            "true",
            "--enclave-transport",
            "unix",
            "--enclave-socket-dir",
            "/run/e",
            "--db-endpoint",
            "db.internal:5432",
            "--kms-proxy-listen",
            "tcp:127.0.0.1:0",
        ])
        .unwrap()
        .into_config()
        .unwrap();
        assert_eq!(c.data_endpoint.to_string(), "unix:/run/e/data.sock");
        assert_eq!(c.control_endpoint.to_string(), "unix:/run/e/control.sock");
        assert_eq!(c.kms_proxy_listen.to_string(), "tcp:127.0.0.1:0");
        let db = c.db.unwrap();
        assert_eq!(db.listen.to_string(), "unix:/run/e/db-proxy.sock");
        assert_eq!(db.remote.to_string(), "db.internal:5432");

        let c = args(&[
            "--keys-dir",
            "/k",
            "--run-command",
            "true",
            "--enclave-transport",
            "tcp",
        ])
        .unwrap()
        .into_config()
        .unwrap();
        assert_eq!(c.control_endpoint.to_string(), "tcp:127.0.0.1:5001");

        let e = args(&["--keys-dir", "/k", "--enclave-transport", "unix"])
            .unwrap()
            .into_config()
            .unwrap_err();
        assert_eq!(e, ConfigError::SocketDirMissing);
    }

    #[test]
    fn bad_values_are_refused() {
        let e = args(&["--keys-dir", "/k", "--data-endpoint", "udp:1.2.3.4:5"]).unwrap_err();
        assert!(
            e.to_string()
                .contains("must start with vsock:, tcp: or unix:"),
            "{e}"
        );
        let e =
            HostArgs::try_parse_from(["ensign-host", "--region", "EU WEST", "--keys-dir", "/k"])
                .unwrap_err();
        assert!(e.to_string().contains("region"), "{e}");
        let e = args(&[
            "--keys-dir",
            "/k",
            "--enclave-cid",
            "3",
            "--run-command",
            "x",
        ])
        .unwrap()
        .into_config()
        .unwrap_err();
        assert_eq!(e, ConfigError::EnclaveCid(3));
        let e = args(&["--keys-dir", "/k", "--eif", "/nonexistent/ensign.eif"])
            .unwrap()
            .into_config()
            .unwrap_err();
        assert!(matches!(e, ConfigError::EifMissing(_)), "{e}");
        let e = args(&["--keys-dir", "/k", "--dynamodb-page-size", "5"])
            .unwrap()
            .into_config()
            .unwrap_err();
        assert_eq!(
            e,
            ConfigError::OnlyWith("--dynamodb-page-size", "--keys-table")
        );
    }

    #[test]
    fn db_secret_options() {
        let arn = "arn:aws:secretsmanager:eu-west-1:111122223333:secret:ensign/slashing-db-AbCdEf";
        let base = ["--keys-dir", "/k", "--run-command", "true"];
        let c = args(&base).unwrap().into_config().unwrap();
        assert_eq!(c.db_secret, None);
        let mut v = base.to_vec();
        v.extend(["--db-secret-arn", arn]);
        let c = args(&v).unwrap().into_config().unwrap();
        assert_eq!(
            c.db_secret,
            Some(DbSecretConfig {
                arn: arn.into(),
                endpoint_url: None
            })
        );
        v.extend(["--secrets-manager-endpoint", "http://127.0.0.1:5000"]);
        let c = args(&v).unwrap().into_config().unwrap();
        assert_eq!(
            c.db_secret.unwrap().endpoint_url.as_deref(),
            Some("http://127.0.0.1:5000")
        );

        let mut v = base.to_vec();
        v.extend(["--secrets-manager-endpoint", "http://127.0.0.1:5000"]);
        assert_eq!(
            args(&v).unwrap().into_config().unwrap_err(),
            ConfigError::OnlyWith("--secrets-manager-endpoint", "--db-secret-arn")
        );
        for bad in [
            "ensign/slashing-db",
            "arn:aws:kms:eu-west-1:111122223333:key/1",
            "arn:aws:secretsmanager:eu-west-1:111122223333:secret:",
            "arn:aws:secretsmanager:eu-west-1:1 :secret:x",
        ] {
            let mut v = base.to_vec();
            v.extend(["--db-secret-arn", bad]);
            assert_eq!(
                args(&v).unwrap().into_config().unwrap_err(),
                ConfigError::DbSecretArn(bad.into())
            );
        }
        let mut v = base.to_vec();
        v.extend([
            "--db-secret-arn",
            arn,
            "--secrets-manager-endpoint",
            "ftp://x",
        ]);
        assert_eq!(
            args(&v).unwrap().into_config().unwrap_err(),
            ConfigError::SecretsManagerEndpoint("ftp://x".into())
        );
    }

    #[test]
    fn debug_mode_flag_forms() {
        for (flag, want) in [
            (None, false),
            (Some("--enclave-debug-mode"), true),
            (Some("--enclave-debug-mode=false"), false),
            (Some("--enclave-debug-mode=true"), true),
        ] {
            let mut v = vec!["--keys-dir", "/k"];
            v.extend(flag);
            assert_eq!(args(&v).unwrap().enclave_debug_mode, want, "{flag:?}");
        }
    }
}
