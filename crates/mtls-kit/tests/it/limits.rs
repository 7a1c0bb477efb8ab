//! The transport limits tonic leaves unlimited are set.

use std::time::Duration;

use crate::store::entry;
use crate::store::StoreClient;
use mtls_kit::server::Limits;
use mtls_kit::tls::{self, CertifiedKeyFiles, ClientTlsOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::Code;

use crate::helpers::{client_tls, spawn_server, spawn_server_with, TestPki, POLICY};

const GUARD: Duration = Duration::from_secs(20);

#[tokio::test]
async fn a_client_that_never_completes_the_handshake_is_dropped() {
    let pki = TestPki::new();
    let limits = Limits {
        handshake_timeout: Duration::from_millis(200),
        ..Limits::default()
    };
    let server = spawn_server_with(&pki, POLICY, limits).await;
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    let mut buf = [0u8; 16];
    // Without a handshake deadline this read would wait for ever.
    let read = tokio::time::timeout(GUARD, idle.read(&mut buf))
        .await
        .expect("idle connection kept open");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
}

#[tokio::test]
async fn the_server_advertises_its_http2_limits() {
    let pki = TestPki::new();
    let server = spawn_server(&pki, POLICY).await;
    let config = client_tls(&pki, &pki.client("reader"));
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let mut stream = TlsConnector::from(config)
        .connect(tls::server_name("localhost").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    // The server's first frame is its SETTINGS.
    let mut header = [0u8; 9];
    stream.read_exact(&mut header).await.unwrap();
    assert_eq!(header[3], 0x4, "SETTINGS frame");
    let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).await.unwrap();
    let settings: Vec<(u16, u32)> = payload
        .chunks(6)
        .map(|c| {
            (
                u16::from_be_bytes([c[0], c[1]]),
                u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
            )
        })
        .collect();
    let defaults = Limits::default();
    assert!(
        settings.contains(&(0x3, defaults.max_concurrent_streams)),
        "{settings:?}"
    );
    assert!(
        settings.contains(&(0x6, defaults.max_header_list_size)),
        "{settings:?}"
    );
}

#[tokio::test]
async fn oversized_messages_are_refused() {
    let pki = TestPki::new();
    let limits = Limits {
        max_message_size: 1024,
        ..Limits::default()
    };
    let server = spawn_server_with(&pki, POLICY, limits).await;
    let mut writer = StoreClient::new(server.connect(&pki.client("writer")).await.unwrap());
    let big = entry("big", &[b'x'; 4096]);
    let status = writer.put(big).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert_eq!(server.store.handler_calls(), 0);
    let small = entry("small", &[b'x'; 100]);
    writer.put(small).await.unwrap();
}

#[tokio::test]
async fn a_client_that_sends_no_http2_preface_after_the_handshake_is_dropped() {
    let pki = TestPki::new();
    let limits = Limits {
        preface_timeout: Duration::from_millis(200),
        ..Limits::default()
    };
    let server = spawn_server_with(&pki, POLICY, limits).await;
    let cert = pki.client("writer");
    let identity =
        CertifiedKeyFiles::in_memory(vec![cert.cert_der.clone()], cert.key_der(), "client");
    let config =
        tls::client_config(&identity, &pki.anchors(), ClientTlsOptions::default()).unwrap();
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let started = std::time::Instant::now();
    let mut silent = TlsConnector::from(config)
        .connect(tls::server_name("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    // Without a preface deadline this read would wait for ever.
    let read = tokio::time::timeout(GUARD, silent.read(&mut buf))
        .await
        .expect("a connection without HTTP/2 was kept open");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(started.elapsed() >= Duration::from_millis(200));

    // A gRPC client that does speak is served by the same server.
    let mut writer = StoreClient::new(server.connect(&cert).await.unwrap());
    writer.put(entry("k", b"v")).await.unwrap();
}

#[tokio::test]
async fn a_client_whose_client_hello_does_not_arrive_is_dropped_before_the_handshake_deadline() {
    let pki = TestPki::new();
    let limits = Limits {
        client_hello_timeout: Duration::from_millis(200),
        handshake_timeout: Duration::from_secs(60),
        ..Limits::default()
    };
    let server = spawn_server_with(&pki, POLICY, limits).await;
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    // The start of a TLS record that never completes.
    slow.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00])
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(GUARD, slow.read(&mut buf))
        .await
        .expect("a connection without a ClientHello was kept open");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");

    let mut writer = StoreClient::new(server.connect(&pki.client("writer")).await.unwrap());
    writer.put(entry("k", b"v")).await.unwrap();
}
