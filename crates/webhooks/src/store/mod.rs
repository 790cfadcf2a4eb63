//! Persistence for the webhooks service.
//!
//! **Architecture Invariant:** the webhooks service is the only reader and
//! writer of these tables; it learns events over gRPC, never from the
//! partner-change service's tables.

pub mod entities;
pub mod migration;

use std::time::Duration;

use chrono::{DateTime, Utc};
use partnerhub_runtime::{
    db::{StoreError, begin_write, database_now, database_time_after},
    ids::new_id,
    pagination::split_page,
};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend,
    DbErr, EntityTrait, IntoActiveModel, QueryFilter, QueryOrder, QuerySelect, Set,
    sea_query::{Expr, ExprTrait, LockBehavior, LockType, Query},
};

use self::entities::{attempt, delivery, endpoint, follower};
use crate::domain::{DeliveryState, Owner};

pub async fn migrate(db: &DatabaseConnection) -> Result<(), DbErr> {
    partnerhub_runtime::db::migrate::<migration::Migrator>(db).await
}

/// What is stored of a new endpoint.
#[derive(Debug, Clone)]
pub struct NewEndpoint {
    pub owner: Owner,
    pub url: String,
    pub description: String,
    pub secret: String,
}

pub async fn create_endpoint(
    db: &DatabaseConnection,
    new: NewEndpoint,
    now: DateTime<Utc>,
) -> Result<endpoint::Model, StoreError> {
    let (partner_id, client_id) = match new.owner {
        Owner::Partner(id) => (Some(id), None),
        Owner::Client(id) => (None, Some(id)),
    };
    let model = endpoint::Model {
        webhook_endpoint_id: new_id("whe"),
        partner_id,
        client_id,
        url: new.url,
        description: new.description,
        disabled: false,
        disabled_reason: String::new(),
        secret: new.secret,
        previous_secret: None,
        previous_secret_expire_time: None,
        failing_since: None,
        create_time: now,
        update_time: now,
    };
    endpoint::Entity::insert(model.clone().into_active_model()).exec(db).await?;
    Ok(model)
}

pub async fn find_endpoint(db: &impl ConnectionTrait, id: &str) -> Result<Option<endpoint::Model>, DbErr> {
    endpoint::Entity::find_by_id(id).one(db).await
}

/// How many endpoints `owner` has.
pub async fn count_endpoints(db: &DatabaseConnection, owner: &Owner) -> Result<u64, DbErr> {
    use sea_orm::PaginatorTrait;
    match owner {
        Owner::Partner(id) => endpoint::Entity::find().filter(endpoint::Column::PartnerId.eq(id)).count(db).await,
        Owner::Client(id) => endpoint::Entity::find().filter(endpoint::Column::ClientId.eq(id)).count(db).await,
    }
}

/// An owner's endpoints after `after` (an ID), in creation order, and whether more follow.
pub async fn list_endpoints(
    db: &DatabaseConnection,
    owner: &Owner,
    after: Option<&str>,
    page_size: u64,
) -> Result<(Vec<endpoint::Model>, bool), DbErr> {
    let mut query = match owner {
        Owner::Partner(id) => endpoint::Entity::find().filter(endpoint::Column::PartnerId.eq(id)),
        Owner::Client(id) => endpoint::Entity::find().filter(endpoint::Column::ClientId.eq(id)),
    };
    if let Some(after) = after {
        query = query.filter(endpoint::Column::WebhookEndpointId.gt(after));
    }
    let models =
        query.order_by_asc(endpoint::Column::WebhookEndpointId).limit(page_size.saturating_add(1)).all(db).await?;
    Ok(split_page(models, page_size))
}

/// The fields `UpdateWebhookEndpoint` may set.
#[derive(Debug, Clone, Default)]
pub struct EndpointChanges {
    pub url: Option<String>,
    pub description: Option<String>,
    pub disabled: Option<bool>,
}

pub async fn update_endpoint(
    db: &DatabaseConnection,
    id: &str,
    changes: EndpointChanges,
    now: DateTime<Utc>,
) -> Result<Option<endpoint::Model>, StoreError> {
    change_endpoint(db, id, now, |_, model| {
        if let Some(url) = changes.url {
            model.url = Set(url);
        }
        if let Some(description) = changes.description {
            model.description = Set(description);
        }
        if let Some(disabled) = changes.disabled {
            model.disabled = Set(disabled);
            model.disabled_reason = Set(if disabled { "disabled by its owner".to_owned() } else { String::new() });
            if !disabled {
                // A fresh start: the failures before it was disabled do not count against it.
                model.failing_since = Set(None);
            }
        }
    })
    .await
}

/// Deletes the endpoint and, with it (the foreign keys cascade), its deliveries and their attempts.
pub async fn delete_endpoint(db: &DatabaseConnection, id: &str) -> Result<bool, StoreError> {
    Ok(endpoint::Entity::delete_by_id(id).exec(db).await?.rows_affected > 0)
}

/// Makes `secret` the endpoint's; the current one keeps signing until `previous_until`, if given.
pub async fn rotate_secret(
    db: &DatabaseConnection,
    id: &str,
    secret: String,
    previous_until: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<Option<endpoint::Model>, StoreError> {
    change_endpoint(db, id, now, |current, model| {
        model.secret = Set(secret);
        model.previous_secret = Set(previous_until.map(|_| current.secret.clone()));
        model.previous_secret_expire_time = Set(previous_until);
    })
    .await
}

/// Reads the endpoint and writes what `change` sets (and the update time) in
/// one transaction; `None` when it is missing, or was deleted meanwhile.
async fn change_endpoint(
    db: &DatabaseConnection,
    id: &str,
    now: DateTime<Utc>,
    change: impl FnOnce(&endpoint::Model, &mut endpoint::ActiveModel),
) -> Result<Option<endpoint::Model>, StoreError> {
    let tx = begin_write(db).await?;
    let Some(current) = find_endpoint(&tx, id).await? else { return Ok(None) };
    let mut model = current.clone().into_active_model();
    change(&current, &mut model);
    model.update_time = Set(now);
    let updated = match model.update(&tx).await {
        // Deleted by a concurrent call since it was read: as missing as if it never was.
        Err(DbErr::RecordNotUpdated) => return Ok(None),
        updated => updated?,
    };
    tx.commit().await?;
    Ok(Some(updated))
}

/// A delivery with its attempts, oldest attempt first.
pub type DeliveryWithAttempts = (delivery::Model, Vec<attempt::Model>);

/// An endpoint's deliveries in `states` (all when empty), newest first,
/// before `before` (an ID), and whether more follow.
pub async fn list_deliveries(
    db: &DatabaseConnection,
    endpoint_id: &str,
    states: &[DeliveryState],
    before: Option<&str>,
    page_size: u64,
) -> Result<(Vec<DeliveryWithAttempts>, bool), DbErr> {
    let mut query = delivery::Entity::find().filter(delivery::Column::WebhookEndpointId.eq(endpoint_id));
    if !states.is_empty() {
        query = query.filter(delivery::Column::State.is_in(states.iter().copied()));
    }
    if let Some(before) = before {
        query = query.filter(delivery::Column::WebhookDeliveryId.lt(before));
    }
    let models =
        query.order_by_desc(delivery::Column::WebhookDeliveryId).limit(page_size.saturating_add(1)).all(db).await?;
    let (models, more) = split_page(models, page_size);
    let mut attempts = attempts_of(db, models.iter().map(|model| model.webhook_delivery_id.clone())).await?;
    let listed = models
        .into_iter()
        .map(|model| {
            let own = attempts.remove(&model.webhook_delivery_id).unwrap_or_default();
            (model, own)
        })
        .collect();
    Ok((listed, more))
}

async fn attempts_of(
    db: &impl ConnectionTrait,
    delivery_ids: impl IntoIterator<Item = String>,
) -> Result<std::collections::HashMap<String, Vec<attempt::Model>>, DbErr> {
    let ids: Vec<String> = delivery_ids.into_iter().collect();
    let mut by_delivery: std::collections::HashMap<String, Vec<attempt::Model>> = std::collections::HashMap::new();
    if ids.is_empty() {
        return Ok(by_delivery);
    }
    let attempts = attempt::Entity::find()
        .filter(attempt::Column::WebhookDeliveryId.is_in(ids))
        .order_by_asc(attempt::Column::Id)
        .all(db)
        .await?;
    for attempt in attempts {
        by_delivery.entry(attempt.webhook_delivery_id.clone()).or_default().push(attempt);
    }
    Ok(by_delivery)
}

pub async fn find_delivery(db: &impl ConnectionTrait, id: &str) -> Result<Option<DeliveryWithAttempts>, DbErr> {
    let Some(model) = delivery::Entity::find_by_id(id).one(db).await? else { return Ok(None) };
    let attempts = attempts_of(db, [model.webhook_delivery_id.clone()]).await?.remove(id).unwrap_or_default();
    Ok(Some((model, attempts)))
}

/// Makes a delivery due now, whatever its state (a redelivery on demand).
pub async fn redeliver(db: &DatabaseConnection, id: &str, now: DateTime<Utc>) -> Result<bool, StoreError> {
    let updated = delivery::Entity::update_many()
        .col_expr(delivery::Column::State, Expr::value(DeliveryState::Pending))
        .col_expr(delivery::Column::NextAttemptTime, Expr::value(now))
        .col_expr(delivery::Column::LeaseUntil, Expr::value(Option::<DateTime<Utc>>::None))
        .filter(delivery::Column::WebhookDeliveryId.eq(id))
        .exec(db)
        .await?;
    Ok(updated.rows_affected > 0)
}

// ---- Following the event stream ----

/// Takes (or renews) the follower's lease for `holder`, judged by the
/// database's clock; the stored cursor when it is `holder`'s, `None` while
/// another replica holds it.
pub async fn take_follower_lease(
    db: &DatabaseConnection,
    holder: &str,
    lease: Duration,
) -> Result<Option<String>, StoreError> {
    let backend = db.get_database_backend();
    let taken = follower::Entity::update_many()
        .col_expr(follower::Column::Holder, Expr::value(holder))
        .col_expr(follower::Column::LeaseUntil, database_time_after(backend, lease))
        .filter(follower::Column::Id.eq(1))
        .filter(
            Condition::any()
                .add(follower::Column::Holder.eq(holder))
                .add(follower::Column::Holder.is_null())
                .add(Expr::col(follower::Column::LeaseUntil).lt(database_now(backend))),
        )
        .exec(db)
        .await?;
    if taken.rows_affected == 0 {
        return Ok(None);
    }
    Ok(follower::Entity::find_by_id(1).one(db).await?.map(|row| row.cursor))
}

/// Gives the lease up (at shutdown), so another replica need not wait for it to lapse.
pub async fn release_follower_lease(db: &DatabaseConnection, holder: &str) -> Result<(), DbErr> {
    follower::Entity::update_many()
        .col_expr(follower::Column::LeaseUntil, Expr::value(Option::<DateTime<Utc>>::None))
        .col_expr(follower::Column::Holder, Expr::value(Option::<String>::None))
        .filter(follower::Column::Id.eq(1))
        .filter(follower::Column::Holder.eq(holder))
        .exec(db)
        .await?;
    Ok(())
}

/// The partner-change service's published view of each request's trace
/// context (a read contract on the shared request table).
pub const TRACES_VIEW: &str = "partner_change_traces";

/// The stored trace context of each of `partner_change_ids` that has one.
pub async fn trace_parents(
    db: &DatabaseConnection,
    partner_change_ids: &[&str],
) -> Result<std::collections::HashMap<String, String>, DbErr> {
    if partner_change_ids.is_empty() {
        return Ok(std::collections::HashMap::new());
    }
    let query = Query::select()
        .columns([sea_orm::sea_query::Alias::new("partner_change_id"), sea_orm::sea_query::Alias::new("trace_parent")])
        .from(sea_orm::sea_query::Alias::new(TRACES_VIEW))
        .and_where(
            Expr::col(sea_orm::sea_query::Alias::new("partner_change_id")).is_in(partner_change_ids.iter().copied()),
        )
        .to_owned();
    db.query_all(&query)
        .await?
        .iter()
        .map(|row| Ok((row.try_get::<String>("", "partner_change_id")?, row.try_get::<String>("", "trace_parent")?)))
        .collect()
}

/// One event read from the stream, ready to be fanned out.
#[derive(Debug, Clone)]
pub struct StreamEvent {
    pub cursor: String,
    pub event_type: String,
    pub partner_change_id: String,
    pub client_id: String,
    pub partner_ids: [String; 2],
    pub body: String,
    pub trace_parent: Option<String>,
}

/// The enabled endpoints that see any event of a batch, read once for the batch.
#[derive(Debug, Default)]
pub struct Watching(Vec<(String, Option<String>, Option<String>)>);

impl Watching {
    /// No endpoint sees any event of the batch: there is nothing to deliver.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The endpoints that see `event`.
    fn endpoints_of(&self, event: &StreamEvent) -> Vec<String> {
        self.0
            .iter()
            .filter(|(_, partner_id, client_id)| {
                partner_id.as_ref().is_some_and(|id| event.partner_ids.contains(id))
                    || client_id.as_ref() == Some(&event.client_id)
            })
            .map(|(endpoint_id, _, _)| endpoint_id.clone())
            .collect()
    }
}

/// Every enabled endpoint that sees any of `events`, in one read.
pub async fn endpoints_watching(db: &DatabaseConnection, events: &[StreamEvent]) -> Result<Watching, StoreError> {
    let partners: Vec<String> = events.iter().flat_map(|event| event.partner_ids.iter().cloned()).collect();
    let clients: Vec<String> = events.iter().map(|event| event.client_id.clone()).collect();
    let watching = endpoint::Entity::find()
        .select_only()
        .column(endpoint::Column::WebhookEndpointId)
        .column(endpoint::Column::PartnerId)
        .column(endpoint::Column::ClientId)
        .filter(endpoint::Column::Disabled.eq(false))
        .filter(
            Condition::any()
                .add(endpoint::Column::PartnerId.is_in(partners))
                .add(endpoint::Column::ClientId.is_in(clients)),
        )
        .into_tuple()
        .all(db)
        .await?;
    Ok(Watching(watching))
}

/// A delivery of each event to every endpoint of `watching` that sees it
/// (once: a delivery already there is left as it is), and the cursor after the
/// last, in one transaction; when no endpoint sees any, only the cursor (one
/// statement). Returns how many deliveries the batch has (added now, or already
/// there from an earlier read of it); `None` (and nothing written) when
/// `holder` no longer holds the follower's lease.
pub async fn record_events(
    db: &DatabaseConnection,
    holder: &str,
    events: &[StreamEvent],
    watching: &Watching,
    lease: Duration,
    now: DateTime<Utc>,
) -> Result<Option<usize>, StoreError> {
    let Some(last) = events.last() else { return Ok(Some(0)) };
    let advance = follower::Entity::update_many()
        .col_expr(follower::Column::Cursor, Expr::value(last.cursor.clone()))
        .col_expr(follower::Column::LeaseUntil, database_time_after(db.get_database_backend(), lease))
        .filter(follower::Column::Id.eq(1))
        .filter(follower::Column::Holder.eq(holder));
    if watching.is_empty() {
        let still_holder = advance.exec(db).await?.rows_affected > 0;
        return Ok(still_holder.then_some(0));
    }
    let tx = begin_write(db).await?;
    if advance.exec(&tx).await?.rows_affected == 0 {
        return Ok(None);
    }
    let mut added = 0;
    for event in events {
        let endpoints = watching.endpoints_of(event);
        if endpoints.is_empty() {
            continue;
        }
        added += endpoints.len();
        let rows = endpoints.into_iter().map(|endpoint_id| {
            delivery::Model {
                webhook_delivery_id: format!("msg_{}", uuid::Uuid::now_v7().simple()),
                webhook_endpoint_id: endpoint_id,
                event_cursor: event.cursor.clone(),
                event_type: event.event_type.clone(),
                partner_change_id: event.partner_change_id.clone(),
                body: event.body.clone(),
                state: DeliveryState::Pending,
                attempt_count: 0,
                next_attempt_time: Some(now),
                lease_until: None,
                create_time: now,
                trace_parent: event.trace_parent.clone(),
            }
            .into_active_model()
        });
        delivery::Entity::insert_many(rows)
            .on_conflict_do_nothing_on([delivery::Column::WebhookEndpointId, delivery::Column::EventCursor])
            .exec(&tx)
            .await?;
    }
    tx.commit().await?;
    Ok(Some(added))
}

// ---- Delivering ----

/// A delivery claimed for sending, with where and how to sign it.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub delivery: delivery::Model,
    pub endpoint: endpoint::Model,
}

/// Claims up to `limit` due deliveries of enabled endpoints, at most
/// `room(endpoint)` of each (none of those in `busy`), for `lease` (by the
/// database's clock): no other replica sends them until it lapses (a replica
/// that dies mid-send leaves them to be taken over then). Due rows beyond an
/// endpoint's room are left untouched, not claimed and given back (the
/// endpoints already full are left out of the query).
pub async fn claim_due(
    db: &DatabaseConnection,
    limit: u64,
    busy: &[String],
    room: impl Fn(&str) -> usize,
    lease: Duration,
    now: DateTime<Utc>,
) -> Result<Vec<Claimed>, StoreError> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let backend = db.get_database_backend();
    let free = Condition::any()
        .add(delivery::Column::LeaseUntil.is_null())
        .add(Expr::col(delivery::Column::LeaseUntil).lt(database_now(backend)));
    let enabled = Query::select()
        .column(endpoint::Column::WebhookEndpointId)
        .from(endpoint::Entity)
        .and_where(endpoint::Column::Disabled.eq(false))
        .to_owned();
    let mut due = Query::select();
    due.columns([delivery::Column::WebhookDeliveryId, delivery::Column::WebhookEndpointId])
        .from(delivery::Entity)
        .and_where(delivery::Column::State.eq(DeliveryState::Pending))
        .and_where(delivery::Column::NextAttemptTime.lte(now))
        .cond_where(free.clone())
        .and_where(delivery::Column::WebhookEndpointId.in_subquery(enabled))
        .order_by(delivery::Column::NextAttemptTime, sea_orm::Order::Asc)
        .limit(limit);
    if !busy.is_empty() {
        due.and_where(delivery::Column::WebhookEndpointId.is_not_in(busy.iter().cloned()));
    }
    if backend == DbBackend::Postgres {
        // Replicas claiming at once take different rows instead of queueing on the same ones.
        due.lock_with_behavior(LockType::Update, LockBehavior::SkipLocked);
    }
    let tx = begin_write(db).await?;
    let rows: Vec<(String, String)> = tx
        .query_all(&due)
        .await?
        .iter()
        .map(|row| {
            Ok((row.try_get::<String>("", "webhook_delivery_id")?, row.try_get::<String>("", "webhook_endpoint_id")?))
        })
        .collect::<Result<_, DbErr>>()?;
    let mut taken: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let mut ids = Vec::new();
    for (id, endpoint_id) in &rows {
        let count = taken.entry(endpoint_id.as_str()).or_default();
        if *count < room(endpoint_id) && (ids.len() as u64) < limit {
            *count += 1;
            ids.push(id.clone());
        }
    }
    if ids.is_empty() {
        tx.commit().await?;
        return Ok(Vec::new());
    }
    // The lease is judged by the database's clock; the rows it returns are the ones this call took.
    let deliveries = delivery::Entity::update_many()
        .col_expr(delivery::Column::LeaseUntil, database_time_after(backend, lease))
        .filter(delivery::Column::WebhookDeliveryId.is_in(ids))
        .filter(free)
        .exec_with_returning(&tx)
        .await?;
    let endpoint_ids: Vec<String> = deliveries.iter().map(|d| d.webhook_endpoint_id.clone()).collect();
    let endpoints =
        endpoint::Entity::find().filter(endpoint::Column::WebhookEndpointId.is_in(endpoint_ids)).all(&tx).await?;
    tx.commit().await?;
    Ok(deliveries
        .into_iter()
        .filter_map(|delivery| {
            let endpoint = endpoints.iter().find(|e| e.webhook_endpoint_id == delivery.webhook_endpoint_id)?.clone();
            Some(Claimed { delivery, endpoint })
        })
        .collect())
}

/// How one attempt went.
#[derive(Debug, Clone)]
pub struct AttemptOutcome {
    pub time: DateTime<Utc>,
    /// The HTTP status, if an answer came.
    pub http_status: Option<u16>,
    pub error: String,
    pub duration: Duration,
}

impl AttemptOutcome {
    pub fn delivered(&self) -> bool {
        self.http_status.is_some_and(|status| (200..300).contains(&status))
    }
}

/// What became of a delivery after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterAttempt {
    /// Due again then.
    Retry(DateTime<Utc>),
    Failed,
    /// The endpoint has failed everything for too long and was disabled.
    EndpointDisabled,
    /// The delivery was deleted with its endpoint meanwhile: nothing to record.
    Deleted,
}

/// Records a failed attempt (delivered ones: [`record_delivered`]) and what
/// follows from it: due again after `retry_in` (`None`: the schedule is
/// exhausted, failed), and the endpoint disabled once it has failed
/// everything since `disable_after` ago.
pub async fn record_failed_attempt(
    db: &DatabaseConnection,
    claimed: &Claimed,
    outcome: &AttemptOutcome,
    retry_in: Option<Duration>,
    disable_after: Duration,
) -> Result<AfterAttempt, StoreError> {
    let tx = begin_write(db).await?;
    let delivery_id = &claimed.delivery.webhook_delivery_id;
    if lock_existing(&tx, [delivery_id.clone()]).await?.is_empty() {
        tx.commit().await?;
        return Ok(AfterAttempt::Deleted);
    }
    let record = attempt::ActiveModel {
        webhook_delivery_id: Set(delivery_id.clone()),
        attempt_time: Set(outcome.time),
        http_status: Set(outcome.http_status.map_or(0, i32::from)),
        error: Set(outcome.error.chars().take(500).collect()),
        duration_ms: Set(i64::try_from(outcome.duration.as_millis()).unwrap_or(i64::MAX)),
        ..Default::default()
    };
    attempt::Entity::insert(record).exec(&tx).await?;
    let now = outcome.time;
    let endpoint_id = &claimed.endpoint.webhook_endpoint_id;
    let failing_since = find_endpoint(&tx, endpoint_id).await?.and_then(|e| e.failing_since).unwrap_or(now);
    let disable = now - failing_since >= chrono::Duration::from_std(disable_after).unwrap_or(chrono::Duration::MAX);
    let mut update = endpoint::Entity::update_many()
        .col_expr(endpoint::Column::FailingSince, Expr::value(failing_since))
        .filter(endpoint::Column::WebhookEndpointId.eq(endpoint_id));
    if disable {
        let reason =
            format!("every delivery failed for {} (webhooks.disable_after)", humantime::format_duration(disable_after));
        update = update
            .col_expr(endpoint::Column::Disabled, Expr::value(true))
            .col_expr(endpoint::Column::DisabledReason, Expr::value(reason))
            .col_expr(endpoint::Column::UpdateTime, Expr::value(now));
    }
    update.exec(&tx).await?;
    let (after, state, next) = match (disable, retry_in) {
        (true, _) => (AfterAttempt::EndpointDisabled, DeliveryState::Failed, None),
        (false, Some(delay)) => {
            let delay = chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
            let at = now.checked_add_signed(delay).unwrap_or(DateTime::<Utc>::MAX_UTC);
            (AfterAttempt::Retry(at), DeliveryState::Pending, Some(at))
        }
        (false, None) => (AfterAttempt::Failed, DeliveryState::Failed, None),
    };
    delivery::Entity::update_many()
        .col_expr(delivery::Column::State, Expr::value(state))
        .col_expr(delivery::Column::NextAttemptTime, Expr::value(next))
        .col_expr(delivery::Column::LeaseUntil, Expr::value(Option::<DateTime<Utc>>::None))
        .col_expr(delivery::Column::AttemptCount, Expr::col(delivery::Column::AttemptCount).add(1))
        .filter(delivery::Column::WebhookDeliveryId.eq(delivery_id))
        .exec(&tx)
        .await?;
    tx.commit().await?;
    Ok(after)
}

/// Which of the deliveries `ids` still exist (not deleted with their
/// endpoint), their rows locked until commit on PostgreSQL so that none is
/// deleted before the attempts written for them.
async fn lock_existing(
    tx: &DatabaseTransaction,
    ids: impl IntoIterator<Item = String>,
) -> Result<std::collections::HashSet<String>, DbErr> {
    let mut query = delivery::Entity::find()
        .select_only()
        .column(delivery::Column::WebhookDeliveryId)
        .filter(delivery::Column::WebhookDeliveryId.is_in(ids));
    if tx.get_database_backend() == DbBackend::Postgres {
        query = query.lock_shared();
    }
    Ok(query.into_tuple().all(tx).await?.into_iter().collect())
}

/// Records delivered attempts (2xx) in one transaction: each attempt, each
/// delivery delivered, and their endpoints no longer failing.
pub async fn record_delivered(
    db: &DatabaseConnection,
    delivered: &[(Claimed, AttemptOutcome)],
) -> Result<(), StoreError> {
    if delivered.is_empty() {
        return Ok(());
    }
    let tx = begin_write(db).await?;
    // Deliveries deleted with their endpoint meanwhile are skipped.
    let ids = delivered.iter().map(|(claimed, _)| claimed.delivery.webhook_delivery_id.clone());
    let still_there = lock_existing(&tx, ids).await?;
    let delivered: Vec<&(Claimed, AttemptOutcome)> =
        delivered.iter().filter(|(claimed, _)| still_there.contains(&claimed.delivery.webhook_delivery_id)).collect();
    if delivered.is_empty() {
        tx.commit().await?;
        return Ok(());
    }
    let attempts = delivered.iter().map(|(claimed, outcome)| attempt::ActiveModel {
        webhook_delivery_id: Set(claimed.delivery.webhook_delivery_id.clone()),
        attempt_time: Set(outcome.time),
        http_status: Set(outcome.http_status.map_or(0, i32::from)),
        error: Set(String::new()),
        duration_ms: Set(i64::try_from(outcome.duration.as_millis()).unwrap_or(i64::MAX)),
        ..Default::default()
    });
    attempt::Entity::insert_many(attempts).exec(&tx).await?;
    let ids = delivered.iter().map(|(claimed, _)| claimed.delivery.webhook_delivery_id.clone());
    delivery::Entity::update_many()
        .col_expr(delivery::Column::State, Expr::value(DeliveryState::Delivered))
        .col_expr(delivery::Column::NextAttemptTime, Expr::value(Option::<DateTime<Utc>>::None))
        .col_expr(delivery::Column::LeaseUntil, Expr::value(Option::<DateTime<Utc>>::None))
        .col_expr(delivery::Column::AttemptCount, Expr::col(delivery::Column::AttemptCount).add(1))
        .filter(delivery::Column::WebhookDeliveryId.is_in(ids))
        .exec(&tx)
        .await?;
    let endpoints = delivered.iter().map(|(claimed, _)| claimed.endpoint.webhook_endpoint_id.clone());
    // Written only where it changes: concurrent batches need not queue on endpoint rows.
    endpoint::Entity::update_many()
        .col_expr(endpoint::Column::FailingSince, Expr::value(Option::<DateTime<Utc>>::None))
        .filter(endpoint::Column::WebhookEndpointId.is_in(endpoints))
        .filter(endpoint::Column::FailingSince.is_not_null())
        .exec(&tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Pending deliveries, and the age of the oldest that is due (for the gauges).
pub async fn queue_depth(db: &DatabaseConnection, now: DateTime<Utc>) -> Result<(u64, Option<Duration>), DbErr> {
    use sea_orm::PaginatorTrait;
    let pending = delivery::Entity::find().filter(delivery::Column::State.eq(DeliveryState::Pending));
    let count = pending.clone().count(db).await?;
    let oldest = pending
        .filter(delivery::Column::NextAttemptTime.lte(now))
        .order_by_asc(delivery::Column::CreateTime)
        .one(db)
        .await?
        .map(|oldest| (now - oldest.create_time).to_std().unwrap_or_default());
    Ok((count, oldest))
}

/// Gives claims back unsent (this replica had no slot for them).
pub async fn release_claims(db: &DatabaseConnection, ids: &[String]) -> Result<(), StoreError> {
    delivery::Entity::update_many()
        .col_expr(delivery::Column::LeaseUntil, Expr::value(Option::<DateTime<Utc>>::None))
        .filter(delivery::Column::WebhookDeliveryId.is_in(ids.iter().cloned()))
        .exec(db)
        .await?;
    Ok(())
}
