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

use partnerhub_proto::{account::v1 as acc, partnerchange::v1 as pc};
use partnerhub_tests::{Backend, TestApp};
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
        settings.partner_change.worker.concurrency = workers;
        settings.partner_change.worker.poll_interval = Duration::from_millis(20);
    })
    .await;

    // Set-up (not measured): a source partner, an auto-approving destination, one
    // eligible client with a WABA of two numbers per change.
    let mut support = app.account("support:bench");
    let settings = |auto_approve| acc::PartnerSettings {
        auto_approve,
        accepting_changes: true,
        terms_version: "v1".into(),
        requires_payment_method: false,
    };
    let partner = |name: &str, auto_approve| acc::CreatePartnerRequest {
        display_name: name.into(),
        payment_processor: acc::PaymentProcessor::Stripe.into(),
        settings: Some(settings(auto_approve)),
    };
    let source = support.create_partner(partner("Source", false)).await.unwrap().into_inner().partner.unwrap();
    let destination = support.create_partner(partner("Destination", true)).await.unwrap().into_inner().partner.unwrap();
    let client = support
        .create_client(acc::CreateClientRequest {
            display_name: "Client".into(),
            payment_processor: acc::PaymentProcessor::Stripe.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .client
        .unwrap();
    support
        .update_company_info(acc::UpdateCompanyInfoRequest {
            client_id: client.client_id.clone(),
            company_info: Some(acc::CompanyInfo {
                legal_name: "Client Ltd".into(),
                address_line: "1 Road".into(),
                city: "Town".into(),
                postal_code: "1000".into(),
                country_code: "DE".into(),
                tax_id: "DE1".into(),
            }),
        })
        .await
        .unwrap();
    let mut wabas = Vec::new();
    for index in 0..changes {
        let waba = support
            .create_waba(acc::CreateWabaRequest {
                client_id: client.client_id.clone(),
                partner_id: source.partner_id.clone(),
                display_name: format!("WABA {index}"),
            })
            .await
            .unwrap()
            .into_inner()
            .waba
            .unwrap();
        for line in 0..2 {
            support
                .add_phone_number(acc::AddPhoneNumberRequest {
                    waba_id: waba.waba_id.clone(),
                    phone_number: format!("+49{line}{index:09}"),
                })
                .await
                .unwrap();
        }
        wabas.push(waba.waba_id);
    }

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
