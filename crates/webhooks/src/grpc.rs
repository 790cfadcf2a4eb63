//! The webhooks service's gRPC boundary: parse → authorize → store → map.
//! Only this file knows the protobuf types of its API.

use std::time::Duration;

use partnerhub_proto::{
    account::v1::{GetClientRequest, GetPartnerRequest, account_service_client::AccountServiceClient},
    webhooks::v1 as pb,
};
use partnerhub_runtime::{
    auth::{May, Policy, Subject, caller},
    error::{FieldViolation, invalid_argument},
    pagination::{TokenSeal, page_size},
    peers::Peer,
    rpc::record_resource_id,
    time::{now, to_timestamp},
    validate::{Parsed, Validate, id, optional_text, required_text},
};
use sea_orm::DatabaseConnection;
use tokio::sync::Notify;
use tonic::{Code, Request, Response, Status};

use std::sync::Arc;

use crate::{
    address::AddressPolicy,
    domain::{DeliveryState, Owner},
    error::WebhooksError,
    signing::generate_secret,
    store::{self, DeliveryWithAttempts, EndpointChanges, NewEndpoint, entities::endpoint},
};

/// Who may call each method at all; each handler then checks whose endpoint it is.
pub const POLICY: Policy = &[
    ("CreateWebhookEndpoint", OWNERS),
    ("GetWebhookEndpoint", OWNERS),
    ("ListWebhookEndpoints", OWNERS),
    ("UpdateWebhookEndpoint", OWNERS),
    ("DeleteWebhookEndpoint", OWNERS),
    ("RotateWebhookSecret", OWNERS),
    ("ListWebhookDeliveries", OWNERS),
    ("RedeliverWebhookEvent", OWNERS),
];

const OWNERS: &[May] = &[May::Partners, May::Clients, May::Support];

const MAX_URL_LEN: usize = 2048;
const MAX_DESCRIPTION_LEN: usize = 500;
/// The longest a rotated secret may keep signing.
const MAX_OVERLAP: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// The `WebhookService` implementation.
#[derive(Debug, Clone)]
pub struct WebhooksApi {
    db: DatabaseConnection,
    /// Where a named owner is checked to exist.
    account: Peer,
    addresses: AddressPolicy,
    pages: TokenSeal,
    /// Wakes this replica's dispatcher (a redelivery is due now).
    wake: Arc<Notify>,
    max_endpoints_per_owner: u64,
}

impl WebhooksApi {
    pub fn new(
        db: DatabaseConnection,
        account: Peer,
        addresses: AddressPolicy,
        pages: TokenSeal,
        wake: Arc<Notify>,
        max_endpoints_per_owner: u64,
    ) -> Self {
        Self { db, account, addresses, pages, wake, max_endpoints_per_owner }
    }

    /// The endpoint, if `caller` may see it; another tenant's answers as a missing one.
    async fn owned_endpoint(&self, caller: &Subject, endpoint_id: &str) -> Result<endpoint::Model, Status> {
        record_resource_id(endpoint_id);
        let found = store::find_endpoint(&self.db, endpoint_id).await.map_err(WebhooksError::from)?;
        match found {
            Some(endpoint) if may_see(caller, &endpoint) => Ok(endpoint),
            _ => Err(WebhooksError::EndpointNotFound(endpoint_id.to_owned()).into()),
        }
    }

    /// The URL as it is stored, if webhooks may be sent there; refused as the
    /// request's `field` (`url`, `endpoint.url`).
    async fn check_url(&self, field: &str, url: &str) -> Result<String, Status> {
        let refused = |problem: String| invalid_argument(&[FieldViolation::new(field, problem)]);
        match self.addresses.check(url).await {
            // Non-ASCII is percent-encoded: the stored form may be longer than what was sent.
            Ok(url) if url.as_str().len() > MAX_URL_LEN => {
                Err(refused(format!("must be at most {MAX_URL_LEN} characters once encoded")))
            }
            Ok(url) => Ok(url.to_string()),
            Err(problem) => Err(refused(problem.to_string())),
        }
    }

    /// Refuses an owner the account service does not know.
    async fn check_owner_exists(&self, owner: &Owner) -> Result<(), Status> {
        let answer = match owner.clone() {
            Owner::Partner(partner_id) => {
                self.account
                    .call(GetPartnerRequest { partner_id }, |channel, request| async move {
                        AccountServiceClient::new(channel).get_partner(request).await.map(drop)
                    })
                    .await
            }
            Owner::Client(client_id) => {
                self.account
                    .call(GetClientRequest { client_id }, |channel, request| async move {
                        AccountServiceClient::new(channel).get_client(request).await.map(drop)
                    })
                    .await
            }
        };
        match answer {
            Ok(()) => Ok(()),
            Err(status) if status.code() == Code::NotFound => Err(WebhooksError::OwnerNotFound(status).into()),
            Err(status) => Err(WebhooksError::Account(status).into()),
        }
    }
}

fn may_see(caller: &Subject, endpoint: &endpoint::Model) -> bool {
    match caller {
        Subject::Support(_) => true,
        Subject::Partner(own) => endpoint.partner_id.as_deref() == Some(own),
        Subject::Client(own) => endpoint.client_id.as_deref() == Some(own),
        Subject::Service(_) => false,
    }
}

/// The owner a request names, or the caller itself when it names none;
/// naming another tenant is refused as that tenant not existing.
fn owner_for(caller: &Subject, named: Option<Owner>, field: &str) -> Result<Owner, Status> {
    let not_found = |owner: &Owner| match owner {
        Owner::Partner(id) => partnerhub_runtime::error::not_found(
            partnerhub_runtime::error::ErrorReason::PartnerNotFound,
            "partner",
            "partnerId",
            id,
        ),
        Owner::Client(id) => partnerhub_runtime::error::not_found(
            partnerhub_runtime::error::ErrorReason::ClientNotFound,
            "client",
            "clientId",
            id,
        ),
    };
    match (caller, named) {
        (Subject::Support(_), Some(owner)) => Ok(owner),
        (Subject::Support(_), None) => {
            Err(invalid_argument(&[FieldViolation::new(field, "support names the partner_id or client_id")]))
        }
        (Subject::Partner(own), None) => Ok(Owner::Partner(own.clone())),
        (Subject::Client(own), None) => Ok(Owner::Client(own.clone())),
        (Subject::Partner(own), Some(Owner::Partner(id))) if *own == id => Ok(Owner::Partner(id)),
        (Subject::Client(own), Some(Owner::Client(id))) if *own == id => Ok(Owner::Client(id)),
        (_, Some(other)) => Err(not_found(&other)),
        (Subject::Service(_), None) => Err(partnerhub_runtime::error::permission_denied()),
    }
}

fn parse_owner(partner_id: Option<&str>, client_id: Option<&str>) -> Parsed<Option<Owner>> {
    match (partner_id, client_id) {
        (Some(partner_id), _) => Ok(Some(Owner::Partner(id("partner_id", partner_id)?))),
        (None, Some(client_id)) => Ok(Some(Owner::Client(id("client_id", client_id)?))),
        (None, None) => Ok(None),
    }
}

type RpcResult<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl pb::webhook_service_server::WebhookService for WebhooksApi {
    async fn create_webhook_endpoint(
        &self,
        request: Request<pb::CreateWebhookEndpointRequest>,
    ) -> RpcResult<pb::CreateWebhookEndpointResponse> {
        use pb::create_webhook_endpoint_request::Owner as PbOwner;
        let caller = caller(&request)?;
        let r = request.get_ref();
        let named = match &r.owner {
            Some(PbOwner::PartnerId(id)) => parse_owner(Some(id), None),
            Some(PbOwner::ClientId(id)) => parse_owner(None, Some(id)),
            None => Ok(None),
        };
        let (named, url, description) = (
            named,
            required_text("url", &r.url, MAX_URL_LEN),
            optional_text("description", &r.description, MAX_DESCRIPTION_LEN),
        )
            .validate()?;
        let owner = owner_for(caller, named, "owner")?;
        let url = self.check_url("url", &url).await?;
        if caller.is_support() {
            self.check_owner_exists(&owner).await?;
        }
        if store::count_endpoints(&self.db, &owner).await.map_err(WebhooksError::from)? >= self.max_endpoints_per_owner
        {
            return Err(WebhooksError::TooManyEndpoints(self.max_endpoints_per_owner).into());
        }
        let secret = generate_secret().map_err(WebhooksError::Random)?;
        let new = NewEndpoint { owner, url, description, secret: secret.clone() };
        let endpoint = store::create_endpoint(&self.db, new, now()).await.map_err(WebhooksError::from)?;
        record_resource_id(&endpoint.webhook_endpoint_id);
        tracing::info!(webhook_endpoint_id = %endpoint.webhook_endpoint_id, "webhook endpoint created");
        Ok(Response::new(pb::CreateWebhookEndpointResponse { endpoint: Some(endpoint_to_proto(endpoint)), secret }))
    }

    async fn get_webhook_endpoint(
        &self,
        request: Request<pb::GetWebhookEndpointRequest>,
    ) -> RpcResult<pb::GetWebhookEndpointResponse> {
        let caller = caller(&request)?;
        let endpoint_id = id("webhook_endpoint_id", &request.get_ref().webhook_endpoint_id).validate()?;
        let endpoint = self.owned_endpoint(caller, &endpoint_id).await?;
        Ok(Response::new(pb::GetWebhookEndpointResponse { endpoint: Some(endpoint_to_proto(endpoint)) }))
    }

    async fn list_webhook_endpoints(
        &self,
        request: Request<pb::ListWebhookEndpointsRequest>,
    ) -> RpcResult<pb::ListWebhookEndpointsResponse> {
        use pb::list_webhook_endpoints_request::Owner as PbOwner;
        let caller = caller(&request)?;
        let r = request.get_ref();
        let named = match &r.owner {
            Some(PbOwner::PartnerId(id)) => parse_owner(Some(id), None),
            Some(PbOwner::ClientId(id)) => parse_owner(None, Some(id)),
            None => Ok(None),
        };
        let (named, size) = (named, page_size(r.page_size)).validate()?;
        let owner = owner_for(caller, named, "owner")?;
        let scope = format!("webhook endpoints of {owner:?}");
        let after = self.pages.page_token(&r.page_token, &scope).validate()?;
        let (endpoints, more) =
            store::list_endpoints(&self.db, &owner, after.as_deref(), size).await.map_err(WebhooksError::from)?;
        let last = endpoints.last().map(|last| last.webhook_endpoint_id.as_str());
        let next_page_token = self.pages.continuation(last, more, &scope);
        Ok(Response::new(pb::ListWebhookEndpointsResponse {
            endpoints: endpoints.into_iter().map(endpoint_to_proto).collect(),
            next_page_token,
        }))
    }

    async fn update_webhook_endpoint(
        &self,
        request: Request<pb::UpdateWebhookEndpointRequest>,
    ) -> RpcResult<pb::UpdateWebhookEndpointResponse> {
        let caller = caller(&request)?;
        let r = request.get_ref();
        let given = r.endpoint.clone().unwrap_or_default();
        let (endpoint_id, changes) =
            (id("endpoint.webhook_endpoint_id", &given.webhook_endpoint_id), endpoint_changes(r, &given)).validate()?;
        self.owned_endpoint(caller, &endpoint_id).await?;
        let mut changes = changes;
        if let Some(url) = &changes.url {
            changes.url = Some(self.check_url("endpoint.url", url).await?);
        }
        let updated = store::update_endpoint(&self.db, &endpoint_id, changes, now())
            .await
            .map_err(WebhooksError::from)?
            .ok_or_else(|| WebhooksError::EndpointNotFound(endpoint_id.clone()))?;
        Ok(Response::new(pb::UpdateWebhookEndpointResponse { endpoint: Some(endpoint_to_proto(updated)) }))
    }

    async fn delete_webhook_endpoint(
        &self,
        request: Request<pb::DeleteWebhookEndpointRequest>,
    ) -> RpcResult<pb::DeleteWebhookEndpointResponse> {
        let caller = caller(&request)?;
        let endpoint_id = id("webhook_endpoint_id", &request.get_ref().webhook_endpoint_id).validate()?;
        self.owned_endpoint(caller, &endpoint_id).await?;
        if !store::delete_endpoint(&self.db, &endpoint_id).await.map_err(WebhooksError::from)? {
            return Err(WebhooksError::EndpointNotFound(endpoint_id).into());
        }
        tracing::info!(webhook_endpoint_id = %endpoint_id, "webhook endpoint deleted");
        Ok(Response::new(pb::DeleteWebhookEndpointResponse {}))
    }

    async fn rotate_webhook_secret(
        &self,
        request: Request<pb::RotateWebhookSecretRequest>,
    ) -> RpcResult<pb::RotateWebhookSecretResponse> {
        let caller = caller(&request)?;
        let r = request.get_ref();
        let (endpoint_id, overlap) =
            (id("webhook_endpoint_id", &r.webhook_endpoint_id), overlap(r.overlap.as_ref())).validate()?;
        self.owned_endpoint(caller, &endpoint_id).await?;
        let secret = generate_secret().map_err(WebhooksError::Random)?;
        let now = now();
        let previous_until =
            (!overlap.is_zero()).then(|| now + chrono::Duration::from_std(overlap).unwrap_or(chrono::Duration::zero()));
        let endpoint = store::rotate_secret(&self.db, &endpoint_id, secret.clone(), previous_until, now)
            .await
            .map_err(WebhooksError::from)?
            .ok_or_else(|| WebhooksError::EndpointNotFound(endpoint_id.clone()))?;
        tracing::info!(webhook_endpoint_id = %endpoint_id, overlap = ?overlap, "webhook secret rotated");
        Ok(Response::new(pb::RotateWebhookSecretResponse { endpoint: Some(endpoint_to_proto(endpoint)), secret }))
    }

    async fn list_webhook_deliveries(
        &self,
        request: Request<pb::ListWebhookDeliveriesRequest>,
    ) -> RpcResult<pb::ListWebhookDeliveriesResponse> {
        let caller = caller(&request)?;
        let r = request.get_ref();
        let (endpoint_id, states, size) =
            (id("webhook_endpoint_id", &r.webhook_endpoint_id), delivery_states(&r.states), page_size(r.page_size))
                .validate()?;
        self.owned_endpoint(caller, &endpoint_id).await?;
        let scope = format!("webhook deliveries of {endpoint_id} in {states:?}");
        let before = self.pages.page_token(&r.page_token, &scope).validate()?;
        let (deliveries, more) = store::list_deliveries(&self.db, &endpoint_id, &states, before.as_deref(), size)
            .await
            .map_err(WebhooksError::from)?;
        let last = deliveries.last().map(|(last, _)| last.webhook_delivery_id.as_str());
        let next_page_token = self.pages.continuation(last, more, &scope);
        Ok(Response::new(pb::ListWebhookDeliveriesResponse {
            deliveries: deliveries.into_iter().map(delivery_to_proto).collect(),
            next_page_token,
        }))
    }

    async fn redeliver_webhook_event(
        &self,
        request: Request<pb::RedeliverWebhookEventRequest>,
    ) -> RpcResult<pb::RedeliverWebhookEventResponse> {
        let caller = caller(&request)?;
        let delivery_id = id("webhook_delivery_id", &request.get_ref().webhook_delivery_id).validate()?;
        record_resource_id(&delivery_id);
        let not_found = || Status::from(WebhooksError::DeliveryNotFound(delivery_id.clone()));
        let (delivery, _) =
            store::find_delivery(&self.db, &delivery_id).await.map_err(WebhooksError::from)?.ok_or_else(not_found)?;
        let endpoint =
            store::find_endpoint(&self.db, &delivery.webhook_endpoint_id).await.map_err(WebhooksError::from)?;
        let endpoint = endpoint.filter(|endpoint| may_see(caller, endpoint)).ok_or_else(not_found)?;
        if endpoint.disabled {
            return Err(WebhooksError::EndpointDisabled(endpoint.webhook_endpoint_id).into());
        }
        if !store::redeliver(&self.db, &delivery_id, now()).await.map_err(WebhooksError::from)? {
            return Err(not_found());
        }
        self.wake.notify_one();
        let delivery =
            store::find_delivery(&self.db, &delivery_id).await.map_err(WebhooksError::from)?.ok_or_else(not_found)?;
        Ok(Response::new(pb::RedeliverWebhookEventResponse { delivery: Some(delivery_to_proto(delivery)) }))
    }
}

fn endpoint_changes(r: &pb::UpdateWebhookEndpointRequest, given: &pb::WebhookEndpoint) -> Parsed<EndpointChanges> {
    let paths = r.update_mask.as_ref().map(|mask| mask.paths.as_slice()).unwrap_or_default();
    if paths.is_empty() {
        return Err(FieldViolation::new("update_mask", "must name at least one field"));
    }
    let mut changes = EndpointChanges::default();
    for path in paths {
        match path.as_str() {
            "url" => changes.url = Some(required_text("endpoint.url", &given.url, MAX_URL_LEN)?),
            "description" => {
                changes.description =
                    Some(optional_text("endpoint.description", &given.description, MAX_DESCRIPTION_LEN)?)
            }
            "disabled" => changes.disabled = Some(given.disabled),
            other => return Err(FieldViolation::new("update_mask", format!("unknown field {other:?}"))),
        }
    }
    Ok(changes)
}

fn overlap(raw: Option<&prost_types::Duration>) -> Parsed<Duration> {
    let Some(raw) = raw else { return Ok(Duration::ZERO) };
    let invalid = || FieldViolation::new("overlap", "must be between 0 and 7 days");
    let seconds = u64::try_from(raw.seconds).map_err(|_| invalid())?;
    let nanos = u32::try_from(raw.nanos).map_err(|_| invalid())?;
    if nanos >= 1_000_000_000 {
        return Err(invalid());
    }
    let overlap = Duration::new(seconds, nanos);
    if overlap > MAX_OVERLAP { Err(invalid()) } else { Ok(overlap) }
}

fn delivery_states(raw: &[i32]) -> Parsed<Vec<DeliveryState>> {
    raw.iter()
        .map(|value| match pb::WebhookDeliveryState::try_from(*value) {
            Ok(pb::WebhookDeliveryState::Pending) => Ok(DeliveryState::Pending),
            Ok(pb::WebhookDeliveryState::Delivered) => Ok(DeliveryState::Delivered),
            Ok(pb::WebhookDeliveryState::Failed) => Ok(DeliveryState::Failed),
            _ => Err(FieldViolation::new("states", format!("{value} is not a delivery state"))),
        })
        .collect()
}

fn endpoint_to_proto(endpoint: endpoint::Model) -> pb::WebhookEndpoint {
    let owner = match (endpoint.partner_id, endpoint.client_id) {
        (Some(partner_id), _) => Some(pb::webhook_endpoint::Owner::PartnerId(partner_id)),
        (None, Some(client_id)) => Some(pb::webhook_endpoint::Owner::ClientId(client_id)),
        (None, None) => None,
    };
    let previous_secret_expire_time =
        endpoint.previous_secret_expire_time.filter(|until| *until > now()).map(to_timestamp);
    pb::WebhookEndpoint {
        webhook_endpoint_id: endpoint.webhook_endpoint_id,
        owner,
        url: endpoint.url,
        description: endpoint.description,
        disabled: endpoint.disabled,
        disabled_reason: endpoint.disabled_reason,
        create_time: Some(to_timestamp(endpoint.create_time)),
        update_time: Some(to_timestamp(endpoint.update_time)),
        previous_secret_expire_time,
    }
}

fn delivery_to_proto((delivery, attempts): DeliveryWithAttempts) -> pb::WebhookDelivery {
    let state = match delivery.state {
        DeliveryState::Pending => pb::WebhookDeliveryState::Pending,
        DeliveryState::Delivered => pb::WebhookDeliveryState::Delivered,
        DeliveryState::Failed => pb::WebhookDeliveryState::Failed,
    };
    pb::WebhookDelivery {
        webhook_message_id: delivery.webhook_delivery_id.clone(),
        webhook_delivery_id: delivery.webhook_delivery_id,
        webhook_endpoint_id: delivery.webhook_endpoint_id,
        event_type: delivery.event_type,
        event_cursor: delivery.event_cursor,
        partner_change_id: delivery.partner_change_id,
        state: state as i32,
        attempts: attempts
            .into_iter()
            .map(|attempt| pb::WebhookAttempt {
                attempt_time: Some(to_timestamp(attempt.attempt_time)),
                http_status: attempt.http_status,
                error: attempt.error,
                duration: Some(prost_types::Duration {
                    seconds: attempt.duration_ms / 1000,
                    nanos: i32::try_from((attempt.duration_ms % 1000) * 1_000_000).unwrap_or(0),
                }),
            })
            .collect(),
        create_time: Some(to_timestamp(delivery.create_time)),
        next_attempt_time: delivery
            .next_attempt_time
            .filter(|_| state == pb::WebhookDeliveryState::Pending)
            .map(to_timestamp),
    }
}
