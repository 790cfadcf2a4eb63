//! A partner change from submit to its end: the manual and the auto-approving
//! path, reject, cancel, expiry, and idempotent submit.

use std::time::Duration;

use partnerhub_proto::partnerchange::v1 as pc;
use partnerhub_tests::{Backend, ServiceSections, TestApp, assert_refused, on_both_databases};
use pc::{PartnerChangeEventType as Ev, PartnerChangeState as St};
use tonic::Code;

use crate::fixtures::{self, allowed, get_change, history, history_types, scenario, wait_for_state};

on_both_databases!(
    a_manual_partner_change_goes_from_submit_to_completed,
    an_auto_approving_destination_gets_the_named_numbers_at_once,
    rejected_cancelled_and_expired_requests_end_there,
    submit_is_idempotent_per_request_id,
);

async fn a_manual_partner_change_goes_from_submit_to_completed(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let s = scenario(&app, false).await;
    // The old partner could manage both numbers before the move.
    s.grant(&app, &s.source.partner_id, &s.waba.phone_numbers).await;
    assert!(allowed(&app, &s.source.partner_id, &s.waba.phone_numbers[0]).await);

    let mut as_client = app.partner_change(&s.client_subject());
    let preview = as_client
        .preview_partner_change(pc::PreviewPartnerChangeRequest {
            waba_id: s.waba.waba_id.clone(),
            destination_partner_id: s.destination.partner_id.clone(),
            migrate_after: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(preview.phone_numbers, s.waba.phone_numbers, "every number moves");
    assert_eq!(preview.destination_terms_version, fixtures::TERMS);
    assert!(!preview.destination_auto_approves);
    assert!(preview.blockers.is_empty(), "{:?}", preview.blockers);
    assert_eq!(preview.source_partner_id, s.source.partner_id);

    let submitted = s.submit(&app, "req-1").await;
    assert_eq!(submitted.state(), St::PendingApproval);
    assert_eq!(submitted.phone_numbers, s.waba.phone_numbers);
    assert_eq!(
        (submitted.client_id.as_str(), submitted.source_partner_id.as_str()),
        (s.client.client_id.as_str(), s.source.partner_id.as_str())
    );
    let ttl = submitted.expire_time.unwrap().seconds - submitted.create_time.unwrap().seconds;
    assert_eq!(ttl, 14 * 24 * 3600, "pending requests expire after 14 days by default");

    // The destination partner finds it among its incoming requests, and approves.
    let incoming = app
        .partner_change(&s.destination_subject())
        .list_partner_changes(pc::ListPartnerChangesRequest {
            direction: pc::Direction::Incoming.into(),
            states: vec![St::PendingApproval.into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(incoming.partner_changes, std::slice::from_ref(&submitted));
    let approved = s.approve(&app, &submitted.partner_change_id).await;
    assert_eq!(approved.state(), St::Approved);

    let completed = wait_for_state(&app, &submitted.partner_change_id, St::Completed).await;
    assert!(completed.failure_reason.is_empty());
    assert_eq!(s.waba_now(&app).await.partner_id, s.destination.partner_id, "the WABA moved");

    // The old partner lost every permission; the new one has none until granted.
    for number in &s.waba.phone_numbers {
        assert!(!allowed(&app, &s.source.partner_id, number).await, "old partner keeps {number}");
        assert!(!allowed(&app, &s.destination.partner_id, number).await, "new partner has {number} ungranted");
    }
    s.grant(&app, &s.destination.partner_id, &s.waba.phone_numbers[..1]).await;
    assert!(allowed(&app, &s.destination.partner_id, &s.waba.phone_numbers[0]).await);
    assert!(!allowed(&app, &s.destination.partner_id, &s.waba.phone_numbers[1]).await);

    // The history says who did what, one entry per transition.
    let entries = history(&app, &submitted.partner_change_id).await;
    let steps: Vec<(Ev, St, &str)> =
        entries.iter().map(|entry| (entry.event_type(), entry.state(), entry.actor.as_str())).collect();
    let (client, destination) = (s.client_subject(), s.destination_subject());
    assert_eq!(
        steps,
        [
            (Ev::Submitted, St::PendingApproval, client.as_str()),
            (Ev::Approved, St::Approved, destination.as_str()),
            (Ev::MigrationStarted, St::Migrating, "service:partner-change"),
            (Ev::Completed, St::Completed, "service:partner-change"),
        ]
    );
    assert!(
        entries
            .windows(2)
            .all(|pair| pair[0].time.map(|t| (t.seconds, t.nanos)) <= pair[1].time.map(|t| (t.seconds, t.nanos)))
    );
}

async fn an_auto_approving_destination_gets_the_named_numbers_at_once(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let s = scenario(&app, true).await;
    let granted = s.waba.phone_numbers[1].clone();
    let submitted = app
        .partner_change(&s.client_subject())
        .submit_partner_change(pc::SubmitPartnerChangeRequest {
            grant_phone_numbers: vec![granted.clone()],
            migrate_after: None,
            ..s.submit_request("req-auto")
        })
        .await
        .unwrap()
        .into_inner()
        .partner_change
        .unwrap();
    assert_eq!(submitted.state(), St::Approved, "straight to APPROVED");
    assert_eq!(submitted.grant_phone_numbers, std::slice::from_ref(&granted));

    wait_for_state(&app, &submitted.partner_change_id, St::Completed).await;
    assert!(allowed(&app, &s.destination.partner_id, &granted).await, "granted in the same completion");
    assert!(!allowed(&app, &s.destination.partner_id, &s.waba.phone_numbers[0]).await, "only what was named");
    assert_eq!(
        history_types(&app, &submitted.partner_change_id).await,
        [Ev::Submitted, Ev::Approved, Ev::MigrationStarted, Ev::Completed]
    );
    let approval = &history(&app, &submitted.partner_change_id).await[1];
    assert_eq!(approval.actor, s.destination_subject());
}

async fn rejected_cancelled_and_expired_requests_end_there(backend: Backend) {
    // Long enough that the requests meant to be rejected and cancelled cannot
    // expire first, even on a loaded machine; short enough to watch one expire.
    let app = TestApp::spawn_with(backend, |settings| {
        settings.partner_change().request_ttl = Duration::from_secs(2);
        settings.partner_change().expiry_sweep_interval = Duration::from_millis(50);
    })
    .await;
    let s = scenario(&app, false).await;
    let mut as_destination = app.partner_change(&s.destination_subject());

    // Reject: the reason is required and is kept.
    let first = s.submit(&app, "req-reject").await;
    let no_reason = as_destination
        .reject_partner_change(pc::RejectPartnerChangeRequest {
            partner_change_id: first.partner_change_id.clone(),
            reason: String::new(),
        })
        .await;
    assert_refused(no_reason, Code::InvalidArgument, "INVALID_REQUEST");
    let rejected = as_destination
        .reject_partner_change(pc::RejectPartnerChangeRequest {
            partner_change_id: first.partner_change_id.clone(),
            reason: "we do not serve bakeries".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .partner_change
        .unwrap();
    assert_eq!(rejected.state(), St::Rejected);
    assert_eq!(history(&app, &first.partner_change_id).await[1].reason, "we do not serve bakeries");
    let late = as_destination
        .approve_partner_change(pc::ApprovePartnerChangeRequest { partner_change_id: first.partner_change_id.clone() })
        .await;
    assert_refused(late, Code::FailedPrecondition, "INVALID_STATE");

    // Cancel, by the client, with a reason; the WABA is free for a new request.
    let second = s.submit(&app, "req-cancel").await;
    let cancelled = s.cancel(&app, &second.partner_change_id, "changed our mind").await;
    assert_eq!(cancelled.state(), St::Cancelled);
    let entry = &history(&app, &second.partner_change_id).await[1];
    assert_eq!((entry.actor.as_str(), entry.reason.as_str()), (s.client_subject().as_str(), "changed our mind"));

    // Expiry: nobody decides within the TTL.
    let third = s.submit(&app, "req-expire").await;
    let expired = wait_for_state(&app, &third.partner_change_id, St::Expired).await;
    assert_eq!(history_types(&app, &expired.partner_change_id).await, [Ev::Submitted, Ev::Expired]);
    let after_expiry = as_destination
        .approve_partner_change(pc::ApprovePartnerChangeRequest { partner_change_id: third.partner_change_id.clone() })
        .await;
    assert_refused(after_expiry, Code::FailedPrecondition, "INVALID_STATE");
    assert_eq!(s.waba_now(&app).await.partner_id, s.source.partner_id, "nothing moved");
    assert_eq!(get_change(&app, &first.partner_change_id).await.state(), St::Rejected, "terminal states stay");
}

async fn submit_is_idempotent_per_request_id(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let s = scenario(&app, false).await;
    let first = s.submit(&app, "req-same").await;
    let again = s.submit(&app, "req-same").await;
    assert_eq!(again, first, "the same key returns the same request");

    let other_payload = app
        .partner_change(&s.client_subject())
        .submit_partner_change(pc::SubmitPartnerChangeRequest {
            grant_phone_numbers: vec![s.waba.phone_numbers[0].clone()],
            migrate_after: None,
            ..s.submit_request("req-same")
        })
        .await;
    assert_refused(other_payload, Code::FailedPrecondition, "IDEMPOTENCY_KEY_REUSED");

    // Concurrent repeats of one key (for a second WABA) store one request.
    let second_waba =
        fixtures::waba(&app, &s.client.client_id, &s.source.partner_id, &[&fixtures::unique_number()]).await;
    let request =
        pc::SubmitPartnerChangeRequest { waba_id: second_waba.waba_id.clone(), ..s.submit_request("req-concurrent") };
    let attempts: Vec<_> = (0..6)
        .map(|_| {
            let (mut client, request) = (app.partner_change(&s.client_subject()), request.clone());
            tokio::spawn(async move { client.submit_partner_change(request).await })
        })
        .collect();
    let mut ids = Vec::new();
    for attempt in attempts {
        ids.push(attempt.await.unwrap().unwrap().into_inner().partner_change.unwrap().partner_change_id);
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "every repeat got the one request: {ids:?}");
    let listed = s.client_changes(&app).await;
    let for_second: Vec<_> = listed.iter().filter(|change| change.waba_id == second_waba.waba_id).collect();
    assert_eq!(for_second.len(), 1);
    assert_eq!(for_second[0].partner_change_id, ids[0]);
    assert_eq!(history_types(&app, &ids[0]).await, [Ev::Submitted], "one event for one submission");
}
