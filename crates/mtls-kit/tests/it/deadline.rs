//! The client's deadline (`grpc-timeout`) is enforced by the server: a call
//! still running when it passes ends with DEADLINE_EXCEEDED from the
//! server. tonic's client enforces the deadline itself as well, so the call
//! is made with a bare HTTP/2 client that never gives up on its own.

use std::time::Duration;

use mtls_kit::tls;

use crate::helpers::{client_tls, spawn_server, TestPki, POLICY};

/// A failure guard, not a wait for readiness.
const GUARD: Duration = Duration::from_secs(20);

/// One gRPC message: uncompressed, empty (an `Entry` with no fields).
const EMPTY_MESSAGE: [u8; 5] = [0, 0, 0, 0, 0];

/// Opens a client-streaming `Load` with `grpc-timeout: timeout`, sends one
/// message and keeps the stream open; returns the `grpc-status` the server
/// ends it with, and the stream (dropping it would cancel the call).
async fn load_and_wait(
    pki: &TestPki,
    addr: std::net::SocketAddr,
    timeout: &str,
) -> (Option<String>, h2::SendStream<bytes::Bytes>) {
    let config = client_tls(pki, &pki.client("writer"));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(tls::server_name("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (client, connection) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::post("https://localhost/kittest.v1.Store/Load")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", timeout)
        .body(())
        .unwrap();
    let (response, mut send) = client.send_request(request, false).unwrap();
    send.send_data(bytes::Bytes::from_static(&EMPTY_MESSAGE), false)
        .unwrap();
    let response = response.await.unwrap();
    // A trailers-only answer carries the status in its headers; otherwise
    // it comes in the trailers after the body.
    let mut status = response.headers().get("grpc-status").cloned();
    if status.is_none() {
        let mut body = response.into_body();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            let _ = body.flow_control().release_capacity(chunk.len());
        }
        status = body
            .trailers()
            .await
            .unwrap()
            .and_then(|t| t.get("grpc-status").cloned());
    }
    let status = status.map(|s| s.to_str().unwrap().to_owned());
    (status, send)
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
