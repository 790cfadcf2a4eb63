//! What a service is to the process that runs it. A service crate implements
//! [`ServiceDefinition`]: its name, its settings section, its migrations, and
//! one `start` that adds its routes to the host and spawns its background
//! tasks. The binary lists the services it has; a process starts the selected
//! ones in a loop, each with the same [`ServiceContext`]. The runtime never
//! names a service.

use std::{future::Future, pin::Pin, sync::Arc};

use sea_orm::{DatabaseConnection, DbErr};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    auth::{Authenticator, TokenKeys},
    config::{ConfigError, Section, SectionReader, ServiceSettings, Settings, read_section},
    pagination::TokenSeal,
    peers::{InvalidPeerUrl, Peer, PeerOptions},
    server::{Host, Servable},
};

/// A boxed future, for the object-safe [`Service`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A service, as a crate defines it.
pub trait ServiceDefinition: Send + Sync + 'static {
    /// `partner-change`: on the command line, in the subject of its calls to
    /// peers (`service:partner-change`), and in its process's name.
    const NAME: &'static str;
    /// Its own section of the settings tree.
    type Settings: ServiceSettings;

    /// Applies its migrations (idempotent; concurrent processes take turns).
    fn migrate(db: &DatabaseConnection) -> impl Future<Output = Result<(), DbErr>> + Send;

    /// Adds its routes to the host and spawns its background tasks on the
    /// context's tracker, stopped by its shutdown token.
    fn start(
        context: &mut ServiceContext<'_>,
        settings: Self::Settings,
    ) -> impl Future<Output = Result<(), StartError>> + Send;
}

/// A service without its types, as the binary lists them.
pub trait Service: SectionReader {
    fn name(&self) -> &'static str;
    fn migrate<'a>(&'a self, db: &'a DatabaseConnection) -> BoxFuture<'a, Result<(), DbErr>>;
    fn start<'a, 'c>(&'a self, context: &'a mut ServiceContext<'c>) -> BoxFuture<'a, Result<(), StartError>>
    where
        'c: 'a;
}

impl<T: ServiceDefinition> SectionReader for T {
    fn section(&self) -> &'static str {
        T::Settings::SECTION
    }

    fn read_section(&self, raw: config::Value) -> Result<Box<dyn Section>, ConfigError> {
        read_section::<T::Settings>(raw)
    }
}

impl<T: ServiceDefinition> Service for T {
    fn name(&self) -> &'static str {
        T::NAME
    }

    fn migrate<'a>(&'a self, db: &'a DatabaseConnection) -> BoxFuture<'a, Result<(), DbErr>> {
        Box::pin(T::migrate(db))
    }

    fn start<'a, 'c>(&'a self, context: &'a mut ServiceContext<'c>) -> BoxFuture<'a, Result<(), StartError>>
    where
        'c: 'a,
    {
        let settings = context.settings.section::<T::Settings>();
        context.caller = T::NAME;
        Box::pin(T::start(context, settings))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Peer(#[from] InvalidPeerUrl),
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// How this process reaches other services: the configured replicas, or
/// itself when none are configured (every service in one process).
#[derive(Debug, Clone)]
pub struct PeerDirectory {
    pub keys: Arc<TokenKeys>,
    /// This process's own address, `http://127.0.0.1:50051` (`https://` with TLS).
    pub own_url: String,
    /// What `https://` peers' certificates are checked against.
    pub ca: Option<tonic::transport::Certificate>,
}

/// What every service is started with: what the process shares.
pub struct ServiceContext<'a> {
    pub db: DatabaseConnection,
    /// The whole tree (a service reads the shared sections from it; its own
    /// section is handed to `start` typed).
    pub settings: &'a Settings,
    pub authenticator: Authenticator,
    /// Background tasks: spawn here, stop when `shutdown` is cancelled.
    pub tasks: &'a TaskTracker,
    pub shutdown: CancellationToken,
    host: &'a mut Host,
    peers: &'a PeerDirectory,
    handles: &'a mut http::Extensions,
    /// The service being started.
    caller: &'static str,
}

impl std::fmt::Debug for ServiceContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceContext").field("caller", &self.caller).finish_non_exhaustive()
    }
}

impl<'a> ServiceContext<'a> {
    #[allow(clippy::too_many_arguments)] // assembled in one place, the process's start-up
    pub fn new(
        db: DatabaseConnection,
        settings: &'a Settings,
        authenticator: Authenticator,
        tasks: &'a TaskTracker,
        shutdown: CancellationToken,
        host: &'a mut Host,
        peers: &'a PeerDirectory,
        handles: &'a mut http::Extensions,
    ) -> Self {
        Self { db, settings, authenticator, tasks, shutdown, host, peers, handles, caller: "" }
    }

    /// Serves `service` (a generated server, behind the authenticator).
    pub fn serve(&mut self, service: impl Servable) {
        self.host.add_service(service);
    }

    /// The largest request message a generated server may decode.
    pub fn max_message_bytes(&self) -> usize {
        self.settings.server.max_message_bytes
    }

    /// Every replica of the service named `service` (`peers.<service>_urls`,
    /// or this process), its calls signed as the service being started; its
    /// replicas are health-checked until shutdown.
    pub fn peer(&self, service: &str) -> Result<Peer, StartError> {
        let options = PeerOptions {
            keys: self.peers.keys.clone(),
            ca: self.peers.ca.clone(),
            caller: self.caller.to_owned(),
            call_timeout: self.settings.peers.call_timeout,
        };
        let configured = self.settings.peers.urls_of(service);
        let peer = if configured.is_empty() {
            Peer::new(std::slice::from_ref(&self.peers.own_url), &options)?
        } else {
            Peer::new(configured, &options)?
        };
        self.tasks.spawn(peer.clone().watch_health(self.settings.peers.health_check_interval, self.shutdown.clone()));
        Ok(peer)
    }

    /// The seal of page tokens and cursors (every replica shares it).
    pub fn token_seal(&self) -> TokenSeal {
        self.peers.keys.token_seal().clone()
    }

    /// Where PostgreSQL notifications are listened for; `None` on SQLite,
    /// which has none (a poll interval covers it).
    pub fn notification_url(&self) -> Option<String> {
        (!self.settings.uses_embedded_database()).then(|| self.settings.database_url())
    }

    /// Makes `handle` reachable from the running application (tests drive a
    /// service's background work through such handles).
    pub fn expose<T: Clone + Send + Sync + 'static>(&mut self, handle: T) {
        self.handles.insert(handle);
    }
}
