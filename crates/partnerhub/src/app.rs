//! One start-up path for production and tests: connect, migrate, bind (port 0
//! allowed), serve the chosen services with their background work, and stop
//! gracefully.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use partnerhub_account::AccountService;
use partnerhub_partner_change::PartnerChangeService;
use partnerhub_permissions::PermissionsService;
use partnerhub_runtime::{
    auth::{Authenticator, KeyError, Subject, TokenKeys},
    config::{ConfigError, PeerSettings, SectionReader, Settings},
    db,
    metrics::serve_metrics,
    server::{Host, ServeError, bind, read_pem},
    service::{PeerDirectory, Service, ServiceContext, ServiceDefinition, StartError},
};
use partnerhub_webhooks::WebhooksService;
use sea_orm::{DatabaseConnection, DbErr};
use tokio::task::JoinHandle;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// Every service this binary has, in the order their migrations run (and a
/// process serves them). Adding a service is one crate and one line here.
pub const SERVICES: &[&dyn Service] = &[&AccountService, &PartnerChangeService, &PermissionsService, &WebhooksService];

/// The service named `name` (`partner-change`), if this binary has it.
pub fn service_named(name: &str) -> Option<&'static dyn Service> {
    SERVICES.iter().copied().find(|service| service.name() == name)
}

/// Every service's settings section, for [`Settings::load`].
pub fn section_readers() -> Vec<&'static dyn SectionReader> {
    SERVICES.iter().map(|service| *service as &dyn SectionReader).collect()
}

/// How a process running `services` is named in traces: `partnerhub-<service>`
/// for one service, `partnerhub` for several.
pub fn process_name(services: &[&dyn Service]) -> String {
    match services {
        [one] => format!("partnerhub-{}", one.name()),
        _ => "partnerhub".to_owned(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("cannot open the database: {0}")]
    Database(DbErr),
    #[error("cannot migrate the database: {0}")]
    Migration(DbErr),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error("cannot read the bound address: {0}")]
    LocalAddr(std::io::Error),
    #[error("cannot start the {service} service: {source}")]
    Service { service: &'static str, source: Box<StartError> },
}

#[derive(Debug, thiserror::Error)]
pub enum StopError {
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error("in-flight calls and background tasks did not finish within {0:?}")]
    Timeout(Duration),
    #[error("the server task panicked")]
    Panicked,
}

/// A running Partner Hub process (or, in tests, a running in-process server).
#[derive(Debug)]
pub struct Application {
    local_addr: SocketAddr,
    /// Cancelled to stop: by a signal, by [`Application::stop`], or by the server failing.
    shutdown: CancellationToken,
    /// The gRPC server; it returns once shutdown is requested and calls have drained.
    server: JoinHandle<Result<(), ServeError>>,
    /// Every service's background tasks, and the process's own; stopped by `shutdown`.
    tasks: TaskTracker,
    /// What the services exposed of themselves (see [`Application::handle`]).
    handles: http::Extensions,
    shutdown_grace: Duration,
}

/// Opens the database and applies the migrations of every service, so that a
/// single service's process also finds the shared tables it reads.
pub async fn open_database(settings: &Settings) -> Result<DatabaseConnection, StartupError> {
    let db = db::connect(settings).await.map_err(StartupError::Database)?;
    for service in SERVICES {
        service.migrate(&db).await.map_err(StartupError::Migration)?;
    }
    Ok(db)
}

/// The identity entrusted with the migration calls: configured, or this
/// binary's partner-change service.
fn migration_service(settings: &Settings) -> Subject {
    settings
        .auth
        .migration_service
        .as_deref()
        .and_then(|subject| subject.parse().ok())
        .unwrap_or_else(|| Subject::Service(PartnerChangeService::NAME.to_owned()))
}

/// Refuses `peers.<name>_urls` for a service this binary does not have.
fn check_peer_names(settings: &Settings) -> Result<(), ConfigError> {
    let unknown = settings
        .peers
        .urls
        .keys()
        .find(|key| !SERVICES.iter().any(|service| PeerSettings::urls_key(service.name()) == **key));
    match unknown {
        Some(key) => Err(ConfigError::invalid(format!("peers.{key}"), "names no service of this binary")),
        None => Ok(()),
    }
}

impl Application {
    /// Starts serving `services` as `settings` say, and returns once the port is bound.
    pub async fn start(settings: &Settings, services: &[&'static dyn Service]) -> Result<Self, StartupError> {
        // Settings built in code (tests, embedders) are checked as a file's would be.
        settings.validate()?;
        check_peer_names(settings)?;
        let keys = Arc::new(TokenKeys::load_or_generate(settings)?);
        keys.warm_up().await;
        let db = open_database(settings).await?;
        let listener = bind(settings.server.listen_addr).await?;
        let local_addr = listener.local_addr().map_err(StartupError::LocalAddr)?;
        let metrics_listener = match settings.telemetry.metrics_listen_addr {
            Some(addr) => {
                let listener = bind(addr).await?;
                let addr = listener.local_addr().map_err(StartupError::LocalAddr)?;
                tracing::info!(%addr, "serving metrics at /metrics");
                Some(listener)
            }
            None => None,
        };
        let loopback = SocketAddr::from(([127, 0, 0, 1], local_addr.port()));
        let own_addr = if local_addr.ip().is_unspecified() { loopback } else { local_addr };
        let tls = settings.server.tls.cert_file.is_some();
        let ca_file = settings.peers.ca_file.as_ref().or(settings.server.tls.cert_file.as_ref());
        let ca = match ca_file {
            Some(path) => Some(tonic::transport::Certificate::from_pem(read_pem(path)?)),
            None => None,
        };
        let scheme = if tls { "https" } else { "http" };
        let peers = PeerDirectory { keys: keys.clone(), own_url: format!("{scheme}://{own_addr}"), ca };

        let authenticator = Authenticator::new(keys, migration_service(settings));
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let mut handles = http::Extensions::new();
        let mut host = Host::new(&settings.server)?;
        for service in services {
            let mut context = ServiceContext::new(
                db.clone(),
                settings,
                authenticator.clone(),
                &tasks,
                shutdown.clone(),
                &mut host,
                &peers,
                &mut handles,
            );
            if let Err(source) = service.start(&mut context).await {
                shutdown.cancel();
                return Err(StartupError::Service { service: service.name(), source: Box::new(source) });
            }
        }

        let (database_ready, ready) = tokio::sync::watch::channel(true);
        let server = tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                let served = host.serve(listener, shutdown.clone(), ready).await;
                if let Err(err) = &served {
                    tracing::error!(error = %err, "the gRPC server stopped with an error");
                    shutdown.cancel();
                }
                served
            }
        });
        tasks.spawn(db::watch_database(db.clone(), settings.database.clone(), database_ready, shutdown.clone()));
        if let Some(listener) = metrics_listener {
            let shutdown = shutdown.clone();
            tasks.spawn(async move {
                if let Err(err) = serve_metrics(listener, shutdown).await {
                    tracing::error!(error = %err, "the metrics endpoint stopped");
                }
            });
        }
        let names: Vec<&str> = services.iter().map(|service| service.name()).collect();
        tracing::info!(%local_addr, services = ?names, "serving");
        Ok(Self { local_addr, shutdown, server, tasks, handles, shutdown_grace: settings.server.shutdown_grace })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Cancel it to stop the application from elsewhere.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// A handle a started service exposed (the partner-change service's
    /// migration worker, for one), to drive its background work in tests.
    pub fn handle<T: Send + Sync + 'static>(&self) -> Option<&T> {
        self.handles.get::<T>()
    }

    /// Serves until SIGINT/SIGTERM (or until the server fails), then stops gracefully.
    pub async fn run_until_stopped(self) -> Result<(), StopError> {
        tokio::select! {
            () = partnerhub_runtime::server::shutdown_signal() => tracing::info!("shutdown requested"),
            () = self.shutdown.cancelled() => {}
        }
        self.stop().await
    }

    /// Tells everyone to stop, then waits for everyone: the server stops
    /// accepting and finishes in-flight calls, background tasks finish their
    /// current step. Gives up after the configured grace period.
    pub async fn stop(self) -> Result<(), StopError> {
        self.shutdown.cancel();
        self.tasks.close();
        let grace = self.shutdown_grace;
        let drained = async {
            let served = self.server.await.map_err(|_| StopError::Panicked)?;
            self.tasks.wait().await;
            served.map_err(StopError::from)
        };
        let stopped = tokio::time::timeout(grace, drained).await.map_err(|_| StopError::Timeout(grace))?;
        tracing::info!("stopped");
        stopped
    }
}
