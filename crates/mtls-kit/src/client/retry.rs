//! Retrying a call once when a replica could not serve it.
//!
//! A service's client says, per call, whether the RPC is idempotent (doing
//! it twice is the same as doing it once: reads, health). Those are retried
//! once on `UNAVAILABLE`, wherever it came from, and when their connection
//! failed under them (which tonic reports as `UNKNOWN`): the balancer
//! passes over the replica that failed, so the retry goes to another one.
//!
//! Anything else (a write) is retried only when the failure proves the
//! request never reached a server, whatever status code tonic gave it:
//!
//! * the balancer had given it a connection that had just closed
//!   ([`NotSent`]);
//! * the server refused the stream (`REFUSED_STREAM`: by RFC 9113 §8.7 the
//!   stream was not processed);
//! * the server's GOAWAY (without an error) had already excluded the stream
//!   (h2 gives that error only to streams above the GOAWAY's last stream id,
//!   and to streams opened after it).
//!
//! A write that failed any other way, say its connection reset while the
//! server was working on it, may have been applied: retrying it could apply
//! it twice, so the caller gets the error.
//!
//! One more case is retried whatever the method: `RESOURCE_EXHAUSTED` with
//! a `grpc-retry-pushback-ms` (gRFC A6), which the kit's limits send for a
//! call they refused before any handler ran ([`crate::quota`]). The retry
//! waits the pushback first; a pushback above [`MAX_PUSHBACK`], or one that
//! is not a whole number of milliseconds (A6: "do not retry"), is not
//! waited for, and the caller gets the refusal.
//!
//! ```no_run
//! # async fn demo(mut client: tonic_health::pb::health_client::HealthClient<mtls_kit::client::balance::BalancedChannel>) {
//! use mtls_kit::client::retry::{self, Idempotency};
//! use tonic_health::pb::HealthCheckRequest;
//! let outcome = retry::call(Idempotency::Idempotent, || {
//!     let mut client = client.clone();
//!     async move { client.check(HealthCheckRequest::default()).await }
//! })
//! .await;
//! # }
//! ```

use std::future::Future;
use std::time::Duration;

use tonic::{Code, Status};

use super::balance::NotSent;

/// Whether an RPC may be done twice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Idempotency {
    /// Doing it twice is the same as once (reads, health): retried once on
    /// any `UNAVAILABLE`.
    Idempotent,
    /// Doing it twice may differ (writes): retried only if it was never
    /// sent.
    NotIdempotent,
}

/// A call's result and how many times it was retried (0 or 1).
#[derive(Debug)]
pub struct Retried<T> {
    /// The last attempt's result.
    pub result: Result<T, Status>,
    /// How many times the call was made again: 0 or 1.
    pub retries: u32,
}

/// Makes the call with `attempt`, and once more if the first failure is
/// [`retryable`]. `attempt` builds a fresh request each time (a request is
/// consumed by sending it).
pub async fn call<T, F, Fut>(idempotency: Idempotency, mut attempt: F) -> Retried<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    match attempt().await {
        Err(status) if pushback(&status).is_some_and(|p| p <= MAX_PUSHBACK) => {
            let wait = pushback(&status).unwrap_or_default();
            tracing::debug!(code = ?status.code(), pushback_ms = wait.as_millis() as u64, "retrying once after the server's pushback");
            tokio::time::sleep(wait).await;
            Retried {
                result: attempt().await,
                retries: 1,
            }
        }
        Err(status) if retryable(&status, idempotency) => {
            tracing::debug!(code = ?status.code(), message = status.message(), "retrying once");
            Retried {
                result: attempt().await,
                retries: 1,
            }
        }
        result => Retried { result, retries: 0 },
    }
}

/// The longest server pushback [`call`] waits before its retry.
pub const MAX_PUSHBACK: Duration = Duration::from_secs(10);

/// The server's pushback on a `RESOURCE_EXHAUSTED` (gRFC A6:
/// `grpc-retry-pushback-ms`, a non-negative whole number of milliseconds);
/// `None` without one, or when it is not valid (A6: then do not retry).
pub fn pushback(status: &Status) -> Option<Duration> {
    if status.code() != Code::ResourceExhausted {
        return None;
    }
    let ms = status
        .metadata()
        .get("grpc-retry-pushback-ms")?
        .to_str()
        .ok()?;
    if ms.is_empty() || !ms.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    ms.parse().ok().map(Duration::from_millis)
}

/// Whether a call that failed with `status` may be made again.
///
/// A request that provably never left is retried whatever the code: tonic
/// reports a stream refused by the peer's GOAWAY as `UNKNOWN`, not
/// `UNAVAILABLE`.
pub fn retryable(status: &Status, idempotency: Idempotency) -> bool {
    never_sent(status)
        || (idempotency == Idempotency::Idempotent
            && (status.code() == Code::Unavailable || connection_failed(status)))
}

/// Whether the call failed because its connection did (reset, closed,
/// broken), not with a status the server sent. gRPC's own implementations
/// report that as `UNAVAILABLE`; tonic as `UNKNOWN`, with the transport
/// error as the status's source.
fn connection_failed(status: &Status) -> bool {
    if status.code() != Code::Unknown {
        return false;
    }
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        if e.is::<tonic::transport::Error>() || e.is::<h2::Error>() || e.is::<std::io::Error>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// Whether `status` proves the request never reached a server (see the
/// module documentation).
pub fn never_sent(status: &Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        if e.is::<NotSent>() {
            return true;
        }
        // hyper's HTTP/2 client handed the request back unsent: it was still
        // queued for a connection that ended (after the server's GOAWAY,
        // hyper's dispatch task exits without draining its queue). tonic
        // reports it as CANCELLED, "operation was canceled".
        if e.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_canceled)
        {
            return true;
        }
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return h2.is_remote()
                && ((h2.is_reset() && h2.reason() == Some(h2::Reason::REFUSED_STREAM))
                    || (h2.is_go_away() && h2.reason() == Some(h2::Reason::NO_ERROR)));
        }
        source = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exhausted(pushback: Option<&str>) -> Status {
        let mut s = Status::resource_exhausted("over the limit");
        if let Some(p) = pushback {
            s.metadata_mut()
                .insert("grpc-retry-pushback-ms", p.parse().unwrap());
        }
        s
    }

    #[test]
    fn a_pushback_is_a_whole_number_of_milliseconds() {
        assert_eq!(
            pushback(&exhausted(Some("250"))),
            Some(Duration::from_millis(250))
        );
        assert_eq!(pushback(&exhausted(Some("0"))), Some(Duration::ZERO));
        for bad in ["-1", "1.5", "soon", ""] {
            assert_eq!(pushback(&exhausted(Some(bad))), None, "{bad:?}");
        }
        assert_eq!(pushback(&exhausted(None)), None);
        let mut other = Status::unavailable("x");
        other
            .metadata_mut()
            .insert("grpc-retry-pushback-ms", "5".parse().unwrap());
        assert_eq!(pushback(&other), None, "only RESOURCE_EXHAUSTED");
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_with_pushback_is_retried_after_it_even_for_writes() {
        let attempts = Cell::new(0);
        let started = tokio::time::Instant::now();
        let outcome = call(Idempotency::NotIdempotent, || {
            attempts.set(attempts.get() + 1);
            let first = attempts.get() == 1;
            async move {
                if first {
                    Err(exhausted(Some("300")))
                } else {
                    Ok(())
                }
            }
        })
        .await;
        assert!(outcome.result.is_ok());
        assert_eq!((attempts.get(), outcome.retries), (2, 1));
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "the pushback was not waited"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn no_pushback_or_too_long_a_one_is_not_retried() {
        for p in [None, Some("600000"), Some("-5")] {
            let attempts = Cell::new(0);
            let outcome = call(Idempotency::Idempotent, || {
                attempts.set(attempts.get() + 1);
                async { Err::<(), _>(exhausted(p)) }
            })
            .await;
            assert_eq!((attempts.get(), outcome.retries), (1, 0), "{p:?}");
        }
    }
    use std::cell::Cell;

    fn unavailable_not_sent() -> Status {
        // What tonic builds from a transport error: the cause is kept as
        // the status's source.
        let status = Status::from_error(Box::new(tonic::ConnectError(Box::new(NotSent {
            addr: "127.0.0.1:1".parse().unwrap(),
        }))));
        assert_eq!(status.code(), Code::Unavailable);
        status
    }

    #[tokio::test]
    async fn idempotent_calls_are_retried_once_on_unavailable() {
        let attempts = Cell::new(0);
        let out = call(Idempotency::Idempotent, || {
            attempts.set(attempts.get() + 1);
            async { Err::<(), _>(Status::unavailable("down")) }
        })
        .await;
        assert_eq!((attempts.get(), out.retries), (2, 1));
        assert_eq!(out.result.unwrap_err().code(), Code::Unavailable);
    }

    #[tokio::test]
    async fn other_codes_are_not_retried() {
        let attempts = Cell::new(0);
        let out = call(Idempotency::Idempotent, || {
            attempts.set(attempts.get() + 1);
            async { Err::<(), _>(Status::permission_denied("no")) }
        })
        .await;
        assert_eq!((attempts.get(), out.retries), (1, 0));
    }

    #[test]
    fn writes_are_retried_only_when_never_sent() {
        let sent = Status::unavailable("the server said so");
        assert!(!retryable(&sent, Idempotency::NotIdempotent));
        assert!(retryable(&sent, Idempotency::Idempotent));
        assert!(retryable(
            &unavailable_not_sent(),
            Idempotency::NotIdempotent
        ));
        // Whatever code tonic gave it, a request never sent may go again.
        let unknown = Status::from_error(Box::new(NotSent {
            addr: "127.0.0.1:1".parse().unwrap(),
        }));
        assert_eq!(unknown.code(), Code::Unknown);
        assert!(retryable(&unknown, Idempotency::NotIdempotent));
        assert!(!retryable(
            &Status::unknown("sent"),
            Idempotency::Idempotent
        ));
    }
}
