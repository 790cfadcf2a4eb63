//! Set-up shared by the benchmarks (not measured).

use partnerhub_proto::account::v1::{self as acc, account_service_client::AccountServiceClient};

use crate::Authed;

/// A source partner, a destination that approves automatically, one client
/// that may change partner, and its WABAs at the source.
#[derive(Debug)]
pub struct AutoApproveWorld {
    pub source: acc::Partner,
    pub destination: acc::Partner,
    pub client: acc::Client,
    pub waba_ids: Vec<String>,
}

/// Builds an [`AutoApproveWorld`] with `wabas` WABAs of `numbers_per_waba`
/// numbers each, as support. The destination's terms version is `v1`.
pub async fn auto_approve_world(
    support: &mut AccountServiceClient<Authed>,
    wabas: usize,
    numbers_per_waba: usize,
) -> AutoApproveWorld {
    let partner = |name: &str, auto_approve| acc::CreatePartnerRequest {
        display_name: name.into(),
        payment_processor: acc::PaymentProcessor::Stripe.into(),
        settings: Some(acc::PartnerSettings {
            auto_approve,
            accepting_changes: true,
            terms_version: "v1".into(),
            requires_payment_method: false,
        }),
    };
    let source = support.create_partner(partner("Source", false)).await.unwrap().into_inner().partner.unwrap();
    let destination = support.create_partner(partner("Destination", true)).await.unwrap().into_inner().partner.unwrap();
    let client = support
        .create_client(acc::CreateClientRequest {
            display_name: "Client".into(),
            payment_processor: acc::PaymentProcessor::Stripe.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .client
        .unwrap();
    let info = acc::CompanyInfo {
        legal_name: "Client Ltd".into(),
        address_line: "1 Road".into(),
        city: "Town".into(),
        postal_code: "1000".into(),
        country_code: "DE".into(),
        tax_id: "DE1".into(),
    };
    support
        .update_company_info(acc::UpdateCompanyInfoRequest {
            client_id: client.client_id.clone(),
            company_info: Some(info),
        })
        .await
        .unwrap();
    let mut waba_ids = Vec::with_capacity(wabas);
    for index in 0..wabas {
        let waba = support
            .create_waba(acc::CreateWabaRequest {
                client_id: client.client_id.clone(),
                partner_id: source.partner_id.clone(),
                display_name: format!("WABA {index}"),
            })
            .await
            .unwrap()
            .into_inner()
            .waba
            .unwrap();
        for line in 0..numbers_per_waba {
            support
                .add_phone_number(acc::AddPhoneNumberRequest {
                    waba_id: waba.waba_id.clone(),
                    phone_number: format!("+49{line}{index:09}"),
                })
                .await
                .unwrap();
        }
        waba_ids.push(waba.waba_id);
    }
    AutoApproveWorld { source, destination, client, waba_ids }
}

/// A whole number from the environment variable `name`, else `default`.
pub fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|value| value.parse().ok()).unwrap_or(default)
}

/// A memory figure of process `pid` from `/proc/<pid>/status` (`VmRSS:`, `VmHWM:`), in KiB.
pub fn rss_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|line| line.starts_with(field))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|value| value.parse().ok())
        .unwrap_or(0)
}

/// The whole machine's CPU time so far, from `/proc/stat`, in clock ticks
/// (1/100 s): what ran (user, nice, system, irq, softirq), what was idle
/// (idle, iowait), and what the hypervisor gave to other guests (steal).
#[derive(Debug, Clone, Copy)]
pub struct CpuTicks {
    pub busy: u64,
    pub idle: u64,
    pub steal: u64,
}

pub fn cpu_ticks() -> CpuTicks {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> =
        stat.lines().next().unwrap_or_default().split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    let field = |index: usize| fields.get(index).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal
    CpuTicks { busy: field(0) + field(1) + field(2) + field(5) + field(6), idle: field(3) + field(4), steal: field(7) }
}

impl CpuTicks {
    /// What was spent between `self` and a later reading.
    pub fn until(self, later: CpuTicks) -> CpuTicks {
        CpuTicks {
            busy: later.busy.saturating_sub(self.busy),
            idle: later.idle.saturating_sub(self.idle),
            steal: later.steal.saturating_sub(self.steal),
        }
    }

    fn total(self) -> u64 {
        self.busy + self.idle + self.steal
    }

    /// The share that was idle.
    pub fn idle_share(self) -> f64 {
        if self.total() == 0 { 0.0 } else { self.idle as f64 / self.total() as f64 }
    }

    /// The share taken by other guests of the hypervisor.
    pub fn steal_share(self) -> f64 {
        if self.total() == 0 { 0.0 } else { self.steal as f64 / self.total() as f64 }
    }

    /// The CPU time that ran, per `count` of something (ticks are 1/100 s).
    pub fn busy_per(self, count: usize) -> std::time::Duration {
        std::time::Duration::from_micros(self.busy * 10_000 / count.max(1) as u64)
    }
}

/// The `p`-th percentile (0 to 1) of `sorted` microseconds.
pub fn percentile(sorted: &[u64], p: f64) -> std::time::Duration {
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len().max(1)) - 1;
    std::time::Duration::from_micros(sorted.get(index).copied().unwrap_or(0))
}

/// The tenant that preloaded history belongs to: a client with `count`
/// completed partner changes from one partner to another.
pub const HISTORY_CLIENT: &str = "client-history";
pub const HISTORY_SOURCE: &str = "partner-history-source";
pub const HISTORY_DESTINATION: &str = "partner-history-destination";

/// The ID of the `index`-th of `count` preloaded changes: a UUIDv7 of its
/// creation time, as the service would have given it (so that the history
/// sorts before anything created now, as in a deployment that has been running).
pub fn history_change_id(index: usize, count: usize, now: chrono::DateTime<chrono::Utc>) -> String {
    let span = chrono::Duration::days(30);
    let created = now - span + span * i32::try_from(index).unwrap() / i32::try_from(count).unwrap();
    let (secs, nanos) = (created.timestamp(), created.timestamp_subsec_nanos());
    let uuid = uuid::Uuid::new_v7(uuid::Timestamp::from_unix(uuid::NoContext, secs.unsigned_abs(), nanos));
    format!("pc-{}", uuid.simple())
}

/// Stores `count` completed partner changes of [`HISTORY_CLIENT`], each with
/// its four events (SUBMITTED, APPROVED, MIGRATION_STARTED, COMPLETED) and
/// two permission-log entries, spread over the last 30 days: bulk inserts
/// straight into the tables (not through the API), into a migrated database
/// before the services start. The webhooks service's follower is left where a
/// running deployment's would be, caught up (its cursor at the last event,
/// sealed with `keys`), PostgreSQL's tables vacuumed as autovacuum would
/// have kept them and the load checkpointed. Returns how long it took and the ID of the middle change.
pub async fn preload_history(
    db: &sea_orm::DatabaseConnection,
    keys: &partnerhub_runtime::auth::TokenKeys,
    count: usize,
) -> (std::time::Duration, String) {
    use chrono::{Duration, Utc};
    use partnerhub_partner_change::{
        domain::{PartnerChange, SagaStep, State},
        store::{
            entities::{event, partner_change},
            snapshot, stored_row,
        },
    };
    use partnerhub_permissions::store::entities::log_entry;
    use sea_orm::{ConnectionTrait, EntityTrait, Set, TransactionTrait};

    const CHUNK: usize = 500;
    let started = std::time::Instant::now();
    let now = Utc::now();
    let span = Duration::days(30);
    let mut position = 0i64;
    let mut log_position = 0i64;
    let mut middle = String::new();
    for chunk_start in (0..count).step_by(CHUNK) {
        let chunk = chunk_start..(chunk_start + CHUNK).min(count);
        let (mut changes, mut events, mut log) = (Vec::new(), Vec::new(), Vec::new());
        for index in chunk {
            let created = now - span + span * i32::try_from(index).unwrap() / i32::try_from(count).unwrap();
            let numbers = vec![format!("+4930{index:09}"), format!("+4940{index:09}")];
            let partner_change_id = history_change_id(index, count, now);
            if index == count / 2 {
                middle.clone_from(&partner_change_id);
            }
            let mut change = PartnerChange {
                partner_change_id,
                request_id: format!("history-{index}"),
                waba_id: format!("waba-history-{index:09}"),
                client_id: HISTORY_CLIENT.to_owned(),
                source_partner_id: HISTORY_SOURCE.to_owned(),
                destination_partner_id: HISTORY_DESTINATION.to_owned(),
                state: State::PendingApproval,
                phone_numbers: numbers.clone(),
                grant_phone_numbers: Vec::new(),
                skipped_grant_phone_numbers: Vec::new(),
                accepted_terms_version: "v1".to_owned(),
                failure_reason: String::new(),
                saga_step: SagaStep::Transfer,
                version: 1,
                create_time: created,
                update_time: created,
                expire_time: created + Duration::days(14),
                trace_parent: None,
                migrate_after: None,
            };
            use partnerhub_partner_change::domain::EventType::*;
            for (event_type, state) in [
                (Submitted, State::PendingApproval),
                (Approved, State::Approved),
                (MigrationStarted, State::Migrating),
                (Completed, State::Completed),
            ] {
                change.state = state;
                change.version += 1;
                change.update_time += Duration::milliseconds(10);
                if event_type == Completed {
                    change.saga_step = SagaStep::Permissions;
                }
                position += 1;
                events.push(event::ActiveModel {
                    position: Set(position),
                    partner_change_id: Set(change.partner_change_id.clone()),
                    event_type: Set(event_type),
                    state: Set(state),
                    actor: Set("service:partner-change".to_owned()),
                    reason: Set(String::new()),
                    time: Set(change.update_time),
                    client_id: Set(change.client_id.clone()),
                    source_partner_id: Set(change.source_partner_id.clone()),
                    destination_partner_id: Set(change.destination_partner_id.clone()),
                    snapshot: Set(snapshot::encode(&change).unwrap()),
                });
            }
            for number in &numbers {
                log_position += 1;
                log.push(log_entry::ActiveModel {
                    position: Set(log_position),
                    partner_id: Set(HISTORY_SOURCE.to_owned()),
                    phone_number: Set(number.clone()),
                    allowed: Set(false),
                    time: Set(change.update_time),
                });
            }
            changes.push(stored_row(&change));
        }
        let tx = db.begin().await.unwrap();
        partner_change::Entity::insert_many(changes).exec(&tx).await.unwrap();
        for events in events.chunks(CHUNK) {
            event::Entity::insert_many(events.to_vec()).exec(&tx).await.unwrap();
        }
        log_entry::Entity::insert_many(log).exec(&tx).await.unwrap();
        tx.commit().await.unwrap();
    }
    for (head, last) in [("event_log_head", position), ("permission_log_head", log_position)] {
        db.execute_unprepared(&format!("UPDATE {head} SET last_position = {last} WHERE id = 1")).await.unwrap();
    }
    let hub = partnerhub_partner_change::stream::EventHub::new(16, keys.token_seal().clone());
    let cursor = hub.cursor(position, &partnerhub_partner_change::store::EventScope::All);
    db.execute_unprepared(&format!("UPDATE webhook_follower SET cursor = '{cursor}' WHERE id = 1")).await.unwrap();
    if db.get_database_backend() == sea_orm::DbBackend::Postgres {
        db.execute_unprepared("VACUUM ANALYZE").await.unwrap();
        // The bulk load's dirty pages written out now, not by a checkpoint
        // during the measurement (a running deployment has long written them).
        db.execute_unprepared("CHECKPOINT").await.unwrap();
    }
    (started.elapsed(), middle)
}
