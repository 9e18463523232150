//! `ensign-host`: runs on the parent instance of a Nitro Enclave running
//! ensign. See the `host` crate's docs for what it does and the formats it
//! reads; `ensign-host --help` for the options.
//!
//! Signals: `SIGHUP` reconciles the keys at once; `SIGTERM` / `SIGINT`
//! terminate the enclave and exit.
//!
//! Exit status: 0 after a signal-initiated shutdown, 2 for a bad command
//! line, 1 when the host cannot start (a port in use, …).

#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use host::cli::LogFormat;
use host::HostArgs;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Notify;

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let args = HostArgs::parse();
    init_logging(args.log_format);
    let config = match args.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let (mut hup, mut term, mut int) = match (
            signal(SignalKind::hangup()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(h), Ok(t), Ok(i)) => (h, t, i),
            _ => {
                tracing::error!("cannot install signal handlers");
                return ExitCode::FAILURE;
            }
        };
        let reconcile_now = Arc::new(Notify::new());
        let notify = reconcile_now.clone();
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP received");
                notify.notify_one();
            }
        });
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received; shutting down"),
                _ = int.recv() => tracing::info!("SIGINT received; shutting down"),
            }
        };
        tracing::info!(version = env!("CARGO_PKG_VERSION"), "ensign-host starting");
        match host::run(config, reconcile_now, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e}");
                ExitCode::FAILURE
            }
        }
    })
}
