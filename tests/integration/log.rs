//! The positioned logs' appends (`partnerhub_runtime::db`), on scratch tables:
//! a write and the append of its log rows commit together or not at all, and
//! positions are consecutive.

use partnerhub_runtime::db::{LogRows, write_then_append};
use partnerhub_tests::{Backend, TestDatabase, on_both_databases};
use sea_orm::{
    ConnectionTrait, Database, DatabaseConnection, Statement,
    sea_query::{Alias, Expr, ExprTrait, Query},
};

on_both_databases!(a_write_and_its_log_rows_commit_together_or_not_at_all);

async fn scratch(backend: Backend) -> (TestDatabase, DatabaseConnection) {
    let database = TestDatabase::create(backend).await;
    let url = database
        .url()
        .unwrap_or_else(|| format!("sqlite://{}?mode=rwc", database.data_dir().join("scratch.db").display()));
    let db = Database::connect(url).await.unwrap();
    for sql in [
        "CREATE TABLE scratch_rows (id VARCHAR(16) PRIMARY KEY, n INTEGER NOT NULL)",
        "CREATE TABLE scratch_log (position BIGINT PRIMARY KEY, what VARCHAR(16) NOT NULL)",
        "CREATE TABLE scratch_log_head (id INTEGER PRIMARY KEY, last_position BIGINT NOT NULL)",
        "INSERT INTO scratch_log_head (id, last_position) VALUES (1, 0)",
    ] {
        db.execute_unprepared(sql).await.unwrap();
    }
    (database, db)
}

fn log(what: &[&str]) -> LogRows<'static> {
    LogRows {
        head_table: "scratch_log_head",
        table: "scratch_log",
        columns: &["what"],
        rows: what.iter().map(|what| vec![(*what).into()]).collect(),
        channel: "scratch_log",
    }
}

/// The log's rows, and the head's last position.
async fn logged(db: &DatabaseConnection) -> (Vec<(i64, String)>, i64) {
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT position, what FROM scratch_log ORDER BY position",
        ))
        .await
        .unwrap();
    let rows = rows
        .iter()
        .map(|row| (row.try_get::<i64>("", "position").unwrap(), row.try_get::<String>("", "what").unwrap()))
        .collect();
    let head = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT last_position FROM scratch_log_head WHERE id = 1",
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get::<i64>("", "last_position")
        .unwrap();
    (rows, head)
}

async fn a_write_and_its_log_rows_commit_together_or_not_at_all(backend: Backend) {
    let (_database, db) = scratch(backend).await;
    let insert = |id: &str| {
        Query::insert()
            .into_table(Alias::new("scratch_rows"))
            .columns([Alias::new("id"), Alias::new("n")])
            .values_panic([id.into(), 1.into()])
            .returning_col(Alias::new("id"))
            .to_owned()
    };
    // Moves row `id` from n = `from` to `from + 1`, if it is at `from`.
    let step = |id: &str, from: i32| {
        Query::update()
            .table(Alias::new("scratch_rows"))
            .value(Alias::new("n"), from + 1)
            .and_where(Expr::col(Alias::new("id")).eq(id))
            .and_where(Expr::col(Alias::new("n")).eq(from))
            .returning_col(Alias::new("id"))
            .to_owned()
    };
    let entry = |position: i64, what: &str| (position, what.to_owned());

    assert!(write_then_append(&db, &insert("a"), log(&["a created", "a listed"])).await.unwrap());
    assert_eq!(logged(&db).await, (vec![entry(1, "a created"), entry(2, "a listed")], 2));
    assert!(write_then_append(&db, &step("a", 1), log(&["a stepped"])).await.unwrap());
    assert_eq!(logged(&db).await.1, 3);

    // A conditional write that finds its row changed writes nothing and appends nothing.
    assert!(!write_then_append(&db, &step("a", 1), log(&["a stepped again"])).await.unwrap());
    assert!(!write_then_append(&db, &step("missing", 1), log(&["missing stepped"])).await.unwrap());
    // A write that fails appends nothing either.
    write_then_append(&db, &insert("a"), log(&["a created twice"])).await.unwrap_err();
    let expected = vec![entry(1, "a created"), entry(2, "a listed"), entry(3, "a stepped")];
    assert_eq!(logged(&db).await, (expected.clone(), 3));

    // Nothing to log: the write alone, its outcome reported all the same.
    assert!(write_then_append(&db, &step("a", 2), log(&[])).await.unwrap());
    assert!(!write_then_append(&db, &step("a", 2), log(&[])).await.unwrap());
    assert_eq!(logged(&db).await, (expected, 3));

    // The next append carries on from the head, with no gap.
    assert!(write_then_append(&db, &insert("b"), log(&["b created"])).await.unwrap());
    assert_eq!(logged(&db).await.0.last(), Some(&entry(4, "b created")));
}
