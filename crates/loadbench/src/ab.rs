//! Interleaved A/B rounds: each round starts side A's and side B's server
//! (in alternating order: ABBA...), each pinned to the same core with
//! `taskset`, loads it from this process (pinned elsewhere), and stops it.
//! Per-round ratios A/B are what count: both sides of a round ran within
//! seconds of each other, so the machine's drift cancels out; the median
//! of the ratios is the result.

use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::load::{self, LoadSpec, Report};
use crate::transport::{Connector, Kind};

/// One side of a comparison: a server command line and how to talk to it.
#[derive(Clone, Debug)]
pub struct Side {
    pub name: String,
    /// A shell command line; `{addr}` becomes `127.0.0.1:PORT` and `{port}`
    /// the port, picked free for each start.
    pub command: String,
    pub kind: Kind,
    /// Load shape for this side, if it differs from the comparison's (the
    /// new-connection row loads the bare-rustls side with handshakes only).
    pub spec: Option<LoadSpec>,
}

/// Where servers run and where their logs go.
#[derive(Clone, Debug)]
pub struct Bench {
    pub pki: PathBuf,
    pub logs: PathBuf,
    /// `taskset -c` list for the servers; `None` runs them unpinned.
    pub server_cpus: Option<String>,
    /// Rules in the large policy (`pki::rules_file(big_policy_rules)`).
    pub big_policy_rules: usize,
}

/// The rounds of one comparison.
pub struct AbResult {
    pub a: Side,
    pub b: Side,
    pub rounds: Vec<(Report, Report)>,
}

/// A measure of a round, taken on each side.
pub type Measure = fn(&Report) -> Option<f64>;

impl AbResult {
    /// A/B of `measure` in each round.
    pub fn ratios(&self, measure: Measure) -> Vec<f64> {
        self.rounds
            .iter()
            .filter_map(|(a, b)| Some(measure(a)? / measure(b)?))
            .filter(|r| r.is_finite())
            .collect()
    }

    pub fn median_ratio(&self, measure: Measure) -> Option<f64> {
        median(self.ratios(measure))
    }

    /// Median of `measure` over the rounds of side A (`a == true`) or B.
    pub fn median_of(&self, a: bool, measure: Measure) -> Option<f64> {
        median(
            self.rounds
                .iter()
                .filter_map(|(ra, rb)| measure(if a { ra } else { rb }))
                .collect(),
        )
    }

    /// Failed calls over all rounds, per side.
    pub fn failures(&self) -> (u64, u64) {
        self.rounds.iter().fold((0, 0), |(fa, fb), (a, b)| {
            (fa + a.failures(), fb + b.failures())
        })
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "a": self.a.name, "b": self.b.name,
            "rounds": self.rounds.iter().map(|(a, b)| serde_json::json!({"a": a.to_json(), "b": b.to_json()})).collect::<Vec<_>>(),
        })
    }
}

pub fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Runs `rounds` interleaved rounds of `a` against `b` under `spec`.
pub async fn compare(
    bench: &Bench,
    a: &Side,
    b: &Side,
    spec: &LoadSpec,
    rounds: usize,
) -> anyhow::Result<AbResult> {
    let rounds = interleave(
        a,
        b,
        rounds,
        async |side, round| run_side(bench, side, spec, round).await,
        summary,
    )
    .await?;
    Ok(AbResult {
        a: a.clone(),
        b: b.clone(),
        rounds,
    })
}

/// The order of every comparison: `rounds` rounds of `measure` on each
/// side, A first in the first round, B first in the second, and so on
/// (A B, B A, ...), so that neither side always runs on a machine warmed
/// (or disturbed) by the other. Prints a progress line per round, each side's shown by
/// `show`.
pub async fn interleave<T>(
    a: &Side,
    b: &Side,
    rounds: usize,
    mut measure: impl AsyncFnMut(&Side, usize) -> anyhow::Result<T>,
    show: impl Fn(&T) -> String,
) -> anyhow::Result<Vec<(T, T)>> {
    let mut done = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let (ra, rb) = if round % 2 == 0 {
            let ra = measure(a, round).await?;
            (ra, measure(b, round).await?)
        } else {
            let rb = measure(b, round).await?;
            (measure(a, round).await?, rb)
        };
        eprintln!(
            "  round {}: {} {}  |  {} {}",
            round + 1,
            a.name,
            show(&ra),
            b.name,
            show(&rb)
        );
        done.push((ra, rb));
    }
    Ok(done)
}

fn summary(r: &Report) -> String {
    let mut s = format!(
        "rps {:.0} p50 {}us p99 {}us",
        r.rps(),
        r.percentile_us(0.5),
        r.percentile_us(0.99)
    );
    if let Some(cpu) = r.cpu_per_call_us() {
        s += &format!(" cpu/call {cpu:.1}us");
    }
    if let Some(m) = r.rss_per_conn {
        s += &format!(" rss/conn {:.1}KiB", m / 1024.0);
    }
    if r.failures() > 0 {
        s += &format!(" FAILED {} ({:?})", r.failures(), r.first_error);
    }
    s
}

/// Starts the side's server, loads it, stops it.
async fn run_side(
    bench: &Bench,
    side: &Side,
    spec: &LoadSpec,
    round: usize,
) -> anyhow::Result<Report> {
    let spec = side.spec.as_ref().unwrap_or(spec);
    let mut server = Server::for_round(bench, side, round)?;
    let connector = Connector::new(side.kind, server.addr, &bench.pki)?;
    let report = load::run(spec, &connector, Some(server.pid()))
        .await
        .with_context(|| format!("loading {} (log: {})", side.name, server.log.display()));
    server.stop();
    report
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

/// A server process; stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Server {
    child: Child,
    /// Where it listens (loopback, a port picked free for this start).
    pub addr: SocketAddr,
    /// Its stdout and stderr, to name in errors.
    pub log: PathBuf,
}

impl Server {
    /// Starts `side`'s server for `round` on the bench's server CPUs, its
    /// output in `<logs>/<side>-<round>.log`, and waits until it listens.
    pub fn for_round(bench: &Bench, side: &Side, round: usize) -> anyhow::Result<Self> {
        let log = bench
            .logs
            .join(format!("{}-{}.log", sanitize(&side.name), round + 1));
        Self::start(side, bench.server_cpus.as_deref(), &log)
    }

    fn start(side: &Side, cpus: Option<&str>, log: &Path) -> anyhow::Result<Self> {
        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let command = side
            .command
            .replace("{addr}", &addr.to_string())
            .replace("{port}", &port.to_string());
        let out = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        // `exec` all the way down: the pid we read /proc of is the server's.
        let mut cmd = match cpus {
            Some(cpus) => {
                let mut c = Command::new("taskset");
                c.args(["-c", cpus, "sh", "-c"]);
                c
            }
            None => {
                let mut c = Command::new("sh");
                c.arg("-c");
                c
            }
        };
        cmd.arg(format!("exec {command}"))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}: {command}", side.name))?;
        let mut server = Self {
            child,
            addr,
            log: log.to_owned(),
        };
        server.wait_listening(&side.name, log)?;
        Ok(server)
    }

    /// The server's own pid (the shell `exec`s it), for `/proc`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Polls until the port accepts (the command binds it itself) or the
    /// process exits. A benchmark harness for arbitrary command lines has
    /// no other way to learn that a foreign server is up.
    fn wait_listening(&mut self, name: &str, log: &Path) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{name} exited ({status}) before listening; its log ({}):\n{}",
                    log.display(),
                    tail(log)
                );
            }
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(100)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{name} did not listen on {} within 60 s; log: {}",
                    self.addr,
                    log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, then SIGKILL after 5 s.
    pub fn stop(&mut self) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

/// A port nothing listens on now. The server binds it a moment later; the
/// kernel does not hand out a just-released ephemeral port again at once.
fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_of_an_odd_and_an_even_count() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
    }
}
