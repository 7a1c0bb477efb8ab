//! The client's deadline, enforced on the server: an RPC whose
//! `grpc-timeout` passes before the handler answers ends with
//! `DEADLINE_EXCEEDED`, and the handler's future is dropped (cancelled).
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
            return Poll::Ready(out);
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
