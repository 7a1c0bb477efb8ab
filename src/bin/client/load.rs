//! `client load`: a steady stream of reads and writes through the balancing
//! client, for watching replicas come and go. It prints a JSON line of
//! running totals every `--report-secs` and a final one when it stops
//! (SIGTERM, SIGINT or `--duration-secs`), then the same totals for people.
//!
//! Each replica of the example keeps its own in-memory inventory, so a read
//! may find nothing where the write went elsewhere: NOT_FOUND is an answer
//! (the service handled the call) and counts as a success. Every other
//! error counts as a failure.
//!
//! TEMPLATE: replace the two calls in `one_call` with your own read and
//! write.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use inventory_service::proto::inventory_client::InventoryClient;
use inventory_service::proto::{GetItemRequest, Item, PutItemRequest};
use mtls_kit::client::cli::request;
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
    /// RPCs started per second, reads and writes together.
    #[arg(long, env = "LOAD_RATE", default_value_t = 200)]
    pub rate: u32,
    /// Percentage of the RPCs that are writes (PutItem); the rest are reads
    /// (GetItem).
    #[arg(long, env = "LOAD_WRITE_PERCENT", default_value_t = 50, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub write_percent: u8,
    /// Stop after this many seconds; 0 runs until SIGTERM or SIGINT.
    #[arg(long, env = "LOAD_DURATION_SECS", default_value_t = 0)]
    pub duration_secs: u64,
    /// Print running totals (one JSON line) this often; 0 only at the end.
    #[arg(long, env = "LOAD_REPORT_SECS", default_value_t = 1)]
    pub report_secs: u64,
    /// RPCs in flight at most; past it, the rate drops rather than piling up.
    #[arg(long, env = "LOAD_MAX_IN_FLIGHT", default_value_t = 64)]
    pub max_in_flight: u32,
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

pub async fn run(channel: BalancedChannel, args: LoadArgs, timeout: Duration) -> ExitCode {
    let client = InventoryClient::new(channel);
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
    loop {
        tokio::select! {
            () = &mut stop => break,
            _ = ticks.tick() => {}
        }
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let write = n % 100 < u64::from(args.write_percent);
        let in_flight = totals.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        totals
            .peak_in_flight
            .fetch_max(in_flight, Ordering::Relaxed);
        let (client, call_totals) = (client.clone(), totals.clone());
        tokio::spawn(async move {
            one_call(client, n, write, timeout, &call_totals).await;
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

/// One read or write, retried as the kit's retry rules allow.
async fn one_call(
    client: InventoryClient<BalancedChannel>,
    n: u64,
    write: bool,
    timeout: Duration,
    totals: &Totals,
) {
    // A small key space, so reads often find what writes left.
    let sku = format!("load-{}", n % 1000);
    let outcome = if write {
        let item = Item {
            sku,
            name: "load".into(),
            quantity: (n % 100) as i64,
            ..Default::default()
        };
        let out = retry::call(Idempotency::NotIdempotent, || {
            let mut client = client.clone();
            let req = request(
                PutItemRequest {
                    item: Some(item.clone()),
                },
                timeout,
            );
            async move { client.put_item(req).await }
        })
        .await;
        (out.retries, out.result.map(|r| r.metadata().clone()))
    } else {
        let out = retry::call(Idempotency::Idempotent, || {
            let mut client = client.clone();
            let req = request(GetItemRequest { sku: sku.clone() }, timeout);
            async move { client.get_item(req).await }
        })
        .await;
        (out.retries, out.result.map(|r| r.metadata().clone()))
    };
    let (retries, result) = outcome;
    totals.rpcs.fetch_add(1, Ordering::Relaxed);
    totals
        .retries
        .fetch_add(u64::from(retries), Ordering::Relaxed);
    match result {
        Ok(metadata) => totals.answered(&metadata),
        Err(status) if status.code() == Code::NotFound => totals.answered(status.metadata()),
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
                write,
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
