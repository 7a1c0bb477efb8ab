//! The `server`, `client` and `certs` binaries as a user runs them.
//!
//! Only the kit's own commands (health, `--expect`, `certs`) are used here,
//! so these tests keep passing when the example RPCs are replaced; the
//! service's RPCs are tested in `tests/service.rs`. The exception is the
//! last test, of `client load`, which a replaced example replaces too.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const SERVER: &str = env!("CARGO_BIN_EXE_server");
const CLIENT: &str = env!("CARGO_BIN_EXE_client");
const CERTS: &str = env!("CARGO_BIN_EXE_certs");

fn run(cmd: &mut Command) -> Output {
    cmd.env_remove("RUST_LOG").output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A project-like directory: the shipped policy under config/, nothing else.
fn project_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("config")).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/policy.json"),
        dir.path().join("config/policy.json"),
    )
    .unwrap();
    dir
}

/// A project directory whose dev PKI `certs init` has made.
fn project_dir_with_dev_pki() -> tempfile::TempDir {
    let dir = project_dir();
    let out = run(Command::new(CERTS).current_dir(dir.path()).arg("init"));
    assert!(out.status.success(), "{}", stderr(&out));
    dir
}

/// Starts the server in `dir` on an ephemeral port; returns it and the
/// address it reported once listening.
fn start_server(dir: &Path, extra: &[&str]) -> (Child, String, Vec<String>) {
    let (child, addr, seen, _) = start_server_logs(dir, extra);
    (child, addr, seen)
}

/// As [`start_server`], also returning the server's later log lines.
fn start_server_logs(
    dir: &Path,
    extra: &[&str],
) -> (Child, String, Vec<String>, mpsc::Receiver<String>) {
    let mut child = Command::new(SERVER)
        .current_dir(dir)
        // The metrics port too: tests run servers side by side.
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .args(["--log-format", "json"])
        .args(extra)
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push(line.clone());
        let event: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if event["message"] == "listening (mutual TLS)" {
            let addr = event["addr"].as_str().unwrap().to_owned();
            // Keep draining stderr so the server never blocks on a full pipe.
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                for line in lines.map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
            return (child, addr, seen, rx);
        }
    }
    let status = child.wait().unwrap();
    panic!("server exited ({status}) before listening: {seen:#?}");
}

/// Sends a signal with the shell's `kill` builtin (no extra package needed).
fn signal(child: &Child, name: &str) {
    let status = Command::new("sh")
        .args(["-c", &format!("kill -{name} {}", child.id())])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name}");
}

fn client(dir: &Path, addr: &str, args: &[&str]) -> Output {
    run(Command::new(CLIENT)
        .current_dir(dir)
        .args(["--addr", addr])
        .args(args))
}

#[test]
fn fresh_checkout_generates_dev_pki_serves_and_stops_on_sigterm() {
    let dir = project_dir();
    let (mut server, addr, log) = start_server(dir.path(), &[]);
    assert!(
        log.iter()
            .any(|l| l.contains("generating one (for development only)")),
        "the server did not say it generated the PKI: {log:#?}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let clients = inventory_service::DEV_IDENTITIES.clients.iter();
        for key in ["ca", "server"].iter().chain(clients) {
            let key = format!("{key}.key");
            let mode = std::fs::metadata(dir.path().join("certs").join(&key))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
    }

    let health = client(dir.path(), &addr, &["health"]);
    assert!(health.status.success(), "{}", stderr(&health));
    assert_eq!(String::from_utf8_lossy(&health.stdout).trim(), "SERVING");

    // The shipped policy denies `outsider` everything, health included.
    let denied = client(dir.path(), &addr, &["--identity", "outsider", "health"]);
    assert_eq!(denied.status.code(), Some(1));
    assert_eq!(
        stderr(&denied).trim(),
        "error: PERMISSION_DENIED: permission denied by authorization policy"
    );

    let wrong_name = client(
        dir.path(),
        &addr,
        &["--server-name", "other.example", "health"],
    );
    assert_eq!(wrong_name.status.code(), Some(1));
    assert!(
        stderr(&wrong_name).contains("not valid for name"),
        "{}",
        stderr(&wrong_name)
    );

    signal(&server, "TERM");
    let status = server.wait().unwrap();
    assert!(
        status.success(),
        "server exited with {status} after SIGTERM"
    );
}

#[test]
fn invalid_policy_stops_startup_before_listening() {
    let dir = project_dir();
    let policy = dir.path().join("config/policy.json");
    std::fs::write(
        &policy,
        r#"{"name": "p", "allow_rules": [{"name": "a", "request": {"headers": [{"key": "grpc-timeout", "values": ["1S"]}]}}]}"#,
    )
    .unwrap();
    let out = run(Command::new(SERVER)
        .current_dir(dir.path())
        .args(["--listen", "127.0.0.1:0"]));
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(!err.contains("listening"), "{err}");
    assert!(
        err.contains(
            "error: policy file config/policy.json: allow_rules[0].request.headers[0].key:"
        ),
        "{err}"
    );
}

#[test]
fn explicitly_named_files_that_are_missing_give_one_line_errors() {
    let dir = project_dir();
    let out = run(Command::new(SERVER).current_dir(dir.path()).args([
        "--listen",
        "127.0.0.1:0",
        "--cert",
        "nope/server.pem",
        "--key",
        "nope/server.key",
        "--client-ca",
        "nope/ca.pem",
        "--policy",
        "nope/policy.json",
    ]));
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    // Every problem is reported, each naming its file and the cause.
    for f in ["nope/server.pem", "nope/ca.pem", "nope/policy.json"] {
        assert!(
            err.contains(&format!("{f}: No such file or directory")),
            "{f}: {err}"
        );
    }
    assert!(
        !err.contains("panicked") && !err.contains("listening"),
        "{err}"
    );
    // No PKI was generated for explicitly named files.
    assert!(!dir.path().join("certs").exists());

    // One missing file: one line.
    let certs = run(Command::new(CERTS).current_dir(dir.path()).args(["init"]));
    assert!(certs.status.success(), "{}", stderr(&certs));
    let out = run(Command::new(SERVER).current_dir(dir.path()).args([
        "--listen",
        "127.0.0.1:0",
        "--cert",
        "certs/server.pem",
        "--key",
        "certs/missing.key",
        "--client-ca",
        "certs/ca.pem",
    ]));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out).trim(),
        "error: certs/missing.key: No such file or directory (os error 2)"
    );
}

#[test]
fn client_failures_are_clear() {
    let dir = project_dir_with_dev_pki();
    // A second init refuses to overwrite; --if-missing is a quiet success.
    let again = run(Command::new(CERTS).current_dir(dir.path()).arg("init"));
    assert!(
        !again.status.success() && stderr(&again).contains("--force"),
        "{}",
        stderr(&again)
    );
    let quiet = run(Command::new(CERTS)
        .current_dir(dir.path())
        .args(["init", "--if-missing"]));
    assert!(quiet.status.success());

    let (mut server, addr, _) = start_server(dir.path(), &[]);
    let missing = client(dir.path(), &addr, &["--identity", "nobody", "health"]);
    assert_eq!(missing.status.code(), Some(1));
    assert_eq!(
        stderr(&missing).trim(),
        "error: certs/nobody.pem: No such file or directory (os error 2)"
    );

    // Names that would escape certs/ or overwrite the CA are refused.
    for bad in ["../evil", "ca", "server", ""] {
        let out = run(Command::new(CERTS)
            .current_dir(dir.path())
            .args(["client", bad]));
        assert_eq!(out.status.code(), Some(1), "{bad:?}");
        assert!(
            stderr(&out).contains("client name"),
            "{bad:?}: {}",
            stderr(&out)
        );
    }

    // A client certificate issued later from the same CA works.
    let issued = run(Command::new(CERTS)
        .current_dir(dir.path())
        .args(["client", "auditor"]));
    assert!(issued.status.success(), "{}", stderr(&issued));
    let health = client(dir.path(), &addr, &["--identity", "auditor", "health"]);
    assert!(health.status.success(), "{}", stderr(&health));
    server.kill().unwrap();
    server.wait().unwrap();
}

/// Waits for a log line whose message is `message`.
fn wait_for_log(lines: &mpsc::Receiver<String>, message: &str) -> serde_json::Value {
    loop {
        let line = lines
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no {message:?} log line"));
        let event: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if event["message"] == message {
            return event;
        }
    }
}

#[test]
fn certs_revoke_and_sighup_cut_a_client_off() {
    let dir = project_dir_with_dev_pki();
    // File watching and polling off: only SIGHUP can reload.
    let (mut server, addr, _, lines) = start_server_logs(
        dir.path(),
        &[
            "--crl",
            "certs/crl.pem",
            "--watch-files",
            "false",
            "--poll-interval-secs",
            "0",
        ],
    );
    let before = client(dir.path(), &addr, &["--identity", "reader", "health"]);
    assert!(before.status.success(), "{}", stderr(&before));

    let revoke = run(Command::new(CERTS)
        .current_dir(dir.path())
        .args(["revoke", "reader"]));
    assert!(revoke.status.success(), "{}", stderr(&revoke));
    assert_eq!(
        String::from_utf8_lossy(&revoke.stdout).trim(),
        "wrote certs/crl.pem"
    );

    signal(&server, "HUP");
    let reloaded = wait_for_log(&lines, "configuration reloaded");
    assert_eq!(reloaded["changed"], "certs/crl.pem");

    let after = client(dir.path(), &addr, &["--identity", "reader", "health"]);
    assert_eq!(after.status.code(), Some(1));
    assert!(
        !stderr(&after).contains("PERMISSION_DENIED"),
        "{}",
        stderr(&after)
    );
    let other = client(dir.path(), &addr, &["--identity", "writer", "health"]);
    assert!(other.status.success(), "{}", stderr(&other));

    // With file watching on (the default), a rotated server certificate is
    // picked up without a signal.
    server.kill().unwrap();
    server.wait().unwrap();
    let (mut server, addr, _, lines) = start_server_logs(dir.path(), &["--crl", "certs/crl.pem"]);
    let reissue = run(Command::new(CERTS).current_dir(dir.path()).args(["server"]));
    assert!(reissue.status.success(), "{}", stderr(&reissue));
    let reloaded = wait_for_log(&lines, "configuration reloaded");
    assert!(
        reloaded["changed"]
            .as_str()
            .unwrap()
            .contains("certs/server.pem"),
        "{reloaded}"
    );
    let health = client(dir.path(), &addr, &["--identity", "writer", "health"]);
    assert!(health.status.success(), "{}", stderr(&health));
    server.kill().unwrap();
    server.wait().unwrap();
}

#[test]
fn a_typo_in_a_policy_path_warns_by_default_and_stops_startup_when_strict() {
    let dir = project_dir();
    let policy = dir.path().join("config/policy.json");
    let shipped = std::fs::read_to_string(&policy).unwrap();
    std::fs::write(
        &policy,
        shipped.replace("Inventory/Purge", "Inventory/purge"),
    )
    .unwrap();

    // Default: it serves (gRPC would load this policy too) and says why not to.
    let (mut server, _, log) = start_server(dir.path(), &[]);
    let warning = log
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e["message"] == "policy warning")
        .unwrap_or_else(|| panic!("no policy warning: {log:#?}"));
    let warning = warning["warning"].as_str().unwrap();
    assert!(
        warning.starts_with("policy file config/policy.json: allow_rules[4].request.paths[0]: rule \"admins-administer\": path \"/inventory.v1.Inventory/purge\"")
            && warning.contains("did you mean \"/inventory.v1.Inventory/Purge\"? (paths are case-sensitive)"),
        "{warning}"
    );
    server.kill().unwrap();
    server.wait().unwrap();

    // Strict, by flag or by environment: refused before listening.
    for strict in [
        Command::new(SERVER).arg("--strict-policy-paths"),
        Command::new(SERVER).env("SERVER_STRICT_POLICY_PATHS", "true"),
    ] {
        let out = run(strict
            .current_dir(dir.path())
            .args(["--listen", "127.0.0.1:0"]));
        assert_eq!(out.status.code(), Some(1));
        let err = stderr(&out);
        assert!(!err.contains("listening"), "{err}");
        assert!(err.contains(warning), "{err}");
        assert!(
            err.contains("refused: 1 path(s) match no served method"),
            "{err}"
        );
    }
}

#[test]
fn dev_pki_revocation_and_strict_spiffe_are_on_without_flags() {
    let dir = project_dir_with_dev_pki();
    // A dev PKI from before the CRL existed: the server makes an empty one.
    std::fs::remove_file(dir.path().join("certs/crl.pem")).unwrap();
    let (mut server, addr, log, lines) = start_server_logs(dir.path(), &[]);
    assert!(
        log.iter().any(|l| l.contains("wrote an empty one")),
        "{log:#?}"
    );
    assert!(dir.path().join("certs/crl.pem").exists());
    let loaded: serde_json::Value = log
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .find(|e: &serde_json::Value| e["message"] == "configuration loaded")
        .unwrap();
    let trust_domain = inventory_service::DEV_IDENTITIES.trust_domain;
    assert_eq!(loaded["spiffe_trust_domain"], trust_domain, "{loaded}");
    assert_eq!(loaded["crls"], 1, "{loaded}");
    // The dev server certificate is verified by name; the server says so.
    assert!(
        log.iter()
            .any(|l| l.contains("the server certificate is not an X.509-SVID")),
        "{log:#?}"
    );

    let before = client(dir.path(), &addr, &["--identity", "reader", "health"]);
    assert!(before.status.success(), "{}", stderr(&before));

    // Revoked while running, with no --crl and no signal.
    let revoke = run(Command::new(CERTS)
        .current_dir(dir.path())
        .args(["revoke", "reader"]));
    assert!(revoke.status.success(), "{}", stderr(&revoke));
    let reloaded = wait_for_log(&lines, "configuration reloaded");
    assert_eq!(reloaded["changed"], "certs/crl.pem");
    let after = client(dir.path(), &addr, &["--identity", "reader", "health"]);
    assert_eq!(after.status.code(), Some(1));
    // The client may see the alert or only the closed connection (it can be
    // writing when the server hangs up); the server's log says why.
    assert!(
        !stderr(&after).contains("PERMISSION_DENIED"),
        "{}",
        stderr(&after)
    );
    let refused = wait_for_log(&lines, "TLS handshake refused");
    assert!(
        refused["error"].as_str().unwrap().contains("Revoked"),
        "{refused}"
    );
    let other = client(dir.path(), &addr, &["--identity", "writer", "health"]);
    assert!(other.status.success(), "{}", stderr(&other));

    // Strict SPIFFE mode: a certificate from the same CA with an ID in
    // another trust domain is refused in the handshake, and the log says why.
    let stranger = run(Command::new(CERTS).current_dir(dir.path()).args([
        "--trust-domain",
        "other.example",
        "client",
        "stranger",
    ]));
    assert!(stranger.status.success(), "{}", stderr(&stranger));
    let refused = client(dir.path(), &addr, &["--identity", "stranger", "health"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        !stderr(&refused).contains("PERMISSION_DENIED"),
        "{}",
        stderr(&refused)
    );
    let why = wait_for_log(
        &lines,
        "client certificate refused: not an X.509-SVID of the trust domain (strict SPIFFE mode)",
    );
    assert!(
        why["reason"].as_str().unwrap().contains(&format!(
            "\"spiffe://other.example/stranger\" is not in trust domain \"{trust_domain}\""
        )),
        "{why}"
    );
    server.kill().unwrap();
    server.wait().unwrap();
}

#[test]
fn the_client_shows_which_replica_answered() {
    let dir = project_dir();
    let (mut server, addr, _) = start_server(dir.path(), &["--replica-name", "replica-7"]);
    let health = client(dir.path(), &addr, &["--show-replica", "health"]);
    assert!(health.status.success(), "{}", stderr(&health));
    assert_eq!(
        String::from_utf8_lossy(&health.stdout).trim(),
        "SERVING\nreplica=replica-7"
    );
    // Without the flag, the output is unchanged; and a one-shot call logs
    // nothing (its connection closing as it exits is no news).
    let plain = client(dir.path(), &addr, &["health"]);
    assert_eq!(String::from_utf8_lossy(&plain.stdout).trim(), "SERVING");
    assert_eq!(stderr(&plain), "");
    server.kill().unwrap();
    server.wait().unwrap();
}

#[test]
fn a_named_crl_that_is_missing_stops_startup() {
    let dir = project_dir_with_dev_pki();
    for tls_files in [
        &[][..],
        &[
            "--cert",
            "certs/server.pem",
            "--key",
            "certs/server.key",
            "--client-ca",
            "certs/ca.pem",
        ][..],
    ] {
        let out = run(Command::new(SERVER)
            .current_dir(dir.path())
            .args(["--listen", "127.0.0.1:0", "--crl", "certs/revoked.pem"])
            .args(tls_files));
        assert_eq!(out.status.code(), Some(1), "{tls_files:?}");
        assert_eq!(
            stderr(&out).trim(),
            "error: certs/revoked.pem: No such file or directory (os error 2)",
            "{tls_files:?}"
        );
    }
}

#[test]
fn client_load_reports_totals_and_the_replica_split() {
    let dir = project_dir();
    let (mut server, addr, _) = start_server(dir.path(), &["--replica-name", "solo"]);
    let out = client(
        dir.path(),
        &addr,
        &[
            "--identity",
            "writer",
            "load",
            "--rate",
            "100",
            "--duration-secs",
            "1",
            "--report-secs",
            "0",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap();
    assert_eq!(last["final"], true, "{stdout}");
    assert_eq!(last["failures"], 0, "{stdout}");
    let rpcs = last["rpcs"].as_u64().unwrap();
    assert!(rpcs >= 50, "{stdout}");
    // Every call was answered by the one replica, which named itself.
    assert_eq!(last["replicas"]["solo"].as_u64(), Some(rpcs), "{stdout}");
    server.kill().unwrap();
    server.wait().unwrap();
}
