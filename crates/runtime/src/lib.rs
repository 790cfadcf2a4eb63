//! What every Partner Hub service shares, written once. It knows no service:
//! services plug in through [`service`] and keep their own settings section,
//! error reasons and metrics.
//!
//! - [`service`]: what a service is to the process (name, settings, migrations, start);
//! - [`config`]: the one settings tree (defaults → file → `PARTNERHUB__…` environment);
//! - [`telemetry`]: the `tracing` subscriber (human or JSON logs, OTLP traces);
//! - [`rpc`]: a span, trace context and metrics for every gRPC call, served or made;
//! - [`metrics`]: the Prometheus registry and its `/metrics` endpoint;
//! - [`auth`]: bearer tokens naming one [`auth::Subject`], and the gate that checks them and each service's policy;
//! - [`jwks`]: an identity provider's keys (a JWK Set file, reread when it changes);
//! - [`error`] and [`validate`]: every `Status` a service returns, and parsing at the boundary;
//! - [`pagination`]: AIP-158 page sizes and filter-bound page tokens;
//! - [`peers`]: every replica of another service, health-checked, signed and with deadlines;
//! - [`db`]: connecting, write transactions, and storage errors classified once;
//! - [`server`]: the gRPC host with health, reflection and graceful shutdown;
//! - [`connections`]: the connections a server accepts (a cap, keepalive, a preface deadline);
//! - [`outage`]: background work that reports an outage once, not once per attempt;
//! - [`framing`]: a request's framing checked before tonic (one whole message, within the size limit);
//! - [`ids`] and [`time`]: resource IDs and timestamp conversions.

pub mod auth;
pub mod config;
pub mod connections;
pub mod db;
pub mod error;
pub mod framing;
pub mod ids;
pub mod jwks;
pub mod metrics;
pub mod outage;
pub mod pagination;
pub mod peers;
pub mod retention;
pub mod rpc;
pub mod server;
pub mod service;
pub mod telemetry;
pub mod time;
pub mod validate;

#[cfg(test)]
mod tests {
    /// ARCHITECTURE.md's invariant "the runtime knows no service": no line of
    /// its code (comments and tests aside) names a service or a service's
    /// concept, and it depends on no service crate.
    #[test]
    fn the_runtime_knows_no_service() {
        let names = ["partner_change", "partner-change", "partnerchange", "permissions", "account", "waba"];
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir.join("src")).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            for (number, line) in code.lines().enumerate() {
                let line = line.split("//").next().unwrap_or_default().to_lowercase();
                if let Some(name) = names.iter().find(|name| line.contains(*name)) {
                    found.push(format!("{}:{}: {name}", path.display(), number + 1));
                }
            }
        }
        assert!(found.is_empty(), "the runtime names services:\n{}", found.join("\n"));

        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        let crates: Vec<&str> = manifest
            .lines()
            .filter(|line| line.starts_with("partnerhub-") && !line.starts_with("partnerhub-proto"))
            .collect();
        assert!(crates.is_empty(), "the runtime depends on {crates:?}");
    }
}
