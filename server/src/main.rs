//! The `ensign` binary.

use std::process::ExitCode;

use server::cli::{Cli, DatabaseCommand, Eth2Command, KeysCommand, Mode};
use server::{Config, StartError};
use tracing_subscriber::EnvFilter;

/// Logs go through a writer thread: at thousands of signatures per second a line per signing
/// must not put a `write(2)` on the request path. Lossless (`lossy(false)`): when the buffer
/// is full, callers wait rather than lines vanishing. The guard flushes at exit.
fn init_logging(level: &str, format: &str) -> tracing_appender::non_blocking::WorkerGuard {
    let directive = match level.to_ascii_uppercase().as_str() {
        "ALL" => "trace".to_string(),
        "FATAL" => "error".to_string(),
        "OFF" | "ERROR" | "WARN" | "INFO" | "DEBUG" | "TRACE" => level.to_ascii_lowercase(),
        _ => level.to_string(),
    };
    let filter = EnvFilter::try_new(&directive).unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout())
        && std::env::var_os("NO_COLOR").is_none();
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(false);
    if format == "json" {
        builder.json().init();
    } else {
        builder.with_ansi(ansi).init();
    }
    guard
}

/// Also the whole of `ensign-insecure-test` (src/bin/ensign-insecure-test.rs).
pub(crate) fn main() -> ExitCode {
    let cli = server::cli_sources::parse();
    let _log_guard = init_logging(&cli.global.logging, &cli.global.log_format);
    let eth2 = match &cli.mode {
        Mode::Eth2(eth2) => eth2,
        Mode::VerifyAttestation(args) => return run_tool(server::verify_attestation::run(args)),
        Mode::Keys {
            command: KeysCommand::Encrypt(args),
        } => return run_tool(server::key_records::encrypt_command(args)),
        Mode::Database {
            command: DatabaseCommand::Provision(args),
        } => return run_tool(server::db_provision::provision_command(args)),
    };
    let result = match &eth2.command {
        Some(Eth2Command::Export { to }) => server::store_config(&cli.global.data_path, eth2)
            .map_err(StartError::from)
            .and_then(|store| server::export(&store, to))
            .map(|bytes| {
                eprintln!(
                    "exported slashing protection to {} ({bytes} bytes)",
                    to.display()
                )
            }),
        Some(Eth2Command::Import { from }) => server::store_config(&cli.global.data_path, eth2)
            .map_err(StartError::from)
            .and_then(|store| server::import(&store, from))
            .map(|summary| eprintln!("imported {}: {summary:?}", from.display())),
        None => serve(&cli),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("ensign: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Runs a one-shot command (`verify-attestation`, `keys encrypt`, `database provision`): its
/// report on stdout and exit 0, or its error on stderr and exit 1.
fn run_tool<E: std::fmt::Display>(
    command: impl std::future::Future<Output = Result<String, E>>,
) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ensign: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(command) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ensign: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(cli: &Cli) -> Result<(), StartError> {
    let Mode::Eth2(eth2) = &cli.mode else {
        unreachable!("serve runs in eth2 mode only")
    };
    let config = Config::from_cli(&cli.global, eth2)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|source| StartError::Runtime {
            what: "cannot start the runtime",
            source,
        })?;
    runtime.block_on(async move {
        let running = server::start(config).await?;
        shutdown_signal().await;
        // Graceful: stop accepting, let in-flight requests (and their records) finish.
        running.stop().await.map_err(|source| StartError::Runtime {
            what: "server failed",
            source,
        })
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}
