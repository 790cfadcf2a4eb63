//! The partner-change service's series, under `partnerhub_partner_change_`.

use std::sync::OnceLock;

use partnerhub_runtime::metrics::{HistogramFamily, latency_histogram, register};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
};

/// A migration saga step and how it ended: `ok`, `retry` (transient) or `failed` (permanent).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabels {
    pub step: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepNameLabels {
    pub step: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: String,
}

#[derive(Debug)]
pub struct Metrics {
    pub saga_steps: Family<StepLabels, Counter>,
    pub saga_step_seconds: HistogramFamily<StepNameLabels>,
    pub requests: Family<StateLabels, Gauge>,
    pub migrations_stuck: Gauge,
    pub migrations_scheduled: Gauge,
    pub stream_subscribers: Gauge,
    pub stream_delivery_lag_seconds: Histogram,
    pub stream_subscribers_ended_too_slow: Counter,
    pub stream_buffered_bytes: Gauge,
}

/// The service's series, registered on first use.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let metrics = Metrics {
            saga_steps: Family::default(),
            saga_step_seconds: Family::new_with_constructor(latency_histogram),
            requests: Family::default(),
            migrations_stuck: Gauge::default(),
            migrations_scheduled: Gauge::default(),
            stream_subscribers: Gauge::default(),
            stream_delivery_lag_seconds: latency_histogram(),
            stream_subscribers_ended_too_slow: Counter::default(),
            stream_buffered_bytes: Gauge::default(),
        };
        register("partner_change", |registry| {
            registry.register("saga_steps", "Migration saga steps, by outcome", metrics.saga_steps.clone());
            registry.register(
                "saga_step_duration_seconds",
                "Migration saga step durations",
                metrics.saga_step_seconds.clone(),
            );
            registry.register(
                "requests",
                "Partner change requests by state (read from the database periodically)",
                metrics.requests.clone(),
            );
            registry.register(
                "migrations_stuck",
                "Migrating partner changes whose steps have failed repeatedly and are still being retried",
                metrics.migrations_stuck.clone(),
            );
            registry.register(
                "migrations_scheduled",
                "Approved partner changes waiting for their scheduled time (migrate_after)",
                metrics.migrations_scheduled.clone(),
            );
            registry.register(
                "event_stream_subscribers",
                "Open WatchPartnerChangeEvents streams",
                metrics.stream_subscribers.clone(),
            );
            registry.register(
                "event_stream_delivery_lag_seconds",
                "From an event's commit to its sending to a live subscriber",
                metrics.stream_delivery_lag_seconds.clone(),
            );
            registry.register(
                "event_stream_subscribers_ended_too_slow",
                "Subscribers ended with SUBSCRIBER_TOO_SLOW",
                metrics.stream_subscribers_ended_too_slow.clone(),
            );
            registry.register(
                "event_stream_buffered_bytes",
                "Bytes (approximate encoded size) of events waiting in subscribers' buffers, all subscribers together",
                metrics.stream_buffered_bytes.clone(),
            );
        });
        metrics
    })
}
