//! The client's deadline (`grpc-timeout`) is enforced by the server: a call
//! still running when it passes ends with DEADLINE_EXCEEDED from the
//! server, whatever its kind, and the handler is dropped. tonic's client
//! enforces the deadline itself as well, so the calls are made with a bare
//! HTTP/2 client that never gives up on its own; the template's tonic
//! client is run against the same server too.

use std::pin::Pin;
use std::time::Duration;

use mtls_kit::server::{Limits, Services};
use mtls_kit::{testing, tls};
use tokio::sync::watch;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::helpers::{client_tls, spawn_server, spawn_server_with, TestPki, POLICY};
use crate::store::pb::store_server::{Store, StoreServer};
use crate::store::pb::{self, ClearReply, ClearRequest, Entry, Key, LoadReply};
use crate::store::StoreClient;

/// A failure guard, not a wait for readiness.
const GUARD: Duration = Duration::from_secs(20);

/// One gRPC message: uncompressed, empty (an `Entry` with no fields).
pub(crate) const EMPTY_MESSAGE: [u8; 5] = [0, 0, 0, 0, 0];

/// Opens a client-streaming `Load` with `grpc-timeout: timeout`, sends one
/// message and keeps the stream open (see [`call_and_wait`]).
async fn load_and_wait(
    pki: &TestPki,
    addr: std::net::SocketAddr,
    timeout: &str,
) -> (Option<String>, h2::SendStream<bytes::Bytes>) {
    let (ended, open) = call_and_wait(
        pki,
        addr,
        "writer",
        "/kittest.v1.Store/Load",
        timeout,
        &[&EMPTY_MESSAGE],
        false,
    )
    .await;
    (ended.status, open)
}

#[tokio::test]
async fn a_call_past_its_deadline_is_ended_by_the_server() {
    let pki = TestPki::new();
    let server = spawn_server(&pki, POLICY).await;
    let (status, _open) = tokio::time::timeout(GUARD, load_and_wait(&pki, server.addr, "200m"))
        .await
        .expect("the server did not end the call at its deadline");
    // 4 is DEADLINE_EXCEEDED.
    assert_eq!(status.as_deref(), Some("4"));
}

#[tokio::test]
async fn a_call_within_its_deadline_is_not_ended() {
    let pki = TestPki::new();
    let server = spawn_server(&pki, POLICY).await;
    // Still open (no answer) well after a deadline an hour away could
    // matter: the server waits for the client's stream.
    let waited = tokio::time::timeout(
        Duration::from_millis(500),
        load_and_wait(&pki, server.addr, "1H"),
    )
    .await;
    assert!(
        waited.is_err(),
        "the call ended early: {:?}",
        waited.map(|w| w.0)
    );
}

/// A store whose `Scan` sends an entry every 50 ms and never ends, and
/// counts its reply streams alive, so a test can see them dropped. Its
/// other methods are not used here.
#[derive(Clone)]
struct EndlessScan {
    alive: watch::Sender<u32>,
}

/// Counts one reply stream alive until dropped.
struct Alive(watch::Sender<u32>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

type EntryStream = Pin<Box<dyn Stream<Item = Result<Entry, Status>> + Send>>;

#[tonic::async_trait]
impl Store for EndlessScan {
    async fn get(&self, _: Request<Key>) -> Result<Response<Entry>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
    async fn put(&self, _: Request<Entry>) -> Result<Response<Entry>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
    async fn clear(&self, _: Request<ClearRequest>) -> Result<Response<ClearReply>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    type ScanStream = EntryStream;

    async fn scan(&self, _: Request<Key>) -> Result<Response<EntryStream>, Status> {
        self.alive.send_modify(|n| *n += 1);
        let alive = Alive(self.alive.clone());
        let ticks = tokio::time::interval(Duration::from_millis(50));
        let stream = futures_util::stream::unfold((ticks, alive), |(mut ticks, alive)| async {
            ticks.tick().await;
            Some((Ok(Entry::default()), (ticks, alive)))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn load(&self, _: Request<Streaming<Entry>>) -> Result<Response<LoadReply>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
}

/// A server of [`EndlessScan`]; returns it and its count of live streams.
async fn endless_server(pki: &TestPki) -> (testing::TestServer, watch::Receiver<u32>) {
    let (alive, count) = watch::channel(0);
    let mut services = Services::new();
    services
        .file_descriptor_set(pb::DESCRIPTOR_SET)
        .add(StoreServer::new(EndlessScan { alive }));
    let server = testing::TestServer::spawn(pki, POLICY, services).await;
    (server, count)
}

/// The outcome of a bare HTTP/2 call.
pub(crate) struct Ended {
    /// `grpc-status`, from the headers (trailers-only) or the trailers.
    pub(crate) status: Option<String>,
    /// Bytes of reply messages received before the end.
    reply_bytes: usize,
}

/// Calls `path` as `identity` over a bare HTTP/2 client with
/// `grpc-timeout: timeout`, sends `messages`, and ends the request stream
/// only if `close`; returns how the server ended the call, and the stream
/// (dropping it would cancel the call).
pub(crate) async fn call_and_wait(
    pki: &TestPki,
    addr: std::net::SocketAddr,
    identity: &str,
    path: &str,
    timeout: &str,
    messages: &[&'static [u8]],
    close: bool,
) -> (Ended, h2::SendStream<bytes::Bytes>) {
    let config = client_tls(pki, &pki.client(identity));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(tls::server_name("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (client, connection) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::post(format!("https://localhost{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", timeout)
        .body(())
        .unwrap();
    let (response, mut send) = client.send_request(request, false).unwrap();
    for (i, m) in messages.iter().enumerate() {
        let last = close && i + 1 == messages.len();
        send.send_data(bytes::Bytes::from_static(m), last).unwrap();
    }
    let response = response.await.unwrap();
    let mut status = response.headers().get("grpc-status").cloned();
    let mut reply_bytes = 0;
    if status.is_none() {
        let mut body = response.into_body();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            reply_bytes += chunk.len();
            let _ = body.flow_control().release_capacity(chunk.len());
        }
        status = body
            .trailers()
            .await
            .unwrap()
            .and_then(|t| t.get("grpc-status").cloned());
    }
    let status = status.map(|s| s.to_str().unwrap().to_owned());
    (
        Ended {
            status,
            reply_bytes,
        },
        send,
    )
}

#[tokio::test]
async fn a_server_stream_is_ended_at_its_deadline_and_its_handler_dropped() {
    let pki = TestPki::new();
    let (server, mut alive) = endless_server(&pki).await;
    let (ended, _open) = tokio::time::timeout(
        GUARD,
        // A server-streaming client ends its request after the one message.
        call_and_wait(
            &pki,
            server.addr,
            "reader",
            "/kittest.v1.Store/Scan",
            "300m",
            &[&EMPTY_MESSAGE],
            true,
        ),
    )
    .await
    .expect("the server did not end the stream at its deadline");
    // The stream ran (entries came), then the deadline ended it.
    assert!(ended.reply_bytes > 0, "no entry before the deadline");
    assert_eq!(ended.status.as_deref(), Some("4"));
    // The handler's stream is dropped, not left running.
    tokio::time::timeout(GUARD, alive.wait_for(|n| *n == 0))
        .await
        .expect("the handler's stream outlived its call")
        .unwrap();
    // And the call is counted as what it was.
    let scraped = server.scrape().await;
    let exceeded = scraped.sum(
        "grpc_server_handled_total",
        &[("grpc_method", "Scan"), ("grpc_code", "DEADLINE_EXCEEDED")],
    );
    assert_eq!(exceeded, 1.0, "{scraped:#?}");
}

#[tokio::test]
async fn a_bidi_stream_with_its_request_open_is_ended_at_its_deadline() {
    let pki = TestPki::new();
    let server = spawn_server(&pki, POLICY).await;
    // Reflection answers each request and waits for the next one: with the
    // request stream left open, only the deadline ends the call. The
    // request: list_services (field 7) = "".
    const LIST_SERVICES: [u8; 7] = [0, 0, 0, 0, 2, 0x3a, 0];
    let (ended, _open) = tokio::time::timeout(
        GUARD,
        call_and_wait(
            &pki,
            server.addr,
            "reader",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "300m",
            &[&LIST_SERVICES],
            false,
        ),
    )
    .await
    .expect("the server did not end the bidi stream at its deadline");
    assert!(ended.reply_bytes > 0, "no answer before the deadline");
    assert_eq!(ended.status.as_deref(), Some("4"));
}

#[tokio::test]
async fn a_deadline_answer_is_not_held_for_the_rest_of_the_request() {
    // Early answers wait for the rest of the request body (see settle.rs);
    // here that wait is far longer than the guard, so only an answer that
    // is not held can arrive in time.
    let pki = TestPki::new();
    let limits = Limits {
        early_answer_wait: Duration::from_secs(600),
        ..Limits::default()
    };
    let server = spawn_server_with(&pki, POLICY, limits).await;
    let (ended, _open) = tokio::time::timeout(
        GUARD,
        call_and_wait(
            &pki,
            server.addr,
            "writer",
            "/kittest.v1.Store/Load",
            "200m",
            &[&EMPTY_MESSAGE],
            false,
        ),
    )
    .await
    .expect("the deadline's answer was held back");
    assert_eq!(ended.status.as_deref(), Some("4"));
}

#[tokio::test]
async fn the_template_client_sees_a_stream_end_at_its_deadline() {
    let pki = TestPki::new();
    let (server, mut alive) = endless_server(&pki).await;
    let channel = server.connect(&pki.client("reader")).await.unwrap();
    let mut request = Request::new(Key::default());
    request.set_timeout(Duration::from_millis(300));
    let mut stream = StoreClient::new(channel)
        .scan(request)
        .await
        .unwrap()
        .into_inner();
    let ended = tokio::time::timeout(GUARD, async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(status) => return Some(status.code()),
            }
        }
    })
    .await
    .expect("the stream did not end");
    assert_eq!(ended, Some(tonic::Code::DeadlineExceeded));
    tokio::time::timeout(GUARD, alive.wait_for(|n| *n == 0))
        .await
        .expect("the handler's stream outlived its call")
        .unwrap();
}
