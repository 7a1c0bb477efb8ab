//! Reload metrics: reloads by group (tls, policy) and outcome (applied,
//! refused), when each group was last applied, and which policy is in
//! force (its name and a hash of the file's bytes, so that a fleet can be
//! checked for one policy version with a single query).
//!
//! It reads what [`ServerReloader`] publicly reports (its outcomes and the
//! bytes in force), so the reloader itself knows nothing of metrics.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::certs::Lifetimes;
use super::Metrics;
use crate::reload::{GroupOutcome, Outcomes, ServerReloader};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    group: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupLabels {
    group: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyLabels {
    name: String,
    sha256: String,
}

/// The reload metrics in a registry.
pub(crate) struct ReloadMetrics {
    reloads: Family<ReloadLabels, Counter>,
    last_applied: Family<GroupLabels, Gauge>,
    policy: Family<PolicyLabels, Gauge>,
}

impl ReloadMetrics {
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let m = Self {
            reloads: Family::default(),
            last_applied: Family::default(),
            policy: Family::default(),
        };
        registry.register(
            "mtls_config_reloads",
            "Reloads that found changed files, by group (tls, policy, limits) and outcome (applied; refused: the last good configuration stays)",
            m.reloads.clone(),
        );
        registry.register(
            "mtls_config_last_applied_timestamp_seconds",
            "When each group's configuration in force was loaded (startup or the last applied reload), as a Unix time",
            m.last_applied.clone(),
        );
        registry.register(
            "mtls_policy_in_force",
            "Always 1, labelled with the name of the authorization policy in force and the first 16 hex digits of the SHA-256 of its file",
            m.policy.clone(),
        );
        m
    }
}

/// Returns the reload callback for [`crate::reload::watch_files`]: it
/// reloads and records the outcome. Records the configuration loaded at
/// startup at once.
pub fn reload_and_record(
    reloader: Arc<ServerReloader>,
    metrics: Metrics,
) -> impl Fn() + Send + Sync + 'static {
    record_in_force(&metrics, &reloader, true, true);
    if reloader.sources().limits.is_some() {
        record_limits_in_force(&metrics);
    }
    move || {
        let outcomes = reloader.reload_all();
        record_all(&metrics, &reloader, &outcomes);
    }
}

/// Records what one [`ServerReloader::reload`] did.
pub fn record(
    metrics: &Metrics,
    reloader: &ServerReloader,
    (tls, policy): &(GroupOutcome, GroupOutcome),
) {
    record_all(
        metrics,
        reloader,
        &Outcomes {
            tls: tls.clone(),
            policy: policy.clone(),
            limits: GroupOutcome::Unchanged,
        },
    );
}

/// Records what one [`ServerReloader::reload_all`] did.
pub fn record_all(metrics: &Metrics, reloader: &ServerReloader, outcomes: &Outcomes) {
    let Some(m) = metrics.reloads() else { return };
    let Outcomes {
        tls,
        policy,
        limits,
    } = outcomes;
    for (group, outcome) in [("tls", tls), ("policy", policy), ("limits", limits)] {
        let outcome = match outcome {
            GroupOutcome::Unchanged => continue,
            GroupOutcome::Applied(_) => "applied",
            GroupOutcome::Refused(_) => "refused",
        };
        m.reloads
            .get_or_create(&ReloadLabels { group, outcome })
            .inc();
    }
    record_in_force(
        metrics,
        reloader,
        matches!(tls, GroupOutcome::Applied(_)),
        matches!(policy, GroupOutcome::Applied(_)),
    );
    if matches!(limits, GroupOutcome::Applied(_)) {
        record_limits_in_force(metrics);
    }
}

fn record_limits_in_force(metrics: &Metrics) {
    if let Some(m) = metrics.reloads() {
        m.last_applied
            .get_or_create(&GroupLabels { group: "limits" })
            .set(super::unix_now());
    }
}

/// Sets the gauges of the groups in force that were (re)loaded just now.
fn record_in_force(metrics: &Metrics, reloader: &ServerReloader, tls: bool, policy: bool) {
    let (Some(m), Some(certs)) = (metrics.reloads(), metrics.certs()) else {
        return;
    };
    let now = super::unix_now();
    let sources = reloader.sources();
    let bytes = |p| reloader.in_force(p).unwrap_or_default();
    if tls {
        m.last_applied
            .get_or_create(&GroupLabels { group: "tls" })
            .set(now);
        let crls: Vec<(String, Vec<u8>)> = sources
            .crls
            .iter()
            .map(|p| (p.display().to_string(), bytes(p)))
            .collect();
        certs.set(&Lifetimes::from_pem(
            &bytes(&sources.cert),
            &bytes(&sources.client_ca),
            &crls,
        ));
    }
    if policy {
        m.last_applied
            .get_or_create(&GroupLabels { group: "policy" })
            .set(now);
        let file = bytes(&sources.policy);
        m.policy.clear();
        m.policy
            .get_or_create(&PolicyLabels {
                name: policy_name(&file),
                sha256: sha256_prefix(&file),
            })
            .set(1);
    }
}

/// The policy's `name`, read without compiling the policy again.
fn policy_name(file: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Named {
        name: String,
    }
    serde_json::from_slice::<Named>(file)
        .map(|n| n.name)
        .unwrap_or_default()
}

/// The first 16 hex digits of the SHA-256 of `bytes`: enough to tell
/// versions apart, short enough to read on a dashboard.
pub fn sha256_prefix(bytes: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_hash_is_a_sha256_prefix() {
        // echo -n abc | sha256sum
        assert_eq!(sha256_prefix(b"abc"), "ba7816bf8f01cfea");
        assert_eq!(policy_name(br#"{"name": "p", "allow_rules": []}"#), "p");
    }
}
