//! The integration-test harness: [`TestApp::spawn`] starts the real system on a
//! random port against a fresh database (a temporary SQLite file, or a new
//! PostgreSQL database that is dropped afterwards) and hands out typed clients
//! that carry a token for any subject.
//!
//! PostgreSQL is found at `PARTNERHUB_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`). When it cannot be reached the
//! PostgreSQL tests fail and say how to start it; they are never skipped.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed set-up should fail loudly

pub mod bench;
pub mod binary;
pub mod cluster;
pub mod database;
pub mod http;
pub mod otlp;
pub mod raw;

use std::{net::SocketAddr, time::Duration};

use base64::Engine as _;
use partnerhub::{Application, SERVICES};
use partnerhub_partner_change::{settings::PartnerChangeSettings, worker::MigrationWorker};
use partnerhub_permissions::settings::PermissionsSettings;
use partnerhub_proto::{
    account::v1::account_service_client::AccountServiceClient,
    partnerchange::v1::partner_change_service_client::PartnerChangeServiceClient,
    permissions::v1::permissions_service_client::PermissionsServiceClient,
    webhooks::v1::webhook_service_client::WebhookServiceClient,
};
use partnerhub_runtime::{
    auth::{BearerToken, Subject, TokenKeys},
    config::Settings,
};
use partnerhub_webhooks::settings::WebhooksSettings;
use secrecy::SecretString;
use tonic::{Code, service::interceptor::InterceptedService, transport::Channel};

pub use crate::database::{Backend, TestDatabase};

/// The services' sections of the settings, which tests change often.
pub trait ServiceSections {
    fn partner_change(&mut self) -> &mut PartnerChangeSettings;
    fn permissions(&mut self) -> &mut PermissionsSettings;
    fn webhooks(&mut self) -> &mut WebhooksSettings;
}

impl ServiceSections for Settings {
    fn partner_change(&mut self) -> &mut PartnerChangeSettings {
        self.section_mut()
    }

    fn permissions(&mut self) -> &mut PermissionsSettings {
        self.section_mut()
    }

    fn webhooks(&mut self) -> &mut WebhooksSettings {
        self.section_mut()
    }
}

/// A channel that sends `authorization: Bearer <token>` on every call.
pub type Authed = InterceptedService<Channel, BearerToken>;

/// A running Partner Hub, in this process, on its own database.
pub struct TestApp {
    pub settings: Settings,
    app: Option<Application>,
    channel: Channel,
    keys: TokenKeys,
    signing_secret: Vec<u8>,
    /// Dropped last: removes the database once the server is gone. `None` on a
    /// replica, which shares its primary's.
    _database: Option<TestDatabase>,
}

impl TestApp {
    /// Every service, on a fresh database of `backend`, with a migration worker
    /// that polls often (so that approved requests complete quickly).
    pub async fn spawn(backend: Backend) -> TestApp {
        Self::spawn_with(backend, |_| {}).await
    }

    /// Like [`TestApp::spawn`], with `configure` applied to the settings last.
    pub async fn spawn_with(backend: Backend, configure: impl FnOnce(&mut Settings)) -> TestApp {
        Self::spawn_prepared(backend, configure, async |_, _| {}).await
    }

    /// Like [`TestApp::spawn_with`], with `prepare` run on the migrated
    /// database, with the deployment's keys, before any service starts
    /// (benchmarks preload history there).
    pub async fn spawn_prepared(
        backend: Backend,
        configure: impl FnOnce(&mut Settings),
        prepare: impl AsyncFnOnce(&sea_orm::DatabaseConnection, &TokenKeys),
    ) -> TestApp {
        init_test_tracing();
        let database = TestDatabase::create(backend).await;
        let secret = [*uuid::Uuid::new_v4().as_bytes(), *uuid::Uuid::new_v4().as_bytes()].concat();
        let mut settings = Settings::default();
        settings.data_dir = database.data_dir().to_owned();
        settings.database.url = database.url().map(SecretString::from);
        settings.database.max_connections = 5;
        settings.server.listen_addr = SocketAddr::from(([127, 0, 0, 1], 0));
        settings.server.shutdown_grace = Duration::from_secs(5);
        settings.auth.signing_key = Some(SecretString::from(base64::engine::general_purpose::STANDARD.encode(&secret)));
        settings.partner_change().worker.poll_interval = Duration::from_millis(50);
        settings.partner_change().worker.backoff_initial = Duration::from_millis(10);
        settings.partner_change().worker.backoff_max = Duration::from_millis(50);
        configure(&mut settings);
        let keys = TokenKeys::load_or_generate(&settings).unwrap();
        {
            let db = partnerhub::app::open_database(&settings).await.unwrap();
            prepare(&db, &keys).await;
            db.close().await.unwrap();
        }
        let app = Application::start(&settings, SERVICES).await.unwrap();
        let channel = channel_to(app.local_addr());
        TestApp { settings, app: Some(app), channel, keys, signing_secret: secret, _database: Some(database) }
    }

    /// A second server on the same database and key: another replica. Drop it
    /// before its primary.
    pub async fn spawn_replica(&self) -> TestApp {
        self.spawn_replica_with(|_| {}).await
    }

    /// Like [`TestApp::spawn_replica`], with `configure` applied to a copy of the settings.
    pub async fn spawn_replica_with(&self, configure: impl FnOnce(&mut Settings)) -> TestApp {
        let mut settings = self.settings.clone();
        configure(&mut settings);
        let app = Application::start(&settings, SERVICES).await.unwrap();
        let channel = channel_to(app.local_addr());
        TestApp {
            settings,
            app: Some(app),
            channel,
            keys: self.keys.clone(),
            signing_secret: self.signing_secret.clone(),
            _database: None,
        }
    }

    /// A partner-change client on its own connection whose HTTP/2 stream window
    /// is `window` bytes: a stream it does not read takes no more than that,
    /// so the server's buffers for it fill (the server's HTTP/2 layer itself
    /// buffers about 400 KB per stream first).
    pub async fn partner_change_with_window(&self, subject: &str, window: u32) -> PartnerChangeServiceClient<Authed> {
        let channel = Channel::from_shared(format!("http://{}", self.addr()))
            .unwrap()
            .initial_stream_window_size(window)
            .initial_connection_window_size(window)
            .connect()
            .await
            .unwrap();
        PartnerChangeServiceClient::new(InterceptedService::new(
            channel,
            BearerToken::new(&self.token(subject)).unwrap(),
        ))
    }

    /// The database URL the app uses (for tests that must act on it directly).
    pub fn database_url(&self) -> String {
        self.settings.database_url()
    }

    /// On PostgreSQL, waits until a session on the app's database waits for a
    /// lock while running a statement that mentions `mentioning`. SQLite has
    /// no such view: there a writer that waits for another is not observable,
    /// and this returns at once.
    pub async fn until_a_statement_waits_for_a_lock(&self, mentioning: &str) {
        use sea_orm::{ConnectionTrait, Statement};
        if !self.database_url().starts_with("postgres") {
            return;
        }
        let db = sea_orm::Database::connect(self.database_url()).await.unwrap();
        let statement = Statement::from_sql_and_values(
            db.get_database_backend(),
            "SELECT count(*) AS waiting FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%' || $1 || '%' \
             AND pid <> pg_backend_pid()",
            [mentioning.into()],
        );
        eventually(
            &format!("a statement mentioning {mentioning} to wait for a lock"),
            Duration::from_secs(10),
            || async {
                let row = db.query_one_raw(statement.clone()).await.unwrap().unwrap();
                (row.try_get::<i64>("", "waiting").unwrap() > 0).then_some(())
            },
        )
        .await;
    }

    pub fn addr(&self) -> SocketAddr {
        self.app.as_ref().expect("the app is running").local_addr()
    }

    /// A valid token for `subject` (e.g. `"support:alice"`).
    pub fn token(&self, subject: &str) -> String {
        let subject: Subject = subject.parse().unwrap();
        self.keys.mint(&subject, Duration::from_secs(600)).unwrap()
    }

    /// The key every token of this app is signed with (to forge expired ones).
    pub fn signing_secret(&self) -> Vec<u8> {
        self.signing_secret.clone()
    }

    /// A channel that sends `token` as it is (to test bad tokens).
    pub fn channel_with_token(&self, token: &str) -> Authed {
        InterceptedService::new(self.channel.clone(), BearerToken::new(token).unwrap())
    }

    pub fn channel_without_token(&self) -> Channel {
        self.channel.clone()
    }

    pub fn account(&self, subject: &str) -> AccountServiceClient<Authed> {
        AccountServiceClient::new(self.channel_with_token(&self.token(subject)))
    }

    pub fn partner_change(&self, subject: &str) -> PartnerChangeServiceClient<Authed> {
        PartnerChangeServiceClient::new(self.channel_with_token(&self.token(subject)))
    }

    pub fn permissions(&self, subject: &str) -> PermissionsServiceClient<Authed> {
        PermissionsServiceClient::new(self.channel_with_token(&self.token(subject)))
    }

    pub fn webhooks(&self, subject: &str) -> WebhookServiceClient<Authed> {
        WebhookServiceClient::new(self.channel_with_token(&self.token(subject)))
    }

    /// The app's migration worker, to drive step by step when the background
    /// one is disabled (`partner_change.worker.enabled = false`).
    pub fn migration_worker(&self) -> &MigrationWorker {
        self.app
            .as_ref()
            .and_then(Application::handle::<MigrationWorker>)
            .expect("the app runs the partner-change service")
    }

    /// Stops the server gracefully and starts it again on the same database.
    pub async fn restart(&mut self) {
        self.app.take().expect("the app is running").stop().await.unwrap();
        let app = Application::start(&self.settings, SERVICES).await.unwrap();
        self.channel = channel_to(app.local_addr());
        self.app = Some(app);
    }
}

/// Where tests find the three services: one in-process app, or members of a cluster.
pub trait Deployment {
    fn account(&self, subject: &str) -> AccountServiceClient<Authed>;
    fn partner_change(&self, subject: &str) -> PartnerChangeServiceClient<Authed>;
    fn permissions(&self, subject: &str) -> PermissionsServiceClient<Authed>;
}

impl Deployment for TestApp {
    fn account(&self, subject: &str) -> AccountServiceClient<Authed> {
        TestApp::account(self, subject)
    }

    fn partner_change(&self, subject: &str) -> PartnerChangeServiceClient<Authed> {
        TestApp::partner_change(self, subject)
    }

    fn permissions(&self, subject: &str) -> PermissionsServiceClient<Authed> {
        TestApp::permissions(self, subject)
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(app) = self.app.take() {
            // Stop accepting at once; the runtime ending takes the tasks with it.
            app.shutdown_token().cancel();
        }
    }
}

fn channel_to(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}")).unwrap().connect_lazy()
}

/// Quiet unless `TEST_LOG` is set; installed once per test binary.
fn init_test_tracing() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            let _ = tracing_subscriber::fmt().with_env_filter("info").with_test_writer().try_init();
        }
    });
}

/// Polls `check` until it returns `Some`, or panics after `within` naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out after {within:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `ErrorInfo.reason` of a status, or "" when it has none.
pub fn reason(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    status.get_details_error_info().map(|info| info.reason).unwrap_or_default()
}

/// The fields named by a status's `BadRequest`.
pub fn violated_fields(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    status
        .get_details_bad_request()
        .map(|bad| bad.field_violations.into_iter().map(|violation| violation.field).collect())
        .unwrap_or_default()
}

/// Asserts a call failed with `code` and an `ErrorInfo` of `reason`.
#[track_caller]
pub fn assert_refused<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: Code, expected_reason: &str) {
    match result {
        Ok(value) => panic!("expected {code:?}/{expected_reason}, got Ok({value:?})"),
        Err(status) => {
            assert_eq!(status.code(), code, "{status:?}");
            assert_eq!(reason(&status), expected_reason, "{status:?}");
        }
    }
}

/// Writes two tests for each named `async fn(Backend)`: one on SQLite, one on PostgreSQL.
#[macro_export]
macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name($crate::Backend::Sqlite).await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name($crate::Backend::Postgres).await
                }
            }
        )*
    };
}
