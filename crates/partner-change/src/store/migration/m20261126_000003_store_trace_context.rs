//! The W3C trace context of the step that set a request's migration going, so
//! the migration's spans join that trace.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum PartnerChanges {
    Table,
    TraceParent,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(PartnerChanges::Table)
                    .add_column(ColumnDef::new(PartnerChanges::TraceParent).string().null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter().table(PartnerChanges::Table).drop_column(PartnerChanges::TraceParent).to_owned(),
            )
            .await
    }
}
