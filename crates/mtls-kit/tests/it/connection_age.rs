//! Connections are closed gracefully near their own, jittered, maximum
//! age, so that clients that connected together do not reconnect together.

use std::time::{Duration, Instant};

use mtls_kit::server::Limits;
use mtls_kit::tls::{self, CertifiedKeyFiles, ClientTlsOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::helpers::{spawn_server_with, TestPki, POLICY};
use crate::store::{entry, StoreClient};

const AGE: Duration = Duration::from_millis(1000);

/// Opens an HTTP/2 connection by hand and returns how long after it was
/// made the server sent GOAWAY, with its error code.
async fn time_to_goaway(pki: &TestPki, addr: std::net::SocketAddr) -> (Duration, u32) {
    let cert = pki.client("writer");
    let identity =
        CertifiedKeyFiles::in_memory(vec![cert.cert_der.clone()], cert.key_der(), "client");
    let config =
        tls::client_config(&identity, &pki.anchors(), ClientTlsOptions::default()).unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    let mut h2 = TlsConnector::from(config)
        .connect(tls::server_name("localhost").unwrap(), tcp)
        .await
        .unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    loop {
        let mut header = [0u8; 9];
        h2.read_exact(&mut header)
            .await
            .expect("closed without GOAWAY");
        let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let mut payload = vec![0u8; len];
        h2.read_exact(&mut payload).await.unwrap();
        if header[3] == 0x7 {
            let code = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
            return (started.elapsed(), code);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_get_a_graceful_goaway_near_their_jittered_age() {
    let pki = TestPki::new();
    let limits = Limits {
        max_connection_age: AGE,
        max_connection_age_jitter: 0.1,
        max_connection_age_grace: Duration::from_secs(1),
        ..Limits::default()
    };
    let server = spawn_server_with(&pki, POLICY, limits).await;
    let mut writer = StoreClient::new(server.connect(&pki.client("writer")).await.unwrap());
    writer.put(entry("before", b"v")).await.unwrap();

    let guard = Duration::from_secs(20);
    let goaways = tokio::time::timeout(
        guard,
        futures_util::future::join_all((0..6).map(|_| time_to_goaway(&pki, server.addr))),
    )
    .await
    .expect("no GOAWAY");
    println!("GOAWAY after {goaways:?}");
    for (after, code) in &goaways {
        assert_eq!(*code, 0, "GOAWAY(NO_ERROR): a graceful close");
        // 0.9 to 1.1 times the age, plus scheduling slack on a busy machine.
        assert!(*after >= AGE.mul_f64(0.9), "{goaways:?}");
        assert!(
            *after <= AGE.mul_f64(1.1) + Duration::from_millis(400),
            "{goaways:?}"
        );
    }

    // The tonic client's connection aged out too; it reconnects unaided.
    writer.put(entry("after", b"v")).await.unwrap();
}

/// Past its age a connection closes gracefully: an RPC in flight may still
/// finish within the grace period; one still open after it is cut off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_rpcs_get_the_grace_period_and_no_more() {
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::ReceiverStream;

    let pki = TestPki::new();
    let age = Duration::from_millis(300);
    let grace = Duration::from_millis(700);
    let limits = Limits {
        max_connection_age: age,
        max_connection_age_jitter: 0.0,
        max_connection_age_grace: grace,
        ..Limits::default()
    };
    let server = spawn_server_with(&pki, POLICY, limits).await;
    let started = Instant::now();
    let channel = server.connect(&pki.client("writer")).await.unwrap();

    // Two client-streaming loads open across the connection's age.
    let (finishing_tx, finishing_rx) = mpsc::channel(4);
    let (stuck_tx, stuck_rx) = mpsc::channel(4);
    finishing_tx.send(entry("a", b"v")).await.unwrap();
    stuck_tx.send(entry("b", b"v")).await.unwrap();
    let mut client = StoreClient::new(channel.clone());
    let finishing =
        tokio::spawn(async move { client.load(ReceiverStream::new(finishing_rx)).await });
    let mut client = StoreClient::new(channel);
    let stuck = tokio::spawn(async move { client.load(ReceiverStream::new(stuck_rx)).await });

    // Into the grace period (time passing is the point here, not readiness).
    tokio::time::sleep_until((started + age + grace / 3).into()).await;
    finishing_tx.send(entry("c", b"v")).await.unwrap();
    drop(finishing_tx);
    let guard = Duration::from_secs(20);
    let loaded = tokio::time::timeout(guard, finishing)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(loaded.unwrap().into_inner().loaded, 2, "finished in grace");

    let cut = tokio::time::timeout(guard, stuck).await.unwrap().unwrap();
    let after = started.elapsed();
    assert!(cut.is_err(), "{cut:?}");
    assert!(
        after >= age + grace,
        "cut off before the grace ended: {after:?}"
    );
    drop(stuck_tx);
}
