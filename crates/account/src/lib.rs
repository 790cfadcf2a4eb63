//! The account service: clients (company info, payment methods, payment
//! processor, legacy flag), partners and their settings, WABAs and their phone
//! numbers, and the WABA-to-partner association.
//!
//! - [`grpc`]: the boundary (parse → authorize → store → map);
//! - [`domain`]: the types and rules, no I/O;
//! - [`store`]: sea-orm entities, queries and migrations;
//! - [`error`]: the one error type and its mapping to `Status`.

pub mod domain;
pub mod error;
pub mod grpc;
pub mod store;

use partnerhub_proto::account::v1::account_service_server::AccountServiceServer;
use partnerhub_runtime::auth::Authenticator;
use sea_orm::DatabaseConnection;
use tonic::service::interceptor::InterceptedService;

/// The account service as the host serves it: authenticated, size-limited.
pub fn service(
    db: DatabaseConnection,
    authenticator: Authenticator,
    max_message_bytes: usize,
) -> InterceptedService<AccountServiceServer<grpc::AccountApi>, Authenticator> {
    let server = AccountServiceServer::new(grpc::AccountApi::new(db)).max_decoding_message_size(max_message_bytes);
    InterceptedService::new(server, authenticator)
}

pub use store::migrate;
