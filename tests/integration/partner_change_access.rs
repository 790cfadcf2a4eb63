//! Who may do what with partner changes, and what lists show: a partner never
//! sees or acts on requests not to or from it; a client never sees another
//! client's; list filters and pagination.

use partnerhub_proto::partnerchange::v1 as pc;
use partnerhub_tests::{Backend, ServiceSections, TestApp, assert_refused, on_both_databases, violated_fields};
use pc::PartnerChangeState as St;
use tonic::Code;

use crate::fixtures::{self, Scenario, scenario};

on_both_databases!(
    every_partner_change_rpc_answers_each_subject_as_specified,
    lists_filter_and_page_newest_first,
    a_list_is_planned_for_the_tenant_it_names,
);

#[derive(Debug, Clone, Copy)]
enum Rpc {
    Preview,
    Submit,
    Get,
    History,
    Approve,
    Reject,
    Cancel,
    Retry,
}

const OK: Code = Code::Ok;
const PD: Code = Code::PermissionDenied;
const NF: Code = Code::NotFound;
/// Allowed, but a pending request cannot be retried.
const FP: Code = Code::FailedPrecondition;

/// Columns: owner client, another client, source partner, destination partner,
/// an unrelated partner, a service, support. A kind of subject that may never
/// make a call is denied before the request is looked at (PERMISSION_DENIED,
/// whoever's request it names); one that may, on a request it cannot see, gets
/// NOT_FOUND exactly as for a missing one.
const MATRIX: &[(Rpc, [Code; 7])] = &[
    (Rpc::Preview, [OK, NF, PD, PD, PD, PD, OK]),
    (Rpc::Submit, [OK, NF, PD, PD, PD, PD, OK]),
    (Rpc::Get, [OK, NF, OK, OK, NF, OK, OK]),
    (Rpc::History, [OK, NF, OK, OK, NF, OK, OK]),
    (Rpc::Approve, [PD, PD, PD, OK, NF, PD, PD]),
    (Rpc::Reject, [PD, PD, PD, OK, NF, PD, PD]),
    (Rpc::Cancel, [OK, NF, PD, PD, PD, PD, OK]),
    (Rpc::Retry, [PD, PD, PD, PD, PD, PD, FP]),
];

async fn every_partner_change_rpc_answers_each_subject_as_specified(backend: Backend) {
    let app = TestApp::spawn_with(backend, |settings| settings.partner_change().worker.enabled = false).await;
    let s = scenario(&app, false).await;
    let other_client = fixtures::eligible_client(&app, "Other Ltd").await;
    let unrelated = fixtures::partner(&app, "Unrelated", partnerhub_proto::account::v1::PaymentProcessor::Stripe).await;
    let subjects = [
        s.client_subject(),
        format!("client:{}", other_client.client_id),
        s.source_subject(),
        s.destination_subject(),
        format!("partner:{}", unrelated.partner_id),
        "service:messaging".to_owned(),
        "support:alice".to_owned(),
    ];
    let mut mismatches = Vec::new();
    for (rpc, expected) in MATRIX {
        for (subject, expected) in subjects.iter().zip(expected) {
            // A fresh WABA, and a pending request on it, for every attempt.
            let waba =
                fixtures::waba(&app, &s.client.client_id, &s.source.partner_id, &[&fixtures::unique_number()]).await;
            let fresh = Scenario { waba, ..s.clone() };
            let pending = app
                .partner_change("support:setup")
                .submit_partner_change(fresh.submit_request(&format!("setup-{}", uuid::Uuid::new_v4().simple())))
                .await
                .unwrap()
                .into_inner()
                .partner_change
                .unwrap();
            let id = pending.partner_change_id.clone();
            let mut client = app.partner_change(subject);
            let result = match rpc {
                Rpc::Preview => client
                    .preview_partner_change(pc::PreviewPartnerChangeRequest {
                        waba_id: fresh.waba.waba_id.clone(),
                        destination_partner_id: fresh.destination.partner_id.clone(),
                        migrate_after: None,
                    })
                    .await
                    .map(drop),
                Rpc::Submit => {
                    // Its own WABA, since the fresh one already has an open request.
                    let waba =
                        fixtures::waba(&app, &s.client.client_id, &s.source.partner_id, &[&fixtures::unique_number()])
                            .await;
                    let request = pc::SubmitPartnerChangeRequest {
                        waba_id: waba.waba_id,
                        ..fresh.submit_request(&format!("r-{}", uuid::Uuid::new_v4().simple()))
                    };
                    client.submit_partner_change(request).await.map(drop)
                }
                Rpc::Get => {
                    client.get_partner_change(pc::GetPartnerChangeRequest { partner_change_id: id }).await.map(drop)
                }
                Rpc::History => client
                    .get_partner_change_history(pc::GetPartnerChangeHistoryRequest { partner_change_id: id })
                    .await
                    .map(drop),
                Rpc::Approve => client
                    .approve_partner_change(pc::ApprovePartnerChangeRequest { partner_change_id: id })
                    .await
                    .map(drop),
                Rpc::Reject => client
                    .reject_partner_change(pc::RejectPartnerChangeRequest {
                        partner_change_id: id,
                        reason: "no".into(),
                    })
                    .await
                    .map(drop),
                Rpc::Cancel => client
                    .cancel_partner_change(pc::CancelPartnerChangeRequest {
                        partner_change_id: id,
                        reason: String::new(),
                    })
                    .await
                    .map(drop),
                Rpc::Retry => {
                    client.retry_partner_change(pc::RetryPartnerChangeRequest { partner_change_id: id }).await.map(drop)
                }
            };
            let actual = result.err().map_or(Code::Ok, |status| status.code());
            if actual != *expected {
                mismatches.push(format!("{rpc:?} as {subject}: expected {expected:?}, got {actual:?}"));
            }
            // Whatever was refused left the request as it was.
            let now = fixtures::get_change(&app, &pending.partner_change_id).await;
            if *expected != Code::Ok && now.state() != St::PendingApproval {
                mismatches
                    .push(format!("{rpc:?} as {subject} was refused but changed the request to {:?}", now.state()));
            }
        }
    }
    assert!(mismatches.is_empty(), "authorization mismatches:\n{}", mismatches.join("\n"));
}

async fn lists_filter_and_page_newest_first(backend: Backend) {
    let app = TestApp::spawn_with(backend, |settings| settings.partner_change().worker.enabled = false).await;
    let s = scenario(&app, false).await;
    let (a, b) = (s.source.clone(), s.destination.clone());
    let c = fixtures::partner_with(
        &app,
        "C",
        partnerhub_proto::account::v1::PaymentProcessor::Stripe,
        fixtures::settings(false),
    )
    .await;
    let waba_at = |partner: String| {
        let app = &app;
        let client_id = s.client.client_id.clone();
        async move { fixtures::waba(app, &client_id, &partner, &[&fixtures::unique_number()]).await }
    };
    // a → b (pending), a → c (rejected), b → a (pending); each with its own WABA.
    let a_to_b = Scenario { waba: waba_at(a.partner_id.clone()).await, ..s.clone() };
    let first = a_to_b.submit(&app, "one").await;
    let a_to_c = Scenario { waba: waba_at(a.partner_id.clone()).await, destination: c.clone(), ..s.clone() };
    let second = a_to_c.submit(&app, "two").await;
    app.partner_change(&a_to_c.destination_subject())
        .reject_partner_change(pc::RejectPartnerChangeRequest {
            partner_change_id: second.partner_change_id.clone(),
            reason: "no".into(),
        })
        .await
        .unwrap();
    let b_to_a =
        Scenario { waba: waba_at(b.partner_id.clone()).await, source: b.clone(), destination: a.clone(), ..s.clone() };
    let third = b_to_a.submit(&app, "three").await;

    let list = |subject: String, request: pc::ListPartnerChangesRequest| {
        let app = &app;
        async move {
            app.partner_change(&subject).list_partner_changes(request).await.map(|response| {
                response
                    .into_inner()
                    .partner_changes
                    .into_iter()
                    .map(|change| change.partner_change_id)
                    .collect::<Vec<_>>()
            })
        }
    };
    let as_a = format!("partner:{}", a.partner_id);
    let ids = |changes: &[&pc::PartnerChange]| {
        changes.iter().map(|change| change.partner_change_id.clone()).collect::<Vec<_>>()
    };
    let direction =
        |direction: pc::Direction| pc::ListPartnerChangesRequest { direction: direction.into(), ..Default::default() };

    assert_eq!(
        list(as_a.clone(), direction(pc::Direction::Outgoing)).await.unwrap(),
        ids(&[&second, &first]),
        "newest first"
    );
    assert_eq!(list(as_a.clone(), direction(pc::Direction::Incoming)).await.unwrap(), ids(&[&third]));
    assert_eq!(
        list(as_a.clone(), direction(pc::Direction::Unspecified)).await.unwrap(),
        ids(&[&third, &second, &first])
    );
    let rejected =
        pc::ListPartnerChangesRequest { states: vec![St::Rejected.into()], ..direction(pc::Direction::Outgoing) };
    assert_eq!(list(as_a.clone(), rejected).await.unwrap(), ids(&[&second]));
    let with_c =
        pc::ListPartnerChangesRequest { other_party_id: c.partner_id.clone(), ..direction(pc::Direction::Outgoing) };
    assert_eq!(list(as_a.clone(), with_c).await.unwrap(), ids(&[&second]));
    let with_b = pc::ListPartnerChangesRequest { other_party_id: b.partner_id.clone(), ..Default::default() };
    assert_eq!(list(as_a.clone(), with_b).await.unwrap(), ids(&[&third, &first]), "either direction with b");
    let window = pc::ListPartnerChangesRequest {
        created_after: first.create_time,
        created_before: third.create_time,
        ..Default::default()
    };
    assert_eq!(list(as_a.clone(), window).await.unwrap(), ids(&[&second]), "strictly between");
    assert_eq!(
        list(format!("partner:{}", c.partner_id), Default::default()).await.unwrap(),
        ids(&[&second]),
        "c sees only its own"
    );
    let client_with_c = pc::ListPartnerChangesRequest { other_party_id: c.partner_id.clone(), ..Default::default() };
    assert_eq!(list(s.client_subject(), client_with_c).await.unwrap(), ids(&[&second]));
    let other_client = fixtures::client(&app, "Other").await;
    assert!(list(format!("client:{}", other_client.client_id), Default::default()).await.unwrap().is_empty());

    // Pages of one, newest first, each once; a token replayed with other filters is refused.
    let mut seen = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = app
            .partner_change(&as_a)
            .list_partner_changes(pc::ListPartnerChangesRequest {
                page_size: 1,
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.partner_changes.into_iter().map(|change| change.partner_change_id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(seen, ids(&[&third, &second, &first]));
    let first_page = app
        .partner_change(&as_a)
        .list_partner_changes(pc::ListPartnerChangesRequest { page_size: 1, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let replayed = app
        .partner_change(&as_a)
        .list_partner_changes(pc::ListPartnerChangesRequest {
            page_size: 1,
            page_token: first_page.next_page_token,
            ..direction(pc::Direction::Incoming)
        })
        .await;
    assert_refused(replayed, Code::InvalidArgument, "INVALID_REQUEST");

    // Malformed filters.
    let bad_state = list(as_a.clone(), pc::ListPartnerChangesRequest { states: vec![42], ..Default::default() }).await;
    assert_eq!(violated_fields(&bad_state.unwrap_err()), ["states[0]"]);
    let client_direction = list(s.client_subject(), direction(pc::Direction::Incoming)).await;
    assert_eq!(client_direction.unwrap_err().code(), Code::InvalidArgument);
    let support_unscoped = list("support:s".into(), Default::default()).await;
    assert_eq!(support_unscoped.unwrap_err().code(), Code::InvalidArgument);
    let support_scoped = pc::ListPartnerChangesRequest { client_id: s.client.client_id.clone(), ..Default::default() };
    assert_eq!(list("support:s".into(), support_scoped).await.unwrap().len(), 3);
}

/// A list names one tenant, and the best plan depends on which: PostgreSQL's
/// generic plan for a cached prepared statement (used after five runs) is costed
/// for the average tenant and, beside one big tenant, scans the whole table for
/// a small one. So the list is never a cached prepared statement: after more
/// than five lists on one connection, none is left prepared there. (SQLite plans
/// with the values anyway; there the lists must simply come back right.)
async fn a_list_is_planned_for_the_tenant_it_names(backend: Backend) {
    use partnerhub_partner_change::store::{self, ListFilter, ListScope};
    use sea_orm::{ConnectOptions, ConnectionTrait, Database, Statement};

    let app = TestApp::spawn_with(backend, |settings| settings.partner_change().worker.enabled = false).await;
    let s = scenario(&app, false).await;
    let submitted = s.submit(&app, "planned").await;
    let mut options = ConnectOptions::new(app.database_url());
    options.max_connections(1);
    let db = Database::connect(options).await.unwrap();
    let filter = |client_id: &str| ListFilter {
        scope: ListScope::Client(client_id.to_owned()),
        states: Vec::new(),
        other_party_id: None,
        created_after: None,
        created_before: None,
        scheduled_before: None,
    };
    for _ in 0..7 {
        let (changes, more) = store::list(&db, &filter(&s.client.client_id), None, 10).await.unwrap();
        let ids: Vec<_> = changes.iter().map(|change| change.partner_change_id.as_str()).collect();
        assert_eq!((ids, more), (vec![submitted.partner_change_id.as_str()], false));
        let (changes, _) = store::list(&db, &filter("client-with-nothing"), None, 10).await.unwrap();
        assert!(changes.is_empty());
    }
    if backend == Backend::Postgres {
        // The pattern is a parameter, so this query's own text does not match it.
        let prepared = db
            .query_one_raw(Statement::from_sql_and_values(
                db.get_database_backend(),
                "SELECT count(*) AS lists FROM pg_prepared_statements WHERE statement LIKE $1",
                ["%FROM \"partner_changes\"%ORDER BY%".into()],
            ))
            .await
            .unwrap()
            .unwrap()
            .try_get::<i64>("", "lists")
            .unwrap();
        assert_eq!(prepared, 0, "a list was left a prepared statement, open to a generic plan");
    }
}
