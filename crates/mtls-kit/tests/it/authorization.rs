//! Per-RPC authorization from the verified client certificate.

use crate::store::StoreClient;
use crate::store::{call_path, entry, ClearRequest, Entry, Key};

use tonic::Code;

use crate::helpers::{spawn_server, TestPki, POLICY};

fn put(key: &str, value: u8) -> Entry {
    entry(key, &[value])
}

#[tokio::test]
async fn allowed_identities_succeed_on_every_kind_of_rpc() {
    let pki = TestPki::new();
    let server = spawn_server(&pki, POLICY).await;
    let mut writer = StoreClient::new(server.connect(&pki.client("writer")).await.unwrap());
    let mut reader = StoreClient::new(server.connect(&pki.client("reader")).await.unwrap());
    let mut admin = StoreClient::new(server.connect(&pki.client("admin")).await.unwrap());

    // Unary write; the handler sees the caller's verified identity.
    let stored = writer.put(put("a-1", 3)).await.unwrap().into_inner();
    assert_eq!(stored.written_by, "spiffe://example.org/writer");

    // Client streaming.
    let batch = tokio_stream::iter(vec![put("a-2", 1), put("b-1", 2)]);
    assert_eq!(writer.load(batch).await.unwrap().into_inner().loaded, 2);

    // Unary read.
    let got = reader
        .get(Key { key: "a-1".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((got.key.as_str(), got.value.as_slice()), ("a-1", &[3][..]));

    // Server streaming.
    let mut stream = reader
        .scan(Key { key: "a-".into() })
        .await
        .unwrap()
        .into_inner();
    let mut keys = Vec::new();
    while let Some(found) = stream.message().await.unwrap() {
        keys.push(found.key);
    }
    assert_eq!(keys, ["a-1", "a-2"]);

    // Admin-only.
    assert_eq!(
        admin
            .clear(ClearRequest {})
            .await
            .unwrap()
            .into_inner()
            .removed,
        3
    );
    assert_eq!(server.store.handler_calls(), 5);
}

#[tokio::test]
async fn unauthorized_identities_get_permission_denied_and_no_handler_runs() {
    let pki = TestPki::new();
    let server = spawn_server(&pki, POLICY).await;
    let mut reader = StoreClient::new(server.connect(&pki.client("reader")).await.unwrap());
    let mut writer = StoreClient::new(server.connect(&pki.client("writer")).await.unwrap());
    let mut outsider = StoreClient::new(server.connect(&pki.client("outsider")).await.unwrap());
    // A certificate from the right CA for an identity the policy never names.
    let mut stranger = StoreClient::new(server.connect(&pki.client("stranger")).await.unwrap());

    let denials = [
        reader.put(put("x", 1)).await.unwrap_err(),
        reader
            .load(tokio_stream::iter(vec![put("y", 1)]))
            .await
            .unwrap_err(),
        writer.clear(ClearRequest {}).await.unwrap_err(),
        outsider.get(Key { key: "x".into() }).await.unwrap_err(),
        outsider.scan(Key::default()).await.unwrap_err(),
        stranger.get(Key { key: "x".into() }).await.unwrap_err(),
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
        server.store.handler_calls(),
        0,
        "a denied call reached a handler"
    );

    // The same connection still works for what the identity may do.
    let status = reader.get(Key { key: "x".into() }).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(server.store.handler_calls(), 1);
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

    let status = call_path(admin.clone(), "/kittest.v1.Store/NoSuchMethod").await;
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    let status = call_path(admin, "/no.such.v1.Service/Method").await;
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    // Authorization runs before routing: a denied caller learns nothing
    // about which methods exist.
    let status = call_path(reader, "/kittest.v1.Store/NoSuchMethod").await;
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(server.store.handler_calls(), 0);
}

#[tokio::test]
async fn header_rules_see_request_metadata_but_identity_ignores_it() {
    let pki = TestPki::new();
    let policy = r#"{"name": "p",
        "deny_rules": [{"name": "no-canary-writes", "request": {"paths": ["/kittest.v1.Store/Put"],
            "headers": [{"key": "x-canary", "values": ["*"]}]}}],
        "allow_rules": [{"name": "writer", "source": {"principals": ["spiffe://example.org/writer"]}}]}"#;
    let server = spawn_server(&pki, policy).await;
    let mut writer = StoreClient::new(server.connect(&pki.client("writer")).await.unwrap());
    let mut reader = StoreClient::new(server.connect(&pki.client("reader")).await.unwrap());

    let mut canary = tonic::Request::new(put("c", 1));
    canary
        .metadata_mut()
        .insert("x-canary", "1".parse().unwrap());
    assert_eq!(
        writer.put(canary).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    writer.put(put("c", 1)).await.unwrap();

    // Claiming another identity in metadata changes nothing.
    let mut spoof = tonic::Request::new(Key { key: "c".into() });
    for (k, v) in [
        ("x-spiffe-id", "spiffe://example.org/writer"),
        ("x-forwarded-client-cert", "URI=spiffe://example.org/writer"),
        ("authorization", "Bearer writer"),
    ] {
        spoof.metadata_mut().insert(k, v.parse().unwrap());
    }
    assert_eq!(
        reader.get(spoof).await.unwrap_err().code(),
        Code::PermissionDenied
    );
}
