//! The permissions service as it stands: replace semantics, its refusals
//! (all or nothing), idempotent revoke and grant, and who may call what.

use partnerhub_proto::permissions::v1 as perm;
use partnerhub_tests::{Backend, ServiceSections, TestApp, assert_refused, on_both_databases};
use tonic::Code;
use tonic_types::StatusExt;

use crate::fixtures::{self, allowed, scenario};

on_both_databases!(
    set_replaces_the_whole_set_and_refuses_all_or_nothing,
    revoke_and_grant_apply_once_per_partner_change,
    twenty_identical_concurrent_revokes_and_grants_each_apply_once,
    permissions_answer_each_subject_as_specified,
    a_replace_checked_before_a_revoke_never_outlives_it,
);

fn set(client_id: &str, partner_id: &str, numbers: &[String]) -> perm::SetPartnerPermissionsRequest {
    perm::SetPartnerPermissionsRequest {
        client_id: client_id.to_owned(),
        partner_id: partner_id.to_owned(),
        phone_numbers: numbers.to_vec(),
    }
}

async fn granted_numbers(app: &TestApp, subject: &str, request: perm::ListPartnerPermissionsRequest) -> Vec<String> {
    let grants = app.permissions(subject).list_partner_permissions(request).await.unwrap().into_inner().grants;
    grants.into_iter().map(|grant| grant.phone_number).collect()
}

async fn set_replaces_the_whole_set_and_refuses_all_or_nothing(backend: Backend) {
    let app = TestApp::spawn_with(backend, |settings| settings.partner_change().worker.enabled = false).await;
    let s = scenario(&app, false).await;
    let (first, second) = (s.waba.phone_numbers[0].clone(), s.waba.phone_numbers[1].clone());
    let mut as_client = app.permissions(&s.client_subject());
    let source = s.source.partner_id.clone();

    as_client
        .set_partner_permissions(set(&s.client.client_id, &source, &[first.clone(), second.clone()]))
        .await
        .unwrap();
    as_client.set_partner_permissions(set(&s.client.client_id, &source, std::slice::from_ref(&second))).await.unwrap();
    assert!(!allowed(&app, &source, &first).await, "replaced, not added");
    assert!(allowed(&app, &source, &second).await);
    let mut sorted = vec![second.clone()];
    sorted.sort();
    assert_eq!(granted_numbers(&app, &s.client_subject(), Default::default()).await, sorted);
    assert_eq!(granted_numbers(&app, &s.source_subject(), Default::default()).await, sorted, "the partner sees it too");

    // A number that is not with the partner: refused, naming it, and nothing changes.
    let foreign = fixtures::unique_number();
    let refused = as_client
        .set_partner_permissions(set(&s.client.client_id, &source, &[first.clone(), foreign.clone()]))
        .await
        .unwrap_err();
    assert_eq!(
        (refused.code(), partnerhub_tests::reason(&refused).as_str()),
        (Code::FailedPrecondition, "NUMBER_NOT_WITH_PARTNER")
    );
    assert_eq!(refused.get_details_error_info().unwrap().metadata.get("phoneNumbers"), Some(&foreign));
    let to_destination = as_client
        .set_partner_permissions(set(&s.client.client_id, &s.destination.partner_id, std::slice::from_ref(&first)))
        .await;
    assert_refused(to_destination, Code::FailedPrecondition, "NUMBER_NOT_WITH_PARTNER");
    assert!(
        !allowed(&app, &source, &first).await && allowed(&app, &source, &second).await,
        "a refused call changed nothing"
    );

    // Mid-migration (approved, not yet moved): refused.
    let submitted = s.submit(&app, "req").await;
    s.approve(&app, &submitted.partner_change_id).await;
    let mid = as_client
        .set_partner_permissions(set(&s.client.client_id, &source, std::slice::from_ref(&first)))
        .await
        .unwrap_err();
    assert_eq!(partnerhub_tests::reason(&mid), "MIGRATION_IN_PROGRESS");
    assert_eq!(
        mid.get_details_error_info().unwrap().metadata.get("partnerChangeId"),
        Some(&submitted.partner_change_id)
    );

    // An empty set revokes everything the client granted the partner.
    app.migration_worker().run_once().await.unwrap();
    let mut as_client = app.permissions(&s.client_subject());
    as_client
        .set_partner_permissions(set(&s.client.client_id, &s.destination.partner_id, &[first.clone(), second.clone()]))
        .await
        .unwrap();
    as_client.set_partner_permissions(set(&s.client.client_id, &s.destination.partner_id, &[])).await.unwrap();
    assert!(
        !allowed(&app, &s.destination.partner_id, &first).await
            && !allowed(&app, &s.destination.partner_id, &second).await
    );
}

async fn revoke_and_grant_apply_once_per_partner_change(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let s = scenario(&app, false).await;
    let numbers = s.waba.phone_numbers.clone();
    app.permissions(&s.client_subject())
        .set_partner_permissions(set(&s.client.client_id, &s.source.partner_id, &numbers))
        .await
        .unwrap();
    let mut service = app.permissions("service:partner-change");
    let revoke = perm::RevokePartnerPermissionsRequest {
        partner_change_id: "pc-revoke".into(),
        partner_id: s.source.partner_id.clone(),
        phone_numbers: numbers.clone(),
    };
    let first = service.revoke_partner_permissions(revoke.clone()).await.unwrap().into_inner();
    assert_eq!((first.revoked_count, first.already_applied), (2, false));
    // Granted again by the client, a repeat of the same revocation must not take it away.
    app.permissions(&s.client_subject())
        .set_partner_permissions(set(&s.client.client_id, &s.source.partner_id, &numbers[..1]))
        .await
        .unwrap();
    let repeat = service.revoke_partner_permissions(revoke).await.unwrap().into_inner();
    assert_eq!((repeat.revoked_count, repeat.already_applied), (2, true), "the repeat reports the first result");
    assert!(allowed(&app, &s.source.partner_id, &numbers[0]).await, "a repeat has no further effect");

    let grant = perm::GrantPartnerPermissionsRequest {
        partner_change_id: "pc-grant".into(),
        client_id: s.client.client_id.clone(),
        partner_id: s.source.partner_id.clone(),
        phone_numbers: vec![numbers[1].clone()],
    };
    let granted = service.grant_partner_permissions(grant.clone()).await.unwrap().into_inner();
    assert!(!granted.already_applied);
    assert!(allowed(&app, &s.source.partner_id, &numbers[1]).await);
    assert!(service.grant_partner_permissions(grant).await.unwrap().into_inner().already_applied);
    let not_with_partner = perm::GrantPartnerPermissionsRequest {
        partner_change_id: "pc-grant-2".into(),
        client_id: s.client.client_id.clone(),
        partner_id: s.destination.partner_id.clone(),
        phone_numbers: vec![numbers[0].clone()],
    };
    assert_refused(
        service.grant_partner_permissions(not_with_partner).await,
        Code::FailedPrecondition,
        "NUMBER_NOT_WITH_PARTNER",
    );

    // The audit log: who, what, which numbers, once per change (repeats add nothing).
    let db = sea_orm::Database::connect(app.database_url()).await.unwrap();
    let rows = sea_orm::ConnectionTrait::query_all_raw(
        &db,
        sea_orm::Statement::from_string(
            sea_orm::ConnectionTrait::get_database_backend(&db),
            "SELECT actor, action, phone_numbers, partner_change_id FROM permission_audit ORDER BY time, audit_id",
        ),
    )
    .await
    .unwrap();
    let audit: Vec<(String, String, String, Option<String>)> = rows
        .iter()
        .map(|row| {
            (
                row.try_get("", "actor").unwrap(),
                row.try_get("", "action").unwrap(),
                row.try_get("", "phone_numbers").unwrap(),
                row.try_get("", "partner_change_id").unwrap(),
            )
        })
        .collect();
    let client = s.client_subject();
    let service = "service:partner-change".to_owned();
    assert_eq!(
        audit,
        [
            (client.clone(), "SET".to_owned(), numbers.join(","), None),
            (service.clone(), "REVOKE".to_owned(), numbers.join(","), Some("pc-revoke".to_owned())),
            (client, "SET".to_owned(), numbers[0].clone(), None),
            (service, "GRANT".to_owned(), numbers[1].clone(), Some("pc-grant".to_owned())),
        ]
    );
}

/// The migration worker may send one call twice at once (a retry to another
/// replica while the first is still running): every copy succeeds, one applies.
async fn twenty_identical_concurrent_revokes_and_grants_each_apply_once(backend: Backend) {
    let app = TestApp::spawn_with(backend, |settings| settings.partner_change().worker.enabled = false).await;
    let s = scenario(&app, false).await;
    let numbers = s.waba.phone_numbers.clone();
    s.grant(&app, &s.source.partner_id, &numbers).await;

    let revoke = perm::RevokePartnerPermissionsRequest {
        partner_change_id: "pc-concurrent".into(),
        partner_id: s.source.partner_id.clone(),
        phone_numbers: numbers.clone(),
    };
    let revokes = (0..20).map(|_| {
        let mut service = app.permissions("service:partner-change");
        let request = revoke.clone();
        tokio::spawn(async move { service.revoke_partner_permissions(request).await })
    });
    let mut revoked = Vec::new();
    for handle in revokes.collect::<Vec<_>>() {
        revoked.push(handle.await.unwrap().expect("every identical revoke succeeds").into_inner());
    }
    assert_eq!(revoked.iter().filter(|answer| !answer.already_applied).count(), 1, "{revoked:?}");
    assert!(revoked.iter().all(|answer| answer.revoked_count == 2), "every copy reports the one result: {revoked:?}");
    for number in &numbers {
        assert!(!allowed(&app, &s.source.partner_id, number).await);
    }

    // The WABA is with the destination now, as after a real transfer.
    app.account("service:partner-change")
        .transfer_waba(partnerhub_proto::account::v1::TransferWabaRequest {
            waba_id: s.waba.waba_id.clone(),
            from_partner_id: s.source.partner_id.clone(),
            to_partner_id: s.destination.partner_id.clone(),
            partner_change_id: "pc-concurrent".into(),
        })
        .await
        .unwrap();
    let grant = perm::GrantPartnerPermissionsRequest {
        partner_change_id: "pc-concurrent".into(),
        client_id: s.client.client_id.clone(),
        partner_id: s.destination.partner_id.clone(),
        phone_numbers: numbers.clone(),
    };
    let grants = (0..20).map(|_| {
        let mut service = app.permissions("service:partner-change");
        let request = grant.clone();
        tokio::spawn(async move { service.grant_partner_permissions(request).await })
    });
    let mut granted = Vec::new();
    for handle in grants.collect::<Vec<_>>() {
        granted.push(handle.await.unwrap().expect("every identical grant succeeds").into_inner());
    }
    assert_eq!(granted.iter().filter(|answer| !answer.already_applied).count(), 1, "{granted:?}");
    assert!(granted.iter().all(|answer| answer.grants.len() == 2), "{granted:?}");
    for number in &numbers {
        assert!(allowed(&app, &s.destination.partner_id, number).await);
    }

    // One audit entry per action, however many copies ran.
    let db = sea_orm::Database::connect(app.database_url()).await.unwrap();
    let rows = sea_orm::ConnectionTrait::query_all_raw(
        &db,
        sea_orm::Statement::from_string(
            sea_orm::ConnectionTrait::get_database_backend(&db),
            "SELECT action FROM permission_audit WHERE partner_change_id = 'pc-concurrent' ORDER BY time",
        ),
    )
    .await
    .unwrap();
    let actions: Vec<String> = rows.iter().map(|row| row.try_get("", "action").unwrap()).collect();
    assert_eq!(actions, ["REVOKE", "GRANT"]);
}

async fn permissions_answer_each_subject_as_specified(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let s = scenario(&app, false).await;
    let other = fixtures::client(&app, "Other").await;
    let numbers = s.waba.phone_numbers.clone();
    let source = s.source.partner_id.clone();
    let check = perm::CheckPermissionRequest { partner_id: source.clone(), phone_number: numbers[0].clone() };
    let revoke = perm::RevokePartnerPermissionsRequest {
        partner_change_id: "pc".into(),
        partner_id: source.clone(),
        phone_numbers: numbers.clone(),
    };

    // A partner cannot set its own permissions; another client's numbers look missing.
    let by_partner =
        app.permissions(&s.source_subject()).set_partner_permissions(set(&s.client.client_id, &source, &numbers)).await;
    assert_refused(by_partner, Code::PermissionDenied, "SUBJECT_NOT_ALLOWED");
    let by_other_client = app
        .permissions(&format!("client:{}", other.client_id))
        .set_partner_permissions(set(&s.client.client_id, &source, &numbers))
        .await;
    assert_refused(by_other_client, Code::NotFound, "CLIENT_NOT_FOUND");
    let by_service =
        app.permissions("service:x").set_partner_permissions(set(&s.client.client_id, &source, &numbers)).await;
    assert_refused(by_service, Code::PermissionDenied, "SUBJECT_NOT_ALLOWED");
    app.permissions("support:s").set_partner_permissions(set(&s.client.client_id, &source, &numbers)).await.unwrap();

    // Only services check, revoke and grant.
    for subject in [s.client_subject(), s.source_subject(), "support:s".to_owned()] {
        let mut api = app.permissions(&subject);
        assert_refused(api.check_permission(check.clone()).await, Code::PermissionDenied, "SUBJECT_NOT_ALLOWED");
        assert_refused(
            api.revoke_partner_permissions(revoke.clone()).await,
            Code::PermissionDenied,
            "SUBJECT_NOT_ALLOWED",
        );
    }
    assert!(allowed(&app, &source, &numbers[0]).await, "nothing was revoked by the refused calls");

    // Lists: each sees its own; another tenant's looks missing.
    let other_partner =
        perm::ListPartnerPermissionsRequest { partner_id: s.destination.partner_id.clone(), ..Default::default() };
    assert!(granted_numbers(&app, &s.client_subject(), other_partner).await.is_empty());
    let foreign_list = app
        .permissions(&format!("client:{}", other.client_id))
        .list_partner_permissions(perm::ListPartnerPermissionsRequest {
            client_id: s.client.client_id.clone(),
            ..Default::default()
        })
        .await;
    assert_refused(foreign_list, Code::NotFound, "CLIENT_NOT_FOUND");
    assert_eq!(
        granted_numbers(&app, &format!("client:{}", other.client_id), Default::default()).await,
        Vec::<String>::new()
    );
    let paged = app
        .permissions("support:s")
        .list_partner_permissions(perm::ListPartnerPermissionsRequest {
            partner_id: source.clone(),
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(paged.grants.len(), 1);
    let rest = app
        .permissions("support:s")
        .list_partner_permissions(perm::ListPartnerPermissionsRequest {
            partner_id: source.clone(),
            page_size: 1,
            page_token: paged.next_page_token,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.grants.len(), 1);
    assert_ne!(rest.grants[0].phone_number, paged.grants[0].phone_number);
    assert!(rest.next_page_token.is_empty());
}

/// Two servers on one PostgreSQL database: a revoke through A turns
/// CheckPermission on B false promptly, by notification, and still does with
/// B's notification connection dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_through_one_replica_reaches_the_others_cache() {
    let a = TestApp::spawn(Backend::Postgres).await;
    let s = scenario(&a, false).await;
    let numbers = s.waba.phone_numbers.clone();
    let source = s.source.partner_id.clone();
    s.grant(&a, &source, &numbers).await;
    // B hardly ever polls, and trusts its cache for longer still, so that
    // nothing but a notification (or the wake-up after its listener reconnects)
    // brings it news: it never falls back to the database here.
    let b = a
        .spawn_replica_with(|settings| {
            settings.permissions().cache_poll_interval = std::time::Duration::from_secs(3600);
            settings.permissions().cache_trust_window = std::time::Duration::from_secs(7200);
        })
        .await;
    assert!(allowed(&b, &source, &numbers[0]).await, "B loaded the grants");

    let revoke = |id: &str| perm::RevokePartnerPermissionsRequest {
        partner_change_id: id.to_owned(),
        partner_id: source.clone(),
        phone_numbers: numbers.clone(),
    };
    a.permissions("service:partner-change").revoke_partner_permissions(revoke("pc-1")).await.unwrap();
    assert!(!allowed(&a, &source, &numbers[0]).await, "A answers the new truth at once");
    partnerhub_tests::eventually("B to see the revoke", std::time::Duration::from_secs(10), || async {
        (!allowed(&b, &source, &numbers[0]).await).then_some(())
    })
    .await;

    // Drop every LISTEN connection, then change permissions again through A.
    s.grant(&a, &source, &numbers).await;
    partnerhub_tests::eventually("B to see the grant", std::time::Duration::from_secs(10), || async {
        allowed(&b, &source, &numbers[0]).await.then_some(())
    })
    .await;
    let db = sea_orm::Database::connect(a.database_url()).await.unwrap();
    sea_orm::ConnectionTrait::execute_unprepared(
        &db,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND query ILIKE 'LISTEN%'",
    )
    .await
    .unwrap();
    a.permissions("service:partner-change").revoke_partner_permissions(revoke("pc-2")).await.unwrap();
    partnerhub_tests::eventually(
        "B to see the revoke without its notification connection",
        std::time::Duration::from_secs(10),
        || async { (!allowed(&b, &source, &numbers[0]).await).then_some(()) },
    )
    .await;
    drop(b);
}

/// A replace (`SetPartnerPermissions`) checks that the numbers are with the
/// partner, then writes; a migration's revoke of those numbers may come in
/// between. Revoke first: the revocation is stamped on the numbers' fences, and
/// the replace that checked before the stamp is refused, writing nothing.
/// Replace first: its grants committed before the revoke locked the fences,
/// and the revoke deletes them. Either way the partner keeps no grant.
async fn a_replace_checked_before_a_revoke_never_outlives_it(backend: Backend) {
    use partnerhub_permissions::{domain::GrantFilter, error::PermissionsError, store};
    use partnerhub_runtime::validate::PhoneNumber;
    use sea_orm::{
        ConnectionTrait, TransactionTrait,
        sea_query::{Alias, OnConflict, Query},
    };

    let app = TestApp::spawn_with(backend, |settings| settings.partner_change().worker.enabled = false).await;
    let s = scenario(&app, false).await;
    let db = sea_orm::Database::connect(app.database_url()).await.unwrap();
    let numbers = PhoneNumber::parse_list("numbers", &s.waba.phone_numbers, 10).unwrap();
    let (client_id, source) = (s.client.client_id.as_str(), s.source.partner_id.as_str());
    let granted = async || {
        let filter = GrantFilter { client_id: None, partner_id: Some(source.to_owned()) };
        let grants = store::list_grants(&db, &filter, None, 100).await.unwrap().0;
        grants.into_iter().map(|grant| grant.phone_number).collect::<Vec<_>>()
    };

    // Revoke first: the replace checked before it is refused and writes nothing.
    let checked_at = chrono::Utc::now();
    let (_, already_applied, _) = store::revoke(&db, "service:partner-change", "pc-1", source, &numbers).await.unwrap();
    assert!(!already_applied);
    let late = store::replace_grants(&db, "support:s", client_id, source, &numbers, checked_at).await;
    assert!(matches!(late, Err(PermissionsError::MovedWhileSaving)), "{late:?}");
    assert!(granted().await.is_empty(), "the refused replace wrote nothing");

    // Replace first (checked after that revoke): its grants stand until the next revoke deletes them.
    let (grants, _) =
        store::replace_grants(&db, "support:s", client_id, source, &numbers, chrono::Utc::now()).await.unwrap();
    assert_eq!(grants.len(), numbers.len());
    let (removed, _, _) = store::revoke(&db, "service:partner-change", "pc-2", source, &numbers).await.unwrap();
    assert_eq!(usize::try_from(removed).unwrap(), numbers.len());
    assert!(granted().await.is_empty(), "the revoke deleted the replace's grants");

    // At once: a replace holds the fences (as it does from its first write to
    // its commit) with its grants written; the revoke waits for the fences and
    // still deletes those grants, committed after the revoke began.
    let replacing = db.begin().await.unwrap();
    let now = chrono::Utc::now();
    let mut fences = Query::insert()
        .into_table(Alias::new("permission_fences"))
        .columns(["partner_id", "phone_number", "revoke_time", "touch_time"].map(Alias::new))
        .on_conflict(
            OnConflict::columns(["partner_id", "phone_number"].map(Alias::new))
                .update_column(Alias::new("touch_time"))
                .to_owned(),
        )
        .to_owned();
    let mut grants = Query::insert()
        .into_table(Alias::new("permission_grants"))
        .columns(["partner_id", "phone_number", "client_id", "grant_time"].map(Alias::new))
        .to_owned();
    for number in &s.waba.phone_numbers {
        fences.values_panic([
            source.into(),
            number.into(),
            Option::<chrono::DateTime<chrono::Utc>>::None.into(),
            now.into(),
        ]);
        grants.values_panic([source.into(), number.into(), client_id.into(), now.into()]);
    }
    let db_backend = db.get_database_backend();
    replacing.execute_raw(db_backend.build(&fences)).await.unwrap();
    replacing.execute_raw(db_backend.build(&grants)).await.unwrap();
    let revoking = {
        let (db, numbers, source) = (db.clone(), numbers.clone(), source.to_owned());
        tokio::spawn(async move { store::revoke(&db, "service:partner-change", "pc-3", &source, &numbers).await })
    };
    // The revoke waits for the fences. (On SQLite it waits for this write
    // transaction, which cannot be observed: there it may also start only after
    // the commit.)
    app.until_a_statement_waits_for_a_lock("permission_fences").await;
    replacing.commit().await.unwrap();
    let (removed, _, _) = revoking.await.unwrap().unwrap();
    assert_eq!(usize::try_from(removed).unwrap(), numbers.len(), "the grants committed meanwhile were deleted");
    assert!(granted().await.is_empty());
}
