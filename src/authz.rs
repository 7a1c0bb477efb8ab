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
        // Let handlers use tonic's own `Request::peer_certs()` as well.
        req.extensions_mut().insert(peer.tls.clone());

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
        if decision.is_allowed() || self.dry_run {
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
    let remote = peer
        .remote_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
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
