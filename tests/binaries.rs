//! The `server`, `client` and `certs` binaries as a user runs them.
//!
//! Nothing here names an RPC, a message or a count of the service's: the
//! tests use a policy of their own (health for every dev identity), the
//! kit's commands (health, `--expect`, `certs`, `load`), and what the
//! service declares (its dev identities, its served methods, and the
//! shipped policy's cases in `config/policy.test.json`). So they keep
//! passing, unchanged, when a team replaces the example.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use mtls_kit::client::dynamic::Schema;
use mtls_kit::server::Limits;

const SERVER: &str = env!("CARGO_BIN_EXE_server");
const CLIENT: &str = env!("CARGO_BIN_EXE_client");
const CERTS: &str = env!("CARGO_BIN_EXE_certs");

fn run(cmd: &mut Command) -> Output {
    cmd.env_remove("RUST_LOG").output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The dev identities `certs init` issues (at least two are needed here).
fn dev_clients() -> (&'static str, &'static str) {
    match inventory_service::DEV_IDENTITIES.clients {
        [first, second, ..] => (first, second),
        _ => panic!("these tests need at least two dev identities in DEV_IDENTITIES"),
    }
}

/// The service's methods: those it registers, plus the kit's health and
/// reflection.
fn schema() -> Schema {
    let services = inventory_service::services(&Limits::default());
    Schema::from_encoded(services.descriptor_sets()).unwrap()
}

/// A method of the service's own (the first, by path; not health or
/// reflection).
fn service_method() -> String {
    schema()
        .methods()
        .into_iter()
        .map(|m| m.path().to_owned())
        .find(|p| !p.starts_with("/grpc.health.") && !p.starts_with("/grpc.reflection."))
        .expect("the service serves no method of its own")
}

/// A client certificate these tests issue (`certs client`) and their
/// policy denies everything.
const DENIED: &str = "denied-by-test";

/// The tests' own policy: every identity of the dev trust domain may check
/// health, except [`DENIED`], which is denied everything. It names nothing
/// of the service's, so it holds whatever the service serves.
fn test_policy() -> String {
    let td = inventory_service::DEV_IDENTITIES.trust_domain;
    serde_json::json!({
        "name": "binaries-test",
        "deny_rules": [{"name": "denied", "source": {"principals": [format!("spiffe://{td}/{DENIED}")]}}],
        "allow_rules": [{
            "name": "health",
            "source": {"principals": [format!("spiffe://{td}/*")]},
            "request": {"paths": ["/grpc.health.v1.Health/Check"]}
        }]
    })
    .to_string()
}

/// A project-like directory: the tests' policy in config/policy.json,
/// nothing else.
fn project_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("config")).unwrap();
    std::fs::write(dir.path().join("config/policy.json"), test_policy()).unwrap();
    dir
}

/// A project directory with the shipped policy and its cases under config/.
fn shipped_project_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("config")).unwrap();
    for file in ["config/policy.json", "config/policy.test.json"] {
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR")).join(file),
            dir.path().join(file),
        )
        .unwrap();
    }
    dir
}

/// Issues the [`DENIED`] client certificate in `dir`'s dev PKI.
fn issue_denied(dir: &Path) {
    let out = run(Command::new(CERTS)
        .current_dir(dir)
        .args(["client", DENIED]));
    assert!(out.status.success(), "{}", stderr(&out));
}

/// A project directory whose dev PKI `certs init` has made.
fn project_dir_with_dev_pki() -> tempfile::TempDir {
    let dir = project_dir();
    let out = run(Command::new(CERTS).current_dir(dir.path()).arg("init"));
    assert!(out.status.success(), "{}", stderr(&out));
    dir
}

/// A server process, killed when dropped: a test that fails leaves no
/// server behind.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the server in `dir` on an ephemeral port; returns it and the
/// address it reported once listening.
fn start_server(dir: &Path, extra: &[&str]) -> (Server, String, Vec<String>) {
    let (child, addr, seen, _) = start_server_logs(dir, extra);
    (child, addr, seen)
}

/// As [`start_server`], also returning the server's later log lines.
fn start_server_logs(
    dir: &Path,
    extra: &[&str],
) -> (Server, String, Vec<String>, mpsc::Receiver<String>) {
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
    let stderr = child.stderr.take().unwrap();
    let mut child = Server(child);
    let mut lines = BufReader::new(stderr).lines();
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
    let status = child.0.wait().unwrap();
    panic!("server exited ({status}) before listening: {seen:#?}");
}

/// Sends a signal with the shell's `kill` builtin (no extra package needed).
fn signal(server: &Server, name: &str) {
    let status = Command::new("sh")
        .args(["-c", &format!("kill -{name} {}", server.0.id())])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name}");
}

/// Runs the client in `dir` against `addr`, as the first dev identity
/// unless `args` say otherwise.
fn client(dir: &Path, addr: &str, args: &[&str]) -> Output {
    run(Command::new(CLIENT)
        .current_dir(dir)
        .env("CLIENT_IDENTITY", dev_clients().0)
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

    // A certificate of the same CA, denied by a deny rule.
    issue_denied(dir.path());
    let denied = client(dir.path(), &addr, &["--identity", DENIED, "health"]);
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
    let status = server.0.wait().unwrap();
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
fn the_shipped_limits_file_checks_and_a_bad_one_is_refused_naming_its_field() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/limits.json");
    let out = run(Command::new(SERVER).args(["limits", "check"]).arg(&shipped));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains(": ok"));

    let dir = project_dir();
    let bad = dir.path().join("config/limits.json");
    std::fs::write(
        &bad,
        "{\"limits\": [\n  {\"name\": \"x\", \"principal\": \"*\", \"max_in_flight\": 0}]}",
    )
    .unwrap();
    let out = run(Command::new(SERVER).args(["limits", "check"]).arg(&bad));
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("limits[0].max_in_flight: must be a whole number from 1")
            && err.contains("(line 2, column"),
        "{err}"
    );
    // The server refuses it at startup the same way, before listening.
    let out = run(Command::new(SERVER).current_dir(dir.path()).args([
        "--listen",
        "127.0.0.1:0",
        "--limits",
        "config/limits.json",
    ]));
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(!err.contains("listening"), "{err}");
    assert!(
        err.contains("limits file config/limits.json: limits[0].max_in_flight"),
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

    let (server, addr, _) = start_server(dir.path(), &[]);
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
    drop(server);
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
    let (server, addr, _, lines) = start_server_logs(
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
    let (first, second) = dev_clients();
    let before = client(dir.path(), &addr, &["--identity", first, "health"]);
    assert!(before.status.success(), "{}", stderr(&before));

    let revoke = run(Command::new(CERTS)
        .current_dir(dir.path())
        .args(["revoke", first]));
    assert!(revoke.status.success(), "{}", stderr(&revoke));
    assert_eq!(
        String::from_utf8_lossy(&revoke.stdout).trim(),
        "wrote certs/crl.pem"
    );

    signal(&server, "HUP");
    let reloaded = wait_for_log(&lines, "configuration reloaded");
    assert_eq!(reloaded["changed"], "certs/crl.pem");

    let after = client(dir.path(), &addr, &["--identity", first, "health"]);
    assert_eq!(after.status.code(), Some(1));
    assert!(
        !stderr(&after).contains("PERMISSION_DENIED"),
        "{}",
        stderr(&after)
    );
    let other = client(dir.path(), &addr, &["--identity", second, "health"]);
    assert!(other.status.success(), "{}", stderr(&other));

    // With file watching on (the default), a rotated server certificate is
    // picked up without a signal.
    drop(server);
    let (server, addr, _, lines) = start_server_logs(dir.path(), &["--crl", "certs/crl.pem"]);
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
    let health = client(dir.path(), &addr, &["--identity", second, "health"]);
    assert!(health.status.success(), "{}", stderr(&health));
    drop(server);
}

#[test]
fn a_typo_in_a_policy_path_warns_by_default_and_stops_startup_when_strict() {
    // A rule naming one of the service's methods with its name's first
    // letter in the wrong case.
    let method = service_method();
    let (service, name) = method.rsplit_once('/').unwrap();
    let typo = format!("{service}/{}", name.to_ascii_lowercase());
    assert_ne!(typo, method, "{method}: a method name with no letter?");
    let dir = project_dir();
    let mut policy: serde_json::Value = serde_json::from_str(&test_policy()).unwrap();
    policy["allow_rules"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"name": "typo", "request": {"paths": [typo]}}));
    std::fs::write(dir.path().join("config/policy.json"), policy.to_string()).unwrap();

    // Default: it serves (gRPC would load this policy too) and says why not to.
    let (server, _, log) = start_server(dir.path(), &[]);
    let warning = log
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e["message"] == "policy warning")
        .unwrap_or_else(|| panic!("no policy warning: {log:#?}"));
    let warning = warning["warning"].as_str().unwrap();
    assert!(
        warning.starts_with(&format!("policy file config/policy.json: allow_rules[1].request.paths[0]: rule \"typo\": path {typo:?}"))
            && warning.contains(&format!("did you mean {method:?}? (paths are case-sensitive)")),
        "{warning}"
    );
    drop(server);

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
    let (server, addr, log, lines) = start_server_logs(dir.path(), &[]);
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

    let (first, second) = dev_clients();
    let before = client(dir.path(), &addr, &["--identity", first, "health"]);
    assert!(before.status.success(), "{}", stderr(&before));

    // Revoked while running, with no --crl and no signal.
    let revoke = run(Command::new(CERTS)
        .current_dir(dir.path())
        .args(["revoke", first]));
    assert!(revoke.status.success(), "{}", stderr(&revoke));
    let reloaded = wait_for_log(&lines, "configuration reloaded");
    assert_eq!(reloaded["changed"], "certs/crl.pem");
    let after = client(dir.path(), &addr, &["--identity", first, "health"]);
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
    let other = client(dir.path(), &addr, &["--identity", second, "health"]);
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
    drop(server);
}

#[test]
fn the_client_shows_which_replica_answered() {
    let dir = project_dir();
    let (server, addr, _) = start_server(dir.path(), &["--replica-name", "replica-7"]);
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
    drop(server);
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

/// `client load` with `args`; returns its exit status and final totals.
fn load(dir: &Path, addr: &str, args: &[&str]) -> (Output, serde_json::Value) {
    let mut all = vec!["load", "--rate", "1000", "--report-secs", "0"];
    all.extend_from_slice(args);
    let out = client(dir, addr, &all);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let last = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|_| panic!("no totals: {stdout}{}", stderr(&out)));
    (out, last)
}

#[test]
fn client_load_reports_totals_and_the_replica_split() {
    let dir = project_dir();
    let (server, addr, _) = start_server(dir.path(), &["--replica-name", "solo"]);
    // By default every call is a health check.
    let (out, last) = load(dir.path(), &addr, &["--count", "120"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(last["final"], true, "{last}");
    assert_eq!(last["failures"], 0, "{last}");
    assert_eq!(last["rpcs"], 120, "{last}");
    // Every call was answered by the one replica, which named itself.
    assert_eq!(last["replicas"]["solo"], 120, "{last}");

    // The mix is chosen: a quarter of the calls go to the write method
    // (here one of the service's, which the tests' policy denies).
    let write = service_method();
    let (out, last) = load(
        dir.path(),
        &addr,
        &[
            "--count",
            "200",
            "--write-method",
            &write,
            "--write-percent",
            "25",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(last["rpcs"], 200, "{last}");
    assert_eq!(last["failures"], 50, "{last}");
    assert_eq!(last["failure_codes"]["PERMISSION_DENIED"], 50, "{last}");

    // What cannot work is refused before connecting.
    for (args, why) in [
        (
            &["--write-percent", "10"][..],
            "--write-percent 10 needs --write-method",
        ),
        (
            &["--method", "/no.Such/Method"][..],
            "no served method is named \"/no.Such/Method\"",
        ),
        (
            &["--method", "/grpc.health.v1.Health/Watch"][..],
            "load calls unary methods; /grpc.health.v1.Health/Watch is server streaming",
        ),
        (
            &["--request", "{\"nope\": 1}"][..],
            "is not valid JSON for grpc.health.v1.HealthCheckRequest",
        ),
    ] {
        let mut all = vec!["load", "--count", "1"];
        all.extend_from_slice(args);
        let out = client(dir.path(), &addr, &all);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(stderr(&out).contains(why), "{args:?}: {}", stderr(&out));
    }
    drop(server);
}

/// One case of `config/policy.test.json`, as far as a wire test needs it.
struct WireCase {
    label: String,
    cert: PathBuf,
    method: String,
    headers: Vec<String>,
    deny: bool,
}

/// The shipped cases that a dev certificate in `dir/certs` can make over
/// the wire, and the labels of those it cannot (a principal that no dev
/// certificate carries).
fn wire_cases(dir: &Path) -> (Vec<WireCase>, Vec<String>) {
    let text = std::fs::read_to_string(dir.join("config/policy.test.json")).unwrap();
    let file: serde_json::Value = serde_json::from_str(&text).unwrap();
    let (mut cases, mut skipped) = (Vec::new(), Vec::new());
    for (i, case) in file["cases"].as_array().unwrap().iter().enumerate() {
        let name = case["name"].as_str().unwrap_or_default();
        let label = format!("cases[{i}] {name:?}");
        // `cert` is relative to the case file; a principal
        // `spiffe://TD/NAME` is certs/NAME.pem when the dev PKI has it.
        let cert = match (case["cert"].as_str(), case["principals"].as_array()) {
            (Some(cert), _) => Some(dir.join("config").join(cert)),
            (None, Some(principals)) => principals
                .iter()
                .filter_map(|p| p.as_str()?.strip_prefix("spiffe://")?.split_once('/'))
                .map(|(_, name)| dir.join("certs").join(format!("{name}.pem")))
                .find(|pem| pem.exists()),
            (None, None) => None,
        };
        let Some(cert) = cert else {
            skipped.push(label);
            continue;
        };
        let headers = case["headers"]
            .as_array()
            .map(|h| {
                h.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        cases.push(WireCase {
            label,
            cert,
            method: case["method"].as_str().unwrap().to_owned(),
            headers,
            deny: case["expect"] == "deny",
        });
    }
    (cases, skipped)
}

#[test]
fn every_shipped_policy_case_holds_over_the_wire() {
    let dir = shipped_project_dir();
    let (server, addr, _) = start_server(dir.path(), &[]);
    let (cases, skipped) = wire_cases(dir.path());
    assert!(
        !cases.is_empty(),
        "no case maps to a dev certificate: {skipped:?}"
    );
    let mut wrong = Vec::new();
    for case in &cases {
        let cert = case.cert.display().to_string();
        let key = case.cert.with_extension("key").display().to_string();
        // The default request; a streaming method gets one message and the
        // end of its stream. Allowed calls may fail for the service's own
        // reasons: only PERMISSION_DENIED is the policy's answer.
        let mut args = vec![
            "--cert",
            &cert,
            "--key",
            &key,
            "--timeout-secs",
            "5",
            "call",
        ];
        args.push(&case.method);
        for h in &case.headers {
            args.extend(["--header", h.as_str()]);
        }
        let out = client(dir.path(), &addr, &args);
        let denied = out.status.code() == Some(1) && stderr(&out).contains("PERMISSION_DENIED");
        if denied != case.deny {
            wrong.push(format!(
                "{}: expected {}, got exit {:?}: {}",
                case.label,
                if case.deny {
                    "PERMISSION_DENIED"
                } else {
                    "anything but PERMISSION_DENIED"
                },
                out.status.code(),
                stderr(&out).trim()
            ));
        }
    }
    eprintln!(
        "{} cases over the wire; {} without a dev certificate: {skipped:?}",
        cases.len(),
        skipped.len()
    );
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    drop(server);
}
