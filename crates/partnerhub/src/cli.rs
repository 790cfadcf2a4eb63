//! The `partnerhub` command line: `serve`, `migrate`, `token`.

use std::{path::PathBuf, time::Duration};

use clap::{Parser, Subcommand};
use partnerhub_runtime::{
    auth::{Subject, TokenKeys},
    config::Settings,
    telemetry::init_tracing,
};

use crate::app::{Application, SERVICES, open_database, process_name, section_readers, service_named};

#[derive(Debug, Parser)]
#[command(name = "partnerhub", version, about = "Partner Hub: move WhatsApp Business Accounts between partners")]
pub struct Cli {
    /// A TOML config file; `PARTNERHUB__SECTION__KEY` environment variables override it.
    #[arg(long, global = true, env = "PARTNERHUB_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run services (all of them, in one process, unless --service is given).
    Serve {
        /// Run only this service; repeat to run several.
        #[arg(long = "service", value_parser = service_names())]
        services: Vec<String>,
        /// Once calls are accepted, print `partnerhub: serving on <address> (<services>)`
        /// on stderr: for scripts and tests that listen on port 0. Off by
        /// default, so that a log collector reading both streams sees only log lines.
        #[arg(long)]
        announce_address: bool,
    },
    /// Run a local cluster: every service as its own processes (two replicas
    /// each by default) on a local PostgreSQL database, until Ctrl-C.
    Cluster(crate::cluster::ClusterOptions),
    /// Apply every service's database migrations, then exit.
    Migrate,
    /// Print a bearer token signed with the configured key.
    Token {
        /// `client:<id>`, `partner:<id>`, `service:<name>` or `support:<user>`.
        #[arg(long)]
        subject: Subject,
        /// How long the token is valid, e.g. `30m`, `1h`, `7d`.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] partnerhub_runtime::config::ConfigError),
    #[error(transparent)]
    Telemetry(#[from] partnerhub_runtime::telemetry::TelemetryError),
    #[error(transparent)]
    Startup(#[from] crate::app::StartupError),
    #[error(transparent)]
    Stop(#[from] crate::app::StopError),
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error(transparent)]
    Key(#[from] partnerhub_runtime::auth::KeyError),
    #[error(transparent)]
    Token(#[from] partnerhub_runtime::auth::TokenError),
}

/// The one line `serve --announce-address` prints on purpose once it accepts
/// calls (on stderr, apart from the logs on stdout): for scripts and tests that
/// start it on port 0 and need its address.
pub const SERVING_ON: &str = "partnerhub: serving on ";

fn announce(addr: std::net::SocketAddr, services: &[&dyn partnerhub_runtime::service::Service]) {
    let names: Vec<&str> = services.iter().map(|service| service.name()).collect();
    eprintln!("{SERVING_ON}{addr} ({})", names.join(", "));
}

/// The names `--service` accepts: every service this binary has.
fn service_names() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(SERVICES.iter().map(|service| service.name()))
}

/// The whole program: parse the command line, run it, report a failure on
/// stderr. Both the `partnerhub` binary and the test suite's copy of it call this.
pub async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("partnerhub: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}

pub async fn run(cli: Cli) -> Result<(), CliError> {
    let settings = Settings::load(cli.config.as_deref(), &section_readers())?;
    match cli.command {
        Command::Serve { services, announce_address } => {
            let services: Vec<_> = if services.is_empty() {
                SERVICES.to_vec()
            } else {
                // clap has checked every name against the same list.
                services.iter().filter_map(|name| service_named(name)).collect()
            };
            let telemetry = init_tracing(&settings.log, &settings.telemetry, &process_name(&services))?;
            let stopped = match Application::start(&settings, &services).await {
                Ok(app) => {
                    if announce_address {
                        announce(app.local_addr(), &services);
                    }
                    app.run_until_stopped().await.map_err(CliError::from)
                }
                Err(err) => Err(err.into()),
            };
            telemetry.shutdown();
            stopped?;
        }
        Command::Cluster(options) => crate::cluster::run(options).await?,
        Command::Migrate => {
            let telemetry = init_tracing(&settings.log, &settings.telemetry, "partnerhub-migrate")?;
            let migrated = open_database(&settings).await;
            telemetry.shutdown();
            migrated?;
            tracing::info!("migrations applied");
        }
        Command::Token { subject, ttl } => {
            let keys = TokenKeys::load_or_generate(&settings)?;
            println!("{}", keys.mint(&subject, ttl)?);
        }
    }
    Ok(())
}
