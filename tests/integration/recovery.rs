//! The real binary meeting what production meets: SIGKILLed mid-migration and
//! started again, and a database that goes away for a while. With the default
//! configuration, the restarted process finishes its own unfinished migration
//! within ten seconds of starting; during an outage each background task says
//! once that it is failing and once that it recovered, and readiness follows.

use std::{collections::HashMap, time::Duration};

use base64::Engine as _;
use partnerhub_proto::partnerchange::v1::{PartnerChangeEventType as Ev, PartnerChangeState as St};
use partnerhub_tests::{Backend, TestDatabase, binary::ServerProcess, database::postgres_admin_url, eventually};
use sea_orm::{ConnectionTrait, Database};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

use crate::fixtures::{get_change, history_types, scenario};

/// Accepts connections and never answers: a peer replica that hangs.
async fn black_hole() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_restarted_after_sigkill_completes_its_unfinished_migration_within_ten_seconds() {
    let data_dir = std::env::temp_dir().join(format!("partnerhub-recovery-{}", uuid::Uuid::new_v4().simple()));
    // The migration's permission calls hang in a peer that never answers, so
    // the saga is held mid-way (the WABA moved, its lease held) when the process dies.
    let hanging_permissions = format!("http://{}", black_hole().await);
    let server = ServerProcess::start_with(
        &data_dir,
        &[],
        &[("PARTNERHUB__PEERS__PERMISSIONS_URLS", hanging_permissions.as_str())],
    );
    let clients = server.clients(None);
    let s = scenario(&clients, true).await;
    let submitted = s.submit(&clients, "req").await;
    eventually("the WABA to move", Duration::from_secs(10), || async {
        (s.waba_now(&clients).await.partner_id == s.destination.partner_id).then_some(())
    })
    .await;
    assert_eq!(get_change(&clients, &submitted.partner_change_id).await.state(), St::Migrating);
    server.kill();

    let restarted = ServerProcess::start(&data_dir);
    let clients = restarted.clients(None);
    eventually("the restarted process to complete the migration", Duration::from_secs(10), || async {
        (get_change(&clients, &submitted.partner_change_id).await.state() == St::Completed).then_some(())
    })
    .await;
    assert_eq!(
        history_types(&clients, &submitted.partner_change_id).await,
        [Ev::Submitted, Ev::Approved, Ev::MigrationStarted, Ev::Completed]
    );
    drop(restarted);
    let _ = std::fs::remove_dir_all(&data_dir);
}

async fn services_status(addr: std::net::SocketAddr) -> Vec<ServingStatus> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}")).unwrap().connect_lazy();
    let mut health = HealthClient::new(channel);
    let mut statuses = Vec::new();
    for service in [
        "partnerhub.account.v1.AccountService",
        "partnerhub.partnerchange.v1.PartnerChangeService",
        "partnerhub.permissions.v1.PermissionsService",
    ] {
        let request = HealthCheckRequest { service: service.to_owned() };
        statuses.push(health.check(request).await.unwrap().into_inner().status());
    }
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_is_reported_once_per_task_and_flips_readiness() {
    let database = TestDatabase::create(Backend::Postgres).await;
    let url = database.url().unwrap();
    let key = base64::engine::general_purpose::STANDARD.encode(uuid::Uuid::new_v4().as_bytes().repeat(2));
    let server = ServerProcess::start_with(
        database.data_dir(),
        &[],
        &[("PARTNERHUB__DATABASE__URL", url.as_str()), ("PARTNERHUB__AUTH__SIGNING_KEY", key.as_str())],
    );
    assert!(services_status(server.addr).await.iter().all(|status| *status == ServingStatus::Serving));

    let admin = Database::connect(postgres_admin_url()).await.unwrap();
    let name = url.rsplit('/').next().unwrap().to_owned();
    admin.execute_unprepared(&format!("ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS false")).await.unwrap();
    admin
        .execute_unprepared(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid()"
        ))
        .await
        .unwrap();
    // The default grace is 3 s; meanwhile every loop (1 s polls) retries several times.
    eventually("readiness to report NOT_SERVING", Duration::from_secs(15), || async {
        services_status(server.addr).await.iter().all(|status| *status == ServingStatus::NotServing).then_some(())
    })
    .await;
    // A call that needs the database meanwhile is UNAVAILABLE (retry), never INTERNAL.
    let refused = server
        .clients(Some(&key))
        .webhooks("partner:p1")
        .list_webhook_endpoints(partnerhub_proto::webhooks::v1::ListWebhookEndpointsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    admin.execute_unprepared(&format!("ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS true")).await.unwrap();
    eventually("readiness to report SERVING again", Duration::from_secs(15), || async {
        services_status(server.addr).await.iter().all(|status| *status == ServingStatus::Serving).then_some(())
    })
    .await;
    eventually("the background tasks to report their recovery", Duration::from_secs(10), || async {
        let log = server.log();
        (log.matches("background task recovered").count() >= log.matches("background task failing").count())
            .then_some(())
    })
    .await;

    // Several attempts failed in each task, yet each said so once, and once that it recovered.
    let log = server.log();
    let mut failing: HashMap<String, usize> = HashMap::new();
    for line in log.lines().filter(|line| line.contains("background task failing")) {
        let task = line.split("task=").nth(1).and_then(|rest| rest.split_whitespace().next()).unwrap_or("?");
        *failing.entry(task.trim_matches('"').to_owned()).or_default() += 1;
    }
    for task in ["migration_worker", "database_health_check", "webhook_dispatcher"] {
        assert!(failing.contains_key(task), "{task} did not report the outage:\n{log}");
    }
    assert!(failing.values().all(|count| *count == 1), "each task reports an outage once: {failing:?}\n{log}");
    let errors = log.lines().filter(|line| line.contains("ERROR")).count();
    assert_eq!(errors, failing.values().sum::<usize>(), "no other error lines during the outage:\n{log}");
    let recovered =
        log.lines().find(|line| line.contains("background task recovered") && line.contains("migration_worker"));
    assert!(recovered.is_some_and(|line| line.contains("failed_attempts=")), "{log}");
    assert!(server.terminate().success());
}
