//! Retention of the append-only logs (the partner change event log, the
//! permission log): entries older than `retention.events` are deleted in
//! batches, oldest first, by one replica at a time.
//!
//! **Architecture Invariant:** pruning deletes a *prefix* of a log in position
//! order, and always keeps the newest entry. Positions are dense, so a reader
//! that has read up to position P has missed nothing exactly when the oldest
//! retained position is at most P + 1; [`oldest_position`] read *after* a read
//! tells whether that read may have lost something (the prefix only grows).

use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, DbErr, Statement,
    sea_query::{Alias, Expr, ExprTrait, Func, Order, Query},
};
use tokio_util::sync::CancellationToken;

use crate::{config::RetentionSettings, db::begin_write, outage::Outage};

/// A log that is pruned: a table with a dense `position` and a `time` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrunedLog {
    pub table: &'static str,
    /// Names its pruner in logs and in the background-failure metrics.
    pub task: &'static str,
    /// Held for the length of a batch's transaction on PostgreSQL, so that one
    /// replica at a time prunes this log (any constant unique to the log).
    pub lock_key: i64,
}

/// Deletes, in one transaction, up to `batch` of the oldest entries of `log`
/// whose time is before `older_than`, stopping at the first newer one and
/// never deleting the newest entry. Returns how many were deleted: 0 also when
/// another replica is pruning the same log right now.
pub async fn prune(
    db: &DatabaseConnection,
    log: PrunedLog,
    older_than: DateTime<Utc>,
    batch: u32,
) -> Result<u64, DbErr> {
    let backend = db.get_database_backend();
    let table = Alias::new(log.table);
    let tx = begin_write(db).await?;
    if backend == DbBackend::Postgres {
        let sql = format!("SELECT pg_try_advisory_xact_lock({}) AS locked", log.lock_key);
        let row = tx.query_one_raw(Statement::from_string(backend, sql)).await?;
        if !row.map(|row| row.try_get::<bool>("", "locked")).transpose()?.unwrap_or(false) {
            return Ok(0);
        }
    }
    let Some(newest) = newest_position(&tx, log.table).await? else { return Ok(0) };
    let oldest = Query::select()
        .columns([Alias::new("position"), Alias::new("time")])
        .from(table.clone())
        .and_where(Expr::col(Alias::new("position")).lt(newest))
        .order_by(Alias::new("position"), Order::Asc)
        .limit(u64::from(batch))
        .to_owned();
    let mut through = None;
    for row in tx.query_all(&oldest).await? {
        let time: DateTime<Utc> = row.try_get("", "time")?;
        if time >= older_than {
            break;
        }
        through = Some(row.try_get::<i64>("", "position")?);
    }
    let Some(through) = through else { return Ok(0) };
    let delete = Query::delete().from_table(table).and_where(Expr::col(Alias::new("position")).lte(through)).to_owned();
    let deleted = tx.execute(&delete).await?.rows_affected();
    tx.commit().await?;
    Ok(deleted)
}

/// The oldest position `log` still holds (`None` when it holds nothing).
pub async fn oldest_position(db: &impl ConnectionTrait, table: &str) -> Result<Option<i64>, DbErr> {
    position(db, table, Func::min(Expr::col(Alias::new("position")))).await
}

async fn newest_position(db: &impl ConnectionTrait, table: &str) -> Result<Option<i64>, DbErr> {
    position(db, table, Func::max(Expr::col(Alias::new("position")))).await
}

async fn position(
    db: &impl ConnectionTrait,
    table: &str,
    aggregate: sea_orm::sea_query::FunctionCall,
) -> Result<Option<i64>, DbErr> {
    let query = Query::select().expr_as(aggregate, Alias::new("position")).from(Alias::new(table)).to_owned();
    let row = db.query_one(&query).await?;
    Ok(row.map(|row| row.try_get::<Option<i64>>("", "position")).transpose()?.flatten())
}

/// Prunes `log` of entries older than `settings.events` every
/// `settings.prune_interval`, batch after batch, until `shutdown`. Every
/// replica runs it; the lock lets one at a time do the work.
pub async fn run_pruner(
    db: DatabaseConnection,
    log: PrunedLog,
    settings: RetentionSettings,
    shutdown: CancellationToken,
) {
    let outage = Outage::new(log.task);
    loop {
        let keep = chrono::Duration::from_std(settings.events).unwrap_or(chrono::Duration::MAX);
        let older_than = Utc::now().checked_sub_signed(keep).unwrap_or(DateTime::<Utc>::MIN_UTC);
        let mut pruned = 0;
        let done = loop {
            match prune(&db, log, older_than, settings.prune_batch).await {
                Ok(deleted) => {
                    pruned += deleted;
                    if deleted < u64::from(settings.prune_batch) {
                        break Ok(());
                    }
                }
                Err(err) => break Err(err),
            }
            if shutdown.is_cancelled() {
                break Ok(());
            }
        };
        match done {
            Ok(()) => outage.succeeded(),
            Err(err) => outage.failed(&err),
        }
        if pruned > 0 {
            tracing::info!(log = log.table, pruned, %older_than, "pruned log entries past their retention");
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(settings.prune_interval.max(Duration::from_millis(10))) => {}
        }
    }
}
