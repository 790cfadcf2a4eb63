//! Connecting to the database and classifying its errors, once for every
//! service, so that SQLite and PostgreSQL differences live in this one file.

use std::time::Duration;

use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, QueryResult,
    RuntimeErr, SqlErr, SqliteTransactionMode, Statement, StatementBuilder, TransactionOptions, TransactionTrait,
    Value,
    sea_query::{Alias, Expr, ExprTrait, Query, SimpleExpr},
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

/// Pings the database every `settings.health_check_interval` and tells `ready`
/// whether it answers: false once it has not answered for
/// `settings.not_serving_after`, true again at the first answer. The host
/// turns that into the served services' health status, so that a load
/// balancer stops sending calls to a replica that cannot serve them.
pub async fn watch_database(
    db: DatabaseConnection,
    settings: crate::config::DatabaseSettings,
    ready: tokio::sync::watch::Sender<bool>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let outage = crate::outage::Outage::new("database_health_check");
    let mut answered_at = tokio::time::Instant::now();
    crate::metrics::metrics().database_reachable.set(1);
    loop {
        let ping = tokio::time::timeout(settings.health_check_interval.max(Duration::from_secs(1)), db.ping()).await;
        match ping {
            Ok(Ok(())) => {
                answered_at = tokio::time::Instant::now();
                outage.succeeded();
                crate::metrics::metrics().database_reachable.set(1);
                ready.send_if_modified(|ready| !std::mem::replace(ready, true));
            }
            failed => {
                let error = match failed {
                    Ok(Err(err)) => err.to_string(),
                    _ => "no answer to a ping in time".to_owned(),
                };
                outage.failed(&error);
                crate::metrics::metrics().database_reachable.set(0);
                if answered_at.elapsed() >= settings.not_serving_after
                    && ready.send_if_modified(|ready| std::mem::replace(ready, false))
                {
                    tracing::warn!(unreachable_for = ?answered_at.elapsed(), "the database does not answer; reporting NOT_SERVING");
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(settings.health_check_interval) => {}
        }
    }
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
    // Named after its channel: a process listens on several.
    let outage = crate::outage::Outage::new(channel);
    loop {
        let listened = async {
            let mut listener = PgListener::connect(&url).await?;
            listener.listen(channel).await?;
            outage.succeeded();
            wake.notify_one();
            loop {
                // `try_recv`, not `recv`: after a lost connection `recv` quietly
                // reconnects, and whatever was notified meanwhile is never told.
                // `None` says the connection was lost (the next call
                // reconnects), so wake the follower: it may have missed news.
                if listener.try_recv().await?.is_none() {
                    tracing::debug!(channel, "the notification connection was lost; reconnecting");
                }
                wake.notify_one();
            }
            #[allow(unreachable_code)] // the loop only ends with an error
            Ok::<(), sea_orm::sqlx::Error>(())
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            result = listened => {
                if let Err(err) = result {
                    outage.failed(&err);
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// "Now" as the database's clock tells it, for leases and retry times that
/// replicas on different hosts compare: PostgreSQL's `now()`. SQLite lives on
/// this one host, so there this host's clock is the database's clock.
pub fn database_now(backend: DbBackend) -> SimpleExpr {
    match backend {
        DbBackend::Postgres => Expr::cust("now()"),
        _ => Expr::value(crate::time::now()),
    }
}

/// [`database_now`] plus `after`.
pub fn database_time_after(backend: DbBackend, after: Duration) -> SimpleExpr {
    match backend {
        DbBackend::Postgres => {
            // Whole microseconds, written into the SQL as a number: nothing a caller controls.
            let micros = after.as_micros().min(i64::MAX as u128);
            Expr::cust(format!("(now() + interval '{micros} microseconds')"))
        }
        _ => {
            let after = chrono::Duration::from_std(after).unwrap_or(chrono::Duration::MAX);
            Expr::value(
                crate::time::now().checked_add_signed(after).unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC),
            )
        }
    }
}

/// Takes `count` consecutive positions from a log's one-row head table
/// (`id = 1`, `last_position`) and returns the last of them. Call it as the
/// last statement before commit: the row lock it takes is held until the
/// transaction ends, so no other transaction can take later positions until
/// this one has committed or rolled back — positions become visible in order,
/// and a follower reading "after my last position" never skips one.
async fn take_positions(tx: &DatabaseTransaction, head_table: &str, count: i64) -> Result<i64, DbErr> {
    let take = Query::update()
        .table(Alias::new(head_table))
        .value(Alias::new("last_position"), Expr::col(Alias::new("last_position")).add(count))
        .and_where(Expr::col(Alias::new("id")).eq(1))
        .returning_col(Alias::new("last_position"))
        .to_owned();
    let row = tx.query_one(&take).await?.ok_or_else(|| DbErr::Custom(format!("{head_table} has no row")))?;
    row.try_get("", "last_position")
}

/// Rows for a positioned log (see [`append_to_log`]).
#[derive(Debug)]
pub struct LogRows<'a> {
    /// The log's one-row head table (`id = 1`, `last_position`).
    pub head_table: &'a str,
    /// The log table; its `position` column is filled in here.
    pub table: &'a str,
    /// The columns each row gives values for, in order, besides `position`.
    pub columns: &'a [&'a str],
    /// One entry per row, the values in the order of `columns`.
    pub rows: Vec<Vec<Value>>,
    /// On PostgreSQL, the channel notified at commit (a wake-up for every
    /// replica's followers; never sent if the transaction rolls back).
    pub channel: &'a str,
}

/// Appends rows to a positioned log with the next consecutive positions, as
/// the last statement before commit (see `take_positions` for why the order
/// of commits is then the order of positions).
///
/// On PostgreSQL it is one statement: the head's row lock is held only while
/// that statement runs and the commit is sent, not across a round trip per
/// row, so event-writing transactions, which queue on that lock, pass it
/// quickly. Written as SQL with placeholders: only the table and column names
/// (constants of the calling store) are spliced in. Returns the last position
/// taken (`None` when there were no rows).
pub async fn append_to_log(tx: &DatabaseTransaction, log: LogRows<'_>) -> Result<Option<i64>, DbErr> {
    let count = i64::try_from(log.rows.len()).map_err(|_| DbErr::Custom("too many log rows".into()))?;
    if count == 0 {
        return Ok(None);
    }
    if tx.get_database_backend() != DbBackend::Postgres {
        let last = take_positions(tx, log.head_table, count).await?;
        let mut insert = Query::insert();
        insert
            .into_table(Alias::new(log.table))
            .columns(std::iter::once("position").chain(log.columns.iter().copied()).map(Alias::new));
        for (offset, row) in (0..count).rev().zip(log.rows) {
            let values = std::iter::once(Value::from(last - offset)).chain(row).map(SimpleExpr::from);
            insert.values(values).map_err(|err| DbErr::Custom(err.to_string()))?;
        }
        tx.execute(&insert).await?;
        return Ok(Some(last));
    }
    let head_table = log.head_table;
    let statement = appending_statement(None, log);
    appended(tx.query_one_raw(statement).await?, head_table).map(Some)
}

/// `write` — one row's INSERT or UPDATE, with a `RETURNING` clause — and,
/// only if it wrote its row, the append of `log` (see [`append_to_log`]),
/// committed together. Returns whether `write` wrote its row; if not, nothing
/// was appended and nothing changed.
///
/// On PostgreSQL it is one statement outside any transaction (the write and
/// the append as data-modifying CTEs): one round trip where `BEGIN`, the
/// write, the append and `COMMIT` took four. The head's row lock is taken last
/// and held only until that statement commits, so positions still become
/// visible in order. On SQLite, the same in one write transaction.
pub async fn write_then_append(
    db: &DatabaseConnection,
    write: &impl StatementBuilder,
    log: LogRows<'_>,
) -> Result<bool, DbErr> {
    let backend = db.get_database_backend();
    let write = backend.build(write);
    if backend != DbBackend::Postgres {
        let tx = begin_write(db).await?;
        if tx.query_all_raw(write).await?.is_empty() {
            return Ok(false);
        }
        append_to_log(&tx, log).await?;
        tx.commit().await?;
        return Ok(true);
    }
    if log.rows.is_empty() {
        return Ok(!db.query_all_raw(write).await?.is_empty());
    }
    let head_table = log.head_table;
    let statement = appending_statement(Some(Written { before: "", write, returned: None }), log);
    let row = db.query_one_raw(statement).await?;
    let written = row.as_ref().map(|row| row.try_get::<i64>("", "written")).transpose()?.unwrap_or(0) > 0;
    if written {
        appended(row, head_table)?;
    }
    Ok(written)
}

/// On PostgreSQL, `write` (a statement with a `RETURNING` clause that names
/// `returned`, an integer column, after the CTE definitions `before`:
/// `name AS (…)`, comma-separated, or nothing; the placeholders of both number
/// `write`'s values) and, only if it wrote a row, the append of `log` (see
/// [`append_to_log`]), as one statement: in a transaction as its last
/// statement before commit, or on the connection, where it commits on its own.
/// Returns `returned` of the written row and the last position taken, or
/// `None` if `write` wrote nothing (then nothing was appended).
pub async fn write_then_append_returning(
    db: &impl ConnectionTrait,
    before: &str,
    write: Statement,
    returned: &str,
    log: LogRows<'_>,
) -> Result<Option<(i64, i64)>, DbErr> {
    let head_table = log.head_table;
    let statement = appending_statement(Some(Written { before, write, returned: Some(returned) }), log);
    let row = db.query_one_raw(statement).await?;
    let value = row.as_ref().map(|row| row.try_get::<Option<i64>>("", "returned")).transpose()?.flatten();
    match value {
        Some(value) => Ok(Some((value, appended(row, head_table)?))),
        None => Ok(None),
    }
}

/// The write an appending statement makes first (see [`appending_statement`]).
struct Written<'a> {
    /// CTE definitions the write follows (`name AS (…)`, comma-separated), or "".
    before: &'a str,
    /// The write, with a `RETURNING` clause; its values number the placeholders of both.
    write: Statement,
    /// A column of the row the write returns, to be returned as `returned`.
    returned: Option<&'a str>,
}

/// The PostgreSQL statement that appends `log` (non-empty), after `written`
/// if given and only if it returned a row: see [`append_to_log`] and
/// [`write_then_append`]. Written as SQL with placeholders: only the table and
/// column names (constants of the calling store) are spliced in.
fn appending_statement(written: Option<Written<'_>>, log: LogRows<'_>) -> Statement {
    let LogRows { head_table, table, columns, rows, channel } = log;
    let count = rows.len();
    let names = columns.iter().map(|column| format!("\"{column}\"")).collect::<Vec<_>>().join(", ");
    let picked = columns.iter().map(|column| format!("r.\"{column}\"")).collect::<Vec<_>>().join(", ");
    let returned = written
        .as_ref()
        .and_then(|written| written.returned)
        .map(|column| format!(", (SELECT max(\"{column}\") FROM written)::bigint AS returned"))
        .unwrap_or_default();
    // The write's own placeholders ($1…) come first; the rows' follow.
    let (written, guard, counted, mut values) = match written {
        Some(Written { before, write, .. }) => (
            match before {
                "" => format!("written AS ({}), ", write.sql),
                before => format!("{before}, written AS ({}), ", write.sql),
            },
            " AND EXISTS (SELECT 1 FROM written)",
            "(SELECT count(*) FROM written)",
            write.values.map(|values| values.0).unwrap_or_default(),
        ),
        None => (String::new(), "", "1", Vec::new()),
    };
    values.reserve(count * (columns.len() + 1));
    let mut tuples = Vec::with_capacity(count);
    for (ordinal, row) in (1_i64..).zip(rows) {
        let first = values.len();
        values.push(Value::from(ordinal));
        values.extend(row);
        let placeholders = (first + 1..=values.len()).map(|index| format!("${index}")).collect::<Vec<_>>();
        tuples.push(format!("({})", placeholders.join(", ")));
    }
    let sql = format!(
        "WITH {written}head AS (UPDATE \"{head_table}\" SET last_position = last_position + {count} \
         WHERE id = 1{guard} RETURNING last_position), \
         appended AS (INSERT INTO \"{table}\" (position, {names}) \
         SELECT head.last_position - {count} + r.ord, {picked} FROM head, (VALUES {}) AS r (ord, {names}) \
         RETURNING position) \
         SELECT {counted} AS written, (SELECT max(position) FROM appended) AS last, \
         (SELECT count(*) FROM (SELECT pg_notify('{channel}', '') FROM head) notified) AS notified{returned}",
        tuples.join(", "),
    );
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

/// Checks that an appending statement took positions (none means the head
/// row is missing); returns the last of them.
fn appended(row: Option<QueryResult>, head_table: &str) -> Result<i64, DbErr> {
    // No head row: nothing was appended, and `max` over nothing is NULL.
    match row.map(|row| row.try_get::<Option<i64>>("", "last")).transpose()?.flatten() {
        Some(last) => Ok(last),
        None => Err(DbErr::Custom(format!("{head_table} has no row"))),
    }
}

/// Runs a read that PostgreSQL plans for the values it is given, every time.
///
/// A statement sqlx prepares and caches gets, after five runs, PostgreSQL's
/// *generic plan*: one plan for any values, costed with a column's average
/// selectivity. For a filter on one tenant (`client_id = $1 ORDER BY id DESC
/// LIMIT n`) where one tenant owns most rows, that plan walks the primary key
/// backwards and filters — fine for the big tenant, a scan of the whole table
/// for a tenant with few or old rows. Sent as an unnamed statement, the read is
/// planned with its values and uses the tenant's index. Planning costs a few
/// microseconds; keep this for reads whose best plan depends on the values.
/// SQLite plans every statement with its values anyway.
pub async fn query_planned_each_time(db: &DatabaseConnection, statement: Statement) -> Result<Vec<QueryResult>, DbErr> {
    use sea_orm::sqlx;
    if db.get_database_backend() != DbBackend::Postgres {
        return db.query_all_raw(statement).await;
    }
    let values = sea_query_sqlx::SqlxValues(statement.values.unwrap_or(sea_orm::Values(Vec::new())));
    let rows = sqlx::query_with(sqlx::AssertSqlSafe(statement.sql), values)
        .persistent(false)
        .fetch_all(db.get_postgres_connection_pool())
        .await
        // As sea-orm reports a failed query, so that `classify` sees it the same way.
        .map_err(|err| DbErr::Query(RuntimeErr::SqlxError(std::sync::Arc::new(err))))?;
    Ok(rows.into_iter().map(QueryResult::from).collect())
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
    /// The database cannot be reached, ended the connection (restart, failover,
    /// `pg_terminate_backend`) or is too busy; the caller may retry.
    #[error("database unavailable: {0}")]
    Unavailable(DbErr),
    #[error("database error: {0}")]
    Other(DbErr),
}

/// How a database error should be treated, whatever the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ErrorClass {
    /// Try again later: the database, or the connection to it, is away.
    Unavailable,
    /// Try the transaction again: it lost a race inside the database.
    Conflict,
    /// Anything else: a constraint, or a defect of ours.
    Other,
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
        match classify(&err) {
            ErrorClass::Unavailable => StoreError::Unavailable(err),
            ErrorClass::Conflict => StoreError::Conflict(err),
            ErrorClass::Other => StoreError::Other(err),
        }
    }
}

impl From<StoreError> for Status {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Unavailable(_) => {
                tracing::warn!(error = %err, "database unavailable");
                crate::error::unavailable()
            }
            StoreError::Conflict(_) => {
                tracing::warn!(error = %err, "database transaction conflict");
                crate::error::status(
                    tonic::Code::Aborted,
                    crate::error::ErrorReason::ConcurrentUpdate,
                    "the call collided with a concurrent one; retry it",
                    [],
                )
            }
            _ => {
                tracing::error!(error = %err, "database error");
                crate::error::internal()
            }
        }
    }
}

fn classify(err: &DbErr) -> ErrorClass {
    // Failing to get a connection at all: the pool timed out, or opening one failed.
    if matches!(err, DbErr::ConnectionAcquire(_) | DbErr::Conn(_)) {
        return ErrorClass::Unavailable;
    }
    let Some(sqlx) = sqlx_error(err) else {
        return ErrorClass::Other;
    };
    match sqlx {
        sea_orm::sqlx::Error::Database(db) => {
            let Some(code) = db.code() else { return ErrorClass::Other };
            if db.try_downcast_ref::<sea_orm::sqlx::sqlite::SqliteError>().is_some() {
                classify_sqlite_code(&code)
            } else {
                classify_postgres_code(&code)
            }
        }
        // The connection broke under the statement (the server went away), or
        // the pool could not hand one out in time.
        sea_orm::sqlx::Error::Io(_)
        | sea_orm::sqlx::Error::Tls(_)
        | sea_orm::sqlx::Error::Protocol(_)
        | sea_orm::sqlx::Error::PoolTimedOut
        | sea_orm::sqlx::Error::PoolClosed
        | sea_orm::sqlx::Error::WorkerCrashed => ErrorClass::Unavailable,
        _ => ErrorClass::Other,
    }
}

/// A PostgreSQL SQLSTATE: <https://www.postgresql.org/docs/15/errcodes-appendix.html>.
fn classify_postgres_code(code: &str) -> ErrorClass {
    match code {
        // serialization_failure, deadlock_detected
        "40001" | "40P01" => ErrorClass::Conflict,
        // admin_shutdown, crash_shutdown, cannot_connect_now (a restart, a
        // failover, pg_terminate_backend), too_many_connections,
        // database_dropped, and the whole connection_exception class (08…).
        "57P01" | "57P02" | "57P03" | "57P04" | "53300" => ErrorClass::Unavailable,
        _ if code.starts_with("08") => ErrorClass::Unavailable,
        _ => ErrorClass::Other,
    }
}

/// An SQLite result code: busy or locked (with their extended codes) is the
/// database being too busy for now.
fn classify_sqlite_code(code: &str) -> ErrorClass {
    match code.parse::<i32>() {
        Ok(code) if matches!(code & 0xff, 5 | 6) => ErrorClass::Unavailable,
        _ => ErrorClass::Other,
    }
}

fn sqlx_error(err: &DbErr) -> Option<&sea_orm::sqlx::Error> {
    match err {
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => Some(e),
        DbErr::Conn(RuntimeErr::SqlxError(e)) => Some(e),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::{borrow::Cow, sync::Arc};

    use sea_orm::{ConnAcquireErr, sqlx};

    use super::*;

    /// A server-side error with a given SQLSTATE, as the PostgreSQL driver reports it.
    #[derive(Debug)]
    struct PostgresError(&'static str);

    impl std::fmt::Display for PostgresError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "SQLSTATE {}", self.0)
        }
    }

    impl std::error::Error for PostgresError {}

    impl sqlx::error::DatabaseError for PostgresError {
        fn message(&self) -> &str {
            "injected"
        }
        fn code(&self) -> Option<Cow<'_, str>> {
            Some(Cow::Borrowed(self.0))
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    fn query_error(err: sqlx::Error) -> DbErr {
        DbErr::Query(RuntimeErr::SqlxError(Arc::new(err)))
    }

    fn postgres(code: &'static str) -> DbErr {
        query_error(sqlx::Error::Database(Box::new(PostgresError(code))))
    }

    fn class_of(err: DbErr) -> &'static str {
        match StoreError::from(err) {
            StoreError::Unavailable(_) => "unavailable",
            StoreError::Conflict(_) => "conflict",
            StoreError::UniqueViolation(_) => "unique",
            StoreError::ForeignKeyViolation(_) => "foreign key",
            StoreError::Other(_) => "other",
        }
    }

    #[test]
    fn a_connection_ended_by_the_server_is_unavailable() {
        // admin_shutdown (pg_terminate_backend, a restart), crash_shutdown, cannot_connect_now.
        for code in ["57P01", "57P02", "57P03", "53300"] {
            assert_eq!(class_of(postgres(code)), "unavailable", "{code}");
        }
    }

    #[test]
    fn connection_failures_are_unavailable() {
        for code in ["08000", "08003", "08006", "08001", "08004"] {
            assert_eq!(class_of(postgres(code)), "unavailable", "{code}");
        }
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        assert_eq!(class_of(query_error(sqlx::Error::Io(reset))), "unavailable");
        assert_eq!(class_of(query_error(sqlx::Error::Protocol("unexpected end".into()))), "unavailable");
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(class_of(DbErr::Conn(RuntimeErr::SqlxError(Arc::new(sqlx::Error::Io(refused))))), "unavailable");
    }

    #[test]
    fn a_pool_that_cannot_hand_out_a_connection_is_unavailable() {
        assert_eq!(class_of(DbErr::ConnectionAcquire(ConnAcquireErr::Timeout)), "unavailable");
        assert_eq!(class_of(DbErr::ConnectionAcquire(ConnAcquireErr::ConnectionClosed)), "unavailable");
        assert_eq!(class_of(query_error(sqlx::Error::PoolTimedOut)), "unavailable");
    }

    #[test]
    fn serialization_failures_and_deadlocks_are_conflicts() {
        assert_eq!(class_of(postgres("40001")), "conflict");
        assert_eq!(class_of(postgres("40P01")), "conflict");
    }

    #[test]
    fn other_errors_stay_other() {
        for code in ["42P01", "22P02", "XX000"] {
            assert_eq!(class_of(postgres(code)), "other", "{code}");
        }
        assert_eq!(class_of(DbErr::Custom("a defect".into())), "other");
        assert_eq!(class_of(query_error(sqlx::Error::RowNotFound)), "other");
    }

    #[test]
    fn the_classes_map_to_the_right_codes() {
        assert_eq!(Status::from(StoreError::from(postgres("57P01"))).code(), tonic::Code::Unavailable);
        assert_eq!(Status::from(StoreError::from(postgres("40001"))).code(), tonic::Code::Aborted);
        assert_eq!(Status::from(StoreError::from(postgres("XX000"))).code(), tonic::Code::Internal);
    }

    #[test]
    fn sqlite_busy_codes_are_recognised() {
        assert_eq!(classify_sqlite_code("5"), ErrorClass::Unavailable);
        assert_eq!(classify_sqlite_code("517"), ErrorClass::Unavailable); // SQLITE_BUSY_SNAPSHOT
        assert_eq!(classify_sqlite_code("6"), ErrorClass::Unavailable);
        assert_eq!(classify_sqlite_code("19"), ErrorClass::Other);
    }
}
