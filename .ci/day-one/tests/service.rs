//! The service over real mutual TLS with the shipped policy: each
//! development identity may call exactly what `config/policy.json` grants it,
//! and every kind of call (unary, server, client and bidirectional
//! streaming) works end to end.
//!
//! TEMPLATE: this is the pattern to copy for your own RPCs: start the real
//! server with `TestServer::spawn`, connect as a named identity, call.

use std::time::Duration;

use inventory_service::handlers::MAX_KEPT_POSTINGS;
use inventory_service::proto::accounts_client::AccountsClient;
use inventory_service::proto::transfers_client::TransfersClient;
use inventory_service::proto::{
    CloseAccountRequest, GetAccountRequest, OpenAccountRequest, Posting, StatementRequest,
};
use inventory_service::{services, DEV_IDENTITIES};
use mtls_kit::server::Limits;
use mtls_kit::testing::{TestPki, TestServer};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Response, Status, Streaming};

const POLICY: &str = include_str!("../config/policy.json");

async fn spawn() -> (TestPki, TestServer) {
    let pki = TestPki::new(DEV_IDENTITIES.trust_domain);
    let server = TestServer::spawn(&pki, POLICY, services(&Limits::default())).await;
    (pki, server)
}

/// Both services' clients, over one connection as `name`.
async fn clients_as(
    pki: &TestPki,
    server: &TestServer,
    name: &str,
) -> (AccountsClient<Channel>, TransfersClient<Channel>) {
    let channel = server.connect(&pki.client(name)).await.unwrap();
    (
        AccountsClient::new(channel.clone()),
        TransfersClient::new(channel),
    )
}

fn posting(account_id: &str, amount_cents: i64) -> Posting {
    Posting {
        account_id: account_id.into(),
        amount_cents,
        memo: format!("{amount_cents} cents"),
        ..Default::default()
    }
}

/// Reads a response stream to its end. A stream that does not end fails
/// the test instead of hanging it.
async fn drain<T>(response: Result<Response<Streaming<T>>, Status>) -> Result<Vec<T>, Status> {
    let mut stream = response?.into_inner();
    let mut items = Vec::new();
    let read = async {
        while let Some(item) = stream.message().await? {
            items.push(item);
        }
        Ok::<_, Status>(())
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("the response stream ends")?;
    Ok(items)
}

/// Each RPC called with an empty request, as a generic client would:
/// `Ok(())` when the call got past the policy (the handler answered, its
/// own INVALID_ARGUMENT included), or the code it was refused with.
async fn outcomes(
    (mut accounts, mut transfers): (AccountsClient<Channel>, TransfersClient<Channel>),
) -> [Result<(), Code>; 6] {
    fn code<T>(r: Result<T, Status>) -> Result<(), Code> {
        match r {
            Ok(_) => Ok(()),
            Err(s) if matches!(s.code(), Code::InvalidArgument | Code::NotFound) => Ok(()),
            Err(s) => Err(s.code()),
        }
    }
    let one_empty = || tokio_stream::iter(vec![Posting::default()]);
    [
        code(accounts.open_account(OpenAccountRequest::default()).await),
        code(accounts.get_account(GetAccountRequest::default()).await),
        code(drain(accounts.statement(StatementRequest::default()).await).await),
        code(accounts.close_account(CloseAccountRequest::default()).await),
        code(transfers.post_batch(one_empty()).await),
        code(drain(transfers.settle(one_empty()).await).await),
    ]
}

#[tokio::test]
async fn each_identity_gets_what_the_shipped_policy_grants() {
    let (pki, server) = spawn().await;
    const DENIED: Result<(), Code> = Err(Code::PermissionDenied);
    const OK: Result<(), Code> = Ok(());
    //                 open,   get,    stmt,   close,  batch,  settle
    let expected = [
        ("reader", [DENIED, OK, OK, DENIED, DENIED, DENIED]),
        ("writer", [OK, OK, OK, DENIED, OK, OK]),
        // Admins run the ledger but move no money (a deny rule).
        ("admin", [OK, OK, OK, OK, DENIED, DENIED]),
        ("outsider", [DENIED; 6]),
        // A certificate from the right CA that the policy does not name.
        ("stranger", [DENIED; 6]),
    ];
    for (name, want) in expected {
        let clients = clients_as(&pki, &server, name).await;
        assert_eq!(outcomes(clients).await, want, "{name}");
    }
}

#[tokio::test]
async fn empty_requests_get_clear_answers_and_streams_end() {
    let (pki, server) = spawn().await;
    let (mut accounts, _) = clients_as(&pki, &server, "admin").await;
    let (_, mut transfers) = clients_as(&pki, &server, "writer").await;
    fn code<T>(r: Result<T, Status>) -> Result<(), Code> {
        r.map(|_| ()).map_err(|s| s.code())
    }
    let no_id = Err(Code::InvalidArgument);
    let req = OpenAccountRequest::default();
    assert_eq!(code(accounts.open_account(req).await), no_id);
    let req = GetAccountRequest::default();
    assert_eq!(code(accounts.get_account(req).await), no_id);
    let req = StatementRequest::default();
    assert_eq!(code(drain(accounts.statement(req).await).await), no_id);
    let req = CloseAccountRequest::default();
    assert_eq!(code(accounts.close_account(req).await), no_id);

    let one_empty = || tokio_stream::iter(vec![Posting::default()]);
    let none = || tokio_stream::iter(Vec::<Posting>::new());
    assert_eq!(code(transfers.post_batch(one_empty()).await), no_id);
    let summary = transfers.post_batch(none()).await.unwrap().into_inner();
    assert_eq!(summary.posted, 0);
    let receipts = drain(transfers.settle(one_empty()).await).await.unwrap();
    assert_eq!(receipts.len(), 1);
    assert!(!receipts[0].accepted);
    assert_eq!(receipts[0].reason, "account_id is required");
    let receipts = drain(transfers.settle(none()).await).await.unwrap();
    assert!(receipts.is_empty());
}

#[tokio::test]
async fn money_moves_through_every_kind_of_call() {
    let (pki, server) = spawn().await;
    let (mut writer, mut transfers) = clients_as(&pki, &server, "writer").await;

    // Unary, seeing the verified caller.
    let opened = writer
        .open_account(OpenAccountRequest {
            account_id: "acct-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(opened.opened_by, "spiffe://example.org/writer");
    assert_eq!(opened.balance_cents, 0);

    // Client streaming.
    let batch = tokio_stream::iter(vec![posting("acct-1", 1_000), posting("acct-1", -250)]);
    let summary = transfers.post_batch(batch).await.unwrap().into_inner();
    assert_eq!(summary.posted, 2);

    // Bidirectional: each receipt arrives before the next posting is sent.
    let (tx, rx) = mpsc::channel(1);
    let mut receipts = transfers
        .settle(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(posting("acct-1", 100)).await.unwrap();
    let r = receipts.message().await.unwrap().unwrap();
    assert!(r.accepted, "{r:?}");
    assert_eq!((r.sequence, r.balance_cents), (3, 850));
    tx.send(posting("acct-1", -10_000)).await.unwrap();
    let r = receipts.message().await.unwrap().unwrap();
    assert!(!r.accepted);
    assert!(r.reason.contains("insufficient funds"), "{r:?}");
    tx.send(posting("acct-2", 1)).await.unwrap();
    let r = receipts.message().await.unwrap().unwrap();
    assert_eq!(r.reason, "no account \"acct-2\"");
    // Half-closing ends the call, with OK.
    drop(tx);
    assert_eq!(receipts.message().await.unwrap(), None);

    // Server streaming, as a reader.
    let (mut reader, _) = clients_as(&pki, &server, "reader").await;
    let id = || "acct-1".to_owned();
    let req = StatementRequest { account_id: id() };
    let statement = drain(reader.statement(req).await).await.unwrap();
    let amounts: Vec<(u64, i64)> = statement
        .iter()
        .map(|p| (p.sequence, p.amount_cents))
        .collect();
    assert_eq!(amounts, [(1, 1_000), (2, -250), (3, 100)]);
    assert!(statement
        .iter()
        .all(|p| p.posted_by == "spiffe://example.org/writer"));
    let account = reader
        .get_account(GetAccountRequest { account_id: id() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((account.balance_cents, account.postings), (850, 3));

    // Only an admin closes it.
    let close = || CloseAccountRequest { account_id: id() };
    let denied = writer.close_account(close()).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let (mut admin, _) = clients_as(&pki, &server, "admin").await;
    let closed = admin.close_account(close()).await.unwrap().into_inner();
    assert_eq!(closed, account);
    let gone = reader
        .get_account(GetAccountRequest { account_id: id() })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
}

#[tokio::test]
async fn a_batch_stops_at_the_first_refused_posting() {
    let (pki, server) = spawn().await;
    let (mut accounts, mut transfers) = clients_as(&pki, &server, "writer").await;
    let account_id = || "acct-b".to_owned();
    accounts
        .open_account(OpenAccountRequest {
            account_id: account_id(),
        })
        .await
        .unwrap();
    let batch = [5, -10, 1].map(|cents| posting("acct-b", cents));
    let refused = transfers
        .post_batch(tokio_stream::iter(batch))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert_eq!(
        refused.message(),
        "posting 1: insufficient funds in account \"acct-b\""
    );
    let account = accounts
        .get_account(GetAccountRequest {
            account_id: account_id(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((account.balance_cents, account.postings), (5, 1));
}

#[tokio::test]
async fn a_statement_keeps_only_the_most_recent_postings() {
    let (pki, server) = spawn().await;
    let (mut accounts, mut transfers) = clients_as(&pki, &server, "writer").await;
    let account_id = || "acct-s".to_owned();
    accounts
        .open_account(OpenAccountRequest {
            account_id: account_id(),
        })
        .await
        .unwrap();
    let total = MAX_KEPT_POSTINGS + 5;
    let batch = vec![posting("acct-s", 1); total];
    let summary = transfers
        .post_batch(tokio_stream::iter(batch))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(summary.posted, total as u64);
    let statement = drain(
        accounts
            .statement(StatementRequest {
                account_id: account_id(),
            })
            .await,
    )
    .await
    .unwrap();
    assert_eq!(statement.len(), MAX_KEPT_POSTINGS);
    assert_eq!(statement[0].sequence, 6);
    assert_eq!(statement.last().unwrap().sequence, total as u64);
}
