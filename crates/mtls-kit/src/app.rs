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
    match raise_nofile_limit() {
        Ok(Some((from, to))) => tracing::info!(
            from,
            to,
            "raised the open-file limit (RLIMIT_NOFILE) to its hard limit"
        ),
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit (RLIMIT_NOFILE)"),
    }
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

/// Raises this process's soft limit on open files to the hard limit, so
/// that one connection per descriptor does not stop at the common soft
/// default of 1,024 (10,000 clients need 10,000 descriptors). Returns the
/// old and new soft limits if it changed anything.
pub fn raise_nofile_limit() -> std::io::Result<Option<(u64, u64)>> {
    let (soft, hard) = rlimit::Resource::NOFILE.get()?;
    if soft >= hard {
        return Ok(None);
    }
    rlimit::Resource::NOFILE.set(hard, hard)?;
    Ok(Some((soft, hard)))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_file_limit_is_raised_to_the_hard_limit() {
        // Lower the soft limit first, so there is something to raise.
        let (_, hard) = rlimit::Resource::NOFILE.get().unwrap();
        let low = 256.min(hard);
        rlimit::Resource::NOFILE.set(low, hard).unwrap();
        let changed = raise_nofile_limit().unwrap();
        assert_eq!(rlimit::Resource::NOFILE.get().unwrap(), (hard, hard));
        if hard > low {
            assert_eq!(changed, Some((low, hard)));
        }
        // Already at the hard limit: nothing to do.
        assert_eq!(raise_nofile_limit().unwrap(), None);
    }
}
