//! One start-up path for production and tests: connect, migrate, bind (port 0
//! allowed), serve the chosen services with their background work, and stop
//! gracefully.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use partnerhub_partner_change::{
    facts::Accounts,
    grpc::PartnerChangeApi,
    stream::{EventHub, run_tailer},
    worker::MigrationWorker,
};
use partnerhub_permissions::cache::{CacheSettings, PermissionCache};
use partnerhub_runtime::{
    auth::{Authenticator, KeyError, TokenKeys},
    config::Settings,
    db,
    ids::new_id,
    metrics::serve_metrics,
    peers::{InvalidPeerUrl, Peer, PeerOptions},
    server::{Host, ServeError, bind},
};
use sea_orm::{DatabaseConnection, DbErr};
use tokio::{sync::Notify, task::JoinHandle};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// How often the requests-by-state gauge counts the request table.
const STATE_GAUGE_INTERVAL: Duration = Duration::from_secs(5);

/// A service this binary can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum ServiceName {
    Account,
    PartnerChange,
    Permissions,
}

impl ServiceName {
    pub const ALL: &[ServiceName] = &[ServiceName::Account, ServiceName::PartnerChange, ServiceName::Permissions];

    /// How a process running `services` is named in traces: `partnerhub-<service>`
    /// for one service, `partnerhub` for several.
    pub fn process_name(services: &[ServiceName]) -> String {
        match services {
            [one] => format!("partnerhub-{}", one.subject_name()),
            _ => "partnerhub".to_owned(),
        }
    }

    /// The subject this service's calls to its peers carry.
    pub(crate) fn subject_name(self) -> &'static str {
        match self {
            ServiceName::Account => "account",
            ServiceName::PartnerChange => "partner-change",
            ServiceName::Permissions => "permissions",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Config(#[from] partnerhub_runtime::config::ConfigError),
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
    #[error(transparent)]
    Peer(#[from] InvalidPeerUrl),
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
    /// The migration worker loops, the expiry sweeper, the event tailer and the
    /// permission cache's follower; stopped by `shutdown`.
    tasks: TaskTracker,
    /// This process's migration worker, when it serves the partner-change service.
    migration_worker: Option<MigrationWorker>,
    shutdown_grace: Duration,
}

/// Opens the database and applies the migrations of every service, so that a
/// single service's process also finds the shared tables it reads.
pub async fn open_database(settings: &Settings) -> Result<DatabaseConnection, StartupError> {
    let db = db::connect(settings).await.map_err(StartupError::Database)?;
    partnerhub_account::migrate(&db).await.map_err(StartupError::Migration)?;
    partnerhub_partner_change::migrate(&db).await.map_err(StartupError::Migration)?;
    partnerhub_permissions::migrate(&db).await.map_err(StartupError::Migration)?;
    Ok(db)
}

/// Where this process's peers are: configured, or this process itself.
struct Peers {
    keys: Arc<TokenKeys>,
    own_url: String,
    settings: Settings,
}

impl Peers {
    fn peer(&self, configured: &[String], caller: ServiceName) -> Result<Peer, InvalidPeerUrl> {
        let options = PeerOptions {
            keys: self.keys.clone(),
            caller: caller.subject_name().to_owned(),
            call_timeout: self.settings.peers.call_timeout,
        };
        if configured.is_empty() {
            Peer::new(std::slice::from_ref(&self.own_url), &options)
        } else {
            Peer::new(configured, &options)
        }
    }

    fn account(&self, caller: ServiceName) -> Result<Peer, InvalidPeerUrl> {
        self.peer(&self.settings.peers.account_urls, caller)
    }

    fn permissions(&self, caller: ServiceName) -> Result<Peer, InvalidPeerUrl> {
        self.peer(&self.settings.peers.permissions_urls, caller)
    }
}

impl Application {
    /// Starts serving `services` as `settings` say, and returns once the port is bound.
    pub async fn start(settings: &Settings, services: &[ServiceName]) -> Result<Self, StartupError> {
        // Settings built in code (tests, embedders) are checked as a file's would be.
        settings.validate()?;
        let keys = Arc::new(TokenKeys::load_or_generate(settings)?);
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
        let peers = Peers { keys: keys.clone(), own_url: format!("http://{own_addr}"), settings: settings.clone() };

        let authenticator = Authenticator::new(keys);
        let max_message_bytes = settings.server.max_message_bytes;
        let worker_wake = Arc::new(Notify::new());
        let events = EventHub::new(4096);
        let shutdown = CancellationToken::new();
        let mut migration_worker = None;
        let mut permission_cache = None;
        let mut watched_peers = Vec::new();
        let mut host = Host::new(max_message_bytes)?;
        for service in services {
            match service {
                ServiceName::Account => {
                    host.add_service(partnerhub_account::service(db.clone(), authenticator.clone(), max_message_bytes));
                }
                ServiceName::PartnerChange => {
                    let account = peers.account(*service)?;
                    let permissions = peers.permissions(*service)?;
                    watched_peers.extend([account.clone(), permissions.clone()]);
                    let accounts = Accounts::new(account);
                    let api = PartnerChangeApi::new(
                        db.clone(),
                        accounts.clone(),
                        &settings.partner_change,
                        worker_wake.clone(),
                        events.clone(),
                        shutdown.clone(),
                    );
                    host.add_service(partnerhub_partner_change::service(api, authenticator.clone(), max_message_bytes));
                    migration_worker = Some(MigrationWorker::new(
                        db.clone(),
                        accounts,
                        permissions,
                        settings.partner_change.worker.clone(),
                        new_id("worker"),
                        worker_wake.clone(),
                        events.committed(),
                    ));
                }
                ServiceName::Permissions => {
                    let account = peers.account(*service)?;
                    watched_peers.push(account.clone());
                    let cache = PermissionCache::new(
                        db.clone(),
                        CacheSettings {
                            poll_interval: settings.permissions.cache_poll_interval,
                            trust_window: settings.permissions.cache_trust_window,
                        },
                    );
                    // Load the grants before serving, so the first checks come from memory.
                    if let Err(err) = cache.sync().await {
                        tracing::warn!(error = %err, "cannot load the permission cache yet; checks go to the database");
                    }
                    permission_cache = Some(cache.clone());
                    host.add_service(partnerhub_permissions::service(
                        db.clone(),
                        account,
                        cache,
                        authenticator.clone(),
                        max_message_bytes,
                    ));
                }
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
        let tasks = TaskTracker::new();
        tasks.spawn(db::watch_database(db.clone(), settings.database.clone(), database_ready, shutdown.clone()));
        if let Some(listener) = metrics_listener {
            let shutdown = shutdown.clone();
            tasks.spawn(async move {
                if let Err(err) = serve_metrics(listener, shutdown).await {
                    tracing::error!(error = %err, "the metrics endpoint stopped");
                }
            });
        }
        for peer in watched_peers {
            tasks.spawn(peer.watch_health(settings.peers.health_check_interval, shutdown.clone()));
        }
        if let Some(worker) = &migration_worker {
            let postgres_url = (!settings.uses_embedded_database()).then(|| settings.database_url());
            tasks.spawn(run_tailer(
                db.clone(),
                events.clone(),
                settings.partner_change.stream.clone(),
                postgres_url,
                shutdown.clone(),
            ));
            tasks.spawn(partnerhub_partner_change::worker::run_state_gauge(
                db.clone(),
                STATE_GAUGE_INTERVAL,
                shutdown.clone(),
            ));
            tasks.spawn(partnerhub_partner_change::worker::run_expiry_sweeper(
                db.clone(),
                settings.partner_change.expiry_sweep_interval,
                events.committed(),
                shutdown.clone(),
            ));
            if settings.partner_change.worker.enabled {
                for slot in 0..settings.partner_change.worker.concurrency {
                    let owner = format!("{}-{slot}", new_id("worker"));
                    tasks.spawn(worker.replica(&owner).run(shutdown.clone()));
                }
            }
        }
        if let Some(cache) = permission_cache {
            let postgres_url = (!settings.uses_embedded_database()).then(|| settings.database_url());
            tasks.spawn(cache.follow(postgres_url, shutdown.clone()));
        }
        tracing::info!(%local_addr, ?services, "serving");
        Ok(Self {
            local_addr,
            shutdown,
            server,
            tasks,
            migration_worker,
            shutdown_grace: settings.server.shutdown_grace,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Cancel it to stop the application from elsewhere.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// This process's migration worker (to drive it step by step in tests).
    pub fn migration_worker(&self) -> Option<&MigrationWorker> {
        self.migration_worker.as_ref()
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
