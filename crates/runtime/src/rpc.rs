//! One span and one set of metrics per gRPC call, on both sides.
//!
//! - [`ServerRpcLayer`] wraps the whole server: each call gets an `rpc` span
//!   (carrying `trace_id`, and `resource_id` once a handler records what the call is about)
//!   whose parent is the caller's W3C `traceparent`, and is counted and timed
//!   by method and status.
//! - [`ClientRpcLayer`] wraps every peer channel: each outgoing call gets a
//!   `peer_call` span under the caller's, whose context travels in the call's
//!   `traceparent`, and is counted and timed likewise.
//!
//! Trace context is only read and written while spans are exported
//! ([`crate::telemetry::exporting`]); otherwise the span's `trace_id` is the
//! caller's, when it sent one, or a new one.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{Arc, LazyLock, OnceLock, PoisonError, RwLock},
    task::{Context, Poll},
    time::Instant,
};

use opentelemetry::{
    propagation::{Extractor, Injector, TextMapPropagator as _},
    trace::{Status as SpanStatus, TraceContextExt as _, TraceId},
};
use opentelemetry_sdk::{
    propagation::TraceContextPropagator,
    trace::{IdGenerator as _, RandomIdGenerator},
};
use prometheus_client::metrics::{counter::Counter, family::Family, histogram::Histogram};
use tonic::Code;
use tracing::{Instrument as _, Span, field::Empty};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::{
    metrics::{MethodLabels, RpcLabels, code_name, metrics},
    telemetry::exporting,
};

/// Wraps the whole server; see the module documentation.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerRpcLayer;

/// Wraps a channel to a peer; see the module documentation.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientRpcLayer;

impl<S> tower_layer::Layer<S> for ServerRpcLayer {
    type Service = Observed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observed { inner, side: Side::Server }
    }
}

impl<S> tower_layer::Layer<S> for ClientRpcLayer {
    type Service = Observed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observed { inner, side: Side::Client }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Server,
    Client,
}

#[derive(Debug, Clone)]
pub struct Observed<S> {
    inner: S,
    side: Side,
}

impl<S, RequestBody, ResponseBody> tower_service::Service<http::Request<RequestBody>> for Observed<S>
where
    S: tower_service::Service<http::Request<RequestBody>, Response = http::Response<ResponseBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<RequestBody>) -> Self::Future {
        // Cloning a URI shares its bytes; the path names the series once the call has ended.
        let uri = request.uri().clone();
        let (service, _) = service_and_method(uri.path());
        // Health checks and reflection are counted, but traced they would only be noise.
        let span = if is_infrastructure(service) { Span::none() } else { self.span_for(&mut request) };
        let started = Instant::now();
        let response = span.in_scope(|| self.inner.call(request));
        let side = self.side;
        Box::pin(
            async move {
                let response = response.await;
                // A call that failed before any response is UNAVAILABLE to its caller.
                let code = response.as_ref().map_or(Code::Unavailable, status_of);
                series(side, uri.path(), code).record(code, started);
                let span = Span::current();
                span.record("rpc.grpc.status_code", code as i32);
                if is_error(side, code) {
                    span.set_status(SpanStatus::error(code_name(code)));
                }
                response
            }
            .instrument(span),
        )
    }
}

impl<S> Observed<S> {
    fn span_for<B>(&self, request: &mut http::Request<B>) -> Span {
        let path = request.uri().path().trim_start_matches('/');
        match self.side {
            Side::Server if exporting() => {
                let span = tracing::info_span!(
                    "rpc",
                    otel.name = path,
                    otel.kind = "server",
                    rpc.grpc.status_code = Empty,
                    trace_id = Empty,
                    resource_id = Empty,
                );
                let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
                    propagator.extract(&ReadHeaders(request.headers()))
                });
                // Fails only for a span that is disabled (filtered out).
                let _ = span.set_parent(parent);
                span.set_attribute("rpc.system", "grpc");
                let trace_id = span.context().span().span_context().trace_id();
                span.record("trace_id", tracing::field::display(trace_id));
                span
            }
            // Only for log lines: as few fields as they need, since formatting
            // them is most of what a span costs on the CheckPermission path.
            Side::Server => {
                let trace_id = caller_trace_id(request.headers()).unwrap_or_else(new_trace_id);
                tracing::info_span!("rpc", trace_id = %trace_id, resource_id = Empty)
            }
            Side::Client => {
                let span = tracing::info_span!(
                    "peer_call",
                    otel.name = path,
                    otel.kind = "client",
                    rpc.grpc.status_code = Empty,
                );
                if exporting() {
                    span.set_attribute("rpc.system", "grpc");
                    let context = span.context();
                    opentelemetry::global::get_text_map_propagator(|propagator| {
                        propagator.inject_context(&context, &mut Headers(request.headers_mut()));
                    });
                }
                span
            }
        }
    }
}

/// The metrics of one method on one side, found once per method rather than
/// built (and their labels allocated) on every call.
struct MethodSeries {
    labels: MethodLabels,
    calls: &'static Family<RpcLabels, Counter>,
    seconds: Histogram,
    /// One counter per status code, by its number (0 to 16).
    by_code: [OnceLock<Counter>; 17],
}

impl MethodSeries {
    fn record(&self, code: Code, started: Instant) {
        self.seconds.observe(started.elapsed().as_secs_f64());
        let counter = self.by_code[(code as usize).min(16)].get_or_init(|| {
            let MethodLabels { service, method } = self.labels.clone();
            self.calls.get_or_create(&RpcLabels { service, method, code: code_name(code) }).clone()
        });
        counter.inc();
    }
}

/// The series of the method at `path`. Paths of no method (`UNIMPLEMENTED`)
/// share one `unknown` series, so callers cannot grow the label set at will.
fn series(side: Side, path: &str, code: Code) -> Arc<MethodSeries> {
    type Cache = LazyLock<RwLock<HashMap<String, Arc<MethodSeries>>>>;
    static SERVER: Cache = LazyLock::new(RwLock::default);
    static CLIENT: Cache = LazyLock::new(RwLock::default);
    let metrics = metrics();
    let (cache, calls, seconds) = match side {
        Side::Server => (&SERVER, &metrics.rpc_server_calls, &metrics.rpc_server_seconds),
        Side::Client => (&CLIENT, &metrics.rpc_client_calls, &metrics.rpc_client_seconds),
    };
    let path = if code == Code::Unimplemented { "unknown/unknown" } else { path };
    if let Some(found) = cache.read().unwrap_or_else(PoisonError::into_inner).get(path) {
        return found.clone();
    }
    let (service, method) = service_and_method(path);
    let labels = MethodLabels { service: service.to_owned(), method: method.to_owned() };
    let created = Arc::new(MethodSeries {
        seconds: seconds.get_or_create(&labels).clone(),
        labels,
        calls,
        by_code: Default::default(),
    });
    cache.write().unwrap_or_else(PoisonError::into_inner).entry(path.to_owned()).or_insert(created).clone()
}

/// `/pkg.Service/Method` → (`pkg.Service`, `Method`).
fn service_and_method(path: &str) -> (&str, &str) {
    path.trim_start_matches('/').split_once('/').unwrap_or((path, ""))
}

fn is_infrastructure(service: &str) -> bool {
    service.starts_with("grpc.health.") || service.starts_with("grpc.reflection.")
}

/// The status of a response: in its headers when it ended at once (every
/// refusal), otherwise in trailers that follow a successful start.
fn status_of<B>(response: &http::Response<B>) -> Code {
    response
        .headers()
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<i32>().ok())
        .map_or(Code::Ok, Code::from_i32)
}

/// The OpenTelemetry conventions for gRPC: a server span is in error only for
/// codes that mean the server failed; a client span for any code but OK.
fn is_error(side: Side, code: Code) -> bool {
    match side {
        Side::Client => code != Code::Ok,
        Side::Server => matches!(
            code,
            Code::Unknown
                | Code::DeadlineExceeded
                | Code::Unimplemented
                | Code::Internal
                | Code::Unavailable
                | Code::DataLoss
        ),
    }
}

/// The trace ID of the caller's W3C `traceparent`, read by OpenTelemetry's own
/// propagator (which enforces the format: lower-case hex, not all zeros).
/// Without the header, nothing is parsed.
fn caller_trace_id(headers: &http::HeaderMap) -> Option<TraceId> {
    headers.get("traceparent")?;
    static TRACE_CONTEXT: LazyLock<TraceContextPropagator> = LazyLock::new(TraceContextPropagator::new);
    let context = TRACE_CONTEXT.extract(&ReadHeaders(headers));
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then(|| span_context.trace_id())
}

/// A random trace ID from OpenTelemetry's own generator (a thread-local RNG, so
/// a call pays no system call for it).
fn new_trace_id() -> TraceId {
    RandomIdGenerator::default().new_trace_id()
}

/// Trace context read from and written to gRPC metadata (HTTP/2 headers).
struct Headers<'a>(&'a mut http::HeaderMap);

/// The same, read-only, for extracting it.
struct ReadHeaders<'a>(&'a http::HeaderMap);

impl Extractor for ReadHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

impl Injector for Headers<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (http::HeaderName::from_bytes(key.as_bytes()), value.parse()) {
            self.0.insert(name, value);
        }
    }
}

/// Names the resource the current call is about (its prefixed ID, e.g.
/// `pc-…`), on the call's span, so that every line it logs carries it.
pub fn record_resource_id(id: &str) {
    Span::current().record("resource_id", id);
}

/// The current span's trace context as a W3C `traceparent`, to be stored with
/// work that continues later (a migration continues its approval's trace).
pub fn current_traceparent() -> Option<String> {
    if !exporting() {
        return None;
    }
    let mut headers = http::HeaderMap::new();
    let context = Span::current().context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut Headers(&mut headers));
    });
    headers.get("traceparent").and_then(|value| value.to_str().ok()).map(str::to_owned)
}

/// Makes `span` a child of a stored `traceparent` (see [`current_traceparent`]).
pub fn continue_trace(span: &Span, traceparent: Option<&str>) {
    let Some(traceparent) = traceparent.filter(|_| exporting()) else {
        return;
    };
    let mut headers = http::HeaderMap::new();
    if let Ok(value) = traceparent.parse() {
        headers.insert("traceparent", value);
    }
    let parent =
        opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(&ReadHeaders(&headers)));
    let _ = span.set_parent(parent);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_callers_trace_id_is_taken_only_from_a_valid_traceparent() {
        let with = |value: &str| {
            let mut headers = http::HeaderMap::new();
            headers.insert("traceparent", value.parse().unwrap());
            caller_trace_id(&headers).map(|id| id.to_string())
        };
        assert_eq!(
            with("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        // W3C trace context: upper-case hex is not a valid traceparent.
        assert_eq!(with("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"), None);
        assert_eq!(with("00-00000000000000000000000000000000-00f067aa0ba902b7-01"), None);
        // FIXME: OpenTelemetry's propagator pads a short trace-id instead of
        // refusing it (W3C asks for exactly 32 digits); the ID stays valid and unique to its caller.
        assert_eq!(with("00-4bf92f35-00f067aa0ba902b7-01").as_deref(), Some("0000000000000000000000004bf92f35"));
        assert_eq!(with("garbage"), None);
        assert_eq!(caller_trace_id(&http::HeaderMap::new()), None);
    }

    #[test]
    fn new_trace_ids_are_32_hex_digits_and_differ() {
        let (first, second) = (new_trace_id().to_string(), new_trace_id().to_string());
        assert_eq!(first.len(), 32);
        assert!(first.bytes().all(|byte| byte.is_ascii_hexdigit()));
        assert_ne!(first, second);
    }

    #[test]
    fn calls_to_no_method_share_one_series_and_known_methods_keep_theirs() {
        let first = series(Side::Server, "/made.Up/One", Code::Unimplemented);
        let second = series(Side::Server, "/made.Up/Two", Code::Unimplemented);
        assert!(Arc::ptr_eq(&first, &second), "unknown paths must not grow the label set");
        assert_eq!((first.labels.service.as_str(), first.labels.method.as_str()), ("unknown", "unknown"));
        let known = series(Side::Server, "/partnerhub.account.v1.AccountService/GetWaba", Code::Ok);
        assert_eq!(known.labels.method, "GetWaba");
        assert!(Arc::ptr_eq(
            &known,
            &series(Side::Server, "/partnerhub.account.v1.AccountService/GetWaba", Code::NotFound)
        ));
    }

    #[test]
    fn a_path_splits_into_service_and_method() {
        assert_eq!(
            service_and_method("/partnerhub.account.v1.AccountService/GetWaba"),
            ("partnerhub.account.v1.AccountService", "GetWaba")
        );
        assert_eq!(service_and_method("/odd"), ("/odd", ""));
    }
}
