//! The partner-change service's schema, recorded in its own `partner_change_migrations` table.

use sea_orm_migration::prelude::*;

mod m20261126_000001_create_partner_change_tables;
mod m20261126_000002_index_events_by_party;
mod m20261126_000003_store_trace_context;
mod m20261203_000004_record_skipped_grants;
mod m20261203_000005_schedule_migrations;
mod m20261203_000006_publish_moving_view;
mod m20261204_000007_publish_trace_view;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migration_table_name() -> DynIden {
        "partner_change_migrations".into_iden()
    }

    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261126_000001_create_partner_change_tables::Migration),
            Box::new(m20261126_000002_index_events_by_party::Migration),
            Box::new(m20261126_000003_store_trace_context::Migration),
            Box::new(m20261203_000004_record_skipped_grants::Migration),
            Box::new(m20261203_000005_schedule_migrations::Migration),
            Box::new(m20261203_000006_publish_moving_view::Migration),
            Box::new(m20261204_000007_publish_trace_view::Migration),
        ]
    }
}
