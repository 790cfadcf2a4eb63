//! Races with real concurrency: of concurrent decisions on one request, or
//! submits for one WABA, exactly one wins; the rest get a clear
//! FAILED_PRECONDITION or ABORTED; the log has exactly one event per transition.

use partnerhub_proto::partnerchange::v1 as pc;
use partnerhub_tests::{Backend, ServiceSections, TestApp, on_both_databases, reason};
use pc::{PartnerChangeEventType as Ev, PartnerChangeState as St};
use tonic::{Code, Status};

use crate::fixtures::{get_change, history_types, scenario};

on_both_databases!(
    of_concurrent_approvals_exactly_one_applies,
    approve_racing_cancel_or_reject_applies_exactly_one,
    of_concurrent_submits_for_one_waba_exactly_one_wins,
);

/// Every loser must say clearly why: the request is no longer pending, or it changed under it.
#[track_caller]
fn assert_clear_loss(status: &Status) {
    match status.code() {
        Code::FailedPrecondition => assert_eq!(reason(status), "INVALID_STATE", "{status:?}"),
        Code::Aborted => {}
        _ => panic!("a losing call must be FAILED_PRECONDITION or ABORTED: {status:?}"),
    }
}

async fn join<T: Send + 'static>(handles: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut results = Vec::with_capacity(handles.len());
    for handle in handles {
        results.push(handle.await.unwrap());
    }
    results
}

async fn of_concurrent_approvals_exactly_one_applies(backend: Backend) {
    let app = TestApp::spawn_with(backend, |settings| settings.partner_change().worker.enabled = false).await;
    let s = scenario(&app, false).await;
    let submitted = s.submit(&app, "req").await;
    let handles = (0..8)
        .map(|_| {
            let mut partner = app.partner_change(&s.destination_subject());
            let request = pc::ApprovePartnerChangeRequest { partner_change_id: submitted.partner_change_id.clone() };
            tokio::spawn(async move { partner.approve_partner_change(request).await })
        })
        .collect();
    let results = join(handles).await;
    assert_eq!(results.iter().filter(|result| result.is_ok()).count(), 1, "{results:?}");
    results.iter().filter_map(|result| result.as_ref().err()).for_each(assert_clear_loss);
    assert_eq!(get_change(&app, &submitted.partner_change_id).await.state(), St::Approved);
    assert_eq!(history_types(&app, &submitted.partner_change_id).await, [Ev::Submitted, Ev::Approved]);
}

async fn approve_racing_cancel_or_reject_applies_exactly_one(backend: Backend) {
    let app = TestApp::spawn_with(backend, |settings| settings.partner_change().worker.enabled = false).await;
    let s = scenario(&app, false).await;
    for (round, rival) in [Ev::Cancelled, Ev::Rejected, Ev::Cancelled, Ev::Rejected].into_iter().enumerate() {
        let submitted = s.submit(&app, &format!("req-{round}")).await;
        let id = submitted.partner_change_id.clone();
        let mut approver = app.partner_change(&s.destination_subject());
        let approve = tokio::spawn({
            let id = id.clone();
            async move {
                approver
                    .approve_partner_change(pc::ApprovePartnerChangeRequest { partner_change_id: id })
                    .await
                    .map(drop)
            }
        });
        let rival_call = match rival {
            Ev::Cancelled => {
                let mut client = app.partner_change(&s.client_subject());
                let request = pc::CancelPartnerChangeRequest { partner_change_id: id.clone(), reason: String::new() };
                tokio::spawn(async move { client.cancel_partner_change(request).await.map(drop) })
            }
            _ => {
                let mut partner = app.partner_change(&s.destination_subject());
                let request = pc::RejectPartnerChangeRequest { partner_change_id: id.clone(), reason: "no".into() };
                tokio::spawn(async move { partner.reject_partner_change(request).await.map(drop) })
            }
        };
        let (approved, rivalled) = (approve.await.unwrap(), rival_call.await.unwrap());
        if approved.is_ok() && rivalled.is_ok() {
            // An approved request may still be cancelled until its migration
            // starts (the worker is off): the cancel came second, and both
            // apply in that order, never the other way round.
            assert_eq!(rival, Ev::Cancelled, "a rejection cannot follow an approval");
            assert_eq!(get_change(&app, &id).await.state(), St::Cancelled);
            assert_eq!(history_types(&app, &id).await, [Ev::Submitted, Ev::Approved, Ev::Cancelled]);
            continue;
        }
        assert!(approved.is_ok() != rivalled.is_ok(), "exactly one applies: {approved:?} / {rivalled:?}");
        [&approved, &rivalled].into_iter().filter_map(|result| result.as_ref().err()).for_each(assert_clear_loss);
        let (winner_event, winner_state) = if approved.is_ok() {
            (Ev::Approved, St::Approved)
        } else if rival == Ev::Cancelled {
            (Ev::Cancelled, St::Cancelled)
        } else {
            (Ev::Rejected, St::Rejected)
        };
        assert_eq!(get_change(&app, &id).await.state(), winner_state);
        assert_eq!(history_types(&app, &id).await, [Ev::Submitted, winner_event]);
        if approved.is_ok() {
            // Complete it, then move the WABA back so the next round starts alike.
            app.migration_worker().run_once().await.unwrap();
            assert_eq!(get_change(&app, &id).await.state(), St::Completed);
            move_back(&app, &s).await;
        }
    }
}

/// Submits and completes a change of the scenario's WABA back to its source partner.
async fn move_back(app: &TestApp, s: &crate::fixtures::Scenario) {
    let back = crate::fixtures::Scenario { source: s.destination.clone(), destination: s.source.clone(), ..s.clone() };
    let submitted = back.submit(app, &format!("back-{}", uuid::Uuid::new_v4().simple())).await;
    back.approve(app, &submitted.partner_change_id).await;
    app.migration_worker().run_once().await.unwrap();
    assert_eq!(get_change(app, &submitted.partner_change_id).await.state(), St::Completed);
}

async fn of_concurrent_submits_for_one_waba_exactly_one_wins(backend: Backend) {
    let app = TestApp::spawn_with(backend, |settings| settings.partner_change().worker.enabled = false).await;
    let s = scenario(&app, false).await;
    let handles = (0..8)
        .map(|i| {
            let mut client = app.partner_change(&s.client_subject());
            let request = s.submit_request(&format!("req-{i}"));
            tokio::spawn(async move { client.submit_partner_change(request).await })
        })
        .collect();
    let results = join(handles).await;
    let winners: Vec<_> = results.iter().filter_map(|result| result.as_ref().ok()).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    for loser in results.iter().filter_map(|result| result.as_ref().err()) {
        assert_eq!(
            (loser.code(), reason(loser).as_str()),
            (Code::FailedPrecondition, "CHANGE_ALREADY_PENDING"),
            "{loser:?}"
        );
    }
    let listed = s.client_changes(&app).await;
    assert_eq!(listed.len(), 1, "one request stored");
    assert_eq!(history_types(&app, &listed[0].partner_change_id).await, [Ev::Submitted]);
}
