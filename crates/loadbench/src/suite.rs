//! The benchmark suite: every comparison of the performance table, each as
//! interleaved A/B rounds, with the ratio that row is judged by; and the
//! fairness row ([`fairness`]), which compares two builds of the server
//! under two client identities.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::ab::{self, AbResult, Bench, Measure, Side};
use crate::fairness;
use crate::load::{LoadSpec, Mode, Report};
use crate::pki;
use crate::transport::Kind;

/// `suite` flags.
#[derive(clap::Args, Clone, Debug)]
pub struct SuiteArgs {
    /// The service's server binary (built with `--release`).
    #[arg(long, default_value = "target/release/server")]
    pub server: PathBuf,
    /// The previous build's server binary: the baseline side of the
    /// `fairness` row, whose candidate is `--server`. Without it the row
    /// runs `--server` on both sides: the figures are then the candidate's
    /// alone, and the gap between its two columns is the noise.
    #[arg(long)]
    pub baseline_server: Option<PathBuf>,
    /// The baseline's name in the fairness table (a git revision, say).
    #[arg(long, default_value = "baseline")]
    pub baseline_name: String,
    /// gRPC C++ reference server (`authz_peer` from grpc-cpp-peer); its row
    /// is skipped without it.
    #[arg(long)]
    pub cpp_peer: Option<PathBuf>,
    /// Rounds per comparison (each round runs both sides once).
    #[arg(long, default_value_t = 8)]
    pub rounds: usize,
    /// Measured seconds per side and round.
    #[arg(long, default_value_t = 3.0)]
    pub secs: f64,
    /// Connections held in the idle-memory row.
    #[arg(long, default_value_t = 10_000)]
    pub idle_conns: usize,
    /// Only these rows (by name); all when not given.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Write the results table (Markdown) here too.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// One comparison, and how to judge it.
struct Row {
    name: &'static str,
    what: String,
    a: Side,
    b: Side,
    spec: LoadSpec,
    rounds: usize,
    /// (label, measure, goal) for each ratio the row reports; the goal is
    /// text such as "<= 1.06".
    ratios: Vec<(&'static str, Measure, &'static str)>,
}

fn cpu_per_call(r: &Report) -> Option<f64> {
    r.cpu_per_call_us()
}
fn rps(r: &Report) -> Option<f64> {
    Some(r.rps())
}
fn p50(r: &Report) -> Option<f64> {
    Some(r.percentile_us(0.5) as f64)
}
fn p99(r: &Report) -> Option<f64> {
    Some(r.percentile_us(0.99) as f64)
}
fn tail_spread(r: &Report) -> Option<f64> {
    Some(r.percentile_us(0.99) as f64 / r.percentile_us(0.5).max(1) as f64)
}
fn rss_per_conn(r: &Report) -> Option<f64> {
    r.rss_per_conn
}
/// Calls (or handshakes) one server core could do a second: the server's
/// capacity, whether or not the load generator saturated it.
fn capacity(r: &Report) -> Option<f64> {
    r.cpu_per_call_us().map(|us| 1e6 / us)
}

fn spec(mode: Mode, conns: usize, in_flight: usize, secs: f64) -> LoadSpec {
    LoadSpec {
        mode,
        conns,
        in_flight,
        rate: 0,
        secs,
        warmup_secs: 1.0,
        timeout_secs: 10.0,
    }
}

pub async fn run(args: &SuiteArgs, bench: &Bench, me: &Path) -> anyhow::Result<String> {
    let d = bench.pki.display();
    let big = bench.big_policy_rules;
    // The service's server (`--server`, or the fairness row's baseline).
    let server_with = |server: &Path, policy: &str, extra: &str| {
        format!(
            "{} --listen {{addr}} --cert {d}/{} --key {d}/{} --client-ca {d}/{} --crl {d}/{} \
             --spiffe-trust-domain {} --policy {d}/{policy} {extra}",
            server.display(),
            pki::SERVER_CERT,
            pki::SERVER_KEY,
            pki::CA_CERT,
            pki::CRL,
            pki::TRUST_DOMAIN,
        )
    };
    let ours_with = |policy: &str, extra: &str| server_with(&args.server, policy, extra);
    let side = |name: &str, command: String, kind: Kind| Side {
        name: name.to_owned(),
        command,
        kind,
        spec: None,
    };
    let ours = side(
        "ours",
        ours_with(pki::ALLOW_ALL, "--metrics-listen 127.0.0.1:0"),
        Kind::Tls,
    );
    let me = me.display();
    let tonic_plain = side(
        "tonic-plaintext",
        format!("{me} serve-tonic --listen {{addr}}"),
        Kind::Plain,
    );
    let tonic_mtls = side(
        "tonic-mtls",
        format!("{me} serve-tonic --listen {{addr}} --pki {d}"),
        Kind::Tls,
    );
    let steady = spec(Mode::Closed, 4, 64, args.secs);
    let mut rows = vec![
        Row {
            name: "cpu",
            what: "server CPU per RPC, closed loop 4 conns x 64 in flight: ours (mTLS, identity, A43 allow-all, metrics) vs plain tonic plaintext".into(),
            a: ours.clone(),
            b: tonic_plain.clone(),
            spec: steady.clone(),
            rounds: args.rounds,
            ratios: vec![("CPU/RPC", cpu_per_call, "<= 1.06"), ("RPS", rps, "")],
        },
        Row {
            name: "tonic-tls",
            what: "reference: plain tonic mTLS vs plain tonic plaintext, same load".into(),
            a: tonic_mtls.clone(),
            b: tonic_plain.clone(),
            spec: steady.clone(),
            rounds: args.rounds,
            ratios: vec![("CPU/RPC", cpu_per_call, ""), ("RPS", rps, "")],
        },
    ];
    if let Some(cpp) = &args.cpp_peer {
        rows.push(Row {
            name: "cpp",
            what: "vs gRPC C++ 1.51 (mTLS, allow-all A43 policy through gRPC's own provider), closed loop 4 x 64".into(),
            a: ours.clone(),
            b: side(
                "grpc-cpp",
                format!(
                    "{} --listen {{addr}} --cert {d}/{} --key {d}/{} --client-ca {d}/{} --policy {d}/{}",
                    cpp.display(),
                    pki::SERVER_CERT,
                    pki::SERVER_KEY,
                    pki::CA_CERT,
                    pki::ALLOW_ALL
                ),
                Kind::Tls,
            ),
            spec: steady.clone(),
            rounds: args.rounds,
            ratios: vec![("RPS", rps, ">= 1.9"), ("p99", p99, "<= 0.25"), ("CPU/RPC", cpu_per_call, "")],
        });
    }
    let connect = spec(Mode::Connect, 1, 8, args.secs);
    rows.push(Row {
        name: "connect",
        what: "new connection + one RPC (8 workers) vs bare rustls mutual-auth handshakes (8 workers); capacity = 1 / server CPU per operation".into(),
        a: ours.clone(),
        b: Side {
            spec: Some(connect.clone()),
            ..side(
                "bare-rustls",
                format!("{me} serve-rustls --listen {{addr}} --pki {d}"),
                Kind::Handshake,
            )
        },
        spec: connect,
        rounds: args.rounds,
        ratios: vec![("capacity", capacity, ">= 0.70"), ("ops/s", rps, "")],
    });
    rows.push(Row {
        name: "policy",
        what: format!(
            "{big}-rule policy vs 10-rule policy (matching rule last), closed loop 4 x 64"
        ),
        a: side(
            &format!("{big}-rules"),
            ours_with(&pki::rules_file(big), "--metrics-listen 127.0.0.1:0"),
            Kind::Tls,
        ),
        b: side(
            "10-rules",
            ours_with(&pki::rules_file(10), "--metrics-listen 127.0.0.1:0"),
            Kind::Tls,
        ),
        spec: steady.clone(),
        rounds: args.rounds,
        ratios: vec![("RPS", rps, ">= 0.98"), ("CPU/RPC", cpu_per_call, "")],
    });
    rows.push(Row {
        name: "idle",
        what: format!(
            "server memory per idle authenticated connection (one call, then idle), {} connections",
            args.idle_conns
        ),
        a: ours.clone(),
        b: tonic_mtls.clone(),
        spec: LoadSpec {
            conns: args.idle_conns,
            ..spec(Mode::Idle, args.idle_conns, 64, args.secs)
        },
        rounds: args.rounds.min(3),
        ratios: vec![("RSS/conn", rss_per_conn, "<= 0.75")],
    });
    rows.push(Row {
        name: "overload",
        what: "1,000 RPCs in flight over 8 connections: tail spread p99/p50 of each side (goal: ours <= 5, no failed calls)".into(),
        a: ours.clone(),
        b: tonic_mtls.clone(),
        spec: spec(Mode::Closed, 8, 125, args.secs),
        rounds: args.rounds,
        ratios: vec![("p99/p50", tail_spread, ""), ("p99", p99, "")],
    });
    rows.push(Row {
        name: "metrics",
        what: "metrics on (default) vs --metrics-listen off, closed loop 4 x 64".into(),
        a: ours.clone(),
        b: side(
            "metrics-off",
            ours_with(pki::ALLOW_ALL, "--metrics-listen off"),
            Kind::Tls,
        ),
        spec: steady,
        rounds: args.rounds,
        ratios: vec![("CPU/RPC", cpu_per_call, "<= 1.02"), ("RPS", rps, "")],
    });
    let chosen = |name: &str| args.only.is_empty() || args.only.iter().any(|o| o == name);
    rows.retain(|r| chosen(r.name));
    // Both sides of the fairness row run as `ours`; the baseline with the
    // previous build's binary, if there is one.
    let fairness_row = chosen(fairness::NAME).then(|| {
        let named = |name: &str| Side {
            name: name.to_owned(),
            ..ours.clone()
        };
        let baseline = match &args.baseline_server {
            Some(server) => side(
                &args.baseline_name,
                server_with(server, pki::ALLOW_ALL, "--metrics-listen 127.0.0.1:0"),
                Kind::Tls,
            ),
            None => named("same-build"),
        };
        (baseline, named("candidate"))
    });
    anyhow::ensure!(
        !rows.is_empty() || fairness_row.is_some(),
        "--only matches no row"
    );

    let mut table = String::new();
    let mut raw = Vec::new();
    for row in &rows {
        eprintln!("== {}: {}", row.name, row.what);
        let result = ab::compare(bench, &row.a, &row.b, &row.spec, row.rounds).await?;
        render(&mut table, row, &result);
        raw.push(serde_json::json!({ "row": row.name, "result": result.to_json() }));
    }
    if let Some((baseline, candidate)) = &fairness_row {
        let what = fairness::what();
        eprintln!("== {}: {what}", fairness::NAME);
        if args.baseline_server.is_none() {
            eprintln!(
                "  no --baseline-server: the candidate runs on both sides (its figures, and the noise between them)"
            );
        }
        let base = spec(Mode::Closed, 1, 1, args.secs);
        let shape = fairness::Shape::new(base.secs, base.warmup_secs, base.timeout_secs);
        let result = fairness::run(bench, baseline, candidate, &shape, args.rounds).await?;
        result.render(&mut table, fairness::NAME, &what);
        raw.push(serde_json::json!({ "row": fairness::NAME, "result": result.to_json() }));
    }
    let raw_path = bench.logs.join("results.json");
    std::fs::write(&raw_path, serde_json::to_vec_pretty(&raw)?)?;
    eprintln!("raw rounds: {}", raw_path.display());
    Ok(table)
}

fn render(out: &mut String, row: &Row, r: &AbResult) {
    let _ = writeln!(out, "\n### {}: {}\n", row.name, row.what);
    let _ = writeln!(
        out,
        "| ratio {} / {} | median | per round | goal |",
        r.a.name, r.b.name
    );
    let _ = writeln!(out, "|---|---|---|---|");
    for (label, measure, goal) in &row.ratios {
        let rounds: Vec<String> = r
            .ratios(*measure)
            .iter()
            .map(|x| format!("{x:.3}"))
            .collect();
        let median = r
            .median_ratio(*measure)
            .map_or("n/a".to_owned(), |m| format!("{m:.3}"));
        let _ = writeln!(
            out,
            "| {label} | **{median}** | {} | {goal} |",
            rounds.join(" ")
        );
    }
    let (fa, fb) = r.failures();
    let side_line = |a: bool| {
        let name = if a { &r.a.name } else { &r.b.name };
        let f = |m: Measure, scale: f64| {
            r.median_of(a, m)
                .map_or("n/a".to_owned(), |v| format!("{:.1}", v * scale))
        };
        format!(
            "{name}: RPS {}, p50 {} us, p99 {} us, p99/p50 {}, CPU/RPC {} us, RSS/conn {} KiB",
            f(rps, 1.0),
            f(p50, 1.0),
            f(p99, 1.0),
            f(tail_spread, 1.0),
            f(cpu_per_call, 1.0),
            f(rss_per_conn, 1.0 / 1024.0),
        )
    };
    let _ = writeln!(
        out,
        "\nMedians (context only): {}; {}. Failed calls: {} {fa}, {} {fb}.",
        side_line(true),
        side_line(false),
        r.a.name,
        r.b.name
    );
}
