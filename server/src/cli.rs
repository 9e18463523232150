//! Command line: Web3Signer's shape, `ensign [global options] eth2 [eth2 options] [command]`,
//! with the same option names so an operator can swap binaries. Every option also reads an
//! environment variable: `ENSIGN_<OPTION>` for global options and `ENSIGN_ETH2_<OPTION>` for
//! eth2 options (Web3Signer's `WEB3SIGNER_` / `WEB3SIGNER_ETH2_` convention).

use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand};
use zeroize::Zeroizing;

/// A secret command-line value (password, secret access key): zeroized on drop and printed as
/// `***` by `Debug`, so no configuration dump can leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretArg(pub Zeroizing<String>);

impl std::str::FromStr for SecretArg {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(SecretArg(Zeroizing::new(s.to_string())))
    }
}

impl std::fmt::Debug for SecretArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// ensign: a remote signer for Ethereum validators, compatible with Web3Signer's eth2 API.
#[derive(Debug, Parser)]
#[command(name = "ensign", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalOptions,
    #[command(subcommand)]
    pub mode: Mode,
}

/// Options shared by every mode.
#[derive(Debug, Args)]
pub struct GlobalOptions {
    /// Address the HTTP API listens on.
    #[arg(
        long,
        env = "ENSIGN_HTTP_LISTEN_HOST",
        default_value = "127.0.0.1",
        global = true
    )]
    pub http_listen_host: String,

    /// Port the HTTP API listens on; 0 picks a free port (the chosen port is logged).
    #[arg(
        long,
        env = "ENSIGN_HTTP_LISTEN_PORT",
        default_value_t = 9000,
        global = true
    )]
    pub http_listen_port: u16,

    /// Comma-separated host names accepted in the Host header; `*` accepts any.
    #[arg(
        long,
        env = "ENSIGN_HTTP_HOST_ALLOWLIST",
        default_value = "localhost,127.0.0.1",
        value_delimiter = ',',
        global = true
    )]
    pub http_host_allowlist: Vec<String>,

    /// Directory of Web3Signer key configuration files (`*.yaml`: `file-raw`, `file-keystore`).
    #[arg(
        long,
        alias = "key-config-path",
        env = "ENSIGN_KEY_STORE_PATH",
        global = true
    )]
    pub key_store_path: Option<PathBuf>,

    /// Directory for ensign's own data (the default SQLite slashing-protection database).
    #[arg(
        long,
        env = "ENSIGN_DATA_PATH",
        default_value = "./ensign-data",
        global = true
    )]
    pub data_path: PathBuf,

    /// Serve Prometheus metrics on their own listener.
    #[arg(
        long,
        env = "ENSIGN_METRICS_ENABLED",
        default_value_t = false,
        action = ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true",
        require_equals = true,
        value_name = "BOOL",
        global = true
    )]
    pub metrics_enabled: bool,

    /// Address of the metrics listener.
    #[arg(
        long,
        env = "ENSIGN_METRICS_HOST",
        default_value = "127.0.0.1",
        global = true
    )]
    pub metrics_host: String,

    /// Port of the metrics listener (0 picks a free one; the chosen port is logged).
    #[arg(
        long,
        env = "ENSIGN_METRICS_PORT",
        default_value_t = 9001,
        global = true
    )]
    pub metrics_port: u16,

    /// Log level: OFF, ERROR, WARN, INFO, DEBUG, TRACE (or a tracing filter directive).
    #[arg(long, env = "ENSIGN_LOGGING", default_value = "INFO", global = true)]
    pub logging: String,

    /// Log format: `text` (human-readable) or `json` (one JSON object per line, for collectors).
    #[arg(long, env = "ENSIGN_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"], global = true)]
    pub log_format: String,

    /// Most sign requests processed at once; more get 503 at once instead of queueing without
    /// bound (each waiting request holds memory and a connection).
    #[arg(
        long,
        env = "ENSIGN_MAX_IN_FLIGHT_SIGNING",
        default_value_t = 4096,
        global = true
    )]
    pub max_in_flight_signing: usize,
}

/// The signing mode. Only `eth2` exists (Web3Signer also has eth1, which ensign does not do).
#[derive(Debug, Subcommand)]
pub enum Mode {
    /// Sign Ethereum consensus-layer messages (the Web3Signer eth2 API).
    Eth2(Eth2Options),
}

/// Options of the eth2 mode.
#[derive(Debug, Args)]
pub struct Eth2Options {
    /// Network: mainnet, hoodi, sepolia, holesky, gnosis, or the path of a consensus config YAML.
    #[arg(long, env = "ENSIGN_ETH2_NETWORK", default_value = "mainnet")]
    pub network: String,

    /// Directory of EIP-2335 keystores (`*.json`).
    #[arg(long, env = "ENSIGN_ETH2_KEYSTORES_PATH")]
    pub keystores_path: Option<PathBuf>,

    /// Directory of keystore passwords: `<keystore file stem>.txt` for each keystore.
    #[arg(
        long,
        env = "ENSIGN_ETH2_KEYSTORES_PASSWORDS_PATH",
        conflicts_with = "keystores_password_file",
        requires = "keystores_path"
    )]
    pub keystores_passwords_path: Option<PathBuf>,

    /// One file holding the password of every keystore in --keystores-path.
    #[arg(
        long,
        env = "ENSIGN_ETH2_KEYSTORES_PASSWORD_FILE",
        requires = "keystores_path"
    )]
    pub keystores_password_file: Option<PathBuf>,

    /// Refuse slashable blocks and attestations (EIP-3076 rules). Only switch this off when
    /// another layer protects the keys.
    #[arg(
        long,
        env = "ENSIGN_ETH2_SLASHING_PROTECTION_ENABLED",
        default_value_t = true,
        action = ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true",
        require_equals = true,
        value_name = "BOOL"
    )]
    pub slashing_protection_enabled: bool,

    /// Slashing-protection database: `postgresql://…` or `jdbc:postgresql://…` (shared by several
    /// instances). Without it, an embedded SQLite database under --data-path is used.
    #[arg(long, env = "ENSIGN_ETH2_SLASHING_PROTECTION_DB_URL")]
    pub slashing_protection_db_url: Option<String>,

    /// User name for the slashing-protection database.
    #[arg(long, env = "ENSIGN_ETH2_SLASHING_PROTECTION_DB_USERNAME")]
    pub slashing_protection_db_username: Option<String>,

    /// Password for the slashing-protection database.
    #[arg(
        long,
        env = "ENSIGN_ETH2_SLASHING_PROTECTION_DB_PASSWORD",
        hide_env_values = true
    )]
    pub slashing_protection_db_password: Option<SecretArg>,

    /// Periodically delete slashing-protection history older than
    /// --slashing-protection-pruning-epochs-to-keep, raising each validator's low watermark
    /// first so that pruning never opens a gap.
    #[arg(
        long,
        env = "ENSIGN_ETH2_SLASHING_PROTECTION_PRUNING_ENABLED",
        default_value_t = true,
        action = ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true",
        require_equals = true,
        value_name = "BOOL"
    )]
    pub slashing_protection_pruning_enabled: bool,

    /// Epochs of history kept per validator when pruning.
    #[arg(
        long,
        env = "ENSIGN_ETH2_SLASHING_PROTECTION_PRUNING_EPOCHS_TO_KEEP",
        default_value_t = 250
    )]
    pub slashing_protection_pruning_epochs_to_keep: u64,

    /// Slots per epoch used by pruning to turn epochs into slots (default: the network's).
    #[arg(long, env = "ENSIGN_ETH2_SLASHING_PROTECTION_PRUNING_SLOTS_PER_EPOCH")]
    pub slashing_protection_pruning_slots_per_epoch: Option<u64>,

    /// Hours between pruning runs.
    #[arg(
        long,
        env = "ENSIGN_ETH2_SLASHING_PROTECTION_PRUNING_INTERVAL",
        default_value_t = 12
    )]
    pub slashing_protection_pruning_interval: u64,

    /// Also prune once at start-up.
    #[arg(
        long,
        env = "ENSIGN_ETH2_SLASHING_PROTECTION_PRUNING_AT_BOOT_ENABLED",
        default_value_t = false,
        action = ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true",
        require_equals = true,
        value_name = "BOOL"
    )]
    pub slashing_protection_pruning_at_boot_enabled: bool,

    /// Serve the standard key manager API (`/eth/v1/keystores`), protected by a bearer token
    /// kept in `<data-path>/api-token.txt` (created on first start).
    #[arg(
        long,
        env = "ENSIGN_ETH2_KEY_MANAGER_API_ENABLED",
        default_value_t = false,
        action = ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true",
        require_equals = true,
        value_name = "BOOL"
    )]
    pub key_manager_api_enabled: bool,

    /// Enables the restart cache of decrypted keys under --data-path, sealed with a key derived
    /// from the secret in this file (ensign's own option: restarts skip the keystore KDFs).
    #[arg(long, env = "ENSIGN_ETH2_KEY_CACHE_SECRET_FILE")]
    pub key_cache_secret_file: Option<PathBuf>,

    #[command(flatten)]
    pub aws: AwsSecretsOptions,

    #[command(subcommand)]
    pub command: Option<Eth2Command>,
}

/// Web3Signer's bulk loading of keys from AWS Secrets Manager: every secret (filtered by name
/// prefix and tags) holds one or more hex BLS secret keys, one per line.
#[derive(Debug, Args, Clone)]
pub struct AwsSecretsOptions {
    /// Load keys from AWS Secrets Manager.
    #[arg(
        long,
        env = "ENSIGN_ETH2_AWS_SECRETS_ENABLED",
        default_value_t = false,
        action = ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true",
        require_equals = true,
        value_name = "BOOL"
    )]
    pub aws_secrets_enabled: bool,

    /// SPECIFIED (the access key below) or ENVIRONMENT (the standard AWS credential chain).
    #[arg(
        long,
        env = "ENSIGN_ETH2_AWS_SECRETS_AUTH_MODE",
        default_value = "SPECIFIED"
    )]
    pub aws_secrets_auth_mode: String,

    /// Access key id (SPECIFIED mode).
    #[arg(long, env = "ENSIGN_ETH2_AWS_SECRETS_ACCESS_KEY_ID")]
    pub aws_secrets_access_key_id: Option<String>,

    /// Secret access key (SPECIFIED mode).
    #[arg(
        long,
        env = "ENSIGN_ETH2_AWS_SECRETS_SECRET_ACCESS_KEY",
        hide_env_values = true
    )]
    pub aws_secrets_secret_access_key: Option<SecretArg>,

    /// AWS region.
    #[arg(long, env = "ENSIGN_ETH2_AWS_SECRETS_REGION")]
    pub aws_secrets_region: Option<String>,

    /// Only secrets whose names start with one of these prefixes (comma-separated).
    #[arg(
        long,
        env = "ENSIGN_ETH2_AWS_SECRETS_PREFIXES_FILTER",
        value_delimiter = ','
    )]
    pub aws_secrets_prefixes_filter: Vec<String>,

    /// Only secrets with one of these tag keys (comma-separated).
    #[arg(
        long,
        env = "ENSIGN_ETH2_AWS_SECRETS_TAG_NAMES_FILTER",
        value_delimiter = ','
    )]
    pub aws_secrets_tag_names_filter: Vec<String>,

    /// Only secrets with one of these tag values (comma-separated).
    #[arg(
        long,
        env = "ENSIGN_ETH2_AWS_SECRETS_TAG_VALUES_FILTER",
        value_delimiter = ','
    )]
    pub aws_secrets_tag_values_filter: Vec<String>,

    /// Endpoint of the AWS APIs (for a local stand-in such as moto or LocalStack).
    #[arg(long, env = "ENSIGN_ETH2_AWS_ENDPOINT_OVERRIDE")]
    pub aws_endpoint_override: Option<String>,
}

/// Commands of the eth2 mode besides serving.
#[derive(Debug, Subcommand)]
pub enum Eth2Command {
    /// Export the slashing-protection database as an EIP-3076 interchange file.
    Export {
        /// File to write.
        #[arg(long)]
        to: PathBuf,
    },
    /// Import an EIP-3076 interchange file into the slashing-protection database.
    Import {
        /// File to read.
        #[arg(long)]
        from: PathBuf,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn boolean_flags_never_swallow_the_subcommand() {
        // `--metrics-enabled eth2` must mean "enabled, then the eth2 subcommand".
        let cli = Cli::try_parse_from([
            "ensign",
            "--metrics-enabled",
            "eth2",
            "--key-manager-api-enabled",
            "export",
            "--to",
            "x",
        ])
        .unwrap();
        assert!(cli.global.metrics_enabled);
        let Mode::Eth2(eth2) = cli.mode;
        assert!(eth2.key_manager_api_enabled);
        assert!(matches!(eth2.command, Some(Eth2Command::Export { .. })));
    }

    #[test]
    fn web3signer_style_arguments_parse() {
        let cli = Cli::try_parse_from([
            "ensign",
            "--key-store-path",
            "/keys",
            "--http-listen-port",
            "0",
            "eth2",
            "--network",
            "hoodi",
            "--slashing-protection-enabled=false",
        ])
        .unwrap();
        assert_eq!(cli.global.http_listen_port, 0);
        let Mode::Eth2(eth2) = cli.mode;
        assert!(!eth2.slashing_protection_enabled);
        assert_eq!(eth2.network, "hoodi");
    }
}

#[cfg(test)]
mod secret_tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_secrets() {
        let cli = Cli::try_parse_from([
            "ensign",
            "eth2",
            "--slashing-protection-db-password",
            "hunter2-db",
            "--aws-secrets-secret-access-key",
            "hunter2-aws",
        ])
        .unwrap();
        let dump = format!("{cli:?}");
        assert!(!dump.contains("hunter2"), "{dump}");
    }
}
