//! Limit metrics: calls refused (or, in dry run, that would have been) by
//! limit entry and reason, and calls that waited for their fair share.
//! Labelled by the limits file's entry names, `total` and `fair_share`,
//! never by peer: a label per identity would grow without bound.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::quota::Refusal;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitedLabels {
    limit: String,
    reason: &'static str,
    /// `enforce`, or `dry_run` (let through).
    mode: &'static str,
}

/// The limit metrics in a registry.
#[derive(Clone)]
pub(crate) struct QuotaMetrics {
    limited: Family<LimitedLabels, Counter>,
    waited: Counter,
}

impl QuotaMetrics {
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let m = Self {
            limited: Family::default(),
            waited: Counter::default(),
        };
        registry.register(
            "mtls_limited_calls",
            "Calls refused with RESOURCE_EXHAUSTED by limit (a limits file entry's name, total, or fair_share) and reason (rate, in_flight, wait); mode=dry_run counts those let through in dry run",
            m.limited.clone(),
        );
        registry.register(
            "mtls_fair_share_waits",
            "Calls that waited for their identity's fair share before running",
            m.waited.clone(),
        );
        m
    }

    pub(crate) fn limited(&self, refusal: &Refusal, dry_run: bool) {
        self.limited
            .get_or_create(&LimitedLabels {
                limit: refusal.limit.to_string(),
                reason: refusal.reason.as_str(),
                mode: if dry_run { "dry_run" } else { "enforce" },
            })
            .inc();
    }

    pub(crate) fn waited(&self) {
        self.waited.inc();
    }
}
