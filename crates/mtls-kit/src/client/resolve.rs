//! Where a balanced client's addresses come from: a [`Resolve`] turns the
//! service's name into the set of addresses behind it, each time the
//! balancer asks.
//!
//! [`DnsResolver`] (the default) asks the system resolver, which is what a
//! headless Kubernetes Service or a scaled docker-compose service answer
//! with one address per replica. [`StaticResolver`] is a list the caller
//! sets: addresses from configuration, or a test steering the balancer.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

/// What [`Resolve::resolve`] returns.
pub type ResolveFuture<'a> = Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>>;

/// A source of the addresses behind one service name.
///
/// The balancer calls [`resolve`](Resolve::resolve) at start, every refresh
/// interval, and soon after a connection goes away. Each answer is the whole
/// set: addresses missing from it are dropped. An error keeps the endpoints
/// the balancer already has (a DNS hiccup must not empty the pool).
pub trait Resolve: Send + Sync + 'static {
    /// Every address behind the name now. The balancer gives up on an
    /// answer after its `connect_timeout`, and treats an empty answer as
    /// an error.
    fn resolve(&self) -> ResolveFuture<'_>;
}

/// Resolves `host:port` with the system resolver
/// (`tokio::net::lookup_host`), every address it returns.
#[derive(Clone, Debug)]
pub struct DnsResolver {
    target: String,
}

impl DnsResolver {
    /// `target` is `host:port`, as given to `--addr`.
    pub fn new(target: impl Into<String>) -> Self {
        Self {
            target: target.into(),
        }
    }
}

impl Resolve for DnsResolver {
    fn resolve(&self) -> ResolveFuture<'_> {
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host(&self.target).await?.collect();
            Ok(addrs)
        })
    }
}

/// A set of addresses the caller controls. Clones share the set: keep one
/// clone to change what the balancer sees next time it resolves.
#[derive(Clone, Debug, Default)]
pub struct StaticResolver {
    addrs: Arc<Mutex<Vec<SocketAddr>>>,
}

impl StaticResolver {
    /// A resolver that answers with `addrs` until [`set`](Self::set)
    /// changes them.
    pub fn new(addrs: impl IntoIterator<Item = SocketAddr>) -> Self {
        let resolver = Self::default();
        resolver.set(addrs);
        resolver
    }

    /// Replaces the set; the balancer picks it up at its next resolution
    /// (call `BalancedChannel::refresh` to make that now).
    pub fn set(&self, addrs: impl IntoIterator<Item = SocketAddr>) {
        // A panic elsewhere while holding the lock leaves a plain Vec, which
        // is still consistent: ignore the poisoning.
        *self.addrs.lock().unwrap_or_else(|e| e.into_inner()) = addrs.into_iter().collect();
    }

    /// The current set.
    pub fn get(&self) -> Vec<SocketAddr> {
        self.addrs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Resolve for StaticResolver {
    fn resolve(&self) -> ResolveFuture<'_> {
        let addrs = self.get();
        Box::pin(async move { Ok(addrs) })
    }
}
