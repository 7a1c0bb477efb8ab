//! The `loadbench` binary end to end: baseline servers as child processes,
//! so the memory and CPU it reads are theirs alone.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_loadbench");

/// A child server that has bound its port and said which.
struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve_tonic(pki: Option<&Path>) -> Server {
    let mut cmd = Command::new(BIN);
    cmd.args(["serve-tonic", "--listen", "127.0.0.1:0"]);
    if let Some(pki) = pki {
        cmd.arg("--pki").arg(pki);
    }
    let mut child = cmd.stderr(Stdio::piped()).spawn().unwrap();
    // The server prints its address after binding: connect only then.
    let mut line = String::new();
    BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .rsplit(' ')
        .next()
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_owned();
    Server { child, addr }
}

fn pki() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new(BIN)
        .args(["pki", "--dir"])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    dir
}

#[test]
fn idle_mode_reports_the_servers_memory_per_connection() {
    let pki = pki();
    let server = serve_tonic(Some(pki.path()));
    let out = Command::new(BIN)
        .args([
            "load",
            "--mode",
            "idle",
            "--conns",
            "300",
            "--in-flight",
            "16",
            "--addr",
        ])
        .arg(&server.addr)
        .arg("--pki")
        .arg(pki.path())
        .arg("--server-pid")
        .arg(server.child.id().to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["statuses"]["OK"], 300, "{report}");
    // An idle mutual-TLS connection holds some KiB of buffers: more than
    // nothing, far less than a MiB.
    let per_conn = report["server_rss_per_conn_bytes"].as_f64().unwrap();
    assert!((1024.0..1024.0 * 1024.0).contains(&per_conn), "{report}");
}

/// `loadbench ab` unpinned (tests share the machine), for ROUNDS of SECS.
fn ab(rounds: u32, secs: &str) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["ab", "--server-cpus", "none", "--rounds"])
        .arg(rounds.to_string())
        .args(["--secs", secs]);
    cmd
}

#[test]
fn ab_runs_interleaved_rounds_and_prints_median_ratios() {
    let work = tempfile::tempdir().unwrap();
    let side = format!("{BIN} serve-tonic --listen {{addr}}");
    let out = ab(2, "0.3")
        .args(["--warmup-secs", "0.1"])
        .args(["--conns", "1", "--in-flight", "4"])
        .args(["--a-transport", "plain", "--b-transport", "plain"])
        .args(["--a", &side, "--b", &side])
        .arg("--work-dir")
        .arg(work.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Two identical servers: each ratio is a positive number, and the
    // progress lines show both rounds.
    let cpu = stdout
        .lines()
        .find(|l| l.starts_with("CPU/RPC A/B: median "))
        .unwrap_or_else(|| panic!("{stdout}"));
    let median: f64 = cpu.split_whitespace().nth(3).unwrap().parse().unwrap();
    assert!(median > 0.0 && median.is_finite(), "{cpu}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("round 1:") && stderr.contains("round 2:"),
        "{stderr}"
    );
}

#[test]
fn a_server_command_that_fails_is_reported_with_its_log() {
    let work = tempfile::tempdir().unwrap();
    let out = ab(1, "0.2")
        .args(["--a", "sh -c 'echo no such policy >&2; exit 2'"])
        .args(["--b", "true"])
        .arg("--work-dir")
        .arg(work.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("exited") && stderr.contains("no such policy"),
        "{stderr}"
    );
}

/// A stand-in for the service's server: takes the flags `suite` gives the
/// real one and serves plain tonic with mutual TLS from the same PKI, so
/// both client identities are accepted.
fn stand_in_server(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("server.sh");
    let script = format!(
        "#!/bin/sh\n\
         while [ $# -gt 0 ]; do\n\
           case $1 in --listen) listen=$2 ;; --client-ca) ca=$2 ;; esac\n\
           shift\n\
         done\n\
         exec '{BIN}' serve-tonic --listen \"$listen\" --pki \"$(dirname \"$ca\")\"\n"
    );
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[test]
fn the_fairness_row_runs_two_identities_on_both_sides_and_prints_its_table() {
    let work = tempfile::tempdir().unwrap();
    let server = stand_in_server(work.path());
    let out = Command::new(BIN)
        .args(["suite", "--only", "fairness", "--server-cpus", "none"])
        .args(["--rounds", "1", "--secs", "0.2", "--big-policy-rules", "10"])
        .arg("--server")
        .arg(&server)
        .arg("--baseline-server")
        .arg(&server)
        .args(["--baseline-name", "previous"])
        .arg("--work-dir")
        .arg(work.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Only the table's shape: its figures are the benchmark's business.
    assert!(stdout.contains("\n### fairness: identity A"), "{stdout}");
    assert!(
        stdout.contains("| figure | previous | candidate | goal |"),
        "{stdout}"
    );
    for figure in [
        "| B p99 under A's flood / B p99 alone | ",
        "| B failed calls under A's flood (total) | ",
        "| A ok/s with B / A ok/s alone | ",
        "| A failed calls, alone and with B (total) | ",
    ] {
        assert!(stdout.contains(figure), "no {figure:?} in {stdout}");
    }
    let raw = std::fs::read(work.path().join("logs/results.json")).unwrap();
    let raw: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(raw[0]["row"], "fairness", "{raw}");
    assert_eq!(raw[0]["result"]["rounds"].as_array().map(Vec::len), Some(1));
}
