//! `TransferWaba`: compare-and-set on the current partner, idempotent per
//! partner change, and exactly one winner among concurrent transfers.

use partnerhub_proto::account::v1 as pb;
use partnerhub_tests::{Backend, TestApp, assert_refused, on_both_databases, reason};
use tonic::Code;

use crate::fixtures::{self, unique_number};

on_both_databases!(
    a_transfer_moves_the_waba_once_per_partner_change,
    a_stale_or_unknown_transfer_is_refused_and_changes_nothing,
    of_concurrent_transfers_of_one_waba_exactly_one_wins,
    concurrent_repeats_of_one_transfer_apply_it_once,
    one_partner_change_id_sent_for_two_wabas_at_once_moves_one,
    a_number_added_while_the_move_waits_is_among_the_moved_numbers,
);

fn transfer(waba_id: &str, from: &str, to: &str, partner_change_id: &str) -> pb::TransferWabaRequest {
    pb::TransferWabaRequest {
        waba_id: waba_id.into(),
        from_partner_id: from.into(),
        to_partner_id: to.into(),
        partner_change_id: partner_change_id.into(),
    }
}

struct Setup {
    app: TestApp,
    p1: String,
    p2: String,
    p3: String,
    waba: pb::Waba,
}

async fn setup(backend: Backend) -> Setup {
    let app = TestApp::spawn(backend).await;
    let p1 = fixtures::partner(&app, "P1", pb::PaymentProcessor::Stripe).await.partner_id;
    let p2 = fixtures::partner(&app, "P2", pb::PaymentProcessor::Stripe).await.partner_id;
    let p3 = fixtures::partner(&app, "P3", pb::PaymentProcessor::Stripe).await.partner_id;
    let client = fixtures::client(&app, "C").await;
    let waba = fixtures::waba(&app, &client.client_id, &p1, &[&unique_number(), &unique_number()]).await;
    Setup { app, p1, p2, p3, waba }
}

async fn a_transfer_moves_the_waba_once_per_partner_change(backend: Backend) {
    let Setup { app, p1, p2, p3, waba } = setup(backend).await;
    let mut service = app.account("service:partner-change");

    let first = service.transfer_waba(transfer(&waba.waba_id, &p1, &p2, "pc-1")).await.unwrap().into_inner();
    assert!(!first.already_applied);
    let moved = first.waba.unwrap();
    assert_eq!(moved.partner_id, p2);
    assert_eq!(moved.phone_numbers, waba.phone_numbers, "every number moves with the WABA");

    let repeat = service.transfer_waba(transfer(&waba.waba_id, &p1, &p2, "pc-1")).await.unwrap().into_inner();
    assert!(repeat.already_applied, "a repeat says it changed nothing");
    assert_eq!(repeat.waba.unwrap(), moved, "and returns the same result");

    let reused = service.transfer_waba(transfer(&waba.waba_id, &p1, &p3, "pc-1")).await;
    assert_refused(reused, Code::FailedPrecondition, "IDEMPOTENCY_KEY_REUSED");

    let onward = service.transfer_waba(transfer(&waba.waba_id, &p2, &p3, "pc-2")).await.unwrap().into_inner();
    assert_eq!(onward.waba.unwrap().partner_id, p3, "a later partner change moves it again");

    // The old partner no longer sees the WABA; the new one does.
    let as_p1 =
        app.account(&format!("partner:{p1}")).get_waba(pb::GetWabaRequest { waba_id: waba.waba_id.clone() }).await;
    assert_refused(as_p1, Code::NotFound, "WABA_NOT_FOUND");
    let as_p3 =
        app.account(&format!("partner:{p3}")).get_waba(pb::GetWabaRequest { waba_id: waba.waba_id.clone() }).await;
    assert_eq!(as_p3.unwrap().into_inner().waba.unwrap().partner_id, p3);
}

async fn a_stale_or_unknown_transfer_is_refused_and_changes_nothing(backend: Backend) {
    let Setup { app, p1, p2, p3, waba } = setup(backend).await;
    let mut service = app.account("service:partner-change");

    let stale = service.transfer_waba(transfer(&waba.waba_id, &p2, &p3, "pc-stale")).await.unwrap_err();
    assert_eq!(stale.code(), Code::FailedPrecondition);
    assert_eq!(reason(&stale), "SOURCE_PARTNER_MISMATCH");
    use tonic_types::StatusExt;
    let info = stale.get_details_error_info().unwrap();
    assert_eq!(info.metadata.get("currentPartnerId"), Some(&p1));

    let no_waba = service.transfer_waba(transfer("waba-nope", &p1, &p2, "pc-x")).await;
    assert_refused(no_waba, Code::NotFound, "WABA_NOT_FOUND");
    let no_partner = service.transfer_waba(transfer(&waba.waba_id, &p1, "partner-nope", "pc-y")).await;
    assert_refused(no_partner, Code::NotFound, "PARTNER_NOT_FOUND");

    let unchanged = service.get_waba(pb::GetWabaRequest { waba_id: waba.waba_id.clone() }).await.unwrap().into_inner();
    assert_eq!(unchanged.waba.unwrap(), waba, "refused transfers changed nothing");

    // Refused attempts did not consume their partner change IDs.
    let later = service.transfer_waba(transfer(&waba.waba_id, &p1, &p2, "pc-stale")).await.unwrap().into_inner();
    assert!(!later.already_applied);
}

async fn of_concurrent_transfers_of_one_waba_exactly_one_wins(backend: Backend) {
    let Setup { app, p1, p2, p3, waba } = setup(backend).await;
    let attempts = (0..8).map(|i| {
        let mut service = app.account("service:partner-change");
        let to = if i % 2 == 0 { p2.clone() } else { p3.clone() };
        let request = transfer(&waba.waba_id, &p1, &to, &format!("pc-race-{i}"));
        tokio::spawn(async move { service.transfer_waba(request).await })
    });
    let results: Vec<_> = futures_join(attempts).await;
    let winners: Vec<_> = results.iter().filter_map(|result| result.as_ref().ok()).collect();
    assert_eq!(winners.len(), 1, "exactly one transfer wins: {results:?}");
    for loser in results.iter().filter_map(|result| result.as_ref().err()) {
        assert_eq!(
            (loser.code(), reason(loser).as_str()),
            (Code::FailedPrecondition, "SOURCE_PARTNER_MISMATCH"),
            "{loser:?}"
        );
    }
    let winner_partner = winners[0].get_ref().waba.as_ref().unwrap().partner_id.clone();
    let current = app.account("support:s").get_waba(pb::GetWabaRequest { waba_id: waba.waba_id }).await.unwrap();
    assert_eq!(current.into_inner().waba.unwrap().partner_id, winner_partner);
}

async fn concurrent_repeats_of_one_transfer_apply_it_once(backend: Backend) {
    let Setup { app, p1, p2, waba, .. } = setup(backend).await;
    let attempts = (0..20).map(|_| {
        let mut service = app.account("service:partner-change");
        let request = transfer(&waba.waba_id, &p1, &p2, "pc-same");
        tokio::spawn(async move { service.transfer_waba(request).await })
    });
    let results: Vec<_> = futures_join(attempts).await;
    let outcomes: Vec<_> = results.into_iter().map(|result| result.unwrap().into_inner()).collect();
    assert_eq!(outcomes.iter().filter(|outcome| !outcome.already_applied).count(), 1, "applied exactly once");
    assert!(outcomes.iter().all(|outcome| outcome.waba.as_ref().unwrap().partner_id == p2));
}

async fn one_partner_change_id_sent_for_two_wabas_at_once_moves_one(backend: Backend) {
    let Setup { app, p1, p2, waba, .. } = setup(backend).await;
    let client_id = waba.client_id.clone();
    let other = fixtures::waba(&app, &client_id, &p1, &[&unique_number()]).await;
    let attempts = (0..8).map(|i| {
        let mut service = app.account("service:partner-change");
        let waba_id = if i % 2 == 0 { &waba.waba_id } else { &other.waba_id };
        let request = transfer(waba_id, &p1, &p2, "pc-one-key");
        tokio::spawn(async move { service.transfer_waba(request).await })
    });
    let results: Vec<_> = futures_join(attempts).await;
    let applied: Vec<_> = results.iter().filter_map(|result| result.as_ref().ok()).collect();
    let moved_id = applied[0].get_ref().waba.as_ref().unwrap().waba_id.clone();
    for result in &results {
        match result {
            Ok(outcome) => assert_eq!(outcome.get_ref().waba.as_ref().unwrap().waba_id, moved_id, "{outcome:?}"),
            Err(refused) => assert_eq!(reason(refused), "IDEMPOTENCY_KEY_REUSED", "{refused:?}"),
        }
    }
    assert_eq!(applied.iter().filter(|outcome| !outcome.get_ref().already_applied).count(), 1, "applied once");
    let mut support = app.account("support:s");
    for waba_id in [&waba.waba_id, &other.waba_id] {
        let current = support.get_waba(pb::GetWabaRequest { waba_id: waba_id.clone() }).await.unwrap();
        let expected = if *waba_id == moved_id { &p2 } else { &p1 };
        assert_eq!(&current.into_inner().waba.unwrap().partner_id, expected, "only {moved_id} moved");
    }
}

/// A number whose adding commits while the transfer waits for the WABA's row
/// moves with the WABA, and the transfer's answer lists it: the numbers are
/// those the WABA has when it moves, not those of an earlier snapshot.
async fn a_number_added_while_the_move_waits_is_among_the_moved_numbers(backend: Backend) {
    use sea_orm::{
        ConnectionTrait, Database, TransactionTrait,
        sea_query::{Alias, Expr, ExprTrait, Query},
    };

    let Setup { app, p1, p2, waba, .. } = setup(backend).await;
    let db = Database::connect(app.database_url()).await.unwrap();
    let db_backend = db.get_database_backend();
    let added = unique_number();

    // As the account service adds a number: the number, then the WABA's version, in one transaction.
    let adding = db.begin().await.unwrap();
    let insert = Query::insert()
        .into_table(Alias::new("phone_numbers"))
        .columns(["phone_number", "waba_id", "add_time"].map(Alias::new))
        .values_panic([added.clone().into(), waba.waba_id.clone().into(), chrono::Utc::now().into()])
        .to_owned();
    adding.execute_raw(db_backend.build(&insert)).await.unwrap();
    let bump = Query::update()
        .table(Alias::new("wabas"))
        .value(Alias::new("version"), Expr::col(Alias::new("version")).add(1))
        .and_where(Expr::col(Alias::new("waba_id")).eq(waba.waba_id.clone()))
        .to_owned();
    adding.execute_raw(db_backend.build(&bump)).await.unwrap();

    let mut service = app.account("service:partner-change");
    let request = transfer(&waba.waba_id, &p1, &p2, "pc-waits");
    let moving = tokio::spawn(async move { service.transfer_waba(request).await });
    // The transfer waits for the WABA's row, held by the add. (On SQLite it
    // waits for the add's write transaction, which cannot be observed: there
    // it may also start only after the add has committed.)
    app.until_a_statement_waits_for_a_lock("waba_transfers").await;
    adding.commit().await.unwrap();

    let moved = moving.await.unwrap().unwrap().into_inner();
    assert!(!moved.already_applied);
    let mut expected = waba.phone_numbers.clone();
    expected.push(added);
    assert_eq!(moved.waba.unwrap().phone_numbers, expected, "the added number moved with the WABA");
}

async fn futures_join<T: Send + 'static>(handles: impl Iterator<Item = tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut results = Vec::new();
    for handle in handles.collect::<Vec<_>>() {
        results.push(handle.await.unwrap());
    }
    results
}
