//! The service over real mutual TLS with the shipped policy: each
//! development identity may call exactly what `config/policy.json` grants it.
//!
//! TEMPLATE: this is the pattern to copy for your own RPCs: start the real
//! server with `TestServer::spawn`, connect as a named identity, call.

use inventory_service::proto::inventory_client::InventoryClient;
use inventory_service::proto::{
    GetItemRequest, Item, ListItemsRequest, PurgeRequest, PutItemRequest,
};
use inventory_service::{services, DEV_IDENTITIES};
use mtls_kit::server::Limits;
use mtls_kit::testing::{TestPki, TestServer};
use tonic::transport::Channel;
use tonic::Code;

const POLICY: &str = include_str!("../config/policy.json");

async fn spawn() -> (TestPki, TestServer) {
    let pki = TestPki::new(DEV_IDENTITIES.trust_domain);
    let server = TestServer::spawn(&pki, POLICY, services(&Limits::default())).await;
    (pki, server)
}

async fn client_as(pki: &TestPki, server: &TestServer, name: &str) -> InventoryClient<Channel> {
    InventoryClient::new(server.connect(&pki.client(name)).await.unwrap())
}

fn put(sku: &str) -> PutItemRequest {
    PutItemRequest {
        item: Some(Item {
            sku: sku.into(),
            name: format!("item {sku}"),
            quantity: 1,
            ..Default::default()
        }),
    }
}

/// Each identity's outcome for each RPC: `Ok(())` when the call got past
/// the policy (the handler ran), or the status it was refused with.
async fn outcomes(client: &mut InventoryClient<Channel>) -> [Result<(), Code>; 5] {
    fn code<T>(r: Result<T, tonic::Status>) -> Result<(), Code> {
        match r {
            Ok(_) => Ok(()),
            // NOT_FOUND is the handler's own answer: the call was allowed.
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(s.code()),
        }
    }
    let get = GetItemRequest { sku: "none".into() };
    [
        code(client.get_item(get).await),
        code(client.list_items(ListItemsRequest::default()).await),
        code(client.put_item(put("p")).await),
        code(
            client
                .import_items(tokio_stream::iter(vec![put("i")]))
                .await,
        ),
        code(client.purge(PurgeRequest {}).await),
    ]
}

#[tokio::test]
async fn each_identity_gets_what_the_shipped_policy_grants() {
    let (pki, server) = spawn().await;
    const DENIED: Result<(), Code> = Err(Code::PermissionDenied);
    //                 get,    list,   put,    import, purge
    let expected = [
        ("reader", [Ok(()), Ok(()), DENIED, DENIED, DENIED]),
        ("writer", [Ok(()), Ok(()), Ok(()), Ok(()), DENIED]),
        ("admin", [Ok(()), Ok(()), Ok(()), Ok(()), Ok(())]),
        ("outsider", [DENIED; 5]),
        // A certificate from the right CA that the policy does not name.
        ("stranger", [DENIED; 5]),
    ];
    for (name, want) in expected {
        let mut client = client_as(&pki, &server, name).await;
        assert_eq!(outcomes(&mut client).await, want, "{name}");
    }
}

#[tokio::test]
async fn handlers_see_the_verified_caller() {
    let (pki, server) = spawn().await;
    let mut writer = client_as(&pki, &server, "writer").await;
    let stored = writer.put_item(put("k1")).await.unwrap().into_inner();
    assert_eq!(stored.updated_by, "spiffe://example.org/writer");
    let mut reader = client_as(&pki, &server, "reader").await;
    let got = reader
        .get_item(GetItemRequest { sku: "k1".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, stored);
}
