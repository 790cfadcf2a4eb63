//! The migration saga at its edges: a worker that dies after moving the WABA
//! is resumed by another once its lease lapses, with no step's effect done
//! twice; the old partner is denied the numbers from the move on, before the
//! revoke has run; a refusal fails a change only before the move, and after
//! it every error is retried until the change completes; numbers named for
//! the grant that have left the WABA are skipped and reported; a dead
//! worker's migration completes on a surviving replica within ten seconds
//! with the default configuration.

use std::time::{Duration, Instant};

use partnerhub_partner_change::settings::WorkerSettings;
use partnerhub_partner_change::{
    domain::SagaStep,
    worker::{STUCK_AFTER_ATTEMPTS, Step},
};
use partnerhub_proto::{partnerchange::v1 as pc, permissions::v1 as perm};
use partnerhub_tests::{Backend, ServiceSections, TestApp, eventually, on_both_databases};
use pc::{PartnerChangeEventType as Ev, PartnerChangeState as St};
use sea_orm::ConnectionTrait;
use tonic::Code;

use crate::fixtures::{Scenario, allowed, get_change, history, history_types, scenario};

on_both_databases!(
    a_saga_that_dies_after_the_transfer_is_resumed_by_another_worker,
    the_old_partner_is_denied_from_the_move_on_before_the_revoke_runs,
    a_refusal_fails_a_change_before_the_move_and_nothing_fails_it_after,
    a_change_that_keeps_failing_after_the_move_is_reported_stuck_and_still_completes,
    numbers_named_for_the_grant_that_left_the_waba_are_skipped_and_reported,
    a_dead_workers_migration_completes_on_a_surviving_replica_within_ten_seconds,
    a_worker_that_resumes_a_moved_waba_acts_on_no_refusal,
);

const COMPLETED_ONCE: [Ev; 4] = [Ev::Submitted, Ev::Approved, Ev::MigrationStarted, Ev::Completed];

/// The numbers `partner_id` holds grants on, whatever the migration fence says.
async fn granted_to(app: &TestApp, partner_id: &str) -> Vec<String> {
    let request = perm::ListPartnerPermissionsRequest { partner_id: partner_id.to_owned(), ..Default::default() };
    let grants = app.permissions("support:s").list_partner_permissions(request).await.unwrap().into_inner().grants;
    grants.into_iter().map(|grant| grant.phone_number).collect()
}

/// The old partner holds the WABA's numbers; a change is submitted and
/// approved, and its worker dies right after moving the WABA, keeping its lease.
async fn moved_by_a_worker_that_died(app: &TestApp, s: &Scenario) -> pc::PartnerChange {
    s.grant(app, &s.source.partner_id, &s.waba.phone_numbers).await;
    let submitted = s.submit(app, "req").await;
    s.approve(app, &submitted.partner_change_id).await;
    let first = app.migration_worker().replica("replica-a");
    first.faults().crash_after(SagaStep::Transfer);
    assert_eq!(first.run_once().await.unwrap(), Step::Worked);
    submitted
}

/// Support turns off `partner_id`'s accepting of changes: a blocker for a change to it.
async fn stop_accepting_changes(app: &TestApp, partner_id: &str) {
    app.account("support:s")
        .update_partner_settings(partnerhub_proto::account::v1::UpdatePartnerSettingsRequest {
            partner_id: partner_id.to_owned(),
            settings: Some(partnerhub_proto::account::v1::PartnerSettings::default()),
            payment_processor: 0,
            update_mask: Some(prost_types::FieldMask { paths: vec!["accepting_changes".into()] }),
        })
        .await
        .unwrap();
}

/// Runs the worker until the request reaches a terminal state; returns it.
async fn drive_to_the_end(app: &TestApp, worker_name: &str, partner_change_id: &str) -> pc::PartnerChange {
    let worker = app.migration_worker().replica(worker_name);
    eventually(&format!("{partner_change_id} to end"), Duration::from_secs(20), || async {
        worker.run_once().await.unwrap();
        let change = get_change(app, partner_change_id).await;
        matches!(change.state(), St::Completed | St::Failed).then_some(change)
    })
    .await
}

async fn a_saga_that_dies_after_the_transfer_is_resumed_by_another_worker(backend: Backend) {
    // Long enough to outlast the calls between the crash and the check that the
    // lease still holds, even on a loaded machine.
    let app = TestApp::spawn_with(backend, |settings| {
        settings.partner_change().worker.enabled = false;
        settings.partner_change().worker.lease = Duration::from_secs(2);
    })
    .await;
    let s = scenario(&app, false).await;
    let submitted = moved_by_a_worker_that_died(&app, &s).await;
    let halfway = get_change(&app, &submitted.partner_change_id).await;
    assert_eq!(halfway.state(), St::Migrating, "the first worker died mid-saga");
    let moved = s.waba_now(&app).await;
    assert_eq!(moved.partner_id, s.destination.partner_id, "the WABA moved before the crash");

    // While the lease holds, nobody else touches it; once it lapses, a second worker resumes.
    let second = app.migration_worker().replica("replica-b");
    assert_eq!(second.run_once().await.unwrap(), Step::Idle, "the lease still holds");
    eventually("the lease to lapse and replica-b to resume", Duration::from_secs(10), || async {
        (second.run_once().await.unwrap() == Step::Worked).then_some(())
    })
    .await;

    assert_eq!(get_change(&app, &submitted.partner_change_id).await.state(), St::Completed);
    let after = s.waba_now(&app).await;
    assert_eq!(after.update_time, moved.update_time, "the WABA was moved once, not again on resume");
    for number in &s.waba.phone_numbers {
        assert!(!allowed(&app, &s.source.partner_id, number).await, "old partner keeps {number}");
    }
    assert!(granted_to(&app, &s.source.partner_id).await.is_empty(), "the revoke ran on resume");
    assert_eq!(
        history_types(&app, &submitted.partner_change_id).await,
        COMPLETED_ONCE,
        "a resume is no new transition"
    );
}

/// The saga is held between the transfer and the revoke (its worker died
/// there): the old partner's grants are still stored, yet every replica
/// denies it the numbers, because they are with the new partner.
async fn the_old_partner_is_denied_from_the_move_on_before_the_revoke_runs(backend: Backend) {
    let app = TestApp::spawn_with(backend, |settings| settings.partner_change().worker.enabled = false).await;
    let other_replica = app.spawn_replica().await;
    let s = scenario(&app, false).await;
    s.grant(&app, &s.source.partner_id, &s.waba.phone_numbers).await;
    for number in &s.waba.phone_numbers {
        eventually("the grant to reach the other replica", Duration::from_secs(2), || async {
            allowed(&other_replica, &s.source.partner_id, number).await.then_some(())
        })
        .await;
    }
    let submitted = s.submit(&app, "req").await;
    s.approve(&app, &submitted.partner_change_id).await;

    let dying = app.migration_worker().replica("dying");
    dying.faults().crash_after(SagaStep::Transfer);
    dying.run_once().await.unwrap();
    assert_eq!(s.waba_now(&app).await.partner_id, s.destination.partner_id, "the WABA has moved");
    let mut still_granted = granted_to(&app, &s.source.partner_id).await;
    still_granted.sort();
    let mut numbers = s.waba.phone_numbers.clone();
    numbers.sort();
    assert_eq!(still_granted, numbers, "the revoke has not run");

    // Within the cache's trust window (1 s by default), on every replica.
    let trust_window =
        app.settings.section::<partnerhub_permissions::settings::PermissionsSettings>().cache_trust_window;
    for replica in [&app, &other_replica] {
        for number in &s.waba.phone_numbers {
            eventually("the old partner to be denied", trust_window + Duration::from_secs(1), || async {
                (!allowed(replica, &s.source.partner_id, number).await).then_some(())
            })
            .await;
        }
    }
    // …and it stays denied while the saga is held.
    tokio::time::sleep(trust_window).await;
    for number in &s.waba.phone_numbers {
        assert!(!allowed(&other_replica, &s.source.partner_id, number).await);
    }
    drop(other_replica);

    let completed = drive_to_the_end(&app, "survivor", &submitted.partner_change_id).await;
    assert_eq!(completed.state(), St::Completed);
    assert!(granted_to(&app, &s.source.partner_id).await.is_empty());
}

/// The move is not recorded on its own, so a worker that resumes a request
/// whose worker died after the move runs the transfer step again. There the
/// WABA is with the destination already: neither a blocker the re-check would
/// find nor a refused transfer ends the request in FAILED; it completes.
async fn a_worker_that_resumes_a_moved_waba_acts_on_no_refusal(backend: Backend) {
    let app = TestApp::spawn_with(backend, |settings| {
        settings.partner_change().worker.enabled = false;
        settings.partner_change().worker.lease = Duration::from_secs(1);
        settings.partner_change().worker.backoff_initial = Duration::from_millis(50);
    })
    .await;
    let s = scenario(&app, false).await;
    let submitted = moved_by_a_worker_that_died(&app, &s).await;
    assert_eq!(s.waba_now(&app).await.partner_id, s.destination.partner_id, "the WABA moved before the crash");

    // A blocker before the move would fail the request: the destination stops accepting changes…
    stop_accepting_changes(&app, &s.destination.partner_id).await;
    // …and the repeated transfer is refused, twice.
    let second = app.migration_worker().replica("replica-b");
    second.faults().fail_transfer_calls([Code::FailedPrecondition, Code::PermissionDenied]);
    let done = eventually("the resumed request to end", Duration::from_secs(20), || async {
        second.run_once().await.unwrap();
        let change = get_change(&app, &submitted.partner_change_id).await;
        matches!(change.state(), St::Completed | St::Failed).then_some(change)
    })
    .await;

    assert_eq!(done.state(), St::Completed, "{}", done.failure_reason);
    assert_eq!(history_types(&app, &submitted.partner_change_id).await, COMPLETED_ONCE);
    assert!(granted_to(&app, &s.source.partner_id).await.is_empty(), "the revoke ran on resume");
}

async fn a_refusal_fails_a_change_before_the_move_and_nothing_fails_it_after(backend: Backend) {
    let app = TestApp::spawn_with(backend, |settings| settings.partner_change().worker.enabled = false).await;
    let worker = app.migration_worker().replica("replica");
    let s = scenario(&app, false).await;
    s.grant(&app, &s.source.partner_id, &s.waba.phone_numbers).await;

    // Before the move: the account service refuses the transfer → FAILED, nothing moved.
    let first = s.submit(&app, "req-refused").await;
    s.approve(&app, &first.partner_change_id).await;
    worker.faults().fail_transfer_calls([Code::FailedPrecondition]);
    worker.run_once().await.unwrap();
    let failed = get_change(&app, &first.partner_change_id).await;
    assert_eq!(failed.state(), St::Failed);
    assert!(failed.failure_reason.contains("moving the WABA"), "{}", failed.failure_reason);
    assert_eq!(s.waba_now(&app).await.partner_id, s.source.partner_id, "nothing moved");
    eventually("the old partner to keep its numbers once the change failed", Duration::from_secs(3), || async {
        (allowed(&app, &s.source.partner_id, &s.waba.phone_numbers[0]).await).then_some(())
    })
    .await;

    // An INTERNAL or UNKNOWN from the transfer does not tell whether it took
    // effect: retried, not failed. Support's retry takes the change back up.
    app.partner_change("support:s")
        .retry_partner_change(pc::RetryPartnerChangeRequest { partner_change_id: first.partner_change_id.clone() })
        .await
        .unwrap();
    worker.faults().fail_transfer_calls([Code::Internal, Code::Unknown]);
    // After the move: every failure of the permission calls is retried, refusals included.
    worker.faults().fail_permission_calls([Code::PermissionDenied, Code::Internal, Code::FailedPrecondition]);
    let done = drive_to_the_end(&app, "replica", &first.partner_change_id).await;
    assert_eq!(done.state(), St::Completed, "{}", done.failure_reason);
    assert_eq!(s.waba_now(&app).await.partner_id, s.destination.partner_id);
    assert!(granted_to(&app, &s.source.partner_id).await.is_empty());
    assert_eq!(
        history_types(&app, &first.partner_change_id).await,
        [
            Ev::Submitted,
            Ev::Approved,
            Ev::MigrationStarted,
            Ev::Failed,
            Ev::Retried,
            Ev::MigrationStarted,
            Ev::Completed
        ]
    );

    // A refusal found by the re-check (the destination stopped accepting) fails it too, before the move.
    let back = Scenario { source: s.destination.clone(), destination: s.source.clone(), ..s.clone() };
    let second = back.submit(&app, "req-recheck").await;
    back.approve(&app, &second.partner_change_id).await;
    stop_accepting_changes(&app, &s.source.partner_id).await;
    worker.run_once().await.unwrap();
    let refused = get_change(&app, &second.partner_change_id).await;
    assert_eq!(refused.state(), St::Failed);
    assert!(refused.failure_reason.starts_with("PARTNER_NOT_ACCEPTING"), "{}", refused.failure_reason);
}

async fn a_change_that_keeps_failing_after_the_move_is_reported_stuck_and_still_completes(backend: Backend) {
    let app = TestApp::spawn_with(backend, |settings| settings.partner_change().worker.enabled = false).await;
    let worker = app.migration_worker().replica("replica");
    let s = scenario(&app, false).await;
    let submitted = s.submit(&app, "req").await;
    s.approve(&app, &submitted.partner_change_id).await;
    let failures = usize::try_from(STUCK_AFTER_ATTEMPTS).unwrap();
    worker.faults().fail_permission_calls(std::iter::repeat_n(Code::Unavailable, failures));
    let db = sea_orm::Database::connect(app.database_url()).await.unwrap();

    eventually("the migration to be reported stuck", Duration::from_secs(20), || async {
        worker.run_once().await.unwrap();
        let stuck = partnerhub_partner_change::store::count_stuck(&db, STUCK_AFTER_ATTEMPTS).await.unwrap();
        (stuck == 1).then_some(())
    })
    .await;
    assert_eq!(get_change(&app, &submitted.partner_change_id).await.state(), St::Migrating, "still retrying");
    // Each retry records the step reached, so a resuming worker starts at the permissions.
    let stored = partnerhub_partner_change::store::get(&db, &submitted.partner_change_id).await.unwrap();
    assert_eq!(stored.map(|change| change.saga_step), Some(SagaStep::Permissions));

    let done = drive_to_the_end(&app, "replica", &submitted.partner_change_id).await;
    assert_eq!(done.state(), St::Completed);
    assert_eq!(partnerhub_partner_change::store::count_stuck(&db, STUCK_AFTER_ATTEMPTS).await.unwrap(), 0);
    assert_eq!(history_types(&app, &submitted.partner_change_id).await, COMPLETED_ONCE);
}

async fn numbers_named_for_the_grant_that_left_the_waba_are_skipped_and_reported(backend: Backend) {
    let app = TestApp::spawn_with(backend, |settings| settings.partner_change().worker.enabled = false).await;
    let s = scenario(&app, false).await;
    let (kept, gone) = (s.waba.phone_numbers[0].clone(), s.waba.phone_numbers[1].clone());
    let mut request = s.submit_request("req");
    request.grant_phone_numbers = vec![kept.clone(), gone.clone()];
    let submitted = app
        .partner_change(&s.client_subject())
        .submit_partner_change(request)
        .await
        .unwrap()
        .into_inner()
        .partner_change
        .unwrap();
    s.approve(&app, &submitted.partner_change_id).await;
    // The number leaves the WABA while the change waits (no RPC removes one yet).
    let db = sea_orm::Database::connect(app.database_url()).await.unwrap();
    db.execute_unprepared(&format!("DELETE FROM phone_numbers WHERE phone_number = '{gone}'")).await.unwrap();

    let done = drive_to_the_end(&app, "replica", &submitted.partner_change_id).await;
    assert_eq!(done.state(), St::Completed, "{}", done.failure_reason);
    assert_eq!(done.skipped_grant_phone_numbers, std::slice::from_ref(&gone));
    assert!(allowed(&app, &s.destination.partner_id, &kept).await);
    assert!(!allowed(&app, &s.destination.partner_id, &gone).await);
    let last = history(&app, &submitted.partner_change_id).await.pop().unwrap();
    assert_eq!(last.event_type(), Ev::Completed);
    assert!(last.reason.contains(&gone), "{}", last.reason);
}

/// With the default worker settings (1 s poll, 5 s lease), a migration whose
/// worker died mid-saga completes on another replica within ten seconds.
async fn a_dead_workers_migration_completes_on_a_surviving_replica_within_ten_seconds(backend: Backend) {
    let app = TestApp::spawn_with(backend, |settings| {
        settings.partner_change().worker = WorkerSettings { enabled: false, ..WorkerSettings::default() };
    })
    .await;
    let s = scenario(&app, false).await;
    let submitted = s.submit(&app, "req").await;
    s.approve(&app, &submitted.partner_change_id).await;

    let dying = app.migration_worker().replica("dying");
    dying.faults().crash_after(SagaStep::Transfer);
    dying.run_once().await.unwrap();
    let died = Instant::now();
    let survivor =
        app.spawn_replica_with(|settings| settings.partner_change().worker = WorkerSettings::default()).await;
    eventually(
        "the survivor to complete the migration",
        Duration::from_secs(10).saturating_sub(died.elapsed()),
        || async { (get_change(&survivor, &submitted.partner_change_id).await.state() == St::Completed).then_some(()) },
    )
    .await;
    assert_eq!(history_types(&app, &submitted.partner_change_id).await, COMPLETED_ONCE);
}
