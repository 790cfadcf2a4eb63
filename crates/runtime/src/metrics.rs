//! The process's metrics, in the Prometheus registry that `/metrics` renders
//! (OpenMetrics text) on `telemetry.metrics_listen_addr`.
//!
//! The runtime's own series (RPCs served and made, background tasks, the
//! database) are in [`Metrics`]; each service registers its own series under
//! its prefix with [`register`], once, when it first uses them.

use std::sync::{Mutex, OnceLock, PoisonError};

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

/// A kind of background task (`migration_worker`, `event_tailer`, …).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabels {
    pub task: &'static str,
}

pub type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// The series every process exports, whatever services it runs.
#[derive(Debug)]
pub struct Metrics {
    /// Every series of the process, the services' included.
    registry: Mutex<Registry>,
    pub rpc_server_calls: Family<RpcLabels, Counter>,
    pub rpc_server_seconds: HistogramFamily<MethodLabels>,
    pub rpc_client_calls: Family<RpcLabels, Counter>,
    pub rpc_client_seconds: HistogramFamily<MethodLabels>,
    pub background_failures: Family<TaskLabels, Counter>,
    pub background_failing: Family<TaskLabels, Gauge>,
    pub database_reachable: Gauge,
}

/// 0.5 ms to about 16 s.
pub fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Metrics {
    fn new() -> Self {
        let metrics = Self {
            registry: Mutex::new(Registry::with_prefix("partnerhub")),
            rpc_server_calls: Family::default(),
            rpc_server_seconds: Family::new_with_constructor(latency_histogram),
            rpc_client_calls: Family::default(),
            rpc_client_seconds: Family::new_with_constructor(latency_histogram),
            background_failures: Family::default(),
            background_failing: Family::default(),
            database_reachable: Gauge::default(),
        };
        metrics.register()
    }

    fn register(self) -> Self {
        let mut registry = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
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
        drop(registry);
        self
    }

    /// The registry rendered in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let registry = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
        text
    }
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// Registers a service's series under `partnerhub_<prefix>_`.
pub fn register(prefix: &str, register: impl FnOnce(&mut Registry)) {
    let mut registry = metrics().registry.lock().unwrap_or_else(PoisonError::into_inner);
    register(registry.sub_registry_with_prefix(prefix));
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
