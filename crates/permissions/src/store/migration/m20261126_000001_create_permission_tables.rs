//! Grants, the fences that order grants against revocations, the record of
//! what each partner change applied, and the audit log.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum PermissionGrants {
    Table,
    PartnerId,
    PhoneNumber,
    ClientId,
    GrantTime,
}

#[derive(DeriveIden)]
enum PermissionFences {
    Table,
    PartnerId,
    PhoneNumber,
    RevokeTime,
    TouchTime,
}

#[derive(DeriveIden)]
enum PermissionApplications {
    Table,
    PartnerChangeId,
    Action,
    PartnerId,
    AffectedCount,
    ApplyTime,
}

#[derive(DeriveIden)]
enum PermissionAudit {
    Table,
    AuditId,
    Actor,
    Action,
    ClientId,
    PartnerId,
    PhoneNumbers,
    PartnerChangeId,
    Time,
}

const ID_LEN: u32 = 64;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(PermissionGrants::Table)
                    .col(string_len(PermissionGrants::PartnerId, ID_LEN))
                    .col(string_len(PermissionGrants::PhoneNumber, 16))
                    .col(string_len(PermissionGrants::ClientId, ID_LEN))
                    .col(timestamp_with_time_zone(PermissionGrants::GrantTime))
                    .primary_key(Index::create().col(PermissionGrants::PartnerId).col(PermissionGrants::PhoneNumber))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("permission_grants_by_client")
                    .table(PermissionGrants::Table)
                    .col(PermissionGrants::ClientId)
                    .col(PermissionGrants::PartnerId)
                    .col(PermissionGrants::PhoneNumber)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(PermissionFences::Table)
                    .col(string_len(PermissionFences::PartnerId, ID_LEN))
                    .col(string_len(PermissionFences::PhoneNumber, 16))
                    .col(timestamp_with_time_zone_null(PermissionFences::RevokeTime))
                    .col(timestamp_with_time_zone(PermissionFences::TouchTime))
                    .primary_key(Index::create().col(PermissionFences::PartnerId).col(PermissionFences::PhoneNumber))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(PermissionApplications::Table)
                    .col(string_len(PermissionApplications::PartnerChangeId, ID_LEN))
                    .col(string_len(PermissionApplications::Action, 16))
                    .col(string_len(PermissionApplications::PartnerId, ID_LEN))
                    .col(integer(PermissionApplications::AffectedCount))
                    .col(timestamp_with_time_zone(PermissionApplications::ApplyTime))
                    .primary_key(
                        Index::create()
                            .col(PermissionApplications::PartnerChangeId)
                            .col(PermissionApplications::Action),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(PermissionAudit::Table)
                    .col(string_len(PermissionAudit::AuditId, ID_LEN).primary_key())
                    .col(string_len(PermissionAudit::Actor, 200))
                    .col(string_len(PermissionAudit::Action, 16))
                    .col(string_len_null(PermissionAudit::ClientId, ID_LEN))
                    .col(string_len(PermissionAudit::PartnerId, ID_LEN))
                    .col(text(PermissionAudit::PhoneNumbers))
                    .col(string_len_null(PermissionAudit::PartnerChangeId, ID_LEN))
                    .col(timestamp_with_time_zone(PermissionAudit::Time))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in ["permission_audit", "permission_applications", "permission_fences", "permission_grants"] {
            manager.drop_table(Table::drop().table(table.into_iden()).to_owned()).await?;
        }
        Ok(())
    }
}
