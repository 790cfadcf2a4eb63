//! The one way every Partner Hub service builds a `tonic::Status` (AIP-193):
//! each error carries a `google.rpc.ErrorInfo` with domain `partnerhub` and a
//! stable upper-case reason; malformed input also carries `BadRequest` field
//! violations; `INTERNAL` says nothing about internals (the cause goes to the log).

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

pub const ERROR_DOMAIN: &str = "partnerhub";

/// An `ErrorInfo.reason`: a stable upper-case name clients may match on.
/// The runtime defines the reasons every service may give ([`ErrorReason`]);
/// each service defines its own beside its error type.
pub trait Reason: Copy {
    fn as_str(self) -> &'static str;
}

/// The reasons every service may give: about the call itself, the callers'
/// own resources (clients and partners, the subjects of tokens) and the server. They never change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorReason {
    InvalidRequest,
    MissingCredentials,
    InvalidToken,
    TokenExpired,
    SubjectNotAllowed,
    ClientNotFound,
    PartnerNotFound,
    IdempotencyKeyReused,
    MessageTooLarge,
    ConcurrentUpdate,
    ServerShuttingDown,
    Internal,
    Unavailable,
}

impl Reason for ErrorReason {
    fn as_str(self) -> &'static str {
        match self {
            ErrorReason::InvalidRequest => "INVALID_REQUEST",
            ErrorReason::MissingCredentials => "MISSING_CREDENTIALS",
            ErrorReason::InvalidToken => "INVALID_TOKEN",
            ErrorReason::TokenExpired => "TOKEN_EXPIRED",
            ErrorReason::SubjectNotAllowed => "SUBJECT_NOT_ALLOWED",
            ErrorReason::ClientNotFound => "CLIENT_NOT_FOUND",
            ErrorReason::PartnerNotFound => "PARTNER_NOT_FOUND",
            ErrorReason::IdempotencyKeyReused => "IDEMPOTENCY_KEY_REUSED",
            ErrorReason::MessageTooLarge => "MESSAGE_TOO_LARGE",
            ErrorReason::ConcurrentUpdate => "CONCURRENT_UPDATE",
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
    reason: impl Reason,
    message: impl Into<String>,
    metadata: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Status {
    let metadata: HashMap<String, String> =
        metadata.into_iter().map(|(key, value)| (key.to_owned(), value.to_owned())).collect();
    Status::with_error_details(code, message, ErrorDetails::with_error_info(reason.as_str(), ERROR_DOMAIN, metadata))
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

/// The `ErrorInfo.reason` a status carries, if any.
pub fn reason_of(status: &Status) -> Option<String> {
    status.get_details_error_info().map(|info| info.reason)
}

/// An error and its causes on one line: "error sending request: … connection refused".
pub fn with_causes(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
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
pub fn not_found(reason: impl Reason, what: &str, id_key: &str, id: &str) -> Status {
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

    /// A reason a service defines for itself.
    #[derive(Debug, Clone, Copy)]
    struct WidgetNotFound;

    impl Reason for WidgetNotFound {
        fn as_str(self) -> &'static str {
            "WIDGET_NOT_FOUND"
        }
    }

    #[test]
    fn not_found_names_the_id_in_metadata_with_the_services_own_reason() {
        let status = not_found(WidgetNotFound, "widget", "widgetId", "widget-1");
        let info = status.get_error_details().error_info().cloned().unwrap();
        assert_eq!(info.reason, "WIDGET_NOT_FOUND");
        assert_eq!(info.metadata.get("widgetId").map(String::as_str), Some("widget-1"));
        assert_eq!(status.message(), "widget widget-1 not found");
    }
}
