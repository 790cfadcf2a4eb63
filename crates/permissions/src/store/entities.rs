//! sea-orm entities for the tables the permissions service owns.

pub mod grant {
    use sea_orm::entity::prelude::*;

    /// Partner `partner_id` may manage `phone_number`, granted by its client.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "permission_grants")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub partner_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub phone_number: String,
        pub client_id: String,
        pub grant_time: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod fence {
    use sea_orm::entity::prelude::*;

    /// One row per (partner, number) ever granted or revoked: writers lock it,
    /// so a replace and a revocation of the same number never interleave.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "permission_fences")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub partner_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub phone_number: String,
        /// When a partner change last took the number away from this partner.
        pub revoke_time: Option<DateTimeUtc>,
        pub touch_time: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod application {
    use sea_orm::entity::prelude::*;

    use crate::store::Action;

    /// What a partner change applied (`REVOKE` or `GRANT`): the idempotency record.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "permission_applications")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub partner_change_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub action: Action,
        pub partner_id: String,
        pub affected_count: i32,
        pub apply_time: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod audit {
    use sea_orm::entity::prelude::*;

    /// Every permission change: who, when, what, which numbers.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "permission_audit")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub audit_id: String,
        pub actor: String,
        pub action: String,
        pub client_id: Option<String>,
        pub partner_id: String,
        /// Comma-separated E.164 numbers.
        pub phone_numbers: String,
        pub partner_change_id: Option<String>,
        pub time: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod log_entry {
    use sea_orm::entity::prelude::*;

    /// One change of one (partner, number): allowed from now on, or not.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "permission_log")]
    pub struct Model {
        /// Taken from `permission_log_head` under its row lock, so positions
        /// become visible in order.
        #[sea_orm(primary_key, auto_increment = false)]
        pub position: i64,
        pub partner_id: String,
        pub phone_number: String,
        pub allowed: bool,
        pub time: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
