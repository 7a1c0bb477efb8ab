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
    pub result: Result<T, Status>,
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
