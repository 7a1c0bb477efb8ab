//! The tower layer that applies the limits to every call: it refuses a
//! call over a limit with `RESOURCE_EXHAUSTED` and `grpc-retry-pushback-ms`,
//! queues one over its identity's fair share, and keeps what the call holds
//! until its response body has ended.
//!
//! It sits after authorization (a denied call takes nothing) and inside
//! the deadline layer, so that waiting for a share counts against the
//! call's deadline, and a call whose deadline passes while it waits ends
//! with `DEADLINE_EXCEEDED` and gives its place back.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body::Frame;
use tonic::body::Body;
use tonic::metadata::MetadataValue;
use tonic::Status;
use tower::{Layer, Service};

use super::{fair_share_limit, Limiter, Reason, Refusal, Share, Ticket};
use crate::conn::PeerInfo;
use crate::metrics::Metrics;

type HttpResponse = http::Response<Body>;

/// Adds [`Quota`] in front of a service.
#[derive(Clone)]
pub struct QuotaLayer {
    limiter: Arc<Limiter>,
    metrics: Metrics,
    log: Arc<LogThrottle>,
}

impl QuotaLayer {
    /// Enforces `limiter`'s limits, counting refusals and waits in
    /// `metrics`.
    pub fn new(limiter: Arc<Limiter>, metrics: Metrics) -> Self {
        Self {
            limiter,
            metrics,
            log: Arc::default(),
        }
    }
}

impl<S> Layer<S> for QuotaLayer {
    type Service = Quota<S>;
    fn layer(&self, inner: S) -> Quota<S> {
        Quota {
            inner,
            layer: self.clone(),
        }
    }
}

/// See the module docs.
#[derive(Clone)]
pub struct Quota<S> {
    inner: S,
    layer: QuotaLayer,
}

impl QuotaLayer {
    /// Counts and logs a refusal; the answer, unless in dry run.
    fn refused(
        &self,
        refusal: &Refusal,
        peer: &PeerInfo,
        method: &str,
        dry_run: bool,
    ) -> Option<HttpResponse> {
        if let Some(m) = self.metrics.quota() {
            m.limited(refusal, dry_run);
        }
        self.log.event(refusal, peer, method, dry_run);
        (!dry_run).then(|| refusal_response(refusal))
    }
}

/// `RESOURCE_EXHAUSTED`, with the pushback gRPC clients with a retry
/// policy honour (gRFC A6). The message names the limit, not the caller.
pub fn refusal_response(refusal: &Refusal) -> HttpResponse {
    let what = match refusal.reason {
        Reason::Rate => "rate",
        Reason::InFlight => "calls in flight",
        Reason::Wait => "wait for this identity's fair share",
    };
    let ms = refusal.pushback.as_millis().min(i32::MAX as u128);
    let mut status = Status::resource_exhausted(format!(
        "over the limit {:?} ({what}); retry in {ms} ms",
        &*refusal.limit
    ));
    if let Ok(v) = MetadataValue::try_from(ms.to_string()) {
        status.metadata_mut().insert("grpc-retry-pushback-ms", v);
    }
    status.into_http()
}

impl<S, B> Service<http::Request<B>> for Quota<S>
where
    S: Service<http::Request<B>, Response = HttpResponse> + Clone + Send + 'static,
    S::Future: Send + Unpin + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = HttpResponse;
    type Error = S::Error;
    type Future = QuotaFuture<S::Future, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        // Authorization, outside, has refused calls without a verified
        // identity; without one there is nothing to key limits on.
        let Some(peer) = req.extensions().get::<PeerInfo>().cloned() else {
            return QuotaFuture::Running {
                inner: self.inner.call(req),
                ticket: None,
            };
        };
        let method = req.uri().path().to_owned();
        let admission = self.layer.limiter.admit(&peer.identity, &method);
        // From the limits the call was admitted under: a second read of the
        // limits in force could meet a reload in between.
        let dry_run = admission.dry_run;
        if let Some(refusal) = &admission.refusal {
            if let Some(answer) = self.layer.refused(refusal, &peer, &method, dry_run) {
                return QuotaFuture::Refused(Some(answer));
            }
        }
        let ticket = admission.ticket;
        match admission.share {
            Share::None => QuotaFuture::Running {
                inner: self.inner.call(req),
                ticket: Some(ticket),
            },
            Share::Held(permit) => QuotaFuture::Running {
                inner: self.inner.call(req),
                ticket: Some(ticket.with_permit(Some(permit))),
            },
            Share::Wait {
                sem,
                max_wait,
                pushback,
            } => {
                // The service was made ready for this call: take it, and
                // leave a clone for the next.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                let layer = self.layer.clone();
                if let Some(m) = layer.metrics.quota() {
                    m.waited();
                }
                QuotaFuture::Waiting(Box::pin(async move {
                    let permit = match tokio::time::timeout(max_wait, sem.acquire_owned()).await {
                        Ok(Ok(permit)) => Some(permit),
                        // The semaphore is never closed; go on if it were.
                        Ok(Err(_)) => None,
                        Err(_) => {
                            let refusal = Refusal {
                                limit: fair_share_limit(),
                                reason: Reason::Wait,
                                pushback,
                            };
                            if let Some(answer) = layer.refused(&refusal, &peer, &method, dry_run) {
                                return Ok(answer);
                            }
                            None
                        }
                    };
                    let ticket = ticket.with_permit(permit);
                    let response = inner.call(req).await?;
                    Ok(guarded(response, ticket))
                }))
            }
        }
    }
}

/// The response, with `ticket` held until its body ends.
fn guarded(response: HttpResponse, ticket: Ticket) -> HttpResponse {
    response.map(|body| {
        Body::new(TicketBody {
            inner: body,
            ticket: Some(ticket),
        })
    })
}

/// The future of [`Quota`].
pub enum QuotaFuture<F, E> {
    /// Over a limit: the refusal, taken when polled.
    Refused(Option<HttpResponse>),
    /// Admitted at once: the inner service's future, and what the call
    /// holds (`None` for a call without a verified identity).
    Running {
        /// The inner service's future.
        inner: F,
        /// Moved into the response body when the response arrives.
        ticket: Option<Ticket>,
    },
    /// Waiting for its identity's fair share, then running.
    Waiting(Pin<Box<dyn Future<Output = Result<HttpResponse, E>> + Send>>),
}

impl<F, E> Future for QuotaFuture<F, E>
where
    F: Future<Output = Result<HttpResponse, E>> + Unpin,
{
    type Output = Result<HttpResponse, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            QuotaFuture::Refused(answer) => match answer.take() {
                Some(a) => Poll::Ready(Ok(a)),
                None => Poll::Pending,
            },
            QuotaFuture::Running { inner, ticket } => {
                let response = std::task::ready!(Pin::new(inner).poll(cx))?;
                Poll::Ready(Ok(match ticket.take() {
                    Some(t) => guarded(response, t),
                    None => response,
                }))
            }
            QuotaFuture::Waiting(fut) => fut.as_mut().poll(cx),
        }
    }
}

/// A response body that gives the call's ticket back when it ends (or is
/// dropped: a reset stream, a connection closed, a deadline).
struct TicketBody {
    inner: Body,
    ticket: Option<Ticket>,
}

impl http_body::Body for TicketBody {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let frame = std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx));
        let ended = match &frame {
            None | Some(Err(_)) => true,
            Some(Ok(f)) => f.is_trailers(),
        };
        if ended {
            self.ticket = None;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Logs refusals at most once a second (a flood of them would otherwise be
/// a flood of lines), saying how many were not logged in between. The
/// metrics count every one.
#[derive(Default)]
struct LogThrottle {
    last_second: AtomicU64,
    suppressed: AtomicU64,
}

impl LogThrottle {
    fn event(&self, refusal: &Refusal, peer: &PeerInfo, method: &str, dry_run: bool) {
        let now = crate::metrics::unix_now() as u64;
        let last = self.last_second.load(Ordering::Relaxed);
        if last == now
            || self
                .last_second
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let suppressed = self.suppressed.swap(0, Ordering::Relaxed);
        let (limit, reason) = (&*refusal.limit, refusal.reason.as_str());
        let pushback_ms = refusal.pushback.as_millis() as u64;
        let peer = peer.identity.display_name();
        let message = if dry_run {
            "call would be limited (dry run: let through)"
        } else {
            "call limited: RESOURCE_EXHAUSTED"
        };
        tracing::info!(
            peer,
            method,
            limit,
            reason,
            pushback_ms,
            suppressed,
            "{message}"
        );
    }
}
