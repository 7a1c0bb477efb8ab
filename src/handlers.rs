//! The example service's handlers: an in-memory inventory.
//!
//! TEMPLATE: this is where your own RPC handlers go. Handlers do not check
//! permissions: by the time one runs, the authorization layer has already
//! allowed the call. They can still read who is calling with
//! [`mtls_kit::conn::peer_identity`].

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, RwLock};

use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use mtls_kit::conn::peer_identity;

use crate::proto::inventory_server::Inventory;
use crate::proto::{
    GetItemRequest, ImportSummary, Item, ListItemsRequest, PurgeRequest, PurgeResponse,
    PutItemRequest,
};

/// How many items the in-memory store holds at most, so that a caller with
/// write access cannot exhaust the server's memory.
pub const MAX_ITEMS: usize = 100_000;

/// The in-memory inventory. Cloning shares the state.
#[derive(Clone, Debug, Default)]
pub struct InventoryService {
    items: Arc<RwLock<BTreeMap<String, Item>>>,
}

impl InventoryService {
    pub fn new() -> Self {
        Self::default()
    }

    fn store(&self, item: Option<Item>, caller: &str) -> Result<Item, Status> {
        let mut item = item.ok_or_else(|| Status::invalid_argument("item is required"))?;
        if item.sku.is_empty() {
            return Err(Status::invalid_argument("item.sku must not be empty"));
        }
        item.updated_by = caller.to_owned();
        let mut items = self.items.write().unwrap_or_else(|p| p.into_inner());
        if items.len() >= MAX_ITEMS && !items.contains_key(&item.sku) {
            return Err(Status::resource_exhausted(format!(
                "the inventory is full ({MAX_ITEMS} items)"
            )));
        }
        items.insert(item.sku.clone(), item.clone());
        Ok(item)
    }
}

fn caller<T>(req: &Request<T>) -> String {
    peer_identity(req)
        .map(|p| p.display_name().to_owned())
        .unwrap_or_default()
}

type ItemStream = Pin<Box<dyn Stream<Item = Result<Item, Status>> + Send>>;

#[tonic::async_trait]
impl Inventory for InventoryService {
    async fn get_item(&self, req: Request<GetItemRequest>) -> Result<Response<Item>, Status> {
        let sku = req.into_inner().sku;
        let items = self.items.read().unwrap_or_else(|p| p.into_inner());
        items
            .get(&sku)
            .cloned()
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("no item with sku {sku:?}")))
    }

    async fn put_item(&self, req: Request<PutItemRequest>) -> Result<Response<Item>, Status> {
        let who = caller(&req);
        self.store(req.into_inner().item, &who).map(Response::new)
    }

    async fn purge(&self, req: Request<PurgeRequest>) -> Result<Response<PurgeResponse>, Status> {
        let who = caller(&req);
        let mut items = self.items.write().unwrap_or_else(|p| p.into_inner());
        let removed = items.len() as u64;
        items.clear();
        tracing::info!(peer = %who, removed, "inventory purged");
        Ok(Response::new(PurgeResponse { removed }))
    }

    type ListItemsStream = ItemStream;

    async fn list_items(
        &self,
        req: Request<ListItemsRequest>,
    ) -> Result<Response<ItemStream>, Status> {
        let prefix = req.into_inner().sku_prefix;
        // Snapshot under the lock, stream after releasing it.
        let snapshot: Vec<Item> = {
            let items = self.items.read().unwrap_or_else(|p| p.into_inner());
            items
                .range(prefix.clone()..)
                .take_while(|(sku, _)| sku.starts_with(&prefix))
                .map(|(_, item)| item.clone())
                .collect()
        };
        Ok(Response::new(Box::pin(tokio_stream::iter(
            snapshot.into_iter().map(Ok),
        ))))
    }

    async fn import_items(
        &self,
        req: Request<Streaming<PutItemRequest>>,
    ) -> Result<Response<ImportSummary>, Status> {
        let who = caller(&req);
        let mut stream = req.into_inner();
        let mut imported = 0;
        while let Some(next) = stream.next().await {
            self.store(next?.item, &who)?;
            imported += 1;
        }
        Ok(Response::new(ImportSummary { imported }))
    }
}
