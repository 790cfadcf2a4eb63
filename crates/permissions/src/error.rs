//! The permissions service's one error type, and its one mapping to `tonic::Status`.

use partnerhub_runtime::{
    db::StoreError,
    error::{Reason, status},
    peers::is_transient,
};
use tonic::{Code, Status};

/// The reasons only the permissions service gives (besides the shared ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PermissionsReason {
    NumberNotWithPartner,
    MigrationInProgress,
    ConcurrentMigration,
}

impl Reason for PermissionsReason {
    fn as_str(self) -> &'static str {
        match self {
            PermissionsReason::NumberNotWithPartner => "NUMBER_NOT_WITH_PARTNER",
            PermissionsReason::MigrationInProgress => "MIGRATION_IN_PROGRESS",
            PermissionsReason::ConcurrentMigration => "CONCURRENT_MIGRATION",
        }
    }
}

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
                PermissionsReason::NumberNotWithPartner,
                message,
                [("phoneNumbers", numbers.join(",").as_str())],
            ),
            PermissionsError::MigrationInProgress(id) => status(
                Code::FailedPrecondition,
                PermissionsReason::MigrationInProgress,
                message,
                [("partnerChangeId", id.as_str())],
            ),
            PermissionsError::MovedWhileSaving => {
                status(Code::Aborted, PermissionsReason::ConcurrentMigration, message, [])
            }
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
