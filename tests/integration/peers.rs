//! Several replicas per peer: calls are spread over those that answer, and a
//! replica that is gone (or never was) costs no call.

use partnerhub_proto::partnerchange::v1 as pc;
use partnerhub_tests::{Backend, ServiceSections, TestApp, on_both_databases};

use crate::fixtures::{allowed, scenario, wait_for_state};

on_both_databases!(peer_calls_reach_a_replica_that_answers,);

fn url(app: &TestApp) -> String {
    format!("http://{}", app.addr())
}

/// An address where nothing listens: connections to it are refused.
fn dead_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", listener.local_addr().unwrap())
}

async fn peer_calls_reach_a_replica_that_answers(backend: Backend) {
    // A and C are full replicas without a migration worker; B finds its
    // account and permissions peers at [nowhere, C, A] and runs the migration.
    let a = TestApp::spawn_with(backend, |settings| settings.partner_change().worker.enabled = false).await;
    let c = a.spawn_replica().await;
    let peers = vec![dead_address(), url(&c), url(&a)];
    let b = a
        .spawn_replica_with(|settings| {
            settings.partner_change().worker.enabled = true;
            settings.peers.urls.insert("account_urls".to_owned(), partnerhub_runtime::config::Addresses(peers.clone()));
            settings
                .peers
                .urls
                .insert("permissions_urls".to_owned(), partnerhub_runtime::config::Addresses(peers.clone()));
        })
        .await;
    let s = scenario(&a, false).await;
    // SetPartnerPermissions on B asks B's account peer where the numbers are.
    s.grant(&b, &s.source.partner_id, &s.waba.phone_numbers).await;

    let preview_through_b = || async {
        let preview = b
            .partner_change(&s.client_subject())
            .preview_partner_change(pc::PreviewPartnerChangeRequest {
                waba_id: s.waba.waba_id.clone(),
                destination_partner_id: s.destination.partner_id.clone(),
                migrate_after: None,
            })
            .await
            .expect("a preview through B must not see the unreachable replica")
            .into_inner();
        assert!(preview.blockers.is_empty(), "{preview:?}");
    };
    for _ in 0..9 {
        preview_through_b().await;
    }
    // C goes away with B's connection to it open.
    drop(c);
    for _ in 0..9 {
        preview_through_b().await;
    }

    // B's migration worker transfers the WABA and moves the permissions
    // through the replicas that are left.
    let submitted = b
        .partner_change(&s.client_subject())
        .submit_partner_change(s.submit_request("through-b"))
        .await
        .unwrap()
        .into_inner()
        .partner_change
        .unwrap();
    s.approve(&b, &submitted.partner_change_id).await;
    wait_for_state(&b, &submitted.partner_change_id, pc::PartnerChangeState::Completed).await;
    assert_eq!(s.waba_now(&a).await.partner_id, s.destination.partner_id);
    assert!(!allowed(&a, &s.source.partner_id, &s.waba.phone_numbers[0]).await);
}
