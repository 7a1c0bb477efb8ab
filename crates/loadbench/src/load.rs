//! The load generator: drives one server in one of four modes and measures
//! a window of the run (after a warm-up), with the server's own CPU time
//! and memory read from `/proc` at the window's edges.
//!
//! - closed loop: `conns` connections, `in_flight` calls outstanding on
//!   each, a new call as soon as one returns;
//! - open loop: `rate` calls a second on a fixed schedule, spread over the
//!   connections; latency counts from the *scheduled* send time, so a server
//!   that falls behind shows it in the tail instead of hiding it by slowing
//!   the sender (coordinated omission); for the same reason a call belongs
//!   to the window it was *due* in, and is waited for: a call stalled past
//!   the window's end still shows, as a latency or a failure;
//! - connect: `in_flight` workers, each a new connection per call
//!   (TCP, mutual TLS, HTTP/2, one call, close), or a bare handshake for
//!   the [`Kind::Handshake`] baseline;
//! - idle: open `conns` connections (one call each, then idle) and report
//!   the server's resident memory per connection.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::procstat;
use crate::transport::{Connector, Kind};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    Closed,
    Open,
    Connect,
    Idle,
}

/// How to load the server (`load` and `ab` share these flags).
#[derive(clap::Args, Clone, Debug)]
pub struct LoadSpec {
    #[arg(long, value_enum, default_value_t = Mode::Closed)]
    pub mode: Mode,
    /// Connections (closed, open, idle).
    #[arg(long, default_value_t = 4)]
    pub conns: usize,
    /// Calls outstanding per connection (closed), or concurrent workers
    /// (connect), or connections opened at once (idle).
    #[arg(long, default_value_t = 64)]
    pub in_flight: usize,
    /// Calls per second (open).
    #[arg(long, default_value_t = 10_000)]
    pub rate: u64,
    /// Length of the measured window, seconds.
    #[arg(long, default_value_t = 3.0)]
    pub secs: f64,
    /// Load before the window, not measured, seconds.
    #[arg(long, default_value_t = 1.0)]
    pub warmup_secs: f64,
    /// Deadline of each call, seconds.
    #[arg(long, default_value_t = 10.0)]
    pub timeout_secs: f64,
}

/// What one measured window saw.
#[derive(Clone, Debug)]
pub struct Report {
    pub window: Duration,
    /// Latency of each call that completed in the window, microseconds.
    pub latency_us: Histogram<u64>,
    /// Calls answered, by gRPC status code name (`OK`, ...).
    pub statuses: BTreeMap<String, u64>,
    /// Calls that failed below gRPC: connect, TLS, HTTP/2, deadline.
    pub transport_errors: u64,
    /// The first transport error seen, to say what went wrong.
    pub first_error: Option<String>,
    /// Server CPU time (user + system) during the window.
    pub server_cpu: Option<Duration>,
    /// Server resident memory per connection (idle mode), bytes.
    pub rss_per_conn: Option<f64>,
    /// Server resident memory at the end of the window, bytes.
    pub server_rss: Option<u64>,
    /// Open loop: the calls started on the schedule, warm-up included. The
    /// schedule alone decides it (rate × time), however slow the machine.
    pub scheduled: Option<u64>,
}

impl Report {
    pub(crate) fn new(window: Duration) -> Self {
        Self {
            window,
            latency_us: Histogram::new_with_bounds(1, 600_000_000, 3).expect("static bounds"),
            statuses: BTreeMap::new(),
            transport_errors: 0,
            first_error: None,
            server_cpu: None,
            rss_per_conn: None,
            server_rss: None,
            scheduled: None,
        }
    }

    /// Calls that got any gRPC answer in the window.
    pub fn answered(&self) -> u64 {
        self.statuses.values().sum()
    }

    pub fn ok(&self) -> u64 {
        self.statuses.get("OK").copied().unwrap_or(0)
    }

    /// Failed calls: any status but OK, and transport errors.
    pub fn failures(&self) -> u64 {
        self.answered() - self.ok() + self.transport_errors
    }

    pub fn rps(&self) -> f64 {
        self.answered() as f64 / self.window.as_secs_f64()
    }

    /// Calls answered OK per second of the window: throughput that counts
    /// only useful work, so a server that sheds load does not look faster.
    pub fn ok_rate(&self) -> f64 {
        self.ok() as f64 / self.window.as_secs_f64()
    }

    /// Server CPU per answered call, microseconds.
    pub fn cpu_per_call_us(&self) -> Option<f64> {
        let cpu = self.server_cpu?;
        let n = self.answered();
        (n > 0).then(|| cpu.as_secs_f64() * 1e6 / n as f64)
    }

    pub fn percentile_us(&self, q: f64) -> u64 {
        self.latency_us.value_at_quantile(q)
    }

    pub fn to_json(&self) -> serde_json::Value {
        let p = |q| self.percentile_us(q);
        serde_json::json!({
            "window_s": self.window.as_secs_f64(),
            "rps": self.rps(),
            "latency_us": { "p50": p(0.5), "p90": p(0.9), "p99": p(0.99), "p999": p(0.999), "max": self.latency_us.max() },
            "statuses": self.statuses,
            "transport_errors": self.transport_errors,
            "first_error": self.first_error,
            "server_cpu_s": self.server_cpu.map(|d| d.as_secs_f64()),
            "server_cpu_per_call_us": self.cpu_per_call_us(),
            "server_rss_bytes": self.server_rss,
            "server_rss_per_conn_bytes": self.rss_per_conn,
            "scheduled": self.scheduled,
        })
    }
}

/// Which calls a window counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Window {
    /// Calls that completed inside it: a closed loop's throughput is what
    /// completes, and its calls in flight at the end are an artefact of
    /// stopping.
    Completed,
    /// Calls that were due (started) inside it, however late they end: an
    /// open loop's schedule defines its calls, and each gets one outcome.
    Due,
}

/// Results of many tasks, merged as they finish.
#[derive(Clone)]
struct Recorder {
    from: Instant,
    to: Instant,
    window: Window,
    inner: Arc<Mutex<Report>>,
}

impl Recorder {
    fn new(from: Instant, to: Instant, window: Window) -> Self {
        Self {
            from,
            to,
            window,
            inner: Arc::new(Mutex::new(Report::new(to - from))),
        }
    }

    /// Counts a call that completed now, if it belongs to the window.
    fn record(&self, started: Instant, outcome: Result<(), CallError>) {
        self.record_at(Instant::now(), started, outcome);
    }

    fn record_at(&self, now: Instant, started: Instant, outcome: Result<(), CallError>) {
        let at = match self.window {
            Window::Completed => now,
            Window::Due => started,
        };
        if at < self.from || at >= self.to {
            return;
        }
        let mut r = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match outcome {
            Ok(()) => {
                let us = (now - started).as_micros().max(1) as u64;
                r.latency_us.saturating_record(us);
                *r.statuses.entry("OK".to_owned()).or_default() += 1;
            }
            Err(CallError::Status(code)) => {
                let us = (now - started).as_micros().max(1) as u64;
                r.latency_us.saturating_record(us);
                *r.statuses
                    .entry(mtls_kit::client::code_name(code).to_owned())
                    .or_default() += 1;
            }
            Err(CallError::Transport(e)) => {
                r.transport_errors += 1;
                r.first_error.get_or_insert(e);
            }
        }
    }

    /// Records how many calls the open loop has started.
    fn scheduled(&self, n: u64) {
        let mut r = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        r.scheduled = Some(n);
    }

    fn finish(self) -> Report {
        let mut r = self.inner.lock().unwrap_or_else(|p| p.into_inner()).clone();
        r.window = self.to - self.from;
        r
    }
}

enum CallError {
    Status(tonic::Code),
    Transport(String),
}

async fn call(client: &mut HealthClient<Channel>, timeout: Duration) -> Result<(), CallError> {
    let mut req = tonic::Request::new(HealthCheckRequest::default());
    req.set_timeout(timeout);
    match client.check(req).await {
        Ok(_) => Ok(()),
        // A status decoded from the server's answer has no source; one made
        // from a connection, TLS or HTTP/2 failure carries it.
        Err(s) if std::error::Error::source(&s).is_none() => Err(CallError::Status(s.code())),
        Err(s) => Err(CallError::Transport(mtls_kit::client::describe_error(&s))),
    }
}

/// Runs `spec` against the server `connector` reaches; `server_pid` is the
/// process whose CPU and memory are read.
pub async fn run(
    spec: &LoadSpec,
    connector: &Connector,
    server_pid: Option<u32>,
) -> anyhow::Result<Report> {
    anyhow::ensure!(
        spec.conns > 0 && spec.in_flight > 0,
        "--conns and --in-flight must be at least 1"
    );
    anyhow::ensure!(spec.secs > 0.0, "--secs must be positive");
    match spec.mode {
        Mode::Idle => return idle(spec, connector, server_pid).await,
        Mode::Closed | Mode::Open => anyhow::ensure!(
            connector.kind() != Kind::Handshake,
            "the handshake-only transport works with --mode connect"
        ),
        Mode::Connect => {}
    }
    let timeout = Duration::from_secs_f64(spec.timeout_secs);
    let mut clients = Vec::new();
    if spec.mode != Mode::Connect {
        for _ in 0..spec.conns {
            clients.push(HealthClient::new(connector.channel().await?));
        }
    }
    let start = Instant::now();
    let from = start + Duration::from_secs_f64(spec.warmup_secs);
    let to = from + Duration::from_secs_f64(spec.secs);
    let window = match spec.mode {
        Mode::Open => Window::Due,
        Mode::Closed | Mode::Connect | Mode::Idle => Window::Completed,
    };
    let rec = Recorder::new(from, to, window);
    let mut tasks = tokio::task::JoinSet::new();
    match spec.mode {
        Mode::Closed => {
            for client in &clients {
                for _ in 0..spec.in_flight {
                    let (mut client, rec) = (client.clone(), rec.clone());
                    tasks.spawn(async move {
                        while Instant::now() < to {
                            let t0 = Instant::now();
                            let outcome = call(&mut client, timeout).await;
                            rec.record(t0, outcome);
                        }
                    });
                }
            }
        }
        Mode::Open => {
            anyhow::ensure!(spec.rate > 0, "--rate must be positive");
            let (clients, rec) = (clients.clone(), rec.clone());
            let rate = spec.rate;
            tasks.spawn(async move {
                let mut calls = tokio::task::JoinSet::new();
                for i in 0u64.. {
                    let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
                    if due >= to {
                        break;
                    }
                    tokio::time::sleep_until(due).await;
                    let mut client = clients[(i as usize) % clients.len()].clone();
                    let call_rec = rec.clone();
                    calls.spawn(async move {
                        let outcome = call(&mut client, timeout).await;
                        call_rec.record(due, outcome);
                    });
                    // Reap finished calls as we go, so the set stays small.
                    while calls.try_join_next().is_some() {}
                    rec.scheduled(i + 1);
                }
                while calls.join_next().await.is_some() {}
            });
        }
        Mode::Connect => {
            for _ in 0..spec.in_flight {
                let (connector, rec) = (connector.clone(), rec.clone());
                tasks.spawn(async move {
                    while Instant::now() < to {
                        let t0 = Instant::now();
                        let outcome = one_connection(&connector, timeout).await;
                        rec.record(t0, outcome);
                    }
                });
            }
        }
        Mode::Idle => unreachable!("handled above"),
    }
    tokio::time::sleep_until(from).await;
    let cpu0 = server_pid.map(procstat::cpu_time).transpose()?;
    tokio::time::sleep_until(to).await;
    let cpu1 = server_pid.map(procstat::cpu_time).transpose()?;
    let rss = server_pid.map(procstat::rss_bytes).transpose()?;
    // Calls still in flight finish (or time out) outside the window.
    while tasks.join_next().await.is_some() {}
    let mut report = rec.finish();
    report.server_cpu = cpu0.zip(cpu1).map(|(a, b)| b.saturating_sub(a));
    report.server_rss = rss;
    Ok(report)
}

/// A new connection, one call (or just the handshake), closed.
async fn one_connection(connector: &Connector, timeout: Duration) -> Result<(), CallError> {
    let work = async {
        if connector.kind() == Kind::Handshake {
            return connector
                .handshake()
                .await
                .map_err(|e| CallError::Transport(format!("{e:#}")));
        }
        let channel = connector
            .channel()
            .await
            .map_err(|e| CallError::Transport(format!("{e:#}")))?;
        call(&mut HealthClient::new(channel), timeout).await
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(outcome) => outcome,
        Err(_) => Err(CallError::Transport("timed out".to_owned())),
    }
}

/// Opens `spec.conns` connections, `spec.in_flight` at a time, each making
/// one call, and keeps them open. The server's memory is read after the
/// first tenth and after all of them; the difference over the connections
/// in between is the cost of one idle connection, without the server's
/// fixed memory or its first-connection allocations.
async fn idle(
    spec: &LoadSpec,
    connector: &Connector,
    server_pid: Option<u32>,
) -> anyhow::Result<Report> {
    let pid = server_pid.context("--mode idle reads the server's memory: give its pid")?;
    anyhow::ensure!(
        connector.kind() != Kind::Handshake,
        "--mode idle needs a gRPC transport"
    );
    let timeout = Duration::from_secs_f64(spec.timeout_secs);
    let first = (spec.conns / 10).max(1);
    let start = Instant::now();
    let mut held = open_many(connector, first, spec.in_flight, timeout).await?;
    let rss0 = procstat::rss_bytes(pid)?;
    held.extend(open_many(connector, spec.conns - first, spec.in_flight, timeout).await?);
    let rss1 = procstat::rss_bytes(pid)?;
    let mut report = Report::new(start.elapsed());
    report.statuses.insert("OK".to_owned(), held.len() as u64);
    report.server_rss = Some(rss1);
    let added = (spec.conns - first).max(1);
    report.rss_per_conn = Some((rss1 as f64 - rss0 as f64) / added as f64);
    drop(held);
    Ok(report)
}

async fn open_many(
    connector: &Connector,
    n: usize,
    at_once: usize,
    timeout: Duration,
) -> anyhow::Result<Vec<HealthClient<Channel>>> {
    let gate = Arc::new(Semaphore::new(at_once));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (connector, gate) = (connector.clone(), gate.clone());
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await?;
            let mut client = HealthClient::new(connector.channel().await?);
            match call(&mut client, timeout).await {
                Ok(()) => Ok(client),
                Err(CallError::Status(code)) => Err(anyhow::anyhow!("call failed: {code:?}")),
                Err(CallError::Transport(e)) => Err(anyhow::anyhow!("call failed: {e}")),
            }
        });
    }
    let mut held = Vec::with_capacity(n);
    while let Some(r) = tasks.join_next().await {
        held.push(r.context("connection task")??);
    }
    Ok(held)
}

#[cfg(test)]
mod tests {
    //! The generator against the built-in baselines, in this process (so
    //! the "server" CPU and memory read are this process's own).
    use super::*;
    use crate::baseline;

    struct Fixture {
        pki: tempfile::TempDir,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        addr: std::net::SocketAddr,
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
        }
    }

    async fn start(kind: Kind) -> Fixture {
        let pki = tempfile::tempdir().unwrap();
        crate::pki::write(pki.path(), 10).unwrap();
        let listener = baseline::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let stop = async move {
            let _ = rx.await;
        };
        let dir = pki.path().to_owned();
        tokio::spawn(async move {
            match kind {
                Kind::Plain => baseline::serve_tonic(listener, None, stop).await,
                Kind::Tls => baseline::serve_tonic(listener, Some(&dir), stop).await,
                Kind::Handshake => baseline::serve_rustls(listener, &dir, stop).await,
            }
            .unwrap()
        });
        Fixture {
            pki,
            stop: Some(tx),
            addr,
        }
    }

    fn spec(mode: Mode) -> LoadSpec {
        LoadSpec {
            mode,
            conns: 2,
            in_flight: 4,
            rate: 2_000,
            secs: 0.5,
            warmup_secs: 0.1,
            timeout_secs: 5.0,
        }
    }

    #[tokio::test]
    async fn closed_loop_over_mutual_tls_counts_calls_latency_and_server_cpu() {
        let f = start(Kind::Tls).await;
        let connector = Connector::new(Kind::Tls, f.addr, f.pki.path()).unwrap();
        let r = run(&spec(Mode::Closed), &connector, Some(std::process::id()))
            .await
            .unwrap();
        // Some calls, however few a busy machine completes in the window:
        // how many is the benchmark's figure, not the test's.
        assert!(r.ok() > 0, "{:?}", r.to_json());
        assert_eq!(r.failures(), 0, "{:?}", r.to_json());
        assert_eq!(r.latency_us.len(), r.answered());
        assert!(r.percentile_us(0.99) >= r.percentile_us(0.5));
        assert!(r.cpu_per_call_us().unwrap() > 0.0);
    }

    #[test]
    fn an_open_loop_window_counts_calls_due_in_it_a_closed_loop_calls_done_in_it() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let (from, to) = (t0 + s, t0 + 3 * s);
        // Due inside, done after the end; due before, done inside; due and
        // done inside.
        let calls = [(t0 + 2 * s, t0 + 5 * s), (t0, t0 + 2 * s), (from, from + s)];
        let count = |window| {
            let rec = Recorder::new(from, to, window);
            for (due, done) in calls {
                rec.record_at(done, due, Ok(()));
            }
            rec.record_at(
                t0 + 2 * s,
                t0 + 2 * s,
                Err(CallError::Status(tonic::Code::Unavailable)),
            );
            let r = rec.finish();
            (r.ok(), r.failures(), r.latency_us.max() / 1_000_000)
        };
        // The stalled call (3 s) is in the open loop's tail, not lost.
        assert_eq!(count(Window::Due), (2, 1, 3));
        assert_eq!(count(Window::Completed), (2, 1, 2));
    }

    #[tokio::test]
    async fn open_loop_keeps_to_the_rate() {
        let f = start(Kind::Plain).await;
        let connector = Connector::new(Kind::Plain, f.addr, f.pki.path()).unwrap();
        let spec = spec(Mode::Open);
        let r = run(&spec, &connector, None).await.unwrap();
        assert_eq!(r.failures(), 0, "{:?}", r.to_json());
        // The schedule, not the machine's speed, decides how many calls
        // start: rate × (warm-up + window), here 2,000/s × 0.6 s. How many
        // complete inside the window depends on the machine: that figure
        // belongs to the benchmark, not to a test.
        let expected = spec.rate as f64 * (spec.warmup_secs + spec.secs);
        let scheduled = r.scheduled.unwrap() as f64;
        assert!(
            (scheduled - expected).abs() <= 1.0,
            "{scheduled} vs {expected}"
        );
    }

    #[tokio::test]
    async fn connect_mode_makes_a_new_connection_per_call_or_handshake() {
        for kind in [Kind::Tls, Kind::Handshake] {
            let f = start(kind).await;
            let connector = Connector::new(kind, f.addr, f.pki.path()).unwrap();
            let r = run(&spec(Mode::Connect), &connector, None).await.unwrap();
            assert!(r.ok() > 0, "{kind:?}: {:?}", r.to_json());
            assert_eq!(r.failures(), 0, "{kind:?}: {:?}", r.to_json());
        }
    }

    #[tokio::test]
    async fn a_server_that_refuses_the_client_shows_as_transport_errors() {
        // The server trusts another CA: every handshake fails.
        let f = start(Kind::Tls).await;
        let other = tempfile::tempdir().unwrap();
        crate::pki::write(other.path(), 10).unwrap();
        let connector = Connector::new(Kind::Tls, f.addr, other.path()).unwrap();
        let r = run(&spec(Mode::Connect), &connector, None).await.unwrap();
        assert_eq!(r.ok(), 0);
        assert!(r.transport_errors > 0, "{:?}", r.to_json());
        assert!(r.first_error.is_some());
    }
}
