//! Configuration: the command line (`cli`) resolved once into the types the runtime takes.
//!
//! `cli` is a leaf (clap's shapes only) and this is the only module that reads it: every
//! cross-option check, file read and default that turns options into a working setup is here,
//! and its failures are [`ConfigError`]s (`StartError::Config`, exit 2) before anything starts. A one-shot
//! command's options (`keys encrypt`, `verify-attestation`, `database provision`) need no
//! resolving: they are re-exported as they are, as are the value types `cli` parses
//! (`Forward`, `AttestationMode`).

use std::path::PathBuf;
use std::sync::Arc;

use api_spec::network::Network;
use enclave_bridge::control::{AwsRegion, EndpointUrl};
use enclave_bridge::Endpoint;
use keystore::PasswordSource;
use slashing::StoreConfig;
use zeroize::Zeroizing;

pub use crate::cli::{
    AttestationMode, AwsSecretsOptions, AwsTarget, DatabaseProvisionArgs, Forward, KeysEncryptArgs,
    VerifyAttestationArgs, NO_TEST_ATTESTOR,
};
use crate::cli::{EnclaveOptions, Eth2Options, GlobalOptions, TlsOptions};
use crate::tls::{TlsError, TlsSettings};
use crate::{conn, tls, SQLITE_FILE};

/// Why the command line does not make a working setup. Each names the options (or the file) to
/// change; none holds a secret.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Network(#[from] api_spec::Error),
    /// Options that contradict each other, or one that needs another.
    #[error("{0}")]
    Options(&'static str),
    #[error("{0} must be positive")]
    NotPositive(&'static str),
    #[error("--aws-secrets-auth-mode must be SPECIFIED or ENVIRONMENT, not {0:?}")]
    AwsSecretsAuthMode(String),
    #[error("cannot read key cache secret {}: {source}", path.display())]
    ReadCacheSecret {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key cache secret {} is empty", .0.display())]
    EmptyCacheSecret(PathBuf),
    #[error("cannot create data path {}: {source}", path.display())]
    CreateDataPath {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A key source or a server certificate in enclave mode (its keys come from the host, its
    /// TLS key is made inside).
    #[error(
        "{0} cannot be used with --enclave-mode=true: in enclave mode keys arrive encrypted \
         from ensign-host and the TLS key is made inside the enclave"
    )]
    RefusedInEnclave(&'static str),
    #[error(transparent)]
    Kms(#[from] KmsPinError),
}

/// Why the KMS settings an enclave image pins (`--enclave-kms-*`) are not usable.
#[derive(Debug, thiserror::Error)]
pub enum KmsPinError {
    #[error("--enclave-kms-key-arn: `{0}` is not an ARN (arn:aws:kms:REGION:ACCOUNT:key/ID)")]
    NotAnArn(String),
    #[error("--enclave-kms-key-arn: `{arn}`: unknown partition `{partition}`")]
    UnknownPartition { arn: String, partition: String },
    #[error(
        "--enclave-kms-key-arn: `{0}` is not a KMS key ARN (arn:aws:kms:REGION:ACCOUNT:key/ID; \
         an alias can be re-pointed by whoever may update it, so the image pins the key itself)"
    )]
    NotAKeyArn(String),
    #[error(
        "--enclave-kms-region {given} differs from the region of --enclave-kms-key-arn \
         ({arn_region})"
    )]
    RegionMismatch { given: String, arn_region: String },
    #[error(
        "enclave mode needs --enclave-kms-key-arn (recommended) or --enclave-kms-region: the KMS \
         endpoint is fixed by the enclave image, never chosen by the parent instance"
    )]
    NoRegion,
    #[error("KMS region: {0}")]
    Region(String),
    #[error(
        "--enclave-kms-endpoint {0}: must be https:// (TLS to KMS ends inside the enclave; over \
         http:// the parent instance would read and answer KMS's traffic)"
    )]
    NotHttps(String),
    #[error("--enclave-kms-endpoint: {0}")]
    Endpoint(String),
    #[error("--enclave-kms-ca-file {}: {source}", path.display())]
    ReadCa {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--enclave-kms-ca-file {}: no PEM certificate in it", .0.display())]
    NoCaCertificate(PathBuf),
}

/// Validated configuration of the eth2 signer.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen_host: String,
    pub listen_port: u16,
    pub host_allowlist: Vec<String>,
    pub network: Network,
    pub keys: KeySources,
    /// `None` when slashing protection is disabled.
    pub slashing: Option<StoreConfig>,
    /// `None` when pruning is disabled.
    pub pruning: Option<Pruning>,
    /// `--data-path`.
    pub data_path: PathBuf,
    /// `host:port` of the metrics listener when `--metrics-enabled`.
    pub metrics: Option<String>,
    /// `--max-in-flight-signing`.
    pub max_in_flight_signing: usize,
    /// TLS on the signing API (`--tls-*`); `None` serves plain HTTP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Connection-level limits (`--http-max-connections`, timeouts).
    pub limits: conn::Limits,
    /// Enclave mode (`--enclave-mode=true`): see [`crate::enclave`]. The listen address and `tls`
    /// are then unused (the data endpoint and a TLS key made at start replace them).
    pub enclave: Option<EnclaveConfig>,
}

/// Periodic pruning of slashing-protection history (Web3Signer's pruning options).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pruning {
    pub epochs_to_keep: u64,
    pub slots_per_epoch: u64,
    pub interval: std::time::Duration,
    pub at_boot: bool,
}

impl Config {
    /// Resolves command-line options into a configuration.
    pub fn from_cli(global: &GlobalOptions, eth2: &Eth2Options) -> Result<Config, ConfigError> {
        let network = Network::from_arg(&eth2.network)?;
        let keystores = match &eth2.keystores_path {
            None => None,
            Some(dir) => {
                let passwords =
                    match (
                        &eth2.keystores_passwords_path,
                        &eth2.keystores_password_file,
                    ) {
                        (Some(d), None) => PasswordSource::Dir(d.clone()),
                        (None, Some(f)) => PasswordSource::File(f.clone()),
                        _ => return Err(ConfigError::Options(
                            "--keystores-path needs exactly one of --keystores-passwords-path or \
                             --keystores-password-file",
                        )),
                    };
                Some((dir.clone(), passwords))
            }
        };
        let limits = connection_limits(global)?;
        let enclave = if global.enclave.enclave_mode {
            Some(EnclaveConfig::from_cli(global, eth2)?)
        } else {
            None
        };
        // In enclave mode the server certificate is made at start (and its options refused).
        let tls = if enclave.is_some() {
            None
        } else {
            tls::server_config(&tls_settings(&global.tls))?
        };
        Ok(Config {
            enclave,
            tls,
            limits,
            listen_host: global.http_listen_host.clone(),
            listen_port: global.http_listen_port,
            host_allowlist: host_allowlist(&global.http_host_allowlist),
            keys: KeySources {
                key_config_dir: global.key_store_path.clone(),
                keystores,
                key_manager_dir: eth2.key_manager_api_enabled.then(|| global.data_path.join("keymanager")),
                aws_secrets: {
                    let a = &eth2.aws;
                    let mode = a.aws_secrets_auth_mode.to_ascii_uppercase();
                    if a.aws_secrets_enabled && mode != "SPECIFIED" && mode != "ENVIRONMENT" {
                        return Err(ConfigError::AwsSecretsAuthMode(a.aws_secrets_auth_mode.clone()));
                    }
                    a.aws_secrets_enabled.then(|| a.clone())
                },
                cache: match &eth2.key_cache_secret_file {
                    None => None,
                    Some(f) => {
                        let secret = std::fs::read(f).map_err(|source| ConfigError::ReadCacheSecret {
                            path: f.clone(),
                            source,
                        })?;
                        let trimmed = secret.trim_ascii_end().to_vec();
                        if trimmed.is_empty() {
                            return Err(ConfigError::EmptyCacheSecret(f.clone()));
                        }
                        Some((global.data_path.clone(), CacheSecret(zeroize::Zeroizing::new(trimmed))))
                    }
                },
            },
            data_path: global.data_path.clone(),
            max_in_flight_signing: global.max_in_flight_signing.max(1),
            metrics: global
                .metrics_enabled
                .then(|| format!("{}:{}", global.metrics_host, global.metrics_port)),
            slashing: if eth2.slashing_protection_enabled {
                Some(store_config(&global.data_path, eth2)?)
            } else {
                None
            },
            pruning: (eth2.slashing_protection_enabled && eth2.slashing_protection_pruning_enabled)
                .then(|| -> Result<Pruning, ConfigError> {
                    if eth2.slashing_protection_pruning_epochs_to_keep == 0 || eth2.slashing_protection_pruning_interval == 0 {
                        return Err(ConfigError::NotPositive(
                            "--slashing-protection-pruning-epochs-to-keep and --slashing-protection-pruning-interval",
                        ));
                    }
                    Ok(Pruning {
                        epochs_to_keep: eth2.slashing_protection_pruning_epochs_to_keep,
                        slots_per_epoch: eth2
                            .slashing_protection_pruning_slots_per_epoch
                            .unwrap_or(network.slots_per_epoch),
                        interval: std::time::Duration::from_secs(eth2.slashing_protection_pruning_interval * 3600),
                        at_boot: eth2.slashing_protection_pruning_at_boot_enabled,
                    })
                })
                .transpose()?,
            network,
        })
    }
}

/// `--http-max-connections` and the connection timeouts, checked (the metrics listener shares
/// the timeouts, under a cap of its own).
fn connection_limits(global: &GlobalOptions) -> Result<conn::Limits, ConfigError> {
    use std::time::Duration;
    for (value, flag) in [
        (global.http_max_connections as u64, "--http-max-connections"),
        (
            global.http_header_read_timeout_seconds,
            "--http-header-read-timeout-seconds",
        ),
        (
            global.http_request_body_timeout_seconds,
            "--http-request-body-timeout-seconds",
        ),
        (
            global.tls.tls_handshake_timeout_seconds,
            "--tls-handshake-timeout-seconds",
        ),
    ] {
        if value == 0 {
            return Err(ConfigError::NotPositive(flag));
        }
    }
    Ok(conn::Limits {
        max_connections: global.http_max_connections,
        header_read_timeout: Duration::from_secs(global.http_header_read_timeout_seconds),
        idle_timeout: (global.idle_connection_timeout_seconds > 0)
            .then(|| Duration::from_secs(global.idle_connection_timeout_seconds)),
        tls_handshake_timeout: Duration::from_secs(global.tls.tls_handshake_timeout_seconds),
        body_timeout: Duration::from_secs(global.http_request_body_timeout_seconds),
        body_min_rate: global.http_request_body_min_bytes_per_second,
    })
}

/// The slashing store: PostgreSQL when a URL is given, else SQLite under `--data-path`.
pub fn store_config(
    data_path: &std::path::Path,
    eth2: &Eth2Options,
) -> Result<StoreConfig, ConfigError> {
    match &eth2.slashing_protection_db_url {
        Some(url) => Ok(StoreConfig::Postgres {
            url: url.clone(),
            username: eth2.slashing_protection_db_username.clone(),
            password: eth2
                .slashing_protection_db_password
                .as_ref()
                .map(|p| p.0.to_string()),
            timeout: std::time::Duration::from_secs(eth2.slashing_protection_db_timeout_seconds),
            schema: eth2.slashing_protection_db_schema.clone(),
        }),
        None => {
            std::fs::create_dir_all(data_path).map_err(|source| ConfigError::CreateDataPath {
                path: data_path.to_path_buf(),
                source,
            })?;
            Ok(StoreConfig::Sqlite {
                path: data_path.join(SQLITE_FILE),
                init: eth2.init_slashing_protection,
            })
        }
    }
}

/// Where keys come from.
#[derive(Debug, Clone, Default)]
pub struct KeySources {
    /// `--key-store-path`: Web3Signer key configuration files.
    pub key_config_dir: Option<PathBuf>,
    /// `--keystores-path` with its password source.
    pub keystores: Option<(PathBuf, PasswordSource)>,
    /// Keys imported through the key manager API (`<data-path>/keymanager`): keystores with
    /// `<stem>.txt` passwords beside them. These are the only keys the API may delete.
    pub key_manager_dir: Option<PathBuf>,
    /// `--aws-secrets-enabled` and its options.
    pub aws_secrets: Option<AwsSecretsOptions>,
    /// Restart cache: (directory for the per-source cache files, operator secret).
    pub cache: Option<(PathBuf, CacheSecret)>,
}

/// The operator secret of the restart cache; `Debug` prints `***`.
#[derive(Clone)]
pub struct CacheSecret(pub Zeroizing<Vec<u8>>);

impl std::fmt::Debug for CacheSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// The `--tls-*` files and switches (the handshake timeout goes to [`conn::Limits`]).
fn tls_settings(t: &TlsOptions) -> TlsSettings {
    TlsSettings {
        tls_keystore_file: t.tls_keystore_file.clone(),
        tls_keystore_password_file: t.tls_keystore_password_file.clone(),
        tls_cert_file: t.tls_cert_file.clone(),
        tls_key_file: t.tls_key_file.clone(),
        tls_allow_any_client: t.tls_allow_any_client,
        tls_known_clients_file: t.tls_known_clients_file.clone(),
        tls_allow_ca_clients: t.tls_allow_ca_clients,
        tls_ca_clients_file: t.tls_ca_clients_file.clone(),
    }
}

/// Enclave mode's configuration (from the `--enclave-*` options).
#[derive(Clone, Debug)]
pub struct EnclaveConfig {
    pub control: Endpoint,
    pub data: Endpoint,
    pub forwards: Vec<Forward>,
    pub attestation: AttestationMode,
    /// Subject alternative names of the generated certificate.
    pub tls_names: Vec<String>,
    /// `--tls-*` client-certificate options (the server certificate options are refused).
    pub tls: TlsSettings,
    /// Where and how KMS is reached: fixed by the image's command line, never by `Init`.
    pub kms: KmsPin,
    /// `--enclave-allow-voluntary-exits`.
    pub allow_voluntary_exits: bool,
    /// `--enclave-development-mode`: clients without certificates and an unauthenticated
    /// database are allowed (with warnings).
    pub development: bool,
}

/// The KMS settings the image fixes (issue 15): the parent instance relays KMS's bytes but
/// chooses neither the endpoint, nor the roots its certificate must chain to, nor the key.
#[derive(Clone, Debug)]
pub struct KmsPin {
    /// The region of the endpoint; `Init` must name the same.
    pub region: AwsRegion,
    /// `https://…` only.
    pub endpoint: EndpointUrl,
    /// `--enclave-kms-ca-file`'s PEM (`None`: the image's CA bundle).
    pub roots_pem: Option<Vec<u8>>,
    /// `--enclave-kms-key-arn`: the only key records may be decrypted with.
    pub key_arn: Option<String>,
}

/// The region of a KMS key ARN (`arn:PARTITION:kms:REGION:ACCOUNT:key/ID`) and its partition's
/// DNS suffix.
fn kms_arn_region(arn: &str) -> Result<(String, &'static str), KmsPinError> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let [arn_, partition, service, region, account, resource] = parts[..] else {
        return Err(KmsPinError::NotAnArn(arn.to_string()));
    };
    let suffix = match partition {
        "aws" | "aws-us-gov" => "amazonaws.com",
        "aws-cn" => "amazonaws.com.cn",
        _ => {
            return Err(KmsPinError::UnknownPartition {
                arn: arn.to_string(),
                partition: partition.to_string(),
            })
        }
    };
    let ok = arn_ == "arn"
        && service == "kms"
        && !region.is_empty()
        && account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit())
        && resource
            .strip_prefix("key/")
            .is_some_and(|id| !id.is_empty());
    if !ok {
        return Err(KmsPinError::NotAKeyArn(arn.to_string()));
    }
    Ok((region.to_string(), suffix))
}

impl KmsPin {
    fn from_cli(e: &EnclaveOptions) -> Result<KmsPin, KmsPinError> {
        let from_arn = e
            .enclave_kms_key_arn
            .as_deref()
            .map(kms_arn_region)
            .transpose()?;
        let (region, suffix) = match (&e.enclave_kms_region, from_arn) {
            (Some(r), Some((arn_region, _))) if *r != arn_region => {
                return Err(KmsPinError::RegionMismatch {
                    given: r.clone(),
                    arn_region,
                })
            }
            (_, Some((r, suffix))) => (r, suffix),
            (Some(r), None) => (r.clone(), "amazonaws.com"),
            (None, None) => return Err(KmsPinError::NoRegion),
        };
        let region = AwsRegion::try_from(region).map_err(KmsPinError::Region)?;
        let endpoint = e
            .enclave_kms_endpoint
            .clone()
            .unwrap_or_else(|| format!("https://kms.{}.{suffix}", region.as_str()));
        if !endpoint.starts_with("https://") {
            return Err(KmsPinError::NotHttps(endpoint));
        }
        let endpoint = EndpointUrl::try_from(endpoint).map_err(KmsPinError::Endpoint)?;
        let roots_pem = match &e.enclave_kms_ca_file {
            None => None,
            Some(path) => {
                let pem = std::fs::read(path).map_err(|source| KmsPinError::ReadCa {
                    path: path.clone(),
                    source,
                })?;
                if !pem
                    .windows(b"-----BEGIN CERTIFICATE-----".len())
                    .any(|w| w == b"-----BEGIN CERTIFICATE-----")
                {
                    return Err(KmsPinError::NoCaCertificate(path.clone()));
                }
                Some(pem)
            }
        };
        Ok(KmsPin {
            region,
            endpoint,
            roots_pem,
            key_arn: e.enclave_kms_key_arn.clone(),
        })
    }
}

impl EnclaveConfig {
    /// Checks the command line for enclave mode: key sources and a server certificate are
    /// refused (keys come from the host, the TLS key is made here).
    pub fn from_cli(
        global: &GlobalOptions,
        eth2: &Eth2Options,
    ) -> Result<EnclaveConfig, ConfigError> {
        let e = &global.enclave;
        let refused = [
            (global.key_store_path.is_some(), "--key-store-path"),
            (eth2.keystores_path.is_some(), "--keystores-path"),
            (eth2.aws.aws_secrets_enabled, "--aws-secrets-enabled"),
            (eth2.key_manager_api_enabled, "--key-manager-api-enabled"),
            (
                eth2.key_cache_secret_file.is_some(),
                "--key-cache-secret-file",
            ),
            (
                global.tls.tls_keystore_file.is_some(),
                "--tls-keystore-file",
            ),
            (global.tls.tls_cert_file.is_some(), "--tls-cert-file"),
            (global.tls.tls_key_file.is_some(), "--tls-key-file"),
        ];
        for (given, flag) in refused {
            if given {
                return Err(ConfigError::RefusedInEnclave(flag));
            }
        }
        // (Two TCP port-0 endpoints are two different ports once bound.)
        let port_zero = matches!(&e.enclave_data_endpoint, Endpoint::Tcp { port: 0, .. });
        if e.enclave_control_endpoint == e.enclave_data_endpoint && !port_zero {
            return Err(ConfigError::Options(
                "--enclave-control-endpoint and --enclave-data-endpoint must differ: the data \
                 path must never reach the control protocol",
            ));
        }
        // Client authentication (issue 15): the parent instance can always connect to the data
        // port, so an enclave that accepts any client signs for whoever runs on the host.
        let t = &global.tls;
        let authenticates = t.tls_known_clients_file.is_some() || t.tls_allow_ca_clients;
        if !authenticates && !e.enclave_development_mode {
            return Err(ConfigError::Options(
                "enclave mode requires client certificates: give --tls-known-clients-file or \
                 --tls-allow-ca-clients=true with --tls-ca-clients-file (files in the enclave \
                 image, so its measurement covers them); the parent instance can reach the \
                 data port, and would otherwise be a client like any other \
                 (--enclave-development-mode=true with --tls-allow-any-client=true lifts this \
                 for development)",
            ));
        }
        if t.tls_allow_any_client && !e.enclave_development_mode {
            return Err(ConfigError::Options(
                "--tls-allow-any-client=true is refused in enclave mode outside \
                 --enclave-development-mode=true: the parent instance could sign",
            ));
        }
        let kms = KmsPin::from_cli(e)?;
        if e.enclave_tls_subject_alt_names
            .iter()
            .all(|n| n.trim().is_empty())
        {
            return Err(ConfigError::Options(
                "--enclave-tls-subject-alt-names must name at least one host",
            ));
        }
        Ok(EnclaveConfig {
            control: e.enclave_control_endpoint.clone(),
            data: e.enclave_data_endpoint.clone(),
            forwards: e.enclave_forwards.clone(),
            attestation: e.enclave_attestation.clone(),
            tls_names: e
                .enclave_tls_subject_alt_names
                .iter()
                .map(|n| n.trim().to_string())
                .filter(|n| !n.is_empty())
                .collect(),
            tls: tls_settings(&global.tls),
            kms,
            allow_voluntary_exits: e.enclave_allow_voluntary_exits,
            development: e.enclave_development_mode,
        })
    }
}

/// `--http-host-allowlist` as Web3Signer reads it: `all` is `*` (any host), `none` lists nothing
/// (every request refused), case-insensitive; other names are kept, trimmed.
fn host_allowlist(values: &[String]) -> Vec<String> {
    values
        .iter()
        .map(|h| h.trim())
        .filter(|h| !h.eq_ignore_ascii_case("none"))
        .map(|h| {
            if h.eq_ignore_ascii_case("all") {
                "*"
            } else {
                h
            }
            .to_string()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn host_allowlist_all_and_none_as_web3signer() {
        let list = |v: &[&str]| {
            super::host_allowlist(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        };
        assert_eq!(list(&["all"]), ["*"]);
        assert_eq!(list(&["ALL"]), ["*"]);
        assert!(list(&["none"]).is_empty());
        assert_eq!(
            list(&[" localhost", "signer.example "]),
            ["localhost", "signer.example"]
        );
    }

    use super::*;

    #[test]
    fn kms_key_arns_give_their_region_and_partition() {
        let ok = |arn: &str| kms_arn_region(arn).unwrap();
        assert_eq!(
            ok("arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"),
            ("eu-west-1".to_string(), "amazonaws.com")
        );
        assert_eq!(
            ok("arn:aws-cn:kms:cn-north-1:111122223333:key/x"),
            ("cn-north-1".to_string(), "amazonaws.com.cn")
        );
        for bad in [
            "alias/validators",
            "arn:aws:kms:eu-west-1:111122223333:alias/validators",
            "arn:aws:s3:eu-west-1:111122223333:key/x",
            "arn:aws:kms::111122223333:key/x",
            "arn:aws:kms:eu-west-1:1111:key/x",
            "arn:aws:kms:eu-west-1:111122223333:key/",
            "arn:other:kms:eu-west-1:111122223333:key/x",
        ] {
            assert!(kms_arn_region(bad).is_err(), "{bad}");
        }
        assert!(matches!(
            kms_arn_region("alias/validators"),
            Err(KmsPinError::NotAnArn(_))
        ));
        assert!(matches!(
            kms_arn_region("arn:other:kms:eu-west-1:111122223333:key/x"),
            Err(KmsPinError::UnknownPartition { partition, .. }) if partition == "other"
        ));
    }

    /// `ensign` with `args` (global options, then `eth2`'s), resolved.
    fn from_args(args: &[&str]) -> Result<Config, ConfigError> {
        use clap::Parser;
        let cli = crate::cli::Cli::try_parse_from(args).unwrap();
        let crate::cli::Mode::Eth2(eth2) = &cli.mode else {
            panic!("eth2 mode")
        };
        Config::from_cli(&cli.global, eth2)
    }

    #[test]
    fn each_configuration_error_says_what_kind_it_is() {
        let refused = from_args(&[
            "ensign",
            "--enclave-mode=true",
            "--key-store-path=/k",
            "eth2",
        ]);
        assert!(
            matches!(
                refused,
                Err(ConfigError::RefusedInEnclave("--key-store-path"))
            ),
            "{refused:?}"
        );
        let zero = from_args(&["ensign", "--http-max-connections=0", "eth2"]);
        assert!(
            matches!(
                zero,
                Err(ConfigError::NotPositive("--http-max-connections"))
            ),
            "{zero:?}"
        );
        let dir = std::env::temp_dir().join(format!("ensign-config-{}", std::process::id()));
        let missing = dir.join("missing");
        let unreadable = from_args(&[
            "ensign",
            "eth2",
            "--slashing-protection-enabled=false",
            "--key-cache-secret-file",
            missing.to_str().unwrap(),
        ]);
        assert!(
            matches!(&unreadable, Err(ConfigError::ReadCacheSecret { path, .. }) if *path == missing),
            "{unreadable:?}"
        );
        let no_kms = from_args(&[
            "ensign",
            "--enclave-mode=true",
            "--tls-allow-ca-clients=true",
            "eth2",
        ]);
        assert!(
            matches!(no_kms, Err(ConfigError::Kms(KmsPinError::NoRegion))),
            "{no_kms:?}"
        );
    }
}
