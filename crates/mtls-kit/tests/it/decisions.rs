//! How decisions are logged (gRFC A59 audit conditions) and dry-run mode.

use crate::store::StoreClient;
use crate::store::{entry, Entry, Key};
use mtls_kit::client::{self, ClientSettings};
use mtls_kit::reload::{ClientReloader, GroupOutcome};
use mtls_kit::server::Limits;
use mtls_kit::tls::{self, ClientTlsOptions};
use tonic::Code;

use crate::helpers::{spawn_server, spawn_server_opts, LogCapture, TestPki};

fn policy(audit_condition: &str) -> String {
    format!(
        r#"{{"name": "audited", "allow_rules": [{{"name": "readers-read",
            "source": {{"principals": ["spiffe://example.org/reader"]}},
            "request": {{"paths": ["/kittest.v1.Store/Get"]}}}}],
          "audit_logging_options": {{"audit_condition": "{audit_condition}",
            "audit_loggers": [{{"name": "stdout_logger"}}]}}}}"#
    )
}

fn put(key: &str) -> Entry {
    entry(key, b"")
}

#[tokio::test]
async fn audit_conditions_choose_what_is_audit_logged() {
    for (condition, audit_allow, audit_deny) in [
        ("NONE", false, false),
        ("ON_DENY", false, true),
        ("ON_ALLOW", true, false),
        ("ON_DENY_AND_ALLOW", true, true),
    ] {
        let (logs, _guard) = LogCapture::start();
        let pki = TestPki::new();
        let server = spawn_server(&pki, &policy(condition)).await;
        let mut reader = StoreClient::new(server.connect(&pki.client("reader")).await.unwrap());
        let allowed = reader.get(Key { key: "x".into() }).await.unwrap_err();
        assert_eq!(allowed.code(), Code::NotFound);
        let denied = reader.put(put("x")).await.unwrap_err();
        assert_eq!(denied.code(), Code::PermissionDenied);

        let audit = |decision: &str| logs.matching(&[("target", "audit"), ("decision", decision)]);
        assert_eq!(
            audit("allow").len(),
            usize::from(audit_allow),
            "{condition}: audited allows"
        );
        assert_eq!(
            audit("deny").len(),
            usize::from(audit_deny),
            "{condition}: audited denials"
        );

        // Whatever the audit condition, a denial is visible at INFO, and an
        // allow that is not audited stays at DEBUG.
        let deny = &logs.matching(&[("decision", "deny")])[0];
        assert_eq!(deny["level"], "INFO", "{condition}");
        assert_eq!(deny["peer"], "spiffe://example.org/reader");
        assert_eq!(deny["method"], "/kittest.v1.Store/Put");
        assert_eq!(deny["policy"], "audited");
        assert_eq!(deny["rule"], "");
        let allow = &logs.matching(&[("decision", "allow")])[0];
        assert_eq!(
            allow["level"],
            if audit_allow { "INFO" } else { "DEBUG" },
            "{condition}"
        );
        assert_eq!(allow["rule"], "readers-read");
        assert_eq!(allow["method"], "/kittest.v1.Store/Get");
    }
}

#[tokio::test]
async fn dry_run_lets_a_would_be_denied_call_through_and_logs_it() {
    let (logs, _guard) = LogCapture::start();
    let pki = TestPki::new();
    let server = spawn_server_opts(&pki, &policy("NONE"), Limits::default(), true).await;
    let mut reader = StoreClient::new(server.connect(&pki.client("reader")).await.unwrap());
    let stored = reader.put(put("dry")).await.unwrap().into_inner();
    assert_eq!(stored.written_by, "spiffe://example.org/reader");
    assert_eq!(server.store.handler_calls(), 1);

    let would = logs.matching(&[("decision", "would-deny")]);
    assert_eq!(would.len(), 1, "{:#?}", logs.events());
    assert_eq!(would[0]["level"], "INFO");
    assert_eq!(would[0]["method"], "/kittest.v1.Store/Put");
    assert_eq!(would[0]["reason"], "no allow rule matched");
    assert!(logs.matching(&[("decision", "deny")]).is_empty());
}

#[tokio::test]
async fn a_long_running_client_presents_its_rotated_certificate_on_new_connections() {
    let pki = TestPki::new();
    let server = spawn_server(&pki, r#"{"name": "p", "allow_rules": [{"name": "all"}]}"#).await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, ca) = (
        dir.path().join("me.pem"),
        dir.path().join("me.key"),
        dir.path().join("ca.pem"),
    );
    let first = pki.client("client-a");
    std::fs::write(&cert, &first.cert_pem).unwrap();
    std::fs::write(&key, first.key_pem()).unwrap();
    std::fs::write(&ca, pki.ca.cert_pem()).unwrap();

    let reloader = ClientReloader::load(&cert, &key, &ca, ClientTlsOptions::default()).unwrap();
    let settings = ClientSettings::new(
        server.addr.to_string(),
        tls::server_name("localhost").unwrap(),
    );
    let mut old = StoreClient::new(client::connect(&settings, reloader.config()).await.unwrap());
    assert_eq!(
        old.put(put("a")).await.unwrap().into_inner().written_by,
        "spiffe://example.org/client-a"
    );

    // A half-written rotation is refused and changes nothing.
    let second = pki.client("client-b");
    std::fs::write(&cert, &second.cert_pem[..100]).unwrap();
    assert!(matches!(reloader.reload(), GroupOutcome::Refused(e) if e.contains("me.pem")));
    let mut again = StoreClient::new(client::connect(&settings, reloader.config()).await.unwrap());
    assert_eq!(
        again.put(put("b")).await.unwrap().into_inner().written_by,
        "spiffe://example.org/client-a"
    );

    std::fs::write(&key, second.key_pem()).unwrap();
    std::fs::write(&cert, &second.cert_pem).unwrap();
    assert!(matches!(reloader.reload(), GroupOutcome::Applied(f) if f.len() == 2));
    let mut new = StoreClient::new(client::connect(&settings, reloader.config()).await.unwrap());
    assert_eq!(
        new.put(put("c")).await.unwrap().into_inner().written_by,
        "spiffe://example.org/client-b"
    );
    // The connection made before keeps its identity until it closes.
    assert_eq!(
        old.put(put("d")).await.unwrap().into_inner().written_by,
        "spiffe://example.org/client-a"
    );
}
