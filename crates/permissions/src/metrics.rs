//! The permissions service's series, under `partnerhub_permissions_`.

use std::sync::OnceLock;

use partnerhub_runtime::metrics::{latency_histogram, register};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
};

/// Where a `CheckPermission` was answered: `cache` (a hit) or `database` (a miss).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AnswerLabels {
    pub answered_from: &'static str,
}

#[derive(Debug)]
pub struct Metrics {
    pub checks: Family<AnswerLabels, Counter>,
    pub cache_invalidation_seconds: Histogram,
}

/// The service's series, registered on first use.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let metrics = Metrics { checks: Family::default(), cache_invalidation_seconds: latency_histogram() };
        register("permissions", |registry| {
            registry.register(
                "checks",
                "CheckPermission answers, from the cache (hits) or the database (misses)",
                metrics.checks.clone(),
            );
            registry.register(
                "cache_invalidation_delay_seconds",
                "From a permission change's commit to this replica's cache applying it",
                metrics.cache_invalidation_seconds.clone(),
            );
        });
        metrics
    })
}
