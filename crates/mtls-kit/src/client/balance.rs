//! Client-side load balancing: one mutual-TLS connection per address behind
//! the service's name, RPCs spread over them, and a discovery task that
//! keeps the set current.
//!
//! The pieces are tower's and tonic's: each address gets a tonic
//! [`Channel`](tonic::transport::Channel) made by the kit's own connector (the same rustls
//! `ClientConfig`, verified against the same server name whatever the IP),
//! and tower's power-of-two-choices [`Balance`] picks one per request from
//! a stream of `Insert`/`Remove` changes. What the kit adds is the
//! discovery task that produces that stream:
//!
//! * it resolves the name (a pluggable [`Resolve`]) at start, every
//!   `refresh_interval`, and soon after a connection goes away;
//! * it connects to each new address *before* offering it to the balancer,
//!   so RPCs only ever go to a connection that completed its handshake;
//! * an address that leaves the resolver's answer is removed, and so is a
//!   connection that closes (a server draining sends GOAWAY; one that died
//!   resets): the balancer stops picking it at once, and the address is
//!   connected again only if the next resolution still lists it.
//!
//! A replica is never reconnected behind the balancer's back: a request
//! that reaches a closed connection fails fast with [`NotSent`], which
//! [`super::retry`] knows is safe to retry even for a write.

use std::collections::BTreeSet;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::sync::{mpsc, watch, Notify};
use tonic::body::Body;
use tonic::transport::Endpoint;
use tower::balance::p2c::Balance;
use tower::buffer::Buffer;
use tower::discover::Change;
use tower::util::BoxService;
use tower::Service;

use super::resolve::Resolve;
use crate::deadline::grpc_timeout;

mod discovery;
mod replica;

use discovery::Discovery;
use replica::Replica;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Request = http::Request<Body>;
type Response = http::Response<Body>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type ResponseFuture = BoxFuture<Result<Response, BoxError>>;

/// How to balance over the addresses behind one name.
#[derive(Clone, Debug)]
pub struct BalanceSettings {
    /// `host:port` as the user gave it; sent as every request's
    /// `:authority`, whichever address serves it.
    pub target: String,
    /// The name every replica's certificate must carry (the same for all,
    /// whatever IP address the name resolved to).
    pub server_name: ServerName<'static>,
    /// Deadline of one TCP connect plus TLS handshake, and of one
    /// resolution. Default 5 s.
    pub connect_timeout: Duration,
    /// How often the name is resolved again, to find new replicas. Default
    /// 30 s (gRPC's DNS resolver uses the same).
    pub refresh_interval: Duration,
    /// The least time between two resolutions triggered by a lost
    /// connection or a failed connect, so a flapping replica cannot make
    /// the client hammer DNS or reconnect in a loop. Default 1 s.
    pub min_refresh_interval: Duration,
    /// How long a replica that answered `UNAVAILABLE` is passed over while
    /// another one is available, so that a retry goes elsewhere. Default
    /// 1 s.
    pub unavailable_penalty: Duration,
    /// HTTP/2 PING interval on each connection, so that a replica that
    /// vanished without closing its connections (a network partition, a
    /// host gone) is noticed and dropped; `None` turns it off. Default 30 s.
    pub keepalive_interval: Option<Duration>,
    /// How long a PING may go unanswered before the connection is dropped.
    /// Default 10 s.
    pub keepalive_timeout: Duration,
}

impl BalanceSettings {
    /// Settings for `target` (`host:port`), expecting `server_name` in every
    /// replica's certificate, with every other field at its default.
    pub fn new(target: impl Into<String>, server_name: ServerName<'static>) -> Self {
        Self {
            target: target.into(),
            server_name,
            connect_timeout: Duration::from_secs(5),
            refresh_interval: Duration::from_secs(30),
            min_refresh_interval: Duration::from_secs(1),
            unavailable_penalty: Duration::from_secs(1),
            keepalive_interval: Some(Duration::from_secs(30)),
            keepalive_timeout: Duration::from_secs(10),
        }
    }
}

/// Why a balanced client could not start.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BalanceError {
    /// The target does not make a valid URI (`http://` + the target).
    #[error("invalid server address {target:?}: {source}")]
    Address {
        /// The target as given.
        target: String,
        /// Why tonic refused it. (The sources are `Arc`s so that
        /// [`BalanceState`] can be cloned.)
        source: Arc<tonic::transport::Error>,
    },
    /// The resolver failed, or took longer than `connect_timeout` (then
    /// the source is an `io::ErrorKind::TimedOut`).
    #[error("resolving {target}: {source}")]
    Resolve {
        /// The target being resolved.
        target: String,
        /// The resolver's error.
        source: Arc<io::Error>,
    },
    /// The resolver answered with no address. Discovery keeps the replicas
    /// it has rather than drop them all on such an answer.
    #[error("{target} resolved to no address")]
    NoAddress {
        /// The target that was resolved.
        target: String,
    },
    /// Connecting to one resolved address (TCP, then mutual TLS) failed.
    /// The address is tried again after a backoff, if still resolved.
    #[error("connecting to {target} at {addr}: {source}")]
    Connect {
        /// The target the address was resolved from.
        target: String,
        /// The address that could not be connected to.
        addr: SocketAddr,
        /// The cause; its own source says which step failed.
        source: Arc<tonic::transport::Error>,
    },
}

/// The request was not sent: the connection it was given to had already
/// closed. Retrying it is safe whatever the RPC does.
#[derive(Debug, thiserror::Error)]
#[error("connection to {addr} closed before the request was sent")]
pub struct NotSent {
    /// The replica whose connection had closed.
    pub addr: SocketAddr,
}

/// What the discovery task last saw, for callers and tests to wait on.
#[derive(Clone, Debug, Default)]
pub struct BalanceState {
    /// Addresses with an open connection, offered to the balancer.
    pub ready: BTreeSet<SocketAddr>,
    /// No connect attempt is pending (every resolved address is connected
    /// or has failed).
    pub settled: bool,
    /// The last resolution or connect failure.
    pub last_error: Option<BalanceError>,
    /// Connections that have closed so far (drained, aged out by the
    /// server's GOAWAY, or broken).
    pub connections_closed: u64,
}

/// A tonic transport that spreads RPCs over every replica behind a name.
/// Use it wherever a `Channel` goes (`FooClient::new(balanced)`); clones
/// share the connections.
#[derive(Clone)]
pub struct BalancedChannel {
    inner: Buffer<Request, ResponseFuture>,
    refresh: Arc<Notify>,
    state: watch::Receiver<BalanceState>,
    _discovery: Arc<AbortOnDrop>,
}

impl std::fmt::Debug for BalancedChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BalancedChannel")
            .field("ready", &self.state.borrow().ready)
            .finish()
    }
}

impl BalancedChannel {
    /// Starts balancing without waiting: RPCs wait (up to their deadline)
    /// until a first replica is connected. For a long-running client.
    pub fn new(
        settings: BalanceSettings,
        resolver: impl Resolve,
        tls: Arc<ArcSwap<ClientConfig>>,
    ) -> Result<Self, BalanceError> {
        let mut endpoint = Endpoint::from_shared(format!("http://{}", settings.target))
            .map_err(|source| BalanceError::Address {
                target: settings.target.clone(),
                source: Arc::new(source),
            })?
            .connect_timeout(settings.connect_timeout)
            .tcp_nodelay(true);
        if let Some(interval) = settings.keepalive_interval {
            endpoint = endpoint
                .http2_keep_alive_interval(interval)
                .keep_alive_timeout(settings.keepalive_timeout)
                // Idle connections too: an idle replica that vanished would
                // otherwise stay in the balancer until the next RPC hangs.
                .keep_alive_while_idle(true);
        }

        let (changes_tx, changes_rx) = mpsc::unbounded_channel();
        let (state_tx, state_rx) = watch::channel(BalanceState::default());
        let refresh = Arc::new(Notify::new());
        let discovery = Discovery::new(
            Box::new(resolver),
            settings,
            endpoint,
            tls,
            changes_tx,
            state_tx,
            refresh.clone(),
        );
        let task = tokio::spawn(discovery.run());

        let balance = Balance::new(Changes(changes_rx));
        let (inner, worker) = Buffer::pair(BoxService::new(balance), 1024);
        tokio::spawn(worker);
        Ok(Self {
            inner,
            refresh,
            state: state_rx,
            _discovery: Arc::new(AbortOnDrop(task)),
        })
    }

    /// Starts balancing and waits until a first replica is connected, or
    /// until resolving or connecting to every address has failed (then the
    /// error says why, as a single-address client would).
    pub async fn connect(
        settings: BalanceSettings,
        resolver: impl Resolve,
        tls: Arc<ArcSwap<ClientConfig>>,
    ) -> Result<Self, BalanceError> {
        let target = settings.target.clone();
        let channel = Self::new(settings, resolver, tls)?;
        let mut state = channel.state();
        let settled = state
            .wait_for(|s| !s.ready.is_empty() || s.settled)
            .await
            .map(|s| s.clone())
            .unwrap_or_default();
        if settled.ready.is_empty() {
            return Err(settled
                .last_error
                .unwrap_or(BalanceError::NoAddress { target }));
        }
        Ok(channel)
    }

    /// Resolves the name again now (gRPC's "resolve now").
    pub fn refresh(&self) {
        self.refresh.notify_one();
    }

    /// What the discovery task sees: ready addresses, last error.
    pub fn state(&self) -> watch::Receiver<BalanceState> {
        self.state.clone()
    }
}

impl Service<Request> for BalancedChannel {
    type Response = Response;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> ResponseFuture {
        // The per-replica channel enforces the deadline once the request
        // has a replica; this covers the wait for one (none connected yet,
        // or all of them gone), which would otherwise have no end.
        let deadline = grpc_timeout(req.headers());
        let call = self.inner.call(req);
        Box::pin(async move {
            match deadline {
                None => call.await,
                Some(d) => match tokio::time::timeout(d, call).await {
                    Ok(result) => result,
                    Err(_) => Err(Box::new(tonic::Status::deadline_exceeded(
                        "deadline exceeded waiting for a replica",
                    )) as BoxError),
                },
            }
        })
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The balancer's view of discovery: a stream of changes that never ends
/// (tower's balancer fails once its discovery stream ends, and the task
/// only stops when every clone of the channel is gone).
struct Changes(mpsc::UnboundedReceiver<Change<SocketAddr, Replica>>);

impl futures_util::Stream for Changes {
    type Item = Result<Change<SocketAddr, Replica>, std::convert::Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.0.poll_recv(cx) {
            Poll::Ready(Some(change)) => Poll::Ready(Some(Ok(change))),
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }
}
