//! The process-wide `tracing` subscriber: human-readable or JSON lines.

use tracing_subscriber::{EnvFilter, fmt};

use crate::config::{LogFormat, LogSettings};

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid log filter {filter:?}: {source}")]
    Filter { filter: String, source: tracing_subscriber::filter::ParseError },
    #[error("a tracing subscriber is already installed")]
    AlreadyInstalled,
}

/// Installs the global subscriber. `RUST_LOG`, when set, wins over `log.filter`.
pub fn init_tracing(settings: &LogSettings) -> Result<(), TelemetryError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(filter) if !filter.is_empty() => filter,
        _ => settings.filter.clone(),
    };
    let env_filter = EnvFilter::try_new(&filter).map_err(|source| TelemetryError::Filter { filter, source })?;
    let installed = match settings.format {
        LogFormat::Human => {
            fmt().with_env_filter(env_filter).with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout())).try_init()
        }
        LogFormat::Json => fmt()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_env_filter(env_filter)
            .try_init(),
    };
    installed.map_err(|_| TelemetryError::AlreadyInstalled)
}
