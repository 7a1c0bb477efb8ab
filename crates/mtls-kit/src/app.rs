//! The server process around [`server::run`]: load and check the
//! configuration, bind, reload files while serving, and stop gracefully on
//! SIGINT/SIGTERM. A service's `main` parses its flags and calls [`serve`].

use crate::certs_cli::DevIdentities;
use crate::config::{self, ServerArgs};
use crate::metrics;
use crate::reload;
use crate::server::{self, Services};

/// Serves `services` as `args` say until SIGINT or SIGTERM.
///
/// Everything is read and checked before the port is opened, so a bad
/// certificate or policy stops the process with an error naming the file
/// and field, and nothing ever listens half-configured. Without TLS file
/// flags the development PKI for `identities` is used (made on first start).
pub async fn serve(
    args: &ServerArgs,
    identities: &DevIdentities,
    mut services: Services,
) -> anyhow::Result<()> {
    let served = services
        .served_methods()
        .map_err(|e| anyhow::anyhow!("reading the services' descriptor sets: {e}"))?;
    let (parts, reloader) = config::load(args, identities, served)?;
    let listener = crate::accept::bind(args.listen, parts.limits.max_pending_handshakes)
        .map_err(|e| anyhow::anyhow!("--listen {}: {e}", args.listen))?;
    tracing::info!(addr = %listener.local_addr()?, services = ?services.names(), "listening (mutual TLS)");
    let metrics_endpoint = metrics::http::start(args.metrics_listen, &mut services).await?;
    // Certificates, keys, CA bundle, CRLs and policy reload while serving.
    let watcher = tokio::spawn(reload::watch_files(
        reloader.sources().all_paths(),
        args.watch_settings(),
        metrics::reload::reload_and_record(reloader, services.metrics().clone()),
    ));
    let result = server::run(listener, parts, services, shutdown_signal()).await;
    watcher.abort();
    if let Some(endpoint) = metrics_endpoint {
        endpoint.abort();
    }
    result?;
    Ok(())
}

/// Completes on SIGINT or SIGTERM (what `docker stop` and Kubernetes send).
pub async fn shutdown_signal() {
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
