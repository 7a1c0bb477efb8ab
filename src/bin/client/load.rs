//! `client load`: calls through the balancing client, for watching replicas
//! come and go, in one of two shapes:
//!
//! * open loop (`--rate R`, the default, 200 calls/s): a call starts every
//!   1/R s whatever the others do, with at most `--max-in-flight` in flight
//!   (past it, the rate drops rather than piling up);
//! * closed loop (`--in-flight N`): N calls are in flight at all times, each
//!   started as soon as another ends, so the replicas get as much load as
//!   they take at that concurrency. It excludes `--rate` and
//!   `--max-in-flight`.
//!
//! Each call goes to `--method` (a read: retried once on UNAVAILABLE or when
//! its connection broke), or, for `--write-percent` of them spread evenly,
//! to `--write-method` (a write: retried only when it provably never left).
//! Both default to nothing the service defines: with no flags, the load is
//! health checks. Besides OK, the codes given with `--answer` (default
//! NOT_FOUND: one replica of an in-memory service may not hold what another
//! stored) count as the service's answer; every other status is a failure.
//!
//! It prints a JSON line of running totals every `--report-secs`, and a
//! final one (`"final":true`) when it stops (SIGTERM, SIGINT,
//! `--duration-secs` or `--count`; the calls in flight finish first), then
//! the same totals for people on stderr. The exit status is 0 only if no
//! call failed. The fields ([`totals`]):
//!
//! * `rpcs`, `failures`, `retries`, `writes`: calls ended, failed, retried,
//!   and how many of the ended calls were writes;
//! * `in_flight`, `peak_in_flight`: calls in flight now, and at most;
//! * `replicas`: calls answered per replica (the `x-replica` header);
//! * `failure_codes`, `failure_kinds`: failures by status code, and by kind
//!   (`answer`: a status a server sent; `deadline`; `not_sent`: provably
//!   never sent, and its retry failed too; `connection`: the connection
//!   broke under the call after the request may have left, which the kit
//!   retries for a read and not for a write; `transport`: any other
//!   transport failure);
//! * `failed`: each failed call (the first 200), with when it `started` and
//!   `ended` (seconds since the load started), whether it was a `write`,
//!   its `code`, `kind`, `retries` and `replica` (if a replica answered);
//! * `left`: each address that left the balancer (its connection closed,
//!   or the name stopped resolving to it) and when (`at`); and
//!   `connections_closed`, the balancer's count of closed connections;
//! * `elapsed_secs`, and `started_unix` (the start on the wall clock, to
//!   place outside events, such as a kill, on the same time line).
//!
//! The lists are what lets a test bound the failures a killed replica
//! causes by the calls that were in flight on it and could not be retried
//! (scripts/compose-replicas.sh), rather than by a constant.

// Beside this file, in load/, so that cargo does not take it for a binary.
#[path = "load/totals.rs"]
mod totals;

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mtls_kit::client::cli::parse_code;
use mtls_kit::client::dynamic::{self, CallKind, DynamicMessage, Method, Schema};
use mtls_kit::client::retry::{self, Idempotency};
use mtls_kit::client::BalancedChannel;
use mtls_kit::client::{code_name, describe_error};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tonic::Code;

use totals::Totals;

/// Failed calls logged one by one (at warn); past it they are only counted,
/// so that a closed loop against a broken setup cannot flood the log.
const FAILURES_LOGGED: u64 = 1000;

/// `client load` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct LoadArgs {
    /// The method most calls go to (unary; a read, retried once on
    /// UNAVAILABLE or when its connection broke). Any name `call` accepts.
    #[arg(
        long,
        env = "LOAD_METHOD",
        default_value = "/grpc.health.v1.Health/Check"
    )]
    pub method: String,
    /// Its request, as JSON.
    #[arg(long, env = "LOAD_REQUEST", default_value = "{}")]
    pub request: String,
    /// The method the writes go to (unary; retried only when the request
    /// provably never left, unless the proto marks it idempotent).
    #[arg(long, env = "LOAD_WRITE_METHOD")]
    pub write_method: Option<String>,
    /// Its request, as JSON.
    #[arg(long, env = "LOAD_WRITE_REQUEST", default_value = "{}")]
    pub write_request: String,
    /// Percentage of the calls that go to --write-method, spread evenly.
    #[arg(long, env = "LOAD_WRITE_PERCENT", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub write_percent: u8,
    /// Besides OK, a status that counts as the service's answer rather than
    /// a failure (repeatable, or comma-separated).
    #[arg(long = "answer", env = "LOAD_ANSWER", value_delimiter = ',', default_value = "NOT_FOUND", value_parser = parse_code)]
    pub answers: Vec<Code>,
    /// Open loop (the default): calls started per second, whatever the
    /// earlier ones do.
    #[arg(long, env = "LOAD_RATE", default_value_t = 200)]
    pub rate: u32,
    /// Open loop: calls in flight at most; past it, the rate drops rather
    /// than piling up.
    #[arg(long, env = "LOAD_MAX_IN_FLIGHT", default_value_t = 64)]
    pub max_in_flight: u32,
    /// Closed loop instead: keep this many calls in flight at all times,
    /// each started as soon as another ends. Excludes --rate and
    /// --max-in-flight.
    #[arg(
        long,
        env = "LOAD_IN_FLIGHT",
        conflicts_with_all = ["rate", "max_in_flight"],
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub in_flight: Option<u32>,
    /// Stop after this many seconds; 0 runs until SIGTERM or SIGINT.
    #[arg(long, env = "LOAD_DURATION_SECS", default_value_t = 0)]
    pub duration_secs: u64,
    /// Stop after starting this many calls; 0 for no limit.
    #[arg(long, env = "LOAD_COUNT", default_value_t = 0)]
    pub count: u64,
    /// Print running totals (one JSON line) this often; 0 only at the end.
    #[arg(long, env = "LOAD_REPORT_SECS", default_value_t = 1)]
    pub report_secs: u64,
}

/// One kind of call of the mix: a method and its request.
#[derive(Clone)]
struct Target {
    method: Method,
    request: DynamicMessage,
    idempotency: Idempotency,
}

/// What the load calls, checked before connecting.
pub struct Plan {
    read: Target,
    write: Option<Target>,
}

impl Plan {
    pub fn new(schema: &Schema, args: &LoadArgs) -> Result<Self, String> {
        let target = |name: &str, json: &str, read: bool| -> Result<Target, String> {
            let method = schema.method(name).map_err(|e| e.to_string())?;
            if method.kind() != CallKind::Unary {
                return Err(format!(
                    "load calls unary methods; {} is {}",
                    method.path(),
                    method.kind()
                ));
            }
            let request = method.request(json).map_err(|e| e.to_string())?;
            let idempotency = if read || method.idempotent() {
                Idempotency::Idempotent
            } else {
                Idempotency::NotIdempotent
            };
            Ok(Target {
                method,
                request,
                idempotency,
            })
        };
        let write = match (&args.write_method, args.write_percent) {
            (Some(m), _) => Some(target(m, &args.write_request, false)?),
            (None, 0) => None,
            (None, p) => return Err(format!("--write-percent {p} needs --write-method")),
        };
        Ok(Self {
            read: target(&args.method, &args.request, true)?,
            write,
        })
    }
}

/// Whether call `n` (from 0) is a write: `percent` of every 100 calls,
/// spread evenly rather than in a block.
fn is_write(n: u64, percent: u8) -> bool {
    let p = u64::from(percent);
    (n + 1) * p / 100 > n * p / 100
}

/// What every call shares.
struct Load {
    channel: BalancedChannel,
    plan: Plan,
    answers: Vec<Code>,
    timeout: Duration,
    write_percent: u8,
    /// Stop after starting this many calls (0: no limit).
    count: u64,
    /// Calls started so far: the next call's number.
    next: AtomicU64,
    totals: Arc<Totals>,
}

impl Load {
    /// The number of the next call to start, unless the load is stopping
    /// or has started `count` calls.
    fn next_call(&self, stop: &watch::Receiver<bool>) -> Option<u64> {
        if *stop.borrow() {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        (self.count == 0 || n < self.count).then_some(n)
    }

    /// Call `n`, retried as the kit's retry rules allow, and counted.
    async fn call(&self, n: u64) {
        let write = self.plan.write.is_some() && is_write(n, self.write_percent);
        let target = match &self.plan.write {
            Some(w) if write => w,
            _ => &self.plan.read,
        };
        let totals = &self.totals;
        let in_flight = totals.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        totals
            .peak_in_flight
            .fetch_max(in_flight, Ordering::Relaxed);
        let started = Instant::now();
        let out = retry::call(target.idempotency, || {
            dynamic::unary(
                self.channel.clone(),
                &target.method,
                target.request.clone(),
                self.timeout,
            )
        })
        .await;
        totals.in_flight.fetch_sub(1, Ordering::Relaxed);
        match out.result {
            Ok(reply) => totals.answered(write, out.retries, reply.metadata()),
            Err(status) if self.answers.contains(&status.code()) => {
                totals.answered(write, out.retries, status.metadata())
            }
            Err(status) => {
                let failures = totals.failed(write, out.retries, started, &status);
                if failures <= FAILURES_LOGGED {
                    let cause = std::error::Error::source(&status)
                        .map(describe_error)
                        .unwrap_or_default();
                    tracing::warn!(
                        method = target.method.path(),
                        write,
                        retries = out.retries,
                        code = code_name(status.code()),
                        message = status.message(),
                        cause,
                        "load call failed"
                    );
                }
                if failures == FAILURES_LOGGED {
                    tracing::warn!("further failed calls are counted, not logged");
                }
            }
        }
    }
}

pub async fn run(
    channel: BalancedChannel,
    plan: Plan,
    args: LoadArgs,
    timeout: Duration,
) -> ExitCode {
    let totals = Arc::new(Totals::new());
    totals.watch_departures(&channel);
    let load = Arc::new(Load {
        channel,
        plan,
        answers: args.answers.clone(),
        timeout,
        write_percent: args.write_percent,
        count: args.count,
        next: AtomicU64::new(0),
        totals: totals.clone(),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut calls = match args.in_flight {
        Some(n) => tokio::spawn(closed_loop(load, n, stop_rx)),
        None => tokio::spawn(open_loop(load, args.rate, args.max_in_flight, stop_rx)),
    };

    let report_every = Duration::from_secs(args.report_secs.max(1));
    let mut reports =
        tokio::time::interval_at(tokio::time::Instant::now() + report_every, report_every);
    reports.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stop = stop_signal(args.duration_secs);
    tokio::pin!(stop);
    let mut done = false;
    while !done {
        tokio::select! {
            () = &mut stop => break,
            // Only with --count: every call has been started and has ended.
            _ = &mut calls => done = true,
            _ = reports.tick(), if args.report_secs > 0 => {
                println!("{}", totals.json(false));
            }
        }
    }
    // Start no more calls; let those in flight finish (each has its
    // deadline).
    let _ = stop_tx.send(true);
    if !done {
        let _ = calls.await;
    }
    println!("{}", totals.json(true));
    eprintln!("{}", totals.summary());
    if totals.failures() == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// A call every 1/`rate` s, at most `max_in_flight` at once, until `stop`;
/// returns once the calls it started have ended.
async fn open_loop(
    load: Arc<Load>,
    rate: u32,
    max_in_flight: u32,
    mut stop: watch::Receiver<bool>,
) {
    let max_in_flight = max_in_flight.max(1);
    let slots = Arc::new(Semaphore::new(max_in_flight as usize));
    let mut ticks = tokio::time::interval(Duration::from_secs(1) / rate.max(1));
    // After a stall, carry on at the rate rather than burst to catch up.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let slot = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            slot = async {
                ticks.tick().await;
                slots.clone().acquire_owned().await
            } => slot,
        };
        let (Ok(slot), Some(n)) = (slot, load.next_call(&stop)) else {
            break;
        };
        let load = load.clone();
        tokio::spawn(async move {
            load.call(n).await;
            drop(slot);
        });
    }
    let _ = slots.acquire_many(max_in_flight).await;
}

/// `in_flight` calls at all times, each started as soon as another ends,
/// until `stop`; returns once the last has ended.
async fn closed_loop(load: Arc<Load>, in_flight: u32, stop: watch::Receiver<bool>) {
    let mut workers = JoinSet::new();
    for _ in 0..in_flight {
        let (load, stop) = (load.clone(), stop.clone());
        workers.spawn(async move {
            while let Some(n) = load.next_call(&stop) {
                load.call(n).await;
            }
        });
    }
    while workers.join_next().await.is_some() {}
}

/// Completes on SIGTERM or SIGINT, or after `secs` (0: never).
async fn stop_signal(secs: u64) {
    let timer = async {
        if secs == 0 {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(Duration::from_secs(secs)).await;
    };
    tokio::select! {
        () = mtls_kit::app::shutdown_signal() => {}
        () = timer => {}
    }
}

#[cfg(test)]
mod tests {
    use super::is_write;

    #[test]
    fn writes_are_spread_evenly() {
        for percent in [0u8, 1, 10, 33, 50, 99, 100] {
            let writes: Vec<bool> = (0..200).map(|n| is_write(n, percent)).collect();
            // Exactly the share asked for, in every block of 100 calls.
            for block in writes.chunks(100) {
                let count = block.iter().filter(|w| **w).count();
                assert_eq!(count, usize::from(percent), "{percent}%");
            }
            // Never a run of writes longer than the share requires.
            let longest = writes.split(|w| !*w).map(<[bool]>::len).max().unwrap_or(0);
            let allowed = if percent == 100 {
                200
            } else {
                100 / (100 - usize::from(percent)) + 1
            };
            assert!(longest <= allowed, "{percent}%: a run of {longest} writes");
        }
    }
}
