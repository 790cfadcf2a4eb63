//! The process's metrics, in the Prometheus registry that `/metrics` renders
//! (OpenMetrics text) on `telemetry.metrics_listen_addr`.
//!
//! Every service records into the one process-wide [`Metrics`]; a process that
//! does not run a service simply never moves that service's series.

use std::sync::OnceLock;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Which RPC, and how it ended (`code` is the gRPC status name, e.g. `NOT_FOUND`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    pub service: String,
    pub method: String,
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub service: String,
    pub method: String,
}

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

/// Where a `CheckPermission` was answered: `cache` (a hit) or `database` (a miss).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AnswerLabels {
    pub answered_from: &'static str,
}

/// A kind of background task (`migration_worker`, `event_tailer`, …).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabels {
    pub task: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every series Partner Hub exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub rpc_server_calls: Family<RpcLabels, Counter>,
    pub rpc_server_seconds: HistogramFamily<MethodLabels>,
    pub rpc_client_calls: Family<RpcLabels, Counter>,
    pub rpc_client_seconds: HistogramFamily<MethodLabels>,
    pub saga_steps: Family<StepLabels, Counter>,
    pub saga_step_seconds: HistogramFamily<StepNameLabels>,
    pub partner_changes: Family<StateLabels, Gauge>,
    pub stream_subscribers: Gauge,
    pub stream_delivery_lag_seconds: Histogram,
    pub stream_subscribers_ended_too_slow: Counter,
    pub permission_checks: Family<AnswerLabels, Counter>,
    pub permission_cache_invalidation_seconds: Histogram,
    pub background_failures: Family<TaskLabels, Counter>,
    pub background_failing: Family<TaskLabels, Gauge>,
    pub database_reachable: Gauge,
    pub migrations_stuck: Gauge,
    pub migrations_scheduled: Gauge,
}

/// 0.5 ms to about 16 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Metrics {
    fn new() -> Self {
        let metrics = Self {
            registry: Registry::with_prefix("partnerhub"),
            rpc_server_calls: Family::default(),
            rpc_server_seconds: Family::new_with_constructor(latency_histogram),
            rpc_client_calls: Family::default(),
            rpc_client_seconds: Family::new_with_constructor(latency_histogram),
            saga_steps: Family::default(),
            saga_step_seconds: Family::new_with_constructor(latency_histogram),
            partner_changes: Family::default(),
            stream_subscribers: Gauge::default(),
            stream_delivery_lag_seconds: latency_histogram(),
            stream_subscribers_ended_too_slow: Counter::default(),
            permission_checks: Family::default(),
            permission_cache_invalidation_seconds: latency_histogram(),
            background_failures: Family::default(),
            background_failing: Family::default(),
            database_reachable: Gauge::default(),
            migrations_stuck: Gauge::default(),
            migrations_scheduled: Gauge::default(),
        };
        metrics.register()
    }

    fn register(mut self) -> Self {
        let registry = &mut self.registry;
        registry.register("rpc_server_calls", "gRPC calls served, by method and status", self.rpc_server_calls.clone());
        registry.register(
            "rpc_server_duration_seconds",
            "Time to answer a gRPC call (to the first response for streams)",
            self.rpc_server_seconds.clone(),
        );
        registry.register("rpc_client_calls", "gRPC calls made to peer services", self.rpc_client_calls.clone());
        registry.register(
            "rpc_client_duration_seconds",
            "Time peer services took to answer",
            self.rpc_client_seconds.clone(),
        );
        registry.register("saga_steps", "Migration saga steps, by outcome", self.saga_steps.clone());
        registry.register(
            "saga_step_duration_seconds",
            "Migration saga step durations",
            self.saga_step_seconds.clone(),
        );
        registry.register(
            "partner_change_requests",
            "Partner change requests by state (read from the database periodically)",
            self.partner_changes.clone(),
        );
        registry.register(
            "event_stream_subscribers",
            "Open WatchPartnerChangeEvents streams",
            self.stream_subscribers.clone(),
        );
        registry.register(
            "event_stream_delivery_lag_seconds",
            "From an event's commit to its sending to a live subscriber",
            self.stream_delivery_lag_seconds.clone(),
        );
        registry.register(
            "event_stream_subscribers_ended_too_slow",
            "Subscribers ended with SUBSCRIBER_TOO_SLOW",
            self.stream_subscribers_ended_too_slow.clone(),
        );
        registry.register(
            "permission_checks",
            "CheckPermission answers, from the cache (hits) or the database (misses)",
            self.permission_checks.clone(),
        );
        registry.register(
            "permission_cache_invalidation_delay_seconds",
            "From a permission change's commit to this replica's cache applying it",
            self.permission_cache_invalidation_seconds.clone(),
        );
        registry.register(
            "background_task_failures",
            "Failed attempts of background tasks (worker, tailer, cache follower, …), by task",
            self.background_failures.clone(),
        );
        registry.register(
            "background_task_failing",
            "1 while a background task's attempts keep failing, by task",
            self.background_failing.clone(),
        );
        registry.register(
            "database_reachable",
            "1 while this process's database answers its readiness check",
            self.database_reachable.clone(),
        );
        registry.register(
            "partner_change_migrations_stuck",
            "Migrating partner changes whose steps have failed repeatedly and are still being retried",
            self.migrations_stuck.clone(),
        );
        registry.register(
            "partner_change_migrations_scheduled",
            "Approved partner changes waiting for their scheduled time (migrate_after)",
            self.migrations_scheduled.clone(),
        );
        self
    }

    /// The registry rendered in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// The name gRPC gives `code`, as used in labels.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown`.
pub async fn serve_metrics(listener: TcpListener, shutdown: CancellationToken) -> std::io::Result<()> {
    let router = axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async {
            (
                [(http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
                metrics().render(),
            )
        }),
    );
    axum::serve(listener, router).with_graceful_shutdown(shutdown.cancelled_owned()).await
}
