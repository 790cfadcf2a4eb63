//! The process-wide `tracing` subscriber: human-readable or JSON log lines,
//! and, when `telemetry.otlp_endpoint` is set, every span exported over OTLP
//! as an OpenTelemetry trace. With no endpoint no OpenTelemetry layer is
//! installed, so spans cost only what the log lines do.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_subscriber::{EnvFilter, fmt, layer::SubscriberExt as _, util::SubscriberInitExt as _};

use crate::config::{LogFormat, LogSettings, TelemetrySettings};

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid log filter {filter:?}: {source}")]
    Filter { filter: String, source: tracing_subscriber::filter::ParseError },
    #[error("a tracing subscriber is already installed")]
    AlreadyInstalled,
    #[error("cannot set up the OTLP exporter for {endpoint}: {source}")]
    Exporter { endpoint: String, source: opentelemetry_otlp::ExporterBuildError },
}

static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether spans become OpenTelemetry spans (and trace context is propagated).
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// What must outlive the process's work: the span exporter, flushed on [`Telemetry::shutdown`].
#[derive(Debug, Default)]
#[must_use = "spans not yet exported are lost unless it is shut down"]
pub struct Telemetry {
    tracer_provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still buffered.
    pub fn shutdown(self) {
        if let Some(provider) = self.tracer_provider
            && let Err(err) = provider.shutdown()
        {
            tracing::warn!(error = %err, "not every span could be exported");
        }
    }
}

/// Installs the global subscriber. `RUST_LOG`, when set, wins over `log.filter`.
/// `service_name` names this process in traces (`service.name`). Needs a Tokio
/// runtime when an OTLP endpoint is configured.
pub fn init_tracing(
    log: &LogSettings,
    telemetry: &TelemetrySettings,
    service_name: &str,
) -> Result<Telemetry, TelemetryError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(filter) if !filter.is_empty() => filter,
        _ => log.filter.clone(),
    };
    let env_filter = EnvFilter::try_new(&filter).map_err(|source| TelemetryError::Filter { filter, source })?;
    let human = (log.format == LogFormat::Human)
        .then(|| fmt::layer().with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout())));
    // Every enclosing span's fields (trace_id, resource_id, …) go with each line.
    let json = (log.format == LogFormat::Json)
        .then(|| fmt::layer().json().flatten_event(true).with_current_span(false).with_span_list(true));

    let mut tracer_provider = None;
    let otel = match &telemetry.otlp_endpoint {
        None => None,
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .build()
                .map_err(|source| TelemetryError::Exporter { endpoint: endpoint.clone(), source })?;
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(Resource::builder().with_service_name(service_name.to_owned()).build())
                .build();
            let tracer = provider.tracer("partnerhub");
            tracer_provider = Some(provider);
            Some(tracing_opentelemetry::layer().with_tracer(tracer))
        }
    };
    tracing_subscriber::registry()
        .with(env_filter)
        .with(human)
        .with(json)
        .with(otel)
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInstalled)?;
    if tracer_provider.is_some() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        EXPORTING.store(true, Ordering::Relaxed);
    }
    Ok(Telemetry { tracer_provider })
}
