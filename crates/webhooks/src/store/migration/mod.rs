//! The webhooks service's schema, recorded in its own `webhooks_migrations` table.

use sea_orm_migration::prelude::*;

mod m20261204_000001_create_webhook_tables;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migration_table_name() -> DynIden {
        "webhooks_migrations".into_iden()
    }

    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(m20261204_000001_create_webhook_tables::Migration)]
    }
}
