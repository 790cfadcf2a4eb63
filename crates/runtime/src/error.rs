//! The one way every Partner Hub service builds a `tonic::Status` (AIP-193):
//! each error carries a `google.rpc.ErrorInfo` with domain `partnerhub` and a
//! stable upper-case reason; malformed input also carries `BadRequest` field
//! violations; `INTERNAL` says nothing about internals (the cause goes to the log).

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

pub const ERROR_DOMAIN: &str = "partnerhub";

/// Every `ErrorInfo.reason` Partner Hub sends. Clients may match on these: they never change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorReason {
    InvalidRequest,
    MissingCredentials,
    InvalidToken,
    TokenExpired,
    SubjectNotAllowed,
    ClientNotFound,
    PartnerNotFound,
    WabaNotFound,
    PartnerChangeNotFound,
    PhoneNumberTaken,
    SourcePartnerMismatch,
    IdempotencyKeyReused,
    MessageTooLarge,
    NumberNotWithPartner,
    MigrationInProgress,
    ConcurrentMigration,
    ConcurrentUpdate,
    InvalidState,
    SubscriberTooSlow,
    ServerShuttingDown,
    Internal,
    Unavailable,
}

impl ErrorReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorReason::InvalidRequest => "INVALID_REQUEST",
            ErrorReason::MissingCredentials => "MISSING_CREDENTIALS",
            ErrorReason::InvalidToken => "INVALID_TOKEN",
            ErrorReason::TokenExpired => "TOKEN_EXPIRED",
            ErrorReason::SubjectNotAllowed => "SUBJECT_NOT_ALLOWED",
            ErrorReason::ClientNotFound => "CLIENT_NOT_FOUND",
            ErrorReason::PartnerNotFound => "PARTNER_NOT_FOUND",
            ErrorReason::WabaNotFound => "WABA_NOT_FOUND",
            ErrorReason::PartnerChangeNotFound => "PARTNER_CHANGE_NOT_FOUND",
            ErrorReason::PhoneNumberTaken => "PHONE_NUMBER_TAKEN",
            ErrorReason::SourcePartnerMismatch => "SOURCE_PARTNER_MISMATCH",
            ErrorReason::IdempotencyKeyReused => "IDEMPOTENCY_KEY_REUSED",
            ErrorReason::MessageTooLarge => "MESSAGE_TOO_LARGE",
            ErrorReason::NumberNotWithPartner => "NUMBER_NOT_WITH_PARTNER",
            ErrorReason::MigrationInProgress => "MIGRATION_IN_PROGRESS",
            ErrorReason::ConcurrentMigration => "CONCURRENT_MIGRATION",
            ErrorReason::ConcurrentUpdate => "CONCURRENT_UPDATE",
            ErrorReason::InvalidState => "INVALID_STATE",
            ErrorReason::SubscriberTooSlow => "SUBSCRIBER_TOO_SLOW",
            ErrorReason::ServerShuttingDown => "SERVER_SHUTTING_DOWN",
            ErrorReason::Internal => "INTERNAL",
            ErrorReason::Unavailable => "UNAVAILABLE",
        }
    }
}

/// A status with an `ErrorInfo`; `metadata` holds every ID the message names
/// (lowerCamel keys, e.g. `wabaId`).
pub fn status<'a>(
    code: Code,
    reason: ErrorReason,
    message: impl Into<String>,
    metadata: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Status {
    status_with_reason(code, reason.as_str(), message, metadata)
}

/// Like [`status`], for reasons that a service defines itself (e.g. a
/// partner-change blocker such as `LEGACY_ACCOUNT`).
pub fn status_with_reason<'a>(
    code: Code,
    reason: &str,
    message: impl Into<String>,
    metadata: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Status {
    let metadata: HashMap<String, String> =
        metadata.into_iter().map(|(key, value)| (key.to_owned(), value.to_owned())).collect();
    Status::with_error_details(code, message, ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata))
}

/// A field of a request that is not acceptable, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self { field: field.into(), description: description.into() }
    }
}

/// `INVALID_ARGUMENT` listing every violation at once.
pub fn invalid_argument(violations: &[FieldViolation]) -> Status {
    let message = match violations {
        [only] => format!("{}: {}", only.field, only.description),
        _ => format!("{} fields are invalid", violations.len()),
    };
    let mut details = ErrorDetails::with_error_info(ErrorReason::InvalidRequest.as_str(), ERROR_DOMAIN, HashMap::new());
    for violation in violations {
        details.add_bad_request_violation(&violation.field, &violation.description);
    }
    Status::with_error_details(Code::InvalidArgument, message, details)
}

/// `NOT_FOUND`, worded the same whether the resource does not exist or belongs
/// to another tenant.
pub fn not_found(reason: ErrorReason, what: &str, id_key: &str, id: &str) -> Status {
    status(Code::NotFound, reason, format!("{what} {id} not found"), [(id_key, id)])
}

/// The caller's kind of subject may not make this call at all.
pub fn permission_denied() -> Status {
    status(Code::PermissionDenied, ErrorReason::SubjectNotAllowed, "the caller may not make this call", [])
}

/// An internal failure; the caller learns nothing more. Log the cause first.
pub fn internal() -> Status {
    status(Code::Internal, ErrorReason::Internal, "internal error", [])
}

/// A dependency (database, peer service) is unreachable; the caller may retry.
pub fn unavailable() -> Status {
    status(Code::Unavailable, ErrorReason::Unavailable, "temporarily unavailable, retry later", [])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_lists_every_violation() {
        let status = invalid_argument(&[FieldViolation::new("a", "bad"), FieldViolation::new("b", "worse")]);
        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status.get_error_details();
        let fields: Vec<_> = details
            .bad_request()
            .map(|bad| bad.field_violations.iter().map(|v| v.field.clone()).collect())
            .unwrap_or_default();
        assert_eq!(fields, ["a", "b"]);
        let info = details.error_info().unwrap();
        assert_eq!((info.reason.as_str(), info.domain.as_str()), ("INVALID_REQUEST", "partnerhub"));
    }

    #[test]
    fn not_found_names_the_id_in_metadata() {
        let status = not_found(ErrorReason::WabaNotFound, "WABA", "wabaId", "waba-1");
        let info = status.get_error_details().error_info().cloned().unwrap();
        assert_eq!(info.reason, "WABA_NOT_FOUND");
        assert_eq!(info.metadata.get("wabaId").map(String::as_str), Some("waba-1"));
        assert_eq!(status.message(), "WABA waba-1 not found");
    }
}
