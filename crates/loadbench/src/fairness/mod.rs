//! The fairness row (issue 19): does one client identity flooding the
//! server starve another?
//!
//! Identity A (`loadgen`) floods in a closed loop, 8 connections x 256
//! calls in flight; identity B (`loadgen-b`) calls at a modest 200 calls/s
//! in an open loop on a connection of its own. Each round starts a side's
//! server once and runs three phases against it: A alone, B alone, A and B
//! together; every other round in the reverse order ([`Order`]). The
//! figures ([`figures`]) compare B's tail under the flood with its tail
//! alone, count B's failures under the flood, and compare A's throughput
//! with B running with A's alone. Baseline and candidate take turns as in
//! every other row ([`ab::interleave`]).
//!
//! A and B each run on a thread and a single-threaded runtime of their
//! own: on A's runtime, B's calls would queue behind A's 2,048 tasks, and
//! B's latency would be the load generator's, not the server's. Both
//! threads share the load generator's CPU (`--load-cpus`), so B's thread
//! also asks for a higher priority ([`PROBE_NICE`]): when it wakes to send
//! or receive, the kernel runs it ahead of A's busy thread (and of anything
//! else on that CPU). A's thread keeps the normal priority: lowering it
//! instead would hand A's throughput to any other process on the machine.

mod figures;

use anyhow::Context;
use tokio::sync::oneshot;

pub use figures::{FairnessResult, Phases};

use crate::ab::{self, Bench, Server, Side};
use crate::load::{self, LoadSpec, Mode, Report};
use crate::pki;
use crate::transport::{Connector, Kind};

/// The row's name in `suite --only` and in its heading.
pub const NAME: &str = "fairness";
/// A's connections.
pub const FLOOD_CONNS: usize = 8;
/// A's calls in flight on each connection (the server takes 128 per
/// connection by default; the rest wait in A's client, as they would in a
/// real flooding client).
pub const FLOOD_IN_FLIGHT: usize = 256;
/// B's calls a second.
pub const PROBE_RATE: u64 = 200;
/// B's window is this fraction of `--secs`, ending before A's: B's thread
/// may start its schedule a moment before or after A's, and every B call
/// measured "under the flood" must have had the flood around it.
const PROBE_WINDOW: f64 = 0.9;
/// B's thread's nice value (Linux nice values are per thread). Below 0
/// needs `CAP_SYS_NICE` or an `RLIMIT_NICE`; without either, B runs at the
/// normal priority and the run says so once.
const PROBE_NICE: i32 = -10;

/// The row's one-line description, for its heading.
pub fn what() -> String {
    format!(
        "identity A (`{}`) floods, closed loop {FLOOD_CONNS} conns x {FLOOD_IN_FLIGHT} in flight; \
         identity B (`{}`) calls at {PROBE_RATE}/s, open loop, its own connection and load thread; \
         phases A alone, B alone, A and B together on each side's server",
        pki::LOADGEN,
        pki::LOADGEN_B
    )
}

/// The two loads of a round.
#[derive(Clone, Debug)]
pub struct Shape {
    /// Identity A: the flood.
    pub flood: LoadSpec,
    /// Identity B: the probe.
    pub probe: LoadSpec,
}

impl Shape {
    /// The loads for a measured window of `secs` (the suite's `--secs`),
    /// after `warmup_secs`, each call's deadline `timeout_secs`.
    pub fn new(secs: f64, warmup_secs: f64, timeout_secs: f64) -> Self {
        let flood = LoadSpec {
            mode: Mode::Closed,
            conns: FLOOD_CONNS,
            in_flight: FLOOD_IN_FLIGHT,
            rate: 0,
            secs,
            warmup_secs,
            timeout_secs,
        };
        let probe = LoadSpec {
            mode: Mode::Open,
            conns: 1,
            in_flight: 1,
            rate: PROBE_RATE,
            secs: secs * PROBE_WINDOW,
            ..flood.clone()
        };
        Self { flood, probe }
    }
}

/// Runs `rounds` interleaved rounds of the row on `baseline` and
/// `candidate` (each a server command line, as in [`ab`]).
pub async fn run(
    bench: &Bench,
    baseline: &Side,
    candidate: &Side,
    shape: &Shape,
    rounds: usize,
) -> anyhow::Result<FairnessResult> {
    for side in [baseline, candidate] {
        // The row is about identities: only mutual TLS has them.
        anyhow::ensure!(
            side.kind == Kind::Tls,
            "the fairness row needs a mutual-TLS server, and {} is {:?}",
            side.name,
            side.kind
        );
    }
    let rounds = ab::interleave(
        baseline,
        candidate,
        rounds,
        async |side, round| phases(bench, side, shape, round).await,
        Phases::summary,
    )
    .await?;
    Ok(FairnessResult {
        baseline: baseline.clone(),
        candidate: candidate.clone(),
        rounds,
    })
}

/// One side's round: its server, started once, under the three phases.
async fn phases(bench: &Bench, side: &Side, shape: &Shape, round: usize) -> anyhow::Result<Phases> {
    let mut server = Server::for_round(bench, side, round)?;
    let order = Order::of_round(round);
    let result = three_phases(bench, &server, shape, order)
        .await
        .with_context(|| {
            format!(
                "the fairness row on {} (log: {})",
                side.name,
                server.log.display()
            )
        });
    server.stop();
    result
}

/// The order of a round's phases. On the 2-core benchmark machine, a fixed
/// order gave A more throughput in its later flood (with B) than in its
/// first in 15 of 16 rounds, and a third flood without B beat the first in
/// 4 of 6: an effect of the order that would pass for B's presence.
/// Alternating the order by round, the same on both sides, cancels it in
/// the medians.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Order {
    /// A alone, B alone, A and B together.
    AloneFirst,
    /// A and B together, B alone, A alone.
    TogetherFirst,
}

impl Order {
    fn of_round(round: usize) -> Self {
        if round % 2 == 0 {
            Self::AloneFirst
        } else {
            Self::TogetherFirst
        }
    }
}

async fn three_phases(
    bench: &Bench,
    server: &Server,
    shape: &Shape,
    order: Order,
) -> anyhow::Result<Phases> {
    let a = Connector::as_identity(Kind::Tls, server.addr, &bench.pki, pki::LOADGEN)?;
    let b = Connector::as_identity(Kind::Tls, server.addr, &bench.pki, pki::LOADGEN_B)?;
    // Only A reads the server's CPU: its window spans B's.
    let flood = || on_own_thread("flood", &shape.flood, &a, Some(server.pid()), None);
    let probe = || on_own_thread("probe", &shape.probe, &b, None, Some(PROBE_NICE));
    let a_alone = async || flood()?.await.context("A alone");
    let b_alone = async || probe()?.await.context("B alone");
    let together = async || -> anyhow::Result<(Report, Report)> {
        let (a, b) = (flood()?, probe()?);
        Ok((a.await.context("A with B")?, b.await.context("B with A")?))
    };
    Ok(match order {
        Order::AloneFirst => {
            let a_alone = a_alone().await?;
            let b_alone = b_alone().await?;
            let (a_with_b, b_with_a) = together().await?;
            Phases {
                a_alone,
                b_alone,
                a_with_b,
                b_with_a,
            }
        }
        Order::TogetherFirst => {
            let (a_with_b, b_with_a) = together().await?;
            let b_alone = b_alone().await?;
            let a_alone = a_alone().await?;
            Phases {
                a_alone,
                b_alone,
                a_with_b,
                b_with_a,
            }
        }
    })
}

/// Starts `spec` on a new thread with a single-threaded runtime of its
/// own, at `nice` if given. The load's connections are made on that
/// runtime, so their I/O is driven there too.
fn on_own_thread(
    label: &str,
    spec: &LoadSpec,
    connector: &Connector,
    server_pid: Option<u32>,
    nice: Option<i32>,
) -> anyhow::Result<impl std::future::Future<Output = anyhow::Result<Report>>> {
    let (tx, rx) = oneshot::channel();
    let (spec, connector) = (spec.clone(), connector.clone());
    std::thread::Builder::new()
        .name(format!("load-{label}"))
        .spawn(move || {
            if let Some(nice) = nice {
                set_thread_nice(nice);
            }
            let report = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("building a load runtime")
                .and_then(|rt| rt.block_on(load::run(&spec, &connector, server_pid)));
            // The receiver is gone only if the row already failed.
            let _ = tx.send(report);
        })
        .with_context(|| format!("starting the {label} thread"))?;
    let label = label.to_owned();
    Ok(async move {
        rx.await
            .with_context(|| format!("the {label} thread ended without a report"))?
    })
}

/// Sets this thread's nice value. A refusal costs only precision (B may
/// wait behind A's thread for the shared CPU), so it is reported, once,
/// and the run goes on.
fn set_thread_nice(nice: i32) {
    static REFUSED: std::sync::Once = std::sync::Once::new();
    // SAFETY: gettid and setpriority on this thread's own id; no memory is
    // passed.
    let refused = unsafe {
        let tid = libc::gettid() as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, nice) != 0
    };
    if refused {
        let e = std::io::Error::last_os_error();
        REFUSED.call_once(|| {
            eprintln!(
                "  could not set nice {nice} on B's load thread ({e}): B runs at the normal \
                 priority, and its latency may include waiting for the load generator's CPU"
            )
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn b_is_measured_inside_as_flood_and_both_follow_secs() {
        for secs in [0.5, 3.0, 10.0] {
            let s = Shape::new(secs, 1.0, 10.0);
            let (a, b) = (&s.flood, &s.probe);
            assert_eq!((a.mode, a.conns, a.in_flight), (Mode::Closed, 8, 256));
            assert_eq!((b.mode, b.conns, b.rate), (Mode::Open, 1, 200));
            assert_eq!(a.secs, secs);
            // Same start, and B ends a tenth of the window before A: B's
            // schedule may start that much later than A's and still be
            // flooded throughout.
            assert_eq!(b.warmup_secs, a.warmup_secs);
            let slack = (a.warmup_secs + a.secs) - (b.warmup_secs + b.secs);
            assert!((slack - secs / 10.0).abs() < 1e-9, "{secs}: {slack}");
            assert_eq!(b.timeout_secs, a.timeout_secs);
        }
    }

    #[test]
    fn the_phase_order_alternates_by_round() {
        let orders: Vec<Order> = (0..4).map(Order::of_round).collect();
        assert_eq!(
            orders,
            [
                Order::AloneFirst,
                Order::TogetherFirst,
                Order::AloneFirst,
                Order::TogetherFirst
            ]
        );
    }

    #[test]
    fn the_row_refuses_a_server_without_identities() {
        let bench = Bench {
            pki: std::env::temp_dir(),
            logs: std::env::temp_dir(),
            server_cpus: None,
            big_policy_rules: 10,
        };
        let plain = Side {
            name: "plain".to_owned(),
            command: "true".to_owned(),
            kind: Kind::Plain,
            spec: None,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let shape = Shape::new(1.0, 1.0, 1.0);
        let err = rt
            .block_on(run(&bench, &plain, &plain, &shape, 1))
            .unwrap_err();
        assert!(err.to_string().contains("mutual-TLS"), "{err}");
    }
}
