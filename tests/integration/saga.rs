//! The migration saga under failure: a worker that dies after moving the WABA
//! is resumed by another once its lease lapses, with no step's effect done
//! twice; transient errors are retried; a permanent one ends in FAILED, and
//! support's retry finishes the job.

use std::time::Duration;

use partnerhub_partner_change::{domain::SagaStep, worker::Step};
use partnerhub_proto::partnerchange::v1 as pc;
use partnerhub_tests::{Backend, TestApp, eventually, on_both_databases};
use pc::{PartnerChangeEventType as Ev, PartnerChangeState as St};
use tonic::Code;

use crate::fixtures::{Scenario, allowed, get_change, history_types, scenario};

on_both_databases!(
    a_saga_that_dies_after_the_transfer_is_resumed_by_another_worker,
    transient_permission_failures_are_retried_and_permanent_ones_fail,
);

async fn a_saga_that_dies_after_the_transfer_is_resumed_by_another_worker(backend: Backend) {
    let app = TestApp::spawn_with(backend, |settings| {
        settings.partner_change.worker.enabled = false;
        settings.partner_change.worker.lease = Duration::from_millis(300);
    })
    .await;
    let s = scenario(&app, false).await;
    s.grant(&app, &s.source.partner_id, &s.waba.phone_numbers).await;
    let submitted = s.submit(&app, "req").await;
    s.approve(&app, &submitted.partner_change_id).await;

    let first = app.migration_worker().replica("replica-a");
    first.faults().crash_after(SagaStep::Transfer);
    assert_eq!(first.run_once().await.unwrap(), Step::Worked);
    let halfway = get_change(&app, &submitted.partner_change_id).await;
    assert_eq!(halfway.state(), St::Migrating, "the first worker died mid-saga");
    let moved = s.waba_now(&app).await;
    assert_eq!(moved.partner_id, s.destination.partner_id, "the WABA moved before the crash");
    assert!(allowed(&app, &s.source.partner_id, &s.waba.phone_numbers[0]).await, "the revoke had not run");

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
    assert_eq!(
        history_types(&app, &submitted.partner_change_id).await,
        [Ev::Submitted, Ev::Approved, Ev::MigrationStarted, Ev::Completed],
        "a resume is not a new transition"
    );
}

async fn transient_permission_failures_are_retried_and_permanent_ones_fail(backend: Backend) {
    let app = TestApp::spawn_with(backend, |settings| settings.partner_change.worker.enabled = false).await;
    let worker = app.migration_worker().replica("replica");
    let s = scenario(&app, false).await;
    s.grant(&app, &s.source.partner_id, &s.waba.phone_numbers).await;

    // Two transient failures: each gives the request back with a retry time.
    let first = s.submit(&app, "req-transient").await;
    s.approve(&app, &first.partner_change_id).await;
    worker.faults().fail_permission_calls([Code::Unavailable, Code::DeadlineExceeded]);
    worker.run_once().await.unwrap();
    assert_eq!(get_change(&app, &first.partner_change_id).await.state(), St::Migrating, "waiting to retry");
    eventually("the transient failures to be retried away", Duration::from_secs(10), || async {
        worker.run_once().await.unwrap();
        (get_change(&app, &first.partner_change_id).await.state() == St::Completed).then_some(())
    })
    .await;
    assert!(!allowed(&app, &s.source.partner_id, &s.waba.phone_numbers[0]).await);

    // A permanent failure ends in FAILED with the reason; support retries once it is fixed.
    let back = Scenario { source: s.destination.clone(), destination: s.source.clone(), ..s.clone() };
    let second = back.submit(&app, "req-permanent").await;
    back.approve(&app, &second.partner_change_id).await;
    worker.faults().fail_permission_calls([Code::PermissionDenied]);
    worker.run_once().await.unwrap();
    let failed = get_change(&app, &second.partner_change_id).await;
    assert_eq!(failed.state(), St::Failed);
    assert!(failed.failure_reason.contains("PermissionDenied"), "{}", failed.failure_reason);
    assert_eq!(back.waba_now(&app).await.partner_id, s.source.partner_id, "the transfer itself had succeeded");

    app.partner_change("support:s")
        .retry_partner_change(pc::RetryPartnerChangeRequest { partner_change_id: second.partner_change_id.clone() })
        .await
        .unwrap();
    worker.run_once().await.unwrap();
    assert_eq!(get_change(&app, &second.partner_change_id).await.state(), St::Completed);
    assert_eq!(
        history_types(&app, &second.partner_change_id).await,
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
}
