//! The server binary: parse flags, set up logging, load and check the
//! configuration, bind, serve until SIGINT/SIGTERM.

use std::process::ExitCode;

use clap::Parser;
use mtls_template::config::{self, ServerArgs};
use mtls_template::{reload, server, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    let args = ServerArgs::parse();
    telemetry::init(args.log_format);
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: ServerArgs) -> anyhow::Result<()> {
    // Everything is read and checked before the port is opened.
    let (parts, reloader) = config::load(&args)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("--listen {}: {e}", args.listen))?;
    tracing::info!(addr = %listener.local_addr()?, "listening (mutual TLS)");
    // Certificates, keys, CA bundle, CRLs and policy reload while serving.
    let watcher = tokio::spawn(reload::watch_files(
        reloader.sources().all_paths(),
        args.watch_settings(),
        move || {
            reloader.reload();
        },
    ));
    let result = server::run(listener, parts, shutdown_signal()).await;
    watcher.abort();
    result?;
    Ok(())
}

/// Completes on SIGINT or SIGTERM (what `docker stop` sends).
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}
