//! The handlers: an in-memory ledger, shared by the `Accounts` and
//! `Transfers` services.
//!
//! TEMPLATE: this is where your own RPC handlers go. Handlers do not check
//! permissions: by the time one runs, the authorization layer has already
//! allowed the call. They can still read who is calling with
//! [`mtls_kit::conn::peer_identity`].

use std::collections::{BTreeMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use mtls_kit::conn::peer_identity;

use crate::proto::accounts_server::Accounts;
use crate::proto::transfers_server::Transfers;
use crate::proto::{
    Account, BatchSummary, CloseAccountRequest, GetAccountRequest, OpenAccountRequest, Posting,
    Receipt, StatementRequest,
};

/// How many accounts the ledger holds at most, so that a caller allowed to
/// open accounts cannot exhaust the server's memory.
pub const MAX_ACCOUNTS: usize = 10_000;

/// How many postings each account keeps for its statement; older ones are
/// dropped (the balance and the count still include them). A shortcut for
/// bounded memory: a real ledger keeps its history in a database.
pub const MAX_KEPT_POSTINGS: usize = 100;

/// The longest account id or memo, in bytes, for the same reason.
pub const MAX_TEXT_LEN: usize = 256;

/// One open account and its most recent postings.
#[derive(Debug, Default)]
struct Book {
    /// What `GetAccount` returns: the balance and the count of postings.
    account: Account,
    /// What `Statement` streams: at most [`MAX_KEPT_POSTINGS`], oldest first.
    recent: VecDeque<Posting>,
}

/// The in-memory ledger. Cloning shares the state, so both services see the
/// same accounts.
#[derive(Clone, Debug, Default)]
pub struct Ledger {
    /// Open accounts by id, at most [`MAX_ACCOUNTS`]. One lock: a posting
    /// reads and writes a balance in one step.
    books: Arc<Mutex<BTreeMap<String, Book>>>,
}

impl Ledger {
    pub fn new() -> Self {
        Self::default()
    }

    fn books(&self) -> MutexGuard<'_, BTreeMap<String, Book>> {
        self.books.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies one posting as `caller`; the receipt of an accepted one.
    fn post(&self, mut posting: Posting, caller: &str) -> Result<Receipt, Status> {
        check_id(&posting.account_id)?;
        if posting.amount_cents == 0 {
            return Err(Status::invalid_argument("amount_cents must not be zero"));
        }
        if posting.memo.len() > MAX_TEXT_LEN {
            return Err(Status::invalid_argument(format!(
                "memo is longer than {MAX_TEXT_LEN} bytes"
            )));
        }
        let mut books = self.books();
        let book = books
            .get_mut(&posting.account_id)
            .ok_or_else(|| no_account(&posting.account_id))?;
        let balance = match book.account.balance_cents.checked_add(posting.amount_cents) {
            Some(b) if b >= 0 => b,
            Some(_) => {
                return Err(Status::failed_precondition(format!(
                    "insufficient funds in account {:?}",
                    posting.account_id
                )))
            }
            None => return Err(Status::out_of_range("the balance would overflow")),
        };
        book.account.balance_cents = balance;
        book.account.postings += 1;
        posting.sequence = book.account.postings;
        posting.posted_by = caller.to_owned();
        if book.recent.len() >= MAX_KEPT_POSTINGS {
            book.recent.pop_front();
        }
        let receipt = Receipt {
            account_id: posting.account_id.clone(),
            accepted: true,
            reason: String::new(),
            sequence: posting.sequence,
            balance_cents: balance,
        };
        book.recent.push_back(posting);
        Ok(receipt)
    }
}

/// INVALID_ARGUMENT for an account id that cannot name an account.
fn check_id(id: &str) -> Result<(), Status> {
    if id.is_empty() {
        return Err(Status::invalid_argument("account_id is required"));
    }
    if id.len() > MAX_TEXT_LEN {
        return Err(Status::invalid_argument(format!(
            "account_id is longer than {MAX_TEXT_LEN} bytes"
        )));
    }
    Ok(())
}

fn no_account(id: &str) -> Status {
    Status::not_found(format!("no account {id:?}"))
}

fn caller<T>(req: &Request<T>) -> String {
    peer_identity(req)
        .map(|p| p.display_name().to_owned())
        .unwrap_or_default()
}

type PostingStream = Pin<Box<dyn Stream<Item = Result<Posting, Status>> + Send>>;
type ReceiptStream = Pin<Box<dyn Stream<Item = Result<Receipt, Status>> + Send>>;

/// `ledger.v2.Accounts`: open, read and close accounts.
#[derive(Clone, Debug)]
pub struct AccountsService {
    /// Shared with the other service.
    ledger: Ledger,
}

impl AccountsService {
    pub fn new(ledger: Ledger) -> Self {
        Self { ledger }
    }
}

#[tonic::async_trait]
impl Accounts for AccountsService {
    async fn open_account(
        &self,
        req: Request<OpenAccountRequest>,
    ) -> Result<Response<Account>, Status> {
        let who = caller(&req);
        let id = req.into_inner().account_id;
        check_id(&id)?;
        let mut books = self.ledger.books();
        if books.contains_key(&id) {
            return Err(Status::already_exists(format!("account {id:?} is open")));
        }
        if books.len() >= MAX_ACCOUNTS {
            return Err(Status::resource_exhausted(format!(
                "the ledger is full ({MAX_ACCOUNTS} accounts)"
            )));
        }
        let account = Account {
            account_id: id.clone(),
            opened_by: who,
            ..Default::default()
        };
        books.insert(
            id,
            Book {
                account: account.clone(),
                recent: VecDeque::new(),
            },
        );
        Ok(Response::new(account))
    }

    async fn get_account(
        &self,
        req: Request<GetAccountRequest>,
    ) -> Result<Response<Account>, Status> {
        let id = req.into_inner().account_id;
        check_id(&id)?;
        let books = self.ledger.books();
        let book = books.get(&id).ok_or_else(|| no_account(&id))?;
        Ok(Response::new(book.account.clone()))
    }

    type StatementStream = PostingStream;

    async fn statement(
        &self,
        req: Request<StatementRequest>,
    ) -> Result<Response<PostingStream>, Status> {
        let id = req.into_inner().account_id;
        check_id(&id)?;
        // Snapshot under the lock, stream after releasing it.
        let recent: Vec<Posting> = {
            let books = self.ledger.books();
            let book = books.get(&id).ok_or_else(|| no_account(&id))?;
            book.recent.iter().cloned().collect()
        };
        Ok(Response::new(Box::pin(tokio_stream::iter(
            recent.into_iter().map(Ok),
        ))))
    }

    async fn close_account(
        &self,
        req: Request<CloseAccountRequest>,
    ) -> Result<Response<Account>, Status> {
        let who = caller(&req);
        let id = req.into_inner().account_id;
        check_id(&id)?;
        let book = self
            .ledger
            .books()
            .remove(&id)
            .ok_or_else(|| no_account(&id))?;
        let balance_cents = book.account.balance_cents;
        tracing::info!(peer = %who, account = %id, balance_cents, "account closed");
        Ok(Response::new(book.account))
    }
}

/// `ledger.v2.Transfers`: postings, in a batch or one receipt at a time.
#[derive(Clone, Debug)]
pub struct TransfersService {
    /// Shared with the other service.
    ledger: Ledger,
}

impl TransfersService {
    pub fn new(ledger: Ledger) -> Self {
        Self { ledger }
    }
}

#[tonic::async_trait]
impl Transfers for TransfersService {
    async fn post_batch(
        &self,
        req: Request<Streaming<Posting>>,
    ) -> Result<Response<BatchSummary>, Status> {
        let who = caller(&req);
        let mut inbound = req.into_inner();
        let mut posted = 0;
        while let Some(next) = inbound.next().await {
            self.ledger
                .post(next?, &who)
                .map_err(|s| Status::new(s.code(), format!("posting {posted}: {}", s.message())))?;
            posted += 1;
        }
        Ok(Response::new(BatchSummary { posted }))
    }

    type SettleStream = ReceiptStream;

    async fn settle(
        &self,
        req: Request<Streaming<Posting>>,
    ) -> Result<Response<ReceiptStream>, Status> {
        let who = caller(&req);
        let ledger = self.ledger.clone();
        // One receipt per posting, as it arrives: nothing is buffered, and
        // the reply ends when the caller half-closes its side.
        let receipts = req.into_inner().map(move |next| {
            let posting = next?;
            let account_id = posting.account_id.clone();
            Ok(ledger
                .post(posting, &who)
                .unwrap_or_else(|refused| Receipt {
                    account_id,
                    accepted: false,
                    reason: refused.message().to_owned(),
                    ..Default::default()
                }))
        });
        Ok(Response::new(Box::pin(receipts)))
    }
}
