//! Scheduled cut-over: a client submits with `migrate_after`; approval may come
//! at once, the migration waits for that time (by the database's clock); the
//! client or support may reschedule or cancel until the migration starts, and
//! every change of schedule is an event.

use std::time::Duration;

use partnerhub_partner_change::worker::Step;
use partnerhub_proto::partnerchange::v1 as pc;
use partnerhub_tests::{
    Backend, ServiceSections, TestApp, assert_refused, eventually, on_both_databases, reason, violated_fields,
};
use pc::{PartnerChangeEventType as Ev, PartnerChangeState as St, watch_partner_change_events_response::Kind};
use prost_types::Timestamp;
use tonic::Code;

use crate::fixtures::{Scenario, get_change, history, history_types, scenario};

on_both_databases!(
    a_scheduled_change_waits_for_its_time_and_then_completes,
    a_change_can_be_rescheduled_later_and_earlier_with_an_event_each_time,
    of_a_reschedule_racing_the_claim_exactly_one_applies,
    an_approved_scheduled_change_can_be_cancelled_and_both_partners_see_it,
    bad_schedules_are_refused_and_previewed_as_blockers,
    only_the_owner_client_and_support_may_reschedule,
    partners_list_what_is_scheduled_to_move_before_a_time,
    permissions_stay_manageable_until_a_scheduled_move_is_due,
);

/// Now plus `seconds` (whole seconds, so it survives the database unchanged).
fn in_seconds(seconds: i64) -> Timestamp {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    Timestamp { seconds: i64::try_from(now).unwrap() + seconds, nanos: 0 }
}

fn in_days(days: i64) -> Timestamp {
    in_seconds(days * 24 * 60 * 60)
}

/// Submits as the client with `migrate_after`.
async fn submit_scheduled(app: &TestApp, s: &Scenario, request_id: &str, at: Timestamp) -> pc::PartnerChange {
    let mut request = s.submit_request(request_id);
    request.migrate_after = Some(at);
    app.partner_change(&s.client_subject())
        .submit_partner_change(request)
        .await
        .unwrap()
        .into_inner()
        .partner_change
        .unwrap()
}

async fn reschedule(
    app: &TestApp,
    subject: &str,
    partner_change_id: &str,
    at: Option<Timestamp>,
) -> Result<pc::PartnerChange, tonic::Status> {
    app.partner_change(subject)
        .reschedule_partner_change(pc::ReschedulePartnerChangeRequest {
            partner_change_id: partner_change_id.to_owned(),
            migrate_after: at,
        })
        .await
        .map(|response| response.into_inner().partner_change.unwrap())
}

async fn a_scheduled_change_waits_for_its_time_and_then_completes(backend: Backend) {
    // The real worker runs, looking for work every 50 ms.
    let app = TestApp::spawn(backend).await;
    let s = scenario(&app, true).await;
    let at = in_seconds(2);
    let submitted = submit_scheduled(&app, &s, "req", at).await;
    assert_eq!(submitted.state(), St::Approved, "the destination approves at once");
    assert_eq!(submitted.migrate_after, Some(at));

    let waiting = get_change(&app, &submitted.partner_change_id).await;
    assert_eq!(waiting.state(), St::Approved, "the migration waits for its time");
    assert_eq!(s.waba_now(&app).await.partner_id, s.source.partner_id);

    eventually("the scheduled migration to complete", Duration::from_secs(10), || async {
        (get_change(&app, &submitted.partner_change_id).await.state() == St::Completed).then_some(())
    })
    .await;
    let entries = history(&app, &submitted.partner_change_id).await;
    let started = entries.iter().find(|entry| entry.event_type() == Ev::MigrationStarted).unwrap();
    let started = started.time.unwrap();
    assert!(
        (started.seconds, started.nanos) >= (at.seconds, at.nanos),
        "the migration started at {started:?}, before its time {at:?}"
    );
    assert_eq!(s.waba_now(&app).await.partner_id, s.destination.partner_id);
}

async fn a_change_can_be_rescheduled_later_and_earlier_with_an_event_each_time(backend: Backend) {
    let app = TestApp::spawn_with(backend, |settings| settings.partner_change().worker.enabled = false).await;
    let worker = app.migration_worker().replica("worker");
    let s = scenario(&app, false).await;
    let submitted = submit_scheduled(&app, &s, "req", in_seconds(3600)).await;
    let id = submitted.partner_change_id.clone();
    assert_eq!(submitted.state(), St::PendingApproval);

    // While pending, then once approved: later, then "as soon as approved".
    let later = in_seconds(7200);
    assert_eq!(reschedule(&app, &s.client_subject(), &id, Some(later)).await.unwrap().migrate_after, Some(later));
    s.approve(&app, &id).await;
    assert_eq!(worker.run_once().await.unwrap(), Step::Idle, "not due for two hours");
    let cleared = reschedule(&app, "support:s", &id, None).await.unwrap();
    assert_eq!((cleared.state(), cleared.migrate_after), (St::Approved, None));
    assert_eq!(worker.run_once().await.unwrap(), Step::Worked, "due at once");
    assert_eq!(get_change(&app, &id).await.state(), St::Completed);

    let entries = history(&app, &id).await;
    let types: Vec<Ev> = entries.iter().map(pc::HistoryEntry::event_type).collect();
    assert_eq!(
        types,
        [Ev::Submitted, Ev::Rescheduled, Ev::Approved, Ev::Rescheduled, Ev::MigrationStarted, Ev::Completed]
    );
    assert!(entries[1].reason.contains("was: 20"), "the old time is recorded: {}", entries[1].reason);
    assert!(entries[3].reason.starts_with("migrate after: as soon as approved"), "{}", entries[3].reason);
    assert_eq!(entries[3].actor, "support:s");

    // Once the migration has started (here: completed), the schedule is fixed.
    assert_refused(reschedule(&app, &s.client_subject(), &id, None).await, Code::FailedPrecondition, "INVALID_STATE");
}

async fn of_a_reschedule_racing_the_claim_exactly_one_applies(backend: Backend) {
    let app = TestApp::spawn_with(backend, |settings| settings.partner_change().worker.enabled = false).await;
    for round in 0..12u64 {
        let s = scenario(&app, true).await;
        // Due now: the worker may claim it while the client moves it an hour on.
        let submitted = submit_scheduled(&app, &s, "req", in_seconds(-1)).await;
        let id = submitted.partner_change_id.clone();
        let worker = app.migration_worker().replica(&format!("worker-{round}"));
        // Staggered starts (a few turns of the scheduler, not a clock), so
        // that either side may win in some rounds.
        let claim = tokio::spawn(async move {
            for _ in 0..round % 6 {
                tokio::task::yield_now().await;
            }
            worker.run_once().await.unwrap()
        });
        let moved = reschedule(&app, &s.client_subject(), &id, Some(in_seconds(3600))).await;
        let claimed = claim.await.unwrap();

        let types = history_types(&app, &id).await;
        match &moved {
            Ok(_) => {
                // The new time stands: the migration did not start.
                assert_eq!(claimed, Step::Idle, "round {round}");
                assert_eq!(get_change(&app, &id).await.state(), St::Approved, "round {round}");
                assert_eq!(types, [Ev::Submitted, Ev::Approved, Ev::Rescheduled], "round {round}");
            }
            Err(status) => {
                // The migration started under the old time; the reschedule was refused.
                assert!(
                    status.code() == Code::FailedPrecondition && reason(status) == "INVALID_STATE"
                        || status.code() == Code::Aborted,
                    "round {round}: {status:?}"
                );
                assert_eq!(claimed, Step::Worked, "round {round}");
                assert_eq!(get_change(&app, &id).await.state(), St::Completed, "round {round}");
                assert_eq!(types, [Ev::Submitted, Ev::Approved, Ev::MigrationStarted, Ev::Completed], "round {round}");
            }
        }
    }
}

async fn an_approved_scheduled_change_can_be_cancelled_and_both_partners_see_it(backend: Backend) {
    let app = TestApp::spawn_with(backend, |settings| settings.partner_change().worker.enabled = false).await;
    let s = scenario(&app, true).await;
    let mut source_stream = app
        .partner_change(&s.source_subject())
        .watch_partner_change_events(pc::WatchPartnerChangeEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let submitted = submit_scheduled(&app, &s, "req", in_seconds(3600)).await;
    assert_eq!(submitted.state(), St::Approved);
    let cancelled = s.cancel(&app, &submitted.partner_change_id, "we move next quarter").await;
    assert_eq!(cancelled.state(), St::Cancelled);
    assert_eq!(app.migration_worker().replica("worker").run_once().await.unwrap(), Step::Idle);
    assert_eq!(history_types(&app, &submitted.partner_change_id).await, [Ev::Submitted, Ev::Approved, Ev::Cancelled]);

    let mut seen = Vec::new();
    while seen.last() != Some(&Ev::Cancelled) {
        let message = tokio::time::timeout(Duration::from_secs(10), source_stream.message())
            .await
            .expect("the source partner sees the cancellation")
            .unwrap()
            .unwrap();
        if let Some(Kind::Event(event)) = message.kind {
            seen.push(event.r#type());
        }
    }
    assert_eq!(seen, [Ev::Submitted, Ev::Approved, Ev::Cancelled]);

    // A new request for the WABA may be opened again.
    let again = s.submit(&app, "req-again").await;
    assert_eq!(again.state(), St::Approved);
}

async fn bad_schedules_are_refused_and_previewed_as_blockers(backend: Backend) {
    let app = TestApp::spawn_with(backend, |settings| settings.partner_change().worker.enabled = false).await;
    let s = scenario(&app, false).await;
    let mut client = app.partner_change(&s.client_subject());

    // Too far ahead (default 90 days), or, awaiting approval, after the request would expire (14 days).
    for (at, what) in [(in_days(91), "days ahead"), (in_days(20), "expires")] {
        let mut request = s.submit_request("req-bad");
        request.migrate_after = Some(at);
        let refused = client.submit_partner_change(request).await.unwrap_err();
        assert_eq!((refused.code(), reason(&refused).as_str()), (Code::InvalidArgument, "INVALID_REQUEST"));
        assert_eq!(violated_fields(&refused), ["migrate_after"]);
        assert!(refused.message().contains(what), "{}", refused.message());

        let preview = client
            .preview_partner_change(pc::PreviewPartnerChangeRequest {
                waba_id: s.waba.waba_id.clone(),
                destination_partner_id: s.destination.partner_id.clone(),
                migrate_after: Some(at),
            })
            .await
            .unwrap()
            .into_inner();
        let reasons: Vec<pc::BlockerReason> = preview.blockers.iter().map(pc::Blocker::reason).collect();
        assert_eq!(reasons, [pc::BlockerReason::ScheduleOutOfRange], "{what}");
    }
    let unreadable = Timestamp { seconds: 0, nanos: -1 };
    let mut request = s.submit_request("req-bad");
    request.migrate_after = Some(unreadable);
    let refused = client.submit_partner_change(request).await.unwrap_err();
    assert_eq!(violated_fields(&refused), ["migrate_after"]);
    assert!(s.client_changes(&app).await.is_empty(), "nothing was stored");

    // Twenty days is fine once the destination approves automatically…
    let auto = Scenario {
        destination: crate::fixtures::partner_with(
            &app,
            "Auto BSP",
            partnerhub_proto::account::v1::PaymentProcessor::Stripe,
            crate::fixtures::settings(true),
        )
        .await,
        ..s.clone()
    };
    let scheduled = submit_scheduled(&app, &auto, "req-auto", in_days(20)).await;
    assert_eq!(scheduled.state(), St::Approved);
    // …and a reschedule is checked the same way.
    let refused = reschedule(&app, &s.client_subject(), &scheduled.partner_change_id, Some(in_days(91))).await;
    let refused = refused.unwrap_err();
    assert_eq!((refused.code(), violated_fields(&refused)), (Code::InvalidArgument, vec!["migrate_after".to_owned()]));
    assert_eq!(history_types(&app, &scheduled.partner_change_id).await, [Ev::Submitted, Ev::Approved]);
}

async fn only_the_owner_client_and_support_may_reschedule(backend: Backend) {
    let app = TestApp::spawn_with(backend, |settings| settings.partner_change().worker.enabled = false).await;
    let s = scenario(&app, false).await;
    let submitted = submit_scheduled(&app, &s, "req", in_seconds(3600)).await;
    let id = submitted.partner_change_id.clone();
    let at = Some(in_seconds(7200));
    assert!(reschedule(&app, &s.client_subject(), &id, at).await.is_ok());
    assert!(reschedule(&app, "support:alice", &id, at).await.is_ok());
    // Partners and services may never reschedule, whoever's request it is.
    for subject in [
        s.source_subject(),
        s.destination_subject(),
        "partner:partner-someone-else".to_owned(),
        "service:messaging".to_owned(),
    ] {
        assert_refused(reschedule(&app, &subject, &id, at).await, Code::PermissionDenied, "SUBJECT_NOT_ALLOWED");
    }
    // Another client finds no such request.
    assert_refused(
        reschedule(&app, "client:client-someone-else", &id, at).await,
        Code::NotFound,
        "PARTNER_CHANGE_NOT_FOUND",
    );
    assert_refused(
        reschedule(&app, "support:alice", "pc-missing", at).await,
        Code::NotFound,
        "PARTNER_CHANGE_NOT_FOUND",
    );
    assert_eq!(history_types(&app, &id).await, [Ev::Submitted, Ev::Rescheduled, Ev::Rescheduled]);
}

async fn partners_list_what_is_scheduled_to_move_before_a_time(backend: Backend) {
    let app = TestApp::spawn_with(backend, |settings| settings.partner_change().worker.enabled = false).await;
    let tonight = scenario(&app, true).await;
    let next_week = tonight.another_waba(&app, 1).await;
    let unscheduled = tonight.another_waba(&app, 1).await;
    let soon = submit_scheduled(&app, &tonight, "tonight", in_seconds(6 * 3600)).await;
    submit_scheduled(&app, &next_week, "next-week", in_days(7)).await;
    unscheduled.submit(&app, "whenever").await;

    let listed = app
        .partner_change(&tonight.destination_subject())
        .list_partner_changes(pc::ListPartnerChangesRequest {
            direction: pc::Direction::Incoming.into(),
            scheduled_before: Some(in_days(1)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .partner_changes;
    let ids: Vec<&str> = listed.iter().map(|change| change.partner_change_id.as_str()).collect();
    assert_eq!(ids, [soon.partner_change_id.as_str()]);
}

async fn permissions_stay_manageable_until_a_scheduled_move_is_due(backend: Backend) {
    let app = TestApp::spawn_with(backend, |settings| settings.partner_change().worker.enabled = false).await;
    let s = scenario(&app, true).await;
    let submitted = submit_scheduled(&app, &s, "req", in_seconds(3600)).await;
    assert_eq!(submitted.state(), St::Approved);
    // Approved, but not due for an hour: the client may still change who manages its numbers.
    s.grant(&app, &s.source.partner_id, &s.waba.phone_numbers).await;

    // Once it is due, the numbers are about to move: refused.
    reschedule(&app, &s.client_subject(), &submitted.partner_change_id, None).await.unwrap();
    let refused = app
        .permissions(&s.client_subject())
        .set_partner_permissions(partnerhub_proto::permissions::v1::SetPartnerPermissionsRequest {
            client_id: s.client.client_id.clone(),
            partner_id: s.source.partner_id.clone(),
            phone_numbers: s.waba.phone_numbers[..1].to_vec(),
        })
        .await;
    assert_refused(refused, Code::FailedPrecondition, "MIGRATION_IN_PROGRESS");
}
