//! The read contract the partner-change service publishes of its request
//! table: the view `partner_change_moves`, which the permissions service reads
//! (and nothing else of that table). Tested here, on the owning side's data.

use partnerhub_partner_change::domain::SagaStep;
use partnerhub_proto::partnerchange::v1::PartnerChangeState as St;
use partnerhub_tests::{Backend, ServiceSections, TestApp, on_both_databases};
use prost_types::Timestamp;
use sea_orm::{ConnectionTrait, Database, Statement};

use crate::fixtures::{get_change, scenario};

on_both_databases!(the_published_view_shows_exactly_the_requests_moving_a_waba);

async fn the_published_view_shows_exactly_the_requests_moving_a_waba(backend: Backend) {
    let app = TestApp::spawn_with(backend, |settings| settings.partner_change().worker.enabled = false).await;
    let worker = app.migration_worker().replica("worker");

    let pending = scenario(&app, false).await.submit(&app, "pending").await;
    let scheduled_at = Timestamp { seconds: chrono_now_seconds() + 3600, nanos: 0 };
    let scheduled = {
        let s = scenario(&app, true).await;
        let mut request = s.submit_request("scheduled");
        request.migrate_after = Some(scheduled_at);
        let mut client = app.partner_change(&s.client_subject());
        client.submit_partner_change(request).await.unwrap().into_inner().partner_change.unwrap()
    };
    let migrating = scenario(&app, true).await.submit(&app, "migrating").await;
    worker.faults().crash_after(SagaStep::Transfer);
    worker.run_once().await.unwrap();
    assert_eq!(get_change(&app, &migrating.partner_change_id).await.state(), St::Migrating);
    let completed = scenario(&app, true).await.submit(&app, "completed").await;
    app.migration_worker().replica("other").run_once().await.unwrap();
    assert_eq!(get_change(&app, &completed.partner_change_id).await.state(), St::Completed);
    assert_eq!(get_change(&app, &pending.partner_change_id).await.state(), St::PendingApproval);

    let db = Database::connect(app.database_url()).await.unwrap();
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT partner_change_id, waba_id, source_partner_id, phone_numbers, migrating, \
             starts_after IS NOT NULL AS scheduled FROM partner_change_moves ORDER BY partner_change_id",
        ))
        .await
        .unwrap();
    let view: Vec<(String, String, String, String, bool, bool)> = rows
        .iter()
        .map(|row| {
            (
                row.try_get("", "partner_change_id").unwrap(),
                row.try_get("", "waba_id").unwrap(),
                row.try_get("", "source_partner_id").unwrap(),
                row.try_get("", "phone_numbers").unwrap(),
                row.try_get("", "migrating").unwrap(),
                row.try_get("", "scheduled").unwrap(),
            )
        })
        .collect();
    let row = |change: &partnerhub_proto::partnerchange::v1::PartnerChange, migrating: bool, scheduled: bool| {
        (
            change.partner_change_id.clone(),
            change.waba_id.clone(),
            change.source_partner_id.clone(),
            change.phone_numbers.join(","),
            migrating,
            scheduled,
        )
    };
    let mut expected = vec![row(&scheduled, false, true), row(&migrating, true, false)];
    expected.sort();
    assert_eq!(view, expected, "neither the pending nor the completed request moves a WABA");
}

fn chrono_now_seconds() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    i64::try_from(now.as_secs()).unwrap()
}
