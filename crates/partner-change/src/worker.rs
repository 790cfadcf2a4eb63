//! The migration saga and the expiry sweeper: background work that any number
//! of replicas may run at once.
//!
//! A worker claims APPROVED requests by moving them to MIGRATING with a lease
//! (several per transaction, each a conditional write with its MIGRATION_STARTED
//! event), then drives each one's saga in a task of its own, up to
//! `worker.concurrency` at once: re-check eligibility and move the WABA in the account service
//! (idempotent per request), revoke the old partner's permissions and grant
//! the named numbers (idempotent per request), mark COMPLETED.
//!
//! The lease is judged by the database's clock and renewed while a step runs;
//! a worker that dies leaves it to lapse within one lease, and any worker then
//! resumes the request at the step recorded (with each retry, and at
//! completion; the idempotent calls make a repeated step harmless, and a
//! transfer step repeated after the move refuses nothing).
//!
//! **Forward only after the move.** Before the WABA moves, a refusal (a blocker
//! found by the re-check, or a peer refusing the transfer) ends the request in
//! FAILED. Once `TransferWaba` has succeeded, nothing can: every later error is
//! retried with capped exponential backoff (with jitter) until the step
//! succeeds, and a request that keeps failing is reported as stuck. Errors that
//! do not tell whether a call took effect (a peer's INTERNAL, a dropped
//! connection) are retried too, before the move as after it.

use std::{
    collections::VecDeque,
    future::Future,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use partnerhub_proto::{
    account::v1::TransferWabaRequest,
    permissions::v1::{
        GrantPartnerPermissionsRequest, RevokePartnerPermissionsRequest,
        permissions_service_client::PermissionsServiceClient,
    },
};
use partnerhub_runtime::{db::StoreError, outage::Outage, peers::Peer, rpc::continue_trace};
use sea_orm::{DatabaseConnection, Iterable};
use tokio::sync::{Notify, Semaphore};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::{Code, Status};
use tonic_types::StatusExt;
use tracing::Instrument as _;

use crate::{
    domain::{Blocker, Eligibility, EventDraft, EventType, PartnerChange, SagaStep, State, blockers},
    facts::{Accounts, FactsError},
    metrics::{StateLabels, StepLabels, StepNameLabels, metrics},
    settings::WorkerSettings,
    store::{self, Effects, WriteError},
};

/// The actor the worker's events name.
pub const WORKER_ACTOR: &str = "service:partner-change";

/// Requests claimed per statement, at most.
const CLAIM_BATCH: usize = 16;

/// What one call of [`MigrationWorker::run_once`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing was waiting.
    Idle,
    /// A request was claimed and driven as far as it would go.
    Worked,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Faults a test (or a drill) can make the worker suffer. Empty by default.
#[derive(Debug, Clone, Default)]
pub struct Faults(Arc<Mutex<FaultPlan>>);

#[derive(Debug, Default)]
struct FaultPlan {
    crash_after: Option<SagaStep>,
    permission_call_failures: VecDeque<tonic::Code>,
    transfer_call_failures: VecDeque<tonic::Code>,
}

impl Faults {
    /// The next time the worker finishes `step`, it stops as if the process had
    /// died: it keeps its lease and does nothing more.
    pub fn crash_after(&self, step: SagaStep) {
        self.plan().crash_after = Some(step);
    }

    /// The next calls to the permissions service fail with these codes, in order.
    pub fn fail_permission_calls(&self, codes: impl IntoIterator<Item = tonic::Code>) {
        self.plan().permission_call_failures.extend(codes);
    }

    /// The next calls to `TransferWaba` fail with these codes, in order (the
    /// account service is not called).
    pub fn fail_transfer_calls(&self, codes: impl IntoIterator<Item = tonic::Code>) {
        self.plan().transfer_call_failures.extend(codes);
    }

    fn take_transfer_failure(&self) -> Option<Status> {
        self.plan().transfer_call_failures.pop_front().map(|code| Status::new(code, "injected fault"))
    }

    fn take_crash(&self, step: SagaStep) -> bool {
        let mut plan = self.plan();
        let crash = plan.crash_after == Some(step);
        if crash {
            plan.crash_after = None;
        }
        crash
    }

    fn take_permission_failure(&self) -> Option<Status> {
        self.plan().permission_call_failures.pop_front().map(|code| Status::new(code, "injected fault"))
    }

    fn plan(&self) -> std::sync::MutexGuard<'_, FaultPlan> {
        // A poisoned plan only means a test panicked mid-update; the plan is still usable.
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The migration worker of one replica.
#[derive(Debug, Clone)]
pub struct MigrationWorker {
    db: DatabaseConnection,
    accounts: Accounts,
    permissions: Peer,
    settings: WorkerSettings,
    /// Names this worker in leases, so that only it records progress on what it holds.
    owner: String,
    /// Rung by this process's API when a request is approved.
    wake: Arc<Notify>,
    /// Rung after each commit that appends events (wakes the event tailer).
    events_committed: Arc<Notify>,
    faults: Faults,
    /// Shared by this process's worker loops: one report per database outage.
    outage: Outage,
}

/// How one saga step ended, when it did not succeed.
enum StepError {
    /// A peer refused the step, or the re-check found a blocker: before the
    /// move this ends the change in FAILED with the reason; after it, the step
    /// is retried like any other error, since the saga only goes forward.
    Refused(String),
    /// Try again later: a peer or the database is away, or a peer failed in a
    /// way that does not tell whether the step took effect.
    Transient(String),
    /// Another worker holds the request now (this one's lease lapsed); it carries on.
    LeaseLost,
}

/// After this many retries in a row, a migration counts as stuck: one log
/// line says so and the `partner_change_migrations_stuck` gauge counts it. It
/// is still retried (at the capped backoff) until it completes.
pub const STUCK_AFTER_ATTEMPTS: i32 = 8;

/// The span of one saga step, named after it.
fn step_span(step: SagaStep) -> tracing::Span {
    let name = step_name(step);
    tracing::info_span!("saga_step", otel.name = name, step = name)
}

/// How steps are named in spans and metrics.
fn step_name(step: SagaStep) -> &'static str {
    match step {
        SagaStep::Transfer => "transfer",
        SagaStep::Permissions => "permissions",
    }
}

/// Counts and times a finished step by its outcome: `ok`, `retry`, `failed` or `lease_lost`.
fn record_step<T>(step: SagaStep, done: &Result<T, StepError>, started: Instant) {
    let metrics = metrics();
    let name = step_name(step);
    let outcome = match done {
        Ok(_) => "ok",
        Err(StepError::Refused(_)) if step == SagaStep::Transfer => "failed",
        Err(StepError::Refused(_) | StepError::Transient(_)) => "retry",
        Err(StepError::LeaseLost) => "lease_lost",
    };
    metrics.saga_steps.get_or_create(&StepLabels { step: name, outcome }).inc();
    metrics.saga_step_seconds.get_or_create(&StepNameLabels { step: name }).observe(started.elapsed().as_secs_f64());
}

impl MigrationWorker {
    pub fn new(
        db: DatabaseConnection,
        accounts: Accounts,
        permissions: Peer,
        settings: WorkerSettings,
        owner: String,
        wake: Arc<Notify>,
        events_committed: Arc<Notify>,
    ) -> Self {
        Self {
            db,
            accounts,
            permissions,
            settings,
            owner,
            wake,
            events_committed,
            faults: Faults::default(),
            outage: Outage::new("migration_worker"),
        }
    }

    /// The same worker under another name, with its own faults (tests run two
    /// "replicas" this way).
    pub fn replica(&self, owner: &str) -> Self {
        Self { owner: owner.to_owned(), faults: Faults::default(), ..self.clone() }
    }

    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Claims one request, if any waits, and drives its saga as far as it goes.
    pub async fn run_once(&self) -> Result<Step, WorkerError> {
        let Some(change) = self.claim(1).await?.pop() else { return Ok(Step::Idle) };
        self.migrate(change).await?;
        Ok(Step::Worked)
    }

    /// Runs until `shutdown`: claims as many requests as it has free slots
    /// (`concurrency` sagas in flight), several per statement, and drives each
    /// saga in a task of its own; when nothing more waits, it sleeps until a
    /// wake-up or the poll interval. At shutdown the sagas in flight finish
    /// first. While the database is away it keeps trying, and says so once.
    pub async fn run(self, shutdown: CancellationToken) {
        tracing::info!(owner = %self.owner, concurrency = self.settings.concurrency, "migration worker started");
        let slots = Arc::new(Semaphore::new(usize::try_from(self.settings.concurrency).unwrap_or(1).max(1)));
        let sagas = TaskTracker::new();
        loop {
            let first = tokio::select! {
                () = shutdown.cancelled() => break,
                first = slots.clone().acquire_owned() => first,
            };
            // The slots are never closed.
            let Ok(first) = first else { break };
            // Only this loop takes slots: those free now stay free until it does.
            let room = (1 + slots.available_permits()).min(CLAIM_BATCH);
            let mut more_waiting = false;
            match self.claim(room as u64).await {
                Ok(claimed) => {
                    self.outage.succeeded();
                    // A full claim: more may be waiting; claim again as soon as a slot is free.
                    more_waiting = claimed.len() == room;
                    let mut first = Some(first);
                    for change in claimed {
                        let slot = first.take().or_else(|| slots.clone().try_acquire_owned().ok());
                        let worker = self.clone();
                        sagas.spawn(async move {
                            if let Err(err) = worker.migrate(change).await {
                                worker.outage.failed(&err);
                            }
                            drop(slot);
                        });
                    }
                }
                Err(err) => self.outage.failed(&err),
            }
            if more_waiting {
                continue;
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(self.settings.poll_interval) => {}
            }
        }
        sagas.close();
        sagas.wait().await;
        tracing::info!(owner = %self.owner, "migration worker stopped");
    }

    /// Drives a claimed request's saga, in the trace of the approval (or
    /// retry) that set it going.
    async fn migrate(&self, change: PartnerChange) -> Result<(), WorkerError> {
        let span = tracing::info_span!(
            "migration",
            otel.name = "migration",
            partner_change_id = %change.partner_change_id,
            owner = %self.owner,
        );
        continue_trace(&span, change.trace_parent.as_deref());
        self.drive(change).instrument(span).await
    }

    /// Claims up to `limit` requests in one transaction (see [`store::claim`]).
    async fn claim(&self, limit: u64) -> Result<Vec<PartnerChange>, WorkerError> {
        let started = EventDraft {
            event_type: EventType::MigrationStarted,
            actor: WORKER_ACTOR.to_owned(),
            reason: String::new(),
        };
        let claimed = store::claim(&self.db, &self.owner, self.settings.lease, limit, &started).await?;
        if !claimed.is_empty() {
            // Approved requests claimed have their MIGRATION_STARTED events.
            self.events_committed.notify_one();
        }
        for change in &claimed {
            tracing::info!(partner_change_id = %change.partner_change_id, owner = %self.owner, step = %change.saga_step, "migration claimed");
        }
        Ok(claimed)
    }

    async fn drive(&self, mut change: PartnerChange) -> Result<(), WorkerError> {
        // The WABA's numbers as the move left them, when this task made the
        // move: the permissions step then need not read them again.
        let mut moved_numbers = None;
        loop {
            let step = change.saga_step;
            let started = Instant::now();
            let partner_change_id = change.partner_change_id.clone();
            let done = match step {
                SagaStep::Transfer => self
                    .holding_lease(&partner_change_id, self.transfer(&mut change))
                    .instrument(step_span(step))
                    .await
                    .map(|numbers| {
                        moved_numbers = numbers;
                        Vec::new()
                    }),
                SagaStep::Permissions => {
                    self.holding_lease(&partner_change_id, self.move_permissions(&change, moved_numbers.take()))
                        .instrument(step_span(step))
                        .await
                }
            };
            record_step(step, &done, started);
            let skipped_grants = match done {
                Ok(skipped_grants) => skipped_grants,
                Err(StepError::LeaseLost) => return Ok(()),
                // Before the move a refusal is final; after it, nothing is.
                Err(StepError::Refused(reason)) if step == SagaStep::Transfer => {
                    return self.fail(&change, reason).await;
                }
                Err(StepError::Refused(reason) | StepError::Transient(reason)) => {
                    return self.retry_later(&change, reason).await;
                }
            };
            if self.faults.take_crash(step) {
                tracing::warn!(partner_change_id = %change.partner_change_id, step = %step, "injected crash");
                return Ok(());
            }
            let next = match step {
                // The move is not recorded on its own: it is recorded with a
                // retry (`release_for_retry`) or at completion. A worker that
                // resumes the request at the transfer finds the WABA with the
                // destination, acts on no refusal, and the transfer, already
                // applied, changes nothing.
                SagaStep::Transfer => Ok(PartnerChange { saga_step: SagaStep::Permissions, ..change }),
                SagaStep::Permissions => {
                    let draft = EventDraft {
                        event_type: EventType::Completed,
                        actor: WORKER_ACTOR.to_owned(),
                        reason: skipped_grants_reason(&skipped_grants),
                    };
                    let effects = Effects {
                        release: true,
                        skipped_grant_phone_numbers: Some(skipped_grants),
                        ..Effects::default()
                    };
                    store::apply_event(&self.db, &change, draft, effects).await
                }
            };
            change = match next {
                Ok(next) if next.state == State::Completed => {
                    self.events_committed.notify_one();
                    tracing::info!(partner_change_id = %next.partner_change_id, "partner change completed");
                    return Ok(());
                }
                Ok(next) => next,
                // Our lease lapsed and another worker has it; it will finish.
                Err(WriteError::Conflict | WriteError::InvalidState { .. }) => return Ok(()),
                Err(WriteError::Duplicate(detail)) => return Err(StoreError::UniqueViolation(detail).into()),
                Err(WriteError::Store(err)) => return Err(err.into()),
            };
        }
    }

    /// Runs `work` while renewing this worker's lease on the request every
    /// third of the lease, so that a step that takes long (a slow peer, a
    /// deadline) is not taken over while it runs, and a worker that dies loses
    /// the request within one lease.
    async fn holding_lease<T>(&self, partner_change_id: &str, work: impl Future<Output = T>) -> T {
        let renew_every = self.settings.lease / 3;
        let renew = async {
            loop {
                tokio::time::sleep(renew_every).await;
                match store::renew_lease(&self.db, partner_change_id, &self.owner, self.settings.lease).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(partner_change_id, owner = %self.owner, "lost the lease while a step ran; another worker carries on");
                        return;
                    }
                    // The step itself will meet the same trouble and report it.
                    Err(err) => tracing::debug!(error = %err, partner_change_id, "cannot renew the lease yet"),
                }
            }
        };
        let mut work = std::pin::pin!(work);
        tokio::select! {
            biased;
            done = &mut work => done,
            () = renew => work.await,
        }
    }

    /// Re-checks that the change may still go ahead, then moves the WABA;
    /// returns the WABA's numbers as the move left them (as the account
    /// service answered; `None` if it did not say). If the WABA is with the
    /// destination already, this change moved it before (nothing else can
    /// while it is open): then no refusal is final, since the saga only goes
    /// forward after the move.
    async fn transfer(&self, change: &mut PartnerChange) -> Result<Option<Vec<String>>, StepError> {
        let world = match self.accounts.world(&change.waba_id, &change.destination_partner_id).await {
            Ok(world) => world,
            Err(FactsError::WabaNotFound(id)) => {
                return Err(StepError::Refused(format!("WABA_NOT_FOUND: WABA {id} no longer exists.")));
            }
            // Without the facts the re-check cannot run, nor can it be told
            // whether this change moved the WABA before a crash: wait for them.
            Err(FactsError::Peer(status)) => {
                return Err(StepError::Transient(describe("reading the account", &status)));
            }
        };
        // Already with the destination: this change moved it before its
        // worker stopped (the idempotent transfer says so).
        let moved_before = world.current_partner_id == change.destination_partner_id;
        let refused = |status: &Status| match classify("moving the WABA", status) {
            StepError::Refused(reason) if moved_before => StepError::Transient(reason),
            classified => classified,
        };
        if !moved_before {
            if world.current_partner_id != change.source_partner_id {
                return Err(StepError::Refused(format!(
                    "SOURCE_PARTNER_MISMATCH: the WABA is now with partner {}, not {}.",
                    world.current_partner_id, change.source_partner_id
                )));
            }
            let found = blockers(&Eligibility {
                client: &world.client,
                current_partner_id: &world.current_partner_id,
                destination_partner_id: &change.destination_partner_id,
                destination: world.destination.as_ref(),
                accepted_terms_version: Some(&change.accepted_terms_version),
                open_request_id: None,
            });
            if let Some(blocker) = found.first() {
                return Err(StepError::Refused(Blocker::as_failure_reason(blocker)));
            }
            self.fence_every_number(change, &world.phone_numbers).await?;
        }
        if let Some(fault) = self.faults.take_transfer_failure() {
            return Err(refused(&fault));
        }
        let request = TransferWabaRequest {
            waba_id: change.waba_id.clone(),
            from_partner_id: change.source_partner_id.clone(),
            to_partner_id: change.destination_partner_id.clone(),
            partner_change_id: change.partner_change_id.clone(),
        };
        match self.accounts.transfer(request).await {
            Ok(outcome) => {
                tracing::info!(partner_change_id = %change.partner_change_id, already_applied = outcome.already_applied, "WABA moved");
                Ok(outcome.waba.map(|waba| waba.phone_numbers))
            }
            Err(status) => Err(refused(&status)),
        }
    }

    /// The old partner is fenced off the numbers a migrating request names
    /// (every replica's permission cache reads them): before the move, the
    /// request must name every number the WABA has, including any added since
    /// the submit.
    async fn fence_every_number(&self, change: &mut PartnerChange, on_waba: &[String]) -> Result<(), StepError> {
        let added: Vec<&String> = on_waba.iter().filter(|number| !change.phone_numbers.contains(number)).collect();
        if added.is_empty() {
            return Ok(());
        }
        let mut numbers = change.phone_numbers.clone();
        numbers.extend(added.into_iter().cloned());
        *change = match store::record_phone_numbers(&self.db, change, &self.owner, numbers).await {
            Ok(recorded) => recorded,
            Err(WriteError::Conflict | WriteError::InvalidState { .. }) => return Err(StepError::LeaseLost),
            Err(err) => return Err(StepError::Transient(format!("recording the WABA's numbers: {err}"))),
        };
        Ok(())
    }

    /// Revokes every permission of the old partner on the moved numbers, then
    /// grants the numbers named at submit to the new partner; returns the
    /// named numbers that have left the WABA since, which are not granted.
    /// `moved_numbers`: the WABA's numbers as the move left them, if this task
    /// made it (otherwise, after a restart, they are read now).
    async fn move_permissions(
        &self,
        change: &PartnerChange,
        moved_numbers: Option<Vec<String>>,
    ) -> Result<Vec<String>, StepError> {
        let on_waba = match moved_numbers {
            Some(numbers) => numbers,
            None => self
                .accounts
                .phone_numbers(&change.waba_id)
                .await
                .map_err(|status| StepError::Transient(describe("reading the WABA's numbers", &status)))?,
        };
        // The numbers as submitted, and any added to the WABA since: all moved.
        let mut numbers = change.phone_numbers.clone();
        numbers.extend(on_waba.iter().filter(|number| !change.phone_numbers.contains(number)).cloned());
        if let Some(fault) = self.faults.take_permission_failure() {
            return Err(classify("revoking permissions", &fault));
        }
        let revoke = RevokePartnerPermissionsRequest {
            partner_change_id: change.partner_change_id.clone(),
            partner_id: change.source_partner_id.clone(),
            phone_numbers: numbers,
        };
        let revoked = self
            .permissions
            .call(revoke, |channel, request| async move {
                PermissionsServiceClient::new(channel).revoke_partner_permissions(request).await
            })
            .await
            .map_err(|status| classify("revoking permissions", &status))?;
        tracing::info!(partner_change_id = %change.partner_change_id, revoked = revoked.get_ref().revoked_count, "old partner's permissions revoked");
        let (to_grant, skipped): (Vec<String>, Vec<String>) =
            change.grant_phone_numbers.iter().cloned().partition(|number| on_waba.contains(number));
        if to_grant.is_empty() {
            return Ok(skipped);
        }
        if let Some(fault) = self.faults.take_permission_failure() {
            return Err(classify("granting permissions", &fault));
        }
        let grant = GrantPartnerPermissionsRequest {
            partner_change_id: change.partner_change_id.clone(),
            client_id: change.client_id.clone(),
            partner_id: change.destination_partner_id.clone(),
            phone_numbers: to_grant,
        };
        self.permissions
            .call(grant, |channel, request| async move {
                PermissionsServiceClient::new(channel).grant_partner_permissions(request).await
            })
            .await
            .map_err(|status| classify("granting permissions", &status))?;
        Ok(skipped)
    }

    async fn fail(&self, change: &PartnerChange, reason: String) -> Result<(), WorkerError> {
        tracing::warn!(partner_change_id = %change.partner_change_id, %reason, "partner change failed");
        let draft =
            EventDraft { event_type: EventType::Failed, actor: WORKER_ACTOR.to_owned(), reason: reason.clone() };
        let effects = Effects { failure_reason: Some(reason), release: true, ..Effects::default() };
        match store::apply_event(&self.db, change, draft, effects).await {
            Ok(_) => {
                self.events_committed.notify_one();
                Ok(())
            }
            Err(WriteError::Conflict | WriteError::InvalidState { .. }) => Ok(()),
            Err(WriteError::Duplicate(detail)) => Err(StoreError::UniqueViolation(detail).into()),
            Err(WriteError::Store(err)) => Err(err.into()),
        }
    }

    async fn retry_later(&self, change: &PartnerChange, reason: String) -> Result<(), WorkerError> {
        let attempts = store::attempts(&self.db, &change.partner_change_id).await?;
        let delay = backoff(&self.settings, attempts);
        let retried = attempts.saturating_add(1);
        match store::release_for_retry(&self.db, change, &self.owner, delay, retried).await {
            Ok(()) => {}
            Err(WriteError::Conflict | WriteError::InvalidState { .. }) => return Ok(()),
            Err(WriteError::Duplicate(detail)) => return Err(StoreError::UniqueViolation(detail).into()),
            Err(WriteError::Store(err)) => return Err(err.into()),
        }
        let (id, step) = (&change.partner_change_id, change.saga_step);
        match retried {
            STUCK_AFTER_ATTEMPTS => tracing::error!(
                partner_change_id = %id, %step, attempts = retried, %reason, retry_in = ?delay,
                "partner change is stuck: its migration step keeps failing; still retrying until it succeeds"
            ),
            _ if retried < STUCK_AFTER_ATTEMPTS => tracing::warn!(
                partner_change_id = %id, %step, attempts = retried, %reason, retry_in = ?delay,
                "migration step will be retried"
            ),
            _ => {
                tracing::debug!(partner_change_id = %id, %step, attempts = retried, %reason, "migration step will be retried")
            }
        }
        Ok(())
    }
}

/// What a peer's error means for a step. A refusal (the peer understood the
/// call and said no, so it took no effect) is final before the move; anything
/// else is retried: unavailability, deadlines, conflicts, and also a peer's
/// INTERNAL or UNKNOWN, which do not tell whether the call took effect.
fn classify(doing: &str, status: &Status) -> StepError {
    match status.code() {
        Code::InvalidArgument
        | Code::NotFound
        | Code::AlreadyExists
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::FailedPrecondition
        | Code::OutOfRange => {
            let reason = status
                .get_details_error_info()
                .map(|info| info.reason)
                .unwrap_or_else(|| format!("{:?}", status.code()));
            StepError::Refused(format!("{reason}: {doing} failed: {}", status.message()))
        }
        _ => StepError::Transient(describe(doing, status)),
    }
}

fn describe(doing: &str, status: &Status) -> String {
    format!("{doing}: {:?}: {}", status.code(), status.message())
}

/// The COMPLETED event's reason: which named numbers were not granted, if any.
fn skipped_grants_reason(skipped: &[String]) -> String {
    if skipped.is_empty() {
        return String::new();
    }
    format!("not granted, no longer on the WABA: {}", skipped.join(", "))
}

/// `initial × 2^attempts`, capped, then scaled by a random factor in [0.5, 1).
fn backoff(settings: &WorkerSettings, attempts: i32) -> Duration {
    let exponent = u32::try_from(attempts.clamp(0, 30)).unwrap_or(30);
    let capped = settings.backoff_initial.saturating_mul(2u32.saturating_pow(exponent)).min(settings.backoff_max);
    let jitter = 0.5 + f64::from(getrandom::u32().unwrap_or(0) % 1000) / 2000.0;
    capped.mul_f64(jitter)
}

/// Expires every pending request past its expire time; returns how many.
/// Rings `events_committed` after each.
pub async fn expire_due(db: &DatabaseConnection, events_committed: &Notify) -> Result<usize, StoreError> {
    let mut expired = 0;
    for change in store::due_to_expire(db, 100).await? {
        let draft = EventDraft {
            event_type: EventType::Expired,
            actor: WORKER_ACTOR.to_owned(),
            reason: "the destination partner did not decide before the request expired".to_owned(),
        };
        match store::apply_event(db, &change, draft, Effects::default()).await {
            Ok(_) => {
                events_committed.notify_one();
                tracing::info!(partner_change_id = %change.partner_change_id, "partner change expired");
                expired += 1;
            }
            // Decided (or expired by another replica) in the meantime.
            Err(WriteError::Conflict | WriteError::InvalidState { .. }) => {}
            Err(WriteError::Duplicate(detail)) => return Err(StoreError::UniqueViolation(detail)),
            Err(WriteError::Store(err)) => return Err(err),
        }
    }
    Ok(expired)
}

/// Runs [`expire_due`] every `interval` until `shutdown`.
pub async fn run_expiry_sweeper(
    db: DatabaseConnection,
    interval: Duration,
    events_committed: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let outage = Outage::new("expiry_sweeper");
    loop {
        match expire_due(&db, &events_committed).await {
            Ok(_) => outage.succeeded(),
            Err(err) => outage.failed(&err),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

/// Keeps the `partner_change_requests` gauge (requests by state), and the
/// gauges of stuck migrations and of those waiting for their scheduled time,
/// current: counts the request table every `interval` until `shutdown`.
pub async fn run_state_gauge(db: DatabaseConnection, interval: Duration, shutdown: CancellationToken) {
    let outage = Outage::new("state_gauge");
    loop {
        let counted = async {
            Ok::<_, StoreError>((
                store::count_by_state(&db).await?,
                store::count_stuck(&db, STUCK_AFTER_ATTEMPTS).await?,
            ))
        };
        match counted.await {
            Ok((counts, stuck)) => {
                outage.succeeded();
                metrics().migrations_stuck.set(stuck);
                for state in State::iter() {
                    let count = counts.iter().find(|(counted, _)| *counted == state).map_or(0, |(_, count)| *count);
                    metrics().requests.get_or_create(&StateLabels { state: state.to_string() }).set(count);
                }
            }
            Err(err) => outage.failed(&err),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let settings = WorkerSettings {
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
            ..WorkerSettings::default()
        };
        for (attempts, full) in [(0, 100), (1, 200), (2, 400), (3, 800), (4, 1000), (40, 1000)] {
            let delay = backoff(&settings, attempts);
            let full = Duration::from_millis(full);
            assert!(
                delay >= full / 2 && delay < full,
                "attempt {attempts}: {delay:?} not in [{:?}, {full:?})",
                full / 2
            );
        }
    }
}
