//! A policy's paths checked against the methods the server serves, at load
//! and on every reload: a warning by default (every policy gRPC accepts
//! loads), a refusal with strict checking (and the old policy stays).

use std::sync::Arc;

use mtls_kit::policy::{PathCheck, ServedMethods};
use mtls_kit::reload::{GroupOutcome, ServerReloader, ServerSources};
use mtls_kit::server::Limits;
use mtls_kit::tls::ServerTlsOptions;
use tonic::Code;

use crate::helpers::{spawn_file_server_checked, LogCapture, TestPki, TestStore, POLICY};
use crate::store::{ClearRequest, StoreClient};

/// Lets everyone call `Get`, spelled `Gett`.
const TYPO: &str = r#"{"name": "typo",
  "allow_rules": [{"name": "getters", "request": {"paths": ["/kittest.v1.Store/Gett"]}}]}"#;
/// The same, for a reload.
const TYPO_2: &str = r#"{"name": "typo-2",
  "allow_rules": [{"name": "getters", "request": {"paths": ["/kittest.v1.Store/*", "kittest.v1.Store/Clear"]}}]}"#;

fn served() -> Arc<ServedMethods> {
    let services = TestStore::default().services(&Limits::default());
    Arc::new(services.served_methods().unwrap())
}

fn check(strict: bool) -> PathCheck {
    PathCheck {
        served: Some(served()),
        strict,
    }
}

fn warnings(logs: &LogCapture) -> Vec<String> {
    logs.matching(&[("message", "policy warning")])
        .iter()
        .map(|e| e["warning"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn the_served_methods_include_health_and_both_reflections() {
    let served = served();
    for m in [
        "/kittest.v1.Store/Get",
        "/kittest.v1.Store/Load",
        "/grpc.health.v1.Health/Watch",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    ] {
        assert!(
            served.contains(m),
            "{m}: {:?}",
            served.methods().collect::<Vec<_>>()
        );
    }
    assert_eq!(served.methods().count(), 9);
}

#[tokio::test]
async fn a_typo_is_a_warning_by_default_at_load_and_on_reload() {
    let (logs, _guard) = LogCapture::start();
    let pki = TestPki::new();
    let fs = spawn_file_server_checked(&pki, TYPO, Limits::default(), None, check(false)).await;
    // It loaded (gRPC would load it too) and warned, naming everything.
    assert_eq!(fs.server_policy_name(), "typo");
    let policy_file = fs.paths().policy.display().to_string();
    assert_eq!(
        warnings(&logs),
        [format!(
            "policy file {policy_file}: allow_rules[0].request.paths[0]: rule \"getters\": path \"/kittest.v1.Store/Gett\" matches no method this server serves; did you mean \"/kittest.v1.Store/Get\"? (line 2, column 61)"
        )]
    );

    std::fs::write(fs.paths().policy, TYPO_2).unwrap();
    let (_, outcome) = fs.reloader.reload();
    assert_eq!(outcome, GroupOutcome::Applied(vec![fs.paths().policy]));
    assert_eq!(fs.server_policy_name(), "typo-2");
    let all = warnings(&logs);
    assert_eq!(all.len(), 2, "{all:#?}");
    assert!(
        all[1].contains("path \"kittest.v1.Store/Clear\"")
            && all[1].contains("did you mean \"/kittest.v1.Store/Clear\"? (paths start with `/`)"),
        "{all:#?}"
    );
}

#[tokio::test]
async fn strict_checking_refuses_a_typo_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    let d = dir.path();
    std::fs::write(d.join("server.pem"), &pki.server.cert_pem).unwrap();
    std::fs::write(d.join("server.key"), pki.server.key_pem()).unwrap();
    std::fs::write(d.join("ca.pem"), pki.ca.cert_pem()).unwrap();
    std::fs::write(d.join("policy.json"), TYPO).unwrap();
    let sources = ServerSources {
        cert: d.join("server.pem"),
        key: d.join("server.key"),
        client_ca: d.join("ca.pem"),
        crls: vec![],
        policy: d.join("policy.json"),
        limits: None,
        policy_check: check(true),
        tls: ServerTlsOptions::default(),
    };
    let Err(errors) = ServerReloader::load(sources) else {
        panic!("a policy with a typo'd path loaded under strict checking");
    };
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(
        errors[0].contains("did you mean \"/kittest.v1.Store/Get\"?"),
        "{errors:#?}"
    );
    assert!(
        errors[1].contains("refused") && errors[1].contains("--strict-policy-paths"),
        "{errors:#?}"
    );
}

#[tokio::test]
async fn strict_checking_refuses_a_typo_on_reload_and_keeps_the_old_policy() {
    let pki = TestPki::new();
    let fs = spawn_file_server_checked(&pki, POLICY, Limits::default(), None, check(true)).await;
    let mut admin = StoreClient::new(fs.server.connect(&pki.client("admin")).await.unwrap());
    admin.clear(ClearRequest {}).await.unwrap();

    std::fs::write(fs.paths().policy, TYPO_2).unwrap();
    let (_, outcome) = fs.reloader.reload();
    let GroupOutcome::Refused(e) = outcome else {
        panic!("not refused: {outcome:?}");
    };
    assert!(
        e.contains("\"kittest.v1.Store/Clear\"") && e.contains("refused"),
        "{e}"
    );
    // The old policy still decides: admin may clear, reader may not.
    assert_eq!(fs.server_policy_name(), "kit-test");
    admin.clear(ClearRequest {}).await.unwrap();
    let mut reader = StoreClient::new(fs.server.connect(&pki.client("reader")).await.unwrap());
    assert_eq!(
        reader.clear(ClearRequest {}).await.unwrap_err().code(),
        Code::PermissionDenied
    );
}
