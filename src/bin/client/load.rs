//! `client load`: a steady rate of calls through the balancing client, for
//! watching replicas come and go. It prints a JSON line of running totals
//! every `--report-secs` and a final one when it stops (SIGTERM, SIGINT,
//! `--duration-secs` or `--count`), then the same totals for people.
//!
//! Each call goes to `--method` (a read: retried once on UNAVAILABLE), or,
//! for `--write-percent` of them spread evenly, to `--write-method` (a
//! write: retried only when it provably never left). Both default to
//! nothing the service defines: with no flags, the load is health checks.
//! Besides OK, the codes given with `--answer` (default NOT_FOUND: one
//! replica of an in-memory service may not hold what another stored) count
//! as the service's answer; every other status is a failure.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mtls_kit::client::cli::parse_code;
use mtls_kit::client::dynamic::{self, CallKind, DynamicMessage, Method, Schema};
use mtls_kit::client::retry::{self, Idempotency};
use mtls_kit::client::BalancedChannel;
use mtls_kit::client::{code_name, describe_error};
use mtls_kit::replica::replica_of;
use tokio::sync::Semaphore;
use tonic::metadata::MetadataMap;
use tonic::Code;

/// `client load` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct LoadArgs {
    /// The method most calls go to (unary; a read, retried once on
    /// UNAVAILABLE). Any name `call` accepts.
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
    /// Calls started per second.
    #[arg(long, env = "LOAD_RATE", default_value_t = 200)]
    pub rate: u32,
    /// Stop after this many seconds; 0 runs until SIGTERM or SIGINT.
    #[arg(long, env = "LOAD_DURATION_SECS", default_value_t = 0)]
    pub duration_secs: u64,
    /// Stop after starting this many calls; 0 for no limit.
    #[arg(long, env = "LOAD_COUNT", default_value_t = 0)]
    pub count: u64,
    /// Print running totals (one JSON line) this often; 0 only at the end.
    #[arg(long, env = "LOAD_REPORT_SECS", default_value_t = 1)]
    pub report_secs: u64,
    /// Calls in flight at most; past it, the rate drops rather than piling
    /// up.
    #[arg(long, env = "LOAD_MAX_IN_FLIGHT", default_value_t = 64)]
    pub max_in_flight: u32,
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

/// Running totals, shared by the calls.
#[derive(Default)]
struct Totals {
    rpcs: AtomicU64,
    failures: AtomicU64,
    retries: AtomicU64,
    in_flight: AtomicU64,
    /// The most RPCs ever in flight at once: failures from a replica that
    /// dies are bounded by it.
    peak_in_flight: AtomicU64,
    /// Calls answered per replica (x-replica), failures under "-".
    replicas: Mutex<BTreeMap<String, u64>>,
    /// Failures per status code.
    failure_codes: Mutex<BTreeMap<&'static str, u64>>,
}

impl Totals {
    fn json(&self, elapsed: Duration, last: bool) -> String {
        let replicas = self.replicas.lock().unwrap_or_else(|e| e.into_inner());
        let codes = self.failure_codes.lock().unwrap_or_else(|e| e.into_inner());
        let map = |m: &mut dyn Iterator<Item = (String, u64)>| {
            m.map(|(k, v)| format!("{}:{v}", json_string(&k)))
                .collect::<Vec<_>>()
                .join(",")
        };
        format!(
            "{{\"elapsed_secs\":{:.1},\"final\":{last},\"rpcs\":{},\"failures\":{},\"retries\":{},\"in_flight\":{},\"peak_in_flight\":{},\"replicas\":{{{}}},\"failure_codes\":{{{}}}}}",
            elapsed.as_secs_f64(),
            self.rpcs.load(Ordering::Relaxed),
            self.failures.load(Ordering::Relaxed),
            self.retries.load(Ordering::Relaxed),
            self.in_flight.load(Ordering::Relaxed),
            self.peak_in_flight.load(Ordering::Relaxed),
            map(&mut replicas.iter().map(|(k, v)| (k.clone(), *v))),
            map(&mut codes.iter().map(|(k, v)| (k.to_string(), *v))),
        )
    }

    fn answered(&self, metadata: &MetadataMap) {
        let name = replica_of(metadata).unwrap_or("?").to_owned();
        *self
            .replicas
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name)
            .or_default() += 1;
    }
}

/// A JSON string literal (replica names are printable ASCII, but a
/// stray quote must not break the line).
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

pub async fn run(
    channel: BalancedChannel,
    plan: Plan,
    args: LoadArgs,
    timeout: Duration,
) -> ExitCode {
    let plan = Arc::new(plan);
    let answers: Arc<[Code]> = args.answers.clone().into();
    let totals = Arc::new(Totals::default());
    let slots = Arc::new(Semaphore::new(args.max_in_flight.max(1) as usize));
    let started = Instant::now();
    let mut ticks = tokio::time::interval(Duration::from_secs(1) / args.rate.max(1));
    // After a stall, carry on at the rate rather than burst to catch up.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let report_every = Duration::from_secs(args.report_secs);
    let mut next_report = started + report_every;
    let stop = stop_signal(args.duration_secs);
    tokio::pin!(stop);

    let mut n: u64 = 0;
    while args.count == 0 || n < args.count {
        tokio::select! {
            () = &mut stop => break,
            _ = ticks.tick() => {}
        }
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let target = match &plan.write {
            Some(write) if is_write(n, args.write_percent) => write.clone(),
            _ => plan.read.clone(),
        };
        let in_flight = totals.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        totals
            .peak_in_flight
            .fetch_max(in_flight, Ordering::Relaxed);
        let (channel, call_totals, answers) = (channel.clone(), totals.clone(), answers.clone());
        tokio::spawn(async move {
            one_call(channel, target, timeout, &answers, &call_totals).await;
            call_totals.in_flight.fetch_sub(1, Ordering::Relaxed);
            drop(slot);
        });
        n += 1;
        if args.report_secs > 0 && Instant::now() >= next_report {
            println!("{}", totals.json(started.elapsed(), false));
            next_report += report_every;
        }
    }

    // Let the calls in flight finish (each has its deadline).
    let _ = slots.acquire_many(args.max_in_flight.max(1)).await;
    println!("{}", totals.json(started.elapsed(), true));
    let replicas = totals.replicas.lock().unwrap_or_else(|e| e.into_inner());
    let rpcs = totals.rpcs.load(Ordering::Relaxed);
    eprintln!(
        "load: {rpcs} RPCs in {:.1} s, {} failed, {} retried",
        started.elapsed().as_secs_f64(),
        totals.failures.load(Ordering::Relaxed),
        totals.retries.load(Ordering::Relaxed)
    );
    for (name, count) in replicas.iter() {
        eprintln!(
            "load:   replica {name}: {count} ({:.1}%)",
            100.0 * *count as f64 / rpcs.max(1) as f64
        );
    }
    if totals.failures.load(Ordering::Relaxed) == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// One call, retried as the kit's retry rules allow.
async fn one_call(
    channel: BalancedChannel,
    target: Target,
    timeout: Duration,
    answers: &[Code],
    totals: &Totals,
) {
    let out = retry::call(target.idempotency, || {
        dynamic::unary(
            channel.clone(),
            &target.method,
            target.request.clone(),
            timeout,
        )
    })
    .await;
    totals.rpcs.fetch_add(1, Ordering::Relaxed);
    totals
        .retries
        .fetch_add(u64::from(out.retries), Ordering::Relaxed);
    match out.result {
        Ok(reply) => totals.answered(reply.metadata()),
        Err(status) if answers.contains(&status.code()) => totals.answered(status.metadata()),
        Err(status) => {
            totals.failures.fetch_add(1, Ordering::Relaxed);
            *totals
                .failure_codes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(code_name(status.code()))
                .or_default() += 1;
            let cause = std::error::Error::source(&status)
                .map(describe_error)
                .unwrap_or_default();
            tracing::warn!(
                method = target.method.path(),
                code = code_name(status.code()),
                message = status.message(),
                cause,
                "load call failed"
            );
        }
    }
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
