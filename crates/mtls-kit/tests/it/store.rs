//! The kit's own test service: an in-memory key/value store with one method
//! of each gRPC kind, and a count of handler calls so tests can prove that a
//! refused call never reached a handler.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use mtls_kit::conn::peer_identity;
use mtls_kit::server::{Limits, Services};
use tokio::sync::watch;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

pub mod pb {
    tonic::include_proto!("kittest.v1");
    pub const DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/kittest_descriptor.bin"));
}

pub use pb::store_client::StoreClient;
use pb::store_server::{Store, StoreServer};
pub use pb::{ClearReply, ClearRequest, Entry, Key, LoadReply};

/// Cloning shares the entries and the call count.
#[derive(Clone, Default)]
pub struct TestStore {
    entries: Arc<Mutex<BTreeMap<String, Entry>>>,
    calls: Arc<watch::Sender<u64>>,
}

impl TestStore {
    /// How many handler invocations there have been.
    pub fn handler_calls(&self) -> u64 {
        *self.calls.borrow()
    }

    /// Watches the handler invocation count.
    pub fn watch_handler_calls(&self) -> watch::Receiver<u64> {
        self.calls.subscribe()
    }

    /// The services a test server runs: this store, with `limits`' message
    /// size.
    pub fn services(&self, limits: &Limits) -> Services {
        let mut services = Services::new();
        services.file_descriptor_set(pb::DESCRIPTOR_SET).add(
            StoreServer::new(self.clone())
                .max_decoding_message_size(limits.max_message_size)
                .max_encoding_message_size(limits.max_message_size),
        );
        services
    }

    fn called<T>(&self, req: &Request<T>) -> String {
        self.calls.send_modify(|n| *n += 1);
        peer_identity(req)
            .map(|p| p.display_name().to_owned())
            .unwrap_or_default()
    }

    fn write(&self, mut entry: Entry, by: &str) -> Entry {
        entry.written_by = by.to_owned();
        let mut entries = self.entries.lock().unwrap();
        entries.insert(entry.key.clone(), entry.clone());
        entry
    }
}

type EntryStream = Pin<Box<dyn Stream<Item = Result<Entry, Status>> + Send>>;

#[tonic::async_trait]
impl Store for TestStore {
    async fn get(&self, req: Request<Key>) -> Result<Response<Entry>, Status> {
        self.called(&req);
        let key = req.into_inner().key;
        let found = self.entries.lock().unwrap().get(&key).cloned();
        found
            .map(Response::new)
            .ok_or_else(|| Status::not_found(key))
    }

    async fn put(&self, req: Request<Entry>) -> Result<Response<Entry>, Status> {
        let by = self.called(&req);
        Ok(Response::new(self.write(req.into_inner(), &by)))
    }

    async fn clear(&self, req: Request<ClearRequest>) -> Result<Response<ClearReply>, Status> {
        self.called(&req);
        let mut entries = self.entries.lock().unwrap();
        let removed = entries.len() as u64;
        entries.clear();
        Ok(Response::new(ClearReply { removed }))
    }

    type ScanStream = EntryStream;

    async fn scan(&self, req: Request<Key>) -> Result<Response<EntryStream>, Status> {
        self.called(&req);
        let prefix = req.into_inner().key;
        let found: Vec<Entry> = self
            .entries
            .lock()
            .unwrap()
            .values()
            .filter(|e| e.key.starts_with(&prefix))
            .cloned()
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(
            found.into_iter().map(Ok),
        ))))
    }

    async fn load(&self, req: Request<Streaming<Entry>>) -> Result<Response<LoadReply>, Status> {
        let by = self.called(&req);
        let mut stream = req.into_inner();
        let mut loaded = 0;
        while let Some(entry) = stream.next().await {
            self.write(entry?, &by);
            loaded += 1;
        }
        Ok(Response::new(LoadReply { loaded }))
    }
}

/// An entry to write.
pub fn entry(key: &str, value: &[u8]) -> Entry {
    Entry {
        key: key.into(),
        value: value.to_vec(),
        ..Default::default()
    }
}

/// Calls `path` with a `Key` and expects it to fail, as a client generated
/// from another proto version might call a method this server lacks.
pub async fn call_path(channel: tonic::transport::Channel, path: &'static str) -> Status {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<Key, Entry>::default();
    grpc.unary(
        Request::new(Key::default()),
        http::uri::PathAndQuery::from_static(path),
        codec,
    )
    .await
    .unwrap_err()
}
