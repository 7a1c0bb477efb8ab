//! The server: routes, limits, health, reflection and graceful shutdown,
//! around an already-bound listener.
//!
//! Taking a bound `TcpListener` (rather than an address) is what lets tests
//! bind `127.0.0.1:0`, read the real port, and connect without sleeping.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tonic_health::ServingStatus;
use tracing::{info, warn};

use crate::authz::{AuthzLayer, SharedPolicy};
use crate::conn::{accept_loop, AcceptSettings};
use crate::proto::inventory_server::InventoryServer;
use crate::service::InventoryService;

/// Transport limits. tonic leaves most of these unlimited by default; each
/// is set explicitly here.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Deadline for a client to complete the TLS handshake. Default 10 s.
    pub handshake_timeout: Duration,
    /// Handshakes in progress at once before accepting pauses. Default 512.
    pub max_pending_handshakes: usize,
    /// HTTP/2 streams (concurrent RPCs) per connection. Default 128.
    pub max_concurrent_streams: u32,
    /// Streams the server may reset for protocol errors per connection
    /// before it closes the connection: the defence against "MadeYouReset"
    /// (CVE-2025-8671). Default 256.
    pub max_local_error_reset_streams: usize,
    /// Largest request or response message, in bytes. Default 4 MiB (gRPC's
    /// usual receive limit).
    pub max_message_size: usize,
    /// Largest header block a client may send. Default 16 KiB.
    pub max_header_list_size: u32,
    /// HTTP/2 keepalive pings, to find dead peers. Default every 60 s, with
    /// 20 s to answer.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// On shutdown, how long in-flight RPCs may take to finish before the
    /// remaining connections are closed. Default 10 s.
    pub drain_timeout: Duration,
    /// Every connection is closed gracefully (GOAWAY) after this long, so
    /// that clients re-handshake under the current certificates, CA bundle
    /// and CRLs: a revoked client cannot keep an old connection for ever.
    /// Default 10 min.
    pub max_connection_age: Duration,
    /// How long a connection past its max age may finish its RPCs before it
    /// is closed forcibly. Default 30 s.
    pub max_connection_age_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            max_pending_handshakes: 512,
            max_concurrent_streams: 128,
            max_local_error_reset_streams: 256,
            max_message_size: 4 * 1024 * 1024,
            max_header_list_size: 16 * 1024,
            keepalive_interval: Duration::from_secs(60),
            keepalive_timeout: Duration::from_secs(20),
            drain_timeout: Duration::from_secs(10),
            max_connection_age: Duration::from_secs(600),
            max_connection_age_grace: Duration::from_secs(30),
        }
    }
}

/// Everything the server runs with.
#[derive(Clone)]
pub struct ServerParts {
    /// The TLS config new handshakes use; replace the inner `Arc` to change
    /// it without a restart.
    pub tls: Arc<ArcSwap<rustls::ServerConfig>>,
    /// The policy new RPCs are checked against.
    pub policy: SharedPolicy,
    pub inventory: InventoryService,
    pub limits: Limits,
    /// Log would-be denials but let the RPCs through.
    pub dry_run: bool,
}

/// Errors that stop the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("building the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("serving: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves on `listener` until `shutdown` completes, then stops accepting,
/// reports NOT_SERVING on health, and lets in-flight RPCs finish for up to
/// `limits.drain_timeout`.
pub async fn run(
    listener: TcpListener,
    parts: ServerParts,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let limits = parts.limits;
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<InventoryServer<InventoryService>>()
        .await;

    // Reflection v1, plus v1alpha for the many tools that still only speak
    // it (Python's grpcio-reflection, older grpcurl and GUI clients).
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    // TEMPLATE: register your own services here. The authorization layer
    // below covers every service added to this router.
    let inventory = InventoryServer::new(parts.inventory.clone())
        .max_decoding_message_size(limits.max_message_size)
        .max_encoding_message_size(limits.max_message_size);

    let router = tonic::transport::Server::builder()
        .max_concurrent_streams(limits.max_concurrent_streams)
        .http2_max_local_error_reset_streams(Some(limits.max_local_error_reset_streams))
        .http2_max_header_list_size(limits.max_header_list_size)
        .http2_keepalive_interval(Some(limits.keepalive_interval))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout))
        .max_connection_age(limits.max_connection_age)
        .max_connection_age_grace(limits.max_connection_age_grace)
        .layer(AuthzLayer::new(parts.policy.clone()).dry_run(parts.dry_run))
        .add_service(inventory)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);

    let (incoming, accept_task) = accept_loop(
        listener,
        parts.tls.clone(),
        AcceptSettings {
            handshake_timeout: limits.handshake_timeout,
            max_pending_handshakes: limits.max_pending_handshakes,
        },
    );
    let accept_task = AbortOnDrop(accept_task);

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = router.serve_with_incoming_shutdown(incoming, async {
        let _ = stop_rx.await;
    });
    tokio::pin!(server);

    tokio::select! {
        result = &mut server => return Ok(result?),
        () = shutdown => {}
    }
    info!(drain_timeout = ?limits.drain_timeout, "shutting down: draining in-flight RPCs");
    // Close the listening socket now, so new clients are refused at once
    // (and go elsewhere) instead of waiting on a server that is leaving.
    drop(accept_task);
    health
        .set_not_serving::<InventoryServer<InventoryService>>()
        .await;
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    let _ = stop_tx.send(());
    match tokio::time::timeout(limits.drain_timeout, server).await {
        Ok(result) => {
            info!("shutdown complete");
            Ok(result?)
        }
        Err(_) => {
            warn!("drain deadline passed; closing the remaining connections");
            Ok(())
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
