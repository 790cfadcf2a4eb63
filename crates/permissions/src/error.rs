//! The permissions service's one error type, and its one mapping to `tonic::Status`.

use partnerhub_runtime::{
    db::StoreError,
    error::{ErrorReason, status},
    peers::is_transient,
};
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum PermissionsError {
    #[error("these numbers are not on a WABA of the client that is with the partner: {}", .0.join(", "))]
    NumberNotWithPartner(Vec<String>),
    #[error("partner change {0} is migrating a WABA of these numbers; try again once it completes")]
    MigrationInProgress(String),
    #[error("a partner change moved some of these numbers while the permissions were saved; try again")]
    MovedWhileSaving,
    #[error("the account service failed: {0}")]
    Account(Status),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sea_orm::DbErr> for PermissionsError {
    fn from(err: sea_orm::DbErr) -> Self {
        PermissionsError::Store(err.into())
    }
}

impl From<PermissionsError> for Status {
    fn from(err: PermissionsError) -> Self {
        let message = err.to_string();
        match err {
            PermissionsError::NumberNotWithPartner(numbers) => status(
                Code::FailedPrecondition,
                ErrorReason::NumberNotWithPartner,
                message,
                [("phoneNumbers", numbers.join(",").as_str())],
            ),
            PermissionsError::MigrationInProgress(id) => status(
                Code::FailedPrecondition,
                ErrorReason::MigrationInProgress,
                message,
                [("partnerChangeId", id.as_str())],
            ),
            PermissionsError::MovedWhileSaving => status(Code::Aborted, ErrorReason::ConcurrentMigration, message, []),
            PermissionsError::Account(peer) if is_transient(&peer) => {
                tracing::warn!(status = ?peer, "the account service is unavailable");
                partnerhub_runtime::error::unavailable()
            }
            PermissionsError::Account(peer) => {
                tracing::error!(status = ?peer, "the account service refused a call");
                partnerhub_runtime::error::internal()
            }
            PermissionsError::Store(err) => err.into(),
        }
    }
}
