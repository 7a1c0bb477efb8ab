//! Answers the server gives before it has read the request body (a denial,
//! UNIMPLEMENTED for an unknown method or service) must not count against
//! HTTP/2's local-reset limit: they are not abuse, and past that limit h2
//! closes the connection and every RPC in flight on it fails
//! (hyperium/h2#856). Measured with the kit's own tonic client, which
//! writes the body after the headers and so races an early answer.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::uri::PathAndQuery;
use mtls_kit::server::Limits;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use crate::helpers::{spawn_server_with, TestPki};
use crate::store::{entry, Entry};

/// The writer may write, and may call two paths the server does not serve
/// (so that they reach the router); it may not read.
const POLICY: &str = r#"{
  "name": "early-answers",
  "allow_rules": [{
    "name": "writer",
    "source": { "principals": ["spiffe://example.org/writer"] },
    "request": { "paths": ["/kittest.v1.Store/Put", "/kittest.v1.Store/Missing", "/kittest.v1.Gone/*"] }
  }]
}"#;

/// What a call was, and the status it must end with.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    /// Put: allowed, must succeed.
    Allowed,
    /// Get: denied by the policy.
    Denied,
    /// A method the Store service does not have.
    UnknownMethod,
    /// A service the server does not have.
    UnknownService,
}

impl Kind {
    fn path(self) -> &'static str {
        match self {
            Kind::Allowed => "/kittest.v1.Store/Put",
            Kind::Denied => "/kittest.v1.Store/Get",
            Kind::UnknownMethod => "/kittest.v1.Store/Missing",
            Kind::UnknownService => "/kittest.v1.Gone/Get",
        }
    }
    fn expected(self) -> Code {
        match self {
            Kind::Allowed => Code::Ok,
            Kind::Denied => Code::PermissionDenied,
            Kind::UnknownMethod | Kind::UnknownService => Code::Unimplemented,
        }
    }
}

/// How long a "late" body trails its headers: a slow network between the
/// client's HEADERS and DATA frames, which makes an early answer certain.
const LATE: Duration = Duration::from_millis(3);

/// One call on `kind`'s path whose request body is one 2 KiB message, sent
/// `LATE` after the headers if `late`. On the wire this is a unary call
/// (tonic's client-streaming API only lets the test delay the body).
async fn call(channel: Channel, kind: Kind, late: bool) -> Result<(), Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let body = futures_util::stream::once(async move {
        if late {
            tokio::time::sleep(LATE).await;
        }
        entry("key", &[b'v'; 2048])
    });
    grpc.client_streaming::<_, Entry, Entry, _>(
        Request::new(body),
        PathAndQuery::from_static(kind.path()),
        tonic_prost::ProstCodec::default(),
    )
    .await
    .map(|_| ())
}

#[derive(Debug, Default)]
pub struct Counts {
    /// Calls that ended with the status their kind expects.
    pub expected: usize,
    /// Calls that ended otherwise: the connection failed under them.
    pub transport_errors: usize,
    /// Allowed calls that did not succeed.
    pub allowed_failed: usize,
    pub total: usize,
}

/// Runs `kinds` round-robin on one channel, `in_flight` at a time, until
/// `calls` are done or `budget` has passed.
pub async fn hammer(
    channel: Channel,
    kinds: &'static [(Kind, bool)],
    in_flight: usize,
    calls: usize,
    budget: Duration,
) -> Counts {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..in_flight)
        .map(|_| {
            let channel = channel.clone();
            let next = next.clone();
            tokio::spawn(async move {
                let mut counts = Counts::default();
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= calls || start.elapsed() >= budget {
                        return counts;
                    }
                    let (kind, late) = kinds[n % kinds.len()];
                    let code = match call(channel.clone(), kind, late).await {
                        Ok(()) => Code::Ok,
                        Err(status) => status.code(),
                    };
                    counts.total += 1;
                    if code == kind.expected() {
                        counts.expected += 1;
                    } else {
                        counts.transport_errors += 1;
                        if matches!(kind, Kind::Allowed) {
                            counts.allowed_failed += 1;
                        }
                    }
                }
            })
        })
        .collect();
    let mut sum = Counts::default();
    for w in workers {
        let c = w.await.unwrap();
        sum.expected += c.expected;
        sum.transport_errors += c.transport_errors;
        sum.allowed_failed += c.allowed_failed;
        sum.total += c.total;
    }
    sum
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_and_unknown_calls_never_break_the_connection() {
    let pki = TestPki::new();
    let server = spawn_server_with(&pki, POLICY, Limits::default()).await;
    let channel = server.connect(&pki.client("writer")).await.unwrap();
    const MIX: &[(Kind, bool)] = &[
        (Kind::Denied, false),
        (Kind::Allowed, false),
        (Kind::UnknownMethod, false),
        (Kind::Denied, true),
        (Kind::UnknownService, false),
        (Kind::Allowed, true),
        (Kind::UnknownMethod, true),
        (Kind::UnknownService, true),
    ];
    // Far past the 256 local resets a connection may cause.
    let counts = hammer(channel, MIX, 16, 4000, Duration::from_secs(120)).await;
    assert_eq!(counts.total, 4000, "{counts:?}");
    assert_eq!(counts.transport_errors, 0, "{counts:?}");
    assert_eq!(counts.allowed_failed, 0, "{counts:?}");
}

/// The measurement behind the test above: 3 s of each kind of early answer
/// on one connection, 16 in flight, printing how many calls failed with a
/// transport error instead of their status. Run with
/// `cargo test -p mtls-kit --test it early_answers::measure -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; prints counts"]
async fn measure_transport_errors_from_early_answers() {
    let pki = TestPki::new();
    let server = spawn_server_with(&pki, POLICY, Limits::default()).await;
    for (name, kinds) in [
        ("allowed", &[(Kind::Allowed, false)][..]),
        ("denied", &[(Kind::Denied, false)][..]),
        ("denied, late body", &[(Kind::Denied, true)][..]),
        ("unknown method", &[(Kind::UnknownMethod, false)][..]),
        ("unknown, late body", &[(Kind::UnknownMethod, true)][..]),
        (
            "denied + allowed",
            &[(Kind::Denied, true), (Kind::Allowed, false)][..],
        ),
    ] {
        let channel = server.connect(&pki.client("writer")).await.unwrap();
        let counts = hammer(channel, kinds, 16, usize::MAX, Duration::from_secs(3)).await;
        println!(
            "{name:>18}: {} calls in 3 s, {} transport errors, {} allowed calls failed",
            counts.total, counts.transport_errors, counts.allowed_failed
        );
    }
}

/// HPACK "literal header field without indexing, new name", no Huffman:
/// enough to write request headers by hand.
fn literal(block: &mut Vec<u8>, name: &str, value: &str) {
    block.push(0x00);
    block.push(name.len() as u8);
    block.extend_from_slice(name.as_bytes());
    block.push(value.len() as u8);
    block.extend_from_slice(value.as_bytes());
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The reset limit still protects the server: a peer that makes it reset
/// streams for real protocol errors (here malformed requests: a
/// connection-specific header, which HTTP/2 forbids) gets GOAWAY(ENHANCE_YOUR_CALM), while
/// a tonic client on another connection is served throughout.
#[tokio::test]
async fn a_peer_provoking_stream_errors_is_still_disconnected() {
    use crate::helpers::client_tls;
    use mtls_kit::tls;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let pki = TestPki::new();
    let limits = Limits {
        max_local_error_reset_streams: 16,
        ..Limits::default()
    };
    let server = spawn_server_with(&pki, POLICY, limits).await;
    let good = server.connect(&pki.client("writer")).await.unwrap();

    let config = client_tls(&pki, &pki.client("writer"));
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut h2 = tokio_rustls::TlsConnector::from(config)
        .connect(tls::server_name("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    let mut block = Vec::new();
    for (name, value) in [
        (":method", "POST"),
        (":scheme", "https"),
        (":path", "/kittest.v1.Store/Put"),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("connection", "close"),
    ] {
        literal(&mut block, name, value);
    }
    for i in 0..40u32 {
        let stream = 2 * i + 1;
        out.extend(frame(0x1, 0x4 | 0x1, stream, &block));
    }
    h2.write_all(&out).await.unwrap();

    let goaway = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let mut header = [0u8; 9];
            if h2.read_exact(&mut header).await.is_err() {
                return None;
            }
            let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
            let mut payload = vec![0u8; len];
            h2.read_exact(&mut payload).await.ok()?;
            if header[3] == 0x7 {
                return Some(u32::from_be_bytes([
                    payload[4], payload[5], payload[6], payload[7],
                ]));
            }
        }
    })
    .await
    .expect("the server kept a misbehaving connection open");
    assert_eq!(goaway, Some(0xb), "GOAWAY(ENHANCE_YOUR_CALM)");

    // The well-behaved client on its own connection is unaffected.
    call(good, Kind::Allowed, false).await.unwrap();
}
