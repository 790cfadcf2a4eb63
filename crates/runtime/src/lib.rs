//! What every Partner Hub service shares, written once:
//!
//! - [`config`]: the one settings tree (defaults → file → `PARTNERHUB__…` environment);
//! - [`telemetry`]: the `tracing` subscriber (human or JSON logs, OTLP traces);
//! - [`rpc`]: a span, trace context and metrics for every gRPC call, served or made;
//! - [`metrics`]: the Prometheus registry and its `/metrics` endpoint;
//! - [`auth`]: bearer tokens naming one [`auth::Subject`], and the interceptor that checks them;
//! - [`error`] and [`validate`]: every `Status` a service returns, and parsing at the boundary;
//! - [`pagination`]: AIP-158 page sizes and filter-bound page tokens;
//! - [`peers`]: every replica of another service, health-checked, signed and with deadlines;
//! - [`db`]: connecting, write transactions, and storage errors classified once;
//! - [`server`]: the gRPC host with health, reflection and graceful shutdown;
//! - [`outage`]: background work that reports an outage once, not once per attempt;
//! - [`limits`]: oversized requests refused as `INVALID_ARGUMENT`;
//! - [`ids`] and [`time`]: resource IDs and timestamp conversions.

pub mod auth;
pub mod config;
pub mod db;
pub mod error;
pub mod ids;
pub mod limits;
pub mod metrics;
pub mod outage;
pub mod pagination;
pub mod peers;
pub mod rpc;
pub mod server;
pub mod telemetry;
pub mod time;
pub mod validate;
