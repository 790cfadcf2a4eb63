//! Persistence for the partner-change service: the shared request table, its
//! event log, and the conditional writes that move requests between states.
//!
//! **Architecture Invariant:** every change of a request's state is one
//! transaction that updates the row *only if* it still has the state and
//! version that were read, and appends the event (transactional outbox): no
//! event without its change, no change without its event.
//!
//! **Architecture Invariant:** event positions are taken from the one row of
//! `event_log_head`, last thing before commit. Its row lock is held until the
//! transaction ends, so a transaction cannot take position N+1 before the one
//! holding N has committed or rolled back: positions become visible in order,
//! and a reader that has seen N+1 can never later see N appear.

pub mod entities;
pub mod migration;
pub mod snapshot;

use std::time::Duration;

use chrono::{DateTime, Utc};
use partnerhub_runtime::{
    db::{
        LogRows, StoreError, append_to_log, begin_write, database_now, database_time_after, head_position,
        query_planned_each_time, write_then_append,
    },
    retention::{self, PrunedLog},
    time::now,
};
use sea_orm::{
    ActiveEnum, ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr,
    EntityTrait, FromQueryResult, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, QueryTrait, Set,
    sea_query::{Expr, ExprTrait, LockBehavior, LockType, UnionType},
};

use self::entities::{event, partner_change};
use crate::domain::{Event, EventDraft, EventType, PartnerChange, SagaStep, State, next_state};

/// The PostgreSQL notification channel that wakes every replica's event tailer.
pub const EVENTS_CHANNEL: &str = "partnerhub_partner_change_events";

/// Whose events a reader wants.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EventScope {
    All,
    Client(String),
    /// Requests to or from the partner.
    Partner(String),
}

/// Up to `limit` events after `after`, in position order, within `scope`.
pub async fn events_after(
    db: &DatabaseConnection,
    after: i64,
    scope: &EventScope,
    limit: u64,
) -> Result<Vec<Event>, StoreError> {
    let mut query = event::Entity::find().filter(event::Column::Position.gt(after));
    query = match scope {
        EventScope::All => query,
        EventScope::Client(id) => query.filter(event::Column::ClientId.eq(id)),
        EventScope::Partner(id) => query.filter(
            Condition::any().add(event::Column::SourcePartnerId.eq(id)).add(event::Column::DestinationPartnerId.eq(id)),
        ),
    };
    let models = query.order_by_asc(event::Column::Position).limit(limit).all(db).await?;
    models.into_iter().map(event_from_model).collect()
}

/// The position of the newest event (0 when there is none).
pub async fn last_position(db: &DatabaseConnection) -> Result<i64, StoreError> {
    Ok(head_position(db, "event_log_head").await?)
}

/// The event log as `partnerhub_runtime::retention` prunes it.
pub const EVENT_LOG: PrunedLog =
    PrunedLog { table: "partner_change_events", task: "event_log_pruner", lock_key: 7_262_101 };

/// The oldest position the event log still holds (`None`: it holds none).
pub async fn oldest_position(db: &DatabaseConnection) -> Result<Option<i64>, StoreError> {
    Ok(retention::oldest_position(db, EVENT_LOG.table).await?)
}

/// What a transition changes besides the state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Effects {
    pub failure_reason: Option<String>,
    pub saga_step: Option<SagaStep>,
    /// Hold the request for this worker for this long, by the database's clock.
    pub lease: Option<(String, Duration)>,
    /// Record the numbers that the grant skipped (see `PartnerChange::skipped_grant_phone_numbers`).
    pub skipped_grant_phone_numbers: Option<Vec<String>>,
    /// Set (or, with `Some(None)`, clear) the earliest start of the migration.
    pub migrate_after: Option<Option<DateTime<Utc>>>,
    /// Drop any lease and reset the retry count.
    pub release: bool,
    /// Replace the stored trace context (see `PartnerChange::trace_parent`).
    pub trace_parent: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The event may not happen in the request's state.
    #[error("a {event:?} event cannot happen in state {state:?}")]
    InvalidState { state: State, event: EventType },
    /// Someone else changed the request since it was read.
    #[error("the request changed concurrently")]
    Conflict,
    /// A unique key was taken (idempotency key, or the WABA's one open request).
    #[error("duplicate: {0}")]
    Duplicate(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<DbErr> for WriteError {
    fn from(err: DbErr) -> Self {
        match StoreError::from(err) {
            StoreError::UniqueViolation(detail) => WriteError::Duplicate(detail),
            other => WriteError::Store(other),
        }
    }
}

/// The row that stores `change` as it is: unleased, with no retries, and
/// holding its WABA's one open slot while it is open.
pub fn stored_row(change: &PartnerChange) -> partner_change::ActiveModel {
    partner_change::ActiveModel {
        partner_change_id: Set(change.partner_change_id.clone()),
        request_id: Set(change.request_id.clone()),
        waba_id: Set(change.waba_id.clone()),
        client_id: Set(change.client_id.clone()),
        source_partner_id: Set(change.source_partner_id.clone()),
        destination_partner_id: Set(change.destination_partner_id.clone()),
        state: Set(change.state),
        phone_numbers: Set(change.phone_numbers.join(",")),
        grant_phone_numbers: Set(change.grant_phone_numbers.join(",")),
        skipped_grant_phone_numbers: Set(change.skipped_grant_phone_numbers.join(",")),
        accepted_terms_version: Set(change.accepted_terms_version.clone()),
        failure_reason: Set(change.failure_reason.clone()),
        saga_step: Set(change.saga_step),
        version: Set(change.version),
        attempts: Set(0),
        lease_owner: Set(None),
        lease_expire_time: Set(None),
        open_waba_id: Set(change.state.is_open().then(|| change.waba_id.clone())),
        create_time: Set(change.create_time),
        update_time: Set(change.update_time),
        expire_time: Set(change.expire_time),
        trace_parent: Set(change.trace_parent.clone()),
        migrate_after: Set(change.migrate_after),
    }
}

/// Stores a new request and its first events (SUBMITTED, then APPROVED when
/// the destination auto-approves) in one transaction.
pub async fn insert_submission(
    db: &DatabaseConnection,
    change: &PartnerChange,
    events: &[EventDraft],
) -> Result<PartnerChange, WriteError> {
    // SUBMITTED leaves the request pending; each later event moves it on
    // (auto-approval: to APPROVED). Each event carries the request as it left it.
    let mut snapshot = PartnerChange { state: State::PendingApproval, ..change.clone() };
    let mut drafts = Vec::with_capacity(events.len());
    for (index, draft) in events.iter().enumerate() {
        if index > 0 {
            snapshot.state = next_state(snapshot.state, draft.event_type)
                .ok_or(WriteError::InvalidState { state: snapshot.state, event: draft.event_type })?;
        }
        drafts.push((draft, snapshot.clone()));
    }
    if snapshot.state != change.state {
        return Err(WriteError::InvalidState { state: snapshot.state, event: EventType::Submitted });
    }
    let mut insert = partner_change::Entity::insert(stored_row(change)).into_query();
    insert.returning_col(partner_change::Column::PartnerChangeId);
    // An insert writes its row or fails (a unique index: a duplicate).
    write_then_append(db, &insert, event_rows(&drafts)?).await?;
    Ok(change.clone())
}

/// Moves `expected` (the request as read) on by one event: one transaction,
/// conditional on the state and version read, that also appends the event.
pub async fn apply_event(
    db: &DatabaseConnection,
    expected: &PartnerChange,
    draft: EventDraft,
    effects: Effects,
) -> Result<PartnerChange, WriteError> {
    let (next, update) = transition_update(db.get_database_backend(), expected, &draft, &effects)?;
    let mut update = update.into_query();
    update.returning_col(partner_change::Column::PartnerChangeId);
    if !write_then_append(db, &update, event_rows(&[(&draft, next.clone())])?).await? {
        return Err(WriteError::Conflict);
    }
    Ok(next)
}

/// The request as `draft` leaves it, and the update that writes it if the
/// request still has the state and version read.
fn transition_update(
    backend: DbBackend,
    expected: &PartnerChange,
    draft: &EventDraft,
    effects: &Effects,
) -> Result<(PartnerChange, sea_orm::UpdateMany<partner_change::Entity>), WriteError> {
    let state = next_state(expected.state, draft.event_type)
        .ok_or(WriteError::InvalidState { state: expected.state, event: draft.event_type })?;
    let mut next = expected.clone();
    next.state = state;
    next.version += 1;
    next.update_time = now();
    if let Some(reason) = &effects.failure_reason {
        next.failure_reason = reason.clone();
    }
    if let Some(step) = effects.saga_step {
        next.saga_step = step;
    }
    if effects.trace_parent.is_some() {
        next.trace_parent = effects.trace_parent.clone();
    }
    if let Some(skipped) = &effects.skipped_grant_phone_numbers {
        next.skipped_grant_phone_numbers = skipped.clone();
    }
    if let Some(migrate_after) = effects.migrate_after {
        next.migrate_after = migrate_after;
    }
    let mut update = partner_change::Entity::update_many()
        .col_expr(partner_change::Column::State, Expr::value(state))
        .col_expr(partner_change::Column::UpdateTime, Expr::value(next.update_time))
        .col_expr(partner_change::Column::FailureReason, Expr::value(next.failure_reason.clone()))
        .col_expr(partner_change::Column::SagaStep, Expr::value(next.saga_step))
        .col_expr(partner_change::Column::TraceParent, Expr::value(next.trace_parent.clone()))
        .col_expr(
            partner_change::Column::SkippedGrantPhoneNumbers,
            Expr::value(next.skipped_grant_phone_numbers.join(",")),
        )
        .col_expr(partner_change::Column::MigrateAfter, Expr::value(next.migrate_after))
        .col_expr(partner_change::Column::OpenWabaId, Expr::value(state.is_open().then(|| next.waba_id.clone())));
    if let Some((owner, lease)) = &effects.lease {
        update = update
            .col_expr(partner_change::Column::LeaseOwner, Expr::value(Some(owner.clone())))
            .col_expr(partner_change::Column::LeaseExpireTime, database_time_after(backend, *lease))
            .col_expr(partner_change::Column::Attempts, Expr::value(0));
    } else if effects.release {
        update = update
            .col_expr(partner_change::Column::LeaseOwner, Expr::value(None::<String>))
            .col_expr(partner_change::Column::LeaseExpireTime, Expr::value(None::<DateTime<Utc>>))
            .col_expr(partner_change::Column::Attempts, Expr::value(0));
    }
    let still_in_state = Condition::all().add(partner_change::Column::State.eq(expected.state));
    Ok((next, if_unchanged(expected, update, still_in_state)))
}

/// Claims up to `limit` requests a worker may take now for `owner`, for
/// `lease`, in one transaction: approved ones (moved to MIGRATING, with their
/// MIGRATION_STARTED events) and migrating ones whose lease lapsed (taken
/// over). On PostgreSQL the candidates are read `FOR UPDATE SKIP LOCKED`, so
/// replicas claiming at once take different requests instead of colliding.
pub async fn claim(
    db: &DatabaseConnection,
    owner: &str,
    lease: Duration,
    limit: u64,
    started: &EventDraft,
) -> Result<Vec<PartnerChange>, StoreError> {
    let tx = begin_write(db).await?;
    let (approved, lapsed): (Vec<PartnerChange>, Vec<PartnerChange>) =
        claimable_in(&tx, limit).await?.into_iter().partition(|candidate| candidate.state == State::Approved);
    let mut claimed = start_migrations(&tx, &approved, owner, lease).await?;
    let events: Vec<(&EventDraft, PartnerChange)> = claimed.iter().map(|next| (started, next.clone())).collect();
    for candidate in lapsed {
        match take_lease(&tx, &candidate, owner, lease).await {
            Ok(change) => claimed.push(change),
            // Changed by someone else since it was read: not this worker's to take.
            Err(WriteError::Conflict | WriteError::InvalidState { .. }) => {}
            Err(WriteError::Duplicate(detail)) => return Err(StoreError::UniqueViolation(detail)),
            Err(WriteError::Store(err)) => return Err(err),
        }
    }
    if !events.is_empty() {
        append_events(&tx, &events).await?;
    }
    tx.commit().await?;
    Ok(claimed)
}

/// Moves approved requests, read in `tx`, to MIGRATING for `owner` and
/// `lease` (by the database's clock), all in one statement; returns each as it
/// now is, in the order given. Only what the claim changes is written; a
/// request whose version is no longer the one read is left out (on PostgreSQL
/// the rows are locked since the read, on SQLite the write transaction is
/// the only one, so that does not happen, but the statement does not assume it).
async fn start_migrations(
    tx: &DatabaseTransaction,
    approved: &[PartnerChange],
    owner: &str,
    lease: Duration,
) -> Result<Vec<PartnerChange>, StoreError> {
    if approved.is_empty() {
        return Ok(Vec::new());
    }
    let as_read = approved.iter().fold(Condition::any(), |read, change| {
        read.add(
            Condition::all()
                .add(partner_change::Column::PartnerChangeId.eq(&change.partner_change_id))
                .add(partner_change::Column::Version.eq(change.version)),
        )
    });
    let started = partner_change::Entity::update_many()
        .col_expr(partner_change::Column::State, Expr::value(State::Migrating))
        .col_expr(partner_change::Column::Version, Expr::col(partner_change::Column::Version).add(1))
        .col_expr(partner_change::Column::UpdateTime, Expr::value(now()))
        .col_expr(partner_change::Column::LeaseOwner, Expr::value(Some(owner.to_owned())))
        .col_expr(partner_change::Column::LeaseExpireTime, database_time_after(tx.get_database_backend(), lease))
        .col_expr(partner_change::Column::Attempts, Expr::value(0))
        .filter(partner_change::Column::State.eq(State::Approved))
        .filter(as_read)
        .exec_with_returning(tx)
        .await?;
    let mut by_id: std::collections::HashMap<String, partner_change::Model> =
        started.into_iter().map(|model| (model.partner_change_id.clone(), model)).collect();
    approved.iter().filter_map(|change| by_id.remove(&change.partner_change_id)).map(from_model).collect()
}

/// Takes over a migrating request whose lease has lapsed (its worker crashed,
/// or its retry delay has passed), for `lease` by the database's clock. No
/// state changes, so no event.
pub async fn take_lease(
    db: &impl ConnectionTrait,
    expected: &PartnerChange,
    owner: &str,
    lease: Duration,
) -> Result<PartnerChange, WriteError> {
    let backend = db.get_database_backend();
    let update = partner_change::Entity::update_many()
        .col_expr(partner_change::Column::LeaseOwner, Expr::value(Some(owner.to_owned())))
        .col_expr(partner_change::Column::LeaseExpireTime, database_time_after(backend, lease));
    let lapsed = Condition::all().add(partner_change::Column::State.eq(State::Migrating)).add(lease_lapsed(backend));
    update_if_unchanged(db, expected, update, lapsed).await?;
    Ok(PartnerChange { version: expected.version + 1, ..expected.clone() })
}

/// Extends the lease `owner` holds on a migrating request to `lease` from now
/// (by the database's clock), while a saga step runs. It changes no version,
/// so the step's own conditional writes are unaffected. False when `owner`
/// no longer holds it (it lapsed and another worker took it, or was released).
pub async fn renew_lease(
    db: &DatabaseConnection,
    partner_change_id: &str,
    owner: &str,
    lease: Duration,
) -> Result<bool, StoreError> {
    let renewed = partner_change::Entity::update_many()
        .col_expr(partner_change::Column::LeaseExpireTime, database_time_after(db.get_database_backend(), lease))
        .filter(partner_change::Column::PartnerChangeId.eq(partner_change_id))
        .filter(partner_change::Column::State.eq(State::Migrating))
        .filter(held_by(owner))
        .exec(db)
        .await?;
    Ok(renewed.rows_affected == 1)
}

/// Records the numbers the WABA has now (some were added since the submit),
/// before it moves, if `owner` still holds the lease: every replica's
/// permission cache fences the old partner off exactly the numbers a migrating
/// request names.
pub async fn record_phone_numbers(
    db: &DatabaseConnection,
    expected: &PartnerChange,
    owner: &str,
    phone_numbers: Vec<String>,
) -> Result<PartnerChange, WriteError> {
    let update_time = now();
    let update = partner_change::Entity::update_many()
        .col_expr(partner_change::Column::PhoneNumbers, Expr::value(phone_numbers.join(",")))
        .col_expr(partner_change::Column::UpdateTime, Expr::value(update_time));
    update_if_unchanged(db, expected, update, held_by(owner)).await?;
    Ok(PartnerChange { version: expected.version + 1, phone_numbers, update_time, ..expected.clone() })
}

/// Gives a migrating request back after a failed step: any worker may resume
/// it `delay` from now (by the database's clock), at the step `expected` has
/// reached. `attempts` is how many times it has now been retried since it was claimed.
pub async fn release_for_retry(
    db: &DatabaseConnection,
    expected: &PartnerChange,
    owner: &str,
    delay: Duration,
    attempts: i32,
) -> Result<(), WriteError> {
    let update = partner_change::Entity::update_many()
        .col_expr(partner_change::Column::LeaseOwner, Expr::value(None::<String>))
        .col_expr(partner_change::Column::LeaseExpireTime, database_time_after(db.get_database_backend(), delay))
        .col_expr(partner_change::Column::Attempts, Expr::value(attempts))
        .col_expr(partner_change::Column::SagaStep, Expr::value(expected.saga_step));
    update_if_unchanged(db, expected, update, held_by(owner)).await
}

/// Applies `update` to the request only if it still has the version it was
/// read at (and meets `condition`), bumping the version. The rows-affected
/// count decides the race: none means someone else wrote first.
async fn update_if_unchanged(
    db: &impl ConnectionTrait,
    expected: &PartnerChange,
    update: sea_orm::UpdateMany<partner_change::Entity>,
    condition: Condition,
) -> Result<(), WriteError> {
    if if_unchanged(expected, update, condition).exec(db).await?.rows_affected == 0 {
        return Err(WriteError::Conflict);
    }
    Ok(())
}

/// `update`, bumping the version, only for the request at the version it was
/// read at (and meeting `condition`).
fn if_unchanged(
    expected: &PartnerChange,
    update: sea_orm::UpdateMany<partner_change::Entity>,
    condition: Condition,
) -> sea_orm::UpdateMany<partner_change::Entity> {
    update
        .col_expr(partner_change::Column::Version, Expr::value(expected.version + 1))
        .filter(partner_change::Column::PartnerChangeId.eq(&expected.partner_change_id))
        .filter(partner_change::Column::Version.eq(expected.version))
        .filter(condition)
}

/// The request's lease has run out (or it has none), by the database's clock:
/// any worker may take it.
fn lease_lapsed(backend: DbBackend) -> Condition {
    Condition::any()
        .add(partner_change::Column::LeaseExpireTime.is_null())
        .add(Expr::col(partner_change::Column::LeaseExpireTime).lt(database_now(backend)))
}

/// The request is held by `owner`.
fn held_by(owner: &str) -> Condition {
    Condition::all().add(partner_change::Column::LeaseOwner.eq(owner))
}

/// How many times the migration of a request has been retried since it was claimed.
pub async fn attempts(db: &DatabaseConnection, partner_change_id: &str) -> Result<i32, StoreError> {
    let model = partner_change::Entity::find_by_id(partner_change_id).one(db).await?;
    Ok(model.map_or(0, |model| model.attempts))
}

/// Requests a worker may take now: approved ones whose scheduled time (if any)
/// has come by the database's clock, and migrating ones whose lease lapsed;
/// locked, skipping those another transaction holds, on PostgreSQL.
async fn claimable_in(tx: &DatabaseTransaction, limit: u64) -> Result<Vec<PartnerChange>, StoreError> {
    let backend = tx.get_database_backend();
    let lapsed = Condition::all().add(partner_change::Column::State.eq(State::Migrating)).add(lease_lapsed(backend));
    let due = Condition::all().add(partner_change::Column::State.eq(State::Approved)).add(
        Condition::any()
            .add(partner_change::Column::MigrateAfter.is_null())
            .add(Expr::col(partner_change::Column::MigrateAfter).lte(database_now(backend))),
    );
    let mut query = partner_change::Entity::find()
        .filter(Condition::any().add(due).add(lapsed))
        .order_by_asc(partner_change::Column::UpdateTime)
        .limit(limit);
    if backend == DbBackend::Postgres {
        query = query.lock_with_behavior(LockType::Update, LockBehavior::SkipLocked);
    }
    let models = query.all(tx).await?;
    models.into_iter().map(from_model).collect()
}

/// Pending requests past their expire time.
pub async fn due_to_expire(db: &DatabaseConnection, limit: u64) -> Result<Vec<PartnerChange>, StoreError> {
    let models = partner_change::Entity::find()
        .filter(partner_change::Column::State.eq(State::PendingApproval))
        .filter(partner_change::Column::ExpireTime.lte(now()))
        .order_by_asc(partner_change::Column::ExpireTime)
        .limit(limit)
        .all(db)
        .await?;
    models.into_iter().map(from_model).collect()
}

pub async fn get(db: &DatabaseConnection, partner_change_id: &str) -> Result<Option<PartnerChange>, StoreError> {
    partner_change::Entity::find_by_id(partner_change_id).one(db).await?.map(from_model).transpose()
}

pub async fn find_by_request_id(
    db: &DatabaseConnection,
    client_id: &str,
    request_id: &str,
) -> Result<Option<PartnerChange>, StoreError> {
    let model = partner_change::Entity::find()
        .filter(partner_change::Column::ClientId.eq(client_id))
        .filter(partner_change::Column::RequestId.eq(request_id))
        .one(db)
        .await?;
    model.map(from_model).transpose()
}

/// In one read, what a submit must know first: the request stored under the
/// client's idempotency key, and the WABA's open request (either may be none,
/// or both the same request).
pub async fn find_by_request_id_and_open_for_waba(
    db: &DatabaseConnection,
    client_id: &str,
    request_id: &str,
    waba_id: &str,
) -> Result<(Option<PartnerChange>, Option<PartnerChange>), StoreError> {
    // Two lookups of a unique index, not one OR: a plan made while the table
    // was small (and cached) would scan the whole table for an OR.
    let by_key_query = partner_change::Entity::find()
        .filter(partner_change::Column::ClientId.eq(client_id))
        .filter(partner_change::Column::RequestId.eq(request_id))
        .into_query();
    let query = partner_change::Entity::find()
        .filter(partner_change::Column::OpenWabaId.eq(waba_id))
        .into_query()
        .union(UnionType::All, by_key_query)
        .to_owned();
    let (mut by_key, mut open) = (None, None);
    for row in db.query_all(&query).await? {
        let model = partner_change::Model::from_query_result(&row, "")?;
        let is_open = model.open_waba_id.as_deref() == Some(waba_id);
        let change = from_model(model)?;
        if change.client_id == client_id && change.request_id == request_id {
            by_key = Some(change.clone());
        }
        if is_open {
            open = Some(change);
        }
    }
    Ok((by_key, open))
}

/// The open request of a WABA, if any.
pub async fn find_open_for_waba(db: &DatabaseConnection, waba_id: &str) -> Result<Option<PartnerChange>, StoreError> {
    let model = partner_change::Entity::find().filter(partner_change::Column::OpenWabaId.eq(waba_id)).one(db).await?;
    model.map(from_model).transpose()
}

/// A request's events, oldest first.
pub async fn history(db: &DatabaseConnection, partner_change_id: &str) -> Result<Vec<Event>, StoreError> {
    let models = event::Entity::find()
        .filter(event::Column::PartnerChangeId.eq(partner_change_id))
        .order_by_asc(event::Column::Position)
        .all(db)
        .await?;
    models.into_iter().map(event_from_model).collect()
}

/// Whose requests a list shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListScope {
    /// A client's own requests; the other party is either partner.
    Client(String),
    /// Requests to a partner (incoming); the other party is the source partner.
    Incoming(String),
    /// Requests away from a partner (outgoing); the other party is the destination.
    Outgoing(String),
    /// Both directions.
    Partner(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListFilter {
    pub scope: ListScope,
    /// Empty: every state.
    pub states: Vec<State>,
    pub other_party_id: Option<String>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
    /// Only requests scheduled to move before this time.
    pub scheduled_before: Option<DateTime<Utc>>,
}

impl ListFilter {
    /// Binds page tokens to the filter they were issued for: every filter,
    /// spelled out explicitly (never a Rust type's `Debug` form, which a
    /// rename would change).
    pub fn page_scope(&self) -> String {
        let scope = match &self.scope {
            ListScope::Client(id) => format!("client:{id}"),
            ListScope::Incoming(id) => format!("incoming:{id}"),
            ListScope::Outgoing(id) => format!("outgoing:{id}"),
            ListScope::Partner(id) => format!("partner:{id}"),
        };
        let states: Vec<String> = self.states.iter().map(State::to_string).collect();
        let time =
            |time: Option<DateTime<Utc>>| time.map(|time| time.timestamp_micros().to_string()).unwrap_or_default();
        format!(
            "changes;scope={scope};states={};other={};created_after={};created_before={};scheduled_before={}",
            states.join(","),
            self.other_party_id.as_deref().unwrap_or(""),
            time(self.created_after),
            time(self.created_before),
            time(self.scheduled_before),
        )
    }
}

/// One page of requests, newest first, after the request ID `after`.
pub async fn list(
    db: &DatabaseConnection,
    filter: &ListFilter,
    after: Option<&str>,
    page_size: u64,
) -> Result<(Vec<PartnerChange>, bool), StoreError> {
    use partner_change::Column as C;
    let other = filter.other_party_id.as_deref();
    let scope = match &filter.scope {
        ListScope::Client(id) => {
            let mut scope = Condition::all().add(C::ClientId.eq(id));
            if let Some(other) = other {
                scope = scope
                    .add(Condition::any().add(C::SourcePartnerId.eq(other)).add(C::DestinationPartnerId.eq(other)));
            }
            scope
        }
        ListScope::Incoming(id) => {
            let mut scope = Condition::all().add(C::DestinationPartnerId.eq(id));
            if let Some(other) = other {
                scope = scope.add(C::SourcePartnerId.eq(other));
            }
            scope
        }
        ListScope::Outgoing(id) => {
            let mut scope = Condition::all().add(C::SourcePartnerId.eq(id));
            if let Some(other) = other {
                scope = scope.add(C::DestinationPartnerId.eq(other));
            }
            scope
        }
        ListScope::Partner(id) => match other {
            None => Condition::any().add(C::SourcePartnerId.eq(id)).add(C::DestinationPartnerId.eq(id)),
            Some(other) => Condition::any()
                .add(Condition::all().add(C::SourcePartnerId.eq(id)).add(C::DestinationPartnerId.eq(other)))
                .add(Condition::all().add(C::SourcePartnerId.eq(other)).add(C::DestinationPartnerId.eq(id))),
        },
    };
    let mut query = partner_change::Entity::find().filter(scope);
    if !filter.states.is_empty() {
        query = query.filter(C::State.is_in(filter.states.iter().copied()));
    }
    if let Some(after) = filter.created_after {
        query = query.filter(C::CreateTime.gt(after));
    }
    if let Some(before) = filter.created_before {
        query = query.filter(C::CreateTime.lt(before));
    }
    if let Some(before) = filter.scheduled_before {
        query = query.filter(C::MigrateAfter.is_not_null()).filter(C::MigrateAfter.lt(before));
    }
    if let Some(after) = after {
        query = query.filter(C::PartnerChangeId.lt(after));
    }
    // Planned for this tenant: a cached generic plan, costed for the average
    // tenant, would scan the whole table for a small one beside a big one.
    let statement =
        query.order_by_desc(C::PartnerChangeId).limit(page_size.saturating_add(1)).build(db.get_database_backend());
    let mut models = query_planned_each_time(db, statement)
        .await?
        .iter()
        .map(|row| partner_change::Model::from_query_result(row, ""))
        .collect::<Result<Vec<_>, _>>()?;
    let more = models.len() as u64 > page_size;
    models.truncate(usize::try_from(page_size).unwrap_or(usize::MAX));
    Ok((models.into_iter().map(from_model).collect::<Result<_, _>>()?, more))
}

/// Appends events with positions taken from the log head; see the module documentation.
async fn append_events(tx: &DatabaseTransaction, events: &[(&EventDraft, PartnerChange)]) -> Result<(), DbErr> {
    append_to_log(tx, event_rows(events)?).await?;
    Ok(())
}

/// The event log's rows for `events`, each with the request as it left it.
fn event_rows(events: &[(&EventDraft, PartnerChange)]) -> Result<LogRows<'static>, DbErr> {
    let mut rows = Vec::with_capacity(events.len());
    for (draft, snapshot) in events {
        let snapshot_json = snapshot::encode(snapshot).map_err(|err| DbErr::Custom(err.to_string()))?;
        rows.push(vec![
            snapshot.partner_change_id.clone().into(),
            draft.event_type.into_value().into(),
            snapshot.state.into_value().into(),
            draft.actor.clone().into(),
            draft.reason.clone().into(),
            snapshot.update_time.into(),
            snapshot.client_id.clone().into(),
            snapshot.source_partner_id.clone().into(),
            snapshot.destination_partner_id.clone().into(),
            snapshot_json.into(),
        ]);
    }
    Ok(LogRows {
        head_table: "event_log_head",
        table: EVENT_LOG.table,
        columns: EVENT_COLUMNS,
        rows,
        // A wake-up for every replica's tailer; the log itself is the data.
        channel: EVENTS_CHANNEL,
    })
}

/// The event log's columns, besides the position, as `append_events` fills them.
const EVENT_COLUMNS: &[&str] = &[
    "partner_change_id",
    "event_type",
    "state",
    "actor",
    "reason",
    "time",
    "client_id",
    "source_partner_id",
    "destination_partner_id",
    "snapshot",
];

fn split_numbers(text: &str) -> Vec<String> {
    if text.is_empty() { Vec::new() } else { text.split(',').map(str::to_owned).collect() }
}

fn from_model(model: partner_change::Model) -> Result<PartnerChange, StoreError> {
    Ok(PartnerChange {
        state: model.state,
        saga_step: model.saga_step,
        phone_numbers: split_numbers(&model.phone_numbers),
        grant_phone_numbers: split_numbers(&model.grant_phone_numbers),
        skipped_grant_phone_numbers: split_numbers(&model.skipped_grant_phone_numbers),
        partner_change_id: model.partner_change_id,
        request_id: model.request_id,
        waba_id: model.waba_id,
        client_id: model.client_id,
        source_partner_id: model.source_partner_id,
        destination_partner_id: model.destination_partner_id,
        accepted_terms_version: model.accepted_terms_version,
        failure_reason: model.failure_reason,
        version: model.version,
        create_time: model.create_time,
        update_time: model.update_time,
        expire_time: model.expire_time,
        trace_parent: model.trace_parent,
        migrate_after: model.migrate_after,
    })
}

fn event_from_model(model: event::Model) -> Result<Event, StoreError> {
    Ok(Event {
        position: model.position,
        event_type: model.event_type,
        state: model.state,
        snapshot: snapshot::decode(&model.snapshot).map_err(|err| {
            StoreError::Other(DbErr::Custom(format!("event {} of {}: {err}", model.position, model.partner_change_id)))
        })?,
        partner_change_id: model.partner_change_id,
        actor: model.actor,
        reason: model.reason,
        time: model.time,
    })
}

/// How many requests are in each state (states with none are left out).
pub async fn count_by_state(db: &DatabaseConnection) -> Result<Vec<(State, i64)>, StoreError> {
    let rows: Vec<(State, i64)> = partner_change::Entity::find()
        .select_only()
        .column(partner_change::Column::State)
        .column_as(partner_change::Column::PartnerChangeId.count(), "count")
        .group_by(partner_change::Column::State)
        .into_tuple()
        .all(db)
        .await?;
    Ok(rows)
}

/// How many approved requests wait for their scheduled time (by the database's clock).
pub async fn count_waiting_for_schedule(db: &DatabaseConnection) -> Result<i64, StoreError> {
    let count = partner_change::Entity::find()
        .filter(partner_change::Column::State.eq(State::Approved))
        .filter(Expr::col(partner_change::Column::MigrateAfter).gt(database_now(db.get_database_backend())))
        .count(db)
        .await?;
    Ok(i64::try_from(count).unwrap_or(i64::MAX))
}

/// How many migrating requests have been retried at least `attempts` times in a row.
pub async fn count_stuck(db: &DatabaseConnection, attempts: i32) -> Result<i64, StoreError> {
    let count = partner_change::Entity::find()
        .filter(partner_change::Column::State.eq(State::Migrating))
        .filter(partner_change::Column::Attempts.gte(attempts))
        .count(db)
        .await?;
    Ok(i64::try_from(count).unwrap_or(i64::MAX))
}

/// Runs this service's migrations.
pub async fn migrate(db: &DatabaseConnection) -> Result<(), DbErr> {
    partnerhub_runtime::db::migrate::<migration::Migrator>(db).await
}
