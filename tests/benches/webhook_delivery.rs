//! Webhook delivery: many endpoints, many events, against a local receiver.
//! Reports deliveries per second and commit-to-delivery latency (from the
//! event's time, set in the transaction that commits it, to the POST's arrival
//! at the receiver), beside the event stream's own figures when
//! `event_stream_fanout` has written its report. The server is the real
//! `partnerhub` binary, in its own process, on a fresh database.
//!
//!     cargo bench -p partnerhub-tests --bench webhook_delivery
//!
//! Environment: BENCH_ENDPOINTS (default 100), BENCH_EVENTS (default 1000;
//! four per partner change), BENCH_BACKEND (`postgres`, the default, or
//! `sqlite`). Writes target/bench-reports/webhook_delivery.txt.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: failing loudly is right

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use base64::Engine as _;
use partnerhub_proto::{
    account::v1::account_service_client::AccountServiceClient,
    partnerchange::v1::{self as pc, partner_change_service_client::PartnerChangeServiceClient},
    webhooks::v1::{self as wh, webhook_service_client::WebhookServiceClient},
};
use partnerhub_runtime::auth::{BearerToken, Subject, TokenKeys};
use partnerhub_tests::{
    Backend, TestDatabase,
    bench::{auto_approve_world, env_number, percentile, rss_kib},
    binary::ServerProcess,
    http::{HttpServer, Received},
};
use tonic::{service::interceptor::InterceptedService, transport::Channel};

/// What the receiver saw: each webhook-id's arrivals, and each first arrival's latency (µs).
#[derive(Default)]
struct Seen {
    arrivals: HashMap<String, u32>,
    latencies: Vec<u64>,
}

#[tokio::main]
async fn main() {
    let endpoints = env_number("BENCH_ENDPOINTS", 100);
    let events = env_number("BENCH_EVENTS", 1000);
    let changes = events.div_ceil(4);
    let backend = match std::env::var("BENCH_BACKEND").as_deref() {
        Ok("sqlite") => Backend::Sqlite,
        _ => Backend::Postgres,
    };

    let database = TestDatabase::create(backend).await;
    let secret = [7u8; 32];
    let key = base64::engine::general_purpose::STANDARD.encode(secret);
    let url = database.url().unwrap_or_default();
    let mut env = vec![
        ("PARTNERHUB__AUTH__SIGNING_KEY", key.as_str()),
        ("RUST_LOG", "warn,partnerhub::app=info"),
        ("PARTNERHUB__WEBHOOKS__ALLOW_HTTP", "true"),
        ("PARTNERHUB__WEBHOOKS__ALLOW_PRIVATE_NETWORKS", "true"),
        ("PARTNERHUB__WEBHOOKS__MAX_ENDPOINTS_PER_OWNER", "1000"),
    ];
    if !url.is_empty() {
        env.push(("PARTNERHUB__DATABASE__URL", url.as_str()));
    }
    let server = ServerProcess::start_with(database.data_dir(), &[], &env);
    let keys = TokenKeys::from_secret(&secret, "partnerhub");
    let token = |subject: &str| keys.mint(&subject.parse::<Subject>().unwrap(), Duration::from_secs(3600)).unwrap();
    let channel = Channel::from_shared(format!("http://{}", server.addr)).unwrap().connect().await.unwrap();
    let authed = |subject: &str| InterceptedService::new(channel.clone(), BearerToken::new(&token(subject)).unwrap());

    // The receiver: answers 204 at once, notes each arrival.
    let seen = Arc::new(Mutex::new(Seen::default()));
    let receiver = HttpServer::start(None, {
        let seen = seen.clone();
        move |received: Received| {
            let arrived = SystemTime::now();
            let id = received.headers["webhook-id"].to_str().unwrap_or_default().to_owned();
            let body: serde_json::Value = serde_json::from_slice(&received.body).unwrap_or_default();
            let time = body["data"]["time"]
                .as_str()
                .and_then(|time| chrono::DateTime::parse_from_rfc3339(time).ok())
                .map(SystemTime::from);
            let mut seen = seen.lock().unwrap();
            let count = seen.arrivals.entry(id).or_default();
            *count += 1;
            if *count == 1
                && let Some(time) = time
            {
                let latency = arrived.duration_since(time).unwrap_or_default();
                seen.latencies.push(latency.as_micros() as u64);
            }
            async { (http::StatusCode::NO_CONTENT, String::new()) }
        }
    })
    .await;

    // Set-up (not measured): the world, and every endpoint the destination's.
    let world = auto_approve_world(&mut AccountServiceClient::new(authed("support:bench")), changes, 1).await;
    let mut webhooks = WebhookServiceClient::new(authed("support:bench"));
    for n in 0..endpoints {
        webhooks
            .create_webhook_endpoint(wh::CreateWebhookEndpointRequest {
                owner: Some(wh::create_webhook_endpoint_request::Owner::PartnerId(
                    world.destination.partner_id.clone(),
                )),
                url: format!("{}/hook/{n}", receiver.base_url),
                description: format!("bench {n}"),
            })
            .await
            .unwrap();
    }
    let idle_rss = rss_kib(server.pid(), "VmRSS:");

    let expected = endpoints * changes * 4;
    let started = Instant::now();
    let mut writer = PartnerChangeServiceClient::new(authed(&format!("client:{}", world.client.client_id)));
    let mut peak_rss = 0;
    for (index, waba_id) in world.waba_ids.into_iter().enumerate() {
        writer
            .submit_partner_change(pc::SubmitPartnerChangeRequest {
                request_id: format!("bench-{index}"),
                waba_id,
                destination_partner_id: world.destination.partner_id.clone(),
                accepted_terms_version: "v1".into(),
                grant_phone_numbers: Vec::new(),
                migrate_after: None,
            })
            .await
            .unwrap();
        peak_rss = peak_rss.max(rss_kib(server.pid(), "VmRSS:"));
        // A steady flow, as in the event stream benchmark.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    loop {
        let delivered = seen.lock().unwrap().arrivals.len();
        if delivered >= expected {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "only {delivered} of {expected} deliveries within 15 minutes"
        );
        peak_rss = peak_rss.max(rss_kib(server.pid(), "VmRSS:"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed();
    let high_water = rss_kib(server.pid(), "VmHWM:");

    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let duplicates: u32 = seen.arrivals.values().map(|count| count - 1).sum();
    let mut latencies = seen.latencies;
    latencies.sort_unstable();
    let percentile = |p: f64| percentile(&latencies, p);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-reports");
    let stream = std::fs::read_to_string(dir.join("event_stream_fanout.txt"))
        .ok()
        .and_then(|report| report.lines().find(|line| line.starts_with("commit-to-delivery")).map(str::to_owned))
        .map_or("(run event_stream_fanout for its figures)".to_owned(), |line| format!("event stream: {line}"));
    let report = format!(
        "webhook delivery ({backend:?}; server: the partnerhub binary, its own process; receiver in this process)\n\
         endpoints: {endpoints}; partner changes: {changes} ({} events); deliveries: {} in {elapsed:.2?} ({:.0}/s), duplicates: {duplicates}\n\
         commit-to-delivery latency: p50 {:.2?}, p90 {:.2?}, p99 {:.2?}, max {:.2?}\n\
         {stream}\n\
         server RSS: idle {} MiB, peak while delivering {} MiB (high-water {} MiB)\n",
        changes * 4,
        seen.arrivals.len(),
        seen.arrivals.len() as f64 / elapsed.as_secs_f64(),
        percentile(0.50),
        percentile(0.90),
        percentile(0.99),
        percentile(1.0),
        idle_rss / 1024,
        peak_rss / 1024,
        high_water / 1024,
    );
    print!("{report}");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("webhook_delivery.txt"), report).unwrap();
    assert_eq!(server.terminate().code(), Some(0));
}
