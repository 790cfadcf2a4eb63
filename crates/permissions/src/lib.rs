//! The permissions service: which partner may manage which phone number.
//!
//! - [`grpc`]: the boundary; it asks the account service which WABA (and so
//!   which partner) each number is on;
//! - [`cache`]: every grant in memory, following the permission log, for `CheckPermission`;
//! - [`domain`]: the types, no I/O;
//! - [`store`]: grants, fences, idempotency records and the audit log;
//! - [`error`]: the one error type, its own error reasons and its mapping to `Status`;
//! - [`settings`] and [`metrics`]: its section of the settings tree and its series.

pub mod cache;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod metrics;
pub mod settings;
pub mod store;

use partnerhub_proto::permissions::v1::permissions_service_server::PermissionsServiceServer;
use partnerhub_runtime::{
    auth::Authenticated,
    service::{ServiceContext, ServiceDefinition, StartError},
};
use sea_orm::{DatabaseConnection, DbErr};

use crate::{cache::PermissionCache, grpc::PermissionsApi, settings::PermissionsSettings};

pub use store::migrate;

/// The permissions service: its API, the cache of every grant that follows
/// the permission log on every replica, and the permission log's pruner.
#[derive(Debug, Clone, Copy)]
pub struct PermissionsService;

impl ServiceDefinition for PermissionsService {
    const NAME: &'static str = "permissions";
    type Settings = PermissionsSettings;

    async fn migrate(db: &DatabaseConnection) -> Result<(), DbErr> {
        store::migrate(db).await
    }

    async fn start(context: &mut ServiceContext<'_>, settings: PermissionsSettings) -> Result<(), StartError> {
        metrics::metrics();
        let account = context.peer("account")?;
        let cache = PermissionCache::new(context.db.clone(), settings);
        // Load the grants before serving, so the first checks come from memory.
        if let Err(err) = cache.sync().await {
            tracing::warn!(error = %err, "cannot load the permission cache yet; checks go to the database");
        }
        context.tasks.spawn(cache.clone().follow(context.notification_url(), context.shutdown.clone()));
        context.tasks.spawn(partnerhub_runtime::retention::run_pruner(
            context.db.clone(),
            store::PERMISSION_LOG,
            context.settings.retention.clone(),
            context.shutdown.clone(),
        ));
        let api = PermissionsApi::new(context.db.clone(), account, cache, context.token_seal());
        let server = PermissionsServiceServer::new(api).max_decoding_message_size(context.max_message_bytes());
        context.serve(Authenticated::new(server, context.authenticator.clone(), grpc::POLICY));
        Ok(())
    }
}
