//! `loadbench`: the template's own gRPC load benchmark. See BENCHMARKS.md
//! for what each row measures and `scripts/bench.sh` for the one command
//! that runs them all.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

mod ab;
mod baseline;
mod fairness;
mod load;
mod pki;
mod procstat;
mod suite;
mod transport;

#[derive(Parser)]
#[command(
    about = "gRPC load benchmark: closed/open loop, new connections, idle memory, A/B rounds"
)]
struct Cli {
    /// Pin this process (the load generator) to these CPUs (`taskset -c`
    /// syntax: "1", "1-3"). The servers of `ab` and `suite` go on
    /// `--server-cpus`.
    #[arg(long, global = true)]
    load_cpus: Option<String>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Load one running server and print the report (JSON).
    Load {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, value_enum, default_value_t = transport::Kind::Tls)]
        transport: transport::Kind,
        /// PKI directory written by `loadbench pki`.
        #[arg(long, default_value = "bench-pki")]
        pki: PathBuf,
        /// The server's pid, to read its CPU time and memory.
        #[arg(long)]
        server_pid: Option<u32>,
        #[command(flatten)]
        spec: load::LoadSpec,
    },
    /// Compare two server command lines in interleaved rounds.
    Ab {
        #[command(flatten)]
        bench: BenchArgs,
        #[arg(long, default_value = "A")]
        a_name: String,
        /// Server A's command line; `{addr}` becomes its listen address.
        #[arg(long)]
        a: String,
        #[arg(long, value_enum, default_value_t = transport::Kind::Tls)]
        a_transport: transport::Kind,
        #[arg(long, default_value = "B")]
        b_name: String,
        #[arg(long)]
        b: String,
        #[arg(long, value_enum, default_value_t = transport::Kind::Tls)]
        b_transport: transport::Kind,
        #[arg(long, default_value_t = 8)]
        rounds: usize,
        #[command(flatten)]
        spec: load::LoadSpec,
    },
    /// Every row of the performance table, as A/B comparisons.
    Suite {
        #[command(flatten)]
        bench: BenchArgs,
        #[command(flatten)]
        args: suite::SuiteArgs,
    },
    /// Write the benchmark PKI and policies into a directory.
    Pki {
        #[arg(long)]
        dir: PathBuf,
        /// Rules in the large policy.
        #[arg(long, default_value_t = pki::BIG_POLICY_RULES)]
        big_policy_rules: usize,
    },
    /// Baseline: plain tonic with a trivial health handler (mutual TLS with
    /// `--pki`, plaintext without).
    ServeTonic {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        pki: Option<PathBuf>,
    },
    /// Baseline: bare rustls mutual-auth handshakes, then close.
    ServeRustls {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        pki: PathBuf,
    },
}

#[derive(clap::Args)]
struct BenchArgs {
    /// Scratch directory for the PKI, policies, server logs and raw results.
    #[arg(long, default_value = "target/loadbench")]
    work_dir: PathBuf,
    /// CPUs for the servers (`taskset -c`); "none" leaves them unpinned.
    #[arg(long, default_value = "0")]
    server_cpus: String,
    /// Rules in the large policy of the `policy` row (the table's figure is
    /// for 100,000; fewer only to make an unoptimised build start quickly).
    #[arg(long, default_value_t = pki::BIG_POLICY_RULES)]
    big_policy_rules: usize,
}

impl BenchArgs {
    fn prepare(&self) -> anyhow::Result<ab::Bench> {
        let pki = self.work_dir.join("pki");
        let logs = self.work_dir.join("logs");
        std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
        pki::write(&pki, self.big_policy_rules)?;
        Ok(ab::Bench {
            pki: std::path::absolute(&pki)?,
            logs,
            server_cpus: (self.server_cpus != "none").then(|| self.server_cpus.clone()),
            big_policy_rules: self.big_policy_rules,
        })
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadbench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(cpus) = &cli.load_cpus {
        pin_self(cpus)?;
    }
    // Thousands of connections need as many descriptors.
    mtls_kit::app::raise_nofile_limit().context("raising RLIMIT_NOFILE")?;
    // Servers get a runtime like any tonic service's; the load generator one
    // thread, since it is pinned to its own core.
    let server_rt = || {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    };
    let load_rt = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    match cli.command {
        Cmd::Load {
            addr,
            transport,
            pki,
            server_pid,
            spec,
        } => {
            let connector = transport::Connector::new(transport, addr, &pki)?;
            let report = load_rt()?.block_on(load::run(&spec, &connector, server_pid))?;
            println!("{}", serde_json::to_string_pretty(&report.to_json())?);
        }
        Cmd::Ab {
            bench,
            a_name,
            a,
            a_transport,
            b_name,
            b,
            b_transport,
            rounds,
            spec,
        } => {
            let bench = bench.prepare()?;
            let side = |name: String, command: String, kind| ab::Side {
                name,
                command,
                kind,
                spec: None,
            };
            let (a, b) = (side(a_name, a, a_transport), side(b_name, b, b_transport));
            let result = load_rt()?.block_on(ab::compare(&bench, &a, &b, &spec, rounds))?;
            for (label, m) in [
                (
                    "CPU/RPC",
                    (|r: &load::Report| r.cpu_per_call_us()) as ab::Measure,
                ),
                ("RPS", |r| Some(r.rps())),
                ("p50", |r| Some(r.percentile_us(0.5) as f64)),
                ("p99", |r| Some(r.percentile_us(0.99) as f64)),
                ("RSS/conn", |r| r.rss_per_conn),
            ] {
                if let Some(median) = result.median_ratio(m) {
                    let rounds: Vec<String> =
                        result.ratios(m).iter().map(|x| format!("{x:.3}")).collect();
                    println!(
                        "{label} {}/{}: median {median:.3}  rounds {}",
                        a.name,
                        b.name,
                        rounds.join(" ")
                    );
                }
            }
        }
        Cmd::Suite { bench, args } => {
            let bench = bench.prepare()?;
            let me = std::env::current_exe().context("locating this binary")?;
            let table = load_rt()?.block_on(suite::run(&args, &bench, &me))?;
            println!("{table}");
            if let Some(out) = &args.out {
                std::fs::write(out, &table)
                    .with_context(|| format!("writing {}", out.display()))?;
            }
        }
        Cmd::Pki {
            dir,
            big_policy_rules,
        } => pki::write(&dir, big_policy_rules)?,
        Cmd::ServeTonic { listen, pki } => server_rt()?.block_on(async {
            let listener = baseline::bind(listen).await?;
            baseline::serve_tonic(listener, pki.as_deref(), mtls_kit::app::shutdown_signal()).await
        })?,
        Cmd::ServeRustls { listen, pki } => server_rt()?.block_on(async {
            let listener = baseline::bind(listen).await?;
            baseline::serve_rustls(listener, &pki, mtls_kit::app::shutdown_signal()).await
        })?,
    }
    Ok(())
}

/// Pins this process to `cpus` before any thread is started, so every
/// thread of the runtime inherits it.
fn pin_self(cpus: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("taskset")
        .args(["-cp", cpus, &std::process::id().to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .context("running taskset (util-linux)")?;
    anyhow::ensure!(status.success(), "taskset -cp {cpus} failed: {status}");
    Ok(())
}
