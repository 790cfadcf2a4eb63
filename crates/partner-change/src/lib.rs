//! The partner-change service: the shared partner change request table, its
//! event log, the approval workflow and the migration saga.
//!
//! - [`grpc`]: the boundary (parse → authorize → gather facts → decide → write);
//! - [`domain`]: states, events, transitions and every refusal rule, no I/O;
//! - [`facts`]: what the rules need, asked of the account service;
//! - [`store`]: conditional writes with their events (transactional outbox);
//! - [`worker`]: the migration saga and the expiry sweeper;
//! - [`stream`]: the event stream: one tailer per process, replay then live per subscriber;
//! - [`error`]: the one error type and its mapping to `Status`.

pub mod domain;
pub mod error;
pub mod facts;
pub mod grpc;
pub mod store;
pub mod stream;
pub mod worker;

use partnerhub_proto::partnerchange::v1::partner_change_service_server::PartnerChangeServiceServer;
use partnerhub_runtime::auth::Authenticator;
use tonic::service::interceptor::InterceptedService;

/// The partner-change service as the host serves it: authenticated, size-limited.
pub fn service(
    api: grpc::PartnerChangeApi,
    authenticator: Authenticator,
    max_message_bytes: usize,
) -> InterceptedService<PartnerChangeServiceServer<grpc::PartnerChangeApi>, Authenticator> {
    let server = PartnerChangeServiceServer::new(api).max_decoding_message_size(max_message_bytes);
    InterceptedService::new(server, authenticator)
}

pub use store::migrate;
