//! How many partner changes per second complete end to end: submit (to an
//! auto-approving partner) → migration worker → TransferWaba → revoke → COMPLETED,
//! with every service in one process on a fresh database, clients on loopback.
//!
//!     cargo bench -p partnerhub-tests --bench partner_change_throughput
//!
//! Environment: BENCH_CHANGES (default 300), BENCH_CONCURRENCY (submits in
//! flight, default 32), BENCH_BACKEND (`postgres`, the default, or `sqlite`),
//! BENCH_WORKERS (worker loops, default 4). Writes the report to stdout and to
//! target/bench-reports/partner_change_throughput.txt. A measurement, not a test.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: failing loudly is right

use std::{sync::Arc, time::Duration};

use partnerhub_proto::partnerchange::v1 as pc;
use partnerhub_tests::{Backend, ServiceSections, TestApp, bench::auto_approve_world};
use tokio::{sync::Semaphore, time::Instant};

fn env_number(name: &str, default: u32) -> u32 {
    std::env::var(name).ok().and_then(|value| value.parse().ok()).unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let changes = env_number("BENCH_CHANGES", 300);
    let concurrency = env_number("BENCH_CONCURRENCY", 32);
    let workers = env_number("BENCH_WORKERS", 4);
    let backend = match std::env::var("BENCH_BACKEND").as_deref() {
        Ok("sqlite") => Backend::Sqlite,
        _ => Backend::Postgres,
    };
    let app = TestApp::spawn_with(backend, |settings| {
        settings.database.max_connections = 20;
        settings.partner_change().worker.concurrency = workers;
        settings.partner_change().worker.poll_interval = Duration::from_millis(20);
    })
    .await;

    // Set-up (not measured).
    let world = auto_approve_world(&mut app.account("support:bench"), changes as usize, 2).await;
    let (destination, client, wabas) = (world.destination, world.client, world.waba_ids);

    // Measured: every submit, until the last change completes.
    let started = Instant::now();
    let permits = Arc::new(Semaphore::new(concurrency as usize));
    let mut submits = Vec::new();
    for (index, waba_id) in wabas.into_iter().enumerate() {
        let permit = permits.clone().acquire_owned().await.unwrap();
        let mut client_api = app.partner_change(&format!("client:{}", client.client_id));
        let request = pc::SubmitPartnerChangeRequest {
            request_id: format!("bench-{index}"),
            waba_id,
            destination_partner_id: destination.partner_id.clone(),
            accepted_terms_version: "v1".into(),
            grant_phone_numbers: Vec::new(),
            migrate_after: None,
        };
        submits.push(tokio::spawn(async move {
            client_api.submit_partner_change(request).await.unwrap();
            drop(permit);
        }));
    }
    for submit in submits {
        submit.await.unwrap();
    }
    let submitted_after = started.elapsed();
    let mut lister = app.partner_change("support:bench");
    loop {
        let mut completed = 0;
        let mut page_token = String::new();
        loop {
            let page = lister
                .list_partner_changes(pc::ListPartnerChangesRequest {
                    client_id: client.client_id.clone(),
                    states: vec![pc::PartnerChangeState::Completed.into()],
                    page_size: 500,
                    page_token,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            completed += page.partner_changes.len();
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        if completed == changes as usize {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(600), "only {completed} of {changes} completed in 10 minutes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();

    let report = format!(
        "partner change throughput ({backend:?}, all services in one process, {workers} worker loops)\n\
         changes: {changes}, submits in flight: {concurrency}\n\
         all submitted after: {submitted_after:.2?}\n\
         all completed after: {elapsed:.2?}\n\
         completed per second: {:.1}\n",
        f64::from(changes) / elapsed.as_secs_f64()
    );
    print!("{report}");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-reports");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("partner_change_throughput.txt"), report).unwrap();
}
