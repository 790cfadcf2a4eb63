//! Persistence for the permissions service.
//!
//! **Architecture Invariant:** the permissions service is the only writer of
//! these tables. It reads one table it does not own, `partner_changes`, the
//! shared request table, to refuse changes to numbers that are mid-migration.

pub mod entities;
pub mod migration;

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use partnerhub_runtime::{
    db::{LogRows, StoreError, append_to_log, begin_write, database_now, head_position, write_then_append_returning},
    ids::new_id,
    time::now,
    validate::PhoneNumber,
};
use sea_orm::{
    AccessMode, ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr,
    DeriveActiveEnum, EntityTrait, EnumIter, IsolationLevel, QueryFilter, QueryOrder, QuerySelect, Set, Statement,
    TransactionTrait, Value,
    sea_query::{Alias, Expr, ExprTrait, OnConflict, Query, StringLen},
};

use self::entities::{application, audit, fence, grant, log_entry};
use crate::{
    domain::{Grant, GrantFilter, Logged},
    error::PermissionsError,
};

/// Replaces every number `client_id` lets `partner_id` manage with `numbers`.
/// `checked_at` is when the caller verified the numbers are with the partner: if
/// a partner change took any of them from the partner since, nothing changes.
pub async fn replace_grants(
    db: &DatabaseConnection,
    actor: &str,
    client_id: &str,
    partner_id: &str,
    numbers: &[PhoneNumber],
    checked_at: DateTime<Utc>,
) -> Result<(Vec<Grant>, Option<Logged>), PermissionsError> {
    let tx = begin_write(db).await?;
    let fences = lock_fences(&tx, partner_id, numbers, None).await?;
    if fences.iter().any(|fence| fence.revoke_time.is_some_and(|revoked| revoked >= checked_at)) {
        return Err(PermissionsError::MovedWhileSaving);
    }
    let before = grant::Entity::find()
        .filter(grant::Column::ClientId.eq(client_id))
        .filter(grant::Column::PartnerId.eq(partner_id))
        .all(&tx)
        .await?;
    grant::Entity::delete_many()
        .filter(grant::Column::ClientId.eq(client_id))
        .filter(grant::Column::PartnerId.eq(partner_id))
        .exec(&tx)
        .await?;
    let grants = insert_grants(&tx, client_id, partner_id, numbers).await?;
    record_audit(&tx, actor, "SET", Some(client_id), partner_id, numbers, None).await?;
    let removed = before
        .iter()
        .map(|old| old.phone_number.as_str())
        .filter(|old| !numbers.iter().any(|new| new.as_str() == *old));
    let mut changes: Vec<(&str, bool)> = removed.map(|number| (number, false)).collect();
    changes.extend(numbers.iter().map(|number| (number.as_str(), true)));
    let logged = append_log(&tx, partner_id, &changes).await?;
    tx.commit().await?;
    Ok((grants, logged))
}

/// Takes `numbers` away from `partner_id` for a partner change, once.
/// Returns how many grants were removed, whether this had happened before,
/// and what was logged now.
///
/// Identical calls may run at the same time: the idempotency record is
/// inserted first (`ON CONFLICT DO NOTHING`), so exactly one of them applies
/// the change while the others wait on its row and then answer from it.
pub async fn revoke(
    db: &DatabaseConnection,
    actor: &str,
    partner_change_id: &str,
    partner_id: &str,
    numbers: &[PhoneNumber],
) -> Result<(i32, bool, Option<Logged>), PermissionsError> {
    let tx = begin_write(db).await?;
    let changes: Vec<(&str, bool)> = numbers.iter().map(|number| (number.as_str(), false)).collect();
    // (Without numbers there is nothing to fence or delete: the general path.)
    if tx.get_database_backend() == DbBackend::Postgres && !numbers.is_empty() {
        let revoke = RevokeWrite { actor, partner_change_id, partner_id, numbers };
        let time = now();
        let Some((removed, last)) =
            revoke_in_two_statements(&tx, &revoke, log_rows(partner_id, &changes, time)).await?
        else {
            let previous = applied(&tx, partner_change_id, Action::Revoke).await?;
            return Ok((previous.affected_count, true, None));
        };
        tx.commit().await?;
        return Ok((removed, false, logged(partner_id, &changes, time, Some(last))));
    }
    if !claim_application(&tx, partner_change_id, Action::Revoke, partner_id).await? {
        let previous = applied(&tx, partner_change_id, Action::Revoke).await?;
        return Ok((previous.affected_count, true, None));
    }
    // Fences first: a concurrent replace of these numbers either committed
    // before (and its grants are deleted below) or sees the revocation and stops.
    lock_fences(&tx, partner_id, numbers, Some(now())).await?;
    let numbers_text: Vec<&str> = numbers.iter().map(PhoneNumber::as_str).collect();
    let removed = grant::Entity::delete_many()
        .filter(grant::Column::PartnerId.eq(partner_id))
        .filter(grant::Column::PhoneNumber.is_in(numbers_text))
        .exec(&tx)
        .await?
        .rows_affected;
    let removed = i32::try_from(removed).unwrap_or(i32::MAX);
    record_affected_count(&tx, partner_change_id, Action::Revoke, removed).await?;
    record_audit(&tx, actor, "REVOKE", None, partner_id, numbers, Some(partner_change_id)).await?;
    let logged = append_log(&tx, partner_id, &changes).await?;
    tx.commit().await?;
    Ok((removed, false, logged))
}

/// A revocation for a partner change, as [`revoke_in_two_statements`] writes it.
struct RevokeWrite<'a> {
    actor: &'a str,
    partner_change_id: &'a str,
    partner_id: &'a str,
    numbers: &'a [PhoneNumber],
}

/// [`revoke`]'s writes and its log append on PostgreSQL, in its transaction,
/// as two statements where there were six: first the claim, the fences
/// (locked in number order) and the audit entry, the latter two only if the
/// claim was taken; then the grants' delete, the count recorded on the claim
/// and the append of `log`. The delete must be a statement of its own, after
/// the fences: it then sees the grants of a replace that held a fence until it
/// committed. Returns how many grants were removed and the log's last position
/// taken, or `None` when the claim was taken before (nothing was written).
async fn revoke_in_two_statements(
    tx: &DatabaseTransaction,
    revoke: &RevokeWrite<'_>,
    log: LogRows<'_>,
) -> Result<Option<(i32, i64)>, DbErr> {
    let RevokeWrite { actor, partner_change_id, partner_id, numbers } = *revoke;
    let (listed, sorted) = audited_and_sorted(numbers);
    let mut values: Vec<Value> = vec![
        partner_change_id.into(),
        partner_id.into(),
        now().into(),
        new_id("audit").into(),
        actor.into(),
        listed.into(),
    ];
    let fenced_numbers = placeholders(&mut values, &sorted);
    let claim_fence_and_audit = format!(
        r#"WITH claimed AS (
            INSERT INTO "permission_applications" ("partner_change_id", "action", "partner_id", "affected_count", "apply_time")
            VALUES ($1, 'REVOKE', $2, 0, $3) ON CONFLICT ("partner_change_id", "action") DO NOTHING RETURNING 1),
        fenced AS (
            INSERT INTO "permission_fences" ("partner_id", "phone_number", "revoke_time", "touch_time")
            SELECT $2, n.phone_number, $3, $3 FROM (VALUES {fenced_numbers}) AS n (phone_number)
            WHERE EXISTS (SELECT 1 FROM claimed)
            ON CONFLICT ("partner_id", "phone_number")
            DO UPDATE SET "revoke_time" = EXCLUDED."revoke_time", "touch_time" = EXCLUDED."touch_time"),
        audited AS (
            INSERT INTO "permission_audit" ("audit_id", "actor", "action", "client_id", "partner_id", "phone_numbers", "partner_change_id", "time")
            SELECT $4, $5, 'REVOKE', NULL, $2, $6, $1, $3 WHERE EXISTS (SELECT 1 FROM claimed))
        SELECT count(*) AS claimed FROM claimed"#
    );
    let claimed = tx
        .query_one_raw(Statement::from_sql_and_values(DbBackend::Postgres, claim_fence_and_audit, values))
        .await?
        .map(|row| row.try_get::<i64>("", "claimed"))
        .transpose()?
        .unwrap_or(0);
    if claimed == 0 {
        return Ok(None);
    }
    let mut values: Vec<Value> = vec![partner_id.into(), partner_change_id.into()];
    let revoked_numbers = placeholders(&mut values, &sorted);
    let delete = format!(
        r#"removed AS (
            DELETE FROM "permission_grants" WHERE "partner_id" = $1 AND "phone_number" IN ({revoked_numbers}) RETURNING 1)"#
    );
    let count = r#"UPDATE "permission_applications" SET "affected_count" = (SELECT count(*) FROM removed)
        WHERE "partner_change_id" = $2 AND "action" = 'REVOKE' RETURNING "affected_count""#;
    let count = Statement::from_sql_and_values(DbBackend::Postgres, count, values);
    let (removed, last) = write_then_append_returning(tx, &delete, count, "affected_count", log)
        .await?
        .ok_or_else(|| DbErr::RecordNotFound(format!("permission application {partner_change_id}/REVOKE")))?;
    Ok(Some((i32::try_from(removed).unwrap_or(i32::MAX), last)))
}

/// The numbers as the audit lists them (as asked for, comma-separated), and in
/// number order, the order their fences are locked in.
fn audited_and_sorted(numbers: &[PhoneNumber]) -> (String, Vec<&str>) {
    let asked: Vec<&str> = numbers.iter().map(PhoneNumber::as_str).collect();
    let listed = asked.join(",");
    let mut sorted = asked;
    sorted.sort_unstable();
    (listed, sorted)
}

/// Appends `items` (at least one) to `values` and returns their placeholders,
/// each in parentheses, comma-separated: rows of a `VALUES` list, or an `IN` list.
fn placeholders(values: &mut Vec<Value>, items: &[&str]) -> String {
    let mut rows = Vec::with_capacity(items.len());
    for item in items {
        values.push((*item).into());
        rows.push(format!("(${})", values.len()));
    }
    rows.join(", ")
}

/// Lets `partner_id` manage `numbers` of `client_id` for a partner change,
/// once, even when identical calls run at the same time (see [`revoke`]). On
/// PostgreSQL its writes and its log append are one statement, committed on
/// its own (one round trip where there were eight). Returns the grants,
/// whether this had happened before, and what was logged now.
pub async fn grant(
    db: &DatabaseConnection,
    actor: &str,
    partner_change_id: &str,
    client_id: &str,
    partner_id: &str,
    numbers: &[PhoneNumber],
) -> Result<(Vec<Grant>, bool, Option<Logged>), PermissionsError> {
    let changes: Vec<(&str, bool)> = numbers.iter().map(|number| (number.as_str(), true)).collect();
    if db.get_database_backend() == DbBackend::Postgres && !numbers.is_empty() {
        let grant = GrantWrite { actor, partner_change_id, client_id, partner_id, numbers, time: now() };
        let log = log_rows(partner_id, &changes, grant.time);
        return Ok(match grant_in_one_statement(db, &grant, log).await? {
            Some(last) => {
                let logged = logged(partner_id, &changes, grant.time, Some(last));
                (granted(client_id, partner_id, numbers, grant.time), false, logged)
            }
            None => (grants_of(db, partner_id, numbers).await?, true, None),
        });
    }
    let tx = begin_write(db).await?;
    let Some(grants) = grant_step_by_step(&tx, actor, partner_change_id, client_id, partner_id, numbers).await? else {
        let grants = grants_of(&tx, partner_id, numbers).await?;
        tx.commit().await?;
        return Ok((grants, true, None));
    };
    let logged = append_log(&tx, partner_id, &changes).await?;
    tx.commit().await?;
    Ok((grants, false, logged))
}

/// [`grant`]'s writes one statement each; `None` when the claim was taken before.
async fn grant_step_by_step(
    tx: &DatabaseTransaction,
    actor: &str,
    partner_change_id: &str,
    client_id: &str,
    partner_id: &str,
    numbers: &[PhoneNumber],
) -> Result<Option<Vec<Grant>>, DbErr> {
    if !claim_application(tx, partner_change_id, Action::Grant, partner_id).await? {
        return Ok(None);
    }
    lock_fences(tx, partner_id, numbers, None).await?;
    let grants = insert_grants(tx, client_id, partner_id, numbers).await?;
    let count = i32::try_from(numbers.len()).unwrap_or(i32::MAX);
    record_affected_count(tx, partner_change_id, Action::Grant, count).await?;
    record_audit(tx, actor, "GRANT", Some(client_id), partner_id, numbers, Some(partner_change_id)).await?;
    Ok(Some(grants))
}

/// A grant for a partner change, as [`grant_in_one_statement`] writes it.
struct GrantWrite<'a> {
    actor: &'a str,
    partner_change_id: &'a str,
    client_id: &'a str,
    partner_id: &'a str,
    numbers: &'a [PhoneNumber],
    time: DateTime<Utc>,
}

/// [`grant`]'s writes and its log append on PostgreSQL as one statement,
/// committed on its own: the claim (with its count), then, only if the claim
/// was taken, the fences (locked in number order), the grants (inserted from
/// the fences' rows, so after them), the audit entry and the append of `log`.
/// The log's last position, or `None` when the claim was taken before
/// (nothing was written).
async fn grant_in_one_statement(
    db: &DatabaseConnection,
    grant: &GrantWrite<'_>,
    log: LogRows<'_>,
) -> Result<Option<i64>, DbErr> {
    let (listed, sorted) = audited_and_sorted(grant.numbers);
    let mut values: Vec<Value> = vec![
        grant.partner_change_id.into(),
        grant.partner_id.into(),
        i32::try_from(grant.numbers.len()).unwrap_or(i32::MAX).into(),
        grant.time.into(),
        grant.client_id.into(),
        new_id("audit").into(),
        grant.actor.into(),
        listed.into(),
    ];
    let fenced_numbers = placeholders(&mut values, &sorted);
    let claim_fence_and_grant = format!(
        r#"claimed AS (
            INSERT INTO "permission_applications" ("partner_change_id", "action", "partner_id", "affected_count", "apply_time")
            VALUES ($1, 'GRANT', $2, $3, $4) ON CONFLICT ("partner_change_id", "action") DO NOTHING RETURNING 1),
        fenced AS (
            INSERT INTO "permission_fences" ("partner_id", "phone_number", "revoke_time", "touch_time")
            SELECT $2, n.phone_number, NULL::timestamptz, $4 FROM (VALUES {fenced_numbers}) AS n (phone_number)
            WHERE EXISTS (SELECT 1 FROM claimed)
            ON CONFLICT ("partner_id", "phone_number") DO UPDATE SET "touch_time" = EXCLUDED."touch_time"
            RETURNING "phone_number"),
        granted AS (
            INSERT INTO "permission_grants" ("partner_id", "phone_number", "client_id", "grant_time")
            SELECT $2, "phone_number", $5, $4 FROM fenced
            ON CONFLICT ("partner_id", "phone_number")
            DO UPDATE SET "client_id" = EXCLUDED."client_id", "grant_time" = EXCLUDED."grant_time")"#
    );
    let audit = r#"INSERT INTO "permission_audit" ("audit_id", "actor", "action", "client_id", "partner_id", "phone_numbers", "partner_change_id", "time")
        SELECT $6, $7, 'GRANT', $5, $2, $8, $1, $4 WHERE EXISTS (SELECT 1 FROM claimed) RETURNING 1 AS "audited""#;
    let audit = Statement::from_sql_and_values(DbBackend::Postgres, audit, values);
    let appended = write_then_append_returning(db, &claim_fence_and_grant, audit, "audited", log).await?;
    Ok(appended.map(|(_, last)| last))
}

/// What a partner change applies to permissions, at most once each (stored by name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
pub enum Action {
    #[sea_orm(string_value = "REVOKE")]
    Revoke,
    #[sea_orm(string_value = "GRANT")]
    Grant,
}

/// Whether this partner change already applied `action`.
pub async fn find_application(
    db: &impl ConnectionTrait,
    partner_change_id: &str,
    action: Action,
) -> Result<Option<application::Model>, DbErr> {
    application::Entity::find_by_id((partner_change_id.to_owned(), action)).one(db).await
}

/// The record of an application that [`claim_application`] found taken.
async fn applied(
    tx: &DatabaseTransaction,
    partner_change_id: &str,
    action: Action,
) -> Result<application::Model, PermissionsError> {
    find_application(tx, partner_change_id, action).await?.ok_or_else(|| {
        // The insert found the key taken, so the row exists once its writer committed.
        PermissionsError::Store(StoreError::Other(DbErr::RecordNotFound(format!(
            "permission application {partner_change_id}/{action:?}"
        ))))
    })
}

/// Whether `partner_id` may manage `number`, read from the database: it holds
/// the grant, and no migration is taking the number away from it.
pub async fn is_allowed(db: &DatabaseConnection, partner_id: &str, number: &str) -> Result<bool, StoreError> {
    if grant::Entity::find_by_id((partner_id.to_owned(), number.to_owned())).one(db).await?.is_none() {
        return Ok(false);
    }
    let fenced = migrating_numbers(db, Some(partner_id)).await?;
    Ok(!fenced.get(partner_id).is_some_and(|numbers| numbers.contains(number)))
}

/// Partner ID → the numbers a migration is taking away from it right now:
/// every number of a request whose migration has started, under its source
/// partner (of one partner only, if given). From the moment a migration
/// starts until it completes (after its revoke), the source partner is denied
/// those numbers, so no replica lets it act on a number that has already
/// moved. Reads the partner-change service's published view [`MOVES_VIEW`].
pub async fn migrating_numbers(
    db: &impl ConnectionTrait,
    partner_id: Option<&str>,
) -> Result<HashMap<String, HashSet<String>>, DbErr> {
    let mut query = Query::select()
        .columns([Alias::new("source_partner_id"), Alias::new("phone_numbers")])
        .from(Alias::new(MOVES_VIEW))
        // The column itself, not compared with a parameter: the view's state
        // condition then meets the request table's state index in every plan.
        .and_where(Expr::col(Alias::new("migrating")))
        .to_owned();
    if let Some(partner_id) = partner_id {
        query.and_where(Expr::col(Alias::new("source_partner_id")).eq(partner_id));
    }
    let mut fenced: HashMap<String, HashSet<String>> = HashMap::new();
    for row in db.query_all(&query).await? {
        fence(&mut fenced, row.try_get("", "source_partner_id")?, &row.try_get::<String>("", "phone_numbers")?);
    }
    Ok(fenced)
}

/// Adds a moves row (its source partner, its numbers comma-separated) to `fenced`.
fn fence(fenced: &mut HashMap<String, HashSet<String>>, partner_id: String, numbers: &str) {
    fenced.entry(partner_id).or_default().extend(numbers.split(',').filter(|n| !n.is_empty()).map(str::to_owned));
}

/// The one thing this service reads of the partner-change service's data: the
/// view it publishes of requests that are moving, or about to move, a WABA
/// (`partner_change_id`, `waba_id`, `source_partner_id`, `phone_numbers`,
/// `migrating`, `starts_after`). Never the request table itself.
pub const MOVES_VIEW: &str = "partner_change_moves";

/// The grants `partner_id` holds on `numbers`, in number order.
async fn grants_of(db: &impl ConnectionTrait, partner_id: &str, numbers: &[PhoneNumber]) -> Result<Vec<Grant>, DbErr> {
    let models = grant::Entity::find()
        .filter(grant::Column::PartnerId.eq(partner_id))
        .filter(grant::Column::PhoneNumber.is_in(numbers.iter().map(PhoneNumber::as_str)))
        .order_by_asc(grant::Column::PhoneNumber)
        .all(db)
        .await?;
    Ok(models.into_iter().map(grant_from_model).collect())
}

/// One page of grants in (partner, number) order, after the key `after`.
pub async fn list_grants(
    db: &impl ConnectionTrait,
    filter: &GrantFilter,
    after: Option<(&str, &str)>,
    page_size: u64,
) -> Result<(Vec<Grant>, bool), DbErr> {
    let mut query = grant::Entity::find();
    if let Some(client_id) = &filter.client_id {
        query = query.filter(grant::Column::ClientId.eq(client_id));
    }
    if let Some(partner_id) = &filter.partner_id {
        query = query.filter(grant::Column::PartnerId.eq(partner_id));
    }
    if let Some((partner_id, number)) = after {
        query = query.filter(
            grant::Column::PartnerId
                .gt(partner_id)
                .or(grant::Column::PartnerId.eq(partner_id).and(grant::Column::PhoneNumber.gt(number))),
        );
    }
    let limit = page_size.saturating_add(1);
    let models = query
        .order_by_asc(grant::Column::PartnerId)
        .order_by_asc(grant::Column::PhoneNumber)
        .limit(limit)
        .all(db)
        .await?;
    let (models, more) = partnerhub_runtime::pagination::split_page(models, page_size);
    Ok((models.into_iter().map(grant_from_model).collect(), more))
}

/// The first partner change, if any, that is migrating one of `waba_ids`, or
/// approved and due to start (not scheduled for later: a change scheduled for
/// next week leaves the client free to manage its permissions until then).
/// Reads the partner-change service's published view [`MOVES_VIEW`].
pub async fn migration_in_progress(db: &DatabaseConnection, waba_ids: &[String]) -> Result<Option<String>, DbErr> {
    if waba_ids.is_empty() {
        return Ok(None);
    }
    let moving_or_due = Condition::any()
        .add(Expr::col(Alias::new("migrating")).eq(true))
        .add(Expr::col(Alias::new("starts_after")).is_null())
        .add(Expr::col(Alias::new("starts_after")).lte(database_now(db.get_database_backend())));
    let query = Query::select()
        .column(Alias::new("partner_change_id"))
        .from(Alias::new(MOVES_VIEW))
        .cond_where(moving_or_due)
        .and_where(Expr::col(Alias::new("waba_id")).is_in(waba_ids.iter().map(String::as_str)))
        .limit(1)
        .to_owned();
    let row = db.query_one(&query).await?;
    row.map(|row| row.try_get::<String>("", "partner_change_id")).transpose()
}

/// The PostgreSQL notification channel that wakes every replica's permission cache.
pub const LOG_CHANNEL: &str = "partnerhub_permission_log";

/// The permission log as `partnerhub_runtime::retention` prunes it.
pub const PERMISSION_LOG: partnerhub_runtime::retention::PrunedLog = partnerhub_runtime::retention::PrunedLog {
    table: "permission_log",
    task: "permission_log_pruner",
    lock_key: 7_262_102,
};

/// Appends `changes` to the permission log, last thing before commit (see
/// [`append_to_log`]: positions become visible in order, as in the event log).
/// Returns what was logged (`None` if `changes` is empty).
async fn append_log(
    tx: &DatabaseTransaction,
    partner_id: &str,
    changes: &[(&str, bool)],
) -> Result<Option<Logged>, DbErr> {
    let time = now();
    let last = append_to_log(tx, log_rows(partner_id, changes, time)).await?;
    Ok(logged(partner_id, changes, time, last))
}

/// `changes` as logged, ending at position `last` (`None` if nothing was).
fn logged(partner_id: &str, changes: &[(&str, bool)], time: DateTime<Utc>, last: Option<i64>) -> Option<Logged> {
    Some(Logged {
        partner_id: partner_id.to_owned(),
        entries: changes.iter().map(|(number, allowed)| ((*number).to_owned(), *allowed)).collect(),
        time,
        last: last?,
    })
}

/// The permission log's rows for `changes` (a number, and whether it is now allowed) of `partner_id`.
fn log_rows<'a>(partner_id: &str, changes: &[(&str, bool)], time: DateTime<Utc>) -> LogRows<'a> {
    let rows = changes
        .iter()
        .map(|(number, allowed)| vec![partner_id.into(), (*number).into(), (*allowed).into(), time.into()])
        .collect();
    LogRows {
        head_table: "permission_log_head",
        table: PERMISSION_LOG.table,
        columns: &["partner_id", "phone_number", "allowed", "time"],
        rows,
        channel: LOG_CHANNEL,
    }
}

/// Every grant, and the log position they are current at, read in one snapshot.
pub async fn snapshot(db: &DatabaseConnection) -> Result<(Vec<(String, String)>, i64), DbErr> {
    let tx = match db.get_database_backend() {
        // One snapshot for both reads; on SQLite a read transaction already is one.
        DbBackend::Postgres => {
            db.begin_with_config(Some(IsolationLevel::RepeatableRead), Some(AccessMode::ReadOnly)).await?
        }
        _ => db.begin().await?,
    };
    let position = head_position(&tx, "permission_log_head").await?;
    let grants = grant::Entity::find()
        .select_only()
        .column(grant::Column::PartnerId)
        .column(grant::Column::PhoneNumber)
        .into_tuple::<(String, String)>()
        .all(&tx)
        .await?;
    tx.commit().await?;
    Ok((grants, position))
}

/// In one read (one snapshot): the numbers each partner is fenced off by a
/// migration (see [`migrating_numbers`]), and the log entries after `after`,
/// oldest first, at most `limit`.
pub async fn migrating_and_log_after(
    db: &DatabaseConnection,
    after: i64,
    limit: u64,
) -> Result<(HashMap<String, HashSet<String>>, Vec<log_entry::Model>), DbErr> {
    let backend = db.get_database_backend();
    let (after_placeholder, limit_placeholder) = match backend {
        DbBackend::Postgres => ("$1", "$2"),
        _ => ("?", "?"),
    };
    // A moves row has no position; its numbers are comma-separated.
    let sql = format!(
        r#"SELECT CAST(NULL AS BIGINT) AS "position", "source_partner_id" AS "partner_id",
            "phone_numbers" AS "phone_number", CAST(NULL AS BOOLEAN) AS "allowed", CAST(NULL AS TIMESTAMPTZ) AS "time"
        FROM "{MOVES_VIEW}" WHERE "migrating"
        UNION ALL
        SELECT * FROM (SELECT "position", "partner_id", "phone_number", "allowed", "time" FROM "{log}"
            WHERE "position" > {after_placeholder} ORDER BY "position" LIMIT {limit_placeholder}) AS "entries""#,
        log = PERMISSION_LOG.table,
    );
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = db.query_all_raw(Statement::from_sql_and_values(backend, sql, [after.into(), limit.into()])).await?;
    let mut fenced: HashMap<String, HashSet<String>> = HashMap::new();
    let mut entries = Vec::with_capacity(rows.len());
    for row in rows {
        let partner_id: String = row.try_get("", "partner_id")?;
        let phone_number: String = row.try_get("", "phone_number")?;
        match row.try_get::<Option<i64>>("", "position")? {
            None => fence(&mut fenced, partner_id, &phone_number),
            Some(position) => entries.push(log_entry::Model {
                position,
                partner_id,
                phone_number,
                allowed: row.try_get("", "allowed")?,
                time: row.try_get("", "time")?,
            }),
        }
    }
    // A union's order is not promised: the log's part is put back in order.
    entries.sort_unstable_by_key(|entry| entry.position);
    Ok((fenced, entries))
}

/// Log entries after `after`, oldest first, at most `limit`.
pub async fn log_after(db: &DatabaseConnection, after: i64, limit: u64) -> Result<Vec<log_entry::Model>, DbErr> {
    log_entry::Entity::find()
        .filter(log_entry::Column::Position.gt(after))
        .order_by_asc(log_entry::Column::Position)
        .limit(limit)
        .all(db)
        .await
}

/// Upserts (and so locks, in a fixed order) the fence of each number; returns them.
async fn lock_fences(
    tx: &DatabaseTransaction,
    partner_id: &str,
    numbers: &[PhoneNumber],
    revoke_time: Option<DateTime<Utc>>,
) -> Result<Vec<fence::Model>, DbErr> {
    if numbers.is_empty() {
        return Ok(Vec::new());
    }
    let mut sorted: Vec<&PhoneNumber> = numbers.iter().collect();
    sorted.sort();
    let time = now();
    let rows = sorted.iter().map(|number| fence::ActiveModel {
        partner_id: Set(partner_id.to_owned()),
        phone_number: Set(number.as_str().to_owned()),
        revoke_time: Set(revoke_time),
        touch_time: Set(time),
    });
    let mut on_conflict = OnConflict::columns([fence::Column::PartnerId, fence::Column::PhoneNumber]);
    if revoke_time.is_some() {
        on_conflict.update_columns([fence::Column::TouchTime, fence::Column::RevokeTime]);
    } else {
        on_conflict.update_column(fence::Column::TouchTime);
    }
    // Every row comes back, inserted or updated: the upsert always updates.
    fence::Entity::insert_many(rows).on_conflict(on_conflict).exec_with_returning(tx).await
}

async fn insert_grants(
    tx: &DatabaseTransaction,
    client_id: &str,
    partner_id: &str,
    numbers: &[PhoneNumber],
) -> Result<Vec<Grant>, DbErr> {
    if numbers.is_empty() {
        return Ok(Vec::new());
    }
    let time = now();
    let rows = numbers.iter().map(|number| grant::ActiveModel {
        partner_id: Set(partner_id.to_owned()),
        phone_number: Set(number.as_str().to_owned()),
        client_id: Set(client_id.to_owned()),
        grant_time: Set(time),
    });
    let on_conflict = OnConflict::columns([grant::Column::PartnerId, grant::Column::PhoneNumber])
        .update_columns([grant::Column::ClientId, grant::Column::GrantTime])
        .to_owned();
    grant::Entity::insert_many(rows).on_conflict(on_conflict).exec(tx).await?;
    Ok(granted(client_id, partner_id, numbers, time))
}

/// The grants of `numbers` written at `time`, in number order.
fn granted(client_id: &str, partner_id: &str, numbers: &[PhoneNumber], time: DateTime<Utc>) -> Vec<Grant> {
    let mut grants: Vec<Grant> = numbers
        .iter()
        .map(|number| Grant {
            client_id: client_id.to_owned(),
            partner_id: partner_id.to_owned(),
            phone_number: number.as_str().to_owned(),
            grant_time: time,
        })
        .collect();
    grants.sort_by(|a, b| a.phone_number.cmp(&b.phone_number));
    grants
}

/// Inserts the idempotency record of `action` for a partner change, unless it
/// exists; true when this transaction inserted it (and so must apply the
/// action). A concurrent identical insert waits here until the first commits.
async fn claim_application(
    tx: &DatabaseTransaction,
    partner_change_id: &str,
    action: Action,
    partner_id: &str,
) -> Result<bool, DbErr> {
    let record = application::ActiveModel {
        partner_change_id: Set(partner_change_id.to_owned()),
        action: Set(action),
        partner_id: Set(partner_id.to_owned()),
        affected_count: Set(0),
        apply_time: Set(now()),
    };
    let on_conflict = OnConflict::columns([application::Column::PartnerChangeId, application::Column::Action])
        .do_nothing()
        .to_owned();
    let inserted = application::Entity::insert(record).on_conflict(on_conflict).exec_without_returning(tx).await?;
    Ok(inserted == 1)
}

async fn record_affected_count(
    tx: &DatabaseTransaction,
    partner_change_id: &str,
    action: Action,
    affected_count: i32,
) -> Result<(), DbErr> {
    application::Entity::update_many()
        .col_expr(application::Column::AffectedCount, Expr::value(affected_count))
        .filter(application::Column::PartnerChangeId.eq(partner_change_id))
        .filter(application::Column::Action.eq(action))
        .exec(tx)
        .await?;
    Ok(())
}

async fn record_audit(
    tx: &DatabaseTransaction,
    actor: &str,
    action: &str,
    client_id: Option<&str>,
    partner_id: &str,
    numbers: &[PhoneNumber],
    partner_change_id: Option<&str>,
) -> Result<(), DbErr> {
    let numbers: Vec<&str> = numbers.iter().map(PhoneNumber::as_str).collect();
    audit::Entity::insert(audit::ActiveModel {
        audit_id: Set(new_id("audit")),
        actor: Set(actor.to_owned()),
        action: Set(action.to_owned()),
        client_id: Set(client_id.map(str::to_owned)),
        partner_id: Set(partner_id.to_owned()),
        phone_numbers: Set(numbers.join(",")),
        partner_change_id: Set(partner_change_id.map(str::to_owned)),
        time: Set(now()),
    })
    .exec(tx)
    .await?;
    Ok(())
}

fn grant_from_model(model: grant::Model) -> Grant {
    Grant {
        client_id: model.client_id,
        partner_id: model.partner_id,
        phone_number: model.phone_number,
        grant_time: model.grant_time,
    }
}

/// Runs this service's migrations.
pub async fn migrate(db: &DatabaseConnection) -> Result<(), DbErr> {
    partnerhub_runtime::db::migrate::<migration::Migrator>(db).await
}
