//! The optional `x-replica` response header: every response of a server
//! given a replica name carries it (denials and health included), and a
//! server without one sends none.

use mtls_kit::replica::replica_of;
use mtls_kit::server::Limits;
use mtls_kit::testing;
use tonic::Code;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::helpers::{spawn_server, TestPki, TestStore, POLICY};
use crate::store::{entry, StoreClient};

#[tokio::test]
async fn every_response_names_the_replica() {
    let pki = TestPki::new();
    let mut services = TestStore::default().services(&Limits::default());
    services.replica_name(Some("replica-a")).unwrap();
    let server = testing::TestServer::spawn(&pki, POLICY, services).await;

    let channel = server.connect(&pki.client("writer")).await.unwrap();
    let reply = StoreClient::new(channel.clone())
        .put(entry("k", b"v"))
        .await
        .unwrap();
    assert_eq!(replica_of(reply.metadata()), Some("replica-a"));

    let health = HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .unwrap();
    assert_eq!(replica_of(health.metadata()), Some("replica-a"));

    // A denial is answered by the same replica, and says so.
    let outsider = server.connect(&pki.client("outsider")).await.unwrap();
    let denied = StoreClient::new(outsider)
        .put(entry("k", b"v"))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert_eq!(replica_of(denied.metadata()), Some("replica-a"));
}

#[tokio::test]
async fn without_a_name_there_is_no_header() {
    let pki = TestPki::new();
    let server = spawn_server(&pki, POLICY).await;
    let channel = server.connect(&pki.client("writer")).await.unwrap();
    let reply = StoreClient::new(channel)
        .put(entry("k", b"v"))
        .await
        .unwrap();
    assert_eq!(replica_of(reply.metadata()), None);
}
