//! Which replica answered: an optional layer that names the serving
//! replica in the `x-replica` header of every response (denials, health and
//! reflection included), so that a client balancing over several replicas,
//! or a person debugging one, can tell them apart.
//!
//! The name is public to every authenticated caller; it should be no more
//! than what the replica's DNS name already tells (the host name, by
//! default).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{HeaderName, HeaderValue};
use tonic::metadata::MetadataMap;
use tower::{Layer, Service};

/// The response header (gRPC metadata key) carrying the replica's name.
pub const HEADER: &str = "x-replica";
/// [`HEADER`] as a header name, made once at compile time.
const HEADER_NAME: HeaderName = HeaderName::from_static(HEADER);

/// The server flag naming the replica. Flatten it into the server binary's
/// command line (`#[command(flatten)]`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ReplicaArgs {
    /// Name this replica gives in the x-replica header of every response.
    /// Default: the host name (in a container, its id or compose name).
    #[arg(long, env = "SERVER_REPLICA_NAME")]
    pub replica_name: Option<String>,
}

impl ReplicaArgs {
    /// The flag's value, else the host name, else none (no header).
    pub fn name(&self) -> Option<String> {
        self.replica_name.clone().or_else(host_name)
    }
}

/// The kernel's host name (what `hostname` prints), if it can be read.
fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// A replica name that cannot be a header value (control characters).
#[derive(Debug, thiserror::Error)]
#[error("replica name {0:?} cannot be sent in a header (printable ASCII only)")]
pub struct InvalidReplicaName(pub String);

/// Adds `x-replica: NAME` to every response; without a name, does nothing.
#[derive(Clone, Debug, Default)]
pub struct ReplicaLayer {
    value: Option<HeaderValue>,
}

impl ReplicaLayer {
    /// A layer that names `name`; `None` adds no header. Refuses a name
    /// that is not visible ASCII (no spaces, no control characters).
    pub fn new(name: Option<&str>) -> Result<Self, InvalidReplicaName> {
        let value = name
            .map(|n| {
                // Visible ASCII only: anything else would be refused by some
                // clients, or mangled.
                if n.bytes().all(|b| b.is_ascii_graphic()) {
                    HeaderValue::from_str(n).map_err(|_| InvalidReplicaName(n.to_owned()))
                } else {
                    Err(InvalidReplicaName(n.to_owned()))
                }
            })
            .transpose()?;
        Ok(Self { value })
    }
}

impl<S> Layer<S> for ReplicaLayer {
    type Service = ReplicaHeader<S>;

    fn layer(&self, inner: S) -> ReplicaHeader<S> {
        ReplicaHeader {
            inner,
            value: self.value.clone(),
        }
    }
}

/// The service [`ReplicaLayer`] makes.
#[derive(Clone, Debug)]
pub struct ReplicaHeader<S> {
    inner: S,
    value: Option<HeaderValue>,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for ReplicaHeader<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = WithReplica<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        WithReplica {
            inner: self.inner.call(req),
            value: self.value.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`ReplicaHeader`]: no allocation per RPC, and
    /// the header name is a constant rather than parsed from text each time.
    pub struct WithReplica<F> {
        #[pin]
        inner: F,
        value: Option<HeaderValue>,
    }
}

impl<F, ResBody, E> Future for WithReplica<F>
where
    F: Future<Output = Result<http::Response<ResBody>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = std::task::ready!(this.inner.poll(cx))?;
        if let Some(value) = this.value.take() {
            response.headers_mut().insert(HEADER_NAME, value);
        }
        Poll::Ready(Ok(response))
    }
}

/// The replica named in a response's (or an error status's) metadata.
pub fn replica_of(metadata: &MetadataMap) -> Option<&str> {
    metadata.get(HEADER).and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_be_printable_ascii() {
        assert!(ReplicaLayer::new(Some("server-1")).is_ok());
        assert!(ReplicaLayer::new(None).is_ok());
        assert!(ReplicaLayer::new(Some("a b")).is_err());
        assert!(ReplicaLayer::new(Some("bad\n")).is_err());
        assert!(ReplicaLayer::new(Some("réplica")).is_err());
    }
}
