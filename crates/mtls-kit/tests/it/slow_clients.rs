//! Slow clients cannot starve new ones: with thousands of connections that
//! send nothing, or trickle a ClientHello one byte a second, and more
//! arriving all the time, a real client still connects and completes its
//! first call, long before any slow connection's deadline could have freed
//! a slot. All on 127.0.0.1, bounded in count and time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mtls_kit::server::Limits;
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use crate::helpers::{spawn_server_with, TestPki, POLICY};
use crate::store::{entry, StoreClient};

/// The handshake deadlines in this test: what a starved client would wait.
const STARVED: Duration = Duration::from_secs(600);
/// How long the real client is given: far less than [`STARVED`], far more
/// than a loaded machine needs.
const GUARD: Duration = Duration::from_secs(60);
/// Idle and trickling connections held open during the attack.
const SLOW: usize = 2000;
/// Of the connections that keep arriving, the newest this many stay open.
const ARRIVING_HELD: usize = 500;

/// How many slow connections fit this process's open-file limit. Client
/// and server share the process: the attack holds `SLOW + ARRIVING_HELD`
/// client sockets, the server at most its pending limit (512) plus a few.
/// Where the soft limit is lower than that (often 1,024), the attack is
/// scaled down to fit rather than the limit raised (which would need
/// `unsafe` or a new dependency for `setrlimit`).
fn slow_connections() -> usize {
    let soft_limit = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| {
            let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
            line.split_whitespace().nth(3)?.parse::<usize>().ok()
        })
        .unwrap_or(1024);
    let spare = soft_limit.saturating_sub(ARRIVING_HELD + 512 + 200);
    if spare < SLOW {
        println!("open-file limit {soft_limit}: scaling the attack to {spare} slow connections");
    }
    SLOW.min(spare)
}

/// The first bytes of a TLS record carrying a large ClientHello, sent one
/// a second.
const TRICKLE: &[u8] = &[
    0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
];

/// Opens `n` connections, `batch` at a time; connections the kernel does
/// not complete within a second are left out.
async fn open(addr: SocketAddr, n: usize, batch: usize) -> Vec<TcpStream> {
    let mut open = Vec::with_capacity(n);
    for start in (0..n).step_by(batch) {
        let tries = (start..n.min(start + batch)).map(|_| async {
            tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr)).await
        });
        for conn in futures_util::future::join_all(tries).await {
            if let Ok(Ok(conn)) = conn {
                open.push(conn);
            }
        }
    }
    open
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_client_is_served_promptly_while_slow_clients_hold_connections() {
    let pki = TestPki::new();
    // Deadlines far longer than the test: a slow connection never gives
    // up its slot by timing out, so the real client can only be served if
    // the server makes room for it. No latency is asserted: a starved
    // client would wait for the deadlines (minutes), a served one does not.
    let limits = Limits {
        client_hello_timeout: STARVED,
        handshake_timeout: STARVED,
        ..Limits::default()
    };
    let server = spawn_server_with(&pki, POLICY, limits).await;
    let addr = server.addr;
    let attack_started = Instant::now();
    let slow = slow_connections();

    // Half of them send nothing; the other half trickle a ClientHello.
    let idle = open(addr, slow / 2, 100).await;
    let trickling = Arc::new(Mutex::new(open(addr, slow / 2, 100).await));
    let opened = idle.len() + trickling.lock().await.len();
    let trickle = {
        let trickling = trickling.clone();
        tokio::spawn(async move {
            for byte in TRICKLE.iter().cycle() {
                for conn in trickling.lock().await.iter() {
                    let _ = conn.try_write(&[*byte]);
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };
    // And more keep arriving, 100 every 50 ms.
    let arriving = tokio::spawn(async move {
        let mut held = std::collections::VecDeque::new();
        loop {
            held.extend(open(addr, 100, 100).await);
            while held.len() > ARRIVING_HELD {
                held.pop_front();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    println!(
        "{opened} slow connections opened in {:?}",
        attack_started.elapsed()
    );

    // A real client, three times over the attack, while slow connections
    // keep arriving.
    let mut timings = Vec::new();
    for round in 0..3 {
        let started = Instant::now();
        let first_call = async {
            let channel = server.connect(&pki.client("writer")).await?;
            StoreClient::new(channel)
                .put(entry("legit", b"v"))
                .await
                .map_err(|s| Box::new(s) as Box<dyn std::error::Error>)?;
            Ok::<_, Box<dyn std::error::Error>>(())
        };
        let result = tokio::time::timeout(GUARD, first_call).await;
        let took = started.elapsed();
        println!("round {round}: first call after {took:?}: {result:?}");
        timings.push((took, result.map(|r| r.map_err(|e| e.to_string()))));
        if round < 2 {
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
    }
    arriving.abort();
    trickle.abort();
    drop(idle);
    assert!(
        opened >= SLOW * 9 / 10,
        "only {opened} slow connections opened"
    );
    for (_, result) in &timings {
        assert!(matches!(result, Ok(Ok(()))), "{timings:?}");
    }
}
