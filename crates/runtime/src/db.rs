//! Connecting to the database and classifying its errors, once for every
//! service, so that SQLite and PostgreSQL differences live in this one file.

use std::time::Duration;

use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, RuntimeErr,
    SqlErr, SqliteTransactionMode, TransactionOptions, TransactionTrait,
    sea_query::{Alias, Expr, ExprTrait, Query},
    sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous},
};
use tonic::Status;

use crate::config::Settings;

/// Opens the pool. On the embedded default the data directory is created and
/// SQLite runs in WAL mode with a busy timeout, so readers never block writers.
pub async fn connect(settings: &Settings) -> Result<DatabaseConnection, DbErr> {
    if settings.database.url.is_none() {
        std::fs::create_dir_all(&settings.data_dir).map_err(|err| {
            DbErr::Custom(format!("cannot create data directory {}: {err}", settings.data_dir.display()))
        })?;
    }
    let mut options = ConnectOptions::new(settings.database_url());
    options
        .max_connections(settings.database.max_connections)
        .connect_timeout(settings.database.connect_timeout)
        .acquire_timeout(settings.database.connect_timeout)
        .sqlx_logging(false)
        .map_sqlx_sqlite_opts(|sqlite| {
            sqlite
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true)
        });
    Database::connect(options).await
}

/// Begins a transaction that will write. On SQLite it takes the write lock at
/// `BEGIN` (`BEGIN IMMEDIATE`), so a transaction that reads before it writes
/// waits for other writers instead of failing with `SQLITE_BUSY` halfway.
pub async fn begin_write(db: &DatabaseConnection) -> Result<DatabaseTransaction, DbErr> {
    db.begin_with_options(TransactionOptions {
        sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
        ..TransactionOptions::default()
    })
    .await
}

/// Serializes schema migrations between processes that start together (many
/// replicas on one PostgreSQL database): call it first inside the migration's
/// transaction. On SQLite the `BEGIN IMMEDIATE` of [`begin_write`] already does.
pub async fn lock_for_migration(tx: &DatabaseTransaction) -> Result<(), DbErr> {
    if tx.get_database_backend() == DbBackend::Postgres {
        // Any constant works, as long as every Partner Hub migrator uses the same one.
        tx.execute_unprepared("SELECT pg_advisory_xact_lock(7262001)").await?;
    }
    Ok(())
}

/// Applies a service's pending migrations in one write transaction,
/// serialized against other processes migrating at the same time.
pub async fn migrate<M: sea_orm_migration::MigratorTrait>(db: &DatabaseConnection) -> Result<(), DbErr> {
    let tx = begin_write(db).await?;
    lock_for_migration(&tx).await?;
    M::up(&tx, None).await?;
    tx.commit().await
}

/// Rings `wake` for every PostgreSQL notification on `channel` (and once after
/// each (re)connect, since notifications may have been missed meanwhile), until
/// `shutdown`. A lost connection is re-opened; followers of a log must also
/// poll, so a notification is only ever a wake-up.
pub async fn listen_for_notifications(
    url: String,
    channel: &'static str,
    wake: std::sync::Arc<tokio::sync::Notify>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    use sea_orm::sqlx::postgres::PgListener;
    loop {
        let listened = async {
            let mut listener = PgListener::connect(&url).await?;
            listener.listen(channel).await?;
            wake.notify_one();
            loop {
                listener.recv().await?;
                wake.notify_one();
            }
            #[allow(unreachable_code)] // the loop only ends with an error
            Ok::<(), sea_orm::sqlx::Error>(())
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            result = listened => {
                if let Err(err) = result {
                    tracing::warn!(error = %err, channel, "lost a notification connection; reconnecting");
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// Takes `count` consecutive positions from a log's one-row head table
/// (`id = 1`, `last_position`) and returns the last of them. Call it as the
/// last statement before commit: the row lock it takes is held until the
/// transaction ends, so no other transaction can take later positions until
/// this one has committed or rolled back — positions become visible in order,
/// and a follower reading "after my last position" never skips one.
pub async fn take_positions(tx: &DatabaseTransaction, head_table: &str, count: i64) -> Result<i64, DbErr> {
    let take = Query::update()
        .table(Alias::new(head_table))
        .value(Alias::new("last_position"), Expr::col(Alias::new("last_position")).add(count))
        .and_where(Expr::col(Alias::new("id")).eq(1))
        .returning_col(Alias::new("last_position"))
        .to_owned();
    let row = tx.query_one(&take).await?.ok_or_else(|| DbErr::Custom(format!("{head_table} has no row")))?;
    row.try_get("", "last_position")
}

/// The last position taken from a log's head table (0 before the first).
pub async fn head_position(db: &impl ConnectionTrait, head_table: &str) -> Result<i64, DbErr> {
    let query = Query::select()
        .column(Alias::new("last_position"))
        .from(Alias::new(head_table))
        .and_where(Expr::col(Alias::new("id")).eq(1))
        .to_owned();
    let row = db.query_one(&query).await?;
    Ok(row.map(|row| row.try_get::<i64>("", "last_position")).transpose()?.unwrap_or(0))
}

/// A database error, classified the same way on SQLite and PostgreSQL.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unique constraint violated: {0}")]
    UniqueViolation(String),
    #[error("foreign key constraint violated: {0}")]
    ForeignKeyViolation(String),
    /// A serialization failure or deadlock: the transaction may be retried.
    #[error("transaction conflict: {0}")]
    Conflict(DbErr),
    /// The database cannot be reached or is too busy; the caller may retry.
    #[error("database unavailable: {0}")]
    Unavailable(DbErr),
    #[error("database error: {0}")]
    Other(DbErr),
}

impl From<DbErr> for StoreError {
    fn from(err: DbErr) -> Self {
        match err.sql_err() {
            Some(SqlErr::UniqueConstraintViolation(detail)) => {
                return StoreError::UniqueViolation(detail);
            }
            Some(SqlErr::ForeignKeyConstraintViolation(detail)) => {
                return StoreError::ForeignKeyViolation(detail);
            }
            _ => {}
        }
        match database_code(&err) {
            // PostgreSQL serialization_failure, deadlock_detected.
            Some((Backend::Postgres, code)) if code == "40001" || code == "40P01" => StoreError::Conflict(err),
            // SQLite SQLITE_BUSY, SQLITE_LOCKED and their extended codes.
            Some((Backend::Sqlite, code)) if is_sqlite_busy(&code) => StoreError::Unavailable(err),
            _ if matches!(err, DbErr::ConnectionAcquire(_) | DbErr::Conn(_)) => StoreError::Unavailable(err),
            _ if is_io_error(&err) => StoreError::Unavailable(err),
            _ => StoreError::Other(err),
        }
    }
}

impl From<StoreError> for Status {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Unavailable(_) | StoreError::Conflict(_) => {
                tracing::warn!(error = %err, "database unavailable");
                crate::error::unavailable()
            }
            _ => {
                tracing::error!(error = %err, "database error");
                crate::error::internal()
            }
        }
    }
}

fn sqlx_error(err: &DbErr) -> Option<&sea_orm::sqlx::Error> {
    match err {
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => Some(e),
        DbErr::Conn(RuntimeErr::SqlxError(e)) => Some(e),
        _ => None,
    }
}

enum Backend {
    Sqlite,
    Postgres,
}

fn database_code(err: &DbErr) -> Option<(Backend, String)> {
    let sea_orm::sqlx::Error::Database(db) = sqlx_error(err)? else {
        return None;
    };
    let backend = if db.try_downcast_ref::<sea_orm::sqlx::sqlite::SqliteError>().is_some() {
        Backend::Sqlite
    } else {
        Backend::Postgres
    };
    Some((backend, db.code()?.into_owned()))
}

fn is_sqlite_busy(code: &str) -> bool {
    code.parse::<i32>().is_ok_and(|code| matches!(code & 0xff, 5 | 6))
}

fn is_io_error(err: &DbErr) -> bool {
    matches!(
        sqlx_error(err),
        Some(
            sea_orm::sqlx::Error::Io(_)
                | sea_orm::sqlx::Error::PoolTimedOut
                | sea_orm::sqlx::Error::PoolClosed
                | sea_orm::sqlx::Error::WorkerCrashed
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_busy_codes_are_recognised() {
        assert!(is_sqlite_busy("5"));
        assert!(is_sqlite_busy("517")); // SQLITE_BUSY_SNAPSHOT
        assert!(is_sqlite_busy("6"));
        assert!(!is_sqlite_busy("19"));
    }
}
