//! Rates per identity, with bounded memory, on `governor`'s GCRA.
//!
//! governor keeps one state per key (the theoretical arrival time of the
//! next call) in a store we supply. The store here holds at most
//! `capacity` identities. When it is full, keys whose state equals a fresh
//! one (their bucket has refilled) are dropped first; an identity that is
//! dropped and comes back gets exactly what it would have had, so
//! forgetting never hands out a fresh allowance. If the store is still
//! full, a new identity shares one overflow state with every other
//! newcomer: stricter than its own would be, never looser.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::state::{NotKeyed, StateStore};
use governor::{Quota, RateLimiter};

use super::file::Rate;

/// The store of one per-identity rate.
#[derive(Debug)]
pub struct BoundedStore {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    states: HashMap<Arc<str>, Nanos>,
    overflow: Option<Nanos>,
}

impl BoundedStore {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl StateStore for BoundedStore {
    type Key = Arc<str>;

    fn measure_and_replace<T, F, E>(&self, key: &Arc<str>, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let mut inner = self.lock();
        let known = inner.states.get(key).copied();
        if known.is_some() || inner.states.len() < self.capacity {
            let (result, next) = f(known)?;
            inner.states.insert(key.clone(), next);
            return Ok(result);
        }
        let (result, next) = f(inner.overflow)?;
        inner.overflow = Some(next);
        Ok(result)
    }
}

impl ShrinkableKeyedStateStore<Arc<str>> for BoundedStore {
    fn retain_recent(&self, drop_below: Nanos) {
        let mut inner = self.lock();
        let below = u64::from(drop_below);
        inner.states.retain(|_, tat| u64::from(*tat) > below);
        if inner.overflow.is_some_and(|tat| u64::from(tat) <= below) {
            inner.overflow = None;
        }
    }

    fn len(&self) -> usize {
        self.lock().states.len()
    }

    fn is_empty(&self) -> bool {
        self.lock().states.is_empty()
    }
}

/// governor's quota for `rate`: one call every `1 / per_second`, bursts of
/// `burst`.
fn quota(rate: Rate) -> Quota {
    let period = Duration::from_secs_f64(1.0 / rate.per_second).max(Duration::from_nanos(1));
    let burst = std::num::NonZeroU32::new(rate.burst).unwrap_or(std::num::NonZeroU32::MIN);
    Quota::with_period(period)
        .unwrap_or(Quota::per_second(std::num::NonZeroU32::MAX))
        .allow_burst(burst)
}

/// One rate, kept per identity.
#[derive(Debug)]
pub struct PerIdentity {
    rate: Rate,
    capacity: usize,
    limiter: RateLimiter<Arc<str>, BoundedStore, DefaultClock, NoOpMiddleware>,
    clock: DefaultClock,
}

impl PerIdentity {
    /// `rate` for each of at most `capacity` identities tracked apart.
    pub fn new(rate: Rate, capacity: usize) -> Self {
        let clock = DefaultClock::default();
        Self {
            rate,
            capacity,
            limiter: RateLimiter::new(quota(rate), BoundedStore::new(capacity), clock.clone()),
            clock,
        }
    }

    /// The rate it enforces.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// How many identities it tracks apart before newcomers share the
    /// overflow state.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Takes one call from `identity`'s allowance, or says how long until
    /// one is available.
    pub fn check(&self, identity: &Arc<str>) -> Result<(), Duration> {
        if self.limiter.len() >= self.capacity {
            // Only states indistinguishable from fresh ones go.
            self.limiter.retain_recent();
        }
        self.limiter
            .check_key(identity)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Identities tracked apart now.
    pub fn tracked(&self) -> usize {
        self.limiter.len()
    }
}

/// One rate shared by every caller (the `total`).
#[derive(Debug)]
pub struct Shared {
    rate: Rate,
    limiter: RateLimiter<NotKeyed, governor::state::InMemoryState, DefaultClock, NoOpMiddleware>,
    clock: DefaultClock,
}

impl Shared {
    /// `rate`, shared by every caller.
    pub fn new(rate: Rate) -> Self {
        let clock = DefaultClock::default();
        Self {
            rate,
            limiter: RateLimiter::direct_with_clock(quota(rate), clock.clone()),
            clock,
        }
    }

    /// The rate it enforces.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// Takes one call, or says how long until one is available.
    pub fn check(&self) -> Result<(), Duration> {
        self.limiter
            .check()
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    #[test]
    fn each_identity_has_its_own_burst_then_waits() {
        let r = PerIdentity::new(
            Rate {
                per_second: 1.0,
                burst: 2,
            },
            100,
        );
        let (a, b) = (id("a"), id("b"));
        assert!(r.check(&a).is_ok() && r.check(&a).is_ok());
        let wait = r.check(&a).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert!(r.check(&b).is_ok(), "b has its own bucket");
    }

    #[test]
    fn memory_is_bounded_and_forgetting_gives_no_fresh_allowance() {
        // A slow rate, so no bucket refills during the test.
        let r = PerIdentity::new(
            Rate {
                per_second: 0.001,
                burst: 1,
            },
            3,
        );
        for n in 0..3 {
            assert!(r.check(&id(&n.to_string())).is_ok());
        }
        assert_eq!(r.tracked(), 3);
        // Full, and no state is fresh: none is forgotten, and newcomers
        // share one overflow state.
        assert!(r.check(&id("new-1")).is_ok(), "the overflow's first call");
        assert!(r.check(&id("new-2")).is_err(), "the overflow is shared");
        assert_eq!(r.tracked(), 3);
        // The tracked ones are still limited: nobody got a fresh bucket.
        for n in 0..3 {
            assert!(r.check(&id(&n.to_string())).is_err(), "{n}");
        }
    }

    #[test]
    fn refilled_states_make_room_for_new_identities() {
        // Fast enough that a state is fresh again a moment later.
        let r = PerIdentity::new(
            Rate {
                per_second: 1e6,
                burst: 1,
            },
            2,
        );
        assert!(r.check(&id("a")).is_ok() && r.check(&id("b")).is_ok());
        std::thread::sleep(Duration::from_millis(2));
        assert!(r.check(&id("c")).is_ok());
        assert!(r.tracked() <= 2, "{}", r.tracked());
    }

    #[test]
    fn the_total_is_shared() {
        let t = Shared::new(Rate {
            per_second: 0.001,
            burst: 2,
        });
        assert!(t.check().is_ok() && t.check().is_ok());
        assert!(t.check().is_err());
    }
}
