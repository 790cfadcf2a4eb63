//! The account service: clients (company info, payment methods, payment
//! processor, legacy flag), partners and their settings, WABAs and their phone
//! numbers, and the WABA-to-partner association.
//!
//! - [`grpc`]: the boundary (parse → authorize → store → map);
//! - [`domain`]: the types and rules, no I/O;
//! - [`store`]: sea-orm entities, queries and migrations;
//! - [`error`]: the one error type, its own error reasons and its mapping to `Status`.

pub mod domain;
pub mod error;
pub mod grpc;
pub mod store;

use partnerhub_proto::account::v1::account_service_server::AccountServiceServer;
use partnerhub_runtime::{
    auth::Authenticated,
    config::ServiceSettings,
    service::{ServiceContext, ServiceDefinition, StartError},
};
use sea_orm::{DatabaseConnection, DbErr};
use serde::Deserialize;

pub use store::migrate;

/// The account service: its API only (it has no background work and calls no peer).
#[derive(Debug, Clone, Copy)]
pub struct AccountService;

/// `[account]`: nothing to set yet; the section exists so that a key put
/// there by mistake is refused rather than ignored.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccountSettings {}

impl ServiceSettings for AccountSettings {
    const SECTION: &'static str = "account";
}

impl ServiceDefinition for AccountService {
    const NAME: &'static str = "account";
    type Settings = AccountSettings;

    async fn migrate(db: &DatabaseConnection) -> Result<(), DbErr> {
        store::migrate(db).await
    }

    async fn start(context: &mut ServiceContext<'_>, _settings: AccountSettings) -> Result<(), StartError> {
        let server = AccountServiceServer::new(grpc::AccountApi::new(context.db.clone(), context.token_seal()))
            .max_decoding_message_size(context.max_message_bytes());
        context.serve(Authenticated::new(server, context.authenticator.clone(), grpc::POLICY));
        Ok(())
    }
}
