//! The account service's one error type, and its one mapping to `tonic::Status`.

use partnerhub_runtime::{
    db::StoreError,
    error::{ErrorReason, Reason, not_found, status},
};
use tonic::{Code, Status};

/// The reasons only the account service gives (besides the shared [`ErrorReason`]s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountReason {
    WabaNotFound,
    PhoneNumberTaken,
    SourcePartnerMismatch,
}

impl Reason for AccountReason {
    fn as_str(self) -> &'static str {
        match self {
            AccountReason::WabaNotFound => "WABA_NOT_FOUND",
            AccountReason::PhoneNumberTaken => "PHONE_NUMBER_TAKEN",
            AccountReason::SourcePartnerMismatch => "SOURCE_PARTNER_MISMATCH",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("client {0} not found")]
    ClientNotFound(String),
    #[error("partner {0} not found")]
    PartnerNotFound(String),
    #[error("WABA {0} not found")]
    WabaNotFound(String),
    #[error("phone number {0} already belongs to a WABA")]
    PhoneNumberTaken(String),
    #[error("WABA {waba_id} is with partner {actual}, not {expected}")]
    SourcePartnerMismatch { waba_id: String, expected: String, actual: String },
    #[error("partner change {0} already transferred a WABA with other arguments")]
    TransferKeyReused(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sea_orm::DbErr> for AccountError {
    fn from(err: sea_orm::DbErr) -> Self {
        AccountError::Store(err.into())
    }
}

impl From<AccountError> for Status {
    fn from(err: AccountError) -> Self {
        let message = err.to_string();
        match err {
            AccountError::ClientNotFound(id) => not_found(ErrorReason::ClientNotFound, "client", "clientId", &id),
            AccountError::PartnerNotFound(id) => not_found(ErrorReason::PartnerNotFound, "partner", "partnerId", &id),
            AccountError::WabaNotFound(id) => not_found(AccountReason::WabaNotFound, "WABA", "wabaId", &id),
            AccountError::PhoneNumberTaken(number) => status(
                Code::AlreadyExists,
                AccountReason::PhoneNumberTaken,
                message,
                [("phoneNumber", number.as_str())],
            ),
            AccountError::SourcePartnerMismatch { waba_id, expected, actual } => status(
                Code::FailedPrecondition,
                AccountReason::SourcePartnerMismatch,
                message,
                [
                    ("wabaId", waba_id.as_str()),
                    ("fromPartnerId", expected.as_str()),
                    ("currentPartnerId", actual.as_str()),
                ],
            ),
            AccountError::TransferKeyReused(id) => status(
                Code::FailedPrecondition,
                ErrorReason::IdempotencyKeyReused,
                message,
                [("partnerChangeId", id.as_str())],
            ),
            AccountError::Store(err) => err.into(),
        }
    }
}
