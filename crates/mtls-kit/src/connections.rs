//! Serving each accepted connection, with a maximum age of its own.
//!
//! tonic's `Server` has one `max_connection_age` for every connection, so
//! clients that connected together (after a deploy, a network blip) would
//! all be sent GOAWAY, and reconnect, together. Each connection here gets
//! its own age, jittered (±10% by default): at that age it is closed
//! gracefully (GOAWAY; in-flight RPCs may finish), and after the grace
//! period it is closed for good.
//!
//! (tonic 0.14's own `max_connection_age`, when a grace period is set, does
//! not send GOAWAY at all: it sleeps for the age plus the grace and then
//! drops the connection with whatever was in flight.)
//!
//! Each connection is served by hyper's HTTP/2 server directly, in one task
//! that holds little more than hyper's connection. Running a tonic `Server`
//! per connection instead (to give each its own shutdown signal) kept a
//! second task of about 17 KiB per connection alive: over half again the
//! memory of an idle connection (BENCHMARKS.md, "idle"). What tonic's
//! server adds around the routes and the kit needs is done here: the
//! connection's [`PeerInfo`] in every request, the request body as tonic's
//! `Body`, and the client's deadline ([`crate::deadline`]).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::watch;
use tonic::body::Body;
use tonic::service::Routes;
use tonic::transport::server::Connected;
use tower::ServiceExt;

use crate::authz::{Authz, AuthzLayer};
use crate::conn::{PeerInfo, PeerStream};
use crate::deadline::{Deadline, DeadlineLayer};
use crate::metrics::rpc::{Rpc, RpcLayer};
use crate::quota::layer::Quota;
use crate::quota::QuotaLayer;
use crate::replica::{ReplicaHeader, ReplicaLayer};
use crate::server::Limits;
use crate::settle::{Settle, SettleLayer};

/// `age` moved by up to `fraction` of itself either way, uniformly.
/// `fraction` is clamped to `0..=1`.
pub fn jittered(age: Duration, fraction: f64) -> Duration {
    jittered_by(age, fraction, random_unit())
}

/// `age` scaled by `1 + fraction * (2 * unit - 1)`, for `unit` in `0..1`.
fn jittered_by(age: Duration, fraction: f64, unit: f64) -> Duration {
    let fraction = if fraction.is_finite() {
        fraction.clamp(0.0, 1.0)
    } else {
        0.0
    };
    age.mul_f64(1.0 + fraction * (2.0 * unit - 1.0))
}

/// A uniform value in `0..1`. std's `RandomState` gets fresh random keys
/// per instance, which is all the randomness spreading reconnects needs
/// (nothing here must be unpredictable to an attacker).
fn random_unit() -> f64 {
    let bits = RandomState::new().build_hasher().finish();
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// What every RPC passes through, outermost first: metrics and span,
/// early-answer settling, the replica header, authorization, the deadline,
/// the limits and fair share, then the routes.
pub type Stack = Rpc<Settle<ReplicaHeader<Authz<Deadline<Quota<Routes>>>>>>;

/// The layers of [`Stack`], as the server configures them.
pub struct Layers {
    /// RPC metrics and span ([`crate::metrics::rpc`]); outermost, so it
    /// sees every final status, denials and refusals included.
    pub rpc: RpcLayer,
    /// Lets early answers end their streams cleanly ([`crate::settle`]).
    pub settle: SettleLayer,
    /// The `x-replica` response header ([`crate::replica`]).
    pub replica: ReplicaLayer,
    /// The policy's decision on every RPC ([`crate::authz`]).
    pub authz: AuthzLayer,
    /// Limits and fair share ([`crate::quota`]); inside the deadline, so a
    /// call waiting for its share gives up at its deadline.
    pub quota: QuotaLayer,
}

/// What every connection shares: the HTTP/2 settings and the service.
#[derive(Clone)]
pub struct Shared {
    http2: http2::Builder<TokioExecutor>,
    service: Stack,
}

impl Shared {
    /// HTTP/2 settings from `limits` (tonic's defaults for the rest), and
    /// `routes` inside `layers`.
    pub fn new(limits: &Limits, layers: Layers, routes: Routes) -> Self {
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.max_concurrent_streams)
            .max_local_error_reset_streams(Some(limits.max_local_error_reset_streams))
            .max_header_list_size(limits.max_header_list_size)
            .keep_alive_interval(Some(limits.keepalive_interval))
            .keep_alive_timeout(limits.keepalive_timeout);
        let service = tower::ServiceBuilder::new()
            .layer(layers.rpc)
            .layer(layers.settle)
            .layer(layers.replica)
            .layer(layers.authz)
            .layer(DeadlineLayer)
            .layer(layers.quota)
            .service(routes);
        Self { http2, service }
    }
}

/// How long a connection lives.
#[derive(Clone, Copy, Debug)]
pub struct Lifetime {
    /// Until its graceful close (GOAWAY) begins.
    pub age: Duration,
    /// From then until it is closed regardless.
    pub grace: Duration,
}

/// Serves `stream` until the connection ends, its `lifetime.age` is
/// reached, or `stop` turns true; then closes it gracefully, like tonic's
/// own shutdown (GOAWAY, in-flight RPCs finish), but in any case by the end
/// of the grace period after its age.
pub async fn serve(
    shared: &Shared,
    lifetime: Lifetime,
    mut stream: PeerStream,
    mut stop: watch::Receiver<bool>,
) -> Result<(), hyper::Error> {
    let closed = stream.closed();
    let aged = tokio::time::Instant::now() + lifetime.age;
    let info: PeerInfo = stream.connect_info();
    let service = shared
        .service
        .clone()
        .map_request(move |req: http::Request<Incoming>| {
            let mut req = req.map(Body::new);
            req.extensions_mut().insert(info.clone());
            req
        });
    let conn = shared
        .http2
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => return result,
        _ = closed => {}
        _ = stop.wait_for(|stop| *stop) => {}
        () = tokio::time::sleep_until(aged) => {}
    }
    conn.as_mut().graceful_shutdown();
    // Past its age and grace, the connection is dropped (and its socket
    // closed) with whatever is still in flight. Enforced here, around the
    // connection, rather than in its stream, where a timer was polled on
    // every read and write.
    tokio::select! {
        result = conn => result,
        () = tokio::time::sleep_until(aged + lifetime.grace) => {
            tracing::debug!("connection closed: past its max age and grace period");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_spreads_ages_within_bounds() {
        let age = Duration::from_secs(600);
        let samples: Vec<Duration> = (0..10_000).map(|_| jittered(age, 0.1)).collect();
        let (min, max) = (
            *samples.iter().min().unwrap(),
            *samples.iter().max().unwrap(),
        );
        assert!(min >= Duration::from_secs(540), "{min:?}");
        assert!(max <= Duration::from_secs(660), "{max:?}");
        // Spread over the whole range, not constant: with 10,000 uniform
        // samples the extremes come within 1% of the bounds.
        assert!(min < Duration::from_secs(546), "{min:?}");
        assert!(max > Duration::from_secs(654), "{max:?}");
        let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
        assert!(
            mean > Duration::from_secs(594) && mean < Duration::from_secs(606),
            "{mean:?}"
        );
        // Both halves are about equally likely.
        let below = samples.iter().filter(|s| **s < age).count();
        assert!((4_500..=5_500).contains(&below), "{below}");
    }

    #[test]
    fn jitter_bounds_are_exact_and_fraction_is_clamped() {
        let age = Duration::from_secs(100);
        assert_eq!(jittered_by(age, 0.1, 0.0), Duration::from_secs(90));
        assert_eq!(jittered_by(age, 0.1, 0.5), age);
        assert_eq!(jittered(age, 0.0), age);
        assert_eq!(jittered_by(age, 5.0, 0.0), Duration::ZERO);
        assert_eq!(jittered_by(age, f64::NAN, 0.0), age);
    }
}
