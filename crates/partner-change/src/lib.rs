//! The partner-change service: the shared partner change request table, its
//! event log, the approval workflow and the migration saga.
//!
//! - [`grpc`]: the boundary (parse → authorize → gather facts → decide → write);
//! - [`domain`]: states, events, transitions and every refusal rule, no I/O;
//! - [`facts`]: what the rules need, asked of the account service;
//! - [`store`]: conditional writes with their events (transactional outbox);
//! - [`worker`]: the migration saga and the expiry sweeper;
//! - [`stream`]: the event stream: one tailer per process, replay then live per subscriber;
//! - [`error`]: the one error type, its own error reasons and its mapping to `Status`;
//! - [`settings`] and [`metrics`]: its section of the settings tree and its series.

pub mod domain;
pub mod error;
pub mod facts;
pub mod grpc;
pub mod metrics;
pub mod settings;
pub mod store;
pub mod stream;
pub mod worker;

use std::{sync::Arc, time::Duration};

use partnerhub_proto::partnerchange::v1::encoded::partner_change_service_server::PartnerChangeServiceServer;
use partnerhub_runtime::{
    auth::Authenticated,
    ids::new_id,
    service::{ServiceContext, ServiceDefinition, StartError},
};
use sea_orm::{DatabaseConnection, DbErr};
use tokio::sync::Notify;

use crate::{
    facts::Accounts, grpc::PartnerChangeApi, settings::PartnerChangeSettings, stream::EventHub, worker::MigrationWorker,
};

pub use store::migrate;

/// How often the requests-by-state gauge counts the request table.
const STATE_GAUGE_INTERVAL: Duration = Duration::from_secs(5);
/// Events the process's broadcast holds for live subscribers.
const EVENT_HUB_CAPACITY: usize = 4096;

/// The partner-change service: its API, and on every replica the event
/// tailer, the event log's pruner, the expiry sweeper, the state gauge and the
/// migration worker loops.
#[derive(Debug, Clone, Copy)]
pub struct PartnerChangeService;

impl ServiceDefinition for PartnerChangeService {
    const NAME: &'static str = "partner-change";
    type Settings = PartnerChangeSettings;

    async fn migrate(db: &DatabaseConnection) -> Result<(), DbErr> {
        store::migrate(db).await
    }

    /// Exposes the [`MigrationWorker`] (tests drive the saga step by step through it).
    async fn start(context: &mut ServiceContext<'_>, settings: PartnerChangeSettings) -> Result<(), StartError> {
        metrics::metrics();
        let accounts = Accounts::new(context.peer("account")?);
        let permissions = context.peer("permissions")?;
        let worker_wake = Arc::new(Notify::new());
        let events = EventHub::new(EVENT_HUB_CAPACITY, context.token_seal());
        let (db, shutdown, tasks) = (context.db.clone(), context.shutdown.clone(), context.tasks);

        let api = PartnerChangeApi::new(
            db.clone(),
            accounts.clone(),
            &settings,
            worker_wake.clone(),
            events.clone(),
            shutdown.clone(),
            context.token_seal(),
        );
        let server = PartnerChangeServiceServer::new(api).max_decoding_message_size(context.max_message_bytes());
        context.serve(Authenticated::new(server, context.authenticator.clone(), grpc::POLICY));

        tasks.spawn(stream::run_tailer(
            db.clone(),
            events.clone(),
            settings.stream.clone(),
            context.notification_url(),
            shutdown.clone(),
        ));
        tasks.spawn(partnerhub_runtime::retention::run_pruner(
            db.clone(),
            store::EVENT_LOG,
            context.settings.retention.clone(),
            shutdown.clone(),
        ));
        tasks.spawn(worker::run_state_gauge(db.clone(), STATE_GAUGE_INTERVAL, shutdown.clone()));
        tasks.spawn(worker::run_expiry_sweeper(
            db.clone(),
            settings.expiry_sweep_interval,
            events.committed(),
            shutdown.clone(),
        ));
        let worker = MigrationWorker::new(
            db,
            accounts,
            permissions,
            settings.worker.clone(),
            new_id("worker"),
            worker_wake,
            events.committed(),
        );
        if settings.worker.enabled {
            tasks.spawn(worker.clone().run(shutdown.clone()));
        }
        context.expose(worker);
        Ok(())
    }
}
