//! The read contract other services have on the shared request table: the
//! view `partner_change_moves`, one row per request that is moving, or about
//! to move, a WABA. Other services read this view, never the table's columns,
//! so the table can change shape as long as the view keeps its own.
//!
//! | column | meaning |
//! | --- | --- |
//! | `partner_change_id` | the request |
//! | `waba_id` | the WABA it moves |
//! | `source_partner_id` | the partner the WABA is moving away from |
//! | `phone_numbers` | comma-separated: every number that moves |
//! | `migrating` | true once the migration has started (until it completes or fails) |
//! | `starts_after` | approved and waiting: the earliest start (`NULL`: as soon as a worker claims it); `NULL` once migrating |

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Kept in step with `store::MOVES_VIEW` and its test.
const CREATE: &str = "CREATE VIEW partner_change_moves AS \
     SELECT partner_change_id, waba_id, source_partner_id, phone_numbers, \
            (state = 'MIGRATING') AS migrating, \
            CASE WHEN state = 'APPROVED' THEN migrate_after END AS starts_after \
     FROM partner_changes WHERE state IN ('APPROVED', 'MIGRATING')";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.get_connection().execute_unprepared(CREATE).await.map(drop)
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.get_connection().execute_unprepared("DROP VIEW partner_change_moves").await.map(drop)
    }
}
