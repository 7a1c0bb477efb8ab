//! The generic client (`client::dynamic`): every kind of call to a served
//! method by its path, with messages as JSON, over the same mTLS and behind
//! the same authorization as generated clients.

use std::time::Duration;

use mtls_kit::client::dynamic::{self, DynamicMessage, Schema};
use mtls_kit::server::Limits;
use tonic::metadata::MetadataMap;
use tonic::Code;

use crate::helpers::{spawn_server, TestPki, POLICY};

const TIMEOUT: Duration = Duration::from_secs(10);

/// Calls `method` with `requests` (JSON), returning the replies as JSON.
async fn call(
    schema: &Schema,
    channel: tonic::transport::Channel,
    method: &str,
    requests: &[&str],
) -> Result<Vec<String>, tonic::Status> {
    let method = schema.method(method).unwrap();
    let messages: Vec<DynamicMessage> = requests
        .iter()
        .map(|r| method.request(r).unwrap())
        .collect();
    let stream = tokio_stream::iter(messages);
    let mut replies = dynamic::call(channel, &method, stream, TIMEOUT, &MetadataMap::new())
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(reply) = replies.message().await? {
        out.push(dynamic::reply_json(&reply));
    }
    Ok(out)
}

#[tokio::test]
async fn every_kind_of_call_by_path_with_json() {
    let pki = TestPki::new();
    let server = spawn_server(&pki, POLICY).await;
    let schema =
        Schema::from_encoded(server.store.services(&Limits::default()).descriptor_sets()).unwrap();
    let writer = server.connect(&pki.client("writer")).await.unwrap();

    // Unary: a write, then a read by the short name.
    let put = call(
        &schema,
        writer.clone(),
        "/kittest.v1.Store/Put",
        &[r#"{"key": "a", "value": "aGk="}"#],
    )
    .await
    .unwrap();
    assert_eq!(
        put,
        [r#"{"key":"a","value":"aGk=","writtenBy":"spiffe://example.org/writer"}"#]
    );
    let got = call(&schema, writer.clone(), "Get", &[r#"{"key": "a"}"#])
        .await
        .unwrap();
    assert_eq!(got, put);

    // Client streaming: many requests, one reply.
    let loaded = call(
        &schema,
        writer.clone(),
        "Store/Load",
        &[r#"{"key": "b1"}"#, r#"{"key": "b2"}"#],
    )
    .await
    .unwrap();
    assert_eq!(loaded, [r#"{"loaded":"2"}"#]);

    // Server streaming: one request, a stream of replies.
    let scanned = call(&schema, writer.clone(), "Scan", &[r#"{"key": "b"}"#])
        .await
        .unwrap();
    assert_eq!(scanned.len(), 2, "{scanned:?}");
    assert!(scanned[0].contains(r#""key":"b1""#), "{scanned:?}");

    // Bidi streaming: reflection lists the services.
    let listed = call(
        &schema,
        writer.clone(),
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        &[r#"{"listServices": ""}"#],
    )
    .await
    .unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert!(listed[0].contains("kittest.v1.Store"), "{listed:?}");

    // The same authorization as any client: a reader may not write.
    let reader = server.connect(&pki.client("reader")).await.unwrap();
    let denied = call(&schema, reader, "Put", &[r#"{"key": "c"}"#])
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    // Put, Get, Load and Scan reached the store; the denied Put did not.
    assert_eq!(
        server.store.handler_calls(),
        4,
        "a denied call reached a handler"
    );
}

#[tokio::test]
async fn metadata_goes_with_the_call() {
    // A policy that allows a read only with a header: the header must
    // reach the server for the call to pass.
    let policy = r#"{"name": "p", "allow_rules": [{"name": "canary-reads",
        "request": {"paths": ["/kittest.v1.Store/Get"],
                    "headers": [{"key": "x-canary", "values": ["yes"]}]}}]}"#;
    let pki = TestPki::new();
    let server = spawn_server(&pki, policy).await;
    let schema =
        Schema::from_encoded(server.store.services(&Limits::default()).descriptor_sets()).unwrap();
    let channel = server.connect(&pki.client("reader")).await.unwrap();
    let get = schema.method("Get").unwrap();
    let mut metadata = MetadataMap::new();
    let outcome = |metadata: MetadataMap| {
        let (channel, get) = (channel.clone(), get.clone());
        async move {
            let request = get.request(r#"{"key": "nothing"}"#).unwrap();
            let stream = tokio_stream::iter([request]);
            match dynamic::call(channel, &get, stream, TIMEOUT, &metadata).await {
                Ok(mut replies) => replies.get_mut().message().await.map(|_| ()),
                Err(status) => Err(status),
            }
            .map_err(|s| s.code())
        }
    };
    assert_eq!(outcome(metadata.clone()).await, Err(Code::PermissionDenied));
    metadata.insert("x-canary", "yes".parse().unwrap());
    assert_eq!(outcome(metadata).await, Err(Code::NotFound));
}
