//! The webhooks service's series, under `partnerhub_webhooks_`.

use std::sync::OnceLock;

use partnerhub_runtime::metrics::{latency_histogram, register};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
};

/// What became of an attempt: `delivered`, `retry`, `failed` (the schedule
/// exhausted), `disabled` (the endpoint was disabled) or `deleted` (with its endpoint, meanwhile).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Debug)]
pub struct Metrics {
    pub attempts: Family<OutcomeLabels, Counter>,
    pub attempt_seconds: Histogram,
    /// From the event's commit (its time) to its first successful delivery.
    pub delivery_delay_seconds: Histogram,
    pub queue_depth: Gauge,
    pub oldest_due_seconds: Gauge,
}

pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let metrics = Metrics {
            attempts: Family::default(),
            attempt_seconds: latency_histogram(),
            delivery_delay_seconds: latency_histogram(),
            queue_depth: Gauge::default(),
            oldest_due_seconds: Gauge::default(),
        };
        register("webhooks", |registry| {
            registry.register("attempts", "Webhook POSTs, by what became of the delivery", metrics.attempts.clone());
            registry.register(
                "attempt_duration_seconds",
                "One webhook POST, connection included",
                metrics.attempt_seconds.clone(),
            );
            registry.register(
                "delivery_delay_seconds",
                "From an event to its delivery (first 2xx)",
                metrics.delivery_delay_seconds.clone(),
            );
            registry.register("queue_depth", "Pending deliveries, due or scheduled", metrics.queue_depth.clone());
            registry.register(
                "oldest_due_seconds",
                "Age of the oldest delivery that is due and not yet delivered",
                metrics.oldest_due_seconds.clone(),
            );
        });
        metrics
    })
}
