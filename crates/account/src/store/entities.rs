//! sea-orm entities for the tables the account service owns. Only `store`
//! sees these; the rest of the crate works with domain types.

pub mod partner {
    use sea_orm::entity::prelude::*;

    use crate::domain::PaymentProcessor;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "partners")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub partner_id: String,
        pub display_name: String,
        pub payment_processor: PaymentProcessor,
        pub auto_approve: bool,
        pub accepting_changes: bool,
        pub terms_version: String,
        pub requires_payment_method: bool,
        pub create_time: DateTimeUtc,
        pub update_time: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod client {
    use sea_orm::entity::prelude::*;

    use crate::domain::PaymentProcessor;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "clients")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub client_id: String,
        pub display_name: String,
        pub payment_processor: PaymentProcessor,
        pub legal_name: String,
        pub address_line: String,
        pub city: String,
        pub postal_code: String,
        pub country_code: String,
        pub tax_id: String,
        pub legacy: bool,
        pub create_time: DateTimeUtc,
        pub update_time: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod payment_method {
    use sea_orm::entity::prelude::*;

    use crate::domain::PaymentMethodType;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "payment_methods")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub payment_method_id: String,
        pub client_id: String,
        pub r#type: PaymentMethodType,
        pub last4: String,
        pub create_time: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod waba {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "wabas")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub waba_id: String,
        pub client_id: String,
        pub partner_id: String,
        pub display_name: String,
        /// Bumped by every change of the row.
        pub version: i64,
        pub create_time: DateTimeUtc,
        pub update_time: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod phone_number {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "phone_numbers")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub phone_number: String,
        pub waba_id: String,
        pub add_time: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod waba_transfer {
    use sea_orm::entity::prelude::*;

    /// One row per partner change that moved a WABA: the idempotency record of `TransferWaba`.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "waba_transfers")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub partner_change_id: String,
        pub waba_id: String,
        pub from_partner_id: String,
        pub to_partner_id: String,
        pub transfer_time: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
