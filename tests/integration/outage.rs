//! What production meets weekly, on PostgreSQL: the database ends the
//! server's own sessions (a restart, a failover, `pg_terminate_backend`) while
//! partner changes flow, and a database that refuses connections for a while.
//! No call answers INTERNAL, no request ends FAILED or loses or repeats an
//! event, and readiness tells the truth.

use std::time::Duration;

use partnerhub_proto::{account::v1 as pb, partnerchange::v1 as pc};
use partnerhub_tests::{Backend, TestApp, database::postgres_admin_url, eventually};
use pc::{PartnerChangeEventType as Ev, PartnerChangeState as St};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection};
use tonic::{Code, Status};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

use crate::fixtures::{self, allowed, get_change, history_types};

const SERVICES: [&str; 3] = [
    "partnerhub.account.v1.AccountService",
    "partnerhub.partnerchange.v1.PartnerChangeService",
    "partnerhub.permissions.v1.PermissionsService",
];

/// The test database's name, from its URL.
fn database_name(app: &TestApp) -> String {
    app.database_url().rsplit('/').next().unwrap().to_owned()
}

/// Ends every session the app has open on its database.
async fn end_sessions(admin: &DatabaseConnection, name: &str) -> u64 {
    let ended = admin
        .execute_unprepared(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid()"
        ))
        .await
        .unwrap();
    ended.rows_affected()
}

async fn status_of(app: &TestApp, service: &str) -> ServingStatus {
    let request = HealthCheckRequest { service: service.to_owned() };
    HealthClient::new(app.channel_without_token()).check(request).await.unwrap().into_inner().status()
}

/// A call that a well-behaved client retries: transient answers are retried,
/// anything else is returned. INTERNAL must never come back.
async fn retrying<T, F, Fut>(what: &str, mut call: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
{
    for _ in 0..100 {
        match call().await {
            Ok(response) => return Ok(response.into_inner()),
            Err(status) if matches!(status.code(), Code::Unavailable | Code::Aborted) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(status) => {
                assert_ne!(status.code(), Code::Internal, "{what} answered INTERNAL: {status:?}");
                return Err(status);
            }
        }
    }
    panic!("{what} stayed unavailable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partner_changes_complete_while_the_database_ends_the_servers_sessions() {
    const CHANGES: usize = 16;
    let app = TestApp::spawn(Backend::Postgres).await;
    let source = fixtures::partner_with(&app, "Source", pb::PaymentProcessor::Stripe, fixtures::settings(false)).await;
    let destination =
        fixtures::partner_with(&app, "Destination", pb::PaymentProcessor::Stripe, fixtures::settings(true)).await;
    let client = fixtures::eligible_client(&app, "Bakery Ltd").await;
    let as_client = format!("client:{}", client.client_id);
    let wabas = fixtures::wabas(&app, &client.client_id, &source.partner_id, CHANGES).await;
    let all_numbers: Vec<String> = wabas.iter().flat_map(|waba| waba.phone_numbers.clone()).collect();
    app.permissions(&as_client)
        .set_partner_permissions(partnerhub_proto::permissions::v1::SetPartnerPermissionsRequest {
            client_id: client.client_id.clone(),
            partner_id: source.partner_id.clone(),
            phone_numbers: all_numbers.clone(),
        })
        .await
        .unwrap();

    // Every 100 ms, for as long as the changes are being submitted and
    // migrated, the database ends every session the server has.
    let admin = Database::connect(postgres_admin_url()).await.unwrap();
    let name = database_name(&app);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let killer = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut ended = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                ended += end_sessions(&admin, &name).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            ended
        }
    });

    let mut ids = Vec::new();
    for (index, waba) in wabas.iter().enumerate() {
        let request = pc::SubmitPartnerChangeRequest {
            request_id: format!("flow-{index}"),
            waba_id: waba.waba_id.clone(),
            destination_partner_id: destination.partner_id.clone(),
            accepted_terms_version: fixtures::TERMS.to_owned(),
            grant_phone_numbers: waba.phone_numbers.clone(),
            migrate_after: None,
        };
        let submitted = retrying("SubmitPartnerChange", || {
            let mut client = app.partner_change(&as_client);
            let request = request.clone();
            async move { client.submit_partner_change(request).await }
        })
        .await
        .expect("the submit goes through once the database answers");
        ids.push(submitted.partner_change.unwrap().partner_change_id);
    }
    for id in &ids {
        eventually(&format!("{id} to complete"), Duration::from_secs(60), || async {
            let change = retrying("GetPartnerChange", || {
                let mut support = app.partner_change("support:s");
                let request = pc::GetPartnerChangeRequest { partner_change_id: id.clone() };
                async move { support.get_partner_change(request).await }
            })
            .await
            .unwrap()
            .partner_change
            .unwrap();
            assert_ne!(change.state(), St::Failed, "a lost connection failed a change: {change:?}");
            (change.state() == St::Completed).then_some(())
        })
        .await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let ended = killer.await.unwrap();
    assert!(ended > 0, "the test ended no session");

    // Each request submitted once, with each transition once; every number moved and re-granted.
    let listed = app
        .partner_change(&as_client)
        .list_partner_changes(pc::ListPartnerChangesRequest { page_size: 100, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .partner_changes;
    assert_eq!(listed.len(), CHANGES, "no request lost or repeated");
    for id in &ids {
        assert_eq!(get_change(&app, id).await.state(), St::Completed);
        assert_eq!(
            history_types(&app, id).await,
            [Ev::Submitted, Ev::Approved, Ev::MigrationStarted, Ev::Completed],
            "the history of {id}"
        );
    }
    for number in &all_numbers {
        assert!(!allowed(&app, &source.partner_id, number).await, "old partner keeps {number}");
        assert!(allowed(&app, &destination.partner_id, number).await, "new partner lacks {number}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_reports_not_serving_while_the_database_refuses_connections() {
    let app = TestApp::spawn_with(Backend::Postgres, |settings| {
        settings.database.health_check_interval = Duration::from_millis(100);
        settings.database.not_serving_after = Duration::from_millis(500);
    })
    .await;
    let partner = fixtures::partner(&app, "Acme", pb::PaymentProcessor::Stripe).await;
    let get_partner = || {
        let mut support = app.account("support:s");
        let request = pb::GetPartnerRequest { partner_id: partner.partner_id.clone() };
        async move { support.get_partner(request).await }
    };
    for service in SERVICES.into_iter().chain([""]) {
        assert_eq!(status_of(&app, service).await, ServingStatus::Serving, "{service}");
    }

    let admin = Database::connect(postgres_admin_url()).await.unwrap();
    let name = database_name(&app);
    admin.execute_unprepared(&format!("ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS false")).await.unwrap();
    end_sessions(&admin, &name).await;

    eventually("every service to report NOT_SERVING", Duration::from_secs(10), || async {
        let mut statuses = Vec::new();
        for service in SERVICES {
            statuses.push(status_of(&app, service).await);
        }
        statuses.iter().all(|status| *status == ServingStatus::NotServing).then_some(())
    })
    .await;
    assert_eq!(status_of(&app, "").await, ServingStatus::Serving, "the process is alive: liveness stays SERVING");
    let refused = get_partner().await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "a database that refuses is no server defect: {refused:?}");

    admin.execute_unprepared(&format!("ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS true")).await.unwrap();
    eventually("every service to report SERVING again", Duration::from_secs(10), || async {
        let mut statuses = Vec::new();
        for service in SERVICES {
            statuses.push(status_of(&app, service).await);
        }
        statuses.iter().all(|status| *status == ServingStatus::Serving).then_some(())
    })
    .await;
    let answered = get_partner().await.unwrap().into_inner().partner.unwrap();
    assert_eq!(answered.partner_id, partner.partner_id);
}
