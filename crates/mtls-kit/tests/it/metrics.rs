//! The metrics endpoint, scraped over HTTP on loopback as Prometheus would:
//! every metric the kit exposes moves when its event happens.

use std::sync::Arc;
use std::time::Duration;

use mtls_kit::metrics::reload::{record, reload_and_record, sha256_prefix};
use mtls_kit::metrics::scrape::{self, Exposition};
use mtls_kit::pki::{CertificateAuthority, LeafSpec, Usage};
use mtls_kit::server::Limits;
use mtls_kit::tls::{self, CertifiedKeyFiles, ClientTlsOptions};
use prometheus_client::metrics::counter::Counter;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_stream::StreamExt;
use tonic::Code;

use crate::helpers::{
    spawn_file_server, spawn_server, spawn_server_opts, spawn_server_with, LogCapture, TestPki,
    TestServer, POLICY,
};
use crate::store::{call_path, entry, Entry, Key, StoreClient};

const STORE: &str = "kittest.v1.Store";

/// Scrapes until `check` holds, for events the server counts after the
/// client has seen their effect (a refused handshake, a closed connection).
/// Fails after 10 s.
async fn eventually<F>(server: &TestServer, what: &str, check: F) -> Exposition
where
    F: Fn(&Exposition) -> bool,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let scraped = server.scrape().await;
        if check(&scraped) {
            return scraped;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not reached; last scrape:\n{scraped:#?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn handled(x: &Exposition, method: &str, code: &str) -> f64 {
    x.sum(
        "grpc_server_handled_total",
        &[
            ("grpc_service", STORE),
            ("grpc_method", method),
            ("grpc_code", code),
        ],
    )
}

#[tokio::test]
async fn rpcs_are_counted_and_timed_by_service_method_and_status() {
    let pki = TestPki::new();
    let server = spawn_server(&pki, POLICY).await;
    let mut writer = StoreClient::new(server.connect(&pki.client("writer")).await.unwrap());
    let mut outsider = StoreClient::new(server.connect(&pki.client("outsider")).await.unwrap());

    writer.put(entry("a", b"1")).await.unwrap();
    writer.put(entry("ab", b"2")).await.unwrap();
    let status = writer.get(Key { key: "zz".into() }).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = outsider.get(Key { key: "a".into() }).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    // Server streaming: counted when the stream ends, with its status.
    let scanned: Vec<Entry> = writer
        .scan(Key { key: "a".into() })
        .await
        .unwrap()
        .into_inner()
        .map(Result::unwrap)
        .collect()
        .await;
    assert_eq!(scanned.len(), 2);
    // Client streaming.
    let loaded = writer
        .load(tokio_stream::iter(vec![entry("c", b"3")]))
        .await
        .unwrap();
    assert_eq!(loaded.into_inner().loaded, 1);

    let x = server.scrape().await;
    assert_eq!(handled(&x, "Put", "OK"), 2.0);
    assert_eq!(handled(&x, "Get", "NOT_FOUND"), 1.0);
    assert_eq!(handled(&x, "Get", "PERMISSION_DENIED"), 1.0);
    assert_eq!(handled(&x, "Scan", "OK"), 1.0);
    assert_eq!(handled(&x, "Load", "OK"), 1.0);
    let scan = x
        .find("grpc_server_handled_total", &[("grpc_method", "Scan")])
        .next()
        .unwrap();
    assert_eq!(scan.labels["grpc_type"], "server_stream");
    assert_eq!(
        x.sum(
            "grpc_server_started_total",
            &[("grpc_service", STORE), ("grpc_method", "Get")]
        ),
        2.0
    );
    // One latency observation per RPC, bucketed.
    assert_eq!(x.types["grpc_server_handling_seconds"], "histogram");
    assert_eq!(
        x.sum(
            "grpc_server_handling_seconds_count",
            &[("grpc_service", STORE), ("grpc_method", "Put")]
        ),
        2.0
    );
    let le_inf = x.sum(
        "grpc_server_handling_seconds_bucket",
        &[("grpc_method", "Get"), ("le", "+Inf")],
    );
    assert_eq!(le_inf, 2.0);
}

#[tokio::test]
async fn a_stream_the_client_abandons_is_counted_as_cancelled() {
    let pki = TestPki::new();
    let server = spawn_server(&pki, POLICY).await;
    let mut writer = StoreClient::new(server.connect(&pki.client("writer")).await.unwrap());
    // 6 MiB to scan: more than the client's HTTP/2 stream window (hyper's
    // default, 2 MiB) plus the server's send buffer, so the server is still
    // sending when the client walks away.
    let entries: Vec<Entry> = (0..1536)
        .map(|i| entry(&format!("k{i:04}"), &[0; 4096]))
        .collect();
    writer.load(tokio_stream::iter(entries)).await.unwrap();
    let mut stream = writer
        .scan(Key { key: "k".into() })
        .await
        .unwrap()
        .into_inner();
    stream.message().await.unwrap();
    drop(stream);
    let x = eventually(&server, "cancelled Scan", |x| {
        handled(x, "Scan", "CANCELLED") == 1.0
    })
    .await;
    assert_eq!(handled(&x, "Scan", "OK"), 0.0);
    // Timed to its end, like any other RPC.
    assert_eq!(
        x.sum(
            "grpc_server_handling_seconds_count",
            &[("grpc_method", "Scan")]
        ),
        1.0
    );
}

#[tokio::test]
async fn made_up_methods_are_counted_as_unknown_so_labels_stay_bounded() {
    let pki = TestPki::new();
    let policy = r#"{"name": "p", "allow_rules": [{"name": "all"}]}"#;
    let server = spawn_server(&pki, policy).await;
    let channel = server.connect(&pki.client("admin")).await.unwrap();
    for path in ["/kittest.v1.Store/Nope", "/made.up.v1.Svc/Thing"] {
        let status = call_path(channel.clone(), path).await;
        assert_eq!(status.code(), Code::Unimplemented);
    }
    let x = server.scrape().await;
    assert_eq!(
        x.sum(
            "grpc_server_handled_total",
            &[
                ("grpc_service", "unknown"),
                ("grpc_method", "unknown"),
                ("grpc_code", "UNIMPLEMENTED")
            ]
        ),
        2.0
    );
    let names: Vec<_> = x.samples.iter().flat_map(|s| s.labels.values()).collect();
    assert!(!names
        .iter()
        .any(|v| v.contains("Nope") || v.contains("made.up")));
}

#[tokio::test]
async fn authorization_decisions_are_counted_by_policy_decision_and_rule() {
    let pki = TestPki::new();
    let server = spawn_server(&pki, POLICY).await;
    let mut reader = StoreClient::new(server.connect(&pki.client("reader")).await.unwrap());
    let mut outsider = StoreClient::new(server.connect(&pki.client("outsider")).await.unwrap());
    let _ = reader.get(Key { key: "a".into() }).await;
    let _ = reader.get(Key { key: "a".into() }).await;
    let _ = reader.put(entry("a", b"1")).await.unwrap_err();
    let _ = outsider.get(Key { key: "a".into() }).await.unwrap_err();

    let x = server.scrape().await;
    let decisions = |decision: &str, rule: &str| {
        x.sum(
            "mtls_authz_decisions_total",
            &[
                ("policy", "kit-test"),
                ("decision", decision),
                ("rule", rule),
            ],
        )
    };
    assert_eq!(decisions("allow", "readers-read"), 2.0);
    assert_eq!(decisions("deny", ""), 1.0, "no allow rule matched");
    assert_eq!(decisions("deny", "outsiders-get-nothing"), 1.0);
    // The peer is never a label: identities are unbounded.
    assert!(x
        .samples
        .iter()
        .flat_map(|s| s.labels.values())
        .all(|v| !v.contains("spiffe://")));

    // Dry run: the same denial is a would-deny.
    let dry = spawn_server_opts(&pki, POLICY, Limits::default(), true).await;
    let mut reader = StoreClient::new(dry.connect(&pki.client("reader")).await.unwrap());
    reader.put(entry("a", b"1")).await.unwrap();
    let x = dry.scrape().await;
    assert_eq!(
        x.sum(
            "mtls_authz_decisions_total",
            &[("decision", "would-deny"), ("rule", "")]
        ),
        1.0
    );
}

/// Makes a handshake the server refuses, and waits for its verdict (in TLS
/// 1.3 it arrives after the client's flight).
async fn refused_handshake(server: &TestServer, config: Arc<rustls::ClientConfig>) {
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    if let Ok(mut tls) = TlsConnector::from(config)
        .connect(tls::server_name("localhost").unwrap(), tcp)
        .await
    {
        let read = tokio::io::AsyncReadExt::read(&mut tls, &mut [0u8; 16]).await;
        assert!(!matches!(read, Ok(n) if n > 0), "the server answered");
    }
}

/// A client that trusts the server but presents no certificate.
fn anonymous_config(pki: &TestPki) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca.cert_der().clone()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

#[tokio::test]
async fn handshakes_are_counted_by_outcome_and_reason_and_open_connections_gauged() {
    let pki = TestPki::new();
    let limits = Limits {
        handshake_timeout: Duration::from_millis(200),
        ..Limits::default()
    };
    let server = spawn_server_with(&pki, POLICY, limits).await;
    let channel = server.connect(&pki.client("reader")).await.unwrap();
    StoreClient::new(channel.clone())
        .get(Key { key: "a".into() })
        .await
        .unwrap_err();
    let x = eventually(&server, "one open connection", |x| {
        x.sum("mtls_connections_open", &[]) == 1.0
    })
    .await;
    assert_eq!(
        x.sum(
            "mtls_tls_handshakes_total",
            &[("outcome", "ok"), ("reason", "ok")]
        ),
        1.0
    );

    // Refused client certificates, each with its reason.
    let other = CertificateAuthority::new("another CA", 1).unwrap();
    let now = time::OffsetDateTime::now_utc();
    let admin = || LeafSpec::dev_client("example.org", "admin");
    let refused = [
        (other.issue(&admin()).unwrap(), "unknown_ca"),
        (
            pki.ca
                .issue(&admin().valid_between(
                    now - time::Duration::days(10),
                    now - time::Duration::days(1),
                ))
                .unwrap(),
            "expired",
        ),
        (
            pki.ca.issue(&admin().usage(Usage::Server)).unwrap(),
            "bad_eku",
        ),
    ];
    for (cert, _) in &refused {
        let identity =
            CertifiedKeyFiles::in_memory(vec![cert.cert_der.clone()], cert.key_der(), "c");
        let config =
            tls::client_config(&identity, &pki.anchors(), ClientTlsOptions::default()).unwrap();
        refused_handshake(&server, config).await;
    }
    refused_handshake(&server, anonymous_config(&pki)).await;
    // A client that connects and never starts the handshake.
    let idle = TcpStream::connect(server.addr).await.unwrap();
    let x = eventually(&server, "refused and timed-out handshakes", |x| {
        [
            "unknown_ca",
            "expired",
            "bad_eku",
            "no_certificate",
            "timeout",
        ]
        .iter()
        .all(|reason| x.sum("mtls_tls_handshakes_total", &[("reason", reason)]) == 1.0)
    })
    .await;
    assert_eq!(
        x.sum("mtls_tls_handshakes_total", &[("outcome", "failed")]),
        5.0
    );
    drop(idle);

    // The gauge falls when the connection closes.
    drop(channel);
    eventually(&server, "no open connection", |x| {
        x.sum("mtls_connections_open", &[]) == 0.0
    })
    .await;
}

#[tokio::test]
async fn certificate_lifetimes_reloads_and_the_policy_in_force_are_exposed() {
    let pki = TestPki::new();
    let policy_v1 = r#"{"name": "first", "allow_rules": [{"name": "all"}]}"#;
    let fs = spawn_file_server(&pki, policy_v1, Limits::default(), None).await;
    let server = &fs.server;
    let paths = fs.paths();
    // What the server process wires into its file watcher.
    let reload = reload_and_record(fs.reloader.clone(), server.metrics.clone());

    let x = server.scrape().await;
    let (_, leaf) = x509_parser::parse_x509_certificate(&pki.server.cert_der).unwrap();
    let not_after = leaf.validity().not_after.timestamp() as f64;
    assert_eq!(
        x.sum("mtls_server_certificate_not_after_timestamp_seconds", &[]),
        not_after
    );
    let ca = x
        .find(
            "mtls_client_ca_not_after_timestamp_seconds",
            &[("index", "0")],
        )
        .next()
        .unwrap();
    assert_eq!(ca.labels["subject"], "CN=test CA,O=mtls-kit dev");
    let crl = x
        .find("mtls_crl_next_update_timestamp_seconds", &[])
        .next()
        .unwrap();
    assert_eq!(crl.labels["crl"], paths.crl.display().to_string());
    // The CRL (1 day) is the soonest; the gauge counts down to it.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let soonest = x.sum("mtls_certificates_soonest_expiry_seconds", &[]);
    assert!((soonest - (crl.value - now)).abs() < 5.0, "{soonest}");
    assert!(crl.value < not_after);
    assert_eq!(
        x.sum(
            "mtls_policy_in_force",
            &[
                ("name", "first"),
                ("sha256", &sha256_prefix(policy_v1.as_bytes()))
            ]
        ),
        1.0
    );
    assert!(
        x.sum(
            "mtls_config_last_applied_timestamp_seconds",
            &[("group", "tls")]
        ) > 0.0
    );

    // A new policy is applied; the old one's series goes.
    let policy_v2 = r#"{"name": "second", "allow_rules": [{"name": "all"}]}"#;
    fs.replace(&paths.policy, policy_v2.as_bytes());
    reload();
    // A broken one is refused.
    fs.replace(&paths.policy, b"{ not json");
    reload();
    // A rotated server certificate.
    let now = time::OffsetDateTime::now_utc();
    let rotated = pki
        .ca
        .issue(
            &LeafSpec::server("test server", &["localhost"]).valid_between(
                now - time::Duration::hours(1),
                now + time::Duration::days(3),
            ),
        )
        .unwrap();
    fs.replace(&paths.key, rotated.key_pem().as_bytes());
    fs.replace(&paths.cert, rotated.cert_pem.as_bytes());
    let outcome = fs.reloader.reload();
    record(&server.metrics, &fs.reloader, &outcome);

    let x = server.scrape().await;
    let reloads = |group: &str, outcome: &str| {
        x.sum(
            "mtls_config_reloads_total",
            &[("group", group), ("outcome", outcome)],
        )
    };
    assert_eq!(reloads("policy", "applied"), 1.0);
    assert_eq!(reloads("policy", "refused"), 1.0);
    assert_eq!(reloads("tls", "applied"), 1.0);
    assert_eq!(x.find("mtls_policy_in_force", &[]).count(), 1);
    assert_eq!(
        x.sum(
            "mtls_policy_in_force",
            &[
                ("name", "second"),
                ("sha256", &sha256_prefix(policy_v2.as_bytes()))
            ]
        ),
        1.0
    );
    let (_, leaf) = x509_parser::parse_x509_certificate(&rotated.cert_der).unwrap();
    assert_eq!(
        x.sum("mtls_server_certificate_not_after_timestamp_seconds", &[]),
        leaf.validity().not_after.timestamp() as f64
    );
}

#[tokio::test]
async fn a_service_registers_its_own_metrics_in_the_same_registry() {
    let pki = TestPki::new();
    let store = crate::store::TestStore::default();
    let services = store.services(&Limits::default());
    let writes = Counter::<u64>::default();
    services
        .metrics()
        .register("kittest_writes", "Writes seen by the test", writes.clone());
    let server = mtls_kit::testing::TestServer::spawn(&pki, POLICY, services).await;
    writes.inc_by(3);
    let x = server.scrape().await;
    assert_eq!(x.sum("kittest_writes_total", &[]), 3.0);
    assert_eq!(x.types["kittest_writes_total"], "counter");
}

#[tokio::test]
async fn the_endpoint_speaks_openmetrics_when_asked_and_only_serves_metrics() {
    let pki = TestPki::new();
    let server = spawn_server(&pki, POLICY).await;
    let (status, content_type, body) = scrape::get(
        server.metrics_addr,
        "/metrics",
        Some("application/openmetrics-text;version=1.0.0,text/plain;q=0.5"),
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");
    let (status, content_type, _) = scrape::get(server.metrics_addr, "/metrics", None).await;
    assert_eq!(status, 200);
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let (status, _, _) = scrape::get(server.metrics_addr, "/", None).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn metrics_turned_off_record_and_expose_nothing() {
    let pki = TestPki::new();
    let store = crate::store::TestStore::default();
    let mut services = store.services(&Limits::default());
    services.set_metrics(mtls_kit::metrics::Metrics::disabled());
    let server = mtls_kit::testing::TestServer::spawn(&pki, POLICY, services).await;
    let mut reader = StoreClient::new(server.connect(&pki.client("reader")).await.unwrap());
    let _ = reader.get(Key { key: "a".into() }).await;
    assert!(server.scrape().await.samples.is_empty());
}

#[tokio::test]
async fn each_rpc_is_a_span_with_method_peer_decision_and_status() {
    let (logs, _guard) = LogCapture::start();
    let pki = TestPki::new();
    let server = spawn_server(&pki, POLICY).await;
    let mut reader = StoreClient::new(server.connect(&pki.client("reader")).await.unwrap());
    let _ = reader.get(Key { key: "a".into() }).await;
    let _ = reader.put(entry("a", b"1")).await;

    let finished = logs.matching(&[("message", "RPC finished")]);
    assert_eq!(finished.len(), 2, "{:#?}", logs.events());
    let spans: Vec<_> = finished.iter().map(|e| e["span"].clone()).collect();
    for span in &spans {
        assert_eq!(span["name"], "grpc.request");
        assert_eq!(span["peer"], "spiffe://example.org/reader");
    }
    assert_eq!(spans[0]["method"], "/kittest.v1.Store/Get");
    assert_eq!(spans[0]["decision"], "allow");
    assert_eq!(spans[0]["rule"], "readers-read");
    assert_eq!(spans[0]["grpc.status"], "NOT_FOUND");
    assert_eq!(spans[1]["method"], "/kittest.v1.Store/Put");
    assert_eq!(spans[1]["decision"], "deny");
    assert_eq!(spans[1]["grpc.status"], "PERMISSION_DENIED");
    // The denial's own log line is inside the same span.
    let denied = logs.matching(&[("decision", "deny")]);
    assert_eq!(denied[0]["span"]["method"], "/kittest.v1.Store/Put");
}
