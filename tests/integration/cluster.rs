//! The production shape, end to end: `deploy/cluster.sh` starts every service
//! as its own processes on PostgreSQL; the client, the destination partner and
//! the stream subscriber each talk to a different replica; replicas are killed
//! (SIGKILL) and the database ends every process's sessions mid-way, and the
//! work still completes, exactly once.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use partnerhub_proto::{
    account::v1::{GetWabaRequest, PaymentProcessor},
    partnerchange::v1 as pc,
    permissions::v1::CheckPermissionRequest,
};
use partnerhub_tests::{
    Deployment,
    cluster::{Cluster, sample},
    database::postgres_admin_url,
    eventually,
};
use pc::{PartnerChangeEventType as Ev, PartnerChangeState as St};
use sea_orm::ConnectionTrait;
use tonic::Code;

use crate::fixtures;

const CHANGES: usize = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partner_changes_complete_across_replicas_when_replicas_are_killed() {
    // A killed worker's lease lapses in 2 s; the others look for work often.
    let cluster = Cluster::start(
        3,
        &[
            ("PARTNERHUB__PARTNER_CHANGE__WORKER__LEASE", "2s"),
            ("PARTNERHUB__PARTNER_CHANGE__WORKER__POLL_INTERVAL", "100ms"),
            ("PARTNERHUB__PARTNER_CHANGE__WORKER__BACKOFF_INITIAL", "50ms"),
            ("PARTNERHUB__PARTNER_CHANGE__WORKER__BACKOFF_MAX", "500ms"),
        ],
    )
    .await;
    // Set-up through the first replicas: a client with CHANGES WABAs, all with one partner.
    let setup = cluster.view("account-1", "partner-change-1", "permissions-1");
    let source = fixtures::partner_with(&setup, "Source", PaymentProcessor::Stripe, fixtures::settings(false)).await;
    let destination =
        fixtures::partner_with(&setup, "Destination", PaymentProcessor::Stripe, fixtures::settings(false)).await;
    let client = fixtures::eligible_client(&setup, "Bakery Ltd").await;
    let wabas = fixtures::wabas(&setup, &client.client_id, &source.partner_id, CHANGES).await;
    let all_numbers: Vec<String> = wabas.iter().flat_map(|waba| waba.phone_numbers.clone()).collect();
    let as_client = format!("client:{}", client.client_id);
    let as_destination = format!("partner:{}", destination.partner_id);
    cluster
        .permissions("permissions-1", &as_client)
        .set_partner_permissions(partnerhub_proto::permissions::v1::SetPartnerPermissionsRequest {
            client_id: client.client_id.clone(),
            partner_id: source.partner_id.clone(),
            phone_numbers: all_numbers.clone(),
        })
        .await
        .unwrap();

    // The destination partner watches its requests on the third replica.
    let mut stream = cluster
        .partner_change("partner-change-3", &as_destination)
        .watch_partner_change_events(pc::WatchPartnerChangeEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let metrics_before = cluster.scrape("partner-change-2").await;

    // The client submits on the first replica, the partner approves on the second.
    let mut ids = Vec::new();
    for (index, waba) in wabas.iter().enumerate() {
        let submitted = cluster
            .partner_change("partner-change-1", &as_client)
            .submit_partner_change(pc::SubmitPartnerChangeRequest {
                request_id: format!("cluster-{index}"),
                waba_id: waba.waba_id.clone(),
                destination_partner_id: destination.partner_id.clone(),
                accepted_terms_version: fixtures::TERMS.to_owned(),
                grant_phone_numbers: Vec::new(),
                migrate_after: None,
            })
            .await
            .unwrap()
            .into_inner()
            .partner_change
            .unwrap();
        ids.push(submitted.partner_change_id);
    }
    // Half the approvals, then mid-way the client's replica (whose workers
    // may hold leases on those) and one account replica (which every
    // worker's transfers are spread over) die at once; then the other half.
    // A lost connection answers UNAVAILABLE (or ABORTED), never INTERNAL; the
    // partner tries again, and finds it approved if the first try had committed.
    let approve = |id: &String| {
        let mut as_partner = cluster.partner_change("partner-change-2", &as_destination);
        let request = pc::ApprovePartnerChangeRequest { partner_change_id: id.clone() };
        async move {
            for _ in 0..100 {
                match as_partner.approve_partner_change(request.clone()).await {
                    Ok(_) => return,
                    Err(status) if matches!(status.code(), Code::Unavailable | Code::Aborted) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(status) if partnerhub_tests::reason(&status) == "INVALID_STATE" => return,
                    Err(status) => panic!("approving {} failed: {status:?}", request.partner_change_id),
                }
            }
            panic!("approving {} stayed unavailable", request.partner_change_id);
        }
    };
    // Meanwhile the database ends every session of the cluster's processes
    // every 200 ms (what a restart or a failover does to them).
    let admin = sea_orm::Database::connect(postgres_admin_url()).await.unwrap();
    let database = cluster.database_name();
    let ending_sessions = Arc::new(AtomicBool::new(true));
    let sessions_ended = Arc::new(AtomicU64::new(0));
    let session_killer = tokio::spawn({
        let (ending_sessions, sessions_ended) = (ending_sessions.clone(), sessions_ended.clone());
        async move {
            while ending_sessions.load(Ordering::Relaxed) {
                let statement = format!(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database}' AND pid <> pg_backend_pid()"
                );
                let ended = admin.execute_unprepared(&statement).await.unwrap().rows_affected();
                sessions_ended.fetch_add(ended, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
    let (first_half, second_half) = ids.split_at(CHANGES / 2);
    for id in first_half {
        approve(id).await;
    }
    cluster.kill("partner-change-1");
    cluster.kill("account-1");
    for id in second_half {
        approve(id).await;
    }
    // The sagas run on while sessions keep ending (some more of the cluster's
    // sessions are ended after the last approval), then the database calms down.
    let ended_by_now = sessions_ended.load(Ordering::Relaxed);
    eventually("more sessions to be ended while the sagas run", Duration::from_secs(10), || async {
        (sessions_ended.load(Ordering::Relaxed) > ended_by_now).then_some(())
    })
    .await;
    ending_sessions.store(false, Ordering::Relaxed);
    session_killer.await.unwrap();
    assert!(sessions_ended.load(Ordering::Relaxed) > 0, "no session was ended");

    let survivor = cluster.view("account-2", "partner-change-2", "permissions-2");
    for id in &ids {
        eventually(&format!("{id} to complete"), Duration::from_secs(60), || async {
            let change = fixtures::get_change(&survivor, id).await;
            assert_ne!(change.state(), St::Failed, "{change:?}");
            (change.state() == St::Completed).then_some(())
        })
        .await;
    }
    for id in &ids {
        let types: Vec<Ev> = fixtures::history(&survivor, id).await.iter().map(|entry| entry.event_type()).collect();
        assert_eq!(types, [Ev::Submitted, Ev::Approved, Ev::MigrationStarted, Ev::Completed], "history of {id}");
    }

    // Every WABA moved; the old partner lost every number.
    for waba in &wabas {
        let now = survivor
            .account("support:check")
            .get_waba(GetWabaRequest { waba_id: waba.waba_id.clone() })
            .await
            .unwrap()
            .into_inner()
            .waba
            .unwrap();
        assert_eq!(now.partner_id, destination.partner_id);
    }
    for number in &all_numbers {
        let allowed = cluster
            .permissions("permissions-3", "service:messaging")
            .check_permission(CheckPermissionRequest {
                partner_id: source.partner_id.clone(),
                phone_number: number.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .allowed;
        assert!(!allowed, "{number} is still managed by the old partner");
    }

    // The subscriber on the third replica saw each step of each change exactly
    // once, in order, with no gaps in any request's history.
    let mut seen: HashMap<String, Vec<Ev>> = HashMap::new();
    let expected = [Ev::Submitted, Ev::Approved, Ev::MigrationStarted, Ev::Completed];
    while seen.values().map(Vec::len).sum::<usize>() < CHANGES * expected.len() {
        let message = tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .expect("the subscriber gets every event")
            .unwrap()
            .expect("the stream stays open");
        if let Some(pc::watch_partner_change_events_response::Kind::Event(event)) = message.kind {
            let id = event.partner_change.as_ref().unwrap().partner_change_id.clone();
            seen.entry(id).or_default().push(event.r#type());
        }
    }
    for id in &ids {
        assert_eq!(seen.get(id).map(Vec::as_slice), Some(expected.as_slice()), "events of {id}");
    }

    // The approving replica counted its calls; the survivors ran the sagas
    // that the killed replica did not finish.
    let metrics_after = cluster.scrape("partner-change-2").await;
    let approvals = r#"partnerhub_rpc_server_calls_total{service="partnerhub.partnerchange.v1.PartnerChangeService",method="ApprovePartnerChange",code="OK"}"#;
    assert_eq!(sample(&metrics_before, approvals), 0.0);
    assert_eq!(sample(&metrics_after, approvals), CHANGES as f64);

    // Without tracing on, each request's log lines still carry a trace ID
    // (a new one here: the calls sent none) and the partner change ID as the resource.
    let log = std::fs::read_to_string(&cluster.member("partner-change-2").log).unwrap();
    let approvals: Vec<&str> = log.lines().filter(|line| line.contains("partner change approved")).collect();
    assert_eq!(approvals.len(), CHANGES, "{log}");
    for line in approvals {
        assert!(line.contains("rpc{trace_id=") && line.contains("resource_id=\"pc-"), "{line}");
    }

    // The launcher noticed, and kept the rest running.
    eventually("the launcher to report the killed replica", Duration::from_secs(5), || async {
        cluster.launcher_log().contains("partner-change-1 exited").then_some(())
    })
    .await;
    let status = cluster.stop();
    assert!(status.success(), "the launcher stops cleanly: {status}");
}
