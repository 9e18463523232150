//! Command line: Web3Signer's shape, `ensign [global options] eth2 [eth2 options] [command]`,
//! with the same option names so an operator can swap binaries. Every option also reads an
//! environment variable: `ENSIGN_<OPTION>` for global options and `ENSIGN_ETH2_<OPTION>` for
//! eth2 options (Web3Signer's `WEB3SIGNER_` / `WEB3SIGNER_ETH2_` convention).

use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;

use clap::{Arg, ArgAction, Args, Parser, Subcommand};
use enclave_bridge::Endpoint;
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

/// What makes an option of [`GlobalOptions`] global.
fn global_option(arg: Arg) -> Arg {
    arg.global(true)
}

/// Web3Signer's boolean options: `--x`, `--x=true` or `--x=false` with a default, never
/// `--x false` (so that a flag before the subcommand cannot take its name as the value). A
/// field gets it as `#[arg(web3signer_bool = DEFAULT)]`, which clap's derive turns into this
/// method call on the field's `Arg`.
trait Web3SignerBool {
    fn web3signer_bool(self, default: bool) -> Self;
}

impl Web3SignerBool for Arg {
    fn web3signer_bool(self, default: bool) -> Self {
        self.default_value(if default { "true" } else { "false" })
            .action(ArgAction::Set)
            .num_args(0..=1)
            .default_missing_value("true")
            .require_equals(true)
            .value_name("BOOL")
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

/// Options shared by every mode. All of them, with the TLS and enclave groups flattened in, are
/// global (`global_option`): accepted before or after the subcommand, as Web3Signer's.
#[derive(Debug, Args)]
#[command(mut_args = global_option)]
pub struct GlobalOptions {
    /// Web3Signer's YAML configuration file: `option-name: value` for global options,
    /// `eth2.option-name: value` for eth2 options, lists as YAML lists or comma-separated
    /// strings. The command line and the environment take precedence over it; an unknown key
    /// is an error naming its line.
    #[arg(long, env = "ENSIGN_CONFIG_FILE")]
    pub config_file: Option<PathBuf>,

    /// Address the HTTP API listens on.
    #[arg(long, env = "ENSIGN_HTTP_LISTEN_HOST", default_value = "127.0.0.1")]
    pub http_listen_host: String,

    /// Port the HTTP API listens on; 0 picks a free port (the chosen port is logged).
    #[arg(long, env = "ENSIGN_HTTP_LISTEN_PORT", default_value_t = 9000)]
    pub http_listen_port: u16,

    /// Comma-separated host names accepted in the Host header; `*` or `all` accepts any, `none`
    /// accepts none (Web3Signer's values).
    #[arg(
        long,
        env = "ENSIGN_HTTP_HOST_ALLOWLIST",
        default_value = "localhost,127.0.0.1",
        value_delimiter = ','
    )]
    pub http_host_allowlist: Vec<String>,

    /// Directory of Web3Signer key configuration files (`*.yaml`: `file-raw`, `file-keystore`).
    #[arg(long, alias = "key-config-path", env = "ENSIGN_KEY_STORE_PATH")]
    pub key_store_path: Option<PathBuf>,

    /// Directory for ensign's own data (the default SQLite slashing-protection database).
    #[arg(long, env = "ENSIGN_DATA_PATH", default_value = "./ensign-data")]
    pub data_path: PathBuf,

    /// Serve Prometheus metrics on their own listener.
    #[arg(long, env = "ENSIGN_METRICS_ENABLED", web3signer_bool = false)]
    pub metrics_enabled: bool,

    /// Address of the metrics listener.
    #[arg(long, env = "ENSIGN_METRICS_HOST", default_value = "127.0.0.1")]
    pub metrics_host: String,

    /// Port of the metrics listener (0 picks a free one; the chosen port is logged).
    #[arg(long, env = "ENSIGN_METRICS_PORT", default_value_t = 9001)]
    pub metrics_port: u16,

    /// Log level: OFF, ERROR, WARN, INFO, DEBUG, TRACE (or a tracing filter directive).
    #[arg(short = 'l', long, env = "ENSIGN_LOGGING", default_value = "INFO")]
    pub logging: String,

    /// Log format: `text` (human-readable) or `json` (one JSON object per line, for collectors).
    #[arg(long, env = "ENSIGN_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,

    /// Most sign requests processed at once; more get 503 at once instead of queueing without
    /// bound (each waiting request holds memory and a connection).
    #[arg(long, env = "ENSIGN_MAX_IN_FLIGHT_SIGNING", default_value_t = 4096)]
    pub max_in_flight_signing: usize,

    /// Most client connections open at once. Past it, new connections wait in the kernel's
    /// listen backlog until one closes, so a flood of idle sockets cannot exhaust the process's
    /// file descriptors (the soft open-file limit is raised to fit when the hard limit allows).
    #[arg(long, env = "ENSIGN_HTTP_MAX_CONNECTIONS", default_value_t = 1024)]
    pub http_max_connections: usize,

    /// Seconds a client has to send a request's complete headers, counted from the moment the
    /// connection is ready (after the TLS handshake) or from the first byte of a later request
    /// on a kept-alive connection; a slower client is disconnected.
    #[arg(
        long,
        env = "ENSIGN_HTTP_HEADER_READ_TIMEOUT_SECONDS",
        default_value_t = 10
    )]
    pub http_header_read_timeout_seconds: u64,

    /// Seconds a client has to send a request's body, counted from the end of its headers and
    /// extended by every byte received (see --http-request-body-min-bytes-per-second); past it
    /// the client gets 408 and the connection is closed. A sign request is a few KiB.
    #[arg(
        long,
        env = "ENSIGN_HTTP_REQUEST_BODY_TIMEOUT_SECONDS",
        default_value_t = 5
    )]
    pub http_request_body_timeout_seconds: u64,

    /// The slowest a request body may arrive, in bytes per second on average: each byte
    /// received extends the body's deadline by 1/rate seconds, so a large key manager import
    /// on a slow link completes while a client that stalls or trickles does not. 0: the whole
    /// body within --http-request-body-timeout-seconds.
    #[arg(
        long,
        env = "ENSIGN_HTTP_REQUEST_BODY_MIN_BYTES_PER_SECOND",
        default_value_t = 16384
    )]
    pub http_request_body_min_bytes_per_second: u64,

    /// Seconds a kept-alive connection may stay idle between requests before it is closed
    /// (Web3Signer's option and default); 0 never closes idle connections.
    #[arg(
        long,
        env = "ENSIGN_IDLE_CONNECTION_TIMEOUT_SECONDS",
        default_value_t = 30
    )]
    pub idle_connection_timeout_seconds: u64,

    #[command(flatten)]
    pub tls: TlsOptions,

    #[command(flatten)]
    pub enclave: EnclaveOptions,
}

/// Enclave mode: ensign as the enclave half of an AWS Nitro Enclave deployment, next to
/// `ensign-host` on the parent instance (see the `enclave` module and the README).
#[derive(Debug, Args, Clone)]
pub struct EnclaveOptions {
    /// Run inside an enclave: no keys from disk (they arrive as KMS ciphertexts on the control
    /// endpoint and are decrypted for this attested image only), the API served over TLS with a
    /// key made at start, on the data endpoint; until initialised only /upcheck, /healthcheck
    /// and /api/v1/attestation answer.
    #[arg(long, env = "ENSIGN_ENCLAVE_MODE", web3signer_bool = false)]
    pub enclave_mode: bool,

    /// Where the control protocol listens (ensign-host's Init, AddKeys, ...): `vsock:any:PORT`,
    /// `tcp:HOST:PORT` or `unix:PATH`.
    #[arg(
        long,
        env = "ENSIGN_ENCLAVE_CONTROL_ENDPOINT",
        default_value = "vsock:any:5001"
    )]
    pub enclave_control_endpoint: enclave_bridge::Endpoint,

    /// Where the signing API (TLS) listens; ensign-host pipes validator clients here.
    #[arg(
        long,
        env = "ENSIGN_ENCLAVE_DATA_ENDPOINT",
        default_value = "vsock:any:5000"
    )]
    pub enclave_data_endpoint: enclave_bridge::Endpoint,

    /// A loopback forwarder LOCAL=REMOTE (repeatable), e.g. `tcp:127.0.0.1:443=vsock:3:8000`
    /// for KMS or `tcp:127.0.0.1:5432=vsock:3:5432` for PostgreSQL: an enclave has no network,
    /// so its clients connect to LOCAL and each connection is piped to REMOTE (the host's
    /// proxies). With forwards, the KMS client resolves every host name to 127.0.0.1.
    #[arg(
        long = "enclave-forward",
        env = "ENSIGN_ENCLAVE_FORWARD",
        value_delimiter = ',',
        value_name = "LOCAL=REMOTE"
    )]
    pub enclave_forwards: Vec<Forward>,

    /// Who signs attestation documents: `nsm` (the Nitro Secure Module) or
    /// `insecure-test:<dir>` (a throw-away test PKI kept in <dir>, its root written to
    /// <dir>/test-root.pem; off-enclave tests and demos only: INSECURE; only in the
    /// `ensign-insecure-test` build, cargo feature `insecure-test-attestation`).
    #[arg(long, env = "ENSIGN_ENCLAVE_ATTESTATION", default_value = "nsm")]
    pub enclave_attestation: AttestationMode,

    /// Names and addresses in the enclave's TLS certificate (comma-separated), e.g. the load
    /// balancer's DNS name that validator clients use.
    #[arg(
        long,
        env = "ENSIGN_ENCLAVE_TLS_SUBJECT_ALT_NAMES",
        default_value = "localhost,127.0.0.1",
        value_delimiter = ','
    )]
    pub enclave_tls_subject_alt_names: Vec<String>,

    /// The KMS key that decrypts the key records (ARN). Part of the image's command line, so
    /// fixed by the measured image: every `Decrypt` names it, a record naming another key is
    /// refused, and the KMS endpoint's region is the ARN's. Enclave mode needs it or
    /// --enclave-kms-region.
    #[arg(long, env = "ENSIGN_ENCLAVE_KMS_KEY_ARN")]
    pub enclave_kms_key_arn: Option<String>,

    /// The region of the KMS endpoint (`https://kms.<region>.amazonaws.com`), if
    /// --enclave-kms-key-arn does not give it. The host's `Init` must name the same region.
    #[arg(long, env = "ENSIGN_ENCLAVE_KMS_REGION")]
    pub enclave_kms_region: Option<String>,

    /// Another https:// KMS endpoint (e.g. a VPC endpoint's DNS name), fixed by the image. The
    /// enclave speaks TLS to it through the host's proxy and checks its certificate against
    /// the image's roots; `Init` cannot choose an endpoint.
    #[arg(long, env = "ENSIGN_ENCLAVE_KMS_ENDPOINT")]
    pub enclave_kms_endpoint: Option<String>,

    /// PEM roots that KMS's certificate must chain to instead of the image's CA bundle
    /// (/etc/ssl/certs): a private CA in front of KMS, or a test KMS.
    #[arg(long, env = "ENSIGN_ENCLAVE_KMS_CA_FILE")]
    pub enclave_kms_ca_file: Option<PathBuf>,

    /// Sign voluntary exits in enclave mode. Off by default: an exit is irreversible, and
    /// the parent instance can always reach the data port.
    #[arg(
        long,
        env = "ENSIGN_ENCLAVE_ALLOW_VOLUNTARY_EXITS",
        web3signer_bool = false
    )]
    pub enclave_allow_voluntary_exits: bool,

    /// DEVELOPMENT ONLY: let an enclave serve clients without certificates
    /// (--tls-allow-any-client=true) and open a slashing database it cannot authenticate.
    /// Without it, enclave mode refuses both.
    #[arg(long, env = "ENSIGN_ENCLAVE_DEVELOPMENT_MODE", web3signer_bool = false)]
    pub enclave_development_mode: bool,
}

/// TLS on the signing API (Web3Signer's options, plus PEM files and a client CA file). The
/// metrics listener stays plain HTTP, as in Web3Signer.
#[derive(Debug, Args, Clone)]
pub struct TlsOptions {
    /// PKCS#12 keystore holding the server's private key and certificate chain; turns TLS on.
    #[arg(long, env = "ENSIGN_TLS_KEYSTORE_FILE")]
    pub tls_keystore_file: Option<PathBuf>,

    /// File whose first line is the password of --tls-keystore-file.
    #[arg(long, env = "ENSIGN_TLS_KEYSTORE_PASSWORD_FILE")]
    pub tls_keystore_password_file: Option<PathBuf>,

    /// PEM certificate chain of the server, leaf first (ensign's alternative to the keystore,
    /// with --tls-key-file); turns TLS on.
    #[arg(long, env = "ENSIGN_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,

    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of --tls-cert-file.
    #[arg(long, env = "ENSIGN_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,

    /// Accept clients without a certificate. Without it, TLS requires a client certificate
    /// accepted by --tls-known-clients-file or --tls-allow-ca-clients.
    #[arg(long, env = "ENSIGN_TLS_ALLOW_ANY_CLIENT", web3signer_bool = false)]
    pub tls_allow_any_client: bool,

    /// Accepted client certificates: lines `<name> <SHA-256 fingerprint of the certificate's
    /// DER, colon-separated hex>`; `#` comments and blank lines are ignored.
    #[arg(long, env = "ENSIGN_TLS_KNOWN_CLIENTS_FILE")]
    pub tls_known_clients_file: Option<PathBuf>,

    /// Accept client certificates issued by a CA in --tls-ca-clients-file.
    #[arg(long, env = "ENSIGN_TLS_ALLOW_CA_CLIENTS", web3signer_bool = false)]
    pub tls_allow_ca_clients: bool,

    /// PEM bundle of the CAs trusted for client certificates with --tls-allow-ca-clients
    /// (ensign's option: Web3Signer uses the JVM's trust store).
    #[arg(long, env = "ENSIGN_TLS_CA_CLIENTS_FILE")]
    pub tls_ca_clients_file: Option<PathBuf>,

    /// Seconds a client has to complete the TLS handshake.
    #[arg(
        long,
        env = "ENSIGN_TLS_HANDSHAKE_TIMEOUT_SECONDS",
        default_value_t = 10
    )]
    pub tls_handshake_timeout_seconds: u64,
}

/// A loopback forwarder `LOCAL=REMOTE` (`--enclave-forward`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forward {
    pub local: Endpoint,
    pub remote: Endpoint,
}

impl FromStr for Forward {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (local, remote) = s.split_once('=').ok_or_else(|| {
            format!("`{s}`: expected LOCAL=REMOTE, e.g. tcp:127.0.0.1:443=vsock:3:8000")
        })?;
        let local: Endpoint = local.parse().map_err(|e| format!("{e}"))?;
        let remote: Endpoint = remote.parse().map_err(|e| format!("{e}"))?;
        // Inside an enclave only loopback exists; off-enclave, a forwarder on another address
        // would open the host's proxies to the network.
        match &local {
            Endpoint::Tcp { host, .. } => {
                let loopback = host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
                if !loopback {
                    return Err(format!(
                        "`{s}`: the local side must be a loopback address (127.0.0.1, [::1]) or a unix: path"
                    ));
                }
            }
            Endpoint::Unix(_) => {}
            Endpoint::Vsock { .. } => {
                return Err(format!(
                    "`{s}`: the local side must be tcp:127.0.0.1:PORT or unix:PATH"
                ))
            }
        }
        Ok(Forward { local, remote })
    }
}

/// Who signs attestation documents (`--enclave-attestation`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttestationMode {
    /// The Nitro Secure Module (`/dev/nsm`): production.
    Nsm,
    /// A throw-away test PKI kept in this directory (`insecure-test:<dir>`): PCR0 is the
    /// SHA-384 of the running executable. Off-enclave tests and demos only.
    InsecureTest(PathBuf),
    /// No attestation at all and plain KMS `Decrypt` (the plaintext travels in KMS's answer):
    /// for tests against KMS stand-ins that ignore `Recipient` (moto). Deliberately has no
    /// command-line form: it can only be set by code that builds a `server::Config` itself.
    UnattestedPlainDecryptForTests,
}

impl FromStr for AttestationMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "nsm" {
            return Ok(AttestationMode::Nsm);
        }
        if let Some(dir) = s.strip_prefix("insecure-test:") {
            if dir.is_empty() {
                return Err("insecure-test:<dir> needs a directory".into());
            }
            return if cfg!(feature = "insecure-test-attestation") {
                Ok(AttestationMode::InsecureTest(PathBuf::from(dir)))
            } else {
                Err(NO_TEST_ATTESTOR.into())
            };
        }
        Err(format!("`{s}`: expected `nsm` or `insecure-test:<dir>`"))
    }
}

/// Why a build without cargo feature `insecure-test-attestation` (every default build, the
/// enclave image's among them) refuses `insecure-test:<dir>`, and where the tests' build is.
pub const NO_TEST_ATTESTOR: &str = "this build of ensign has no test attestor: production builds \
    leave out `insecure-test:<dir>` (attestation documents signed by a throw-away test PKI, which \
    prove nothing); for tests and demos only, build `ensign-insecure-test` with `cargo build \
    --release -p server --features insecure-test-attestation --bin ensign-insecure-test`";

/// The signing mode. Only `eth2` exists (Web3Signer also has eth1, which ensign does not do).
// Parsed once per process: the size of the largest variant costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Mode {
    /// Sign Ethereum consensus-layer messages (the Web3Signer eth2 API).
    Eth2(Eth2Options),
    /// Check that an enclave-mode ensign runs the expected image and that its TLS key is the
    /// one the enclave made: fetch /api/v1/attestation, verify the document, compare PCR0, the
    /// nonce, and the TLS certificate's public key with the document's user_data.
    VerifyAttestation(VerifyAttestationArgs),
    /// Encrypted key records for enclave mode.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// The PostgreSQL slashing-protection database.
    Database {
        #[command(subcommand)]
        command: DatabaseCommand,
    },
}

/// `ensign database …`.
#[derive(Debug, Subcommand)]
pub enum DatabaseCommand {
    /// As the database's administrator: migrate the schema, create (or reset) the signer's
    /// least-privilege role with a fresh random password, and write that password encrypted with
    /// KMS — for an enclave image, which alone can decrypt it. Nobody sees the password; running
    /// it again rotates it.
    Provision(DatabaseProvisionArgs),
}

/// `ensign database provision`.
#[derive(Debug, Args, Clone)]
#[command(group(clap::ArgGroup::new("destination").required(true).args(["out", "secret_id"])))]
pub struct DatabaseProvisionArgs {
    /// The administrator's connection (`postgresql://ADMIN@HOST:5432/DB?sslmode=verify-full&…`).
    #[arg(long, value_name = "URL")]
    pub admin_db_url: String,

    /// File holding the administrator's password (one trailing newline is not part of it).
    #[arg(long, value_name = "FILE")]
    pub admin_db_password_file: Option<PathBuf>,

    /// The schema to migrate and grant on (created if missing).
    #[arg(long, default_value = "ensign", value_parser = parse_pg_identifier)]
    pub schema: String,

    /// The signer's role (created if missing; its password is replaced either way).
    #[arg(long, default_value = "ensign_signer", value_parser = parse_pg_identifier)]
    pub role: String,

    /// The KMS key (ARN) that encrypts the password: the enclave image's key
    /// (`--enclave-kms-key-arn`), whose policy lets only the attested image decrypt.
    #[arg(long)]
    pub kms_key_id: String,

    #[command(flatten)]
    pub aws: AwsTarget,

    /// Write the credentials document (JSON) to this file.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,

    /// Store the credentials document as the new value of this Secrets Manager secret
    /// (ensign-host `--db-secret-arn`).
    #[arg(long, value_name = "ARN")]
    pub secret_id: Option<String>,
}

/// A schema or role name ([`slashing::check_pg_identifier`]).
fn parse_pg_identifier(s: &str) -> Result<String, slashing::Error> {
    slashing::check_pg_identifier("the name", s).map(|()| s.to_string())
}

/// `ensign verify-attestation`.
#[derive(Debug, Args, Clone)]
pub struct VerifyAttestationArgs {
    /// The signer, `https://HOST:PORT` (its self-signed certificate is accepted for this one
    /// request and then checked against the attestation).
    #[arg(long)]
    pub url: String,

    /// The PCR0 the enclave image must have (96 hex digits: `nitro-cli describe-eif`'s
    /// `Measurements.PCR0`).
    #[arg(long, value_parser = parse_pcr)]
    pub expected_pcr0: [u8; 48],

    /// PEM root certificate the document must chain to [default: the AWS Nitro Enclaves root G1].
    #[arg(long)]
    pub root_cert: Option<PathBuf>,

    /// Hex nonce (at most 64 bytes) the document must carry [default: 32 random bytes].
    #[arg(long)]
    pub nonce: Option<String>,

    /// Seconds for connecting and for the answer.
    #[arg(long, default_value_t = 10)]
    pub timeout_seconds: u64,

    /// DEVELOPMENT ONLY: accept an enclave started in debug mode (PCR0 all zeros). Its
    /// measurements prove nothing and the parent instance can read its console; without this
    /// flag such a document is refused, whatever `--expected-pcr0` says.
    #[arg(long)]
    pub allow_debug_enclave: bool,

    /// PEM client certificate (chain, leaf first) to present: an enclave requires a client
    /// certificate on every connection (its --tls-known-clients-file or client CA).
    #[arg(long, requires = "tls_client_key_file")]
    pub tls_client_cert_file: Option<PathBuf>,

    /// PEM private key of --tls-client-cert-file.
    #[arg(long, requires = "tls_client_cert_file")]
    pub tls_client_key_file: Option<PathBuf>,
}

/// 96 hex digits → a SHA-384 PCR value.
fn parse_pcr(s: &str) -> Result<[u8; 48], String> {
    let digits = s.strip_prefix("0x").unwrap_or(s);
    let mut out = [0u8; 48];
    hex::decode_to_slice(digits, &mut out)
        .map_err(|_| "expected 96 hex digits (a SHA-384 PCR value)".to_string())?;
    Ok(out)
}

/// `ensign keys ...`.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// KMS-encrypt an EIP-2335 keystore and its password into a key record for ensign-host
    /// (`--keys-dir` file or `--keys-table` item).
    #[command(alias = "upload")]
    Encrypt(KeysEncryptArgs),
}

/// Where the one-shot AWS commands (`keys encrypt`, `database provision`) send their calls;
/// credentials come from the environment.
#[derive(Debug, Args, Clone)]
pub struct AwsTarget {
    /// AWS region [default: the environment's, e.g. AWS_REGION].
    #[arg(long)]
    pub region: Option<String>,

    /// Endpoint URL for the AWS services the command calls (KMS, DynamoDB, Secrets Manager): a
    /// VPC endpoint or a local stand-in.
    #[arg(long)]
    pub endpoint_url: Option<String>,
}

/// `ensign keys encrypt`.
#[derive(Debug, Args, Clone)]
#[command(group(clap::ArgGroup::new("destination").required(true).args(["out_dir", "dynamodb_table"])))]
pub struct KeysEncryptArgs {
    /// The KMS key (id, ARN or alias) to encrypt with; its key policy decides who may decrypt.
    #[arg(long)]
    pub kms_key_id: String,

    #[command(flatten)]
    pub aws: AwsTarget,

    /// The EIP-2335 keystore (JSON) to encrypt.
    #[arg(long)]
    pub keystore: PathBuf,

    /// File holding the keystore's password (one trailing newline is not part of it).
    #[arg(long)]
    pub password_file: PathBuf,

    /// Write the record as `<DIR>/<pubkey>.json` (ensign-host `--keys-dir`).
    #[arg(long)]
    pub out_dir: Option<PathBuf>,

    /// Put the record into this DynamoDB table (ensign-host `--keys-table`).
    #[arg(long, alias = "table")]
    pub dynamodb_table: Option<String>,
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
        web3signer_bool = true
    )]
    pub slashing_protection_enabled: bool,

    /// Start a new slashing-protection history (SQLite) although this data directory already
    /// held one: its database is missing, empty, replaced or lost its write-ahead log. Without
    /// it such a start fails (exit 3). Use it once, then import your latest export before
    /// signing (as Lighthouse's `--init-slashing-protection`).
    #[arg(
        long,
        env = "ENSIGN_ETH2_INIT_SLASHING_PROTECTION",
        web3signer_bool = false
    )]
    pub init_slashing_protection: bool,

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

    /// Seconds ensign waits for the PostgreSQL slashing-protection database before a request
    /// fails with 500 (no signature) and the connection is replaced: a signing decision must be
    /// done in this time as a whole (waiting for a pooled connection, connecting, the
    /// transaction). Import, export and pruning allow each of their statements at least 60 s.
    /// 1 to 3600.
    #[arg(
        long,
        env = "ENSIGN_ETH2_SLASHING_PROTECTION_DB_TIMEOUT_SECONDS",
        default_value_t = slashing::DEFAULT_POSTGRES_TIMEOUT.as_secs(),
        value_parser = clap::value_parser!(u64).range(1..=3600),
        value_name = "SECONDS"
    )]
    pub slashing_protection_db_timeout_seconds: u64,

    /// The PostgreSQL schema holding the slashing-protection tables; every statement names it,
    /// whatever the session's search_path says [default: the session's current schema,
    /// normally `public`]. `ensign database provision` makes one for a least-privilege role.
    #[arg(
        long,
        env = "ENSIGN_ETH2_SLASHING_PROTECTION_DB_SCHEMA",
        value_name = "NAME",
        value_parser = parse_pg_identifier
    )]
    pub slashing_protection_db_schema: Option<String>,

    /// Periodically delete slashing-protection history older than
    /// --slashing-protection-pruning-epochs-to-keep, raising each validator's low watermark
    /// first so that pruning never opens a gap.
    #[arg(
        long,
        env = "ENSIGN_ETH2_SLASHING_PROTECTION_PRUNING_ENABLED",
        web3signer_bool = true
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
        web3signer_bool = false
    )]
    pub slashing_protection_pruning_at_boot_enabled: bool,

    /// Serve the standard key manager API (`/eth/v1/keystores`), protected by a bearer token
    /// kept in `<data-path>/api-token.txt` (created on first start).
    #[arg(
        long,
        alias = "enable-key-manager-api",
        env = "ENSIGN_ETH2_KEY_MANAGER_API_ENABLED",
        web3signer_bool = false
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
    #[arg(long, env = "ENSIGN_ETH2_AWS_SECRETS_ENABLED", web3signer_bool = false)]
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
        #[arg(long, env = "ENSIGN_ETH2_EXPORT_TO")]
        to: PathBuf,
    },
    /// Import an EIP-3076 interchange file into the slashing-protection database.
    Import {
        /// File to read.
        #[arg(long, env = "ENSIGN_ETH2_IMPORT_FROM")]
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
        let Mode::Eth2(eth2) = cli.mode else {
            panic!("eth2 mode")
        };
        assert!(eth2.key_manager_api_enabled);
        assert!(matches!(eth2.command, Some(Eth2Command::Export { .. })));
    }

    #[test]
    fn tls_and_connection_options_parse() {
        let cli = Cli::try_parse_from([
            "ensign",
            "--tls-keystore-file",
            "/tls/server.p12",
            "--tls-keystore-password-file",
            "/tls/pass",
            "--tls-allow-ca-clients",
            "--tls-allow-any-client",
            "eth2",
            "--idle-connection-timeout-seconds",
            "5",
            "--http-max-connections=64",
            "--http-request-body-timeout-seconds=2",
            "--http-request-body-min-bytes-per-second",
            "0",
        ])
        .unwrap();
        let tls = &cli.global.tls;
        assert_eq!(
            tls.tls_keystore_file.as_deref(),
            Some(std::path::Path::new("/tls/server.p12"))
        );
        assert!(tls.tls_allow_ca_clients && tls.tls_allow_any_client);
        assert_eq!(tls.tls_handshake_timeout_seconds, 10);
        assert_eq!(cli.global.idle_connection_timeout_seconds, 5);
        assert_eq!(cli.global.http_max_connections, 64);
        assert_eq!(cli.global.http_header_read_timeout_seconds, 10);
        assert_eq!(cli.global.http_request_body_timeout_seconds, 2);
        assert_eq!(cli.global.http_request_body_min_bytes_per_second, 0);
        let defaults = Cli::try_parse_from(["ensign", "eth2"]).unwrap();
        assert_eq!(defaults.global.idle_connection_timeout_seconds, 30);
        assert_eq!(defaults.global.http_request_body_timeout_seconds, 5);
        assert_eq!(
            defaults.global.http_request_body_min_bytes_per_second,
            16384
        );
        assert!(!defaults.global.tls.tls_allow_any_client);
        assert!(defaults.global.tls.tls_keystore_file.is_none());
    }

    #[test]
    fn slashing_db_timeout_is_positive_seconds() {
        let eth2 = |args: &[&str]| {
            let all = ["ensign", "eth2"].iter().chain(args).copied();
            Cli::try_parse_from(all).map(|cli| match cli.mode {
                Mode::Eth2(eth2) => eth2.slashing_protection_db_timeout_seconds,
                _ => panic!("eth2 mode"),
            })
        };
        assert_eq!(eth2(&[]).unwrap(), 5);
        let two = eth2(&["--slashing-protection-db-timeout-seconds=2"]);
        assert_eq!(two.unwrap(), 2);
        for bad in ["0", "3601", "-1", "1.5"] {
            let arg = format!("--slashing-protection-db-timeout-seconds={bad}");
            assert!(eth2(&[&arg]).is_err(), "{bad}");
        }
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
        let Mode::Eth2(eth2) = cli.mode else {
            panic!("eth2 mode")
        };
        assert!(!eth2.slashing_protection_enabled);
        assert_eq!(eth2.network, "hoodi");
    }
}

#[cfg(test)]
mod enclave_cli_tests {
    use super::*;
    use AttestationMode;

    #[test]
    fn enclave_options_parse() {
        let cli = Cli::try_parse_from([
            "ensign",
            "--enclave-mode=true",
            "--enclave-forward",
            "tcp:127.0.0.1:443=vsock:3:8000",
            "--enclave-forward",
            "tcp:127.0.0.1:5432=vsock:3:5432",
            "eth2",
        ])
        .unwrap();
        let e = &cli.global.enclave;
        assert!(e.enclave_mode);
        assert_eq!(e.enclave_control_endpoint.to_string(), "vsock:any:5001");
        assert_eq!(e.enclave_data_endpoint.to_string(), "vsock:any:5000");
        assert_eq!(e.enclave_forwards.len(), 2);
        assert_eq!(e.enclave_forwards[1].remote.to_string(), "vsock:3:5432");
        assert_eq!(e.enclave_attestation, AttestationMode::Nsm);
        for bad in [
            "tcp:0.0.0.0:443=vsock:3:8000",
            "vsock:3:1=tcp:127.0.0.1:1",
            "tcp:127.0.0.1:443",
        ] {
            let r = Cli::try_parse_from(["ensign", "--enclave-forward", bad, "eth2"]);
            assert!(r.is_err(), "{bad}");
        }
        for bad in ["insecure", "insecure-test:", "tpm"] {
            let r = Cli::try_parse_from(["ensign", "--enclave-attestation", bad, "eth2"]);
            assert!(r.is_err(), "{bad}");
        }
        // The test attestor only in a build that asks for it (ensign-insecure-test).
        let r = "insecure-test:/tmp/pki".parse::<AttestationMode>();
        if cfg!(feature = "insecure-test-attestation") {
            assert_eq!(r, Ok(AttestationMode::InsecureTest("/tmp/pki".into())));
        } else {
            assert!(r.unwrap_err().contains("has no test attestor"));
        }
    }

    #[test]
    fn key_and_verification_commands_parse() {
        let cli = Cli::try_parse_from([
            "ensign",
            "keys",
            "upload",
            "--kms-key-id",
            "k",
            "--keystore",
            "a",
            "--password-file",
            "b",
            "--table",
            "t",
        ])
        .unwrap();
        let Mode::Keys {
            command: KeysCommand::Encrypt(args),
        } = cli.mode
        else {
            panic!("keys encrypt")
        };
        assert_eq!(args.dynamodb_table.as_deref(), Some("t"));
        let no_destination = Cli::try_parse_from([
            "ensign",
            "keys",
            "encrypt",
            "--kms-key-id",
            "k",
            "--keystore",
            "a",
            "--password-file",
            "b",
        ]);
        assert!(no_destination.is_err());
        let short_pcr = Cli::try_parse_from([
            "ensign",
            "verify-attestation",
            "--url",
            "https://x:1",
            "--expected-pcr0",
            "ab",
        ]);
        assert!(short_pcr.is_err());
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
