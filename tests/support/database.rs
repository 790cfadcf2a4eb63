//! A fresh database per test: a temporary directory for SQLite, or a new
//! PostgreSQL database named after a UUID. Both are removed on drop.

use std::path::{Path, PathBuf};

use sea_orm::{ConnectionTrait, Database};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub struct TestDatabase {
    data_dir: PathBuf,
    postgres: Option<PostgresDatabase>,
}

struct PostgresDatabase {
    admin_url: String,
    name: String,
    url: String,
}

const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The server every PostgreSQL test uses.
pub fn postgres_admin_url() -> String {
    std::env::var("PARTNERHUB_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned())
}

impl TestDatabase {
    pub async fn create(backend: Backend) -> TestDatabase {
        let tag = uuid::Uuid::new_v4().simple().to_string();
        let data_dir = std::env::temp_dir().join(format!("partnerhub-test-{tag}"));
        std::fs::create_dir_all(&data_dir).unwrap();
        let postgres = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(PostgresDatabase::create(&format!("partnerhub_test_{tag}")).await),
        };
        TestDatabase { data_dir, postgres }
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// `None` on SQLite: the application's default file in `data_dir`.
    pub fn url(&self) -> Option<String> {
        self.postgres.as_ref().map(|pg| pg.url.clone())
    }
}

impl PostgresDatabase {
    async fn create(name: &str) -> PostgresDatabase {
        let admin_url = postgres_admin_url();
        let admin = Database::connect(&admin_url).await.unwrap_or_else(|err| {
            panic!(
                "PostgreSQL is not reachable at {admin_url} ({err}). Start it with \
                 `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`, \
                 or point PARTNERHUB_TEST_POSTGRES_URL at a server where user postgres may create databases."
            )
        });
        admin.execute_unprepared(&format!("CREATE DATABASE \"{name}\"")).await.unwrap();
        admin.close().await.unwrap();
        let (base, _) = admin_url.rsplit_once('/').expect("the URL names a database");
        PostgresDatabase { url: format!("{base}/{name}"), admin_url, name: name.to_owned() }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.data_dir);
        let Some(pg) = self.postgres.take() else {
            return;
        };
        let name = pg.name.clone();
        // Drop runs inside the test's runtime, which cannot be blocked on; a
        // thread with its own small runtime drops the database.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let admin = Database::connect(&pg.admin_url).await?;
                admin.execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", pg.name)).await?;
                admin.close().await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("warning: could not drop test database {name}");
        }
    }
}
