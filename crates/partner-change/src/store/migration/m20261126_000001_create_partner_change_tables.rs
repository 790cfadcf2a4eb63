//! The shared partner change request table, its event log, and the one-row
//! head of the log from which event positions are taken.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum PartnerChanges {
    Table,
    PartnerChangeId,
    RequestId,
    WabaId,
    ClientId,
    SourcePartnerId,
    DestinationPartnerId,
    State,
    PhoneNumbers,
    GrantPhoneNumbers,
    AcceptedTermsVersion,
    FailureReason,
    SagaStep,
    Version,
    Attempts,
    LeaseOwner,
    LeaseExpireTime,
    OpenWabaId,
    CreateTime,
    UpdateTime,
    ExpireTime,
}

#[derive(DeriveIden)]
enum PartnerChangeEvents {
    Table,
    Position,
    PartnerChangeId,
    EventType,
    State,
    Actor,
    Reason,
    Time,
    ClientId,
    SourcePartnerId,
    DestinationPartnerId,
    Snapshot,
}

#[derive(DeriveIden)]
enum EventLogHead {
    Table,
    Id,
    LastPosition,
}

const ID_LEN: u32 = 64;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(PartnerChanges::Table)
                    .col(string_len(PartnerChanges::PartnerChangeId, ID_LEN).primary_key())
                    .col(string_len(PartnerChanges::RequestId, ID_LEN))
                    .col(string_len(PartnerChanges::WabaId, ID_LEN))
                    .col(string_len(PartnerChanges::ClientId, ID_LEN))
                    .col(string_len(PartnerChanges::SourcePartnerId, ID_LEN))
                    .col(string_len(PartnerChanges::DestinationPartnerId, ID_LEN))
                    .col(string_len(PartnerChanges::State, 32))
                    .col(text(PartnerChanges::PhoneNumbers))
                    .col(text(PartnerChanges::GrantPhoneNumbers))
                    .col(string_len(PartnerChanges::AcceptedTermsVersion, 64))
                    .col(text(PartnerChanges::FailureReason))
                    .col(string_len(PartnerChanges::SagaStep, 32))
                    .col(big_integer(PartnerChanges::Version))
                    .col(integer(PartnerChanges::Attempts))
                    .col(string_len_null(PartnerChanges::LeaseOwner, 128))
                    .col(timestamp_with_time_zone_null(PartnerChanges::LeaseExpireTime))
                    // Set to waba_id while the request is open, NULL once it is not:
                    // the unique index allows one open request per WABA.
                    .col(string_len_null(PartnerChanges::OpenWabaId, ID_LEN).unique_key())
                    .col(timestamp_with_time_zone(PartnerChanges::CreateTime))
                    .col(timestamp_with_time_zone(PartnerChanges::UpdateTime))
                    .col(timestamp_with_time_zone(PartnerChanges::ExpireTime))
                    .to_owned(),
            )
            .await?;
        let indexes: [(&str, Vec<PartnerChanges>, bool); 6] = [
            ("partner_changes_idempotency", vec![PartnerChanges::ClientId, PartnerChanges::RequestId], true),
            ("partner_changes_by_client", vec![PartnerChanges::ClientId, PartnerChanges::PartnerChangeId], false),
            (
                "partner_changes_by_source",
                vec![PartnerChanges::SourcePartnerId, PartnerChanges::PartnerChangeId],
                false,
            ),
            (
                "partner_changes_by_destination",
                vec![PartnerChanges::DestinationPartnerId, PartnerChanges::PartnerChangeId],
                false,
            ),
            ("partner_changes_by_waba", vec![PartnerChanges::WabaId, PartnerChanges::State], false),
            ("partner_changes_by_state", vec![PartnerChanges::State, PartnerChanges::LeaseExpireTime], false),
        ];
        for (name, columns, unique) in indexes {
            let mut index = Index::create();
            index.name(name).table(PartnerChanges::Table);
            for column in columns {
                index.col(column);
            }
            if unique {
                index.unique();
            }
            manager.create_index(index.to_owned()).await?;
        }
        manager
            .create_table(
                Table::create()
                    .table(PartnerChangeEvents::Table)
                    .col(big_integer(PartnerChangeEvents::Position).primary_key())
                    .col(string_len(PartnerChangeEvents::PartnerChangeId, ID_LEN))
                    .col(string_len(PartnerChangeEvents::EventType, 32))
                    .col(string_len(PartnerChangeEvents::State, 32))
                    .col(string_len(PartnerChangeEvents::Actor, 200))
                    .col(text(PartnerChangeEvents::Reason))
                    .col(timestamp_with_time_zone(PartnerChangeEvents::Time))
                    .col(string_len(PartnerChangeEvents::ClientId, ID_LEN))
                    .col(string_len(PartnerChangeEvents::SourcePartnerId, ID_LEN))
                    .col(string_len(PartnerChangeEvents::DestinationPartnerId, ID_LEN))
                    .col(text(PartnerChangeEvents::Snapshot))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("partner_change_events_by_request")
                    .table(PartnerChangeEvents::Table)
                    .col(PartnerChangeEvents::PartnerChangeId)
                    .col(PartnerChangeEvents::Position)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(EventLogHead::Table)
                    .col(integer(EventLogHead::Id).primary_key())
                    .col(big_integer(EventLogHead::LastPosition))
                    .to_owned(),
            )
            .await?;
        let head = Query::insert()
            .into_table(EventLogHead::Table)
            .columns([EventLogHead::Id, EventLogHead::LastPosition])
            .values_panic([1.into(), 0.into()])
            .to_owned();
        manager.exec_stmt(head).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in ["event_log_head", "partner_change_events", "partner_changes"] {
            manager.drop_table(Table::drop().table(table.into_iden()).to_owned()).await?;
        }
        Ok(())
    }
}
