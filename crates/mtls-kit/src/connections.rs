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

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use tokio::sync::watch;
use tokio_stream::StreamExt;
use tonic::service::Routes;
use tonic::transport::Server;
use tower::layer::util::{Identity, Stack};

use crate::authz::AuthzLayer;
use crate::conn::PeerStream;
use crate::metrics::rpc::RpcLayer;
use crate::replica::ReplicaLayer;
use crate::settle::SettleLayer;

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

/// The layers every RPC passes: [`SettleLayer`] outside [`AuthzLayer`].
pub type Layers =
    Stack<AuthzLayer, Stack<ReplicaLayer, Stack<SettleLayer, Stack<RpcLayer, Identity>>>>;

/// How long a connection lives.
#[derive(Clone, Copy, Debug)]
pub struct Lifetime {
    /// Until its graceful close (GOAWAY) begins.
    pub age: Duration,
    /// From then until it is closed regardless.
    pub grace: Duration,
}

/// Serves `stream` with `server`'s settings until the connection ends, its
/// `lifetime.age` is reached, or `stop` turns true; then closes it
/// gracefully, like tonic's own shutdown (GOAWAY, in-flight RPCs finish),
/// but in any case by the end of the grace period after its age.
pub async fn serve(
    server: &Server<Layers>,
    routes: Routes,
    lifetime: Lifetime,
    mut stream: PeerStream,
    mut stop: watch::Receiver<bool>,
) -> Result<(), tonic::transport::Error> {
    let closed = stream.closed();
    let aged = tokio::time::Instant::now() + lifetime.age;
    stream.close_by(aged + lifetime.grace);
    let router = server.clone().add_routes(routes);
    // tonic's serve loop ends with its incoming stream, and a graceful
    // server then shuts its connections down at once: so the stream stays
    // open after its one connection, and the loop ends when the connection
    // does (or on `stop`).
    let incoming =
        tokio_stream::once(Ok::<_, std::io::Error>(stream)).chain(tokio_stream::pending());
    let signal = async move {
        tokio::select! {
            _ = closed => {}
            _ = stop.wait_for(|stop| *stop) => {}
            () = tokio::time::sleep_until(aged) => {}
        }
    };
    router.serve_with_incoming_shutdown(incoming, signal).await
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
