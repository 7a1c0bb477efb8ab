//! What one caller can hold: a fair share of the server by identity, on by
//! default, and per-identity limits from a limits file.
//!
//! * [`file`](mod@file): the limits file, parsed strictly and compiled
//!   ([`LimitsConfig`]);
//! * [`share`]: fair share, each identity's calls running at once;
//! * [`rate`]: rates per identity on governor's GCRA, in bounded memory;
//! * [`layer`]: the tower layer that admits, refuses or queues each call;
//! * [`cli`]: `limits check`, for a service's server binary.
//!
//! A call is admitted in this order: the calls in flight of its limit
//! entry (per identity) and of the total, then their rates, then its
//! identity's fair share. Over a limit it is refused with
//! `RESOURCE_EXHAUSTED` and `grpc-retry-pushback-ms` (gRFC A6), before any
//! handler runs, so a client may retry it whatever the method. Over its
//! share it waits (up to `fair_share.max_wait_ms`, and never past its
//! deadline) instead: fair share reorders work, it refuses nothing.
//!
//! The identity is the verified certificate's, as the policy sees it: one
//! key per peer, its SPIFFE ID or else its first URI SAN, DNS SAN, or
//! Subject ([`PeerIdentity::display_name`]).

pub mod cli;
pub mod file;
pub mod layer;
pub mod rate;
pub mod share;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;

pub use file::{parse, Allowance, FairShare, LimitEntry, LimitsConfig, LimitsError, Rate};
pub use layer::QuotaLayer;

use crate::identity::PeerIdentity;

/// Why a call is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Its limit's rate.
    Rate,
    /// Its limit's calls in flight.
    InFlight,
    /// It waited its longest for its identity's fair share.
    Wait,
}

impl Reason {
    /// The `reason` label of `mtls_limited_calls_total` and of the log.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Rate => "rate",
            Reason::InFlight => "in_flight",
            Reason::Wait => "wait",
        }
    }
}

/// A refusal: which limit (an entry's name, `total` or `fair_share`), why,
/// and when to retry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The entry's name, `total`, or `fair_share`.
    pub limit: Arc<str>,
    /// Which of its bounds the call is over.
    pub reason: Reason,
    /// When the client may try again: sent as `grpc-retry-pushback-ms`.
    pub pushback: Duration,
}

/// The limits in force and what every caller holds against them. One per
/// server; cheap to share.
#[derive(Debug)]
pub struct Limiter {
    compiled: ArcSwap<Compiled>,
    shares: share::Shares,
    /// Calls in flight per (limit entry, identity), for entries with
    /// `max_in_flight`. An entry leaves when its count returns to 0, so the
    /// map is bounded by the calls in flight.
    in_flight: Mutex<HashMap<EntryKey, u32>>,
    total_in_flight: AtomicU32,
}

/// A limit entry's name and an identity.
type EntryKey = (Arc<str>, Arc<str>);

/// A [`LimitsConfig`] with its rate states.
#[derive(Debug)]
struct Compiled {
    config: LimitsConfig,
    names: Vec<Arc<str>>,
    rates: Vec<Option<Arc<rate::PerIdentity>>>,
    total_rate: Option<Arc<rate::Shared>>,
}

const TOTAL: &str = "total";
const FAIR_SHARE: &str = "fair_share";

impl Default for Limiter {
    /// Fair share only, as with no limits file.
    fn default() -> Self {
        Self::new(LimitsConfig::fair_share_only())
    }
}

impl Limiter {
    /// A limiter enforcing `config`, with nobody holding anything yet.
    pub fn new(config: LimitsConfig) -> Self {
        Self {
            compiled: ArcSwap::from_pointee(Compiled::new(config, None)),
            shares: share::Shares::default(),
            in_flight: Mutex::new(HashMap::new()),
            total_in_flight: AtomicU32::new(0),
        }
    }

    /// Puts `config` in force for the next calls. The rate state of an
    /// entry whose name and rate are unchanged is kept, so a reload never
    /// refills a bucket; calls in flight keep counting until they end.
    pub fn apply(&self, config: LimitsConfig) {
        let old = self.compiled.load();
        self.compiled
            .store(Arc::new(Compiled::new(config, Some(&old))));
    }

    /// The configuration in force.
    pub fn config(&self) -> LimitsConfig {
        self.compiled.load().config.clone()
    }

    /// Identities with a fair-share entry now (running, waiting, or idle
    /// and not yet swept).
    pub fn tracked_identities(&self) -> usize {
        self.shares.tracked()
    }

    /// Checks the limits for a call of `method` by `peer`. Returns what the
    /// call holds while it runs (dropping it gives it back) and the refusal
    /// it would get, if any; in dry run the caller lets it through anyway.
    pub(crate) fn admit(self: &Arc<Self>, peer: &PeerIdentity, method: &str) -> Admission {
        let compiled = self.compiled.load();
        let config = &compiled.config;
        // Allocated only when a limit entry needs it as a key: the fair
        // share looks its table up by the borrowed name.
        let identity = peer.display_name();
        let mut ticket = Ticket {
            limiter: self.clone(),
            held: Held::default(),
            permit: None,
        };
        let held = &mut ticket.held;
        let entry = config.entry_for(peer.principal_names(), method);
        let refusal = self
            .hold_in_flight(&compiled, entry.map(|(i, _)| i), identity, held)
            .or_else(|| Self::take_rate(&compiled, entry.map(|(i, _)| i), identity));
        if refusal.is_some() && !config.dry_run {
            return Admission {
                ticket,
                refusal,
                share: Share::None,
                dry_run: false,
            };
        }
        let share = if config.fair_share.enabled {
            match self
                .shares
                .enter(identity, config.fair_share.max_in_flight_per_identity)
            {
                share::Entry::Now(permit) => Share::Held(permit),
                share::Entry::Wait(sem) => Share::Wait {
                    sem,
                    max_wait: config.fair_share.max_wait,
                    pushback: config.pushback,
                },
            }
        } else {
            Share::None
        };
        Admission {
            ticket,
            refusal,
            share,
            dry_run: config.dry_run,
        }
    }

    fn hold_in_flight(
        &self,
        compiled: &Compiled,
        entry: Option<usize>,
        identity: &str,
        held: &mut Held,
    ) -> Option<Refusal> {
        let config = &compiled.config;
        if let Some(max) = config.total.max_in_flight {
            let now = self.total_in_flight.fetch_add(1, Ordering::AcqRel) + 1;
            held.total = true;
            if now > max {
                return Some(Refusal {
                    limit: Arc::from(TOTAL),
                    reason: Reason::InFlight,
                    pushback: config.pushback,
                });
            }
        }
        let i = entry?;
        let max = config.entries[i].allowance.max_in_flight?;
        let key = (compiled.names[i].clone(), Arc::from(identity));
        let mut map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let count = map.entry(key.clone()).or_insert(0);
        *count += 1;
        let over = *count > max;
        drop(map);
        held.entry = Some(key);
        over.then(|| Refusal {
            limit: compiled.names[i].clone(),
            reason: Reason::InFlight,
            pushback: config.pushback,
        })
    }

    fn take_rate(compiled: &Compiled, entry: Option<usize>, identity: &str) -> Option<Refusal> {
        let refuse = |limit: &Arc<str>, wait: Duration| Refusal {
            limit: limit.clone(),
            reason: Reason::Rate,
            // In whole milliseconds, rounded up (a retry after a pushback
            // rounded down would come too early and be refused again), and
            // at least 1 ms: 0 would tell a client to retry at once.
            pushback: Duration::from_millis(wait.as_nanos().div_ceil(1_000_000).max(1) as u64),
        };
        if let Some(i) = entry {
            if let Some(rate) = &compiled.rates[i] {
                if let Err(wait) = rate.check(&Arc::from(identity)) {
                    return Some(refuse(&compiled.names[i], wait));
                }
            }
        }
        if let Some(total) = &compiled.total_rate {
            if let Err(wait) = total.check() {
                return Some(refuse(&Arc::from(TOTAL), wait));
            }
        }
        None
    }

    fn release(&self, held: &mut Held) {
        if std::mem::take(&mut held.total) {
            self.total_in_flight.fetch_sub(1, Ordering::AcqRel);
        }
        if let Some(key) = held.entry.take() {
            let mut map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(count) = map.get_mut(&key) {
                *count -= 1;
                if *count == 0 {
                    map.remove(&key);
                }
            }
        }
    }
}

impl Compiled {
    fn new(config: LimitsConfig, old: Option<&Compiled>) -> Self {
        let names: Vec<Arc<str>> = config.entries.iter().map(|e| Arc::from(&*e.name)).collect();
        let capacity = config.max_tracked_identities;
        let rates = config
            .entries
            .iter()
            .map(|e| {
                let rate = e.allowance.rate?;
                let kept = old.and_then(|old| {
                    let i = old.names.iter().position(|n| **n == *e.name)?;
                    old.rates[i]
                        .clone()
                        .filter(|r| r.rate() == rate && r.capacity() == capacity)
                });
                Some(kept.unwrap_or_else(|| Arc::new(rate::PerIdentity::new(rate, capacity))))
            })
            .collect();
        let total_rate = config.total.rate.map(|rate| {
            old.and_then(|old| old.total_rate.clone().filter(|r| r.rate() == rate))
                .unwrap_or_else(|| Arc::new(rate::Shared::new(rate)))
        });
        Self {
            config,
            names,
            rates,
            total_rate,
        }
    }
}

/// What an admitted call holds against the limits in flight.
#[derive(Debug, Default)]
struct Held {
    total: bool,
    entry: Option<EntryKey>,
}

/// Its identity's fair share, for one call.
pub(crate) enum Share {
    None,
    Held(tokio::sync::OwnedSemaphorePermit),
    Wait {
        sem: Arc<tokio::sync::Semaphore>,
        max_wait: Duration,
        pushback: Duration,
    },
}

/// The outcome of [`Limiter::admit`].
pub(crate) struct Admission {
    /// What the call holds; given back when dropped.
    pub ticket: Ticket,
    pub refusal: Option<Refusal>,
    pub share: Share,
    /// Whether the limits it was admitted under are a dry run: then its
    /// refusal, and a wait past the share's limit, are only counted and
    /// logged.
    pub dry_run: bool,
}

/// Held by a running call: its places in flight and its share's permit.
pub struct Ticket {
    limiter: Arc<Limiter>,
    held: Held,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Ticket {
    pub(crate) fn with_permit(mut self, permit: Option<tokio::sync::OwnedSemaphorePermit>) -> Self {
        self.permit = permit;
        self
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.limiter.release(&mut self.held);
    }
}

/// The name fair-share refusals carry.
pub(crate) fn fair_share_limit() -> Arc<str> {
    Arc::from(FAIR_SHARE)
}
