//! One serde tree for all configuration, layered: built-in defaults, then an
//! optional TOML file, then `PARTNERHUB__SECTION__KEY` environment variables.
//! It is loaded once in `main` and passed down explicitly; nothing below reads
//! the environment.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use secrecy::SecretString;
use serde::Deserialize;

/// Everything a Partner Hub process can be told.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Where the embedded database and the generated signing key live.
    pub data_dir: PathBuf,
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub auth: AuthSettings,
    pub log: LogSettings,
    pub telemetry: TelemetrySettings,
    pub peers: PeerSettings,
    pub partner_change: PartnerChangeSettings,
    pub permissions: PermissionsSettings,
}

/// The permissions service's in-memory cache for `CheckPermission`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PermissionsSettings {
    /// The permission log is read at least this often (a missed PostgreSQL
    /// notification costs at most this).
    #[serde(with = "humantime_serde")]
    pub cache_poll_interval: Duration,
    /// The cache answers only if it read the log less than this ago; otherwise
    /// checks go to the database (and fail closed if it is unreachable). This
    /// bounds how long any replica can answer from data older than a change.
    #[serde(with = "humantime_serde")]
    pub cache_trust_window: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Port 0 picks a free port (tests do).
    pub listen_addr: SocketAddr,
    /// The largest request message a server decodes.
    pub max_message_bytes: usize,
    /// How long a graceful shutdown waits for in-flight calls and background tasks.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `postgres://…` or `sqlite://…`. Unset: an SQLite file in `data_dir`.
    pub url: Option<SecretString>,
    pub max_connections: u32,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How often the database is pinged for the readiness of the served services.
    #[serde(with = "humantime_serde")]
    pub health_check_interval: Duration,
    /// A database that has not answered for this long makes every served
    /// service report NOT_SERVING on the gRPC health service (the overall
    /// status, "", stays SERVING: the process itself is alive).
    #[serde(with = "humantime_serde")]
    pub not_serving_after: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// The HS256 signing key, base64. Takes precedence over `signing_key_file`.
    pub signing_key: Option<SecretString>,
    /// Where the key is read from. Unset: `<data_dir>/signing.key`, generated
    /// on first start when the database is the embedded SQLite default.
    pub signing_key_file: Option<PathBuf>,
    /// The `iss` claim written into and required of every token.
    pub issuer: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    /// A `tracing` filter such as `info,partnerhub_account=debug`. `RUST_LOG` wins when set.
    pub filter: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

/// Traces and metrics. Both are off unless configured.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetrySettings {
    /// An OTLP/gRPC collector, e.g. `http://localhost:4317`: every span is
    /// exported there and W3C trace context travels between the services.
    pub otlp_endpoint: Option<String>,
    /// Where Prometheus scrapes `GET /metrics`, e.g. `0.0.0.0:9464`.
    pub metrics_listen_addr: Option<SocketAddr>,
}

/// Where each service's peers are: every replica's address, as a TOML list or
/// a comma-separated string (`http://10.0.0.5:50051,http://10.0.0.6:50051`).
/// Empty: this process's own listen address, which is right when all services
/// run in one process.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PeerSettings {
    #[serde(deserialize_with = "addresses")]
    pub account_urls: Vec<String>,
    #[serde(deserialize_with = "addresses")]
    pub permissions_urls: Vec<String>,
    /// The deadline of every call to a peer.
    #[serde(with = "humantime_serde")]
    pub call_timeout: Duration,
    /// How often each replica of a peer with several is health-checked; one
    /// that fails is tried last until it passes again.
    #[serde(with = "humantime_serde")]
    pub health_check_interval: Duration,
}

/// A list, or one string of comma-separated items (what an environment variable can hold).
fn addresses<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Addresses {
        List(Vec<String>),
        CommaSeparated(String),
    }
    let items = match Addresses::deserialize(deserializer)? {
        Addresses::List(items) => items,
        Addresses::CommaSeparated(joined) => joined.split(',').map(str::to_owned).collect(),
    };
    Ok(items.into_iter().map(|item| item.trim().to_owned()).filter(|item| !item.is_empty()).collect())
}

/// The partner change workflow: request expiry and the migration worker.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PartnerChangeSettings {
    /// How long a request may wait for the destination partner before it expires.
    #[serde(with = "humantime_serde")]
    pub request_ttl: Duration,
    /// How often the expiry sweeper looks for requests past their expire_time.
    #[serde(with = "humantime_serde")]
    pub expiry_sweep_interval: Duration,
    /// How far ahead a migration may be scheduled (`migrate_after`).
    #[serde(with = "humantime_serde")]
    pub max_schedule_ahead: Duration,
    pub worker: WorkerSettings,
    pub stream: StreamSettings,
}

/// The event stream (`WatchPartnerChangeEvents`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamSettings {
    /// An idle stream gets a heartbeat this often.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// How often the event log is read even without a wake-up (a missed
    /// PostgreSQL notification is caught up within this).
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Events buffered for one subscriber before it counts as not reading.
    pub subscriber_buffer: usize,
    /// A subscriber whose buffer stays full this long is ended, told where to resume.
    #[serde(with = "humantime_serde")]
    pub stall_timeout: Duration,
}

/// The migration worker. Any number of replicas may run it: a request is
/// claimed with a lease, and a lapsed lease lets another replica resume it.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerSettings {
    /// Off: this process never migrates (another replica must).
    pub enabled: bool,
    /// How many requests this process migrates at once (each a claim loop of its own).
    pub concurrency: u32,
    /// How often an idle worker looks for approved requests.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// How long a claim lasts before another worker may resume the request
    /// (judged by the database's clock). It is renewed every third of it while
    /// a step runs, so a worker that dies loses its requests within one lease.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// The first retry delay after a transient error; it doubles up to `backoff_max`.
    #[serde(with = "humantime_serde")]
    pub backoff_initial: Duration,
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data"),
            server: ServerSettings::default(),
            database: DatabaseSettings::default(),
            auth: AuthSettings::default(),
            log: LogSettings::default(),
            telemetry: TelemetrySettings::default(),
            peers: PeerSettings::default(),
            partner_change: PartnerChangeSettings::default(),
            permissions: PermissionsSettings::default(),
        }
    }
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 50051)),
            max_message_bytes: 1024 * 1024,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: None,
            max_connections: 10,
            connect_timeout: Duration::from_secs(5),
            health_check_interval: Duration::from_secs(1),
            not_serving_after: Duration::from_secs(3),
        }
    }
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self { signing_key: None, signing_key_file: None, issuer: "partnerhub".to_owned() }
    }
}

impl Default for PeerSettings {
    fn default() -> Self {
        Self {
            account_urls: Vec::new(),
            permissions_urls: Vec::new(),
            call_timeout: Duration::from_secs(5),
            health_check_interval: Duration::from_secs(1),
        }
    }
}

impl Default for PartnerChangeSettings {
    fn default() -> Self {
        Self {
            request_ttl: Duration::from_secs(14 * 24 * 60 * 60),
            expiry_sweep_interval: Duration::from_secs(30),
            max_schedule_ahead: Duration::from_secs(90 * 24 * 60 * 60),
            worker: WorkerSettings::default(),
            stream: StreamSettings::default(),
        }
    }
}

impl Default for PermissionsSettings {
    fn default() -> Self {
        Self { cache_poll_interval: Duration::from_millis(250), cache_trust_window: Duration::from_secs(1) }
    }
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(15),
            poll_interval: Duration::from_secs(1),
            subscriber_buffer: 256,
            stall_timeout: Duration::from_secs(10),
        }
    }
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            concurrency: 4,
            poll_interval: Duration::from_secs(1),
            lease: Duration::from_secs(5),
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
        }
    }
}

impl Default for LogSettings {
    fn default() -> Self {
        Self { format: LogFormat::Human, filter: "info,sqlx=warn".to_owned() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("invalid configuration: {field}: {problem}")]
    Invalid { field: &'static str, problem: String },
}

impl Settings {
    /// Defaults, then `file` if given (it must exist), then the environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(file) = file {
            builder = builder.add_source(config::File::from(file).required(true));
        }
        builder =
            builder.add_source(config::Environment::with_prefix("PARTNERHUB").prefix_separator("__").separator("__"));
        let settings: Settings = builder.build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.server.max_message_bytes < 1024 {
            return Err(ConfigError::Invalid {
                field: "server.max_message_bytes",
                problem: "must be at least 1024".to_owned(),
            });
        }
        if self.database.max_connections == 0 {
            return Err(ConfigError::Invalid {
                field: "database.max_connections",
                problem: "must be at least 1".to_owned(),
            });
        }
        let durations = [
            ("database.health_check_interval", self.database.health_check_interval),
            ("database.not_serving_after", self.database.not_serving_after),
            ("peers.call_timeout", self.peers.call_timeout),
            ("peers.health_check_interval", self.peers.health_check_interval),
            ("partner_change.request_ttl", self.partner_change.request_ttl),
            ("partner_change.expiry_sweep_interval", self.partner_change.expiry_sweep_interval),
            ("partner_change.max_schedule_ahead", self.partner_change.max_schedule_ahead),
            ("partner_change.worker.poll_interval", self.partner_change.worker.poll_interval),
            ("partner_change.worker.lease", self.partner_change.worker.lease),
            ("partner_change.worker.backoff_initial", self.partner_change.worker.backoff_initial),
            ("partner_change.stream.heartbeat_interval", self.partner_change.stream.heartbeat_interval),
            ("partner_change.stream.poll_interval", self.partner_change.stream.poll_interval),
            ("partner_change.stream.stall_timeout", self.partner_change.stream.stall_timeout),
            ("permissions.cache_poll_interval", self.permissions.cache_poll_interval),
            ("permissions.cache_trust_window", self.permissions.cache_trust_window),
        ];
        if let Some((field, _)) = durations.iter().find(|(_, duration)| duration.is_zero()) {
            return Err(ConfigError::Invalid { field, problem: "must be longer than zero".to_owned() });
        }
        if self.partner_change.worker.lease < Duration::from_millis(100) {
            return Err(ConfigError::Invalid {
                field: "partner_change.worker.lease",
                problem: "must be at least 100ms (it is renewed every third of it while a step runs)".to_owned(),
            });
        }
        if self.partner_change.worker.backoff_max < self.partner_change.worker.backoff_initial {
            return Err(ConfigError::Invalid {
                field: "partner_change.worker.backoff_max",
                problem: "must not be shorter than backoff_initial".to_owned(),
            });
        }
        if self.permissions.cache_poll_interval >= self.permissions.cache_trust_window {
            return Err(ConfigError::Invalid {
                field: "permissions.cache_poll_interval",
                problem: "must be shorter than cache_trust_window, or the cache would never be trusted".to_owned(),
            });
        }
        if self.partner_change.stream.subscriber_buffer < 2 {
            return Err(ConfigError::Invalid {
                field: "partner_change.stream.subscriber_buffer",
                problem: "must be at least 2".to_owned(),
            });
        }
        if self.partner_change.worker.concurrency == 0 {
            return Err(ConfigError::Invalid {
                field: "partner_change.worker.concurrency",
                problem: "must be at least 1 (use worker.enabled = false to stop migrating)".to_owned(),
            });
        }
        if self.auth.issuer.is_empty() {
            return Err(ConfigError::Invalid { field: "auth.issuer", problem: "must not be empty".to_owned() });
        }
        Ok(())
    }

    /// The database URL, defaulting to an SQLite file in the data directory.
    pub fn database_url(&self) -> String {
        use secrecy::ExposeSecret;
        match &self.database.url {
            Some(url) => url.expose_secret().to_owned(),
            None => format!("sqlite://{}?mode=rwc", self.data_dir.join("partnerhub.db").display()),
        }
    }

    /// True when the database is the embedded SQLite default (or any SQLite file).
    pub fn uses_embedded_database(&self) -> bool {
        self.database_url().starts_with("sqlite:")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Settings::default().validate().unwrap();
    }

    #[test]
    fn a_file_overrides_defaults_and_a_typo_is_a_clear_error() {
        let dir = std::env::temp_dir().join(format!("partnerhub-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.toml");
        std::fs::write(&good, "[server]\nlisten_addr = \"127.0.0.1:6000\"\nshutdown_grace = \"3s\"\n").unwrap();
        let settings = Settings::load(Some(&good)).unwrap();
        assert_eq!(settings.server.listen_addr.port(), 6000);
        assert_eq!(settings.server.shutdown_grace, Duration::from_secs(3));

        let typo = dir.join("typo.toml");
        std::fs::write(&typo, "[server]\nlisten_adr = \"127.0.0.1:6000\"\n").unwrap();
        let err = Settings::load(Some(&typo)).expect_err("unknown key must be refused");
        assert!(err.to_string().contains("listen_adr"), "{err}");

        let bad = dir.join("bad.toml");
        std::fs::write(&bad, "[server]\nmax_message_bytes = 10\n").unwrap();
        let err = Settings::load(Some(&bad)).expect_err("tiny message limit must be refused");
        assert!(err.to_string().contains("server.max_message_bytes"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn peer_addresses_are_a_list_or_a_comma_separated_string() {
        let parse = |toml: &str| -> Settings {
            config::Config::builder()
                .add_source(config::File::from_str(toml, config::FileFormat::Toml))
                .build()
                .and_then(config::Config::try_deserialize)
                .unwrap()
        };
        let listed = parse("[peers]\naccount_urls = [\"http://a:1\", \"http://b:2\"]\n");
        assert_eq!(listed.peers.account_urls, ["http://a:1", "http://b:2"]);
        let joined = parse("[peers]\naccount_urls = \" http://a:1, http://b:2,\"\n");
        assert_eq!(joined.peers.account_urls, ["http://a:1", "http://b:2"]);
        assert!(joined.peers.permissions_urls.is_empty());
    }
}
