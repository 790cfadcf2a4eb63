//! The permissions service: which partner may manage which phone number.
//!
//! - [`grpc`]: the boundary; it asks the account service which WABA (and so
//!   which partner) each number is on;
//! - [`cache`]: every grant in memory, following the permission log, for `CheckPermission`;
//! - [`domain`]: the types, no I/O;
//! - [`store`]: grants, fences, idempotency records and the audit log;
//! - [`error`]: the one error type and its mapping to `Status`.

pub mod cache;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod store;

use partnerhub_proto::permissions::v1::permissions_service_server::PermissionsServiceServer;
use partnerhub_runtime::{auth::Authenticator, peers::Peer};
use sea_orm::DatabaseConnection;
use tonic::service::interceptor::InterceptedService;

/// The permissions service as the host serves it: authenticated, size-limited.
pub fn service(
    db: DatabaseConnection,
    account: Peer,
    cache: std::sync::Arc<cache::PermissionCache>,
    authenticator: Authenticator,
    max_message_bytes: usize,
) -> InterceptedService<PermissionsServiceServer<grpc::PermissionsApi>, Authenticator> {
    let server = PermissionsServiceServer::new(grpc::PermissionsApi::new(db, account, cache))
        .max_decoding_message_size(max_message_bytes);
    InterceptedService::new(server, authenticator)
}

pub use store::migrate;
