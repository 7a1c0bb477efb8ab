//! Enforcement: the "authorization interceptor" in front of every service.
//!
//! It is a tower layer over `http::Request`, not a tonic `Interceptor`,
//! because an `Interceptor` only sees a `Request<()>` without the URI, and
//! A43 rules match on the method path (`/package.Service/Method`). As a
//! layer it also covers unary and streaming RPCs alike, and health and
//! reflection too, before any handler or message decoding runs.
//!
//! The layer is thin: it reads the identity tonic attached to the request
//! (see [`crate::conn`]), asks the pure [`Policy::decide`], logs the
//! decision and either forwards the request or answers
//! `PERMISSION_DENIED` itself.

use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use futures_util::future::{ready, Either, Ready};
use tonic::Status;
use tower::{Layer, Service};
use tracing::info;

use crate::conn::PeerInfo;
use crate::policy::{Decision, Policy, RpcRequest};

/// The policy in force. Replacing the inner `Arc` makes the next RPC use
/// the new policy, on every connection.
pub type SharedPolicy = Arc<ArcSwap<Policy>>;

/// The tracing target of audit events (gRFC A59 `stdout_logger`).
pub const AUDIT_TARGET: &str = "audit";

/// Adds [`Authz`] in front of a service.
#[derive(Clone)]
pub struct AuthzLayer {
    policy: SharedPolicy,
    dry_run: bool,
}

impl AuthzLayer {
    /// Enforces `policy`.
    pub fn new(policy: SharedPolicy) -> Self {
        Self {
            policy,
            dry_run: false,
        }
    }

    /// In dry-run mode every decision is made and logged, but a denied RPC
    /// is logged as `would-deny` and let through. Default off.
    pub fn dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }
}

impl<S> Layer<S> for AuthzLayer {
    type Service = Authz<S>;
    fn layer(&self, inner: S) -> Authz<S> {
        Authz {
            inner,
            policy: self.policy.clone(),
            dry_run: self.dry_run,
        }
    }
}

/// See the module docs.
#[derive(Clone)]
pub struct Authz<S> {
    inner: S,
    policy: SharedPolicy,
    dry_run: bool,
}

type HttpResponse = http::Response<tonic::body::Body>;

impl<S, B> Service<http::Request<B>> for Authz<S>
where
    S: Service<http::Request<B>, Response = HttpResponse>,
{
    type Response = HttpResponse;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<HttpResponse, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        // Deny by default: without the connection's verified identity there
        // is nothing to authorize.
        let Some(peer) = req.extensions().get::<PeerInfo>().cloned() else {
            info!(
                method = req.uri().path(),
                "RPC denied: no verified peer identity"
            );
            return Either::Right(ready(Ok(Status::unauthenticated(
                "no verified client certificate",
            )
            .into_http())));
        };

        let policy = self.policy.load();
        let method = req.uri().path();
        let decision = policy.decide(
            &peer.identity,
            &RpcRequest {
                path: method,
                headers: req.headers(),
            },
        );
        log_decision(&policy, &peer, method, &decision, self.dry_run);
        crate::metrics::rpc::decided(req.extensions(), &policy, &decision, self.dry_run);
        if decision.is_allowed() || self.dry_run {
            // Let handlers use tonic's own `Request::peer_certs()` as well.
            req.extensions_mut().insert(peer.tls);
            Either::Left(self.inner.call(req))
        } else {
            // The message says nothing about the policy: a caller learns
            // only that it is not allowed.
            Either::Right(ready(Ok(Status::permission_denied(
                "permission denied by authorization policy",
            )
            .into_http())))
        }
    }
}

/// One event per decision. Denials (and dry-run would-denials) are at INFO,
/// visible by default; allows are DEBUG, unless the policy's audit options
/// ask for them, so that the hot path does not log a line per RPC by
/// default. Audited decisions (gRFC A59) go to the `audit` target.
fn log_decision(
    policy: &Policy,
    peer: &PeerInfo,
    method: &str,
    decision: &Decision<'_>,
    dry_run: bool,
) {
    let audit = policy.audit_condition();
    let rule = decision.rule().unwrap_or("");
    let peer_name = peer.identity.display_name();
    let policy_name = policy.name();
    // Formatted only if the event is enabled: allows are usually filtered out.
    let remote = peer.remote_addr().map(tracing::field::display);
    let reason = match decision {
        Decision::Allow { .. } => "allow rule matched",
        Decision::DenyByRule { .. } => "deny rule matched",
        Decision::DenyMalformed => "malformed binary metadata",
        Decision::DenyNoMatch => "no allow rule matched",
    };
    let (outcome, message) = match (decision.is_allowed(), dry_run) {
        (true, _) => ("allow", "RPC allowed"),
        (false, false) => ("deny", "RPC denied"),
        (false, true) => ("would-deny", "RPC would be denied (dry run: let through)"),
    };
    // tracing needs the target and level at compile time, hence the arms.
    macro_rules! event {
        ($level:ident, $($target:tt)*) => {
            tracing::$level!($($target)* peer = peer_name, method, decision = outcome, rule, reason,
                policy = policy_name, remote, "{message}")
        };
    }
    let audited = if decision.is_allowed() {
        audit.logs_allow()
    } else {
        audit.logs_deny()
    };
    match (audited, decision.is_allowed()) {
        (true, _) => event!(info, target: AUDIT_TARGET,),
        (false, true) => event!(debug,),
        (false, false) => event!(info,),
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::Mutex;
    use std::time::Duration;

    use rustls_pki_types::CertificateDer;
    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::TlsConnector;
    use tokio_stream::StreamExt;
    use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};
    use tower::ServiceExt;

    use super::*;
    use crate::accept::{accept_loop, AcceptSettings};
    use crate::pki::{CertificateAuthority, LeafSpec};
    use crate::tls::{self, CertifiedKeyFiles, TrustAnchors};

    /// The connect info of a real mTLS connection over loopback, exactly as
    /// the accept loop hands it to tonic.
    async fn peer_info(
        ca: &CertificateAuthority,
        client_name: &str,
    ) -> (PeerInfo, CertificateDer<'static>) {
        let server = ca.issue(&LeafSpec::server("s", &["localhost"])).unwrap();
        let client = ca
            .issue(&LeafSpec::dev_client("example.org", client_name))
            .unwrap();
        let anchors = TrustAnchors::in_memory(vec![ca.cert_der().clone()], "ca");
        let server_identity =
            CertifiedKeyFiles::in_memory(vec![server.cert_der.clone()], server.key_der(), "s");
        let client_identity =
            CertifiedKeyFiles::in_memory(vec![client.cert_der.clone()], client.key_der(), "c");
        let server_config =
            tls::server_config(&server_identity, &anchors, &[], Default::default()).unwrap();
        let client_config =
            tls::client_config(&client_identity, &anchors, Default::default()).unwrap();

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let settings = AcceptSettings {
            handshake_timeout: Duration::from_secs(10),
            client_hello_timeout: Duration::from_secs(10),
            preface_timeout: Duration::from_secs(10),
            max_pending_handshakes: 4,
        };
        let (incoming, task) = accept_loop(
            listener,
            Arc::new(ArcSwap::new(server_config)),
            settings,
            Default::default(),
        );
        tokio::pin!(incoming);
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut tls_client = TlsConnector::from(client_config)
            .connect(tls::server_name("localhost").unwrap(), tcp)
            .await
            .unwrap();
        // The accept loop hands on connections that sent the HTTP/2 preface.
        tokio::io::AsyncWriteExt::write_all(&mut tls_client, crate::conn::H2_PREFACE)
            .await
            .unwrap();
        let stream = incoming.next().await.unwrap().unwrap();
        task.abort();
        (stream.connect_info(), client.cert_der)
    }

    fn request(path: &str, peer: Option<&PeerInfo>) -> http::Request<()> {
        let mut req = http::Request::builder().uri(path).body(()).unwrap();
        if let Some(peer) = peer {
            req.extensions_mut().insert(peer.clone());
        }
        req
    }

    fn grpc_status(resp: &HttpResponse) -> Option<&str> {
        resp.headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
    }

    #[tokio::test]
    async fn the_layer_enforces_decisions_and_hands_on_the_peer_certificates() {
        let ca = CertificateAuthority::new("ca", 1).unwrap();
        let (peer, leaf) = peer_info(&ca, "reader").await;
        assert_eq!(peer.identity.display_name(), "spiffe://example.org/reader");

        let policy = Policy::from_json(
            r#"{"name": "p", "allow_rules": [{"name": "r",
                "source": {"principals": ["spiffe://example.org/reader"]}, "request": {"paths": ["/s.S/Get"]}}]}"#,
        )
        .unwrap();
        let shared: SharedPolicy = Arc::new(ArcSwap::from_pointee(policy));
        // What the inner service (a handler) saw: tonic's own TLS connect
        // info, which is what `Request::peer_certs()` reads.
        let seen: Arc<Mutex<Vec<Option<Vec<u8>>>>> = Arc::default();
        let record = seen.clone();
        let inner = tower::service_fn(move |req: http::Request<()>| {
            let certs = req
                .extensions()
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|info| info.peer_certs());
            record.lock().unwrap().push(certs.map(|c| c[0].to_vec()));
            async { Ok::<_, Infallible>(http::Response::new(tonic::body::Body::empty())) }
        });

        let enforcing = AuthzLayer::new(shared.clone()).layer(inner.clone());
        let allowed = enforcing
            .clone()
            .oneshot(request("/s.S/Get", Some(&peer)))
            .await
            .unwrap();
        assert_eq!(grpc_status(&allowed), None, "the handler answered");
        assert_eq!(seen.lock().unwrap().as_slice(), [Some(leaf.to_vec())]);

        let denied = enforcing
            .clone()
            .oneshot(request("/s.S/Put", Some(&peer)))
            .await
            .unwrap();
        assert_eq!(grpc_status(&denied), Some("7"), "PERMISSION_DENIED");
        let anonymous = enforcing.oneshot(request("/s.S/Get", None)).await.unwrap();
        assert_eq!(grpc_status(&anonymous), Some("16"), "UNAUTHENTICATED");
        assert_eq!(
            seen.lock().unwrap().len(),
            1,
            "a refused request reached the handler"
        );

        // Dry run: the same denial is let through.
        let dry = AuthzLayer::new(shared).dry_run(true).layer(inner);
        let through = dry.oneshot(request("/s.S/Put", Some(&peer))).await.unwrap();
        assert_eq!(grpc_status(&through), None);
        assert_eq!(seen.lock().unwrap().len(), 2);
    }
}
