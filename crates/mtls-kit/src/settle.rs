//! Early answers that end their streams cleanly.
//!
//! When the server answers an RPC before it has read the request body (a
//! denial from [`crate::authz`], tonic's UNIMPLEMENTED for an unknown method
//! or service), HTTP/2 ends the still-open request side with
//! `RST_STREAM(NO_ERROR)`, and h2 counts that against the same limit as
//! streams reset for protocol errors (hyperium/h2#856). A client whose body
//! trails its headers, as tonic's does, then loses its whole connection
//! after 256 such answers, with every RPC in flight on it.
//!
//! [`Settle`] keeps hold of the request body the inner service dropped
//! unread and, when the answer is a complete (trailers-only) gRPC status,
//! reads what is left of a small body before handing the answer to hyper:
//! the stream then ends with END_STREAM from both sides and nothing is
//! reset. The wait is bounded in bytes and time; a peer that sends more, or
//! nothing, is answered at the bound and its stream is reset (and counted)
//! as before, so the MadeYouReset defence is unchanged.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::sync::oneshot;
use tonic::body::Body;
use tower::{Layer, Service};

/// Adds [`Settle`] in front of a service.
#[derive(Clone, Copy, Debug)]
pub struct SettleLayer {
    max_bytes: usize,
    max_wait: Duration,
}

impl SettleLayer {
    /// Reads at most `max_bytes` of an unread request body, for at most
    /// `max_wait`, before an early answer goes out.
    pub fn new(max_bytes: usize, max_wait: Duration) -> Self {
        Self {
            max_bytes,
            max_wait,
        }
    }
}

impl<S> Layer<S> for SettleLayer {
    type Service = Settle<S>;
    fn layer(&self, inner: S) -> Settle<S> {
        Settle {
            inner,
            limits: *self,
        }
    }
}

/// See the module docs.
#[derive(Clone, Debug)]
pub struct Settle<S> {
    inner: S,
    limits: SettleLayer,
}

impl<S> Service<http::Request<Body>> for Settle<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let (back, mut unread) = oneshot::channel();
        let req = req.map(|body| {
            Body::new(Returning {
                body: Some(body),
                back: Some(back),
            })
        });
        let answer = self.inner.call(req);
        let limits = self.limits;
        Box::pin(async move {
            let response = answer.await?;
            // `grpc-status` among the headers: a trailers-only answer, the
            // whole RPC is over. An unread body comes back only if the inner
            // service dropped it before its end.
            // DEADLINE_EXCEEDED is the exception: the client's time is up,
            // so the status goes out now, not after the wait (the stream
            // reset then counts, like any call a client lets run past its
            // deadline with its request still open).
            if let Some(status) = response.headers().get(GRPC_STATUS) {
                if status != DEADLINE_EXCEEDED {
                    if let Ok(body) = unread.try_recv() {
                        drain(body, limits).await;
                    }
                }
            }
            Ok(response)
        })
    }
}

/// A constant, so that the checks per RPC (here and in the metrics layer)
/// do not parse the name from text.
pub(crate) const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");

/// `grpc-status` of DEADLINE_EXCEEDED.
const DEADLINE_EXCEEDED: http::HeaderValue = http::HeaderValue::from_static("4");

/// Reads `body` to its end within the limits. Returns whether it ended.
async fn drain(mut body: Body, limits: SettleLayer) -> bool {
    let read = async {
        let mut seen = 0usize;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { return false };
            seen += frame.data_ref().map_or(0, Bytes::len);
            if seen > limits.max_bytes {
                return false;
            }
        }
        true
    };
    tokio::time::timeout(limits.max_wait, read)
        .await
        .unwrap_or(false)
}

/// The request body as the inner service sees it. Dropped before its end,
/// it sends the rest back to [`Settle`].
struct Returning {
    body: Option<Body>,
    back: Option<oneshot::Sender<Body>>,
}

impl HttpBody for Returning {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let Some(body) = self.body.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(body).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            // Read to its end (or broken): nothing left to give back.
            self.body = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), HttpBody::size_hint)
    }
}

impl Drop for Returning {
    fn drop(&mut self) {
        if let (Some(body), Some(back)) = (self.body.take(), self.back.take()) {
            if !body.is_end_stream() {
                let _ = back.send(body);
            }
        }
    }
}
