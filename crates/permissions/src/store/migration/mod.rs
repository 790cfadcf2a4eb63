//! The permissions service's schema, recorded in its own `permissions_migrations` table.

use sea_orm_migration::prelude::*;

mod m20261126_000001_create_permission_tables;
mod m20261126_000002_create_permission_log;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migration_table_name() -> DynIden {
        "permissions_migrations".into_iden()
    }

    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261126_000001_create_permission_tables::Migration),
            Box::new(m20261126_000002_create_permission_log::Migration),
        ]
    }
}
