//! The webhooks service's one error type, and its one mapping to `tonic::Status`.

use partnerhub_runtime::{
    db::StoreError,
    error::{Reason, not_found, status},
};
use tonic::{Code, Status};

/// The reasons only the webhooks service gives (besides the shared ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhooksReason {
    WebhookEndpointNotFound,
    WebhookDeliveryNotFound,
    WebhookEndpointDisabled,
    TooManyWebhookEndpoints,
}

impl Reason for WebhooksReason {
    fn as_str(self) -> &'static str {
        match self {
            WebhooksReason::WebhookEndpointNotFound => "WEBHOOK_ENDPOINT_NOT_FOUND",
            WebhooksReason::WebhookDeliveryNotFound => "WEBHOOK_DELIVERY_NOT_FOUND",
            WebhooksReason::WebhookEndpointDisabled => "WEBHOOK_ENDPOINT_DISABLED",
            WebhooksReason::TooManyWebhookEndpoints => "TOO_MANY_WEBHOOK_ENDPOINTS",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WebhooksError {
    /// Missing, or another tenant's: the two answer alike.
    #[error("webhook endpoint {0} not found")]
    EndpointNotFound(String),
    #[error("webhook delivery {0} not found")]
    DeliveryNotFound(String),
    #[error("webhook endpoint {0} is disabled; enable it (UpdateWebhookEndpoint, disabled: false) first")]
    EndpointDisabled(String),
    #[error("an owner may have at most {0} webhook endpoints; delete one first")]
    TooManyEndpoints(u64),
    #[error("cannot generate a secret: {0}")]
    Random(getrandom::Error),
    /// The owner named does not exist (the account service says).
    #[error("{0}")]
    OwnerNotFound(Status),
    #[error("the account service failed: {0}")]
    Account(Status),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sea_orm::DbErr> for WebhooksError {
    fn from(err: sea_orm::DbErr) -> Self {
        WebhooksError::Store(err.into())
    }
}

impl From<WebhooksError> for Status {
    fn from(err: WebhooksError) -> Self {
        match err {
            WebhooksError::EndpointNotFound(id) => {
                not_found(WebhooksReason::WebhookEndpointNotFound, "webhook endpoint", "webhookEndpointId", &id)
            }
            WebhooksError::DeliveryNotFound(id) => {
                not_found(WebhooksReason::WebhookDeliveryNotFound, "webhook delivery", "webhookDeliveryId", &id)
            }
            WebhooksError::EndpointDisabled(ref id) => status(
                Code::FailedPrecondition,
                WebhooksReason::WebhookEndpointDisabled,
                err.to_string(),
                [("webhookEndpointId", id.as_str())],
            ),
            WebhooksError::TooManyEndpoints(_) => {
                status(Code::ResourceExhausted, WebhooksReason::TooManyWebhookEndpoints, err.to_string(), [])
            }
            WebhooksError::Random(err) => {
                tracing::error!(error = %err, "cannot generate a webhook secret");
                partnerhub_runtime::error::internal()
            }
            WebhooksError::OwnerNotFound(status) => status,
            WebhooksError::Account(peer) if partnerhub_runtime::peers::is_transient(&peer) => {
                tracing::warn!(status = ?peer, "the account service is unavailable");
                partnerhub_runtime::error::unavailable()
            }
            WebhooksError::Account(peer) => {
                tracing::error!(status = ?peer, "the account service refused a call");
                partnerhub_runtime::error::internal()
            }
            WebhooksError::Store(err) => err.into(),
        }
    }
}
