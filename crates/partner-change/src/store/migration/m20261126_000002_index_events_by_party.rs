//! Indexes for reading the event log of one party (a client, or a partner on
//! either side) in position order: the event stream's replay.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum PartnerChangeEvents {
    Table,
    Position,
    ClientId,
    SourcePartnerId,
    DestinationPartnerId,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let indexes = [
            ("partner_change_events_by_client", PartnerChangeEvents::ClientId),
            ("partner_change_events_by_source", PartnerChangeEvents::SourcePartnerId),
            ("partner_change_events_by_destination", PartnerChangeEvents::DestinationPartnerId),
        ];
        for (name, column) in indexes {
            manager
                .create_index(
                    Index::create()
                        .name(name)
                        .table(PartnerChangeEvents::Table)
                        .col(column)
                        .col(PartnerChangeEvents::Position)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for name in [
            "partner_change_events_by_client",
            "partner_change_events_by_source",
            "partner_change_events_by_destination",
        ] {
            manager.drop_index(Index::drop().name(name).table(PartnerChangeEvents::Table).to_owned()).await?;
        }
        Ok(())
    }
}
