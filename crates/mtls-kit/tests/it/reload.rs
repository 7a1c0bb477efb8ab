//! Reloading: what changes takes effect for new handshakes and new RPCs;
//! what does not build is refused, logged with its file, and the last good
//! configuration stays.

use std::time::Duration;

use crate::store::StoreClient;
use crate::store::{ClearRequest, Key};
use mtls_kit::pki::LeafSpec;
use mtls_kit::reload::{GroupOutcome, WatchSettings};
use mtls_kit::server::Limits;
use tonic::Code;

use crate::helpers::{presented_cert, spawn_file_server, LogCapture, TestPki, POLICY};

const ADMIN_CANNOT_PURGE: &str = r#"{"name": "v2", "deny_rules": [{"name": "no-purge", "request": {"paths": ["/kittest.v1.Store/Clear"]}}],
    "allow_rules": [{"name": "all", "source": {"principals": ["spiffe://example.org/*"]}}]}"#;

#[tokio::test]
async fn a_reloaded_policy_applies_to_the_next_rpc_on_open_connections() {
    let pki = TestPki::new();
    let fs = spawn_file_server(&pki, POLICY, Limits::default(), None).await;
    let mut admin = StoreClient::new(fs.server.connect(&pki.client("admin")).await.unwrap());
    admin.clear(ClearRequest {}).await.unwrap();

    std::fs::write(fs.paths().policy, ADMIN_CANNOT_PURGE).unwrap();
    let (_, policy) = fs.reloader.reload();
    assert_eq!(policy, GroupOutcome::Applied(vec![fs.paths().policy]));
    // Same connection, next RPC: the new policy decides.
    assert_eq!(
        admin.clear(ClearRequest {}).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    // Nothing changed since: a reload is a no-op.
    assert_eq!(
        fs.reloader.reload(),
        (GroupOutcome::Unchanged, GroupOutcome::Unchanged)
    );
}

#[tokio::test]
async fn bad_files_are_refused_logged_once_and_the_last_good_configuration_stays() {
    let (logs, _guard) = LogCapture::start();
    let pki = TestPki::new();
    let fs = spawn_file_server(&pki, POLICY, Limits::default(), None).await;
    let paths = fs.paths();
    let admin = pki.client("admin");
    let original_cert = presented_cert(fs.server.addr, &admin, &pki.anchors()).await;
    let mut client = StoreClient::new(fs.server.connect(&admin).await.unwrap());

    let rotated = pki
        .ca
        .issue(&LeafSpec::server("rotated", &["localhost"]))
        .unwrap();
    let half = &rotated.cert_pem[..rotated.cert_pem.len() / 2];
    let cases: Vec<(&str, std::path::PathBuf, Vec<u8>, &str)> = vec![
        (
            "invalid policy",
            paths.policy.clone(),
            br#"{"name": "p", "allow_rules": []}"#.to_vec(),
            "allow_rules",
        ),
        (
            "half-written policy",
            paths.policy.clone(),
            br#"{"name": "p", "allow_ru"#.to_vec(),
            "EOF while parsing",
        ),
        (
            "half-written certificate",
            paths.cert.clone(),
            half.as_bytes().to_vec(),
            "no END line",
        ),
        (
            "certificate without its key",
            paths.cert.clone(),
            rotated.cert_pem.clone().into_bytes(),
            "do not match",
        ),
        (
            "garbage CRL",
            paths.crl.clone(),
            b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n".to_vec(),
            "crl.pem",
        ),
        (
            "half-written key",
            paths.key.clone(),
            pki.server.key_pem().as_bytes()[..40].to_vec(),
            "server.key",
        ),
    ];
    for (what, path, contents, expect) in cases {
        let good = std::fs::read(&path).unwrap();
        std::fs::write(&path, &contents).unwrap();
        let (tls, policy) = fs.reloader.reload();
        let refused = [tls, policy]
            .into_iter()
            .find_map(|o| match o {
                GroupOutcome::Refused(e) => Some(e),
                _ => None,
            })
            .unwrap_or_else(|| panic!("{what}: not refused"));
        assert!(
            refused.contains(&path.display().to_string()),
            "{what}: {refused}"
        );
        assert!(refused.contains(expect), "{what}: {refused}");
        // Reported once, not on every poll.
        assert_eq!(
            fs.reloader.reload(),
            (GroupOutcome::Unchanged, GroupOutcome::Unchanged),
            "{what}"
        );
        // The old configuration still serves: same certificate, same policy.
        assert_eq!(
            presented_cert(fs.server.addr, &admin, &pki.anchors()).await,
            original_cert,
            "{what}"
        );
        client.get(Key { key: "x".into() }).await.unwrap_err();
        assert_eq!(fs.reloader.in_force(&path).unwrap(), good, "{what}");
        // Putting the good file back is not a change.
        std::fs::write(&path, &good).unwrap();
        assert_eq!(
            fs.reloader.reload(),
            (GroupOutcome::Unchanged, GroupOutcome::Unchanged),
            "{what}"
        );
    }

    // A file that disappears is refused too, naming it.
    let policy = std::fs::read(&paths.policy).unwrap();
    std::fs::remove_file(&paths.policy).unwrap();
    let (_, outcome) = fs.reloader.reload();
    assert!(
        matches!(&outcome, GroupOutcome::Refused(e) if e.contains("policy.json") && e.contains("No such file")),
        "{outcome:?}"
    );
    std::fs::write(&paths.policy, policy).unwrap();

    let refusals = logs.matching(&[(
        "message",
        "reload refused; the last good configuration stays in force",
    )]);
    assert_eq!(refusals.len(), 7, "one log line per refused change");
    assert!(refusals[0]["error"]
        .as_str()
        .unwrap()
        .contains("policy.json"));
    assert_eq!(server_calls_denied(&logs), 0);
    drop(fs);
}

fn server_calls_denied(logs: &LogCapture) -> usize {
    logs.matching(&[("decision", "deny")]).len()
}

#[tokio::test]
async fn a_rotated_server_certificate_is_used_by_new_handshakes() {
    let (logs, _guard) = LogCapture::start();
    let pki = TestPki::new();
    let fs = spawn_file_server(&pki, POLICY, Limits::default(), None).await;
    let paths = fs.paths();
    let admin = pki.client("admin");
    let mut open = StoreClient::new(fs.server.connect(&admin).await.unwrap());

    let rotated = pki
        .ca
        .issue(&LeafSpec::server("rotated", &["localhost"]))
        .unwrap();
    fs.replace(&paths.key, rotated.key_pem().as_bytes());
    fs.replace(&paths.cert, rotated.cert_pem.as_bytes());
    let (tls, _) = fs.reloader.reload();
    assert!(
        matches!(tls, GroupOutcome::Applied(ref f) if f.len() == 2),
        "{tls:?}"
    );
    assert_eq!(
        presented_cert(fs.server.addr, &admin, &pki.anchors()).await,
        rotated.cert_der.to_vec()
    );
    // The connection opened before the rotation keeps working.
    let status = open.get(Key { key: "x".into() }).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(fs.server.store.handler_calls(), 1);

    let reloaded = logs.matching(&[("message", "configuration reloaded")]);
    assert_eq!(reloaded.len(), 1, "{:#?}", logs.events());
    let changed = reloaded[0]["changed"].as_str().unwrap();
    assert!(
        changed.contains("server.pem") && changed.contains("server.key"),
        "{changed}"
    );
}

#[tokio::test]
async fn file_events_trigger_a_reload() {
    let pki = TestPki::new();
    let settings = WatchSettings {
        file_events: true,
        poll_interval: None,
        sighup: false,
    };
    let fs = spawn_file_server(&pki, POLICY, Limits::default(), Some(settings)).await;
    fs.replace(&fs.paths().policy, ADMIN_CANNOT_PURGE.as_bytes());
    fs.wait_in_force(&fs.paths().policy, ADMIN_CANNOT_PURGE.as_bytes())
        .await;
    let mut admin = StoreClient::new(fs.server.connect(&pki.client("admin")).await.unwrap());
    assert_eq!(
        admin.clear(ClearRequest {}).await.unwrap_err().code(),
        Code::PermissionDenied
    );
}

#[tokio::test]
async fn polling_reloads_without_file_events() {
    let pki = TestPki::new();
    let settings = WatchSettings {
        file_events: false,
        poll_interval: Some(Duration::from_millis(100)),
        sighup: false,
    };
    let fs = spawn_file_server(&pki, POLICY, Limits::default(), Some(settings)).await;
    // Written in place, not renamed: the poll still sees it.
    std::fs::write(fs.paths().policy, ADMIN_CANNOT_PURGE).unwrap();
    fs.wait_in_force(&fs.paths().policy, ADMIN_CANNOT_PURGE.as_bytes())
        .await;
    assert_eq!(
        fs.reloader.reload(),
        (GroupOutcome::Unchanged, GroupOutcome::Unchanged)
    );
}
