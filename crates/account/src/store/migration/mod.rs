//! The account service's schema. It records what it applied in its own table,
//! `account_migrations`, so that each service migrates only what it owns.

use sea_orm_migration::prelude::*;

mod m20261126_000001_create_account_tables;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migration_table_name() -> DynIden {
        "account_migrations".into_iden()
    }

    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(m20261126_000001_create_account_tables::Migration)]
    }
}
