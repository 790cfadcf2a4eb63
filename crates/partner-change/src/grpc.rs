//! The partner-change service's gRPC boundary: parse → authorize → gather
//! facts → decide (domain) → write (store) → map. Only this file knows the
//! protobuf types.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};

use partnerhub_proto::{encoded::EncodedMessage, partnerchange::v1 as pb};
use partnerhub_runtime::{
    auth::{May, Policy, Subject, caller},
    error::{FieldViolation, invalid_argument, permission_denied},
    ids::new_id,
    pagination::{TokenSeal, page_size},
    rpc::{current_traceparent, record_resource_id},
    time::{from_timestamp, now, to_timestamp},
    validate::{Parsed, PhoneNumber, Validate, id, optional_id, optional_text, required_text},
};
use sea_orm::DatabaseConnection;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::{
    domain::{
        Blocker, BlockerReason, Eligibility, Event, EventDraft, EventType, PartnerChange, SagaStep, ScheduleLimits,
        State, Submission, blockers, next_state, schedule_blocker, schedule_problem, submission_events,
    },
    error::PartnerChangeError,
    facts::{Accounts, FactsError, World},
    settings::{PartnerChangeSettings, StreamSettings},
    store::{self, Effects, EventScope, ListFilter, ListScope, WriteError},
    stream::{EventHub, StreamItem, Subscription, watch},
};

/// Who may call each method at all, checked before the request is read;
/// each handler then checks which requests the caller may see and act on.
pub const POLICY: Policy = &[
    ("PreviewPartnerChange", &[May::Clients, May::Support]),
    ("SubmitPartnerChange", &[May::Clients, May::Support]),
    ("GetPartnerChange", EVERYONE),
    ("GetPartnerChangeHistory", EVERYONE),
    ("ListPartnerChanges", EVERYONE),
    ("ApprovePartnerChange", &[May::Partners]),
    ("RejectPartnerChange", &[May::Partners]),
    ("CancelPartnerChange", &[May::Clients, May::Support]),
    ("ReschedulePartnerChange", &[May::Clients, May::Support]),
    ("RetryPartnerChange", &[May::Support]),
    ("WatchPartnerChangeEvents", EVERYONE),
];
const EVERYONE: &[May] = &[May::Clients, May::Partners, May::Support, May::Services];

/// The most numbers a submit may name for granting.
pub const MAX_GRANT_NUMBERS: usize = 1000;
const MAX_REASON_LEN: usize = 500;
const MAX_TERMS_VERSION_LEN: usize = 64;

/// The `PartnerChangeService` implementation.
#[derive(Debug, Clone)]
pub struct PartnerChangeApi {
    db: DatabaseConnection,
    accounts: Accounts,
    /// How long a submitted request waits for a decision before it expires.
    request_ttl: Duration,
    /// How far ahead a migration may be scheduled.
    max_schedule_ahead: Duration,
    /// Wakes this process's migration worker when a request is approved.
    worker_wake: Arc<Notify>,
    /// The event stream: the hub is rung after every commit that appends events.
    events: EventHub,
    stream_settings: StreamSettings,
    /// Ends open streams when the process stops.
    shutdown: CancellationToken,
    /// Seals list page tokens.
    pages: TokenSeal,
}

impl PartnerChangeApi {
    pub fn new(
        db: DatabaseConnection,
        accounts: Accounts,
        settings: &PartnerChangeSettings,
        worker_wake: Arc<Notify>,
        events: EventHub,
        shutdown: CancellationToken,
        pages: TokenSeal,
    ) -> Self {
        Self {
            db,
            accounts,
            request_ttl: settings.request_ttl,
            max_schedule_ahead: settings.max_schedule_ahead,
            worker_wake,
            events,
            stream_settings: settings.stream.clone(),
            shutdown,
            pages,
        }
    }

    /// The WABA's world, as the caller may see it: another client's WABA is
    /// NOT_FOUND, and only the owner client and support may act on one.
    async fn world_for(&self, caller: &Subject, waba_id: &str, destination: &str) -> Result<World, Status> {
        if !matches!(caller, Subject::Client(_) | Subject::Support(_)) {
            return Err(permission_denied());
        }
        let world = self.accounts.world(waba_id, destination).await.map_err(facts_error)?;
        if matches!(caller, Subject::Client(own) if *own != world.client_id) {
            return Err(PartnerChangeError::WabaNotFound(waba_id.to_owned()).into());
        }
        Ok(world)
    }

    /// The limits on `migrate_after` now, for a request that awaits approval
    /// until `expires` (if it does).
    fn schedule_limits(&self, expires: Option<DateTime<Utc>>) -> ScheduleLimits {
        let now = now();
        ScheduleLimits { now, latest: now + to_chrono(self.max_schedule_ahead), expires }
    }

    /// When a request submitted now would expire unless approved.
    fn expire_time_from(&self, submitted: DateTime<Utc>) -> DateTime<Utc> {
        submitted + to_chrono(self.request_ttl)
    }

    /// A request the caller may see; any other answers NOT_FOUND.
    async fn visible(&self, caller: &Subject, partner_change_id: &str) -> Result<PartnerChange, Status> {
        record_resource_id(partner_change_id);
        let change = store::get(&self.db, partner_change_id).await.map_err(PartnerChangeError::from)?;
        match change {
            Some(change) if can_see(caller, &change) => Ok(change),
            _ => Err(PartnerChangeError::NotFound(partner_change_id.to_owned()).into()),
        }
    }

    /// Applies `draft` (with `effects`) to a request the caller may see and act on.
    async fn decide(
        &self,
        caller: &Subject,
        partner_change_id: &str,
        may_act: impl Fn(&Subject, &PartnerChange) -> bool,
        draft: EventDraft,
        effects: Effects,
    ) -> Result<PartnerChange, Status> {
        let change = self.visible(caller, partner_change_id).await?;
        if !may_act(caller, &change) {
            return Err(permission_denied());
        }
        self.apply(caller, change, draft, effects).await
    }

    /// Applies `draft` to `change` as the caller read it (visible to it, and
    /// one it may act on), conditional on the version read.
    async fn apply(
        &self,
        caller: &Subject,
        change: PartnerChange,
        draft: EventDraft,
        effects: Effects,
    ) -> Result<PartnerChange, Status> {
        let partner_change_id = change.partner_change_id.as_str();
        let event = draft.event_type;
        match store::apply_event(&self.db, &change, draft, effects).await {
            Ok(next) => {
                self.events.notify_committed();
                Ok(next)
            }
            Err(WriteError::Conflict) => {
                // Someone else wrote it first: if it can no longer take this
                // event, say so; otherwise the caller may simply try again.
                let current = self.visible(caller, partner_change_id).await?;
                let err = match next_state(current.state, event) {
                    Some(_) => WriteError::Conflict,
                    None => WriteError::InvalidState { state: current.state, event },
                };
                Err(PartnerChangeError::from_write(err, partner_change_id).into())
            }
            Err(WriteError::Duplicate(_)) => {
                let open =
                    store::find_open_for_waba(&self.db, &change.waba_id).await.map_err(PartnerChangeError::from)?;
                Err(PartnerChangeError::Blocked(vec![already_pending(
                    open.as_ref().map_or("", |open| open.partner_change_id.as_str()),
                )])
                .into())
            }
            Err(err) => Err(PartnerChangeError::from_write(err, partner_change_id).into()),
        }
    }
}

type RpcResult<T> = Result<Response<T>, Status>;

/// `WatchPartnerChangeEvents` as the wire sees it: each message encoded.
pub type WatchStream = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<EncodedMessage, Status>> + Send>>;

/// `item` on the wire. An event's encoding is made once and kept in its slot,
/// for every other subscriber of the same scope to send as it is.
fn encoded_watch_response(item: StreamItem) -> EncodedMessage {
    match item {
        StreamItem::Event { ref encoded, .. } => {
            let encoded = encoded.clone();
            encoded.get_or_init(|| EncodedMessage::of(&watch_response(item))).clone()
        }
        StreamItem::Heartbeat { .. } => EncodedMessage::of(&watch_response(item)),
    }
}

fn watch_response(item: StreamItem) -> pb::WatchPartnerChangeEventsResponse {
    let kind = match item {
        StreamItem::Event { cursor, event, .. } => {
            pb::watch_partner_change_events_response::Kind::Event(pb::PartnerChangeEvent {
                cursor,
                r#type: event_type_to_proto(event.event_type).into(),
                partner_change: Some(to_proto(event.snapshot.clone())),
                actor: event.actor.clone(),
                time: Some(to_timestamp(event.time)),
                reason: event.reason.clone(),
            })
        }
        StreamItem::Heartbeat { time, cursor } => {
            pb::watch_partner_change_events_response::Kind::Heartbeat(pb::Heartbeat {
                time: Some(to_timestamp(time)),
                cursor,
            })
        }
    };
    pb::WatchPartnerChangeEventsResponse { kind: Some(kind) }
}

#[tonic::async_trait]
impl pb::encoded::partner_change_service_server::PartnerChangeService for PartnerChangeApi {
    async fn preview_partner_change(
        &self,
        request: Request<pb::PreviewPartnerChangeRequest>,
    ) -> RpcResult<pb::PreviewPartnerChangeResponse> {
        let caller = caller(&request)?;
        let r = request.get_ref();
        let (waba_id, destination, migrate_after) = (
            id("waba_id", &r.waba_id),
            id("destination_partner_id", &r.destination_partner_id),
            from_timestamp("migrate_after", r.migrate_after.as_ref()),
        )
            .validate()?;
        let world = self.world_for(caller, &waba_id, &destination).await?;
        let open = store::find_open_for_waba(&self.db, &waba_id).await.map_err(PartnerChangeError::from)?;
        let mut found = blockers(&Eligibility {
            client: &world.client,
            current_partner_id: &world.current_partner_id,
            destination_partner_id: &destination,
            destination: world.destination.as_ref(),
            accepted_terms_version: None,
            open_request_id: open.as_ref().map(|open| open.partner_change_id.as_str()),
        });
        let auto_approves = world.destination.as_ref().is_some_and(|d| d.auto_approve);
        let awaits_approval_until = (!auto_approves).then(|| self.expire_time_from(now()));
        if let Some(problem) =
            migrate_after.and_then(|at| schedule_problem(at, &self.schedule_limits(awaits_approval_until)))
        {
            found.push(schedule_blocker(problem));
        }
        Ok(Response::new(pb::PreviewPartnerChangeResponse {
            phone_numbers: world.phone_numbers,
            destination_terms_version: world.destination.as_ref().map(|d| d.terms_version.clone()).unwrap_or_default(),
            destination_auto_approves: world.destination.as_ref().is_some_and(|d| d.auto_approve),
            blockers: found.into_iter().map(blocker_to_proto).collect(),
            source_partner_id: world.current_partner_id,
        }))
    }

    async fn submit_partner_change(
        &self,
        request: Request<pb::SubmitPartnerChangeRequest>,
    ) -> RpcResult<pb::SubmitPartnerChangeResponse> {
        let caller = caller(&request)?;
        let r = request.get_ref();
        let (request_id, waba_id, destination_partner_id, accepted_terms_version, grant_numbers, migrate_after) = (
            id("request_id", &r.request_id),
            id("waba_id", &r.waba_id),
            id("destination_partner_id", &r.destination_partner_id),
            required_text("accepted_terms_version", &r.accepted_terms_version, MAX_TERMS_VERSION_LEN),
            PhoneNumber::parse_list("grant_phone_numbers", &r.grant_phone_numbers, MAX_GRANT_NUMBERS),
            from_timestamp("migrate_after", r.migrate_after.as_ref()),
        )
            .validate()?;
        let submission = Submission {
            request_id,
            waba_id,
            destination_partner_id,
            accepted_terms_version,
            grant_phone_numbers: grant_numbers.into_iter().map(PhoneNumber::into_string).collect(),
            migrate_after,
        };
        let world = self.world_for(caller, &submission.waba_id, &submission.destination_partner_id).await?;
        // Most submits are new and allowed: the insert comes first, and the
        // request stored under the key and the WABA's open request (the
        // unique indexes the insert would fail on) are looked up only when it
        // fails, or when something else is wrong, to answer as before.
        if let Ok(admitted) = self.admit(caller, &world, &submission, None) {
            return self.store_submission(admitted, &world.client_id, &submission).await;
        }
        let (by_key, open) = store::find_by_request_id_and_open_for_waba(
            &self.db,
            &world.client_id,
            &submission.request_id,
            &submission.waba_id,
        )
        .await
        .map_err(PartnerChangeError::from)?;
        if let Some(existing) = same_submission(by_key, &submission)? {
            return Ok(Response::new(pb::SubmitPartnerChangeResponse { partner_change: Some(to_proto(existing)) }));
        }
        match self.admit(caller, &world, &submission, open.as_ref().map(|open| open.partner_change_id.as_str())) {
            Ok(admitted) => self.store_submission(admitted, &world.client_id, &submission).await,
            Err(Refusal::Invalid(status)) => Err(status),
            Err(Refusal::Blocked(found)) => {
                // The open request may be this very submission, committed by a
                // concurrent repeat since the key was first looked up.
                if let Some(existing) = self.previous_submission(&world.client_id, &submission).await? {
                    return Ok(Response::new(pb::SubmitPartnerChangeResponse {
                        partner_change: Some(to_proto(existing)),
                    }));
                }
                Err(PartnerChangeError::Blocked(found).into())
            }
        }
    }

    async fn get_partner_change(
        &self,
        request: Request<pb::GetPartnerChangeRequest>,
    ) -> RpcResult<pb::GetPartnerChangeResponse> {
        let caller = caller(&request)?;
        let partner_change_id = id("partner_change_id", &request.get_ref().partner_change_id).validate()?;
        let change = self.visible(caller, &partner_change_id).await?;
        Ok(Response::new(pb::GetPartnerChangeResponse { partner_change: Some(to_proto(change)) }))
    }

    async fn get_partner_change_history(
        &self,
        request: Request<pb::GetPartnerChangeHistoryRequest>,
    ) -> RpcResult<pb::GetPartnerChangeHistoryResponse> {
        let caller = caller(&request)?;
        let partner_change_id = id("partner_change_id", &request.get_ref().partner_change_id).validate()?;
        self.visible(caller, &partner_change_id).await?;
        let events = store::history(&self.db, &partner_change_id).await.map_err(PartnerChangeError::from)?;
        Ok(Response::new(pb::GetPartnerChangeHistoryResponse {
            entries: events.into_iter().map(history_entry).collect(),
        }))
    }

    async fn list_partner_changes(
        &self,
        request: Request<pb::ListPartnerChangesRequest>,
    ) -> RpcResult<pb::ListPartnerChangesResponse> {
        let caller = caller(&request)?;
        let r = request.get_ref();
        let (client_id, partner_id, other_party_id, states, created_after, created_before, scheduled_before, size) = (
            optional_id("client_id", &r.client_id),
            optional_id("partner_id", &r.partner_id),
            optional_id("other_party_id", &r.other_party_id),
            states(&r.states),
            from_timestamp("created_after", r.created_after.as_ref()),
            from_timestamp("created_before", r.created_before.as_ref()),
            from_timestamp("scheduled_before", r.scheduled_before.as_ref()),
            page_size(r.page_size),
        )
            .validate()?;
        let direction = direction(r.direction).validate()?;
        let scope = list_scope(caller, client_id, partner_id, direction)?;
        let filter = ListFilter { scope, states, other_party_id, created_after, created_before, scheduled_before };
        let after = self.pages.page_token(&r.page_token, &filter.page_scope()).validate()?;
        let (changes, more) =
            store::list(&self.db, &filter, after.as_deref(), size).await.map_err(PartnerChangeError::from)?;
        let next_page_token = match changes.last() {
            Some(last) if more => self.pages.next_page_token(&last.partner_change_id, &filter.page_scope()),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListPartnerChangesResponse {
            partner_changes: changes.into_iter().map(to_proto).collect(),
            next_page_token,
        }))
    }

    async fn approve_partner_change(
        &self,
        request: Request<pb::ApprovePartnerChangeRequest>,
    ) -> RpcResult<pb::ApprovePartnerChangeResponse> {
        let caller = caller(&request)?;
        let partner_change_id = id("partner_change_id", &request.get_ref().partner_change_id).validate()?;
        let change = self
            .decide(
                caller,
                &partner_change_id,
                is_destination,
                EventDraft { event_type: EventType::Approved, actor: caller.to_string(), reason: String::new() },
                // The migration this sets going continues the approval's trace.
                Effects { trace_parent: current_traceparent(), ..Effects::default() },
            )
            .await?;
        self.worker_wake.notify_one();
        tracing::info!(%partner_change_id, actor = %caller, "partner change approved");
        Ok(Response::new(pb::ApprovePartnerChangeResponse { partner_change: Some(to_proto(change)) }))
    }

    async fn reject_partner_change(
        &self,
        request: Request<pb::RejectPartnerChangeRequest>,
    ) -> RpcResult<pb::RejectPartnerChangeResponse> {
        let caller = caller(&request)?;
        let r = request.get_ref();
        let (partner_change_id, reason) =
            (id("partner_change_id", &r.partner_change_id), required_text("reason", &r.reason, MAX_REASON_LEN))
                .validate()?;
        let change = self
            .decide(
                caller,
                &partner_change_id,
                is_destination,
                EventDraft { event_type: EventType::Rejected, actor: caller.to_string(), reason },
                Effects::default(),
            )
            .await?;
        tracing::info!(%partner_change_id, actor = %caller, "partner change rejected");
        Ok(Response::new(pb::RejectPartnerChangeResponse { partner_change: Some(to_proto(change)) }))
    }

    async fn cancel_partner_change(
        &self,
        request: Request<pb::CancelPartnerChangeRequest>,
    ) -> RpcResult<pb::CancelPartnerChangeResponse> {
        let caller = caller(&request)?;
        let r = request.get_ref();
        let (partner_change_id, reason) =
            (id("partner_change_id", &r.partner_change_id), optional_text("reason", &r.reason, MAX_REASON_LEN))
                .validate()?;
        let change = self
            .decide(
                caller,
                &partner_change_id,
                is_owner_or_support,
                EventDraft { event_type: EventType::Cancelled, actor: caller.to_string(), reason },
                Effects::default(),
            )
            .await?;
        tracing::info!(%partner_change_id, actor = %caller, "partner change cancelled");
        Ok(Response::new(pb::CancelPartnerChangeResponse { partner_change: Some(to_proto(change)) }))
    }

    async fn reschedule_partner_change(
        &self,
        request: Request<pb::ReschedulePartnerChangeRequest>,
    ) -> RpcResult<pb::ReschedulePartnerChangeResponse> {
        let caller = caller(&request)?;
        let r = request.get_ref();
        let (partner_change_id, migrate_after) =
            (id("partner_change_id", &r.partner_change_id), from_timestamp("migrate_after", r.migrate_after.as_ref()))
                .validate()?;
        let current = self.visible(caller, &partner_change_id).await?;
        if !is_owner_or_support(caller, &current) {
            return Err(permission_denied());
        }
        if let Some(at) = migrate_after {
            let awaits_approval_until = (current.state == State::PendingApproval).then_some(current.expire_time);
            if let Some(problem) = schedule_problem(at, &self.schedule_limits(awaits_approval_until)) {
                return Err(invalid_argument(&[FieldViolation::new("migrate_after", problem)]));
            }
        }
        // Conditional on the version read above: of a reschedule racing the
        // worker's claim, exactly one applies.
        let draft = EventDraft {
            event_type: EventType::Rescheduled,
            actor: caller.to_string(),
            reason: describe_schedule(migrate_after, current.migrate_after),
        };
        let effects = Effects { migrate_after: Some(migrate_after), ..Effects::default() };
        let change = self.apply(caller, current, draft, effects).await?;
        // An earlier time may be due already.
        self.worker_wake.notify_one();
        tracing::info!(%partner_change_id, actor = %caller, migrate_after = ?change.migrate_after, "partner change rescheduled");
        Ok(Response::new(pb::ReschedulePartnerChangeResponse { partner_change: Some(to_proto(change)) }))
    }

    async fn retry_partner_change(
        &self,
        request: Request<pb::RetryPartnerChangeRequest>,
    ) -> RpcResult<pb::RetryPartnerChangeResponse> {
        let caller = caller(&request)?;
        let partner_change_id = id("partner_change_id", &request.get_ref().partner_change_id).validate()?;
        let support_only = |caller: &Subject, _: &PartnerChange| caller.is_support();
        let change = self
            .decide(
                caller,
                &partner_change_id,
                support_only,
                EventDraft { event_type: EventType::Retried, actor: caller.to_string(), reason: String::new() },
                // The cause is fixed: the request no longer carries it.
                Effects {
                    failure_reason: Some(String::new()),
                    trace_parent: current_traceparent(),
                    ..Effects::default()
                },
            )
            .await?;
        self.worker_wake.notify_one();
        tracing::info!(%partner_change_id, actor = %caller, "partner change retried");
        Ok(Response::new(pb::RetryPartnerChangeResponse { partner_change: Some(to_proto(change)) }))
    }

    type WatchPartnerChangeEventsStream = WatchStream;

    async fn watch_partner_change_events(
        &self,
        request: Request<pb::WatchPartnerChangeEventsRequest>,
    ) -> RpcResult<Self::WatchPartnerChangeEventsStream> {
        let caller = caller(&request)?;
        let r = request.get_ref();
        let named = match &r.scope {
            None => Ok(None),
            Some(pb::watch_partner_change_events_request::Scope::PartnerId(partner_id)) => {
                id("partner_id", partner_id).map(|id| Some(EventScope::Partner(id)))
            }
            Some(pb::watch_partner_change_events_request::Scope::ClientId(client_id)) => {
                id("client_id", client_id).map(|id| Some(EventScope::Client(id)))
            }
        };
        let start_from = match pb::StartFrom::try_from(r.start_from) {
            Err(_) => Err(FieldViolation::new("start_from", format!("{} is not a StartFrom value", r.start_from))),
            Ok(pb::StartFrom::Unspecified) => Ok(pb::StartFrom::Unspecified),
            Ok(_) if !r.after_cursor.is_empty() => {
                Err(FieldViolation::new("start_from", "applies only to a stream without after_cursor"))
            }
            Ok(start_from) => Ok(start_from),
        };
        let (scope, start_from) = (event_scope(caller, named.validate()?)?, start_from.validate()?);
        let after = self.events.parse_cursor(&r.after_cursor, &scope).validate()?;
        let head = store::last_position(&self.db).await.map_err(PartnerChangeError::from)?;
        if after > head {
            return Err(invalid_argument(&[FieldViolation::new("after_cursor", "is ahead of this event log")]));
        }
        let from_now = start_from == pb::StartFrom::Now;
        let after = if from_now { head } else { after };
        tracing::info!(subscriber = %caller, ?scope, after, from_now, "event stream opened");
        let stream = watch(
            self.db.clone(),
            &self.events,
            self.stream_settings.clone(),
            Subscription { scope, after, announce_start: from_now },
            self.shutdown.clone(),
        );
        Ok(Response::new(Box::pin(tokio_stream::StreamExt::map(stream, |item| item.map(encoded_watch_response)))))
    }
}

/// Whose events a subscriber gets: a partner its own (to or from it), a client
/// its own; services and support all, or the partner or client they name.
fn event_scope(caller: &Subject, named: Option<EventScope>) -> Result<EventScope, Status> {
    match (caller, named) {
        (Subject::Support(_) | Subject::Service(_), named) => Ok(named.unwrap_or(EventScope::All)),
        (Subject::Partner(own), None) => Ok(EventScope::Partner(own.clone())),
        (Subject::Partner(own), Some(EventScope::Partner(named))) if *own == named => Ok(EventScope::Partner(named)),
        (Subject::Client(own), None) => Ok(EventScope::Client(own.clone())),
        (Subject::Client(own), Some(EventScope::Client(named))) if *own == named => Ok(EventScope::Client(named)),
        (Subject::Partner(_) | Subject::Client(_), Some(_)) => Err(permission_denied()),
    }
}

impl PartnerChangeApi {
    /// The request a submission makes and its first events, if the
    /// submission may go ahead, judged on `world` and, if `open_request_id`
    /// names one, the WABA's open request. Checked in this order: the numbers
    /// to grant, the blockers, the schedule.
    fn admit(
        &self,
        caller: &Subject,
        world: &World,
        submission: &Submission,
        open_request_id: Option<&str>,
    ) -> Result<(PartnerChange, Vec<EventDraft>), Refusal> {
        grant_numbers_on_waba(submission, world).validate().map_err(Refusal::Invalid)?;
        let found = blockers(&Eligibility {
            client: &world.client,
            current_partner_id: &world.current_partner_id,
            destination_partner_id: &submission.destination_partner_id,
            destination: world.destination.as_ref(),
            accepted_terms_version: Some(&submission.accepted_terms_version),
            open_request_id,
        });
        let Some(destination) = world.destination.as_ref().filter(|_| found.is_empty()) else {
            return Err(Refusal::Blocked(found));
        };
        let time = now();
        let (state, events) = submission_events(&caller.to_string(), destination);
        let expire_time = self.expire_time_from(time);
        if let Some(at) = submission.migrate_after {
            let limits = self.schedule_limits((state == State::PendingApproval).then_some(expire_time));
            if let Some(problem) = schedule_problem(at, &limits) {
                return Err(Refusal::Invalid(invalid_argument(&[FieldViolation::new("migrate_after", problem)])));
            }
        }
        let change = PartnerChange {
            partner_change_id: new_id("pc"),
            request_id: submission.request_id.clone(),
            waba_id: world.waba_id.clone(),
            client_id: world.client_id.clone(),
            source_partner_id: world.current_partner_id.clone(),
            destination_partner_id: submission.destination_partner_id.clone(),
            state,
            phone_numbers: world.phone_numbers.clone(),
            grant_phone_numbers: submission.grant_phone_numbers.clone(),
            skipped_grant_phone_numbers: Vec::new(),
            accepted_terms_version: submission.accepted_terms_version.clone(),
            failure_reason: String::new(),
            saga_step: SagaStep::Transfer,
            version: 1,
            create_time: time,
            update_time: time,
            expire_time,
            trace_parent: current_traceparent(),
            migrate_after: submission.migrate_after,
        };
        Ok((change, events))
    }

    /// Stores an admitted submission. If the client's key or the WABA's open
    /// slot was taken (by an earlier or a concurrent submit), the same
    /// submission gets the request stored before; any other is refused.
    async fn store_submission(
        &self,
        (change, events): (PartnerChange, Vec<EventDraft>),
        client_id: &str,
        submission: &Submission,
    ) -> RpcResult<pb::SubmitPartnerChangeResponse> {
        record_resource_id(&change.partner_change_id);
        let stored = match store::insert_submission(&self.db, &change, &events).await {
            Ok(stored) => stored,
            Err(WriteError::Duplicate(_)) => {
                let existing = self.lost_submit_race(client_id, submission).await?;
                return Ok(Response::new(pb::SubmitPartnerChangeResponse { partner_change: Some(to_proto(existing)) }));
            }
            Err(err) => {
                return Err(PartnerChangeError::from_write(err, &change.partner_change_id).into());
            }
        };
        self.events.notify_committed();
        if stored.state == State::Approved {
            self.worker_wake.notify_one();
        }
        tracing::info!(
            partner_change_id = %stored.partner_change_id,
            waba_id = %stored.waba_id,
            source_partner_id = %stored.source_partner_id,
            destination_partner_id = %stored.destination_partner_id,
            state = %stored.state,
            "partner change submitted"
        );
        Ok(Response::new(pb::SubmitPartnerChangeResponse { partner_change: Some(to_proto(stored)) }))
    }

    /// The request an earlier submit with the same key created, if the payload
    /// is the same; a different payload under the same key is refused.
    async fn previous_submission(
        &self,
        client_id: &str,
        submission: &Submission,
    ) -> Result<Option<PartnerChange>, Status> {
        let existing = store::find_by_request_id(&self.db, client_id, &submission.request_id)
            .await
            .map_err(PartnerChangeError::from)?;
        same_submission(existing, submission)
    }

    /// A concurrent submit took the idempotency key or the WABA's open slot
    /// first: the same submission gets the request the other one stored.
    async fn lost_submit_race(&self, client_id: &str, submission: &Submission) -> Result<PartnerChange, Status> {
        if let Some(existing) = self.previous_submission(client_id, submission).await? {
            return Ok(existing);
        }
        let open = store::find_open_for_waba(&self.db, &submission.waba_id).await.map_err(PartnerChangeError::from)?;
        let open_id = open.as_ref().map_or("", |open| open.partner_change_id.as_str());
        Err(PartnerChangeError::Blocked(vec![already_pending(open_id)]).into())
    }
}

/// Why a submission may not go ahead.
enum Refusal {
    /// A field is wrong (`INVALID_ARGUMENT`).
    Invalid(Status),
    /// The blockers found.
    Blocked(Vec<Blocker>),
}

/// The request stored under a submission's idempotency key, if it is the same
/// submission; the key with a different payload is refused.
fn same_submission(existing: Option<PartnerChange>, submission: &Submission) -> Result<Option<PartnerChange>, Status> {
    match existing {
        Some(existing) if existing.same_submission(submission) => Ok(Some(existing)),
        Some(_) => Err(PartnerChangeError::IdempotencyKeyReused(submission.request_id.clone()).into()),
        None => Ok(None),
    }
}

fn already_pending(open_id: &str) -> Blocker {
    Blocker {
        reason: BlockerReason::ChangeAlreadyPending,
        message: format!("Partner change {open_id} for this WABA is still open."),
        missing_fields: Vec::new(),
    }
}

fn facts_error(err: FactsError) -> Status {
    match err {
        FactsError::WabaNotFound(id) => PartnerChangeError::WabaNotFound(id).into(),
        FactsError::Peer(status) => PartnerChangeError::Peer(status).into(),
    }
}

/// The client, both partners, support and services see a request; nobody else.
fn can_see(caller: &Subject, change: &PartnerChange) -> bool {
    caller.is_operator()
        || caller.is_client(&change.client_id)
        || caller.is_partner(&change.source_partner_id)
        || caller.is_partner(&change.destination_partner_id)
}

fn is_destination(caller: &Subject, change: &PartnerChange) -> bool {
    caller.is_partner(&change.destination_partner_id)
}

fn is_owner_or_support(caller: &Subject, change: &PartnerChange) -> bool {
    caller.is_support() || caller.is_client(&change.client_id)
}

/// A RESCHEDULED event's reason: the new time and the old one.
fn describe_schedule(new: Option<DateTime<Utc>>, old: Option<DateTime<Utc>>) -> String {
    let describe = |time: Option<DateTime<Utc>>| match time {
        Some(time) => time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        None => "as soon as approved".to_owned(),
    };
    format!("migrate after: {} (was: {})", describe(new), describe(old))
}

fn to_chrono(duration: Duration) -> chrono::Duration {
    chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::MAX)
}

/// Every number to grant must be one of the WABA's.
fn grant_numbers_on_waba(submission: &Submission, world: &World) -> Parsed<()> {
    for (index, number) in submission.grant_phone_numbers.iter().enumerate() {
        if !world.phone_numbers.contains(number) {
            return Err(FieldViolation::new(
                format!("grant_phone_numbers[{index}]"),
                format!("{number} is not a number of WABA {}", world.waba_id),
            ));
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Incoming,
    Outgoing,
}

fn direction(raw: i32) -> Parsed<Option<Direction>> {
    match pb::Direction::try_from(raw) {
        Ok(pb::Direction::Unspecified) => Ok(None),
        Ok(pb::Direction::Incoming) => Ok(Some(Direction::Incoming)),
        Ok(pb::Direction::Outgoing) => Ok(Some(Direction::Outgoing)),
        Err(_) => Err(FieldViolation::new("direction", format!("unknown value {raw}"))),
    }
}

fn states(raw: &[i32]) -> Parsed<Vec<State>> {
    raw.iter()
        .enumerate()
        .map(|(index, value)| {
            let field = || format!("states[{index}]");
            match pb::PartnerChangeState::try_from(*value) {
                Ok(pb::PartnerChangeState::Unspecified) => Err(FieldViolation::new(field(), "must not be unspecified")),
                Ok(state) => Ok(state_from_proto(state)),
                Err(_) => Err(FieldViolation::new(field(), format!("unknown value {value}"))),
            }
        })
        .collect()
}

/// Whose requests a list shows. A client or partner gets its own (naming another
/// tenant answers NOT_FOUND); support and services name exactly one party.
fn list_scope(
    caller: &Subject,
    client_id: Option<String>,
    partner_id: Option<String>,
    direction: Option<Direction>,
) -> Result<ListScope, Status> {
    let partner_scope = |id: String| match direction {
        Some(Direction::Incoming) => ListScope::Incoming(id),
        Some(Direction::Outgoing) => ListScope::Outgoing(id),
        None => ListScope::Partner(id),
    };
    let invalid = |field: &str, description: &str| invalid_argument(&[FieldViolation::new(field, description)]);
    match caller {
        Subject::Client(own) => {
            let mut violations = Vec::new();
            if partner_id.is_some() {
                violations.push(FieldViolation::new(
                    "partner_id",
                    "is for support and services; a client lists its own requests",
                ));
            }
            if direction.is_some() {
                violations.push(FieldViolation::new("direction", "is for partners; a client lists its own requests"));
            }
            if !violations.is_empty() {
                return Err(invalid_argument(&violations));
            }
            match client_id {
                Some(named) if named != *own => Err(partnerhub_runtime::error::not_found(
                    partnerhub_runtime::error::ErrorReason::ClientNotFound,
                    "client",
                    "clientId",
                    &named,
                )),
                _ => Ok(ListScope::Client(own.clone())),
            }
        }
        Subject::Partner(own) => {
            if client_id.is_some() {
                return Err(invalid("client_id", "a partner lists requests to or from itself"));
            }
            match partner_id {
                Some(named) if named != *own => Err(partnerhub_runtime::error::not_found(
                    partnerhub_runtime::error::ErrorReason::PartnerNotFound,
                    "partner",
                    "partnerId",
                    &named,
                )),
                _ => Ok(partner_scope(own.clone())),
            }
        }
        Subject::Support(_) | Subject::Service(_) => match (client_id, partner_id) {
            (Some(client), None) if direction.is_none() => Ok(ListScope::Client(client)),
            (Some(_), None) => Err(invalid("direction", "is for partners")),
            (None, Some(partner)) => Ok(partner_scope(partner)),
            _ => Err(invalid("client_id", "support and services name exactly one of client_id and partner_id")),
        },
    }
}

fn state_to_proto(state: State) -> pb::PartnerChangeState {
    match state {
        State::PendingApproval => pb::PartnerChangeState::PendingApproval,
        State::Approved => pb::PartnerChangeState::Approved,
        State::Migrating => pb::PartnerChangeState::Migrating,
        State::Completed => pb::PartnerChangeState::Completed,
        State::Rejected => pb::PartnerChangeState::Rejected,
        State::Cancelled => pb::PartnerChangeState::Cancelled,
        State::Expired => pb::PartnerChangeState::Expired,
        State::Failed => pb::PartnerChangeState::Failed,
    }
}

fn state_from_proto(state: pb::PartnerChangeState) -> State {
    match state {
        pb::PartnerChangeState::PendingApproval | pb::PartnerChangeState::Unspecified => State::PendingApproval,
        pb::PartnerChangeState::Approved => State::Approved,
        pb::PartnerChangeState::Migrating => State::Migrating,
        pb::PartnerChangeState::Completed => State::Completed,
        pb::PartnerChangeState::Rejected => State::Rejected,
        pb::PartnerChangeState::Cancelled => State::Cancelled,
        pb::PartnerChangeState::Expired => State::Expired,
        pb::PartnerChangeState::Failed => State::Failed,
    }
}

fn event_type_to_proto(event: EventType) -> pb::PartnerChangeEventType {
    match event {
        EventType::Submitted => pb::PartnerChangeEventType::Submitted,
        EventType::Approved => pb::PartnerChangeEventType::Approved,
        EventType::Rejected => pb::PartnerChangeEventType::Rejected,
        EventType::Cancelled => pb::PartnerChangeEventType::Cancelled,
        EventType::Expired => pb::PartnerChangeEventType::Expired,
        EventType::MigrationStarted => pb::PartnerChangeEventType::MigrationStarted,
        EventType::Completed => pb::PartnerChangeEventType::Completed,
        EventType::Failed => pb::PartnerChangeEventType::Failed,
        EventType::Retried => pb::PartnerChangeEventType::Retried,
        EventType::Rescheduled => pb::PartnerChangeEventType::Rescheduled,
    }
}

fn blocker_to_proto(blocker: Blocker) -> pb::Blocker {
    let reason = match blocker.reason {
        BlockerReason::LegacyAccount => pb::BlockerReason::LegacyAccount,
        BlockerReason::PaymentProcessorMismatch => pb::BlockerReason::PaymentProcessorMismatch,
        BlockerReason::CompanyInfoIncomplete => pb::BlockerReason::CompanyInfoIncomplete,
        BlockerReason::PartnerNotFound => pb::BlockerReason::PartnerNotFound,
        BlockerReason::PartnerNotAccepting => pb::BlockerReason::PartnerNotAccepting,
        BlockerReason::SamePartner => pb::BlockerReason::SamePartner,
        BlockerReason::TermsNotAccepted => pb::BlockerReason::TermsNotAccepted,
        BlockerReason::PaymentMethodRequired => pb::BlockerReason::PaymentMethodRequired,
        BlockerReason::ChangeAlreadyPending => pb::BlockerReason::ChangeAlreadyPending,
        BlockerReason::ScheduleOutOfRange => pb::BlockerReason::ScheduleOutOfRange,
    };
    pb::Blocker { reason: reason.into(), message: blocker.message, missing_fields: blocker.missing_fields }
}

fn to_proto(change: PartnerChange) -> pb::PartnerChange {
    pb::PartnerChange {
        partner_change_id: change.partner_change_id,
        request_id: change.request_id,
        waba_id: change.waba_id,
        client_id: change.client_id,
        source_partner_id: change.source_partner_id,
        destination_partner_id: change.destination_partner_id,
        state: state_to_proto(change.state).into(),
        phone_numbers: change.phone_numbers,
        grant_phone_numbers: change.grant_phone_numbers,
        failure_reason: change.failure_reason,
        create_time: Some(to_timestamp(change.create_time)),
        update_time: Some(to_timestamp(change.update_time)),
        expire_time: Some(to_timestamp(change.expire_time)),
        accepted_terms_version: change.accepted_terms_version,
        skipped_grant_phone_numbers: change.skipped_grant_phone_numbers,
        migrate_after: change.migrate_after.map(to_timestamp),
    }
}

fn history_entry(event: Event) -> pb::HistoryEntry {
    pb::HistoryEntry {
        state: state_to_proto(event.state).into(),
        actor: event.actor,
        reason: event.reason,
        time: Some(to_timestamp(event.time)),
        event_type: event_type_to_proto(event.event_type).into(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use prost::Message as _;

    use super::*;
    use crate::{
        domain::{Event, EventType, SagaStep},
        stream::Encoded,
    };

    /// An event of a request whose WABA has `numbers` numbers.
    fn event(numbers: usize) -> Event {
        let time = now();
        let change = PartnerChange {
            partner_change_id: "pc-0192f1d2-4a1b-7c2d-8e3f-4a5b6c7d8e9f".into(),
            request_id: "request-1".into(),
            waba_id: "waba-0192f1d2-4a1b-7c2d-8e3f-4a5b6c7d8e9f".into(),
            client_id: "client-0192f1d2-4a1b-7c2d-8e3f-4a5b6c7d8e9f".into(),
            source_partner_id: "partner-0192f1d2-4a1b-7c2d-8e3f-4a5b6c7d8e9f".into(),
            destination_partner_id: "partner-0192f1d2-4a1b-7c2d-8e3f-4a5b6c7d8ea0".into(),
            state: State::Migrating,
            phone_numbers: (0..numbers).map(|n| format!("+49151{n:08}")).collect(),
            grant_phone_numbers: (0..numbers / 2).map(|n| format!("+49151{n:08}")).collect(),
            skipped_grant_phone_numbers: Vec::new(),
            accepted_terms_version: "v1".into(),
            migrate_after: None,
            failure_reason: String::new(),
            saga_step: SagaStep::Transfer,
            version: 3,
            create_time: time,
            update_time: time,
            expire_time: time,
            trace_parent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        };
        Event {
            position: 42,
            partner_change_id: change.partner_change_id.clone(),
            event_type: EventType::MigrationStarted,
            state: State::Migrating,
            actor: "service:partner-change".into(),
            reason: String::new(),
            time,
            snapshot: change,
        }
    }

    /// A subscriber's byte budget counts items by their approximate size: it
    /// must stay close to what the wire really carries, small or large.
    #[test]
    fn an_items_approximate_size_is_close_to_its_encoded_size() {
        for numbers in [0, 2, 300] {
            let items = [
                StreamItem::Event {
                    cursor: "MTQwMmU3OGUyY2JmN2VjODE3MTQwMmU3OGUy".into(),
                    event: Arc::new(event(numbers)),
                    encoded: Encoded::default(),
                },
                StreamItem::Heartbeat { time: now(), cursor: "MTQwMmU3OGUyY2JmN2VjODE3MTQwMmU3OGUy".into() },
            ];
            for item in items {
                let (approximate, encoded) = (item.approximate_bytes(), watch_response(item).encoded_len());
                let ratio = approximate as f64 / encoded as f64;
                assert!(
                    (0.8..=1.6).contains(&ratio),
                    "{numbers} numbers: {approximate} approximated, {encoded} encoded"
                );
            }
        }
    }

    /// The subscribers of one scope share an event's encoding: the first to
    /// send it makes it, the others send those very bytes.
    #[test]
    fn an_event_is_encoded_once_for_every_subscriber_of_a_scope() {
        let event = Arc::new(event(2));
        let shared = Encoded::default();
        let item = |cursor: &str, encoded: &Encoded| StreamItem::Event {
            cursor: cursor.into(),
            event: event.clone(),
            encoded: encoded.clone(),
        };
        let first = encoded_watch_response(item("cursor-1", &shared));
        assert_eq!(first.bytes().as_ref(), watch_response(item("cursor-1", &shared)).encode_to_vec());
        // The slot is filled: the same bytes come back, not made again (were
        // they, this item's other cursor would show).
        let again = encoded_watch_response(item("cursor-2", &shared));
        assert_eq!(again.bytes().as_ptr(), first.bytes().as_ptr());
        // A slot of its own (another scope's, or a replayed event): its own encoding.
        let own = encoded_watch_response(item("cursor-2", &Encoded::default()));
        assert_eq!(own.bytes().as_ref(), watch_response(item("cursor-2", &shared)).encode_to_vec());
        let heartbeat = StreamItem::Heartbeat { time: now(), cursor: "cursor-3".into() };
        assert_eq!(
            encoded_watch_response(heartbeat.clone()).bytes().as_ref(),
            watch_response(heartbeat).encode_to_vec()
        );
    }
}
