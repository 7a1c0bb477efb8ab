//! Per-RPC authorization from the verified client certificate.

use http::uri::PathAndQuery;
use mtls_template::proto::inventory_client::InventoryClient;
use mtls_template::proto::{GetItemRequest, Item, ListItemsRequest, PurgeRequest, PutItemRequest};
use tonic::Code;

use crate::helpers::{spawn_server, TestPki, POLICY};

fn put(sku: &str, quantity: i64) -> PutItemRequest {
    PutItemRequest {
        item: Some(Item {
            sku: sku.into(),
            name: format!("item {sku}"),
            quantity,
            ..Default::default()
        }),
    }
}

#[tokio::test]
async fn allowed_identities_succeed_on_every_kind_of_rpc() {
    let pki = TestPki::new();
    let server = spawn_server(&pki, POLICY).await;
    let mut writer = InventoryClient::new(server.connect(&pki.client("writer")).await.unwrap());
    let mut reader = InventoryClient::new(server.connect(&pki.client("reader")).await.unwrap());
    let mut admin = InventoryClient::new(server.connect(&pki.client("admin")).await.unwrap());

    // Unary write; the handler sees the caller's verified identity.
    let stored = writer.put_item(put("a-1", 3)).await.unwrap().into_inner();
    assert_eq!(stored.updated_by, "spiffe://example.org/writer");

    // Client streaming.
    let batch = tokio_stream::iter(vec![put("a-2", 1), put("b-1", 2)]);
    assert_eq!(
        writer
            .import_items(batch)
            .await
            .unwrap()
            .into_inner()
            .imported,
        2
    );

    // Unary read.
    let got = reader
        .get_item(GetItemRequest { sku: "a-1".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((got.sku.as_str(), got.quantity), ("a-1", 3));

    // Server streaming.
    let mut stream = reader
        .list_items(ListItemsRequest {
            sku_prefix: "a-".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut skus = Vec::new();
    while let Some(item) = stream.message().await.unwrap() {
        skus.push(item.sku);
    }
    assert_eq!(skus, ["a-1", "a-2"]);

    // Admin-only.
    assert_eq!(
        admin
            .purge(PurgeRequest {})
            .await
            .unwrap()
            .into_inner()
            .removed,
        3
    );
    assert_eq!(server.inventory.handler_calls(), 5);
}

#[tokio::test]
async fn unauthorized_identities_get_permission_denied_and_no_handler_runs() {
    let pki = TestPki::new();
    let server = spawn_server(&pki, POLICY).await;
    let mut reader = InventoryClient::new(server.connect(&pki.client("reader")).await.unwrap());
    let mut writer = InventoryClient::new(server.connect(&pki.client("writer")).await.unwrap());
    let mut outsider = InventoryClient::new(server.connect(&pki.client("outsider")).await.unwrap());
    // A certificate from the right CA for an identity the policy never names.
    let mut stranger = InventoryClient::new(server.connect(&pki.client("stranger")).await.unwrap());

    let denials = [
        reader.put_item(put("x", 1)).await.unwrap_err(),
        reader
            .import_items(tokio_stream::iter(vec![put("y", 1)]))
            .await
            .unwrap_err(),
        writer.purge(PurgeRequest {}).await.unwrap_err(),
        outsider
            .get_item(GetItemRequest { sku: "x".into() })
            .await
            .unwrap_err(),
        outsider
            .list_items(ListItemsRequest::default())
            .await
            .unwrap_err(),
        stranger
            .get_item(GetItemRequest { sku: "x".into() })
            .await
            .unwrap_err(),
    ];
    for status in &denials {
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        // Nothing about the policy leaks to the caller.
        assert_eq!(
            status.message(),
            "permission denied by authorization policy"
        );
    }
    assert_eq!(
        server.inventory.handler_calls(),
        0,
        "a denied call reached a handler"
    );

    // The same connection still works for what the identity may do.
    let status = reader
        .get_item(GetItemRequest { sku: "x".into() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(server.inventory.handler_calls(), 1);
}

/// Calls a method by raw path, as a client generated from another proto
/// version might.
async fn call_path(channel: tonic::transport::Channel, path: &'static str) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<GetItemRequest, Item>::default();
    grpc.unary(
        tonic::Request::new(GetItemRequest::default()),
        PathAndQuery::from_static(path),
        codec,
    )
    .await
    .unwrap_err()
}

#[tokio::test]
async fn allowed_calls_to_missing_methods_are_unimplemented_and_denied_ones_permission_denied() {
    let pki = TestPki::new();
    let policy = r#"{"name": "p", "allow_rules": [
        {"name": "admin-anything", "source": {"principals": ["spiffe://example.org/admin"]}}
    ]}"#;
    let server = spawn_server(&pki, policy).await;
    let admin = server.connect(&pki.client("admin")).await.unwrap();
    let reader = server.connect(&pki.client("reader")).await.unwrap();

    let status = call_path(admin.clone(), "/inventory.v1.Inventory/NoSuchMethod").await;
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    let status = call_path(admin, "/no.such.v1.Service/Method").await;
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    // Authorization runs before routing: a denied caller learns nothing
    // about which methods exist.
    let status = call_path(reader, "/inventory.v1.Inventory/NoSuchMethod").await;
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(server.inventory.handler_calls(), 0);
}

#[tokio::test]
async fn header_rules_see_request_metadata_but_identity_ignores_it() {
    let pki = TestPki::new();
    let policy = r#"{"name": "p",
        "deny_rules": [{"name": "no-canary-writes", "request": {"paths": ["/inventory.v1.Inventory/PutItem"],
            "headers": [{"key": "x-canary", "values": ["*"]}]}}],
        "allow_rules": [{"name": "writer", "source": {"principals": ["spiffe://example.org/writer"]}}]}"#;
    let server = spawn_server(&pki, policy).await;
    let mut writer = InventoryClient::new(server.connect(&pki.client("writer")).await.unwrap());
    let mut reader = InventoryClient::new(server.connect(&pki.client("reader")).await.unwrap());

    let mut canary = tonic::Request::new(put("c", 1));
    canary
        .metadata_mut()
        .insert("x-canary", "1".parse().unwrap());
    assert_eq!(
        writer.put_item(canary).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    writer.put_item(put("c", 1)).await.unwrap();

    // Claiming another identity in metadata changes nothing.
    let mut spoof = tonic::Request::new(GetItemRequest { sku: "c".into() });
    for (k, v) in [
        ("x-spiffe-id", "spiffe://example.org/writer"),
        ("x-forwarded-client-cert", "URI=spiffe://example.org/writer"),
        ("authorization", "Bearer writer"),
    ] {
        spoof.metadata_mut().insert(k, v.parse().unwrap());
    }
    assert_eq!(
        reader.get_item(spoof).await.unwrap_err().code(),
        Code::PermissionDenied
    );
}
