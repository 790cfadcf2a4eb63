//! The first schema: partners, clients, payment methods, WABAs, phone numbers
//! and the record of WABA transfers.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Partners {
    Table,
    PartnerId,
    DisplayName,
    PaymentProcessor,
    AutoApprove,
    AcceptingChanges,
    TermsVersion,
    RequiresPaymentMethod,
    CreateTime,
    UpdateTime,
}

#[derive(DeriveIden)]
enum Clients {
    Table,
    ClientId,
    DisplayName,
    PaymentProcessor,
    LegalName,
    AddressLine,
    City,
    PostalCode,
    CountryCode,
    TaxId,
    Legacy,
    CreateTime,
    UpdateTime,
}

#[derive(DeriveIden)]
enum PaymentMethods {
    Table,
    PaymentMethodId,
    ClientId,
    Type,
    Last4,
    CreateTime,
}

#[derive(DeriveIden)]
enum Wabas {
    Table,
    WabaId,
    ClientId,
    PartnerId,
    DisplayName,
    Version,
    CreateTime,
    UpdateTime,
}

#[derive(DeriveIden)]
enum PhoneNumbers {
    Table,
    PhoneNumber,
    WabaId,
    AddTime,
}

#[derive(DeriveIden)]
enum WabaTransfers {
    Table,
    PartnerChangeId,
    WabaId,
    FromPartnerId,
    ToPartnerId,
    TransferTime,
}

const ID_LEN: u32 = 64;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Partners::Table)
                    .col(string_len(Partners::PartnerId, ID_LEN).primary_key())
                    .col(string_len(Partners::DisplayName, 200))
                    .col(string_len(Partners::PaymentProcessor, 32))
                    .col(boolean(Partners::AutoApprove))
                    .col(boolean(Partners::AcceptingChanges))
                    .col(string_len(Partners::TermsVersion, 64))
                    .col(boolean(Partners::RequiresPaymentMethod))
                    .col(timestamp_with_time_zone(Partners::CreateTime))
                    .col(timestamp_with_time_zone(Partners::UpdateTime))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Clients::Table)
                    .col(string_len(Clients::ClientId, ID_LEN).primary_key())
                    .col(string_len(Clients::DisplayName, 200))
                    .col(string_len(Clients::PaymentProcessor, 32))
                    .col(string_len(Clients::LegalName, 200))
                    .col(string_len(Clients::AddressLine, 200))
                    .col(string_len(Clients::City, 100))
                    .col(string_len(Clients::PostalCode, 20))
                    .col(string_len(Clients::CountryCode, 2))
                    .col(string_len(Clients::TaxId, 40))
                    .col(boolean(Clients::Legacy))
                    .col(timestamp_with_time_zone(Clients::CreateTime))
                    .col(timestamp_with_time_zone(Clients::UpdateTime))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(PaymentMethods::Table)
                    .col(string_len(PaymentMethods::PaymentMethodId, ID_LEN).primary_key())
                    .col(string_len(PaymentMethods::ClientId, ID_LEN))
                    .col(string_len(PaymentMethods::Type, 32))
                    .col(string_len(PaymentMethods::Last4, 4))
                    .col(timestamp_with_time_zone(PaymentMethods::CreateTime))
                    .foreign_key(
                        ForeignKey::create()
                            .from(PaymentMethods::Table, PaymentMethods::ClientId)
                            .to(Clients::Table, Clients::ClientId),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("payment_methods_by_client")
                    .table(PaymentMethods::Table)
                    .col(PaymentMethods::ClientId)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Wabas::Table)
                    .col(string_len(Wabas::WabaId, ID_LEN).primary_key())
                    .col(string_len(Wabas::ClientId, ID_LEN))
                    .col(string_len(Wabas::PartnerId, ID_LEN))
                    .col(string_len(Wabas::DisplayName, 200))
                    .col(big_integer(Wabas::Version))
                    .col(timestamp_with_time_zone(Wabas::CreateTime))
                    .col(timestamp_with_time_zone(Wabas::UpdateTime))
                    .foreign_key(
                        ForeignKey::create().from(Wabas::Table, Wabas::ClientId).to(Clients::Table, Clients::ClientId),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(Wabas::Table, Wabas::PartnerId)
                            .to(Partners::Table, Partners::PartnerId),
                    )
                    .to_owned(),
            )
            .await?;
        for (name, column) in [("wabas_by_client", Wabas::ClientId), ("wabas_by_partner", Wabas::PartnerId)] {
            manager
                .create_index(Index::create().name(name).table(Wabas::Table).col(column).col(Wabas::WabaId).to_owned())
                .await?;
        }
        manager
            .create_table(
                Table::create()
                    .table(PhoneNumbers::Table)
                    .col(string_len(PhoneNumbers::PhoneNumber, 16).primary_key())
                    .col(string_len(PhoneNumbers::WabaId, ID_LEN))
                    .col(timestamp_with_time_zone(PhoneNumbers::AddTime))
                    .foreign_key(
                        ForeignKey::create()
                            .from(PhoneNumbers::Table, PhoneNumbers::WabaId)
                            .to(Wabas::Table, Wabas::WabaId),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("phone_numbers_by_waba")
                    .table(PhoneNumbers::Table)
                    .col(PhoneNumbers::WabaId)
                    .col(PhoneNumbers::AddTime)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(WabaTransfers::Table)
                    .col(string_len(WabaTransfers::PartnerChangeId, ID_LEN).primary_key())
                    .col(string_len(WabaTransfers::WabaId, ID_LEN))
                    .col(string_len(WabaTransfers::FromPartnerId, ID_LEN))
                    .col(string_len(WabaTransfers::ToPartnerId, ID_LEN))
                    .col(timestamp_with_time_zone(WabaTransfers::TransferTime))
                    .foreign_key(
                        ForeignKey::create()
                            .from(WabaTransfers::Table, WabaTransfers::WabaId)
                            .to(Wabas::Table, Wabas::WabaId),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in ["waba_transfers", "phone_numbers", "wabas", "payment_methods", "clients", "partners"] {
            manager.drop_table(Table::drop().table(table.into_iden()).to_owned()).await?;
        }
        Ok(())
    }
}
