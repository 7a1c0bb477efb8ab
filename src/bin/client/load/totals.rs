//! What `client load` counts, and the JSON line it prints: calls, failures
//! by code and by kind, retries, the split by replica, each failed call,
//! and each replica that left the balancer.
//!
//! The lists (`failed`, `left`) are what lets a test tell an unavoidable
//! failure from a bug: a failed call says when it started and ended, whether
//! it was a write, and why it failed ([`Kind`]); a departure says which
//! address left and when. A write that failed because its connection broke
//! under it, started before its replica left the balancer, on a replica that
//! was killed, is the one failure the retry rules cannot prevent.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use mtls_kit::client::retry;
use mtls_kit::client::{code_name, BalancedChannel};
use mtls_kit::replica::replica_of;
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};

/// Failed calls listed one by one; past it, only counted (the line is
/// printed every second, and a broken setup can fail thousands).
const FAILED_LISTED: usize = 200;
/// Departures listed one by one; past it, only the closes are counted.
const LEFT_LISTED: usize = 200;

/// Why a call failed, from its status alone (in this order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// The request provably never reached a server (the kit's
    /// `retry::never_sent`); it was retried, and the retry failed too.
    NotSent,
    /// The deadline passed: `DEADLINE_EXCEEDED`, or tonic's own timer
    /// (which tonic reports as `CANCELLED`, "Timeout expired").
    Deadline,
    /// A status a server sent (no transport error behind it).
    Answer,
    /// The call's connection failed under it after the request may have
    /// left (tonic: `UNKNOWN` with a transport error as its cause). The kit
    /// retries a read once; a write may have been applied, so it is not.
    Connection,
    /// Any other transport failure: a stream reset by the peer
    /// (`RST_STREAM`), a GOAWAY with an error, a request the HTTP/2 client
    /// gave back as canceled.
    Transport,
}

impl Kind {
    pub fn of(status: &Status) -> Self {
        if retry::never_sent(status) {
            Kind::NotSent
        } else if status.code() == Code::DeadlineExceeded
            || caused_by::<tonic::TimeoutExpired>(status)
        {
            Kind::Deadline
        } else if std::error::Error::source(status).is_none() {
            Kind::Answer
        } else if status.code() == Code::Unknown {
            Kind::Connection
        } else {
            Kind::Transport
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::NotSent => "not_sent",
            Kind::Deadline => "deadline",
            Kind::Answer => "answer",
            Kind::Connection => "connection",
            Kind::Transport => "transport",
        }
    }
}

/// Whether an `E` is among the causes of `status`.
fn caused_by<E: std::error::Error + 'static>(status: &Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        if e.is::<E>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// One failed call, as listed in `failed`.
struct Failed {
    /// Seconds since the load started, when the call started (its first
    /// attempt) and when it ended (its last).
    started: f64,
    ended: f64,
    write: bool,
    code: Code,
    kind: Kind,
    retries: u32,
    /// The replica that sent the status, if it named itself (an answer);
    /// none when the call never got one.
    replica: Option<String>,
}

/// An address that left the balancer: its connection closed, or the name
/// stopped resolving to it.
struct Left {
    addr: SocketAddr,
    /// Seconds since the load started.
    at: f64,
}

/// Running totals, shared by the calls.
pub struct Totals {
    /// When the load started: times in the lists count from here.
    started: Instant,
    /// The same moment on the wall clock, so that a test can place its own
    /// events (a kill) on the load's time line.
    started_unix: f64,
    rpcs: AtomicU64,
    failures: AtomicU64,
    retries: AtomicU64,
    /// Writes finished (answered or failed).
    writes: AtomicU64,
    pub in_flight: AtomicU64,
    /// The most calls ever in flight at once.
    pub peak_in_flight: AtomicU64,
    /// Connections the balancer has seen close (drained or broken).
    connections_closed: AtomicU64,
    /// Everything behind a lock: changed once per answer or failure.
    lists: Mutex<Lists>,
}

#[derive(Default)]
struct Lists {
    /// Calls answered per replica (x-replica; "?" if a replica did not
    /// name itself).
    replicas: BTreeMap<String, u64>,
    failure_codes: BTreeMap<&'static str, u64>,
    failure_kinds: BTreeMap<Kind, u64>,
    failed: Vec<Failed>,
    left: Vec<Left>,
}

impl Totals {
    pub fn new() -> Self {
        let started_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        Self {
            started: Instant::now(),
            started_unix,
            rpcs: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            peak_in_flight: AtomicU64::new(0),
            connections_closed: AtomicU64::new(0),
            lists: Mutex::default(),
        }
    }

    fn lists(&self) -> std::sync::MutexGuard<'_, Lists> {
        self.lists.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A call ended, answered (by the replica named in `metadata`).
    pub fn answered(&self, write: bool, retries: u32, metadata: &MetadataMap) {
        self.finished(write, retries);
        let name = replica_of(metadata).unwrap_or("?").to_owned();
        *self.lists().replicas.entry(name).or_default() += 1;
    }

    /// A call that started at `started` failed with `status`. Returns the
    /// number of failures so far.
    pub fn failed(&self, write: bool, retries: u32, started: Instant, status: &Status) -> u64 {
        self.finished(write, retries);
        let kind = Kind::of(status);
        let failure = Failed {
            started: started
                .saturating_duration_since(self.started)
                .as_secs_f64(),
            ended: self.started.elapsed().as_secs_f64(),
            write,
            code: status.code(),
            kind,
            retries,
            replica: replica_of(status.metadata()).map(str::to_owned),
        };
        let mut lists = self.lists();
        *lists
            .failure_codes
            .entry(code_name(status.code()))
            .or_default() += 1;
        *lists.failure_kinds.entry(kind).or_default() += 1;
        if lists.failed.len() < FAILED_LISTED {
            lists.failed.push(failure);
        }
        self.failures.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn finished(&self, write: bool, retries: u32) {
        self.rpcs.fetch_add(1, Ordering::Relaxed);
        self.retries
            .fetch_add(u64::from(retries), Ordering::Relaxed);
        if write {
            self.writes.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Records departures from the balancer (and its count of closed
    /// connections) until the channel is gone.
    pub fn watch_departures(self: &Arc<Self>, channel: &BalancedChannel) {
        let mut state = channel.state();
        let totals = self.clone();
        tokio::spawn(async move {
            let mut ready: BTreeSet<SocketAddr> = state.borrow_and_update().ready.clone();
            while state.changed().await.is_ok() {
                let (now, closed) = {
                    let s = state.borrow_and_update();
                    (s.ready.clone(), s.connections_closed)
                };
                let at = totals.started.elapsed().as_secs_f64();
                {
                    let mut lists = totals.lists();
                    for addr in ready.difference(&now) {
                        if lists.left.len() < LEFT_LISTED {
                            lists.left.push(Left { addr: *addr, at });
                        }
                    }
                }
                totals.connections_closed.store(closed, Ordering::Relaxed);
                ready = now;
            }
        });
    }

    /// The totals as one line of JSON (see the module documentation of
    /// `load` for the fields).
    pub fn json(&self, last: bool) -> String {
        let lists = self.lists();
        let counts = |m: &mut dyn Iterator<Item = (&str, u64)>| {
            m.map(|(k, v)| format!("{}:{v}", json_string(k)))
                .collect::<Vec<_>>()
                .join(",")
        };
        let failed = lists
            .failed
            .iter()
            .map(|f| {
                format!(
                    "{{\"started\":{:.3},\"ended\":{:.3},\"write\":{},\"code\":\"{}\",\"kind\":\"{}\",\"retries\":{},\"replica\":{}}}",
                    f.started,
                    f.ended,
                    f.write,
                    code_name(f.code),
                    f.kind.name(),
                    f.retries,
                    f.replica.as_deref().map_or("null".to_owned(), json_string),
                )
            })
            .collect::<Vec<_>>()
            .join(",");
        let left = lists
            .left
            .iter()
            .map(|l| format!("{{\"addr\":\"{}\",\"at\":{:.3}}}", l.addr, l.at))
            .collect::<Vec<_>>()
            .join(",");
        format!(
            "{{\"elapsed_secs\":{:.3},\"started_unix\":{:.6},\"final\":{last},\"rpcs\":{},\"failures\":{},\"retries\":{},\"writes\":{},\"in_flight\":{},\"peak_in_flight\":{},\"connections_closed\":{},\"replicas\":{{{}}},\"failure_codes\":{{{}}},\"failure_kinds\":{{{}}},\"failed\":[{failed}],\"left\":[{left}]}}",
            self.started.elapsed().as_secs_f64(),
            self.started_unix,
            self.rpcs.load(Ordering::Relaxed),
            self.failures.load(Ordering::Relaxed),
            self.retries.load(Ordering::Relaxed),
            self.writes.load(Ordering::Relaxed),
            self.in_flight.load(Ordering::Relaxed),
            self.peak_in_flight.load(Ordering::Relaxed),
            self.connections_closed.load(Ordering::Relaxed),
            counts(&mut lists.replicas.iter().map(|(k, v)| (k.as_str(), *v))),
            counts(&mut lists.failure_codes.iter().map(|(k, v)| (*k, *v))),
            counts(&mut lists.failure_kinds.iter().map(|(k, v)| (k.name(), *v))),
        )
    }

    /// The same, for people (stderr, at the end).
    pub fn summary(&self) -> String {
        let lists = self.lists();
        let rpcs = self.rpcs.load(Ordering::Relaxed);
        let mut out = format!(
            "load: {rpcs} RPCs in {:.1} s, {} failed, {} retried, at most {} in flight",
            self.started.elapsed().as_secs_f64(),
            self.failures.load(Ordering::Relaxed),
            self.retries.load(Ordering::Relaxed),
            self.peak_in_flight.load(Ordering::Relaxed),
        );
        for (kind, count) in &lists.failure_kinds {
            out.push_str(&format!("\nload:   failed ({}): {count}", kind.name()));
        }
        for (name, count) in &lists.replicas {
            out.push_str(&format!(
                "\nload:   replica {name}: {count} ({:.1}%)",
                100.0 * *count as f64 / rpcs.max(1) as f64
            ));
        }
        out
    }
}

/// A JSON string literal (replica names are printable ASCII, but a stray
/// quote must not break the line).
fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push('?'),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_told_apart_by_their_cause() {
        // A status the server sent has no cause.
        assert_eq!(Kind::of(&Status::permission_denied("no")), Kind::Answer);
        assert_eq!(Kind::of(&Status::unavailable("draining")), Kind::Answer);
        assert_eq!(
            Kind::of(&Status::deadline_exceeded("waiting for a replica")),
            Kind::Deadline
        );
        // tonic's own timer: CANCELLED, with the timer's error as its cause.
        let timer = Status::from_error(Box::new(tonic::TimeoutExpired(())));
        assert_eq!(timer.code(), Code::Cancelled);
        assert_eq!(Kind::of(&timer), Kind::Deadline);
        // A broken connection: UNKNOWN, with the transport error as cause.
        let broken = Status::from_error(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        assert_eq!(broken.code(), Code::Unknown);
        assert_eq!(Kind::of(&broken), Kind::Connection);
        // Never sent, whatever the code.
        let not_sent = Status::from_error(Box::new(mtls_kit::client::balance::NotSent {
            addr: "127.0.0.1:1".parse().unwrap(),
        }));
        assert_eq!(Kind::of(&not_sent), Kind::NotSent);
    }

    #[test]
    fn the_json_line_lists_failures_and_departures() {
        let totals = Totals::new();
        let start = Instant::now();
        totals.answered(false, 0, &MetadataMap::new());
        let broken = Status::from_error(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        assert_eq!(totals.failed(true, 0, start, &broken), 1);
        totals.lists().left.push(Left {
            addr: "10.0.0.2:50051".parse().unwrap(),
            at: 1.5,
        });
        let line = totals.json(true);
        for part in [
            "\"rpcs\":2,\"failures\":1,\"retries\":0,\"writes\":1,",
            "\"replicas\":{\"?\":1}",
            "\"failure_codes\":{\"UNKNOWN\":1}",
            "\"failure_kinds\":{\"connection\":1}",
            "\"write\":true,\"code\":\"UNKNOWN\",\"kind\":\"connection\",\"retries\":0,\"replica\":null}]",
            "\"left\":[{\"addr\":\"10.0.0.2:50051\",\"at\":1.500}]",
        ] {
            assert!(line.contains(part), "{part} not in {line}");
        }
    }
}
