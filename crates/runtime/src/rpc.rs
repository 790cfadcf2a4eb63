//! One span and one set of metrics per gRPC call, on both sides.
//!
//! - [`ServerRpcLayer`] wraps the whole server: each call gets an `rpc` span
//!   (carrying `trace_id`, and `partner_change_id` once a handler records it)
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
    cell::Cell,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};

use opentelemetry::{
    propagation::{Extractor, Injector},
    trace::{Status as SpanStatus, TraceContextExt as _},
};
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
        let (service, method) = service_and_method(request.uri().path());
        let labels = MethodLabels { service: service.to_owned(), method: method.to_owned() };
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
                record(side, labels, code, started);
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
                    partner_change_id = Empty,
                );
                let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
                    propagator.extract(&Headers(request.headers_mut()))
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
                tracing::info_span!("rpc", trace_id = %trace_id, partner_change_id = Empty)
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

fn record(side: Side, labels: MethodLabels, code: Code, started: Instant) {
    let metrics = metrics();
    let (calls, seconds) = match side {
        Side::Server => (&metrics.rpc_server_calls, &metrics.rpc_server_seconds),
        Side::Client => (&metrics.rpc_client_calls, &metrics.rpc_client_seconds),
    };
    seconds.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
    let MethodLabels { service, method } = labels;
    calls.get_or_create(&RpcLabels { service, method, code: code_name(code) }).inc();
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

/// The trace ID of a W3C `traceparent` (`00-<trace-id>-<parent-id>-<flags>`).
fn caller_trace_id(headers: &http::HeaderMap) -> Option<String> {
    let traceparent = headers.get("traceparent")?.to_str().ok()?;
    let trace_id = traceparent.split('-').nth(1)?;
    let valid = trace_id.len() == 32
        && trace_id.bytes().all(|byte| byte.is_ascii_hexdigit())
        && trace_id.bytes().any(|byte| byte != b'0');
    valid.then(|| trace_id.to_ascii_lowercase())
}

/// A random 128-bit trace ID: SplitMix64 seeded once per thread, so a call
/// pays no system call for it.
fn new_trace_id() -> String {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(getrandom::u64().unwrap_or(0x9E37_79B9_7F4A_7C15));
    }
    let next = || {
        STATE.with(|state| {
            let mut z = state.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
            state.set(z);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        })
    };
    format!("{:016x}{:016x}", next(), next())
}

/// Trace context read from and written to gRPC metadata (HTTP/2 headers).
struct Headers<'a>(&'a mut http::HeaderMap);

impl Extractor for Headers<'_> {
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

/// Names the partner change the current call is about, on the call's span, so
/// that every line it logs carries it.
pub fn record_partner_change_id(partner_change_id: &str) {
    Span::current().record("partner_change_id", partner_change_id);
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
        opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(&Headers(&mut headers)));
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
            caller_trace_id(&headers)
        };
        assert_eq!(
            with("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01").as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(with("00-00000000000000000000000000000000-00f067aa0ba902b7-01"), None);
        assert_eq!(with("00-4bf92f35-00f067aa0ba902b7-01"), None);
        assert_eq!(with("garbage"), None);
        assert_eq!(caller_trace_id(&http::HeaderMap::new()), None);
    }

    #[test]
    fn new_trace_ids_are_32_hex_digits_and_differ() {
        let (first, second) = (new_trace_id(), new_trace_id());
        assert_eq!(first.len(), 32);
        assert!(first.bytes().all(|byte| byte.is_ascii_hexdigit()));
        assert_ne!(first, second);
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
