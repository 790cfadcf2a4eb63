//! A scheduled cut-over: the earliest time a request's migration may start.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum PartnerChanges {
    Table,
    MigrateAfter,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(PartnerChanges::Table)
                    .add_column(ColumnDef::new(PartnerChanges::MigrateAfter).timestamp_with_time_zone().null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter().table(PartnerChanges::Table).drop_column(PartnerChanges::MigrateAfter).to_owned(),
            )
            .await
    }
}
