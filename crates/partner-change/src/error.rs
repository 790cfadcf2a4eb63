//! The partner-change service's one error type, and its one mapping to `tonic::Status`.

use partnerhub_runtime::{
    db::StoreError,
    error::{ERROR_DOMAIN, ErrorReason, Reason, not_found, status},
    peers::is_transient,
};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::{
    domain::{Blocker, BlockerReason, State, states_allowing},
    store::WriteError,
};

/// The reasons only the partner-change service gives (besides the shared
/// [`ErrorReason`]s and the blockers' own reasons).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartnerChangeReason {
    PartnerChangeNotFound,
    /// The account service's reason, given for the WABA a request names.
    WabaNotFound,
    InvalidState,
    SubscriberTooSlow,
    /// A stream cursor older than the retained events.
    CursorExpired,
}

impl Reason for PartnerChangeReason {
    fn as_str(self) -> &'static str {
        match self {
            PartnerChangeReason::PartnerChangeNotFound => "PARTNER_CHANGE_NOT_FOUND",
            PartnerChangeReason::WabaNotFound => "WABA_NOT_FOUND",
            PartnerChangeReason::InvalidState => "INVALID_STATE",
            PartnerChangeReason::SubscriberTooSlow => "SUBSCRIBER_TOO_SLOW",
            PartnerChangeReason::CursorExpired => "CURSOR_EXPIRED",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PartnerChangeError {
    #[error("partner change {0} not found")]
    NotFound(String),
    #[error("WABA {0} not found")]
    WabaNotFound(String),
    /// The change may not go ahead; every reason, most important first.
    #[error("{}", .0.first().map_or("refused", |blocker| blocker.message.as_str()))]
    Blocked(Vec<Blocker>),
    #[error("request_id {0} was already used for a different partner change")]
    IdempotencyKeyReused(String),
    #[error("partner change {id} is {state}; this needs {needed}")]
    InvalidState { id: String, state: State, needed: String },
    #[error("partner change {0} changed while this call ran; read it again and retry")]
    Conflict(String),
    #[error("the account or permissions service failed: {0}")]
    Peer(Status),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sea_orm::DbErr> for PartnerChangeError {
    fn from(err: sea_orm::DbErr) -> Self {
        PartnerChangeError::Store(err.into())
    }
}

impl PartnerChangeError {
    /// A failed conditional write, as the caller should see it.
    pub fn from_write(err: WriteError, id: &str) -> Self {
        match err {
            WriteError::InvalidState { state, event } => {
                let needed: Vec<String> = states_allowing(event).into_iter().map(|state| state.to_string()).collect();
                PartnerChangeError::InvalidState { id: id.to_owned(), state, needed: needed.join(" or ") }
            }
            WriteError::Conflict => PartnerChangeError::Conflict(id.to_owned()),
            WriteError::Duplicate(detail) => PartnerChangeError::Store(StoreError::UniqueViolation(detail)),
            WriteError::Store(err) => PartnerChangeError::Store(err),
        }
    }
}

impl From<PartnerChangeError> for Status {
    fn from(err: PartnerChangeError) -> Self {
        let message = err.to_string();
        match err {
            PartnerChangeError::NotFound(id) => {
                not_found(PartnerChangeReason::PartnerChangeNotFound, "partner change", "partnerChangeId", &id)
            }
            PartnerChangeError::WabaNotFound(id) => not_found(PartnerChangeReason::WabaNotFound, "WABA", "wabaId", &id),
            PartnerChangeError::Blocked(blockers) => blocked(&blockers),
            PartnerChangeError::IdempotencyKeyReused(request_id) => status(
                Code::FailedPrecondition,
                ErrorReason::IdempotencyKeyReused,
                message,
                [("requestId", request_id.as_str())],
            ),
            PartnerChangeError::InvalidState { id, state, .. } => status(
                Code::FailedPrecondition,
                PartnerChangeReason::InvalidState,
                message,
                [("partnerChangeId", id.as_str()), ("state", state.to_string().as_str())],
            ),
            PartnerChangeError::Conflict(id) => {
                status(Code::Aborted, ErrorReason::ConcurrentUpdate, message, [("partnerChangeId", id.as_str())])
            }
            PartnerChangeError::Peer(peer) if is_transient(&peer) => {
                tracing::warn!(status = ?peer, "a peer service is unavailable");
                partnerhub_runtime::error::unavailable()
            }
            PartnerChangeError::Peer(peer) => {
                tracing::error!(status = ?peer, "a peer service refused a call");
                partnerhub_runtime::error::internal()
            }
            PartnerChangeError::Store(err) => err.into(),
        }
    }
}

/// A refusal: the first blocker's reason in `ErrorInfo`, every blocker as a
/// `PreconditionFailure` violation. An unknown destination is `NOT_FOUND`.
fn blocked(blockers: &[Blocker]) -> Status {
    let Some(first) = blockers.first() else {
        return partnerhub_runtime::error::internal();
    };
    let code = if first.reason == BlockerReason::PartnerNotFound { Code::NotFound } else { Code::FailedPrecondition };
    let mut metadata = std::collections::HashMap::new();
    if !first.missing_fields.is_empty() {
        metadata.insert("missingFields".to_owned(), first.missing_fields.join(","));
    }
    let mut details = ErrorDetails::with_error_info(first.reason.as_str(), ERROR_DOMAIN, metadata);
    for blocker in blockers {
        details.add_precondition_failure_violation(blocker.reason.as_str(), "partner_change", &blocker.message);
    }
    Status::with_error_details(code, first.message.clone(), details)
}
