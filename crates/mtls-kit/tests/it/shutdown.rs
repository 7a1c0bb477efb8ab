//! Graceful shutdown: in-flight RPCs finish, new connections are refused,
//! and a stuck RPC cannot hold the server past its drain deadline.

use std::time::Duration;

use crate::store::StoreClient;
use crate::store::{entry, Entry};
use mtls_kit::server::Limits;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::helpers::{spawn_server, spawn_server_with, TestPki, POLICY};

fn put(key: &str) -> Entry {
    entry(key, b"")
}

/// Upper bound for things that must happen promptly; a failure guard, not a
/// wait for readiness.
const GUARD: Duration = Duration::from_secs(20);

#[tokio::test]
async fn in_flight_rpcs_finish_after_shutdown_begins() {
    let pki = TestPki::new();
    let mut server = spawn_server(&pki, POLICY).await;
    let writer = pki.client("writer");
    let mut client = StoreClient::new(server.connect(&writer).await.unwrap());

    // A client-streaming import that stays open until we say so.
    let (tx, rx) = mpsc::channel(4);
    tx.send(put("before")).await.unwrap();
    let call = tokio::spawn(async move { client.load(ReceiverStream::new(rx)).await });
    let mut calls = server.store.watch_handler_calls();
    calls.wait_for(|&n| n >= 1).await.unwrap();

    server.begin_shutdown();
    // The listener closes at once: a new client cannot connect.
    let mut refused = false;
    for _ in 0..100 {
        if server.connect(&writer).await.is_err() {
            refused = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(
        refused,
        "new connections were still accepted during shutdown"
    );

    // The in-flight call can still finish.
    tx.send(put("during")).await.unwrap();
    drop(tx);
    let summary = tokio::time::timeout(GUARD, call)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(summary.into_inner().loaded, 2);
    tokio::time::timeout(GUARD, server.into_handle())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_stuck_rpc_does_not_hold_shutdown_past_the_drain_deadline() {
    let pki = TestPki::new();
    let limits = Limits {
        drain_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let mut server = spawn_server_with(&pki, POLICY, limits).await;
    let mut client = StoreClient::new(server.connect(&pki.client("writer")).await.unwrap());
    let (tx, rx) = mpsc::channel(4);
    tx.send(put("stuck")).await.unwrap();
    let _call = tokio::spawn(async move { client.load(ReceiverStream::new(rx)).await });
    server
        .store
        .watch_handler_calls()
        .wait_for(|&n| n >= 1)
        .await
        .unwrap();

    let started = std::time::Instant::now();
    server.begin_shutdown();
    tokio::time::timeout(GUARD, server.into_handle())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "returned before the drain deadline"
    );
    drop(tx);
}
