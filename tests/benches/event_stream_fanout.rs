//! Event stream fan-out: many subscribers while partner changes complete.
//! Reports commit-to-delivery latency percentiles (from the event's time, set in
//! the transaction that commits it, to its arrival at a subscriber) and the
//! server's memory. The server is the real `partnerhub` binary, in its own
//! process, on a fresh database; subscribers and writers are in this process.
//!
//!     cargo bench -p partnerhub-tests --bench event_stream_fanout
//!
//! Environment: BENCH_SUBSCRIBERS (default 1000), BENCH_CONNECTIONS (default
//! 10), BENCH_CHANGES (default 100; 4 events each), BENCH_EVENTS_PER_SECOND
//! (the pace of the writers, default 100: a change submitted every 40 ms),
//! BENCH_BACKEND (`postgres`, the default, or `sqlite`). Writes
//! target/bench-reports/event_stream_fanout.txt.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: failing loudly is right

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use base64::Engine as _;
use partnerhub_proto::{
    account::v1::account_service_client::AccountServiceClient,
    partnerchange::v1::{
        self as pc, partner_change_service_client::PartnerChangeServiceClient,
        watch_partner_change_events_response::Kind,
    },
};
use partnerhub_runtime::auth::{BearerToken, Subject, TokenKeys};
use partnerhub_tests::{
    Backend, TestDatabase,
    bench::{auto_approve_world, env_number, percentile, rss_kib},
    binary::ServerProcess,
};
use tokio::{sync::Mutex, time::Instant};
use tonic::{service::interceptor::InterceptedService, transport::Channel};

#[tokio::main]
async fn main() {
    let subscribers = env_number("BENCH_SUBSCRIBERS", 1000);
    let connections = env_number("BENCH_CONNECTIONS", 10).max(1);
    let changes = env_number("BENCH_CHANGES", 100);
    let events_per_second = env_number("BENCH_EVENTS_PER_SECOND", 100).max(1);
    let backend = match std::env::var("BENCH_BACKEND").as_deref() {
        Ok("sqlite") => Backend::Sqlite,
        _ => Backend::Postgres,
    };

    let database = TestDatabase::create(backend).await;
    let secret = [7u8; 32];
    let key = base64::engine::general_purpose::STANDARD.encode(secret);
    let url = database.url().unwrap_or_default();
    let mut env = vec![("PARTNERHUB__AUTH__SIGNING_KEY", key.as_str()), ("RUST_LOG", "warn,partnerhub::app=info")];
    if !url.is_empty() {
        env.push(("PARTNERHUB__DATABASE__URL", url.as_str()));
    }
    let server = ServerProcess::start_with(database.data_dir(), &[], &env);
    let keys = TokenKeys::from_secret(&secret, "partnerhub");
    let token = |subject: &str| keys.mint(&subject.parse::<Subject>().unwrap(), Duration::from_secs(3600)).unwrap();
    let channel =
        |_: usize| async { Channel::from_shared(format!("http://{}", server.addr)).unwrap().connect().await.unwrap() };
    let authed =
        |channel: Channel, subject: &str| InterceptedService::new(channel, BearerToken::new(&token(subject)).unwrap());

    // Set-up (not measured).
    let setup = channel(0).await;
    let world =
        auto_approve_world(&mut AccountServiceClient::new(authed(setup.clone(), "support:bench")), changes, 1).await;
    let (destination, client, wabas) = (world.destination, world.client, world.waba_ids);
    let idle_rss = rss_kib(server.pid(), "VmRSS:");

    // Subscribers, spread over a few connections, all watching everything.
    let expected_events = changes * 4;
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(subscribers * expected_events)));
    // Each subscriber's median and worst lag: a subscriber that fell behind
    // (a lag or replay loop) must not hide behind the percentiles of all.
    let per_subscriber = Arc::new(Mutex::new(Vec::with_capacity(subscribers)));
    let finished = Arc::new(AtomicUsize::new(0));
    let mut subscriber_channels = Vec::new();
    for connection in 0..connections {
        subscriber_channels.push(channel(connection).await);
    }
    let mut tasks = Vec::new();
    for index in 0..subscribers {
        let mut api = PartnerChangeServiceClient::new(authed(
            subscriber_channels[index % connections].clone(),
            "support:watcher",
        ));
        let mut stream =
            api.watch_partner_change_events(pc::WatchPartnerChangeEventsRequest::default()).await.unwrap().into_inner();
        let (latencies, finished, per_subscriber) = (latencies.clone(), finished.clone(), per_subscriber.clone());
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::with_capacity(expected_events);
            while mine.len() < expected_events {
                let Some(message) = stream.message().await.unwrap() else { break };
                if let Some(Kind::Event(event)) = message.kind {
                    let time = event.time.unwrap();
                    let sent = std::time::UNIX_EPOCH + Duration::new(time.seconds as u64, time.nanos as u32);
                    let latency = std::time::SystemTime::now().duration_since(sent).unwrap_or_default();
                    mine.push(latency.as_micros() as u64);
                }
            }
            let mut sorted = mine.clone();
            sorted.sort_unstable();
            per_subscriber.lock().await.push((percentile(&sorted, 0.5), percentile(&sorted, 1.0)));
            latencies.lock().await.extend(mine);
            finished.fetch_add(1, Ordering::Relaxed);
        }));
    }
    let with_subscribers_rss = rss_kib(server.pid(), "VmRSS:");

    // Writers: every change auto-approves and migrates: SUBMITTED, APPROVED, MIGRATION_STARTED, COMPLETED.
    let started = Instant::now();
    let mut writer = PartnerChangeServiceClient::new(authed(setup.clone(), &format!("client:{}", client.client_id)));
    let mut peak_rss = 0;
    // A steady flow at the pace asked for: a change every 4 events' time,
    // whatever each submit takes (a late tick is not made up for in a burst).
    let mut pace = tokio::time::interval(Duration::from_secs_f64(4.0 / events_per_second as f64));
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for (index, waba_id) in wabas.into_iter().enumerate() {
        pace.tick().await;
        writer
            .submit_partner_change(pc::SubmitPartnerChangeRequest {
                request_id: format!("bench-{index}"),
                waba_id,
                destination_partner_id: destination.partner_id.clone(),
                accepted_terms_version: "v1".into(),
                grant_phone_numbers: Vec::new(),
                migrate_after: None,
            })
            .await
            .unwrap();
        peak_rss = peak_rss.max(rss_kib(server.pid(), "VmRSS:"));
    }
    let written_in = started.elapsed();
    while finished.load(Ordering::Relaxed) < subscribers {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "subscribers did not receive every event within 5 minutes"
        );
        peak_rss = peak_rss.max(rss_kib(server.pid(), "VmRSS:"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed();
    for task in tasks {
        task.await.unwrap();
    }
    let high_water = rss_kib(server.pid(), "VmHWM:");

    let mut latencies = Arc::try_unwrap(latencies).unwrap().into_inner();
    latencies.sort_unstable();
    let percentile = |p: f64| percentile(&latencies, p);
    let per_subscriber = Arc::try_unwrap(per_subscriber).unwrap().into_inner();
    let worst_median = per_subscriber.iter().map(|(median, _)| *median).max().unwrap_or_default();
    let worst_max = per_subscriber.iter().map(|(_, max)| *max).max().unwrap_or_default();
    let report = format!(
        "event stream fan-out ({backend:?}; server: the partnerhub binary, its own process)\n\
         subscribers: {subscribers} over {connections} connections; partner changes: {changes} ({expected_events} events)\n\
         written at {:.0} events/s (asked for {events_per_second})\n\
         deliveries: {} in {elapsed:.2?}\n\
         commit-to-delivery latency: p50 {:.2?}, p90 {:.2?}, p99 {:.2?}, max {:.2?}\n\
         worst subscriber: median lag {worst_median:.2?}, worst lag {worst_max:.2?}\n\
         server RSS: idle {} MiB, with subscribers {} MiB, peak while streaming {} MiB (high-water {} MiB)\n",
        expected_events as f64 / written_in.as_secs_f64(),
        latencies.len(),
        percentile(0.50),
        percentile(0.90),
        percentile(0.99),
        percentile(1.0),
        idle_rss / 1024,
        with_subscribers_rss / 1024,
        peak_rss / 1024,
        high_water / 1024,
    );
    print!("{report}");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-reports");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("event_stream_fanout.txt"), report).unwrap();
    assert_eq!(server.terminate().code(), Some(0));
}
