//! One start-up path for production and tests: connect, migrate, bind (port 0
//! allowed), serve the chosen services, and stop gracefully.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use partnerhub_runtime::{
    auth::{Authenticator, KeyError, TokenKeys},
    config::Settings,
    db,
    server::{Host, ServeError, bind},
};
use sea_orm::{DatabaseConnection, DbErr};
use tokio::task::JoinHandle;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// A service this binary can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum ServiceName {
    Account,
}

impl ServiceName {
    pub const ALL: &[ServiceName] = &[ServiceName::Account];
}

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
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
}

#[derive(Debug, thiserror::Error)]
pub enum StopError {
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error("in-flight calls did not finish within {0:?}")]
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
    /// Background work (none yet beyond the server); stopped by `shutdown`.
    tasks: TaskTracker,
    shutdown_grace: Duration,
}

/// Opens the database and applies the migrations of every service, so that a
/// single service's process also finds the shared tables it reads.
pub async fn open_database(settings: &Settings) -> Result<DatabaseConnection, StartupError> {
    let db = db::connect(settings).await.map_err(StartupError::Database)?;
    partnerhub_account::migrate(&db).await.map_err(StartupError::Migration)?;
    Ok(db)
}

impl Application {
    /// Starts serving `services` as `settings` say, and returns once the port is bound.
    pub async fn start(settings: &Settings, services: &[ServiceName]) -> Result<Self, StartupError> {
        let keys = Arc::new(TokenKeys::load_or_generate(settings)?);
        let db = open_database(settings).await?;
        let listener = bind(settings.server.listen_addr).await?;
        let local_addr = listener.local_addr().map_err(StartupError::LocalAddr)?;

        let authenticator = Authenticator::new(keys);
        let max_message_bytes = settings.server.max_message_bytes;
        let mut host = Host::new(max_message_bytes)?;
        for service in services {
            match service {
                ServiceName::Account => {
                    host.add_service(partnerhub_account::service(db.clone(), authenticator.clone(), max_message_bytes))
                }
            };
        }

        let shutdown = CancellationToken::new();
        let server = tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                let served = host.serve(listener, shutdown.clone()).await;
                if let Err(err) = &served {
                    tracing::error!(error = %err, "the gRPC server stopped with an error");
                    shutdown.cancel();
                }
                served
            }
        });
        tracing::info!(%local_addr, ?services, "serving");
        Ok(Self {
            local_addr,
            shutdown,
            server,
            tasks: TaskTracker::new(),
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

    /// Serves until SIGINT/SIGTERM (or until the server fails), then stops gracefully.
    pub async fn run_until_stopped(self) -> Result<(), StopError> {
        tokio::select! {
            () = partnerhub_runtime::server::shutdown_signal() => tracing::info!("shutdown requested"),
            () = self.shutdown.cancelled() => {}
        }
        self.stop().await
    }

    /// Tells everyone to stop, then waits for everyone: the server stops
    /// accepting and finishes in-flight calls, background tasks end. Gives up
    /// after the configured grace period.
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
