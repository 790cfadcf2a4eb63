//! The read contract other services have for a request's trace: the view
//! `partner_change_traces`, one row per request with a stored trace context,
//! so that work another service does for a request (a webhook delivery) joins
//! the request's trace.
//!
//! | column | meaning |
//! | --- | --- |
//! | `partner_change_id` | the request |
//! | `trace_parent` | the W3C `traceparent` of the submit or approval that set it going |

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const CREATE: &str = "CREATE VIEW partner_change_traces AS \
     SELECT partner_change_id, trace_parent FROM partner_changes WHERE trace_parent IS NOT NULL";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.get_connection().execute_unprepared(CREATE).await.map(drop)
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.get_connection().execute_unprepared("DROP VIEW partner_change_traces").await.map(drop)
    }
}
