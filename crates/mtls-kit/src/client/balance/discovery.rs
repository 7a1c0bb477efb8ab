//! The discovery task: resolves the name, connects to new addresses before
//! offering them to the balancer, and removes addresses that leave the
//! answer or whose connection closed.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::ClientConfig;
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;
use tonic::transport::Endpoint;
use tower::discover::Change;
use tracing::{debug, info, warn};

use super::replica::{Dial, Replica};
use super::{BalanceError, BalanceSettings, BalanceState};
use crate::client::describe_error;
use crate::client::resolve::Resolve;

/// What the discovery task hears from connect tasks and connections.
pub(super) enum Event {
    Connected(SocketAddr, u64, Replica),
    Failed(SocketAddr, u64, tonic::transport::Error),
    /// The connection of that generation closed.
    Lost(SocketAddr, u64),
}

/// One address the discovery task is connecting or connected to.
struct Slot {
    /// Tells this connection's events from those of an earlier one to the
    /// same address.
    generation: u64,
    /// Connected and offered to the balancer (else still connecting).
    ready: bool,
}

/// The task's state. It alone decides which connections the balancer has.
pub(super) struct Discovery {
    /// Where the addresses come from.
    resolver: Box<dyn Resolve>,
    settings: BalanceSettings,
    /// The `http://target` endpoint every replica's channel is built from,
    /// so that all of them send the name, not an IP, as `:authority`.
    endpoint: Endpoint,
    /// The client config, read at each connect (rotation applies to the
    /// next connection).
    tls: Arc<ArcSwap<ClientConfig>>,
    /// The balancer's discovery stream.
    changes: mpsc::UnboundedSender<Change<SocketAddr, Replica>>,
    /// Handed to connect tasks and connections, to report back.
    events_tx: mpsc::UnboundedSender<Event>,
    events: mpsc::UnboundedReceiver<Event>,
    /// Notified by `BalancedChannel::refresh`.
    refresh: Arc<Notify>,
    /// What callers and tests see.
    state: watch::Sender<BalanceState>,
    /// Every address being connected or connected, by address.
    slots: HashMap<SocketAddr, Slot>,
    /// Addresses whose last connects failed: how many in a row, and when
    /// to try again (doubling from `min_refresh_interval` up to
    /// `refresh_interval`), so a listed but dead address costs little.
    backoff: HashMap<SocketAddr, (u32, Instant)>,
    next_generation: u64,
}

impl Discovery {
    pub(super) fn new(
        resolver: Box<dyn Resolve>,
        settings: BalanceSettings,
        endpoint: Endpoint,
        tls: Arc<ArcSwap<ClientConfig>>,
        changes: mpsc::UnboundedSender<Change<SocketAddr, Replica>>,
        state: watch::Sender<BalanceState>,
        refresh: Arc<Notify>,
    ) -> Self {
        let (events_tx, events) = mpsc::unbounded_channel();
        Self {
            resolver,
            settings,
            endpoint,
            tls,
            changes,
            events_tx,
            events,
            refresh,
            state,
            slots: HashMap::new(),
            backoff: HashMap::new(),
            next_generation: 0,
        }
    }

    pub(super) async fn run(mut self) {
        // The balancer gone means every clone of the channel is: stop
        // quietly (its connections closing is no news then).
        while !self.changes.is_closed() {
            self.resolve().await;
            let last = Instant::now();
            let min_interval = self.settings.min_refresh_interval;
            let soon = || (last + min_interval).max(Instant::now());
            let mut next = last + self.settings.refresh_interval;
            loop {
                tokio::select! {
                    () = tokio::time::sleep_until(next) => break,
                    () = self.refresh.notified() => break,
                    Some(event) = self.events.recv() => {
                        if self.changes.is_closed() {
                            return;
                        }
                        if let Some(at) = self.handle(event) {
                            next = next.min(at.max(soon()));
                        }
                    }
                }
            }
        }
    }

    async fn resolve(&mut self) {
        let target = self.settings.target.clone();
        let error = match tokio::time::timeout(
            self.settings.connect_timeout,
            self.resolver.resolve(),
        )
        .await
        {
            Ok(Ok(addrs)) if !addrs.is_empty() => {
                self.apply(addrs);
                None
            }
            // An empty answer is treated like a failure: keep what we have
            // rather than drop every replica on a resolver glitch.
            Ok(Ok(_)) => Some(BalanceError::NoAddress { target }),
            Ok(Err(e)) => Some(BalanceError::Resolve {
                target,
                source: Arc::new(e),
            }),
            Err(_) => Some(BalanceError::Resolve {
                target,
                source: Arc::new(io::Error::new(io::ErrorKind::TimedOut, "timed out")),
            }),
        };
        if let Some(e) = &error {
            warn!(error = %describe_error(e), "resolution failed; keeping the current replicas");
        }
        self.publish(error);
    }

    fn apply(&mut self, addrs: Vec<SocketAddr>) {
        let want: BTreeSet<SocketAddr> = addrs.into_iter().collect();
        self.backoff.retain(|a, _| want.contains(a));
        let gone: Vec<SocketAddr> = self
            .slots
            .keys()
            .filter(|a| !want.contains(a))
            .copied()
            .collect();
        for addr in gone {
            if let Some(slot) = self.slots.remove(&addr) {
                info!(%addr, "replica no longer resolved; dropping it");
                if slot.ready {
                    let _ = self.changes.send(Change::Remove(addr));
                }
            }
        }
        let now = Instant::now();
        for addr in want {
            let backing_off = self.backoff.get(&addr).is_some_and(|(_, at)| *at > now);
            if !self.slots.contains_key(&addr) && !backing_off {
                self.start_connect(addr);
            }
        }
    }

    fn start_connect(&mut self, addr: SocketAddr) {
        let generation = self.next_generation;
        self.next_generation += 1;
        self.slots.insert(
            addr,
            Slot {
                generation,
                ready: false,
            },
        );
        let dial = Dial {
            addr,
            generation,
            endpoint: self.endpoint.clone(),
            server_name: self.settings.server_name.clone(),
            tls: self.tls.clone(),
            penalty: self.settings.unavailable_penalty,
            events: self.events_tx.clone(),
        };
        let events = self.events_tx.clone();
        tokio::spawn(async move {
            let event = match dial.connect().await {
                Ok(replica) => Event::Connected(addr, generation, replica),
                Err(e) => Event::Failed(addr, generation, e),
            };
            let _ = events.send(event);
        });
    }

    /// Applies one event; returns when to resolve again, if sooner than
    /// planned.
    fn handle(&mut self, event: Event) -> Option<Instant> {
        let current = |slots: &HashMap<SocketAddr, Slot>, addr, generation| {
            slots.get(&addr).is_some_and(|s| s.generation == generation)
        };
        match event {
            Event::Connected(addr, generation, replica) => {
                if current(&self.slots, addr, generation) {
                    if let Some(slot) = self.slots.get_mut(&addr) {
                        slot.ready = true;
                    }
                    debug!(%addr, "replica connected");
                    self.backoff.remove(&addr);
                    let _ = self.changes.send(Change::Insert(addr, replica));
                    self.publish(None);
                }
                None
            }
            Event::Failed(addr, generation, error) => {
                if !current(&self.slots, addr, generation) {
                    return None;
                }
                self.slots.remove(&addr);
                let failures = self.backoff.get(&addr).map_or(1, |(n, _)| n + 1);
                let delay = self
                    .settings
                    .min_refresh_interval
                    .saturating_mul(1 << (failures - 1).min(16))
                    .min(self.settings.refresh_interval);
                let retry_at = Instant::now() + delay;
                self.backoff.insert(addr, (failures, retry_at));
                let error = BalanceError::Connect {
                    target: self.settings.target.clone(),
                    addr,
                    source: Arc::new(error),
                };
                // Loud only when it leaves the client with no replica: a
                // listed address that refuses (a replica draining, `::1`
                // for a server on 127.0.0.1) is routine while others serve.
                if self.slots.values().any(|s| s.ready) {
                    debug!(%addr, failures, retry_in = ?delay, error = %describe_error(&error), "connecting to a replica failed");
                } else {
                    warn!(%addr, failures, retry_in = ?delay, error = %describe_error(&error), "connecting to a replica failed");
                }
                self.publish(Some(error));
                Some(retry_at)
            }
            Event::Lost(addr, generation) => {
                if !current(&self.slots, addr, generation) {
                    return None;
                }
                self.slots.remove(&addr);
                info!(%addr, "connection to a replica closed; resolving again");
                let _ = self.changes.send(Change::Remove(addr));
                self.state.send_modify(|s| s.connections_closed += 1);
                self.publish(None);
                Some(Instant::now())
            }
        }
    }

    fn publish(&self, error: Option<BalanceError>) {
        let ready = self
            .slots
            .iter()
            .filter(|(_, s)| s.ready)
            .map(|(a, _)| *a)
            .collect();
        let settled = self.slots.values().all(|s| s.ready);
        self.state.send_modify(|state| {
            state.ready = ready;
            state.settled = settled;
            if error.is_some() {
                state.last_error = error;
            }
        });
    }
}
