//! The permission change log: every change of who may manage which number, in
//! position order, so that every replica's in-memory cache can follow it.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum PermissionLog {
    Table,
    Position,
    PartnerId,
    PhoneNumber,
    Allowed,
    Time,
}

#[derive(DeriveIden)]
enum PermissionLogHead {
    Table,
    Id,
    LastPosition,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(PermissionLog::Table)
                    .col(big_integer(PermissionLog::Position).primary_key())
                    .col(string_len(PermissionLog::PartnerId, 64))
                    .col(string_len(PermissionLog::PhoneNumber, 16))
                    .col(boolean(PermissionLog::Allowed))
                    .col(timestamp_with_time_zone(PermissionLog::Time))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(PermissionLogHead::Table)
                    .col(integer(PermissionLogHead::Id).primary_key())
                    .col(big_integer(PermissionLogHead::LastPosition))
                    .to_owned(),
            )
            .await?;
        let head = Query::insert()
            .into_table(PermissionLogHead::Table)
            .columns([PermissionLogHead::Id, PermissionLogHead::LastPosition])
            .values_panic([1.into(), 0.into()])
            .to_owned();
        manager.exec_stmt(head).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in ["permission_log_head", "permission_log"] {
            manager.drop_table(Table::drop().table(table.into_iden()).to_owned()).await?;
        }
        Ok(())
    }
}
