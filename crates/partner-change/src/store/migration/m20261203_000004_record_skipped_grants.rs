//! Numbers named for the grant that had left the WABA when the migration
//! granted them: skipped, and reported on the request.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum PartnerChanges {
    Table,
    SkippedGrantPhoneNumbers,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(PartnerChanges::Table)
                    .add_column(
                        ColumnDef::new(PartnerChanges::SkippedGrantPhoneNumbers).string().not_null().default(""),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(PartnerChanges::Table)
                    .drop_column(PartnerChanges::SkippedGrantPhoneNumbers)
                    .to_owned(),
            )
            .await
    }
}
