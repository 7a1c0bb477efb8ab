//! What one caller can hold: the limits file (rates and calls in flight per
//! identity, refused with RESOURCE_EXHAUSTED and `grpc-retry-pushback-ms`),
//! its reload, dry run and bounded memory, and the fair share every
//! identity gets by default. Called with the template's tonic client, as
//! named identities; readiness is awaited (the store's handler count),
//! never slept for.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mtls_kit::policy::PathCheck;
use mtls_kit::reload::{GroupOutcome, ServerReloader, ServerSources};
use mtls_kit::server::{Limits, ServerParts};
use mtls_kit::testing;
use mtls_kit::tls::ServerTlsOptions;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status};

use crate::deadline::{call_and_wait, EMPTY_MESSAGE};
use crate::helpers::{TestPki, POLICY};
use crate::store::{entry, Entry, Key, StoreClient, TestStore};

/// A failure guard, not a wait for readiness.
const GUARD: Duration = Duration::from_secs(20);

struct LimitedServer {
    server: testing::TestServer,
    store: TestStore,
    reloader: Arc<ServerReloader>,
    limits: PathBuf,
    _dir: tempfile::TempDir,
}

impl LimitedServer {
    async fn start(pki: &TestPki, limits_json: &str) -> Self {
        let dir = server_files(pki, limits_json);
        let d = dir.path();
        let loaded = ServerReloader::load(sources(d)).unwrap_or_else(|e| panic!("{e:#?}"));
        let store = TestStore::default();
        let limits = Limits::default();
        let parts = ServerParts {
            tls: loaded.tls.clone(),
            policy: loaded.policy.clone(),
            limits,
            dry_run: false,
            quota: loaded.limiter.clone(),
        };
        let server =
            testing::TestServer::start(parts, store.services(&limits), pki.anchors()).await;
        Self {
            server,
            store,
            reloader: loaded.reloader,
            limits: d.join("limits.json"),
            _dir: dir,
        }
    }

    async fn client(&self, pki: &TestPki, name: &str) -> StoreClient<tonic::transport::Channel> {
        StoreClient::new(self.server.connect(&pki.client(name)).await.unwrap())
    }

    /// Rewrites the limits file and reloads it.
    fn reload_with(&self, limits_json: &str) -> GroupOutcome {
        std::fs::write(&self.limits, limits_json).unwrap();
        self.reloader.reload_all().limits
    }

    async fn limited(&self, limit: &str, reason: &str, mode: &str) -> f64 {
        self.server.scrape().await.sum(
            "mtls_limited_calls_total",
            &[("limit", limit), ("reason", reason), ("mode", mode)],
        )
    }

    /// Waits until the store's handlers have been entered `n` times.
    async fn handlers_entered(&self, n: u64) {
        let mut calls = self.store.watch_handler_calls();
        tokio::time::timeout(GUARD, calls.wait_for(|c| *c >= n))
            .await
            .expect("the handler was not entered")
            .unwrap();
    }
}

/// The server's certificate, key, CA, the tests' policy and `limits_json`
/// in a new directory.
fn server_files(pki: &TestPki, limits_json: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("server.pem"), &pki.server.cert_pem).unwrap();
    std::fs::write(d.join("server.key"), pki.server.key_pem()).unwrap();
    std::fs::write(d.join("ca.pem"), pki.ca.cert_pem()).unwrap();
    std::fs::write(d.join("policy.json"), POLICY).unwrap();
    std::fs::write(d.join("limits.json"), limits_json).unwrap();
    dir
}

fn sources(d: &std::path::Path) -> ServerSources {
    ServerSources {
        cert: d.join("server.pem"),
        key: d.join("server.key"),
        client_ca: d.join("ca.pem"),
        crls: vec![],
        policy: d.join("policy.json"),
        limits: Some(d.join("limits.json")),
        policy_check: PathCheck::default(),
        tls: ServerTlsOptions::default(),
    }
}

/// The pushback a refusal carries, in milliseconds.
fn pushback_ms(status: &Status) -> u64 {
    status
        .metadata()
        .get("grpc-retry-pushback-ms")
        .unwrap_or_else(|| panic!("no pushback on {status:?}"))
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

async fn put(
    client: &mut StoreClient<tonic::transport::Channel>,
    key: &str,
) -> Result<Entry, Status> {
    client.put(entry(key, b"v")).await.map(|r| r.into_inner())
}

/// A client-streaming Load kept open until the sender is dropped.
fn open_load(
    mut client: StoreClient<tonic::transport::Channel>,
    key: &str,
) -> (
    mpsc::Sender<Entry>,
    tokio::task::JoinHandle<Result<u64, Status>>,
) {
    let (tx, rx) = mpsc::channel(4);
    tx.try_send(entry(key, b"v")).unwrap();
    let call = tokio::spawn(async move {
        client
            .load(ReceiverStream::new(rx))
            .await
            .map(|r| r.into_inner().loaded)
    });
    (tx, call)
}

const WRITER_PUTS: &str = r#"{"limits": [
  {"name": "writer-puts", "principal": "spiffe://example.org/writer",
   "method": "/kittest.v1.Store/Put", "rate": {"per_second": 0.01, "burst": 2}}
]}"#;

#[tokio::test]
async fn a_rate_is_per_identity_and_refusals_carry_a_pushback() {
    let pki = TestPki::new();
    let s = LimitedServer::start(&pki, WRITER_PUTS).await;
    let mut writer = s.client(&pki, "writer").await;
    put(&mut writer, "a").await.unwrap();
    put(&mut writer, "b").await.unwrap();
    let refused = put(&mut writer, "c").await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("writer-puts"), "{refused:?}");
    // One call per 100 s: the next fits in at most 100 s, and not at once.
    let ms = pushback_ms(&refused);
    assert!((1..=100_000).contains(&ms), "{ms}");
    // The refused call never reached the handler.
    assert_eq!(s.store.handler_calls(), 2);
    // Another method of the same identity, and another identity, are not
    // under this limit.
    writer.get(Key { key: "a".into() }).await.unwrap();
    let mut admin = s.client(&pki, "admin").await;
    put(&mut admin, "d").await.unwrap();
    assert_eq!(s.limited("writer-puts", "rate", "enforce").await, 1.0);
}

#[tokio::test]
async fn calls_in_flight_over_a_limit_are_refused_and_given_back_when_they_end() {
    let pki = TestPki::new();
    let s = LimitedServer::start(
        &pki,
        r#"{"pushback_ms": 250, "limits": [
          {"name": "one-load", "principal": "spiffe://example.org/*",
           "method": "/kittest.v1.Store/Load", "max_in_flight": 1}]}"#,
    )
    .await;
    let (open, first) = open_load(s.client(&pki, "writer").await, "a");
    s.handlers_entered(1).await;
    let (_second_open, second) = open_load(s.client(&pki, "writer").await, "b");
    let refused = tokio::time::timeout(GUARD, second)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(pushback_ms(&refused), 250);
    // Per identity: admin has its own one.
    let (admin_open, admin) = open_load(s.client(&pki, "admin").await, "c");
    drop(admin_open);
    assert_eq!(
        tokio::time::timeout(GUARD, admin)
            .await
            .unwrap()
            .unwrap()
            .unwrap(),
        1
    );
    // The first call ends, and gives its place back.
    drop(open);
    assert_eq!(
        tokio::time::timeout(GUARD, first)
            .await
            .unwrap()
            .unwrap()
            .unwrap(),
        1
    );
    let (again_open, again) = open_load(s.client(&pki, "writer").await, "d");
    drop(again_open);
    assert_eq!(
        tokio::time::timeout(GUARD, again)
            .await
            .unwrap()
            .unwrap()
            .unwrap(),
        1
    );
    assert_eq!(s.limited("one-load", "in_flight", "enforce").await, 1.0);
}

#[tokio::test]
async fn over_its_fair_share_a_call_waits_and_other_identities_do_not() {
    let pki = TestPki::new();
    let s =
        LimitedServer::start(&pki, r#"{"fair_share": {"max_in_flight_per_identity": 1}}"#).await;
    let (open, first) = open_load(s.client(&pki, "writer").await, "a");
    s.handlers_entered(1).await;
    // The writer's second call waits for its share...
    let mut writer = s.client(&pki, "writer").await;
    let waiting = tokio::spawn(async move { put(&mut writer, "b").await });
    // ... while another identity's call runs at once.
    let mut admin = s.client(&pki, "admin").await;
    put(&mut admin, "c").await.unwrap();
    assert_eq!(s.store.handler_calls(), 2, "the waiting call ran");
    assert!(!waiting.is_finished());
    drop(open);
    tokio::time::timeout(GUARD, first)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let done = tokio::time::timeout(GUARD, waiting).await.unwrap().unwrap();
    assert_eq!(
        done.unwrap().key,
        "b",
        "the waiting call ran once the first ended"
    );
    let scraped = s.server.scrape().await;
    assert_eq!(scraped.sum("mtls_fair_share_waits_total", &[]), 1.0);
    assert_eq!(scraped.sum("mtls_limited_calls_total", &[]), 0.0);
}

#[tokio::test]
async fn a_wait_for_the_share_ends_at_its_limit_or_at_the_deadline() {
    let pki = TestPki::new();
    let s = LimitedServer::start(
        &pki,
        r#"{"fair_share": {"max_in_flight_per_identity": 1, "max_wait_ms": 100}, "pushback_ms": 40}"#,
    )
    .await;
    let (open, first) = open_load(s.client(&pki, "writer").await, "a");
    s.handlers_entered(1).await;
    let mut writer = s.client(&pki, "writer").await;
    let refused = put(&mut writer, "b").await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(pushback_ms(&refused), 40);
    assert_eq!(s.limited("fair_share", "wait", "enforce").await, 1.0);

    // A deadline shorter than the wait ends the call first, from the
    // server (a bare HTTP/2 client: tonic's would give up on its own).
    s.reload_with(r#"{"fair_share": {"max_in_flight_per_identity": 1, "max_wait_ms": 600000}}"#);
    let (ended, _stream) = tokio::time::timeout(
        GUARD,
        call_and_wait(
            &pki,
            s.server.addr,
            "writer",
            "/kittest.v1.Store/Put",
            "200m",
            &[&EMPTY_MESSAGE],
            true,
        ),
    )
    .await
    .expect("the server did not end the waiting call at its deadline");
    // 4 is DEADLINE_EXCEEDED.
    assert_eq!(ended.status.as_deref(), Some("4"));
    // Neither took the share: once the first call ends, the next runs.
    drop(open);
    tokio::time::timeout(GUARD, first)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    put(&mut writer, "d").await.unwrap();
    assert_eq!(s.store.handler_calls(), 2);
}

#[tokio::test]
async fn limits_reload_and_a_bad_file_keeps_the_last_good_one() {
    let pki = TestPki::new();
    let s = LimitedServer::start(&pki, WRITER_PUTS).await;
    let mut writer = s.client(&pki, "writer").await;
    put(&mut writer, "a").await.unwrap();
    put(&mut writer, "b").await.unwrap();
    assert_eq!(
        put(&mut writer, "c").await.unwrap_err().code(),
        Code::ResourceExhausted
    );

    // An unchanged entry keeps its state across a reload: no fresh burst.
    let same_entry = WRITER_PUTS.replacen('{', r#"{"pushback_ms": 5, "#, 1);
    assert!(matches!(
        s.reload_with(&same_entry),
        GroupOutcome::Applied(_)
    ));
    assert_eq!(
        put(&mut writer, "c").await.unwrap_err().code(),
        Code::ResourceExhausted
    );

    // A file without the entry lifts it.
    assert!(matches!(s.reload_with("{}"), GroupOutcome::Applied(_)));
    put(&mut writer, "c").await.unwrap();

    // A bad file is refused, naming the file, field and line; the last good
    // one (no limit) stays in force.
    let outcome = s.reload_with(
        "{\n  \"limits\": [{\"name\": \"x\", \"principal\": \"*\", \"max_in_flight\": -1}]\n}",
    );
    let GroupOutcome::Refused(e) = outcome else {
        panic!("a bad limits file was applied: {outcome:?}");
    };
    assert!(
        e.contains("limits.json") && e.contains("limits[0].max_in_flight") && e.contains("line 2"),
        "{e}"
    );
    put(&mut writer, "d").await.unwrap();
}

#[tokio::test]
async fn a_bad_limits_file_stops_startup_naming_the_file_and_field() {
    let pki = TestPki::new();
    let dir = server_files(&pki, r#"{"total": {"rate": {"per_second": 0}}}"#);
    let d = dir.path();
    let Err(errors) = ServerReloader::load(sources(d)) else {
        panic!("a bad limits file loaded");
    };
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].contains("limits.json") && errors[0].contains("total.rate.per_second"),
        "{errors:#?}"
    );
}

#[tokio::test]
async fn in_dry_run_calls_over_a_limit_are_counted_and_let_through() {
    let pki = TestPki::new();
    let dry = WRITER_PUTS.replacen('{', r#"{"dry_run": true, "#, 1);
    let s = LimitedServer::start(&pki, &dry).await;
    let mut writer = s.client(&pki, "writer").await;
    for key in ["a", "b", "c", "d"] {
        put(&mut writer, key).await.unwrap();
    }
    assert_eq!(s.limited("writer-puts", "rate", "dry_run").await, 2.0);
    assert_eq!(s.limited("writer-puts", "rate", "enforce").await, 0.0);
}

#[tokio::test]
async fn many_identities_are_tracked_in_bounded_memory_without_fresh_allowances() {
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let pki = TestPki::new();
    let s = LimitedServer::start(
        &pki,
        r#"{"max_tracked_identities": 3, "limits": [
          {"name": "everyone", "principal": "spiffe://example.org/*",
           "method": "/grpc.health.v1.Health/Check", "rate": {"per_second": 0.01, "burst": 1}}]}"#,
    )
    .await;
    let check = |name: String| {
        let cert = pki.client(&name);
        let server = &s.server;
        async move {
            let mut c = HealthClient::new(server.connect(&cert).await.unwrap());
            c.check(HealthCheckRequest::default())
                .await
                .map(|_| ())
                .map_err(|e| e.code())
        }
    };
    // Three identities get a state each: one call, then refused.
    for n in 0..3 {
        assert_eq!(check(format!("known-{n}")).await, Ok(()), "{n}");
        assert_eq!(
            check(format!("known-{n}")).await,
            Err(Code::ResourceExhausted),
            "{n}"
        );
    }
    // The table is full and no bucket has refilled: newcomers share one
    // state, so one call between them.
    let mut answers = Vec::new();
    for n in 0..4 {
        answers.push(check(format!("new-{n}")).await);
    }
    let refused = Err(Code::ResourceExhausted);
    assert_eq!(answers, [Ok(()), refused, refused, refused]);
    // Nobody known was forgotten into a fresh bucket.
    for n in 0..3 {
        assert_eq!(check(format!("known-{n}")).await, refused, "{n}");
    }
    assert_eq!(s.limited("everyone", "rate", "enforce").await, 9.0);
}

#[tokio::test]
async fn the_templates_client_waits_out_the_pushback_and_retries() {
    use mtls_kit::client::retry::{self, Idempotency};
    let pki = TestPki::new();
    let s = LimitedServer::start(
        &pki,
        r#"{"limits": [{"name": "slow-puts", "principal": "*",
            "method": "/kittest.v1.Store/Put", "rate": {"per_second": 0.5, "burst": 1}}]}"#,
    )
    .await;
    let writer = s.client(&pki, "writer").await;
    let attempt = || {
        let mut w = writer.clone();
        async move { put(&mut w, "k").await }
    };
    // Takes the burst; the next call is refused, waits its pushback (up to
    // 2 s), and its retry fits.
    retry::call(Idempotency::NotIdempotent, attempt)
        .await
        .result
        .unwrap();
    let outcome = retry::call(Idempotency::NotIdempotent, attempt).await;
    assert_eq!(outcome.retries, 1);
    outcome.result.unwrap();
    assert_eq!(s.limited("slow-puts", "rate", "enforce").await, 1.0);
    assert_eq!(s.store.handler_calls(), 2);
}
