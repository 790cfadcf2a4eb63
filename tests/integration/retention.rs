//! Retention: the event log and the permission log are pruned past
//! `retention.events` (oldest first, the newest entry always kept, one replica
//! at a time); a cursor older than what is kept gets OUT_OF_RANGE, and a
//! subscriber may start from now. Time is injected: the pruner is called with
//! the cut-off it would compute months from now.

use std::time::Duration;

use chrono::Utc;
use partnerhub_partner_change::store::EVENT_LOG;
use partnerhub_permissions::store::PERMISSION_LOG;
use partnerhub_proto::partnerchange::v1 as pc;
use partnerhub_runtime::retention::{self, PrunedLog};
use partnerhub_tests::{Backend, ServiceSections, TestApp, eventually, on_both_databases, reason};
use pc::{PartnerChangeEventType as Ev, watch_partner_change_events_response::Kind};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, TransactionTrait};
use tonic::{Code, Status, Streaming};

use crate::fixtures::{allowed, history_types, scenario, wait_for_state};

on_both_databases!(
    pruning_takes_the_oldest_events_and_an_older_cursor_is_out_of_range,
    a_subscriber_can_start_from_now_and_resume_from_a_heartbeat,
    the_background_pruner_keeps_both_logs_within_the_retention,
);

/// The next event or heartbeat of `stream`, or the status that ended it.
async fn next(stream: &mut Streaming<pc::WatchPartnerChangeEventsResponse>) -> Result<Kind, Status> {
    let message = tokio::time::timeout(Duration::from_secs(20), stream.message())
        .await
        .expect("the stream says something within 20 s")?
        .expect("the stream is still open");
    Ok(message.kind.expect("a message has a kind"))
}

/// Events until the stream goes idle (its first heartbeat).
async fn events_until_idle(
    stream: &mut Streaming<pc::WatchPartnerChangeEventsResponse>,
) -> Vec<pc::PartnerChangeEvent> {
    let mut events = Vec::new();
    loop {
        match next(stream).await.unwrap() {
            Kind::Event(event) => events.push(event),
            Kind::Heartbeat(_) => return events,
        }
    }
}

async fn watch(
    app: &TestApp,
    request: pc::WatchPartnerChangeEventsRequest,
) -> Result<Streaming<pc::WatchPartnerChangeEventsResponse>, Status> {
    app.partner_change("support:retention").watch_partner_change_events(request).await.map(tonic::Response::into_inner)
}

fn after(cursor: &str) -> pc::WatchPartnerChangeEventsRequest {
    pc::WatchPartnerChangeEventsRequest { after_cursor: cursor.to_owned(), ..Default::default() }
}

fn fast_heartbeats(settings: &mut partnerhub_runtime::config::Settings) {
    settings.partner_change().stream.heartbeat_interval = Duration::from_millis(200);
}

/// Prunes `log` as the pruner would months from now (everything stored is
/// past the retention), `batch` at a time; returns each batch's count.
async fn prune_all(db: &DatabaseConnection, log: PrunedLog, batch: u32) -> Vec<u64> {
    let mut counts = Vec::new();
    loop {
        let deleted = retention::prune(db, log, Utc::now() + chrono::Duration::seconds(1), batch).await.unwrap();
        counts.push(deleted);
        if deleted == 0 {
            return counts;
        }
    }
}

async fn positions(db: &DatabaseConnection, table: &str) -> Vec<i64> {
    let rows = db
        .query_all_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            format!("SELECT position FROM {table} ORDER BY position"),
        ))
        .await
        .unwrap();
    rows.iter().map(|row| row.try_get::<i64>("", "position").unwrap()).collect()
}

async fn pruning_takes_the_oldest_events_and_an_older_cursor_is_out_of_range(backend: Backend) {
    let app = TestApp::spawn_with(backend, fast_heartbeats).await;
    let db = Database::connect(app.database_url()).await.unwrap();
    let s = scenario(&app, true).await;
    s.grant(&app, &s.source.partner_id, &[s.waba.phone_numbers[0].clone()]).await;
    let change = s.submit(&app, "pruned").await;
    wait_for_state(&app, &change.partner_change_id, pc::PartnerChangeState::Completed).await;
    let mut stream = watch(&app, after("")).await.unwrap();
    let events = events_until_idle(&mut stream).await;
    let types: Vec<Ev> = events.iter().map(pc::PartnerChangeEvent::r#type).collect();
    assert_eq!(types, [Ev::Submitted, Ev::Approved, Ev::MigrationStarted, Ev::Completed]);

    // Nothing is younger than the cut-off but nothing may go before it either:
    // a cut-off in the past prunes nothing.
    let past = Utc::now() - chrono::Duration::days(1);
    assert_eq!(retention::prune(&db, EVENT_LOG, past, 10).await.unwrap(), 0, "nothing is a day old yet");
    // Months later: oldest first, in batches, the newest kept.
    assert_eq!(prune_all(&db, EVENT_LOG, 2).await, [2, 1, 0]);
    let kept = positions(&db, "partner_change_events").await;
    assert_eq!(kept.len(), 1, "{kept:?}: only the newest event");

    // A cursor whose next event is gone: OUT_OF_RANGE, saying how to start over.
    let mut expired = watch(&app, after(&events[0].cursor)).await.unwrap();
    let status = next(&mut expired).await.expect_err("an expired cursor ends the stream");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert_eq!(reason(&status), "CURSOR_EXPIRED");
    assert!(status.message().contains("start over with an empty after_cursor"), "{}", status.message());
    // One whose next event is still there resumes as before.
    let mut resumed = watch(&app, after(&events[2].cursor)).await.unwrap();
    assert_eq!(events_until_idle(&mut resumed).await, events[3..]);
    // From the beginning: the oldest retained event.
    let mut fresh = watch(&app, after("")).await.unwrap();
    assert_eq!(events_until_idle(&mut fresh).await, events[3..]);
    assert_eq!(history_types(&app, &change.partner_change_id).await, [Ev::Completed], "history is pruned too");

    // The permission log: the grant and the revoke, pruned but for the newest;
    // the answers do not change.
    let before = positions(&db, "permission_log").await;
    assert!(before.len() >= 2, "{before:?}: the grant, then the revoke at the move");
    let all_but_newest = u64::try_from(before.len() - 1).unwrap();
    assert_eq!(prune_all(&db, PERMISSION_LOG, 1000).await, [all_but_newest, 0]);
    assert_eq!(positions(&db, "permission_log").await, before[before.len() - 1..]);
    assert!(!allowed(&app, &s.source.partner_id, &s.waba.phone_numbers[0]).await, "the revoke still stands");

    // One replica at a time: while another holds the log's lock, a pruner does nothing.
    if backend == Backend::Postgres {
        let s2 = s.another_waba(&app, 1).await;
        let second = s2.submit(&app, "second").await;
        wait_for_state(&app, &second.partner_change_id, pc::PartnerChangeState::Completed).await;
        let other = db.begin().await.unwrap();
        other.execute_unprepared(&format!("SELECT pg_advisory_xact_lock({})", EVENT_LOG.lock_key)).await.unwrap();
        assert_eq!(prune_all(&db, EVENT_LOG, 1000).await, [0], "another replica is pruning");
        other.rollback().await.unwrap();
        assert_eq!(prune_all(&db, EVENT_LOG, 1000).await, [4, 0]);
    }
}

async fn a_subscriber_can_start_from_now_and_resume_from_a_heartbeat(backend: Backend) {
    let app = TestApp::spawn_with(backend, fast_heartbeats).await;
    let s = scenario(&app, true).await;
    let old = s.submit(&app, "old").await;
    wait_for_state(&app, &old.partner_change_id, pc::PartnerChangeState::Completed).await;

    let from_now = pc::WatchPartnerChangeEventsRequest { start_from: pc::StartFrom::Now.into(), ..Default::default() };
    let mut stream = watch(&app, from_now).await.unwrap();
    let Kind::Heartbeat(start) = next(&mut stream).await.unwrap() else {
        panic!("a stream from now starts with a heartbeat")
    };
    assert!(!start.cursor.is_empty(), "the first heartbeat marks the start");
    assert!(events_until_idle(&mut stream).await.is_empty(), "nothing from before");

    let new = s.another_waba(&app, 1).await.submit(&app, "new").await;
    wait_for_state(&app, &new.partner_change_id, pc::PartnerChangeState::Completed).await;
    let mut live = Vec::new();
    while live.len() < 4 {
        if let Kind::Event(event) = next(&mut stream).await.unwrap() {
            live.push(event);
        }
    }
    assert!(live.iter().all(|event| event.partner_change.as_ref().unwrap().partner_change_id == new.partner_change_id));

    // The start's cursor replays exactly what came since.
    let mut resumed = watch(&app, after(&start.cursor)).await.unwrap();
    assert_eq!(events_until_idle(&mut resumed).await, live);
    // A later heartbeat's cursor: nothing more to replay.
    let mut idle = watch(&app, after(&start.cursor)).await.unwrap();
    events_until_idle(&mut idle).await;
    let Kind::Heartbeat(later) = next(&mut idle).await.unwrap() else { panic!("an idle stream sends heartbeats") };
    let mut caught_up = watch(&app, after(&later.cursor)).await.unwrap();
    assert!(events_until_idle(&mut caught_up).await.is_empty());

    // start_from with a cursor, or a value that does not exist: refused.
    let both = pc::WatchPartnerChangeEventsRequest {
        after_cursor: start.cursor.clone(),
        start_from: pc::StartFrom::Now.into(),
        ..Default::default()
    };
    let unknown = pc::WatchPartnerChangeEventsRequest { start_from: 7, ..Default::default() };
    for request in [both, unknown] {
        let status = watch(&app, request).await.expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_eq!(partnerhub_tests::violated_fields(&status), ["start_from"]);
    }
}

async fn the_background_pruner_keeps_both_logs_within_the_retention(backend: Backend) {
    let app = TestApp::spawn_with(backend, |settings| {
        settings.retention.events = Duration::from_secs(1);
        settings.retention.prune_interval = Duration::from_millis(100);
    })
    .await;
    let db = Database::connect(app.database_url()).await.unwrap();
    let s = scenario(&app, true).await;
    s.grant(&app, &s.source.partner_id, &[s.waba.phone_numbers[0].clone()]).await;
    let change = s.submit(&app, "aged").await;
    wait_for_state(&app, &change.partner_change_id, pc::PartnerChangeState::Completed).await;
    for table in ["partner_change_events", "permission_log"] {
        let kept = eventually(&format!("{table} pruned to its newest entry"), Duration::from_secs(20), || async {
            let kept = positions(&db, table).await;
            (kept.len() == 1).then_some(kept)
        })
        .await;
        assert!(kept[0] > 1, "{table}: the newest entry is the one kept");
    }
}
