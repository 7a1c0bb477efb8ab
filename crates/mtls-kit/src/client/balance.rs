//! Client-side load balancing: one mutual-TLS connection per address behind
//! the service's name, RPCs spread over them, and a discovery task that
//! keeps the set current.
//!
//! The pieces are tower's and tonic's: each address gets a tonic
//! [`Channel`] made by the kit's own connector (the same rustls
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

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tonic::body::Body;
use tonic::transport::{Channel, Endpoint};
use tower::balance::p2c::Balance;
use tower::buffer::Buffer;
use tower::discover::Change;
use tower::load::Load;
use tower::util::BoxService;
use tower::Service;
use tracing::{debug, info, warn};

use super::describe_error;
use super::resolve::Resolve;

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
    #[error("invalid server address {target:?}: {source}")]
    Address {
        target: String,
        source: Arc<tonic::transport::Error>,
    },
    #[error("resolving {target}: {source}")]
    Resolve {
        target: String,
        source: Arc<io::Error>,
    },
    #[error("{target} resolved to no address")]
    NoAddress { target: String },
    #[error("connecting to {target} at {addr}: {source}")]
    Connect {
        target: String,
        addr: SocketAddr,
        source: Arc<tonic::transport::Error>,
    },
}

/// The request was not sent: the connection it was given to had already
/// closed. Retrying it is safe whatever the RPC does.
#[derive(Debug, thiserror::Error)]
#[error("connection to {addr} closed before the request was sent")]
pub struct NotSent {
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
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (state_tx, state_rx) = watch::channel(BalanceState::default());
        let refresh = Arc::new(Notify::new());
        let discovery = Discovery {
            resolver: Box::new(resolver),
            settings,
            endpoint,
            tls,
            changes: changes_tx,
            events_tx,
            events: events_rx,
            refresh: refresh.clone(),
            state: state_tx,
            slots: HashMap::new(),
            backoff: HashMap::new(),
            next_generation: 0,
        };
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

/// The `grpc-timeout` header (`<digits><unit>`), as tonic writes it from
/// `Request::set_timeout`.
fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
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

/// One connection to one address, as the balancer sees it.
struct Replica {
    channel: Channel,
    shared: Arc<ReplicaShared>,
}

/// What the connection, the in-flight calls and the balancer share.
struct ReplicaShared {
    addr: SocketAddr,
    /// Set once the connection has closed, or a call on it failed at the
    /// transport level: the balancer then drops this replica.
    closed: AtomicBool,
    /// Requests sent and not yet answered: the balancer's load measure.
    in_flight: AtomicUsize,
    /// Until when this replica is passed over after answering UNAVAILABLE.
    penalized_until: Mutex<Option<Instant>>,
    penalty: Duration,
}

impl ReplicaShared {
    fn penalized(&self) -> bool {
        let until = *self
            .penalized_until
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        until.is_some_and(|t| Instant::now() < t)
    }

    fn penalize(&self) {
        *self
            .penalized_until
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + self.penalty);
    }
}

/// Compared field by field: a penalized replica loses to any other, then
/// fewer requests in flight wins.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
struct ReplicaLoad {
    penalized: bool,
    in_flight: usize,
}

impl Load for Replica {
    type Metric = ReplicaLoad;

    fn load(&self) -> ReplicaLoad {
        ReplicaLoad {
            penalized: self.shared.penalized(),
            in_flight: self.shared.in_flight.load(Ordering::Relaxed),
        }
    }
}

impl Service<Request> for Replica {
    type Response = Response;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // An error here makes the balancer drop this replica for good; the
        // discovery task decides whether the address comes back.
        if self.shared.closed.load(Ordering::Acquire) {
            return Poll::Ready(Err(Box::new(NotSent {
                addr: self.shared.addr,
            })));
        }
        self.channel.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request) -> ResponseFuture {
        let in_flight = InFlight::new(self.shared.clone());
        let call = self.channel.call(req);
        Box::pin(async move {
            let result = call.await;
            let shared = &in_flight.0;
            match &result {
                Ok(response) => {
                    // A trailers-only UNAVAILABLE (the usual shape of an
                    // error answer) is in the headers.
                    if response.headers().get("grpc-status").map(|v| v.as_bytes()) == Some(b"14") {
                        shared.penalize();
                    }
                }
                Err(e) if connection_failed(e) => {
                    // Set before the caller sees the error, so that a retry
                    // cannot be given this replica again.
                    shared.closed.store(true, Ordering::Release);
                }
                Err(_) => {}
            }
            result.map_err(Into::into)
        })
    }
}

/// Whether a failed call means the connection itself is gone (not just
/// this stream: its deadline, or a reset of the stream alone).
fn connection_failed(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(err);
    while let Some(e) = source {
        if e.is::<tonic::TimeoutExpired>() {
            return false;
        }
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return !h2.is_reset();
        }
        source = e.source();
    }
    true
}

/// Counts a request as in flight until its response (or failure) arrives,
/// or the caller gives up.
struct InFlight(Arc<ReplicaShared>);

impl InFlight {
    fn new(shared: Arc<ReplicaShared>) -> Self {
        shared.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(shared)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What the discovery task hears from connect tasks and connections.
enum Event {
    Connected(SocketAddr, u64, Replica),
    Failed(SocketAddr, u64, tonic::transport::Error),
    /// The connection of that generation closed.
    Lost(SocketAddr, u64),
}

/// One address the discovery task is connecting or connected to.
struct Slot {
    /// Tells this connection's events from those of an earlier one to the
    /// same address.
    generation: u64,
    ready: bool,
}

struct Discovery {
    resolver: Box<dyn Resolve>,
    settings: BalanceSettings,
    endpoint: Endpoint,
    tls: Arc<ArcSwap<ClientConfig>>,
    changes: mpsc::UnboundedSender<Change<SocketAddr, Replica>>,
    events_tx: mpsc::UnboundedSender<Event>,
    events: mpsc::UnboundedReceiver<Event>,
    refresh: Arc<Notify>,
    state: watch::Sender<BalanceState>,
    slots: HashMap<SocketAddr, Slot>,
    /// Addresses whose last connects failed: how many in a row, and when
    /// to try again (doubling from `min_refresh_interval` up to
    /// `refresh_interval`), so a listed but dead address costs little.
    backoff: HashMap<SocketAddr, (u32, Instant)>,
    next_generation: u64,
}

impl Discovery {
    async fn run(mut self) {
        loop {
            self.resolve().await;
            let last = Instant::now();
            let min_interval = self.settings.min_refresh_interval;
            let soon = || (last + min_interval).max(Instant::now());
            let mut next = last + self.settings.refresh_interval;
            loop {
                tokio::select! {
                    () = tokio::time::sleep_until(next) => break,
                    () = self.refresh.notified() => break,
                    Some(event) = self.events.recv() => {
                        if let Some(at) = self.handle(event) {
                            next = next.min(at.max(soon()));
                        }
                    }
                }
            }
        }
    }

    async fn resolve(&mut self) {
        let target = self.settings.target.clone();
        let error = match tokio::time::timeout(
            self.settings.connect_timeout,
            self.resolver.resolve(),
        )
        .await
        {
            Ok(Ok(addrs)) if !addrs.is_empty() => {
                self.apply(addrs);
                None
            }
            // An empty answer is treated like a failure: keep what we have
            // rather than drop every replica on a resolver glitch.
            Ok(Ok(_)) => Some(BalanceError::NoAddress { target }),
            Ok(Err(e)) => Some(BalanceError::Resolve {
                target,
                source: Arc::new(e),
            }),
            Err(_) => Some(BalanceError::Resolve {
                target,
                source: Arc::new(io::Error::new(io::ErrorKind::TimedOut, "timed out")),
            }),
        };
        if let Some(e) = &error {
            warn!(error = %describe_error(e), "resolution failed; keeping the current replicas");
        }
        self.publish(error);
    }

    fn apply(&mut self, addrs: Vec<SocketAddr>) {
        let want: BTreeSet<SocketAddr> = addrs.into_iter().collect();
        self.backoff.retain(|a, _| want.contains(a));
        let gone: Vec<SocketAddr> = self
            .slots
            .keys()
            .filter(|a| !want.contains(a))
            .copied()
            .collect();
        for addr in gone {
            if let Some(slot) = self.slots.remove(&addr) {
                info!(%addr, "replica no longer resolved; dropping it");
                if slot.ready {
                    let _ = self.changes.send(Change::Remove(addr));
                }
            }
        }
        let now = Instant::now();
        for addr in want {
            let backing_off = self.backoff.get(&addr).is_some_and(|(_, at)| *at > now);
            if !self.slots.contains_key(&addr) && !backing_off {
                self.start_connect(addr);
            }
        }
    }

    fn start_connect(&mut self, addr: SocketAddr) {
        let generation = self.next_generation;
        self.next_generation += 1;
        self.slots.insert(
            addr,
            Slot {
                generation,
                ready: false,
            },
        );
        let dial = Dial {
            addr,
            generation,
            endpoint: self.endpoint.clone(),
            server_name: self.settings.server_name.clone(),
            tls: self.tls.clone(),
            penalty: self.settings.unavailable_penalty,
            events: self.events_tx.clone(),
        };
        let events = self.events_tx.clone();
        tokio::spawn(async move {
            let event = match dial.connect().await {
                Ok(replica) => Event::Connected(addr, generation, replica),
                Err(e) => Event::Failed(addr, generation, e),
            };
            let _ = events.send(event);
        });
    }

    /// Applies one event; returns when to resolve again, if sooner than
    /// planned.
    fn handle(&mut self, event: Event) -> Option<Instant> {
        let current = |slots: &HashMap<SocketAddr, Slot>, addr, generation| {
            slots.get(&addr).is_some_and(|s| s.generation == generation)
        };
        match event {
            Event::Connected(addr, generation, replica) => {
                if current(&self.slots, addr, generation) {
                    if let Some(slot) = self.slots.get_mut(&addr) {
                        slot.ready = true;
                    }
                    debug!(%addr, "replica connected");
                    self.backoff.remove(&addr);
                    let _ = self.changes.send(Change::Insert(addr, replica));
                    self.publish(None);
                }
                None
            }
            Event::Failed(addr, generation, error) => {
                if !current(&self.slots, addr, generation) {
                    return None;
                }
                self.slots.remove(&addr);
                let failures = self.backoff.get(&addr).map_or(1, |(n, _)| n + 1);
                let delay = self
                    .settings
                    .min_refresh_interval
                    .saturating_mul(1 << (failures - 1).min(16))
                    .min(self.settings.refresh_interval);
                let retry_at = Instant::now() + delay;
                self.backoff.insert(addr, (failures, retry_at));
                let error = BalanceError::Connect {
                    target: self.settings.target.clone(),
                    addr,
                    source: Arc::new(error),
                };
                // Loud only when it leaves the client with no replica: a
                // listed address that refuses (a replica draining, `::1`
                // for a server on 127.0.0.1) is routine while others serve.
                if self.slots.values().any(|s| s.ready) {
                    debug!(%addr, failures, retry_in = ?delay, error = %describe_error(&error), "connecting to a replica failed");
                } else {
                    warn!(%addr, failures, retry_in = ?delay, error = %describe_error(&error), "connecting to a replica failed");
                }
                self.publish(Some(error));
                Some(retry_at)
            }
            Event::Lost(addr, generation) => {
                if !current(&self.slots, addr, generation) {
                    return None;
                }
                self.slots.remove(&addr);
                info!(%addr, "connection to a replica closed; resolving again");
                let _ = self.changes.send(Change::Remove(addr));
                self.state.send_modify(|s| s.connections_closed += 1);
                self.publish(None);
                Some(Instant::now())
            }
        }
    }

    fn publish(&self, error: Option<BalanceError>) {
        let ready = self
            .slots
            .iter()
            .filter(|(_, s)| s.ready)
            .map(|(a, _)| *a)
            .collect();
        let settled = self.slots.values().all(|s| s.ready);
        self.state.send_modify(|state| {
            state.ready = ready;
            state.settled = settled;
            if error.is_some() {
                state.last_error = error;
            }
        });
    }
}

/// Everything a connect task needs to make one replica.
struct Dial {
    addr: SocketAddr,
    generation: u64,
    endpoint: Endpoint,
    server_name: ServerName<'static>,
    tls: Arc<ArcSwap<ClientConfig>>,
    penalty: Duration,
    events: mpsc::UnboundedSender<Event>,
}

impl Dial {
    /// Connects (TCP, then mutual TLS) and completes the HTTP/2 handshake.
    async fn connect(self) -> Result<Replica, tonic::transport::Error> {
        let Dial {
            addr,
            generation,
            endpoint,
            server_name,
            tls,
            penalty,
            events,
        } = self;
        let shared = Arc::new(ReplicaShared {
            addr,
            closed: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            penalized_until: Mutex::new(None),
            penalty,
        });
        let dialed = Arc::new(AtomicBool::new(false));
        let connector = {
            let shared = shared.clone();
            tower::service_fn(move |_uri: http::Uri| {
                // tonic's channel reconnects by itself when its connection
                // is lost. Here the discovery task owns reconnecting (only
                // to an address still resolved, with its own pacing), so a
                // second dial fails at once and the request is known unsent.
                let first = !dialed.swap(true, Ordering::AcqRel);
                // The config current at connect time: a rotated client
                // certificate is used by the next connection.
                let connector = TlsConnector::from(tls.load_full());
                let server_name = server_name.clone();
                let shared = shared.clone();
                let events = events.clone();
                async move {
                    if !first {
                        shared.closed.store(true, Ordering::Release);
                        return Err::<_, BoxError>(Box::new(NotSent { addr }));
                    }
                    let tcp = TcpStream::connect(addr).await?;
                    tcp.set_nodelay(true)?;
                    let stream = connector.connect(server_name, tcp).await?;
                    let guard = LostGuard {
                        shared,
                        generation,
                        events,
                    };
                    Ok(TokioIo::new(Tracked {
                        io: stream,
                        _guard: guard,
                    }))
                }
            })
        };
        let channel = endpoint.connect_with_connector(connector).await?;
        Ok(Replica { channel, shared })
    }
}

/// Reports the connection's end when hyper drops its socket: after a
/// GOAWAY and the last stream, a reset, or an EOF.
struct LostGuard {
    shared: Arc<ReplicaShared>,
    generation: u64,
    events: mpsc::UnboundedSender<Event>,
}

impl Drop for LostGuard {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        let _ = self
            .events
            .send(Event::Lost(self.shared.addr, self.generation));
    }
}

/// A connection's stream, with the guard that reports its end.
struct Tracked<T> {
    io: T,
    _guard: LostGuard,
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units() {
        let mut h = http::HeaderMap::new();
        assert_eq!(grpc_timeout(&h), None);
        for (v, d) in [
            ("10S", Duration::from_secs(10)),
            ("250m", Duration::from_millis(250)),
            ("2M", Duration::from_secs(120)),
            ("7u", Duration::from_micros(7)),
        ] {
            h.insert("grpc-timeout", http::HeaderValue::from_static(v));
            assert_eq!(grpc_timeout(&h), Some(d), "{v}");
        }
        for bad in ["", "S", "10x", "-1S"] {
            h.insert("grpc-timeout", http::HeaderValue::from_static(bad));
            assert_eq!(grpc_timeout(&h), None, "{bad:?}");
        }
    }

    #[test]
    fn a_penalized_replica_loses_to_a_busier_one() {
        let idle_but_penalized = ReplicaLoad {
            penalized: true,
            in_flight: 0,
        };
        let busy = ReplicaLoad {
            penalized: false,
            in_flight: 50,
        };
        assert!(busy < idle_but_penalized);
    }
}
