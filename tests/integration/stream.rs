//! WatchPartnerChangeEvents: replay then live with no gap and no duplicate,
//! resuming from a cursor, scopes, heartbeats, slow subscribers, the
//! late-commit trap, delivery across replicas, and shutdown.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use partnerhub_proto::partnerchange::v1 as pc;
use partnerhub_runtime::pagination::TokenSeal;
use partnerhub_tests::{Backend, ServiceSections, TestApp, eventually, on_both_databases, reason};
use pc::{PartnerChangeEventType as Ev, watch_partner_change_events_response::Kind};
use sea_orm::{ConnectionTrait, Database, TransactionTrait};
use tonic::{Code, Status, Streaming};
use tonic_types::StatusExt;

use crate::fixtures::{self, Scenario, history_types, scenario};

on_both_databases!(
    replay_then_live_delivers_every_event_once_in_order_under_concurrent_writers,
    each_subscriber_gets_only_its_own_events_and_bad_cursors_are_refused,
    idle_streams_get_heartbeats_and_a_stalled_subscriber_is_ended_without_blocking_others,
    a_stalled_subscriber_is_held_to_its_byte_budget,
    a_late_commit_is_never_skipped,
    shutdown_ends_streams_with_a_cursor_to_resume_from,
);

/// What one subscriber has received so far, collected in the background.
#[derive(Clone, Default)]
struct Received {
    events: Arc<Mutex<Vec<pc::PartnerChangeEvent>>>,
    heartbeats: Arc<Mutex<usize>>,
    end: Arc<Mutex<Option<Result<(), Status>>>>,
}

impl Received {
    fn events(&self) -> Vec<pc::PartnerChangeEvent> {
        self.events.lock().unwrap().clone()
    }

    fn heartbeats(&self) -> usize {
        *self.heartbeats.lock().unwrap()
    }

    fn end(&self) -> Option<Result<(), Status>> {
        self.end.lock().unwrap().clone()
    }

    async fn wait_for_events(&self, count: usize) -> Vec<pc::PartnerChangeEvent> {
        eventually(&format!("{count} events"), Duration::from_secs(20), || async {
            let events = self.events();
            (events.len() >= count).then_some(events)
        })
        .await
    }

    /// Waits for a heartbeat after the replay: the stream has nothing more to send.
    async fn wait_until_idle(&self) -> Vec<pc::PartnerChangeEvent> {
        let before = self.heartbeats();
        eventually("the stream to go idle", Duration::from_secs(20), || async {
            (self.heartbeats() > before).then_some(())
        })
        .await;
        self.events()
    }
}

fn collect(mut stream: Streaming<pc::WatchPartnerChangeEventsResponse>) -> Received {
    let received = Received::default();
    let sink = received.clone();
    tokio::spawn(async move {
        loop {
            match stream.message().await {
                Ok(Some(message)) => match message.kind {
                    Some(Kind::Event(event)) => sink.events.lock().unwrap().push(event),
                    Some(Kind::Heartbeat(_)) => *sink.heartbeats.lock().unwrap() += 1,
                    None => {}
                },
                Ok(None) => {
                    *sink.end.lock().unwrap() = Some(Ok(()));
                    return;
                }
                Err(status) => {
                    *sink.end.lock().unwrap() = Some(Err(status));
                    return;
                }
            }
        }
    });
    received
}

fn watch_request(after_cursor: &str) -> pc::WatchPartnerChangeEventsRequest {
    pc::WatchPartnerChangeEventsRequest { after_cursor: after_cursor.to_owned(), ..Default::default() }
}

async fn watch(app: &TestApp, subject: &str, after_cursor: &str) -> Received {
    let stream = app.partner_change(subject).watch_partner_change_events(watch_request(after_cursor)).await.unwrap();
    collect(stream.into_inner())
}

/// (request, event type) of each event, in order: comparable across scopes.
fn steps(events: &[pc::PartnerChangeEvent]) -> Vec<(String, Ev)> {
    events
        .iter()
        .map(|event| (event.partner_change.as_ref().unwrap().partner_change_id.clone(), event.r#type()))
        .collect()
}

fn involves(event: &pc::PartnerChangeEvent, partner_id: &str) -> bool {
    let change = event.partner_change.as_ref().unwrap();
    change.source_partner_id == partner_id || change.destination_partner_id == partner_id
}

fn fast_heartbeats(settings: &mut partnerhub_runtime::config::Settings) {
    settings.partner_change().stream.heartbeat_interval = Duration::from_millis(300);
}

async fn replay_then_live_delivers_every_event_once_in_order_under_concurrent_writers(backend: Backend) {
    let app = TestApp::spawn_with(backend, fast_heartbeats).await;
    let base = scenario(&app, false).await;
    let auto = scenario(&app, true).await;
    let other_client = fixtures::eligible_client(&app, "Other Ltd").await;
    // Some history before anyone subscribes: it must be replayed.
    let early = base.submit(&app, "early").await;
    app.partner_change(&base.client_subject())
        .cancel_partner_change(pc::CancelPartnerChangeRequest {
            partner_change_id: early.partner_change_id.clone(),
            reason: String::new(),
        })
        .await
        .unwrap();

    let everything = watch(&app, "support:watch", "").await;
    let source_partner = watch(&app, &base.source_subject(), "").await;
    let client = watch(&app, &base.client_subject(), "").await;
    let reconnecting = watch(&app, "support:watch", "").await;

    // Writers, concurrently, each with a WABA of its own: two submit and cancel
    // three times (to a partner that approves by hand), two submit once to an
    // auto-approving partner and wait for the migration to complete.
    let mut writers = Vec::new();
    for writer in 0..4 {
        let owner = if writer % 2 == 0 { base.client.clone() } else { other_client.clone() };
        let template = if writer < 2 { base.clone() } else { auto.clone() };
        let waba =
            fixtures::waba(&app, &owner.client_id, &template.source.partner_id, &[&fixtures::unique_number()]).await;
        let s = Scenario { client: owner, waba, ..template };
        let mut as_client = app.partner_change(&s.client_subject());
        writers.push(tokio::spawn(async move {
            if writer >= 2 {
                let submitted = as_client.submit_partner_change(s.submit_request("auto")).await.unwrap().into_inner();
                let id = submitted.partner_change.unwrap().partner_change_id;
                eventually("the auto-approved change to complete", Duration::from_secs(20), || {
                    let (mut client, id) = (as_client.clone(), id.clone());
                    async move {
                        let change =
                            client.get_partner_change(pc::GetPartnerChangeRequest { partner_change_id: id }).await;
                        let state = change.unwrap().into_inner().partner_change.unwrap().state();
                        (state == pc::PartnerChangeState::Completed).then_some(())
                    }
                })
                .await;
                return;
            }
            for round in 0..3 {
                let submitted =
                    as_client.submit_partner_change(s.submit_request(&format!("w{writer}-{round}"))).await.unwrap();
                let id = submitted.into_inner().partner_change.unwrap().partner_change_id;
                let cancel = pc::CancelPartnerChangeRequest { partner_change_id: id, reason: String::new() };
                as_client.cancel_partner_change(cancel).await.unwrap();
            }
        }));
    }
    // The reconnecting subscriber leaves after a few events and comes back with its cursor.
    let first_part = reconnecting.wait_for_events(3).await;
    let first_part = first_part[..3].to_vec();
    let resumed = watch(&app, "support:watch", &first_part[2].cursor).await;
    for writer in writers {
        writer.await.unwrap();
    }

    // The truth: a replay of the whole log once the writers are done.
    let replay = watch(&app, "support:watch", "").await.wait_until_idle().await;
    let live_everything = everything.wait_for_events(replay.len()).await;
    assert_eq!(live_everything.len(), replay.len(), "no duplicate");
    assert_eq!(
        live_everything.iter().map(|event| &event.cursor).collect::<Vec<_>>(),
        replay.iter().map(|event| &event.cursor).collect::<Vec<_>>(),
        "replay then live equals the log, in order, no gap"
    );
    let mut rejoined = first_part.clone();
    rejoined.extend(resumed.wait_for_events(replay.len() - 3).await);
    assert_eq!(steps(&rejoined), steps(&replay), "a reconnect from the last cursor loses nothing and repeats nothing");

    // Scoped subscribers get exactly the matching part of the log, in the same order.
    let for_source: Vec<_> = replay.iter().filter(|event| involves(event, &base.source.partner_id)).cloned().collect();
    assert_eq!(steps(&source_partner.wait_for_events(for_source.len()).await), steps(&for_source));
    let for_client: Vec<_> = replay
        .iter()
        .filter(|event| event.partner_change.as_ref().unwrap().client_id == base.client.client_id)
        .cloned()
        .collect();
    assert_eq!(steps(&client.wait_for_events(for_client.len()).await), steps(&for_client));

    // And the log is exactly the requests' histories.
    let mut ids: Vec<String> =
        replay.iter().map(|event| event.partner_change.as_ref().unwrap().partner_change_id.clone()).collect();
    ids.sort();
    ids.dedup();
    let mut from_histories = 0;
    for id in &ids {
        let history = history_types(&app, id).await;
        let streamed: Vec<Ev> = replay
            .iter()
            .filter(|event| event.partner_change.as_ref().unwrap().partner_change_id == *id)
            .map(pc::PartnerChangeEvent::r#type)
            .collect();
        assert_eq!(streamed, history, "{id}");
        from_histories += history.len();
    }
    assert_eq!(from_histories, replay.len());
    assert_eq!(
        replay.len(),
        2 + 2 * 3 * 2 + 2 * 4,
        "the early request, three submit-cancel rounds twice, two migrations"
    );
}

async fn each_subscriber_gets_only_its_own_events_and_bad_cursors_are_refused(backend: Backend) {
    let app = TestApp::spawn_with(backend, fast_heartbeats).await;
    let mine = scenario(&app, false).await;
    let theirs = scenario(&app, false).await;
    let mine_watch = watch(&app, &mine.destination_subject(), "").await;
    let client_watch = watch(&app, &mine.client_subject(), "").await;
    mine.submit(&app, "mine").await;
    theirs.submit(&app, "theirs").await;
    let support_all = watch(&app, "support:s", "").await.wait_until_idle().await;
    assert_eq!(support_all.len(), 2);
    let partner_events = mine_watch.wait_until_idle().await;
    assert_eq!(partner_events.len(), 1, "only the request to it");
    assert!(involves(&partner_events[0], &mine.destination.partner_id));
    let client_events = client_watch.wait_until_idle().await;
    assert_eq!(client_events.len(), 1, "only its own request");

    // Support may name a partner; a partner may not name another one.
    let named = app
        .partner_change("support:s")
        .watch_partner_change_events(pc::WatchPartnerChangeEventsRequest {
            after_cursor: String::new(),
            scope: Some(pc::watch_partner_change_events_request::Scope::PartnerId(
                theirs.destination.partner_id.clone(),
            )),
            ..Default::default()
        })
        .await
        .unwrap();
    let named = collect(named.into_inner()).wait_until_idle().await;
    assert_eq!(steps(&named), steps(&support_all[1..]));
    let snooping = app
        .partner_change(&mine.destination_subject())
        .watch_partner_change_events(pc::WatchPartnerChangeEventsRequest {
            after_cursor: String::new(),
            scope: Some(pc::watch_partner_change_events_request::Scope::PartnerId(
                theirs.destination.partner_id.clone(),
            )),
            ..Default::default()
        })
        .await;
    assert_eq!(snooping.unwrap_err().code(), Code::PermissionDenied);

    // A cursor that is garbage, issued for another scope, or ahead of the log.
    let mut as_partner = app.partner_change(&mine.destination_subject());
    for bad in ["garbage", support_all[1].cursor.as_str()] {
        let refused = as_partner.watch_partner_change_events(watch_request(bad)).await.unwrap_err();
        assert_eq!((refused.code(), reason(&refused).as_str()), (Code::InvalidArgument, "INVALID_REQUEST"), "{bad}");
    }
    let seal = TokenSeal::derived_from(&app.signing_secret());
    let ahead = seal.seal("999999", "events:All");
    let refused = app.partner_change("support:s").watch_partner_change_events(watch_request(&ahead)).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    // A cursor sealed with any other key (a forgery) is refused, even for a position that exists.
    let forged = TokenSeal::derived_from(&[0; 32]).seal("1", "events:All");
    let refused =
        app.partner_change("support:s").watch_partner_change_events(watch_request(&forged)).await.unwrap_err();
    assert_eq!((refused.code(), reason(&refused).as_str()), (Code::InvalidArgument, "INVALID_REQUEST"));
    // A partner's own cursor resumes after that event.
    let resumed = watch(&app, &mine.destination_subject(), &partner_events[0].cursor).await.wait_until_idle().await;
    assert!(resumed.is_empty());
}

async fn idle_streams_get_heartbeats_and_a_stalled_subscriber_is_ended_without_blocking_others(backend: Backend) {
    const EVENTS: usize = 100;
    let app = TestApp::spawn_with(backend, |settings| {
        fast_heartbeats(settings);
        settings.partner_change().stream.subscriber_buffer = 2;
        settings.partner_change().stream.stall_timeout = Duration::from_millis(300);
    })
    .await;
    // Idle: heartbeats, no events.
    let idle = watch(&app, "support:s", "").await;
    eventually("two heartbeats", Duration::from_secs(10), || async { (idle.heartbeats() >= 2).then_some(()) }).await;
    assert!(idle.events().is_empty());

    // A subscriber that never reads, on a connection with a tiny window, and a
    // fast one. Each event carries a snapshot of 300 numbers (about 6 KB); 100
    // events (600 KB) outgrow every buffer on the way — HTTP/2 buffers about
    // 400 KB per stream on the sending side whatever the peer's window — so the
    // stalled subscriber's own buffer fills.
    let s = big_waba_scenario(&app).await;
    // Subscribed just before the events: left idle for long, the stalled one
    // would be ended for its unread heartbeats alone, before any event.
    let mut stalled_client = app.partner_change_with_window("support:stalled", 64).await;
    let stalled = stalled_client.watch_partner_change_events(watch_request("")).await.unwrap().into_inner();
    let fast = watch(&app, "support:fast", "").await;
    submit_and_cancel(&app, &s, EVENTS / 2).await;
    let all = fast.wait_for_events(EVENTS).await;
    assert_eq!(all.len(), EVENTS, "the fast subscriber got everything while the other stalled");

    // The stalled one, once it reads: what was buffered, then a clear status to resume from.
    let (got, status) = ended_too_slow(stalled).await;
    assert!(got.len() < EVENTS, "it was ended before the end of the log: {}", got.len());
    let resume = status.get_details_error_info().unwrap().metadata.get("resumeAfterCursor").cloned().unwrap();
    assert_eq!(Some(&resume), got.last().map(|event| &event.cursor), "resume after the last event it was given");
    let rest = watch(&app, "support:stalled", &resume).await.wait_for_events(EVENTS - got.len()).await;
    let mut rejoined = got.clone();
    rejoined.extend(rest);
    assert_eq!(steps(&rejoined), steps(&all), "resuming loses nothing");
}

/// Reads a stalled stream now: the events it had been given, and the
/// SUBSCRIBER_TOO_SLOW status that ended it.
async fn ended_too_slow(
    stalled: Streaming<pc::WatchPartnerChangeEventsResponse>,
) -> (Vec<pc::PartnerChangeEvent>, Status) {
    let stalled = collect(stalled);
    let end = eventually("the stalled stream to end", Duration::from_secs(20), || async { stalled.end() }).await;
    let status = end.unwrap_err();
    assert_eq!(
        (status.code(), reason(&status).as_str()),
        (Code::ResourceExhausted, "SUBSCRIBER_TOO_SLOW"),
        "{status:?}"
    );
    (stalled.events(), status)
}

/// A scenario whose WABA has 300 numbers: each event's snapshot is about 6 KB.
async fn big_waba_scenario(app: &TestApp) -> Scenario {
    let mut s = scenario(app, false).await;
    let numbers: Vec<String> = (0..300).map(|_| fixtures::unique_number()).collect();
    let numbers: Vec<&str> = numbers.iter().map(String::as_str).collect();
    s.waba = fixtures::waba(app, &s.client.client_id, &s.source.partner_id, &numbers).await;
    s
}

/// Two events per round: a submit, then its cancellation.
async fn submit_and_cancel(app: &TestApp, s: &Scenario, rounds: usize) {
    let mut as_client = app.partner_change(&s.client_subject());
    for round in 0..rounds {
        let submitted = s.submit(app, &format!("r{round}")).await;
        as_client
            .cancel_partner_change(pc::CancelPartnerChangeRequest {
                partner_change_id: submitted.partner_change_id,
                reason: String::new(),
            })
            .await
            .unwrap();
    }
}

async fn a_stalled_subscriber_is_held_to_its_byte_budget(backend: Backend) {
    const EVENTS: usize = 100;
    const BUDGET: usize = 16 * 1024;
    let app = TestApp::spawn_with(backend, |settings| {
        let stream = &mut settings.partner_change().stream;
        // Room for far more events than are written: only the bytes can run out.
        stream.subscriber_buffer = 10_000;
        stream.subscriber_buffer_bytes = BUDGET;
        stream.stall_timeout = Duration::from_millis(300);
    })
    .await;
    let s = big_waba_scenario(&app).await;
    let mut stalled_client = app.partner_change_with_window("support:stalled", 64).await;
    let stalled = stalled_client.watch_partner_change_events(watch_request("")).await.unwrap().into_inner();
    // 100 events of about 6 KB: more than the HTTP/2 layer's send buffer
    // (about 400 KB) and the 16 KiB budget together.
    submit_and_cancel(&app, &s, EVENTS / 2).await;

    let (got, status) = ended_too_slow(stalled).await;
    let held: usize = got.iter().map(prost::Message::encoded_len).sum();
    assert!(got.len() < EVENTS, "ended before the end of the log: {} events", got.len());
    assert!(
        held <= 512 * 1024,
        "what it was handed is what the HTTP/2 send buffer and its own budget hold: {held} bytes"
    );
    let resume = status.get_details_error_info().unwrap().metadata.get("resumeAfterCursor").cloned().unwrap();
    assert_eq!(Some(&resume), got.last().map(|event| &event.cursor), "resume after the last event it was given");
}

async fn a_late_commit_is_never_skipped(backend: Backend) {
    let app = TestApp::spawn_with(backend, |settings| {
        fast_heartbeats(settings);
        settings.partner_change().worker.enabled = false;
    })
    .await;
    let s = scenario(&app, false).await;
    s.submit(&app, "first").await;
    let pending = {
        let back = Scenario {
            waba: fixtures::waba(&app, &s.client.client_id, &s.source.partner_id, &[&fixtures::unique_number()]).await,
            ..s.clone()
        };
        back.submit(&app, "second").await
    };
    let subscriber = watch(&app, "support:s", "").await;
    let before = subscriber.wait_until_idle().await;
    assert_eq!(before.len(), 2);

    // A writer takes the next position and holds it, uncommitted.
    let db = Database::connect(app.database_url()).await.unwrap();
    let slow = db.begin().await.unwrap();
    let row = slow
        .query_one_raw(sea_orm::Statement::from_string(
            slow.get_database_backend(),
            "UPDATE event_log_head SET last_position = last_position + 1 WHERE id = 1 RETURNING last_position",
        ))
        .await
        .unwrap()
        .unwrap();
    let held: i64 = row.try_get("", "last_position").unwrap();

    // Another writer commits meanwhile (it must wait: it can only take a later position).
    let mut partner = app.partner_change(&s.destination_subject());
    let approve = pc::ApprovePartnerChangeRequest { partner_change_id: pending.partner_change_id.clone() };
    let mut later = tokio::spawn(async move { partner.approve_partner_change(approve).await });
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut later).await.is_err(),
        "the later writer waits for the earlier position"
    );
    assert_eq!(subscriber.events().len(), 2, "nothing newer is visible while an older position is open");

    // The slow writer's event commits late; then the other.
    slow.execute_unprepared(&format!(
        "INSERT INTO partner_change_events (position, partner_change_id, event_type, state, actor, reason, time, client_id, \
         source_partner_id, destination_partner_id, snapshot) SELECT {held}, partner_change_id, event_type, state, 'support:slow', \
         'late', time, client_id, source_partner_id, destination_partner_id, snapshot FROM partner_change_events WHERE position = \
         (SELECT MIN(position) FROM partner_change_events)"
    ))
    .await
    .unwrap();
    slow.commit().await.unwrap();
    later.await.unwrap().unwrap();

    let after = subscriber.wait_for_events(4).await;
    assert_eq!(after[2].actor, "support:slow", "the late commit is delivered, in its place");
    assert_eq!(steps(&after[3..]), [(pending.partner_change_id.clone(), Ev::Approved)]);
    let replay = watch(&app, "support:s", "").await.wait_until_idle().await;
    assert_eq!(
        after.iter().map(|event| &event.cursor).collect::<Vec<_>>(),
        replay.iter().map(|event| &event.cursor).collect::<Vec<_>>()
    );
}

async fn shutdown_ends_streams_with_a_cursor_to_resume_from(backend: Backend) {
    let mut app = TestApp::spawn_with(backend, fast_heartbeats).await;
    let s = scenario(&app, false).await;
    s.submit(&app, "before").await;
    let subscriber = watch(&app, "support:s", "").await;
    let seen = subscriber.wait_for_events(1).await;
    app.restart().await;
    let end = eventually("the stream to end", Duration::from_secs(10), || async { subscriber.end() }).await;
    let status = end.unwrap_err();
    assert_eq!((status.code(), reason(&status).as_str()), (Code::Unavailable, "SERVER_SHUTTING_DOWN"));
    let resume = status.get_details_error_info().unwrap().metadata.get("resumeAfterCursor").cloned().unwrap();
    assert_eq!(resume, seen[0].cursor);

    let other = Scenario {
        waba: fixtures::waba(&app, &s.client.client_id, &s.source.partner_id, &[&fixtures::unique_number()]).await,
        ..s.clone()
    };
    other.submit(&app, "after").await;
    let resumed = watch(&app, "support:s", &resume).await.wait_for_events(1).await;
    assert_eq!(resumed.len(), 1);
    assert_eq!(resumed[0].partner_change.as_ref().unwrap().request_id, "after");
}

/// Two servers on one PostgreSQL database: an event committed through one
/// reaches a subscriber on the other, also after its notification connection drops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_committed_on_one_replica_reaches_a_subscriber_on_another() {
    let a = TestApp::spawn_with(Backend::Postgres, |settings| {
        fast_heartbeats(settings);
        // Far longer than the test waits: delivery must come from the notification.
        settings.partner_change().stream.poll_interval = Duration::from_secs(3600);
    })
    .await;
    let b = a.spawn_replica().await;
    let s = scenario(&a, false).await;
    let on_b = watch(&b, "support:s", "").await;
    on_b.wait_until_idle().await;

    let started = tokio::time::Instant::now();
    let submitted = s.submit(&a, "via-a").await;
    let events = on_b.wait_for_events(1).await;
    assert_eq!(events[0].partner_change.as_ref().unwrap().partner_change_id, submitted.partner_change_id);
    assert!(started.elapsed() < Duration::from_secs(5), "prompt: {:?}", started.elapsed());

    // Drop every LISTEN connection; the listeners reconnect and catch up.
    let db = Database::connect(a.database_url()).await.unwrap();
    db.execute_unprepared(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND query ILIKE 'LISTEN%'",
    )
    .await
    .unwrap();
    let approved = s.approve(&a, &submitted.partner_change_id).await;
    let events = on_b.wait_for_events(2).await;
    assert_eq!(events[1].r#type(), Ev::Approved);
    assert_eq!(events[1].partner_change.as_ref().unwrap().partner_change_id, approved.partner_change_id);
    drop(b);
}
