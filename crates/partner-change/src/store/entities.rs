//! sea-orm entities for the tables the partner-change service owns.

pub mod partner_change {
    use sea_orm::entity::prelude::*;

    use crate::domain::{SagaStep, State};

    /// The shared partner change request table: written only by the
    /// partner-change service, read by all three.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "partner_changes")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub partner_change_id: String,
        pub request_id: String,
        pub waba_id: String,
        pub client_id: String,
        pub source_partner_id: String,
        pub destination_partner_id: String,
        pub state: State,
        /// Comma-separated E.164 numbers.
        pub phone_numbers: String,
        pub grant_phone_numbers: String,
        /// Comma-separated: numbers named for the grant that were no longer on the WABA.
        pub skipped_grant_phone_numbers: String,
        pub accepted_terms_version: String,
        pub failure_reason: String,
        pub saga_step: SagaStep,
        pub version: i64,
        /// Retries of the migration after transient errors, since the last claim from APPROVED.
        pub attempts: i32,
        /// The worker that holds the request while it migrates, until `lease_expire_time`.
        pub lease_owner: Option<String>,
        pub lease_expire_time: Option<DateTimeUtc>,
        /// `waba_id` while the request is open; unique, so one open request per WABA.
        pub open_waba_id: Option<String>,
        pub create_time: DateTimeUtc,
        pub update_time: DateTimeUtc,
        pub expire_time: DateTimeUtc,
        /// The W3C `traceparent` of the submit or approval that set the migration going.
        pub trace_parent: Option<String>,
        /// The worker claims the request no earlier than this (the database's clock).
        pub migrate_after: Option<DateTimeUtc>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod event {
    use sea_orm::entity::prelude::*;

    use crate::domain::{EventType, State};

    /// The event log: one row per transition, written in the transaction that
    /// makes the transition (transactional outbox).
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "partner_change_events")]
    pub struct Model {
        /// Taken from `event_log_head` under its row lock, so positions become
        /// visible in order; the stream cursor.
        #[sea_orm(primary_key, auto_increment = false)]
        pub position: i64,
        pub partner_change_id: String,
        pub event_type: EventType,
        pub state: State,
        pub actor: String,
        pub reason: String,
        pub time: DateTimeUtc,
        pub client_id: String,
        pub source_partner_id: String,
        pub destination_partner_id: String,
        /// The request right after the event, as JSON.
        pub snapshot: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
