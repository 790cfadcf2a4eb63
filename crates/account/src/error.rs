//! The account service's one error type, and its one mapping to `tonic::Status`.

use partnerhub_runtime::{
    db::StoreError,
    error::{ErrorReason, not_found, status},
};
use tonic::{Code, Status};

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
            AccountError::WabaNotFound(id) => not_found(ErrorReason::WabaNotFound, "WABA", "wabaId", &id),
            AccountError::PhoneNumberTaken(number) => {
                status(Code::AlreadyExists, ErrorReason::PhoneNumberTaken, message, [("phoneNumber", number.as_str())])
            }
            AccountError::SourcePartnerMismatch { waba_id, expected, actual } => status(
                Code::FailedPrecondition,
                ErrorReason::SourcePartnerMismatch,
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
