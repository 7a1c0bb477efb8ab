//! Client-side load balancing over real servers on loopback, with a
//! resolver the tests steer: calls spread over every replica, follow the
//! resolver's answers and connections that go away, and reads (not writes)
//! are retried once on another replica.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use mtls_kit::client::balance::{BalanceSettings, BalancedChannel};
use mtls_kit::client::resolve::StaticResolver;
use mtls_kit::client::retry::{self, Idempotency};
use mtls_kit::server::Services;
use mtls_kit::testing;
use mtls_kit::tls::{self, CertifiedKeyFiles, ClientTlsOptions};
use tokio_stream::Stream;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::helpers::{spawn_server, TestPki, TestServer, POLICY};
use crate::store::pb::store_server::{Store, StoreServer};
use crate::store::{entry, ClearReply, ClearRequest, Entry, Key, LoadReply, StoreClient};

/// Upper bound for things that must happen promptly; a failure guard, not a
/// wait for readiness.
const GUARD: Duration = Duration::from_secs(20);

/// Settings that leave re-resolution to the test: no periodic refresh
/// within a test's lifetime, and a short pause after a lost connection.
fn settings(penalty: Duration) -> BalanceSettings {
    let mut s = BalanceSettings::new("localhost:1", tls::server_name("localhost").unwrap());
    s.refresh_interval = Duration::from_secs(3600);
    s.min_refresh_interval = Duration::from_millis(50);
    s.unavailable_penalty = penalty;
    s
}

async fn balanced_as(
    pki: &TestPki,
    name: &str,
    resolver: &StaticResolver,
    penalty: Duration,
) -> BalancedChannel {
    let cert = pki.client(name);
    let identity =
        CertifiedKeyFiles::in_memory(vec![cert.cert_der.clone()], cert.key_der(), "client");
    let config = tls::client_config(&identity, &pki.anchors(), ClientTlsOptions::default())
        .expect("client TLS config");
    BalancedChannel::connect(
        settings(penalty),
        resolver.clone(),
        Arc::new(ArcSwap::new(config)),
    )
    .await
    .expect("balanced connect")
}

/// Waits until the balancer's ready set is exactly `want`.
async fn wait_ready(channel: &BalancedChannel, want: &[SocketAddr]) {
    let mut state = channel.state();
    let want: std::collections::BTreeSet<_> = want.iter().copied().collect();
    tokio::time::timeout(GUARD, state.wait_for(|s| s.ready == want))
        .await
        .unwrap_or_else(|_| panic!("ready set never became {want:?}"))
        .unwrap();
}

async fn spawn_servers(pki: &TestPki, n: usize) -> Vec<TestServer> {
    let mut servers = Vec::new();
    for _ in 0..n {
        servers.push(spawn_server(pki, POLICY).await);
    }
    servers
}

fn addrs(servers: &[&TestServer]) -> Vec<SocketAddr> {
    servers.iter().map(|s| s.addr).collect()
}

fn calls(servers: &[&TestServer]) -> Vec<u64> {
    servers.iter().map(|s| s.store.handler_calls()).collect()
}

/// `n` writes, one after the other; every one must succeed.
async fn writes(client: &mut StoreClient<BalancedChannel>, n: usize) {
    for i in 0..n {
        client
            .put(entry(&format!("k{i}"), b"v"))
            .await
            .unwrap_or_else(|s| panic!("write {i} failed: {s:?}"));
    }
}

fn assert_fair(counts: &[u64], total: u64) {
    for (i, &c) in counts.iter().enumerate() {
        assert!(
            c * 5 >= total,
            "replica {i} got {c} of {total} calls (less than 20%): {counts:?}"
        );
    }
}

#[tokio::test]
async fn calls_spread_over_every_replica() {
    let pki = TestPki::new();
    let servers = spawn_servers(&pki, 3).await;
    let all: Vec<&TestServer> = servers.iter().collect();
    let resolver = StaticResolver::new(addrs(&all));
    let channel = balanced_as(&pki, "writer", &resolver, Duration::from_secs(1)).await;
    wait_ready(&channel, &addrs(&all)).await;

    writes(&mut StoreClient::new(channel), 300).await;
    let counts = calls(&all);
    assert_eq!(counts.iter().sum::<u64>(), 300);
    assert_fair(&counts, 300);
}

#[tokio::test]
async fn re_resolution_adds_a_new_replica() {
    let pki = TestPki::new();
    let servers = spawn_servers(&pki, 3).await;
    let all: Vec<&TestServer> = servers.iter().collect();
    let resolver = StaticResolver::new(addrs(&all[..2]));
    let channel = balanced_as(&pki, "writer", &resolver, Duration::from_secs(1)).await;
    wait_ready(&channel, &addrs(&all[..2])).await;
    let mut client = StoreClient::new(channel.clone());
    writes(&mut client, 30).await;
    assert_eq!(all[2].store.handler_calls(), 0);

    resolver.set(addrs(&all));
    channel.refresh();
    wait_ready(&channel, &addrs(&all)).await;
    let before = calls(&all);
    writes(&mut client, 300).await;
    let after: Vec<u64> = calls(&all)
        .iter()
        .zip(&before)
        .map(|(a, b)| a - b)
        .collect();
    assert_fair(&after, 300);
}

#[tokio::test]
async fn an_address_the_resolver_drops_gets_no_more_calls() {
    let pki = TestPki::new();
    let servers = spawn_servers(&pki, 3).await;
    let all: Vec<&TestServer> = servers.iter().collect();
    let resolver = StaticResolver::new(addrs(&all));
    let channel = balanced_as(&pki, "writer", &resolver, Duration::from_secs(1)).await;
    wait_ready(&channel, &addrs(&all)).await;
    let mut client = StoreClient::new(channel.clone());
    writes(&mut client, 30).await;

    resolver.set(addrs(&all[..2]));
    channel.refresh();
    wait_ready(&channel, &addrs(&all[..2])).await;
    let dropped = all[2].store.handler_calls();
    writes(&mut client, 100).await;
    assert_eq!(all[2].store.handler_calls(), dropped);
}

#[tokio::test]
async fn calls_continue_when_a_replica_shuts_down() {
    let pki = TestPki::new();
    let mut servers = spawn_servers(&pki, 3).await;
    let leaving = servers.pop().unwrap();
    let staying: Vec<&TestServer> = servers.iter().collect();
    let mut resolved = addrs(&staying);
    resolved.push(leaving.addr);
    // The resolver keeps listing the leaving server, as DNS does while a
    // replica drains: only the closed connection tells the client.
    let resolver = StaticResolver::new(resolved.clone());
    let channel = balanced_as(&pki, "writer", &resolver, Duration::from_secs(1)).await;
    wait_ready(&channel, &resolved).await;

    // Reads and writes keep flowing, from several tasks at once, while the
    // server drains and goes.
    let stop = Arc::new(tokio::sync::Notify::new());
    let failures = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for worker in 0..4 {
        let client = StoreClient::new(channel.clone());
        let (stop, failures, done) = (stop.clone(), failures.clone(), done.clone());
        load.push(tokio::spawn(async move {
            let stopped = stop.notified();
            tokio::pin!(stopped);
            let mut i = 0u64;
            loop {
                let key = format!("w{worker}-{i}");
                let (idem, result) = if i % 2 == 0 {
                    let out = retry::call(Idempotency::NotIdempotent, || {
                        let mut c = client.clone();
                        let e = entry(&key, b"v");
                        async move { c.put(e).await.map(|_| ()) }
                    })
                    .await;
                    ("write", out.result)
                } else {
                    let out = retry::call(Idempotency::Idempotent, || {
                        let mut c = client.clone();
                        let k = Key {
                            key: format!("w{worker}-{}", i - 1),
                        };
                        async move { c.get(k).await.map(|_| ()) }
                    })
                    .await;
                    ("read", out.result)
                };
                match result {
                    // A read may land on a replica that did not take the
                    // write before it.
                    Ok(()) => {}
                    Err(s) if s.code() == Code::NotFound => {}
                    Err(s) => {
                        eprintln!("{idem} failed: {s:?}");
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
                i += 1;
                tokio::select! {
                    biased;
                    () = &mut stopped => break,
                    () = tokio::task::yield_now() => {}
                }
            }
        }));
    }

    // Some load first, then the graceful shutdown in the middle of it.
    let mut handled = leaving.store.watch_handler_calls();
    tokio::time::timeout(GUARD, handled.wait_for(|&n| n >= 50))
        .await
        .unwrap()
        .unwrap();
    let mut leaving = leaving;
    leaving.begin_shutdown();
    tokio::time::timeout(GUARD, leaving.into_handle())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    wait_ready(&channel, &addrs(&staying)).await;
    let others_before: u64 = calls(&staying).iter().sum();
    let after_shutdown = done.load(Ordering::Relaxed);
    // And the load goes on, on the others.
    let target = after_shutdown + 200;
    tokio::time::timeout(GUARD, async {
        while done.load(Ordering::Relaxed) < target {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    stop.notify_waiters();
    for task in load {
        task.await.unwrap();
    }

    assert_eq!(failures.load(Ordering::Relaxed), 0, "failed calls");
    assert!(channel.state().borrow().connections_closed >= 1);
    // (Less the calls of the 4 workers that were in flight at the count.)
    assert!(calls(&staying).iter().sum::<u64>() >= others_before + 196);
}

/// A store whose every RPC answers UNAVAILABLE, counting the calls.
#[derive(Clone, Default)]
struct UnavailableStore {
    calls: Arc<AtomicU64>,
}

impl UnavailableStore {
    fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    fn fail<T>(&self) -> Result<T, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Err(Status::unavailable("this replica cannot serve"))
    }

    async fn spawn(&self, pki: &TestPki) -> testing::TestServer {
        let mut services = Services::new();
        services.add(StoreServer::new(self.clone()));
        testing::TestServer::spawn(pki, POLICY, services).await
    }
}

type EntryStream = Pin<Box<dyn Stream<Item = Result<Entry, Status>> + Send>>;

#[tonic::async_trait]
impl Store for UnavailableStore {
    async fn get(&self, _: Request<Key>) -> Result<Response<Entry>, Status> {
        self.fail()
    }
    async fn put(&self, _: Request<Entry>) -> Result<Response<Entry>, Status> {
        self.fail()
    }
    async fn clear(&self, _: Request<ClearRequest>) -> Result<Response<ClearReply>, Status> {
        self.fail()
    }
    type ScanStream = EntryStream;
    async fn scan(&self, _: Request<Key>) -> Result<Response<EntryStream>, Status> {
        self.fail()
    }
    async fn load(&self, _: Request<Streaming<Entry>>) -> Result<Response<LoadReply>, Status> {
        self.fail()
    }
}

async fn get(client: &StoreClient<BalancedChannel>, key: &str) -> retry::Retried<Entry> {
    retry::call(Idempotency::Idempotent, || {
        let mut client = client.clone();
        let key = Key { key: key.into() };
        async move { client.get(key).await.map(Response::into_inner) }
    })
    .await
}

async fn put(client: &StoreClient<BalancedChannel>, key: &str) -> retry::Retried<Entry> {
    retry::call(Idempotency::NotIdempotent, || {
        let mut client = client.clone();
        let e = entry(key, b"v");
        async move { client.put(e).await.map(Response::into_inner) }
    })
    .await
}

#[tokio::test]
async fn a_read_answered_unavailable_is_retried_on_another_replica() {
    let pki = TestPki::new();
    let failing = UnavailableStore::default();
    let bad = failing.spawn(&pki).await;
    let good = spawn_server(&pki, POLICY).await;
    // The key exists on the good replica only.
    StoreClient::new(good.connect(&pki.client("writer")).await.unwrap())
        .put(entry("apple", b"red"))
        .await
        .unwrap();
    let resolver = StaticResolver::new([bad.addr, good.addr]);
    // A short penalty, so the failing replica is picked again soon and the
    // retry is exercised many times.
    let channel = balanced_as(&pki, "writer", &resolver, Duration::from_millis(20)).await;
    wait_ready(&channel, &[bad.addr, good.addr]).await;
    let client = StoreClient::new(channel);

    let mut retries = 0;
    tokio::time::timeout(GUARD, async {
        while failing.calls() < 5 {
            let out = get(&client, "apple").await;
            let got = out.result.unwrap_or_else(|s| panic!("read failed: {s:?}"));
            assert_eq!(got.value, b"red");
            retries += out.retries;
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the failing replica was never picked");
    // Every read that reached the failing replica was retried once,
    // elsewhere, and succeeded.
    assert_eq!(u64::from(retries), failing.calls());
}

#[tokio::test]
async fn a_write_answered_unavailable_is_not_retried() {
    let pki = TestPki::new();
    let failing = UnavailableStore::default();
    let bad = failing.spawn(&pki).await;
    let resolver = StaticResolver::new([bad.addr]);
    let channel = balanced_as(&pki, "writer", &resolver, Duration::from_secs(1)).await;
    let client = StoreClient::new(channel);

    // The write may have been applied: one attempt only.
    let out = put(&client, "apple").await;
    assert_eq!(out.result.unwrap_err().code(), Code::Unavailable);
    assert_eq!((out.retries, failing.calls()), (0, 1));

    // A read is retried, once and no more.
    let out = get(&client, "apple").await;
    assert_eq!(out.result.unwrap_err().code(), Code::Unavailable);
    assert_eq!((out.retries, failing.calls()), (1, 3));
}

/// What a [`proxy`] does with its connections.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Link {
    /// Forwards both ways.
    Up,
    /// Forwards nothing but keeps every connection open: a network
    /// partition, as the client sees it.
    Partitioned,
    /// Closes every connection (and each new one at once): the replica's
    /// host died.
    Cut,
}

/// A TCP proxy to `target`, whose link the test controls.
async fn proxy(target: SocketAddr) -> (SocketAddr, tokio::sync::watch::Sender<Link>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (link_tx, link_rx) = tokio::sync::watch::channel(Link::Up);
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let mut link = link_rx.clone();
            tokio::spawn(async move {
                let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                    return;
                };
                let up = *link.borrow() == Link::Up;
                if up {
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => return,
                        _ = link.wait_for(|l| *l != Link::Up) => {}
                    }
                }
                // Partitioned: hold both ends, silent, until cut. Cut: return,
                // which closes both.
                let _ = link.wait_for(|l| *l == Link::Cut).await;
                drop((inbound, outbound));
            });
        }
    });
    (addr, link_tx)
}

#[tokio::test]
async fn a_replica_behind_a_partition_is_dropped_by_keepalive() {
    let pki = TestPki::new();
    let servers = spawn_servers(&pki, 2).await;
    let (proxy, link) = proxy(servers[0].addr).await;
    let resolver = StaticResolver::new([proxy, servers[1].addr]);
    let cert = pki.client("writer");
    let identity =
        CertifiedKeyFiles::in_memory(vec![cert.cert_der.clone()], cert.key_der(), "client");
    let config = tls::client_config(&identity, &pki.anchors(), ClientTlsOptions::default())
        .expect("client TLS config");
    let mut s = settings(Duration::from_secs(1));
    s.keepalive_interval = Some(Duration::from_millis(100));
    s.keepalive_timeout = Duration::from_millis(300);
    s.connect_timeout = Duration::from_millis(500);
    let channel = BalancedChannel::connect(s, resolver, Arc::new(ArcSwap::new(config)))
        .await
        .unwrap();
    wait_ready(&channel, &[proxy, servers[1].addr]).await;

    // The partitioned connection stays open but answers nothing: only an
    // unanswered PING tells, and then the replica leaves the balancer.
    link.send_replace(Link::Partitioned);
    wait_ready(&channel, &[servers[1].addr]).await;
    writes(&mut StoreClient::new(channel), 20).await;
}

/// A store whose reads and writes never finish, counting the calls.
#[derive(Clone, Default)]
struct StuckStore {
    calls: Arc<tokio::sync::watch::Sender<u64>>,
}

impl StuckStore {
    async fn stuck<T>(&self) -> Result<T, Status> {
        self.calls.send_modify(|n| *n += 1);
        std::future::pending().await
    }
}

#[tonic::async_trait]
impl Store for StuckStore {
    async fn get(&self, _: Request<Key>) -> Result<Response<Entry>, Status> {
        self.stuck().await
    }
    async fn put(&self, _: Request<Entry>) -> Result<Response<Entry>, Status> {
        self.stuck().await
    }
    async fn clear(&self, _: Request<ClearRequest>) -> Result<Response<ClearReply>, Status> {
        self.stuck().await
    }
    type ScanStream = EntryStream;
    async fn scan(&self, _: Request<Key>) -> Result<Response<EntryStream>, Status> {
        self.stuck().await
    }
    async fn load(&self, _: Request<Streaming<Entry>>) -> Result<Response<LoadReply>, Status> {
        self.stuck().await
    }
}

#[tokio::test]
async fn a_read_whose_connection_breaks_is_retried_and_a_write_is_not() {
    let pki = TestPki::new();
    let stuck = StuckStore::default();
    let mut services = Services::new();
    services.add(StoreServer::new(stuck.clone()));
    let stuck_server = testing::TestServer::spawn(&pki, POLICY, services).await;
    let (doomed, link) = proxy(stuck_server.addr).await;
    let good = spawn_server(&pki, POLICY).await;
    StoreClient::new(good.connect(&pki.client("writer")).await.unwrap())
        .put(entry("apple", b"red"))
        .await
        .unwrap();

    // A read and a write, both in flight on the doomed replica.
    let resolver = StaticResolver::new([doomed]);
    let channel = balanced_as(&pki, "writer", &resolver, Duration::from_secs(1)).await;
    let client = StoreClient::new(channel.clone());
    let read = tokio::spawn({
        let client = client.clone();
        async move { get(&client, "apple").await }
    });
    let write = tokio::spawn({
        let client = client.clone();
        async move { put(&client, "pear").await }
    });
    let mut calls = stuck.calls.subscribe();
    tokio::time::timeout(GUARD, calls.wait_for(|&n| n >= 2))
        .await
        .unwrap()
        .unwrap();

    // Another replica joins; then the doomed one's connection breaks.
    resolver.set([doomed, good.addr]);
    channel.refresh();
    wait_ready(&channel, &[doomed, good.addr]).await;
    link.send_replace(Link::Cut);

    // The read is retried, on the other replica.
    let read = tokio::time::timeout(GUARD, read).await.unwrap().unwrap();
    assert_eq!(read.retries, 1);
    assert_eq!(read.result.unwrap().value, b"red");
    // The write may have been applied: its error goes to the caller.
    let write = tokio::time::timeout(GUARD, write).await.unwrap().unwrap();
    assert_eq!(write.retries, 0);
    assert_eq!(write.result.unwrap_err().code(), Code::Unknown);
}
