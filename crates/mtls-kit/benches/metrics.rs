//! What metrics cost per RPC: the kit's test server in this process, once
//! with metrics on and once with them off (`Metrics::disabled`, what
//! `--metrics-listen off` gives), driven by the kit's client with unary
//! health checks over several mutual-TLS connections. Rounds alternate
//! between the two servers so that drift on a busy machine hits both.
//!
//!     cargo bench --bench metrics
//!     METRICS_BENCH_CALLS=8000 METRICS_BENCH_CONNS=8 METRICS_BENCH_ROUNDS=6 cargo bench --bench metrics
//!
//! CPU time is the whole process's (user + system, from /proc/self/stat),
//! so it includes the client's share, the same in both: the difference per
//! RPC is the metrics' cost, the ratio is what a server would see diluted
//! by the client. No tracing subscriber is installed, so the RPC spans are
//! disabled in both arms, as with a filter that excludes them.

use std::time::{Duration, Instant};

use mtls_kit::client::cli::request;
use mtls_kit::metrics::Metrics;
use mtls_kit::server::Services;
use mtls_kit::testing::{TestPki, TestServer};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const POLICY: &str = r#"{"name": "bench", "allow_rules": [
    {"name": "health", "source": {"principals": ["spiffe://example.org/*"]},
     "request": {"paths": ["/grpc.health.v1.Health/Check"]}}]}"#;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Process CPU time (user + system), from /proc/self/stat.
fn cpu_time(ticks_per_sec: f64) -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line; 12 and 13 here.
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    Duration::from_secs_f64(ticks / ticks_per_sec)
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

struct Arm {
    name: &'static str,
    clients: Vec<HealthClient<tonic::transport::Channel>>,
    cpu: Duration,
    wall: Duration,
    calls: usize,
    /// CPU per RPC of each round, in microseconds.
    rounds: Vec<f64>,
    _server: TestServer,
}

async fn arm(name: &'static str, metrics: Metrics, pki: &TestPki, conns: usize) -> Arm {
    let mut services = Services::new();
    services.set_metrics(metrics);
    let server = TestServer::spawn(pki, POLICY, services).await;
    let mut clients = Vec::new();
    for _ in 0..conns {
        let channel = server.connect(&pki.client("bench")).await.unwrap();
        clients.push(HealthClient::new(channel));
    }
    Arm {
        name,
        clients,
        cpu: Duration::ZERO,
        wall: Duration::ZERO,
        calls: 0,
        rounds: Vec::new(),
        _server: server,
    }
}

/// `calls` health checks, spread over the arm's connections, each
/// connection making its share one after another.
async fn round(arm: &Arm, calls: usize) {
    let per_conn = calls / arm.clients.len();
    let mut tasks = tokio::task::JoinSet::new();
    for client in &arm.clients {
        let mut client = client.clone();
        tasks.spawn(async move {
            for _ in 0..per_conn {
                client
                    .check(request(
                        HealthCheckRequest::default(),
                        Duration::from_secs(10),
                    ))
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
}

fn main() {
    let calls = env_or("METRICS_BENCH_CALLS", 4000);
    let conns = env_or("METRICS_BENCH_CONNS", 4).max(1);
    let rounds = env_or("METRICS_BENCH_ROUNDS", 6).max(1);
    let ticks = clock_ticks();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let pki = TestPki::new("example.org");
        let mut arms = [
            arm("metrics on", Metrics::new(), &pki, conns).await,
            arm("metrics off", Metrics::disabled(), &pki, conns).await,
        ];
        // Warm-up: connections, allocator, label sets.
        for a in &arms {
            round(a, calls / 4).await;
        }
        for r in 0..rounds {
            // Alternate which arm goes first, too.
            for i in [r % 2, 1 - r % 2] {
                let a = &mut arms[i];
                let (cpu0, wall0) = (cpu_time(ticks), Instant::now());
                round(a, calls).await;
                let cpu = cpu_time(ticks) - cpu0;
                let done = calls / conns * conns;
                a.cpu += cpu;
                a.wall += wall0.elapsed();
                a.calls += done;
                a.rounds.push(cpu.as_secs_f64() / done as f64 * 1e6);
            }
        }
        println!("{calls} unary calls x {rounds} rounds per arm, over {conns} connections, alternating");
        let per_rpc = |a: &Arm| a.cpu.as_secs_f64() / a.calls as f64 * 1e6;
        for a in &arms {
            println!(
                "{:<12} CPU {:7.2} us/RPC   wall {:7.2} us/RPC   ({} RPCs, CPU {:.2} s)",
                a.name,
                per_rpc(a),
                a.wall.as_secs_f64() / a.calls as f64 * 1e6,
                a.calls,
                a.cpu.as_secs_f64()
            );
        }
        let (on, off) = (per_rpc(&arms[0]), per_rpc(&arms[1]));
        // Each round of one arm against the adjacent round of the other:
        // the spread shows how much of the difference is noise.
        let mut ratios: Vec<f64> = arms[0]
            .rounds
            .iter()
            .zip(&arms[1].rounds)
            .map(|(on, off)| on / off)
            .collect();
        ratios.sort_by(f64::total_cmp);
        println!(
            "metrics on/off CPU per RPC: {:.3} overall (difference {:+.2} us/RPC, client and server together); per round: median {:.3}, range {:.3}..{:.3}",
            on / off,
            on - off,
            ratios[ratios.len() / 2],
            ratios[0],
            ratios[ratios.len() - 1]
        );
    });
}
