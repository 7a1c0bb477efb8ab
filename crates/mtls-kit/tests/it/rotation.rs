//! Rotation under continuous traffic: server certificates, the client CA
//! bundle (adding a second CA, then removing the first) and the policy are
//! replaced several times while several clients keep calling. No RPC may
//! fail except those the new configuration is meant to refuse.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::store::StoreClient;
use crate::store::{entry, Key};
use mtls_kit::pki::{CertificateAuthority, IssuedCert, LeafSpec};
use mtls_kit::reload::WatchSettings;
use mtls_kit::server::Limits;
use tokio::sync::watch;
use tonic::Code;

use crate::helpers::{presented_cert, spawn_file_server, FileServer, TestPki};

fn policy(name: &str) -> String {
    format!(
        r#"{{"name": "{name}",
            "deny_rules": [{{"name": "never-used-{name}", "source": {{"principals": ["spiffe://example.org/blocked"]}}}}],
            "allow_rules": [{{"name": "workers", "source": {{"principals": ["spiffe://example.org/worker-*"]}}}}]}}"#
    )
}

#[derive(Default)]
struct Counts {
    sent: AtomicU64,
    failed_unexpectedly: AtomicU64,
    failed_as_intended: AtomicU64,
}

/// One client: a fresh connection (so a fresh handshake) every 10 RPCs,
/// alternating writes and reads. Failures count as intended only when
/// `refused` says this client's CA has been removed.
async fn worker(
    fs: Arc<FileServer>,
    cert: IssuedCert,
    counts: Arc<Counts>,
    progress: watch::Sender<u64>,
    refused: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    failures: Arc<std::sync::Mutex<Vec<String>>>,
) {
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let result = async {
            let channel = fs.server.connect(&cert).await.map_err(|e| e.to_string())?;
            let mut client = StoreClient::new(channel);
            for _ in 0..10 {
                n += 1;
                let key = format!("{}-{}", cert.cert_der.len(), n % 7);
                counts.sent.fetch_add(1, Ordering::SeqCst);
                let outcome = if n % 2 == 0 {
                    client.put(entry(&key, &n.to_be_bytes())).await.map(|_| ())
                } else {
                    match client.get(Key { key }).await {
                        Err(s) if s.code() == Code::NotFound => Ok(()),
                        other => other.map(|_| ()),
                    }
                };
                progress.send_modify(|p| *p += 1);
                outcome.map_err(|s| format!("{s:?}"))?;
            }
            Ok::<_, String>(())
        }
        .await;
        if let Err(e) = result {
            if refused.load(Ordering::SeqCst) {
                counts.failed_as_intended.fetch_add(1, Ordering::SeqCst);
                // Refused for good: this client is done.
                return;
            }
            counts.failed_unexpectedly.fetch_add(1, Ordering::SeqCst);
            failures.lock().unwrap().push(e);
        }
    }
}

/// Lets traffic run until `rpcs` more RPCs have been made.
async fn let_traffic_run(progress: &mut watch::Receiver<u64>, rpcs: u64) {
    let start = *progress.borrow_and_update();
    tokio::time::timeout(
        Duration::from_secs(60),
        progress.wait_for(|&p| p >= start + rpcs),
    )
    .await
    .expect("traffic stalled")
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_everything_under_traffic_fails_no_rpc_it_should_not() {
    let pki = TestPki::new();
    let ca_two = CertificateAuthority::new("second test CA", 1).unwrap();
    let settings = WatchSettings {
        file_events: true,
        poll_interval: Some(Duration::from_millis(200)),
        sighup: false,
    };
    let fs =
        Arc::new(spawn_file_server(&pki, &policy("v0"), Limits::default(), Some(settings)).await);
    let paths = fs.paths();

    let counts = Arc::new(Counts::default());
    let (progress_tx, mut progress) = watch::channel(0u64);
    let stop = Arc::new(AtomicBool::new(false));
    let ca_one_removed = Arc::new(AtomicBool::new(false));
    let never = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut workers = Vec::new();
    let spawn = |cert: IssuedCert, refused: Arc<AtomicBool>| {
        tokio::spawn(worker(
            fs.clone(),
            cert,
            counts.clone(),
            progress_tx.clone(),
            refused,
            stop.clone(),
            failures.clone(),
        ))
    };
    for i in 0..3 {
        workers.push(spawn(
            pki.client(&format!("worker-{i}")),
            ca_one_removed.clone(),
        ));
    }
    let_traffic_run(&mut progress, 100).await;

    // 1. Rotate the server certificate three times.
    let observer = pki.client("worker-observer");
    for round in 0..3 {
        let next = pki
            .ca
            .issue(&LeafSpec::server(
                &format!("server-{round}"),
                &["localhost"],
            ))
            .unwrap();
        fs.replace(&paths.key, next.key_pem().as_bytes());
        fs.replace(&paths.cert, next.cert_pem.as_bytes());
        fs.wait_in_force(&paths.cert, next.cert_pem.as_bytes())
            .await;
        fs.wait_in_force(&paths.key, next.key_pem().as_bytes())
            .await;
        assert_eq!(
            presented_cert(fs.server.addr, &observer, &pki.anchors()).await,
            next.cert_der.to_vec(),
            "round {round}: a new handshake did not see the new certificate"
        );
        let_traffic_run(&mut progress, 100).await;
    }

    // 2. Add a second CA to the bundle; its clients join.
    let bundle = format!("{}{}", pki.ca.cert_pem(), ca_two.cert_pem());
    fs.replace(&paths.client_ca, bundle.as_bytes());
    fs.wait_in_force(&paths.client_ca, bundle.as_bytes()).await;
    for i in 3..5 {
        let cert = ca_two
            .issue(&LeafSpec::dev_client("example.org", &format!("worker-{i}")))
            .unwrap();
        workers.push(spawn(cert, never.clone()));
    }
    let_traffic_run(&mut progress, 200).await;

    // 3. Replace the policy three times.
    for version in ["v1", "v2", "v3"] {
        let next = policy(version);
        fs.replace(&paths.policy, next.as_bytes());
        fs.wait_in_force(&paths.policy, next.as_bytes()).await;
        assert_eq!(fs.server_policy_name(), version);
        let_traffic_run(&mut progress, 100).await;
    }

    // 4. Remove the first CA: its clients are meant to be refused from their
    // next handshake on; the second CA's clients must not notice.
    ca_one_removed.store(true, Ordering::SeqCst);
    fs.replace(&paths.client_ca, ca_two.cert_pem().as_bytes());
    fs.wait_in_force(&paths.client_ca, ca_two.cert_pem().as_bytes())
        .await;
    let_traffic_run(&mut progress, 300).await;

    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }
    let sent = counts.sent.load(Ordering::SeqCst);
    let unexpected = counts.failed_unexpectedly.load(Ordering::SeqCst);
    let intended = counts.failed_as_intended.load(Ordering::SeqCst);
    println!("rotation test: {sent} RPCs sent, {unexpected} failed unexpectedly, {intended} refused as intended");
    assert_eq!(unexpected, 0, "failures: {:#?}", failures.lock().unwrap());
    assert_eq!(
        intended, 3,
        "each first-CA client is refused once its CA is gone"
    );
    assert!(sent >= 1000, "{sent}");
}
