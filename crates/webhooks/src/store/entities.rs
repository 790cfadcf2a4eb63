//! sea-orm entities for the tables the webhooks service owns.

pub mod endpoint {
    use sea_orm::entity::prelude::*;

    /// An HTTPS address receiving one partner's or one client's events.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "webhook_endpoints")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub webhook_endpoint_id: String,
        pub partner_id: Option<String>,
        pub client_id: Option<String>,
        pub url: String,
        pub description: String,
        pub disabled: bool,
        pub disabled_reason: String,
        pub secret: String,
        pub previous_secret: Option<String>,
        pub previous_secret_expire_time: Option<DateTimeUtc>,
        /// Since when every attempt to it has failed; `None` after a success.
        pub failing_since: Option<DateTimeUtc>,
        pub create_time: DateTimeUtc,
        pub update_time: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod delivery {
    use sea_orm::entity::prelude::*;

    use crate::domain::DeliveryState;

    /// One event on its way to one endpoint; its ID is the `webhook-id`.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "webhook_deliveries")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub webhook_delivery_id: String,
        pub webhook_endpoint_id: String,
        pub event_cursor: String,
        pub event_type: String,
        pub partner_change_id: String,
        /// The JSON body, exactly as signed and sent on every attempt.
        pub body: String,
        pub state: DeliveryState,
        pub attempt_count: i32,
        pub next_attempt_time: Option<DateTimeUtc>,
        /// A replica is sending it until then; after, another may.
        pub lease_until: Option<DateTimeUtc>,
        pub create_time: DateTimeUtc,
        /// The W3C `traceparent` of its partner change: its attempts join that trace.
        pub trace_parent: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod attempt {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "webhook_attempts")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i32,
        pub webhook_delivery_id: String,
        pub attempt_time: DateTimeUtc,
        /// 0 when no answer came.
        pub http_status: i32,
        pub error: String,
        pub duration_ms: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod follower {
    use sea_orm::entity::prelude::*;

    /// The one row: where in the event stream the webhooks service is, and
    /// which replica follows it until when.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "webhook_follower")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: i32,
        pub cursor: String,
        pub holder: Option<String>,
        pub lease_until: Option<DateTimeUtc>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
