//! The webhooks service: partner change events POSTed to the HTTPS endpoints
//! partners and clients register, signed per the Standard Webhooks specification.
//!
//! - [`grpc`]: the boundary (endpoints, secrets, deliveries);
//! - [`follower`]: one replica at a time follows the event stream and records
//!   a delivery per event and matching endpoint;
//! - [`dispatcher`]: every replica sends due deliveries and retries them on schedule;
//! - [`address`]: where a webhook may be sent (SSRF);
//! - [`signing`]: secrets and signatures;
//! - [`domain`]: the types and the body, no I/O;
//! - [`store`]: endpoints, deliveries, attempts and the follower's cursor;
//! - [`error`], [`settings`] and [`metrics`].

pub mod address;
pub mod dispatcher;
pub mod domain;
pub mod error;
pub mod follower;
pub mod grpc;
pub mod metrics;
pub mod settings;
pub mod signing;
pub mod store;

use std::sync::Arc;

use partnerhub_proto::webhooks::v1::webhook_service_server::WebhookServiceServer;
use partnerhub_runtime::{
    auth::Authenticated,
    config::ConfigError,
    service::{ServiceContext, ServiceDefinition, StartError},
};
use sea_orm::{DatabaseConnection, DbErr};

use crate::{
    address::AddressPolicy, dispatcher::Dispatcher, follower::Follower, grpc::WebhooksApi, settings::WebhooksSettings,
};

pub use store::migrate;

/// The webhooks service: its API, the follower of the event stream and the dispatcher.
#[derive(Debug, Clone, Copy)]
pub struct WebhooksService;

impl ServiceDefinition for WebhooksService {
    const NAME: &'static str = "webhooks";
    type Settings = WebhooksSettings;

    async fn migrate(db: &DatabaseConnection) -> Result<(), DbErr> {
        store::migrate(db).await
    }

    async fn start(context: &mut ServiceContext<'_>, settings: WebhooksSettings) -> Result<(), StartError> {
        metrics::metrics();
        let account = context.peer("account")?;
        let partner_change = context.peer("partner-change")?;
        let wake = Arc::new(tokio::sync::Notify::new());
        let addresses =
            AddressPolicy { allow_http: settings.allow_http, allow_private_networks: settings.allow_private_networks };
        let dispatcher = Dispatcher::new(context.db.clone(), settings.clone(), wake.clone())
            .map_err(|err| ConfigError::invalid("webhooks", err.to_string()))?;
        context.tasks.spawn(dispatcher.run(context.shutdown.clone()));
        let follower = Follower::new(context.db.clone(), partner_change, &settings, wake.clone());
        context.tasks.spawn(follower.run(context.shutdown.clone()));
        let api = WebhooksApi::new(
            context.db.clone(),
            account,
            addresses,
            context.token_seal(),
            wake,
            settings.max_endpoints_per_owner,
        );
        let server = WebhookServiceServer::new(api).max_decoding_message_size(context.max_message_bytes());
        context.serve(Authenticated::new(server, context.authenticator.clone(), grpc::POLICY));
        Ok(())
    }
}
