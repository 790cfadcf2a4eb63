//! The permissions service's gRPC boundary: parse → authorize → (ask the
//! account service) → store → map. Only this file knows the protobuf types.

use partnerhub_proto::{
    account::v1::{ListWabasRequest, account_service_client::AccountServiceClient, list_wabas_request::Owner},
    permissions::v1 as pb,
};
use partnerhub_runtime::{
    auth::{May, Policy, Subject, caller},
    error::{ErrorReason, FieldViolation, invalid_argument, not_found, permission_denied},
    pagination::{TokenSeal, page_size},
    peers::Peer,
    rpc::record_resource_id,
    time::{now, to_timestamp},
    validate::{PhoneNumber, Validate, id, optional_id},
};
use sea_orm::DatabaseConnection;
use tonic::{Request, Response, Status};

use std::sync::Arc;

use crate::{
    cache::{PermissionCache, Untrusted},
    domain::{Grant, GrantFilter, page_key, parse_page_key},
    error::PermissionsError,
    metrics::{AnswerLabels, metrics},
    store,
};

/// The most numbers one call may name.
pub const MAX_NUMBERS_PER_CALL: usize = 1000;

/// Who may call each method at all, checked before the request is read;
/// each handler then checks which client's or partner's permissions the caller may touch.
pub const POLICY: Policy = &[
    ("SetPartnerPermissions", &[May::Clients, May::Support]),
    ("ListPartnerPermissions", &[May::Clients, May::Partners, May::Support]),
    ("CheckPermission", &[May::Services]),
    // Applied by a migration: the partner-change service's alone.
    ("RevokePartnerPermissions", &[May::MigrationService]),
    ("GrantPartnerPermissions", &[May::MigrationService]),
];

/// The `PermissionsService` implementation.
#[derive(Debug, Clone)]
pub struct PermissionsApi {
    db: DatabaseConnection,
    /// Where the numbers' WABAs and their partners are looked up.
    account: Peer,
    /// Answers `CheckPermission`; told about every change this replica makes.
    cache: Arc<PermissionCache>,
    /// Seals list page tokens.
    pages: TokenSeal,
}

impl PermissionsApi {
    pub fn new(db: DatabaseConnection, account: Peer, cache: Arc<PermissionCache>, pages: TokenSeal) -> Self {
        Self { db, account, cache, pages }
    }

    /// Checks that every number is on a WABA of `client_id` that is with
    /// `partner_id` now; returns the IDs of those WABAs.
    async fn wabas_with_partner(
        &self,
        client_id: &str,
        partner_id: &str,
        numbers: &[PhoneNumber],
    ) -> Result<Vec<String>, PermissionsError> {
        let mut owner_of = std::collections::HashMap::new();
        let mut page_token = String::new();
        loop {
            // Only the WABAs holding the numbers: the cost follows the call,
            // not how many WABAs the client has.
            let request = ListWabasRequest {
                owner: Some(Owner::ClientId(client_id.to_owned())),
                page_size: 500,
                page_token: std::mem::take(&mut page_token),
                phone_numbers: numbers.iter().map(|number| number.as_str().to_owned()).collect(),
            };
            let page = self
                .account
                .call(request, |channel, request| async move {
                    AccountServiceClient::new(channel).list_wabas(request).await
                })
                .await
                .map_err(PermissionsError::Account)?
                .into_inner();
            for waba in page.wabas {
                for number in &waba.phone_numbers {
                    owner_of.insert(number.clone(), (waba.waba_id.clone(), waba.partner_id.clone()));
                }
            }
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        let mut waba_ids = Vec::new();
        let mut not_with_partner = Vec::new();
        for number in numbers {
            match owner_of.get(number.as_str()) {
                Some((waba_id, partner)) if partner == partner_id => {
                    if !waba_ids.contains(waba_id) {
                        waba_ids.push(waba_id.clone());
                    }
                }
                _ => not_with_partner.push(number.as_str().to_owned()),
            }
        }
        if !not_with_partner.is_empty() {
            return Err(PermissionsError::NumberNotWithPartner(not_with_partner));
        }
        Ok(waba_ids)
    }
}

type RpcResult<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl pb::permissions_service_server::PermissionsService for PermissionsApi {
    async fn set_partner_permissions(
        &self,
        request: Request<pb::SetPartnerPermissionsRequest>,
    ) -> RpcResult<pb::SetPartnerPermissionsResponse> {
        let caller = caller(&request)?;
        let r = request.get_ref();
        let (client_id, partner_id, numbers) = (
            id("client_id", &r.client_id),
            id("partner_id", &r.partner_id),
            PhoneNumber::parse_list("phone_numbers", &r.phone_numbers, MAX_NUMBERS_PER_CALL),
        )
            .validate()?;
        match caller {
            Subject::Support(_) => {}
            Subject::Client(own) if *own == client_id => {}
            Subject::Client(_) => return Err(not_found(ErrorReason::ClientNotFound, "client", "clientId", &client_id)),
            Subject::Partner(_) | Subject::Service(_) => return Err(permission_denied()),
        }
        let checked_at = now();
        let waba_ids = self.wabas_with_partner(&client_id, &partner_id, &numbers).await?;
        if let Some(partner_change_id) =
            store::migration_in_progress(&self.db, &waba_ids).await.map_err(PermissionsError::from)?
        {
            return Err(PermissionsError::MigrationInProgress(partner_change_id).into());
        }
        let (grants, logged) =
            store::replace_grants(&self.db, &caller.to_string(), &client_id, &partner_id, &numbers, checked_at).await?;
        self.cache.after_local_change(logged.as_ref()).await;
        Ok(Response::new(pb::SetPartnerPermissionsResponse {
            grants: grants.into_iter().map(grant_to_proto).collect(),
        }))
    }

    async fn list_partner_permissions(
        &self,
        request: Request<pb::ListPartnerPermissionsRequest>,
    ) -> RpcResult<pb::ListPartnerPermissionsResponse> {
        let caller = caller(&request)?;
        let r = request.get_ref();
        let (client_id, partner_id, size) =
            (optional_id("client_id", &r.client_id), optional_id("partner_id", &r.partner_id), page_size(r.page_size))
                .validate()?;
        let filter = list_filter(caller, client_id, partner_id)?;
        let scope = filter.page_scope();
        let after = self.pages.page_token(&r.page_token, &scope).validate()?;
        let after = after.as_deref().map(|key| parse_page_key(key).ok_or_else(bad_token)).transpose()?;
        let (grants, more) =
            store::list_grants(&self.db, &filter, after, size).await.map_err(PermissionsError::from)?;
        let next_page_token = match grants.last() {
            Some(last) if more => self.pages.next_page_token(&page_key(last), &scope),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListPartnerPermissionsResponse {
            grants: grants.into_iter().map(grant_to_proto).collect(),
            next_page_token,
        }))
    }

    async fn check_permission(
        &self,
        request: Request<pb::CheckPermissionRequest>,
    ) -> RpcResult<pb::CheckPermissionResponse> {
        let caller = caller(&request)?;
        let r = request.get_ref();
        let (partner_id, number) =
            (id("partner_id", &r.partner_id), PhoneNumber::parse("phone_number", &r.phone_number)).validate()?;
        allow(caller.is_service())?;
        let answer = self.cache.check(&partner_id, number.as_str());
        let answered_from = if answer.is_ok() { "cache" } else { "database" };
        metrics().checks.get_or_create(&AnswerLabels { answered_from }).inc();
        let allowed = match answer {
            Ok(allowed) => allowed,
            // The cache may be stale: ask the database, and fail closed if it does not answer.
            Err(Untrusted) => store::is_allowed(&self.db, &partner_id, number.as_str()).await?,
        };
        Ok(Response::new(pb::CheckPermissionResponse { allowed }))
    }

    async fn revoke_partner_permissions(
        &self,
        request: Request<pb::RevokePartnerPermissionsRequest>,
    ) -> RpcResult<pb::RevokePartnerPermissionsResponse> {
        let caller = caller(&request)?;
        let r = request.get_ref();
        let (partner_change_id, partner_id, numbers) = (
            id("partner_change_id", &r.partner_change_id),
            id("partner_id", &r.partner_id),
            PhoneNumber::parse_list("phone_numbers", &r.phone_numbers, MAX_NUMBERS_PER_CALL),
        )
            .validate()?;
        record_resource_id(&partner_change_id);
        allow(caller.is_service())?;
        let (revoked_count, already_applied, logged) =
            store::revoke(&self.db, &caller.to_string(), &partner_change_id, &partner_id, &numbers).await?;
        self.cache.after_local_change(logged.as_ref()).await;
        tracing::info!(%partner_change_id, %partner_id, revoked_count, already_applied, "permissions revoked");
        Ok(Response::new(pb::RevokePartnerPermissionsResponse { revoked_count, already_applied }))
    }

    async fn grant_partner_permissions(
        &self,
        request: Request<pb::GrantPartnerPermissionsRequest>,
    ) -> RpcResult<pb::GrantPartnerPermissionsResponse> {
        let caller = caller(&request)?;
        let r = request.get_ref();
        let (partner_change_id, client_id, partner_id, numbers) = (
            id("partner_change_id", &r.partner_change_id),
            id("client_id", &r.client_id),
            id("partner_id", &r.partner_id),
            PhoneNumber::parse_list("phone_numbers", &r.phone_numbers, MAX_NUMBERS_PER_CALL),
        )
            .validate()?;
        record_resource_id(&partner_change_id);
        allow(caller.is_service())?;
        // A repeat answers from the record, even if the world has moved on since.
        if store::find_application(&self.db, &partner_change_id, store::Action::Grant)
            .await
            .map_err(PermissionsError::from)?
            .is_none()
        {
            self.wabas_with_partner(&client_id, &partner_id, &numbers).await?;
        }
        let (grants, already_applied, logged) =
            store::grant(&self.db, &caller.to_string(), &partner_change_id, &client_id, &partner_id, &numbers).await?;
        self.cache.after_local_change(logged.as_ref()).await;
        tracing::info!(%partner_change_id, %partner_id, granted = grants.len(), already_applied, "permissions granted");
        Ok(Response::new(pb::GrantPartnerPermissionsResponse {
            grants: grants.into_iter().map(grant_to_proto).collect(),
            already_applied,
        }))
    }
}

fn allow(allowed: bool) -> Result<(), Status> {
    if allowed { Ok(()) } else { Err(permission_denied()) }
}

fn bad_token() -> Status {
    invalid_argument(&[FieldViolation::new("page_token", "is not a token issued for this request's filters")])
}

/// A client sees what it granted, a partner what it was granted (each may narrow
/// to the other party); support names at least one. Another tenant: NOT_FOUND.
fn list_filter(caller: &Subject, client_id: Option<String>, partner_id: Option<String>) -> Result<GrantFilter, Status> {
    match caller {
        Subject::Client(own) => match client_id {
            Some(named) if named != *own => Err(not_found(ErrorReason::ClientNotFound, "client", "clientId", &named)),
            _ => Ok(GrantFilter { client_id: Some(own.clone()), partner_id }),
        },
        Subject::Partner(own) => match partner_id {
            Some(named) if named != *own => {
                Err(not_found(ErrorReason::PartnerNotFound, "partner", "partnerId", &named))
            }
            _ => Ok(GrantFilter { client_id, partner_id: Some(own.clone()) }),
        },
        Subject::Support(_) if client_id.is_none() && partner_id.is_none() => {
            Err(invalid_argument(&[FieldViolation::new("client_id", "support must name a client_id or a partner_id")]))
        }
        Subject::Support(_) => Ok(GrantFilter { client_id, partner_id }),
        Subject::Service(_) => Err(permission_denied()),
    }
}

fn grant_to_proto(grant: Grant) -> pb::PermissionGrant {
    pb::PermissionGrant {
        client_id: grant.client_id,
        partner_id: grant.partner_id,
        phone_number: grant.phone_number,
        grant_time: Some(to_timestamp(grant.grant_time)),
    }
}
