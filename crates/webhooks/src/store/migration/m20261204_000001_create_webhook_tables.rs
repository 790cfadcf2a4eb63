//! Endpoints, their deliveries and every attempt, and the follower's place in the event stream.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum WebhookEndpoints {
    Table,
    WebhookEndpointId,
    PartnerId,
    ClientId,
    Url,
    Description,
    Disabled,
    DisabledReason,
    Secret,
    PreviousSecret,
    PreviousSecretExpireTime,
    FailingSince,
    CreateTime,
    UpdateTime,
}

#[derive(DeriveIden)]
enum WebhookDeliveries {
    Table,
    WebhookDeliveryId,
    WebhookEndpointId,
    EventCursor,
    EventType,
    PartnerChangeId,
    Body,
    State,
    AttemptCount,
    NextAttemptTime,
    LeaseUntil,
    CreateTime,
    TraceParent,
}

#[derive(DeriveIden)]
enum WebhookAttempts {
    Table,
    Id,
    WebhookDeliveryId,
    AttemptTime,
    HttpStatus,
    Error,
    DurationMs,
}

#[derive(DeriveIden)]
enum WebhookFollower {
    Table,
    Id,
    Cursor,
    Holder,
    LeaseUntil,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(WebhookEndpoints::Table)
                    .col(string_len(WebhookEndpoints::WebhookEndpointId, 64).primary_key())
                    .col(string_len_null(WebhookEndpoints::PartnerId, 64))
                    .col(string_len_null(WebhookEndpoints::ClientId, 64))
                    .col(string_len(WebhookEndpoints::Url, 2048))
                    .col(string_len(WebhookEndpoints::Description, 512))
                    .col(boolean(WebhookEndpoints::Disabled))
                    .col(string_len(WebhookEndpoints::DisabledReason, 512))
                    .col(string_len(WebhookEndpoints::Secret, 128))
                    .col(string_len_null(WebhookEndpoints::PreviousSecret, 128))
                    .col(timestamp_with_time_zone_null(WebhookEndpoints::PreviousSecretExpireTime))
                    .col(timestamp_with_time_zone_null(WebhookEndpoints::FailingSince))
                    .col(timestamp_with_time_zone(WebhookEndpoints::CreateTime))
                    .col(timestamp_with_time_zone(WebhookEndpoints::UpdateTime))
                    .to_owned(),
            )
            .await?;
        for (name, column) in [
            ("idx_webhook_endpoints_partner", WebhookEndpoints::PartnerId),
            ("idx_webhook_endpoints_client", WebhookEndpoints::ClientId),
        ] {
            manager
                .create_index(
                    Index::create()
                        .name(name)
                        .table(WebhookEndpoints::Table)
                        .col(column)
                        .col(WebhookEndpoints::WebhookEndpointId)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .create_table(
                Table::create()
                    .table(WebhookDeliveries::Table)
                    .col(string_len(WebhookDeliveries::WebhookDeliveryId, 64).primary_key())
                    .col(string_len(WebhookDeliveries::WebhookEndpointId, 64))
                    .col(string_len(WebhookDeliveries::EventCursor, 256))
                    .col(string_len(WebhookDeliveries::EventType, 64))
                    .col(string_len(WebhookDeliveries::PartnerChangeId, 64))
                    .col(text(WebhookDeliveries::Body))
                    .col(string_len(WebhookDeliveries::State, 16))
                    .col(integer(WebhookDeliveries::AttemptCount))
                    .col(timestamp_with_time_zone_null(WebhookDeliveries::NextAttemptTime))
                    .col(timestamp_with_time_zone_null(WebhookDeliveries::LeaseUntil))
                    .col(timestamp_with_time_zone(WebhookDeliveries::CreateTime))
                    .col(string_len_null(WebhookDeliveries::TraceParent, 64))
                    .foreign_key(
                        ForeignKey::create()
                            .from(WebhookDeliveries::Table, WebhookDeliveries::WebhookEndpointId)
                            .to(WebhookEndpoints::Table, WebhookEndpoints::WebhookEndpointId)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        // One delivery per event and endpoint, however often the event is read.
        manager
            .create_index(
                Index::create()
                    .name("idx_webhook_deliveries_event")
                    .table(WebhookDeliveries::Table)
                    .col(WebhookDeliveries::WebhookEndpointId)
                    .col(WebhookDeliveries::EventCursor)
                    .unique()
                    .to_owned(),
            )
            .await?;
        // The dispatcher's question: which pending deliveries are due.
        manager
            .create_index(
                Index::create()
                    .name("idx_webhook_deliveries_due")
                    .table(WebhookDeliveries::Table)
                    .col(WebhookDeliveries::State)
                    .col(WebhookDeliveries::NextAttemptTime)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_webhook_deliveries_endpoint_list")
                    .table(WebhookDeliveries::Table)
                    .col(WebhookDeliveries::WebhookEndpointId)
                    .col(WebhookDeliveries::WebhookDeliveryId)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(WebhookAttempts::Table)
                    .col(pk_auto(WebhookAttempts::Id))
                    .col(string_len(WebhookAttempts::WebhookDeliveryId, 64))
                    .col(timestamp_with_time_zone(WebhookAttempts::AttemptTime))
                    .col(integer(WebhookAttempts::HttpStatus))
                    .col(string_len(WebhookAttempts::Error, 512))
                    .col(big_integer(WebhookAttempts::DurationMs))
                    .foreign_key(
                        ForeignKey::create()
                            .from(WebhookAttempts::Table, WebhookAttempts::WebhookDeliveryId)
                            .to(WebhookDeliveries::Table, WebhookDeliveries::WebhookDeliveryId)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_webhook_attempts_delivery")
                    .table(WebhookAttempts::Table)
                    .col(WebhookAttempts::WebhookDeliveryId)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(WebhookFollower::Table)
                    .col(integer(WebhookFollower::Id).primary_key())
                    .col(string_len(WebhookFollower::Cursor, 256))
                    .col(string_len_null(WebhookFollower::Holder, 128))
                    .col(timestamp_with_time_zone_null(WebhookFollower::LeaseUntil))
                    .to_owned(),
            )
            .await?;
        let row = Query::insert()
            .into_table(WebhookFollower::Table)
            .columns([WebhookFollower::Id, WebhookFollower::Cursor])
            .values_panic([1.into(), "".into()])
            .to_owned();
        manager.exec_stmt(row).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in ["webhook_follower", "webhook_attempts", "webhook_deliveries", "webhook_endpoints"] {
            manager.drop_table(Table::drop().table(table.into_iden()).to_owned()).await?;
        }
        Ok(())
    }
}
