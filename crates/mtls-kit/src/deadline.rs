//! The client's deadline, enforced on the server: an RPC whose
//! `grpc-timeout` passes ends with `DEADLINE_EXCEEDED`, whatever its kind.
//!
//! * Before the handler answers: the answer is a trailers-only
//!   DEADLINE_EXCEEDED, and the handler's future is dropped (cancelled).
//! * After it answers with a stream (server or bidi streaming): the reply
//!   stream is cut at the deadline, DEADLINE_EXCEEDED goes out in the
//!   trailers, and the handler's stream is dropped (and with it whatever
//!   it holds, the request stream included).
//!
//! So a client that does not enforce its own deadline (a bug, or an
//! attacker) cannot hold a handler past it, as gRPC's C++, Go and Java
//! servers also ensure.
//!
//! tonic's own `Server` does this in a private layer; the kit serves each
//! connection with hyper directly (see [`crate::connections`]), so it needs
//! its own. It sits just outside the routes, so the metrics and logs of the
//! layers around it see the `DEADLINE_EXCEEDED` like any other status.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower_service::Service;

/// The `grpc-timeout` header (`<up to 8 digits><unit>`, gRPC over HTTP/2),
/// if present and well formed.
pub(crate) fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Wraps a service in [`Deadline`].
#[derive(Clone, Copy, Debug, Default)]
pub struct DeadlineLayer;

impl<S> tower::Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;
    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline { inner }
    }
}

/// Answers `DEADLINE_EXCEEDED` when the request's `grpc-timeout` passes
/// first. Requests without one run as long as they take.
#[derive(Clone, Debug)]
pub struct Deadline<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for Deadline<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = DeadlineFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        // Only RPCs with a deadline pay for a timer.
        let sleep = grpc_timeout(req.headers()).map(|d| Box::pin(tokio::time::sleep(d)));
        DeadlineFuture {
            inner: self.inner.call(req),
            sleep,
        }
    }
}

pin_project! {
    /// The response future of [`Deadline`].
    pub struct DeadlineFuture<F> {
        #[pin]
        inner: F,
        sleep: Option<Pin<Box<Sleep>>>,
    }
}

impl<F, E> Future for DeadlineFuture<F>
where
    F: Future<Output = Result<http::Response<tonic::body::Body>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.inner.poll(cx) {
            // The deadline goes on with the reply's body: a stream is cut
            // there. A reply already complete in its headers (a status
            // only) has nothing left to cut.
            return Poll::Ready(out.map(|response| match this.sleep.take() {
                Some(sleep) if !response.headers().contains_key("grpc-status") => {
                    response.map(|body| tonic::body::Body::new(DeadlineBody::new(body, sleep)))
                }
                _ => response,
            }));
        }
        let expired = match this.sleep {
            Some(sleep) => sleep.as_mut().poll(cx).is_ready(),
            None => false,
        };
        if expired {
            return Poll::Ready(Ok(
                tonic::Status::deadline_exceeded("deadline exceeded").into_http()
            ));
        }
        Poll::Pending
    }
}

/// A reply body cut at the deadline: until then it is the handler's; at
/// the deadline the handler's body is dropped and the trailers say
/// DEADLINE_EXCEEDED.
struct DeadlineBody {
    /// The handler's body; `None` once it has ended or been cut.
    inner: Option<tonic::body::Body>,
    sleep: Pin<Box<Sleep>>,
}

impl DeadlineBody {
    fn new(inner: tonic::body::Body, sleep: Pin<Box<Sleep>>) -> Self {
        Self {
            inner: Some(inner),
            sleep,
        }
    }
}

impl http_body::Body for DeadlineBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, tonic::Status>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        // What the handler has ready goes first, even at the deadline.
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                if matches!(frame, None | Some(Err(_))) {
                    self.inner = None;
                }
                return Poll::Ready(frame);
            }
            Poll::Pending => {}
        }
        if self.sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        // Dropping the body drops the handler's stream.
        self.inner = None;
        let mut trailers = http::HeaderMap::new();
        tonic::Status::deadline_exceeded("deadline exceeded")
            .add_header(&mut trailers)
            .map_err(|e| tonic::Status::internal(format!("deadline trailers: {e}")))?;
        Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner
            .as_ref()
            .is_none_or(http_body::Body::is_end_stream)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.as_ref().map_or_else(
            || http_body::SizeHint::with_exact(0),
            http_body::Body::size_hint,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units() {
        let mut h = http::HeaderMap::new();
        assert_eq!(grpc_timeout(&h), None);
        for (v, d) in [
            ("2H", Duration::from_secs(7200)),
            ("2M", Duration::from_secs(120)),
            ("10S", Duration::from_secs(10)),
            ("250m", Duration::from_millis(250)),
            ("7u", Duration::from_micros(7)),
            ("9n", Duration::from_nanos(9)),
        ] {
            h.insert("grpc-timeout", http::HeaderValue::from_static(v));
            assert_eq!(grpc_timeout(&h), Some(d), "{v}");
        }
        for bad in ["", "S", "10x", "-1S"] {
            h.insert("grpc-timeout", http::HeaderValue::from_static(bad));
            assert_eq!(grpc_timeout(&h), None, "{bad:?}");
        }
    }

    /// A reply stream that sends one message, then waits forever; it says
    /// when it is dropped.
    struct Endless {
        sent: bool,
        dropped: std::sync::Arc<std::sync::atomic::AtomicBool>,
    }

    impl http_body::Body for Endless {
        type Data = bytes::Bytes;
        type Error = tonic::Status;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, tonic::Status>>> {
            if self.sent {
                return Poll::Pending;
            }
            self.sent = true;
            Poll::Ready(Some(Ok(http_body::Frame::data(bytes::Bytes::from_static(
                b"message",
            )))))
        }
    }

    impl Drop for Endless {
        fn drop(&mut self) {
            self.dropped
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_reply_stream_is_cut_at_the_deadline_and_dropped() {
        use http_body_util::BodyExt;
        use tower::{Layer, ServiceExt};
        let dropped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let handler_dropped = dropped.clone();
        let streaming = tower::service_fn(move |_: http::Request<()>| {
            let body = Endless {
                sent: false,
                dropped: handler_dropped.clone(),
            };
            async move {
                Ok::<_, std::convert::Infallible>(http::Response::new(tonic::body::Body::new(body)))
            }
        });
        let mut req = http::Request::builder().uri("/s").body(()).unwrap();
        req.headers_mut()
            .insert("grpc-timeout", http::HeaderValue::from_static("300m"));
        let mut body = DeadlineLayer
            .layer(streaming)
            .oneshot(req)
            .await
            .unwrap()
            .into_body();
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "message");
        assert!(!dropped.load(std::sync::atomic::Ordering::SeqCst));
        // The stream never ends by itself: the deadline ends it.
        let last = body.frame().await.unwrap().unwrap();
        let trailers = last.into_trailers().unwrap();
        assert_eq!(trailers["grpc-status"], "4");
        assert!(dropped.load(std::sync::atomic::Ordering::SeqCst));
        assert!(body.frame().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_answer_becomes_deadline_exceeded_and_an_early_one_passes() {
        use tower::{Layer, ServiceExt};
        let slow = tower::service_fn(|req: http::Request<()>| async move {
            let wait: u64 = req.uri().path()[1..].parse().unwrap();
            tokio::time::sleep(Duration::from_millis(wait)).await;
            Ok::<_, std::convert::Infallible>(http::Response::new(tonic::body::Body::empty()))
        });
        let call = |path: &str, timeout: Option<&'static str>| {
            let mut req = http::Request::builder().uri(path).body(()).unwrap();
            if let Some(t) = timeout {
                req.headers_mut()
                    .insert("grpc-timeout", http::HeaderValue::from_static(t));
            }
            DeadlineLayer.layer(slow).oneshot(req)
        };
        let status = |res: http::Response<tonic::body::Body>| {
            tonic::Status::from_header_map(res.headers()).map(|s| s.code())
        };
        assert_eq!(
            status(call("/500", Some("100m")).await.unwrap()),
            Some(tonic::Code::DeadlineExceeded)
        );
        assert_eq!(status(call("/50", Some("100m")).await.unwrap()), None);
        assert_eq!(status(call("/5000", None).await.unwrap()), None);
    }
}
