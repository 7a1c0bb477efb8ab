//! The server runner: any set of tonic services, with the authorization
//! layer, transport limits, health, reflection and graceful shutdown around
//! them, on an already-bound listener.
//!
//! A service built on the kit registers its tonic services in a [`Services`]
//! and hands it to [`run`]; it never touches TLS, identity or policy.
//! Taking a bound `TcpListener` (rather than an address) is what lets tests
//! bind `127.0.0.1:0`, read the real port, and connect without sleeping.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use std::convert::Infallible;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::service::RoutesBuilder;
use tonic_health::ServingStatus;
use tower_service::Service;
use tracing::{debug, info, warn};

use crate::accept::{accept_loop, AcceptSettings};
use crate::authz::{AuthzLayer, SharedPolicy};
use crate::connections;
use crate::metrics::rpc::{KnownMethods, RpcLayer};
use crate::metrics::Metrics;
use crate::policy::ServedMethods;
use crate::quota::{Limiter, QuotaLayer};
use crate::replica::{InvalidReplicaName, ReplicaLayer};
use crate::settle::SettleLayer;

/// Transport limits. tonic leaves most of these unlimited by default; each
/// is set explicitly here.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Deadline for a client to complete the TLS handshake. Default 10 s.
    pub handshake_timeout: Duration,
    /// Deadline for a client's ClientHello to arrive, counted from accept;
    /// shorter than the handshake's, so that idle or trickling sockets give
    /// up their slot early. Default 3 s (a lost segment is resent after 1 s).
    pub client_hello_timeout: Duration,
    /// Deadline for the HTTP/2 preface after the TLS handshake. Default 5 s.
    pub preface_timeout: Duration,
    /// Connections accepted but not through their TLS handshake yet; also
    /// the listen backlog. When all are taken, the oldest one still waiting
    /// for its ClientHello is closed to make room. Default 512.
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
    /// How long a keepalive ping may go unanswered before the connection
    /// is closed. Default 20 s.
    pub keepalive_timeout: Duration,
    /// On shutdown, how long in-flight RPCs may take to finish before the
    /// remaining connections are closed. Default 10 s.
    pub drain_timeout: Duration,
    /// Every connection is closed gracefully (GOAWAY) after this long, so
    /// that clients re-handshake under the current certificates, CA bundle
    /// and CRLs: a revoked client cannot keep an old connection for ever.
    /// Default 10 min.
    pub max_connection_age: Duration,
    /// Each connection's age is moved by up to this fraction of it, either
    /// way at random, so that clients that connected together do not all
    /// reconnect together. `0.0` to `1.0`; default `0.1` (±10%).
    pub max_connection_age_jitter: f64,
    /// How long a connection past its max age may finish its RPCs before it
    /// is closed forcibly. Default 30 s.
    pub max_connection_age_grace: Duration,
    /// An answer given before the request body was read (a denial, an
    /// unknown method) first reads up to this many bytes of a body that is
    /// still arriving, so that the stream ends cleanly instead of being
    /// reset, which HTTP/2 would count as abuse (see [`crate::settle`]).
    /// Default 64 KiB.
    pub early_answer_body_bytes: usize,
    /// ... and waits at most this long for it. Default 1 s.
    pub early_answer_wait: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            client_hello_timeout: Duration::from_secs(3),
            preface_timeout: Duration::from_secs(5),
            max_pending_handshakes: 512,
            max_concurrent_streams: 128,
            max_local_error_reset_streams: 256,
            max_message_size: 4 * 1024 * 1024,
            max_header_list_size: 16 * 1024,
            keepalive_interval: Duration::from_secs(60),
            keepalive_timeout: Duration::from_secs(20),
            drain_timeout: Duration::from_secs(10),
            max_connection_age: Duration::from_secs(600),
            max_connection_age_jitter: 0.1,
            max_connection_age_grace: Duration::from_secs(30),
            early_answer_body_bytes: 64 * 1024,
            early_answer_wait: Duration::from_secs(1),
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
    /// Transport limits, fixed for the server's life.
    pub limits: Limits,
    /// Log would-be denials but let the RPCs through.
    pub dry_run: bool,
    /// The per-identity limits and fair share ([`crate::quota`]); reload
    /// by [`Limiter::apply`]. `Arc::default()` is fair share only.
    pub quota: Arc<Limiter>,
}

/// The gRPC services a server runs, besides the health and reflection
/// services the runner adds itself. The authorization layer covers all of
/// them.
///
/// ```no_run
/// # use mtls_kit::server::Services;
/// # fn demo<S>(my_service: S) where S: tonic::server::NamedService + Clone + Send + Sync + 'static
/// #   + tower_service::Service<http::Request<tonic::body::Body>, Response = http::Response<tonic::body::Body>, Error = std::convert::Infallible>,
/// #   S::Future: Send + 'static {
/// let mut services = Services::new();
/// services.add(my_service);
/// # }
/// ```
#[derive(Default)]
pub struct Services {
    routes: RoutesBuilder,
    /// Fully-qualified names (`pkg.Service`), reported SERVING on health.
    names: Vec<&'static str>,
    /// Encoded `FileDescriptorSet`s, served by reflection.
    descriptor_sets: Vec<&'static [u8]>,
    /// Where the kit's metrics and the service's own go.
    metrics: Metrics,
    /// Names this replica in every response (none by default).
    replica: ReplicaLayer,
}

impl Services {
    /// No services yet, metrics enabled, no replica name.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a tonic service (a generated `FooServer`). Its name is reported
    /// SERVING on health while the server runs, NOT_SERVING while it drains.
    ///
    /// Set the generated server's message size limits from
    /// [`Limits::max_message_size`]: tonic keeps them per service.
    pub fn add<S>(&mut self, service: S) -> &mut Self
    where
        S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.names.push(S::NAME);
        self.routes.add_service(service);
        self
    }

    /// Adds an encoded `FileDescriptorSet` (the one `build.rs` writes for
    /// the service's protos) so that reflection describes the services in
    /// it and policy paths are checked against their methods. Health and
    /// reflection are always described.
    pub fn file_descriptor_set(&mut self, encoded: &'static [u8]) -> &mut Self {
        self.descriptor_sets.push(encoded);
        self
    }

    /// Names this replica in the `x-replica` header of every response
    /// (see [`crate::replica`]); `None` leaves the header out.
    pub fn replica_name(&mut self, name: Option<&str>) -> Result<&mut Self, InvalidReplicaName> {
        self.replica = ReplicaLayer::new(name)?;
        Ok(self)
    }

    /// The names of the services added so far.
    pub fn names(&self) -> &[&'static str] {
        &self.names
    }

    /// The encoded descriptor sets of everything the server will serve:
    /// the added ones, then health and reflection (v1 and v1alpha), which
    /// [`run`] always adds. A client reads them to call any of these
    /// methods ([`crate::client::dynamic::Schema`]).
    pub fn descriptor_sets(&self) -> Vec<&'static [u8]> {
        self.descriptor_sets
            .iter()
            .copied()
            .chain([
                tonic_health::pb::FILE_DESCRIPTOR_SET,
                tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            ])
            .collect()
    }

    /// Every method the server will serve: those of
    /// [`descriptor_sets`](Self::descriptor_sets). A service added without
    /// a descriptor set is listed as one whose methods are unknown. For
    /// checking a policy's paths.
    pub fn served_methods(&self) -> Result<ServedMethods, prost::DecodeError> {
        let mut served = ServedMethods::new();
        for set in self.descriptor_sets() {
            served.add_descriptor_set(set)?;
        }
        for name in &self.names {
            served.add_opaque_service(name);
        }
        Ok(served)
    }

    /// The metrics registry of this server: register the service's own
    /// metrics here ([`Metrics::register`]) to expose them next to the
    /// kit's. Enabled unless replaced by [`Services::set_metrics`].
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Replaces the registry, e.g. with [`Metrics::disabled`] when the
    /// metrics endpoint is off.
    pub fn set_metrics(&mut self, metrics: Metrics) -> &mut Self {
        self.metrics = metrics;
        self
    }
}

/// Errors that stop the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A descriptor set added with [`Services::file_descriptor_set`] could
    /// not be decoded into the reflection service. Returned before the
    /// server accepts any connection.
    #[error("building the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// tonic's transport failed. Not returned by [`run`] today, which
    /// serves each connection itself and only logs a connection's errors.
    #[error("serving: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves on `listener` until `shutdown` completes, then stops accepting,
/// reports NOT_SERVING on health, and lets in-flight RPCs finish for up to
/// `limits.drain_timeout`.
pub async fn run(
    listener: TcpListener,
    parts: ServerParts,
    services: Services,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let limits = parts.limits;
    let Services {
        mut routes,
        names,
        descriptor_sets,
        metrics,
        replica,
    } = services;
    let (health, health_service) = tonic_health::server::health_reporter();
    for name in &names {
        health
            .set_service_status(*name, ServingStatus::Serving)
            .await;
    }

    // Reflection v1, plus v1alpha for the many tools that still only speak
    // it (Python's grpcio-reflection, older grpcurl and GUI clients).
    let reflection = || {
        descriptor_sets.iter().fold(
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET),
            |builder, set| builder.register_encoded_file_descriptor_set(set),
        )
    };
    routes
        .add_service(health_service)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?);

    // The settings and service every connection shares; each connection
    // gets its own max age.
    let shared = connections::Shared::new(
        &limits,
        connections::Layers {
            // Outermost, so that it sees every RPC's final status, denials
            // and the router's UNIMPLEMENTED too.
            rpc: RpcLayer::new(metrics.clone(), known_methods(&descriptor_sets)),
            // Outside authorization, so that it also covers the router's
            // UNIMPLEMENTED.
            settle: SettleLayer::new(limits.early_answer_body_bytes, limits.early_answer_wait),
            // Outside authorization, so denials name the replica too.
            replica,
            authz: AuthzLayer::new(parts.policy.clone()).dry_run(parts.dry_run),
            quota: QuotaLayer::new(parts.quota.clone(), metrics.clone()),
        },
        routes.routes().prepare(),
    );

    let (incoming, accept_task) = accept_loop(
        listener,
        parts.tls.clone(),
        AcceptSettings {
            handshake_timeout: limits.handshake_timeout,
            client_hello_timeout: limits.client_hello_timeout,
            preface_timeout: limits.preface_timeout,
            max_pending_handshakes: limits.max_pending_handshakes,
        },
        metrics.handshakes(),
    );
    let accept_task = AbortOnDrop(accept_task);
    tokio::pin!(shutdown);

    // New connections are spawned by a task of their own rather than by
    // this future: a service's `#[tokio::main]` polls this future on the
    // process's main thread, outside the runtime's workers, so every new
    // and every finished connection would wake that thread (a futex wake
    // and a context switch each; 5% of the server's CPU when each
    // connection carries one RPC, in the `connect` benchmark).
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (stop_spawning, spawning_stopped) = tokio::sync::oneshot::channel();
    let mut spawner = AbortOnDrop(tokio::spawn(spawn_connections(
        incoming,
        shared,
        limits,
        stop_rx,
        spawning_stopped,
    )));
    let spawned = tokio::select! {
        () = &mut shutdown => {
            let _ = stop_spawning.send(());
            (&mut spawner.0).await
        }
        // Only if the accept loop's task ends.
        spawned = &mut spawner.0 => spawned,
    };
    let mut connections = spawned.unwrap_or_else(|e| {
        // A panic in the loop dropped its connections with it.
        warn!(error = %e, "the connection loop failed");
        tokio::task::JoinSet::new()
    });
    info!(drain_timeout = ?limits.drain_timeout, "shutting down: draining in-flight RPCs");
    // Close the listening socket now, so new clients are refused at once
    // (and go elsewhere) instead of waiting on a server that is leaving.
    drop(accept_task);
    for name in names.iter().copied().chain([""]) {
        health
            .set_service_status(name, ServingStatus::NotServing)
            .await;
    }
    let _ = stop_tx.send(true);
    let drained = async { while connections.join_next().await.is_some() {} };
    match tokio::time::timeout(limits.drain_timeout, drained).await {
        Ok(()) => info!("shutdown complete"),
        Err(_) => warn!("drain deadline passed; closing the remaining connections"),
    }
    Ok(())
}

/// Spawns a task per authenticated connection until `incoming` ends or
/// `stopped` fires, reaping finished ones as it goes; returns the
/// connections still open, to drain.
async fn spawn_connections(
    incoming: impl tokio_stream::Stream<Item = Result<crate::conn::PeerStream, std::io::Error>>,
    shared: connections::Shared,
    limits: Limits,
    stop: tokio::sync::watch::Receiver<bool>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) -> tokio::task::JoinSet<Result<(), hyper::Error>> {
    tokio::pin!(incoming);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = incoming.next() => {
                // The accept loop only ends if its task does.
                let Some(Ok(stream)) = accepted else { break };
                let lifetime = connections::Lifetime {
                    age: connections::jittered(limits.max_connection_age, limits.max_connection_age_jitter),
                    grace: limits.max_connection_age_grace,
                };
                let (shared, stop) = (shared.clone(), stop.clone());
                connections.spawn(async move {
                    connections::serve(&shared, lifetime, stream, stop).await
                });
            }
            Some(done) = connections.join_next(), if !connections.is_empty() => {
                if let Ok(Err(e)) = done {
                    debug!(error = %e, "connection ended with an error");
                }
            }
            _ = &mut stopped => break,
        }
    }
    connections
}

/// The methods metrics label by name: the services' own, health's and
/// reflection's.
fn known_methods(descriptor_sets: &[&'static [u8]]) -> KnownMethods {
    KnownMethods::from_descriptor_sets(descriptor_sets.iter().copied().chain([
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ]))
}

/// A task that must not outlive `run`, even when `run`'s future is dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
