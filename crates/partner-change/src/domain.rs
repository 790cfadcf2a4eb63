//! The partner change workflow's rules: the states a request moves through, the
//! events that move it, and every reason a change is refused. No I/O and no
//! protobuf here: `grpc` and `worker` gather the facts, these functions decide.

use chrono::{DateTime, Utc};
use sea_orm::{ActiveEnum, DeriveActiveEnum, EnumIter, Iterable, sea_query::StringLen};

// The stored enums below hold their stored names in their derives (the one
// table of them); a stored name no variant has fails to decode. Other services
// read only the published view, never these names.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
pub enum State {
    #[sea_orm(string_value = "PENDING_APPROVAL")]
    PendingApproval,
    #[sea_orm(string_value = "APPROVED")]
    Approved,
    #[sea_orm(string_value = "MIGRATING")]
    Migrating,
    #[sea_orm(string_value = "COMPLETED")]
    Completed,
    #[sea_orm(string_value = "REJECTED")]
    Rejected,
    #[sea_orm(string_value = "CANCELLED")]
    Cancelled,
    #[sea_orm(string_value = "EXPIRED")]
    Expired,
    #[sea_orm(string_value = "FAILED")]
    Failed,
}

/// Shown by its stored name (`MIGRATING`): in messages, logs and metric labels.
impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_value())
    }
}

/// Shown by its stored name (`TRANSFER`), in logs and metric labels.
impl std::fmt::Display for SagaStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_value())
    }
}

impl State {
    /// An open request holds its WABA: no second request may be opened for it.
    pub fn is_open(self) -> bool {
        matches!(self, State::PendingApproval | State::Approved | State::Migrating)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
pub enum EventType {
    #[sea_orm(string_value = "SUBMITTED")]
    Submitted,
    #[sea_orm(string_value = "APPROVED")]
    Approved,
    #[sea_orm(string_value = "REJECTED")]
    Rejected,
    #[sea_orm(string_value = "CANCELLED")]
    Cancelled,
    #[sea_orm(string_value = "EXPIRED")]
    Expired,
    #[sea_orm(string_value = "MIGRATION_STARTED")]
    MigrationStarted,
    #[sea_orm(string_value = "COMPLETED")]
    Completed,
    #[sea_orm(string_value = "FAILED")]
    Failed,
    #[sea_orm(string_value = "RETRIED")]
    Retried,
    /// `migrate_after` changed; the state stays.
    #[sea_orm(string_value = "RESCHEDULED")]
    Rescheduled,
}

/// The state an event moves a request to from `from`, if the event may happen there.
/// This is the whole lifecycle: submit creates a request, every later step is here.
pub fn next_state(from: State, event: EventType) -> Option<State> {
    use {EventType as E, State as S};
    match (from, event) {
        (S::PendingApproval, E::Approved) => Some(S::Approved),
        (S::PendingApproval, E::Rejected) => Some(S::Rejected),
        (S::PendingApproval, E::Cancelled) => Some(S::Cancelled),
        (S::PendingApproval, E::Expired) => Some(S::Expired),
        (S::PendingApproval, E::Rescheduled) => Some(S::PendingApproval),
        (S::Approved, E::MigrationStarted) => Some(S::Migrating),
        // Until its (scheduled) migration starts, an approved request may still be moved or called off.
        (S::Approved, E::Rescheduled) => Some(S::Approved),
        (S::Approved, E::Cancelled) => Some(S::Cancelled),
        (S::Migrating, E::Completed) => Some(S::Completed),
        (S::Migrating, E::Failed) => Some(S::Failed),
        (S::Failed, E::Retried) => Some(S::Approved),
        _ => None,
    }
}

/// The states in which `event` may happen (to tell a caller what a call needs).
pub fn states_allowing(event: EventType) -> Vec<State> {
    State::iter().filter(|state| next_state(*state, event).is_some()).collect()
}

/// An event to record, before it has a position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventDraft {
    pub event_type: EventType,
    /// The subject that made the step, e.g. `partner:p-1`.
    pub actor: String,
    pub reason: String,
}

/// What a submit records, and the state it leaves the request in: SUBMITTED
/// by the caller, then APPROVED on the destination's behalf when it approves
/// every request automatically.
pub fn submission_events(actor: &str, destination: &PartnerFacts) -> (State, Vec<EventDraft>) {
    let submitted = EventDraft { event_type: EventType::Submitted, actor: actor.to_owned(), reason: String::new() };
    if !destination.auto_approve {
        return (State::PendingApproval, vec![submitted]);
    }
    let approved = EventDraft {
        event_type: EventType::Approved,
        actor: format!("partner:{}", destination.partner_id),
        reason: "the destination partner approves every request automatically".to_owned(),
    };
    (State::Approved, vec![submitted, approved])
}

/// Where the migration saga of a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
pub enum SagaStep {
    /// Re-check eligibility, then move the WABA in the account service.
    #[sea_orm(string_value = "TRANSFER")]
    Transfer,
    /// Revoke the old partner's permissions and grant the named numbers.
    #[sea_orm(string_value = "PERMISSIONS")]
    Permissions,
}

/// A partner change request as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartnerChange {
    pub partner_change_id: String,
    pub request_id: String,
    pub waba_id: String,
    pub client_id: String,
    pub source_partner_id: String,
    pub destination_partner_id: String,
    pub state: State,
    pub phone_numbers: Vec<String>,
    pub grant_phone_numbers: Vec<String>,
    /// Numbers named for the grant that had left the WABA by the time of the
    /// grant (set on completion).
    pub skipped_grant_phone_numbers: Vec<String>,
    pub accepted_terms_version: String,
    /// The migration starts no earlier than this; `None`: as soon as approved.
    pub migrate_after: Option<DateTime<Utc>>,
    pub failure_reason: String,
    pub saga_step: SagaStep,
    /// Bumped by every write; conditional writes name the version they read.
    pub version: i64,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
    pub expire_time: DateTime<Utc>,
    /// The W3C trace context of the submit or approval that set the migration
    /// going, so that the migration's spans continue that trace. Not part of events.
    pub trace_parent: Option<String>,
}

impl PartnerChange {
    /// Whether a repeated submit with this key asks for the same change.
    pub fn same_submission(&self, submission: &Submission) -> bool {
        let mut mine = self.grant_phone_numbers.clone();
        let mut theirs = submission.grant_phone_numbers.clone();
        mine.sort();
        theirs.sort();
        self.waba_id == submission.waba_id
            && self.destination_partner_id == submission.destination_partner_id
            && self.accepted_terms_version == submission.accepted_terms_version
            && self.migrate_after == submission.migrate_after
            && mine == theirs
    }
}

/// What a client asks for when it submits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submission {
    pub request_id: String,
    pub waba_id: String,
    pub destination_partner_id: String,
    pub accepted_terms_version: String,
    pub grant_phone_numbers: Vec<String>,
    pub migrate_after: Option<DateTime<Utc>>,
}

/// One entry of a request's history (and of the event stream).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub position: i64,
    pub partner_change_id: String,
    pub event_type: EventType,
    pub state: State,
    pub actor: String,
    pub reason: String,
    pub time: DateTime<Utc>,
    /// The request right after this event.
    pub snapshot: PartnerChange,
}

/// Why a partner change cannot go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockerReason {
    LegacyAccount,
    PaymentProcessorMismatch,
    CompanyInfoIncomplete,
    PartnerNotFound,
    PartnerNotAccepting,
    SamePartner,
    TermsNotAccepted,
    PaymentMethodRequired,
    ChangeAlreadyPending,
    ScheduleOutOfRange,
}

impl BlockerReason {
    /// The `ErrorInfo.reason` of a refusal for this blocker.
    pub fn as_str(self) -> &'static str {
        match self {
            BlockerReason::LegacyAccount => "LEGACY_ACCOUNT",
            BlockerReason::PaymentProcessorMismatch => "PAYMENT_PROCESSOR_MISMATCH",
            BlockerReason::CompanyInfoIncomplete => "COMPANY_INFO_INCOMPLETE",
            BlockerReason::PartnerNotFound => "PARTNER_NOT_FOUND",
            BlockerReason::PartnerNotAccepting => "PARTNER_NOT_ACCEPTING",
            BlockerReason::SamePartner => "SAME_PARTNER",
            BlockerReason::TermsNotAccepted => "TERMS_NOT_ACCEPTED",
            BlockerReason::PaymentMethodRequired => "PAYMENT_METHOD_REQUIRED",
            BlockerReason::ChangeAlreadyPending => "CHANGE_ALREADY_PENDING",
            BlockerReason::ScheduleOutOfRange => "SCHEDULE_OUT_OF_RANGE",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocker {
    pub reason: BlockerReason,
    pub message: String,
    pub missing_fields: Vec<String>,
}

impl Blocker {
    fn new(reason: BlockerReason, message: impl Into<String>) -> Self {
        Self { reason, message: message.into(), missing_fields: Vec::new() }
    }

    /// How a failed migration records it: `REASON: message`.
    pub fn as_failure_reason(&self) -> String {
        format!("{}: {}", self.reason.as_str(), self.message)
    }
}

/// The limits on when a migration may be scheduled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduleLimits {
    pub now: DateTime<Utc>,
    /// The latest allowed `migrate_after`: now plus `max_schedule_ahead`.
    pub latest: DateTime<Utc>,
    /// While the request awaits approval: when it expires (a move scheduled
    /// after that could never happen).
    pub expires: Option<DateTime<Utc>>,
}

/// Why `migrate_after` cannot be accepted, if it cannot. A time in the past
/// means "as soon as approved" and is fine.
pub fn schedule_problem(migrate_after: DateTime<Utc>, limits: &ScheduleLimits) -> Option<String> {
    if migrate_after > limits.latest {
        return Some(format!(
            "must be at most {} days ahead (no later than {})",
            (limits.latest - limits.now).num_days(),
            limits.latest.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ));
    }
    match limits.expires {
        Some(expires) if migrate_after > expires => Some(format!(
            "must not be after the request expires while it awaits approval ({})",
            expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )),
        _ => None,
    }
}

/// A schedule problem as a preview reports it.
pub fn schedule_blocker(problem: String) -> Blocker {
    Blocker::new(BlockerReason::ScheduleOutOfRange, format!("migrate_after {problem}."))
}

/// What the rules need to know about the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFacts {
    pub legacy: bool,
    pub payment_processor: String,
    pub missing_company_info_fields: Vec<String>,
    pub has_payment_method: bool,
}

/// What the rules need to know about the destination partner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartnerFacts {
    pub partner_id: String,
    pub payment_processor: String,
    pub accepting_changes: bool,
    pub terms_version: String,
    pub requires_payment_method: bool,
    pub auto_approve: bool,
}

/// Everything a preview, a submit or the start of a migration checks.
#[derive(Debug, Clone)]
pub struct Eligibility<'a> {
    pub client: &'a ClientFacts,
    pub current_partner_id: &'a str,
    pub destination_partner_id: &'a str,
    /// `None`: no partner has that ID.
    pub destination: Option<&'a PartnerFacts>,
    /// `None` at preview, where the client has not accepted any terms yet.
    pub accepted_terms_version: Option<&'a str>,
    /// Another open request for the same WABA, if any.
    pub open_request_id: Option<&'a str>,
}

/// Every reason the change cannot go ahead, in a fixed order; empty when it can.
pub fn blockers(facts: &Eligibility<'_>) -> Vec<Blocker> {
    let mut found = Vec::new();
    let client = facts.client;
    if client.legacy {
        found.push(Blocker::new(
            BlockerReason::LegacyAccount,
            "This account cannot change partner. Please contact support.",
        ));
    }
    if !client.missing_company_info_fields.is_empty() {
        found.push(Blocker {
            reason: BlockerReason::CompanyInfoIncomplete,
            message: format!(
                "Complete your company information first: {}.",
                client.missing_company_info_fields.join(", ")
            ),
            missing_fields: client.missing_company_info_fields.clone(),
        });
    }
    if let Some(open) = facts.open_request_id {
        found.push(Blocker::new(
            BlockerReason::ChangeAlreadyPending,
            format!("Partner change {open} for this WABA is still open."),
        ));
    }
    if facts.current_partner_id == facts.destination_partner_id {
        found.push(Blocker::new(
            BlockerReason::SamePartner,
            format!("The WABA is already with partner {}.", facts.destination_partner_id),
        ));
    }
    let Some(destination) = facts.destination else {
        found.push(Blocker::new(
            BlockerReason::PartnerNotFound,
            format!("No partner has the ID {}.", facts.destination_partner_id),
        ));
        return found;
    };
    if !destination.accepting_changes {
        found.push(Blocker::new(
            BlockerReason::PartnerNotAccepting,
            format!("Partner {} does not take incoming partner changes.", destination.partner_id),
        ));
    }
    if destination.payment_processor != client.payment_processor {
        found.push(Blocker::new(
            BlockerReason::PaymentProcessorMismatch,
            "Destination partner is using a different payment processor.",
        ));
    }
    if destination.requires_payment_method && !client.has_payment_method {
        found.push(Blocker::new(
            BlockerReason::PaymentMethodRequired,
            format!("Partner {} requires a payment method on file.", destination.partner_id),
        ));
    }
    if let Some(accepted) = facts.accepted_terms_version
        && accepted != destination.terms_version
    {
        found.push(Blocker::new(
            BlockerReason::TermsNotAccepted,
            format!(
                "Accept partner {}'s current terms, version {} (accepted: {accepted}).",
                destination.partner_id, destination.terms_version
            ),
        ));
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> ClientFacts {
        ClientFacts {
            legacy: false,
            payment_processor: "STRIPE".into(),
            missing_company_info_fields: Vec::new(),
            has_payment_method: true,
        }
    }

    fn partner() -> PartnerFacts {
        PartnerFacts {
            partner_id: "p2".into(),
            payment_processor: "STRIPE".into(),
            accepting_changes: true,
            terms_version: "v1".into(),
            requires_payment_method: false,
            auto_approve: false,
        }
    }

    fn facts<'a>(client: &'a ClientFacts, destination: Option<&'a PartnerFacts>) -> Eligibility<'a> {
        Eligibility {
            client,
            current_partner_id: "p1",
            destination_partner_id: "p2",
            destination,
            accepted_terms_version: Some("v1"),
            open_request_id: None,
        }
    }

    fn reasons(found: &[Blocker]) -> Vec<&'static str> {
        found.iter().map(|blocker| blocker.reason.as_str()).collect()
    }

    #[test]
    fn an_eligible_change_has_no_blockers() {
        let (client, partner) = (client(), partner());
        assert!(blockers(&facts(&client, Some(&partner))).is_empty());
    }

    #[test]
    fn every_blocker_is_reported_at_once() {
        let client = ClientFacts {
            legacy: true,
            payment_processor: "ADYEN".into(),
            missing_company_info_fields: vec!["tax_id".into()],
            has_payment_method: false,
        };
        let partner = PartnerFacts { accepting_changes: false, requires_payment_method: true, ..partner() };
        let mut facts = facts(&client, Some(&partner));
        facts.accepted_terms_version = Some("v0");
        facts.open_request_id = Some("pc-1");
        let found = blockers(&facts);
        assert_eq!(
            reasons(&found),
            [
                "LEGACY_ACCOUNT",
                "COMPANY_INFO_INCOMPLETE",
                "CHANGE_ALREADY_PENDING",
                "PARTNER_NOT_ACCEPTING",
                "PAYMENT_PROCESSOR_MISMATCH",
                "PAYMENT_METHOD_REQUIRED",
                "TERMS_NOT_ACCEPTED",
            ]
        );
        assert_eq!(found[1].missing_fields, ["tax_id"]);
        assert_eq!(found[4].message, "Destination partner is using a different payment processor.");
    }

    #[test]
    fn an_unknown_or_current_partner_is_refused() {
        let client = client();
        assert_eq!(reasons(&blockers(&facts(&client, None))), ["PARTNER_NOT_FOUND"]);
        let partner = partner();
        let mut same = facts(&client, Some(&partner));
        same.current_partner_id = "p2";
        assert_eq!(reasons(&blockers(&same)), ["SAME_PARTNER"]);
    }

    #[test]
    fn terms_are_not_checked_at_preview() {
        let (client, partner) = (client(), partner());
        let mut preview = facts(&client, Some(&partner));
        preview.accepted_terms_version = None;
        assert!(blockers(&preview).is_empty());
    }

    #[test]
    fn the_lifecycle_allows_exactly_the_documented_transitions() {
        use {EventType as E, State as S};
        let allowed = [
            (S::PendingApproval, E::Approved, S::Approved),
            (S::PendingApproval, E::Rejected, S::Rejected),
            (S::PendingApproval, E::Cancelled, S::Cancelled),
            (S::PendingApproval, E::Expired, S::Expired),
            (S::PendingApproval, E::Rescheduled, S::PendingApproval),
            (S::Approved, E::MigrationStarted, S::Migrating),
            (S::Approved, E::Rescheduled, S::Approved),
            (S::Approved, E::Cancelled, S::Cancelled),
            (S::Migrating, E::Completed, S::Completed),
            (S::Migrating, E::Failed, S::Failed),
            (S::Failed, E::Retried, S::Approved),
        ];
        for from in State::iter() {
            for event in EventType::iter() {
                let expected = allowed.iter().find(|(f, e, _)| *f == from && *e == event).map(|(_, _, to)| *to);
                assert_eq!(next_state(from, event), expected, "{from:?} + {event:?}");
            }
        }
        for terminal in [S::Completed, S::Rejected, S::Cancelled, S::Expired] {
            assert!(EventType::iter().all(|event| next_state(terminal, event).is_none()), "{terminal:?}");
        }
    }

    /// The stored names are a contract with every row already written.
    #[test]
    fn stored_names_stay_as_written() {
        let states: Vec<String> = State::iter().map(|state| state.to_value()).collect();
        let expected =
            ["PENDING_APPROVAL", "APPROVED", "MIGRATING", "COMPLETED", "REJECTED", "CANCELLED", "EXPIRED", "FAILED"];
        assert_eq!(states, expected);
        let steps: Vec<String> = SagaStep::iter().map(|step| step.to_value()).collect();
        assert_eq!(steps, ["TRANSFER", "PERMISSIONS"]);
        for event in EventType::iter() {
            assert_eq!(EventType::try_from_value(&event.to_value()).ok(), Some(event));
        }
        assert!(State::try_from_value(&"PENDING".to_owned()).is_err());
    }

    #[test]
    fn a_schedule_may_be_in_the_past_but_not_too_far_ahead_or_after_expiry() {
        let now = DateTime::<Utc>::from_timestamp(1_800_000_000, 0).unwrap();
        let day = chrono::Duration::days(1);
        let pending = ScheduleLimits { now, latest: now + day * 90, expires: Some(now + day * 14) };
        let approved = ScheduleLimits { expires: None, ..pending };
        assert_eq!(schedule_problem(now - day, &pending), None, "the past means as soon as approved");
        assert_eq!(schedule_problem(now + day * 14, &pending), None);
        assert!(schedule_problem(now + day * 15, &pending).unwrap().contains("expires"));
        assert_eq!(schedule_problem(now + day * 15, &approved), None, "an approved request no longer expires");
        assert!(schedule_problem(now + day * 91, &approved).unwrap().contains("90 days"));
    }

    #[test]
    fn a_submit_to_an_auto_approving_partner_is_approved_on_its_behalf() {
        let mut destination = partner();
        let (state, events) = submission_events("client:c", &destination);
        assert_eq!(state, State::PendingApproval);
        assert_eq!(events.iter().map(|event| event.event_type).collect::<Vec<_>>(), [EventType::Submitted]);
        destination.auto_approve = true;
        let (state, events) = submission_events("client:c", &destination);
        assert_eq!(state, State::Approved);
        let steps: Vec<_> = events.iter().map(|event| (event.event_type, event.actor.as_str())).collect();
        assert_eq!(steps, [(EventType::Submitted, "client:c"), (EventType::Approved, "partner:p2")]);
        assert_eq!(states_allowing(EventType::Cancelled), [State::PendingApproval, State::Approved]);
    }
}
