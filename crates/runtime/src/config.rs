//! One serde tree for all configuration, layered: built-in defaults, then an
//! optional TOML file, then `PARTNERHUB__SECTION__KEY` environment variables.
//! It is loaded once in `main` and passed down explicitly; nothing below reads
//! the environment.
//!
//! The runtime defines the sections every process shares (`server`,
//! `database`, `auth`, `log`, `telemetry`, `peers`). Every other top-level
//! section belongs to a service, which declares its type ([`ServiceSettings`]);
//! the loader hands each section to its service and refuses a section no
//! service claims, as it refuses an unknown key inside a section.

use std::{
    any::Any,
    collections::BTreeMap,
    fmt::Debug,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use secrecy::SecretString;
use serde::{Deserialize, de::DeserializeOwned};

/// Everything a Partner Hub process can be told.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Where the embedded database and the generated signing key live.
    pub data_dir: PathBuf,
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub auth: AuthSettings,
    pub log: LogSettings,
    pub telemetry: TelemetrySettings,
    pub peers: PeerSettings,
    pub retention: RetentionSettings,
    /// Every other top-level table as read, until its service claims it.
    #[serde(flatten)]
    unclaimed: BTreeMap<String, config::Value>,
    /// The services' own sections, typed.
    #[serde(skip)]
    sections: Sections,
}

/// A service's own section of the settings tree (`[partner_change]`), with its
/// defaults and its checks.
pub trait ServiceSettings: DeserializeOwned + Default + Clone + Debug + Send + Sync + 'static {
    /// The section's name, a top-level key of the tree.
    const SECTION: &'static str;

    /// Refuses values the service cannot run with (defaults must pass).
    fn validate(&self) -> Result<(), ConfigError> {
        Ok(())
    }
}

/// Reads one service's section: what the loader needs of a service, without its type.
pub trait SectionReader: Sync {
    /// The section's name.
    fn section(&self) -> &'static str;
    /// Deserializes and checks the section as read.
    fn read_section(&self, raw: config::Value) -> Result<Box<dyn Section>, ConfigError>;
}

/// A typed section, stored without its type.
pub trait Section: Any + Debug + Send + Sync {
    fn clone_box(&self) -> Box<dyn Section>;
    fn validate_section(&self) -> Result<(), ConfigError>;
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

impl<T: ServiceSettings> Section for T {
    fn clone_box(&self) -> Box<dyn Section> {
        Box::new(self.clone())
    }
    fn validate_section(&self) -> Result<(), ConfigError> {
        self.validate()
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// Reads the section of type `T` (for a service's [`SectionReader`]).
pub fn read_section<T: ServiceSettings>(raw: config::Value) -> Result<Box<dyn Section>, ConfigError> {
    let section: T = raw.try_deserialize().map_err(|err| ConfigError::invalid(T::SECTION, err.to_string()))?;
    section.validate()?;
    Ok(Box::new(section))
}

/// The services' sections by name.
#[derive(Debug, Default)]
struct Sections(BTreeMap<&'static str, Box<dyn Section>>);

impl Clone for Sections {
    fn clone(&self) -> Self {
        Self(self.0.iter().map(|(name, section)| (*name, section.clone_box())).collect())
    }
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
    /// Open connections at most; beyond that, new ones wait to be accepted.
    pub max_connections: usize,
    /// Streams (calls) one HTTP/2 connection may have open at once, advertised
    /// to clients (an event-stream consumer may hold many on one connection).
    pub max_concurrent_streams: u32,
    /// A connection that has not sent the HTTP/2 preface this long after
    /// connecting is closed.
    #[serde(with = "humantime_serde")]
    pub preface_timeout: Duration,
    /// An HTTP/2 ping is sent on a connection quiet this long…
    #[serde(with = "humantime_serde")]
    pub http2_keepalive_interval: Duration,
    /// …and the connection closed if the ping is not answered within this.
    #[serde(with = "humantime_serde")]
    pub http2_keepalive_timeout: Duration,
    /// TCP keepalive probes start after this much idle time.
    #[serde(with = "humantime_serde")]
    pub tcp_keepalive: Duration,
    /// Serve over TLS: both set, or neither.
    pub tls: TlsSettings,
    /// Web pages (origins, e.g. `https://hub.example.com`) whose gRPC-Web
    /// calls browsers may make; a list, or comma-separated. Empty: none
    /// (gRPC-Web from non-browser clients works regardless).
    pub grpc_web_cors_origins: Addresses,
}

/// The server's certificate (chain) and key, PEM files.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
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
    /// A token whose expiry is further ahead than this is refused; `partnerhub
    /// token` mints none longer.
    #[serde(with = "humantime_serde")]
    pub max_token_ttl: Duration,
    /// The one identity that may make the migration calls (move a WABA,
    /// revoke and grant for a partner change), e.g. `service:partner-change`.
    /// Unset: the binary's own migrating service.
    pub migration_service: Option<String>,
    /// The identity provider's public keys, a JWK Set file: tokens it signs
    /// (RS256, ES256, EdDSA, chosen by `kid`) are accepted, and the HS256
    /// key then speaks only for services (the calls between Partner Hub's own).
    pub jwks_file: Option<PathBuf>,
    /// How often the JWK Set file is checked for changes (a token naming an
    /// unknown `kid` checks at once).
    #[serde(with = "humantime_serde")]
    pub jwks_check_interval: Duration,
    /// The identity provider's JWK Set served over HTTPS (instead of
    /// `jwks_file`): fetched at start, at once for a token naming an unknown
    /// `kid` (at most once per `jwks_min_fetch_interval`), and every
    /// `jwks_refresh_interval`.
    pub jwks_url: Option<String>,
    /// A CA (PEM) trusted for `jwks_url` besides the system's roots.
    pub jwks_ca_file: Option<PathBuf>,
    #[serde(with = "humantime_serde")]
    pub jwks_refresh_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub jwks_min_fetch_interval: Duration,
    /// The `aud` an identity provider's token must name; unset: not checked.
    pub audience: Option<String>,
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

/// How long the logs keep what they record: the partner change event log and
/// the permission log. Each service prunes its own log, one replica at a time.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionSettings {
    /// Entries older than this are pruned (the newest entry is always kept).
    /// A stream cursor older than what is kept then gets `OUT_OF_RANGE`.
    #[serde(with = "humantime_serde")]
    pub events: Duration,
    /// How often a replica looks for entries to prune.
    #[serde(with = "humantime_serde")]
    pub prune_interval: Duration,
    /// Entries deleted per transaction.
    pub prune_batch: u32,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        Self {
            events: Duration::from_secs(90 * 24 * 60 * 60),
            prune_interval: Duration::from_secs(10 * 60),
            prune_batch: 1000,
        }
    }
}

/// Where each service's peers are: every replica's address, as a TOML list or
/// a comma-separated string (`http://10.0.0.5:50051,http://10.0.0.6:50051`).
/// Empty: this process's own listen address, which is right when all services
/// run in one process.
// Not `deny_unknown_fields`: every other key is a peer's `<service>_urls`,
// and `Settings::validate` refuses one that is not.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct PeerSettings {
    /// The deadline of every call to a peer.
    #[serde(with = "humantime_serde")]
    pub call_timeout: Duration,
    /// How often each replica of a peer with several is health-checked; one
    /// that fails is tried last until it passes again.
    #[serde(with = "humantime_serde")]
    pub health_check_interval: Duration,
    /// The certificate authority (PEM) `https://` peers are checked against.
    /// Unset: this server's own certificate (`server.tls.cert_file`), which
    /// is right for a self-signed certificate every replica shares.
    pub ca_file: Option<PathBuf>,
    /// `<service>_urls` (`account_urls`, `permissions_urls`, …): every replica of that service.
    #[serde(flatten)]
    pub urls: BTreeMap<String, Addresses>,
}

impl PeerSettings {
    /// The key naming `service`'s replicas: `partner-change` → `partner_change_urls`.
    pub fn urls_key(service: &str) -> String {
        format!("{}_urls", service.replace('-', "_"))
    }

    /// The configured replicas of `service`; empty when none are configured.
    pub fn urls_of(&self, service: &str) -> &[String] {
        self.urls.get(&Self::urls_key(service)).map_or(&[], |addresses| &addresses.0)
    }
}

/// A list, or one string of comma-separated items (what an environment variable can hold).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Addresses(pub Vec<String>);

impl<'de> Deserialize<'de> for Addresses {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            List(Vec<String>),
            CommaSeparated(String),
        }
        let items = match Form::deserialize(deserializer)? {
            Form::List(items) => items,
            Form::CommaSeparated(joined) => joined.split(',').map(str::to_owned).collect(),
        };
        Ok(Self(items.into_iter().map(|item| item.trim().to_owned()).filter(|item| !item.is_empty()).collect()))
    }
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
            retention: RetentionSettings::default(),
            unclaimed: BTreeMap::new(),
            sections: Sections::default(),
        }
    }
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 50051)),
            max_message_bytes: 1024 * 1024,
            shutdown_grace: Duration::from_secs(10),
            max_connections: 10_000,
            max_concurrent_streams: 1000,
            preface_timeout: Duration::from_secs(10),
            http2_keepalive_interval: Duration::from_secs(30),
            http2_keepalive_timeout: Duration::from_secs(10),
            tcp_keepalive: Duration::from_secs(60),
            grpc_web_cors_origins: Addresses::default(),
            tls: TlsSettings::default(),
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
        Self {
            signing_key: None,
            signing_key_file: None,
            issuer: "partnerhub".to_owned(),
            max_token_ttl: crate::auth::DEFAULT_MAX_TOKEN_TTL,
            migration_service: None,
            jwks_file: None,
            jwks_check_interval: Duration::from_secs(10),
            jwks_url: None,
            jwks_ca_file: None,
            jwks_refresh_interval: Duration::from_secs(5 * 60),
            jwks_min_fetch_interval: Duration::from_secs(10),
            audience: None,
        }
    }
}

impl Default for PeerSettings {
    fn default() -> Self {
        Self {
            urls: BTreeMap::new(),
            ca_file: None,
            call_timeout: Duration::from_secs(5),
            health_check_interval: Duration::from_secs(1),
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
    Invalid { field: String, problem: String },
}

impl ConfigError {
    pub fn invalid(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::Invalid { field: field.into(), problem: problem.into() }
    }
}

/// Refuses the first of `durations` (named by their full key) that is zero.
pub fn require_nonzero(durations: &[(&str, Duration)]) -> Result<(), ConfigError> {
    match durations.iter().find(|(_, duration)| duration.is_zero()) {
        Some((field, _)) => Err(ConfigError::invalid(*field, "must be longer than zero")),
        None => Ok(()),
    }
}

impl Settings {
    /// Defaults, then `file` if given (it must exist), then the environment;
    /// each service section is read by its reader in `services`.
    pub fn load(file: Option<&Path>, services: &[&dyn SectionReader]) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(file) = file {
            builder = builder.add_source(config::File::from(file).required(true));
        }
        builder =
            builder.add_source(config::Environment::with_prefix("PARTNERHUB").prefix_separator("__").separator("__"));
        Self::from_config(builder.build()?, services)
    }

    fn from_config(config: config::Config, services: &[&dyn SectionReader]) -> Result<Self, ConfigError> {
        let mut settings: Settings = config.try_deserialize()?;
        settings.claim_sections(services)?;
        settings.validate()?;
        Ok(settings)
    }

    /// Hands every section read but not yet claimed to its service's reader;
    /// a section no service claims is refused (a typo, or a service this
    /// binary does not have).
    pub fn claim_sections(&mut self, services: &[&dyn SectionReader]) -> Result<(), ConfigError> {
        for (name, raw) in std::mem::take(&mut self.unclaimed) {
            let Some(reader) = services.iter().find(|reader| reader.section() == name) else {
                let known: Vec<&str> = services.iter().map(|reader| reader.section()).collect();
                return Err(ConfigError::invalid(
                    name,
                    format!("unknown section (besides the shared ones, the services' are: {})", known.join(", ")),
                ));
            };
            self.sections.0.insert(reader.section(), reader.read_section(raw)?);
        }
        Ok(())
    }

    /// The section of type `T`: as configured, or its defaults.
    pub fn section<T: ServiceSettings>(&self) -> T {
        self.sections
            .0
            .get(T::SECTION)
            .and_then(|section| section.as_any().downcast_ref::<T>())
            .cloned()
            .unwrap_or_default()
    }

    /// The section of type `T` to change (settings built in code: tests, embedders).
    #[allow(clippy::expect_used)] // the slot holds a `T`: it was checked or replaced just before
    pub fn section_mut<T: ServiceSettings>(&mut self) -> &mut T {
        let section = self.sections.0.entry(T::SECTION).or_insert_with(|| Box::new(T::default()));
        if !section.as_any().is::<T>() {
            *section = Box::new(T::default());
        }
        section.as_any_mut().downcast_mut::<T>().expect("the section was just made a T")
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(name) = self.unclaimed.keys().next() {
            return Err(ConfigError::invalid(name.clone(), "no service claims this section"));
        }
        if self.server.max_message_bytes < 1024 {
            return Err(ConfigError::invalid("server.max_message_bytes", "must be at least 1024"));
        }
        if self.database.max_connections == 0 {
            return Err(ConfigError::invalid("database.max_connections", "must be at least 1"));
        }
        if self.server.max_connections == 0 || self.server.max_concurrent_streams == 0 {
            return Err(ConfigError::invalid(
                "server.max_connections",
                "server.max_connections and server.max_concurrent_streams must be at least 1",
            ));
        }
        require_nonzero(&[
            ("server.preface_timeout", self.server.preface_timeout),
            ("server.http2_keepalive_interval", self.server.http2_keepalive_interval),
            ("server.http2_keepalive_timeout", self.server.http2_keepalive_timeout),
            ("server.tcp_keepalive", self.server.tcp_keepalive),
            ("database.health_check_interval", self.database.health_check_interval),
            ("database.not_serving_after", self.database.not_serving_after),
            ("peers.call_timeout", self.peers.call_timeout),
            ("peers.health_check_interval", self.peers.health_check_interval),
            ("auth.max_token_ttl", self.auth.max_token_ttl),
            ("auth.jwks_check_interval", self.auth.jwks_check_interval),
            ("auth.jwks_refresh_interval", self.auth.jwks_refresh_interval),
            ("auth.jwks_min_fetch_interval", self.auth.jwks_min_fetch_interval),
            ("retention.events", self.retention.events),
            ("retention.prune_interval", self.retention.prune_interval),
        ])?;
        if self.retention.prune_batch == 0 {
            return Err(ConfigError::invalid("retention.prune_batch", "must be at least 1"));
        }
        if self.auth.jwks_file.is_some() && self.auth.jwks_url.is_some() {
            return Err(ConfigError::invalid("auth.jwks_url", "set either auth.jwks_file or auth.jwks_url, not both"));
        }
        if let Some(url) = &self.auth.jwks_url
            && !url.starts_with("https://")
        {
            return Err(ConfigError::invalid("auth.jwks_url", "the key set is fetched over https:// only"));
        }
        if let Some(key) = self.peers.urls.keys().find(|key| !key.ends_with("_urls")) {
            return Err(ConfigError::invalid(format!("peers.{key}"), "unknown key (peers are named `<service>_urls`)"));
        }
        if let Some(subject) = &self.auth.migration_service
            && !matches!(subject.parse(), Ok(crate::auth::Subject::Service(_)))
        {
            return Err(ConfigError::invalid(
                "auth.migration_service",
                format!("must be `service:<name>`, not {subject:?}"),
            ));
        }
        if let Some(origin) =
            self.server.grpc_web_cors_origins.0.iter().find(|origin| origin.parse::<http::HeaderValue>().is_err())
        {
            return Err(ConfigError::invalid("server.grpc_web_cors_origins", format!("{origin:?} is not an origin")));
        }
        if self.server.tls.cert_file.is_some() != self.server.tls.key_file.is_some() {
            return Err(ConfigError::invalid("server.tls", "set both cert_file and key_file, or neither"));
        }
        if self.auth.issuer.is_empty() {
            return Err(ConfigError::invalid("auth.issuer", "must not be empty"));
        }
        for section in self.sections.0.values() {
            section.validate_section()?;
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

    /// A service's section, as a service crate would declare it.
    #[derive(Debug, Clone, Default, PartialEq, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct ExampleSettings {
        count: u32,
        #[serde(with = "humantime_serde")]
        interval: Duration,
    }

    impl ServiceSettings for ExampleSettings {
        const SECTION: &'static str = "example";
        fn validate(&self) -> Result<(), ConfigError> {
            if self.count > 10 {
                return Err(ConfigError::invalid("example.count", "must be at most 10"));
            }
            Ok(())
        }
    }

    struct Example;

    impl SectionReader for Example {
        fn section(&self) -> &'static str {
            ExampleSettings::SECTION
        }
        fn read_section(&self, raw: config::Value) -> Result<Box<dyn Section>, ConfigError> {
            read_section::<ExampleSettings>(raw)
        }
    }

    fn parse(toml: &str) -> Result<Settings, ConfigError> {
        let config =
            config::Config::builder().add_source(config::File::from_str(toml, config::FileFormat::Toml)).build()?;
        Settings::from_config(config, &[&Example])
    }

    #[test]
    fn a_served_key_set_is_fetched_over_https_and_is_the_only_key_set() {
        let read = |toml: &str| parse(toml).and_then(|settings| settings.validate());
        read("[auth]\njwks_url = \"https://idp.example/.well-known/jwks.json\"\n").unwrap();
        let err = read("[auth]\njwks_url = \"http://idp.example/jwks.json\"\n").expect_err("plain HTTP");
        assert!(err.to_string().contains("auth.jwks_url") && err.to_string().contains("https"), "{err}");
        let err = read("[auth]\njwks_url = \"https://idp.example/jwks.json\"\njwks_file = \"/etc/jwks.json\"\n")
            .expect_err("two key sets");
        assert!(err.to_string().contains("not both"), "{err}");
        let err = read("[auth]\njwks_min_fetch_interval = \"0s\"\n").expect_err("no rate limit");
        assert!(err.to_string().contains("auth.jwks_min_fetch_interval"), "{err}");
    }

    #[test]
    fn a_service_section_is_read_as_its_own_type_and_checked_by_it() {
        // A number as a string is what an environment variable gives.
        let settings = parse("[example]\ncount = \"4\"\ninterval = \"2s\"\n").unwrap();
        assert_eq!(
            settings.section::<ExampleSettings>(),
            ExampleSettings { count: 4, interval: Duration::from_secs(2) }
        );
        assert_eq!(parse("").unwrap().section::<ExampleSettings>(), ExampleSettings::default());

        let err = parse("[example]\ncuont = 4\n").expect_err("a typo inside a section must be refused");
        assert!(err.to_string().contains("cuont"), "{err}");
        let err = parse("[exmaple]\ncount = 4\n").expect_err("a section no service claims must be refused");
        assert!(err.to_string().contains("exmaple") && err.to_string().contains("example"), "{err}");
        let err = parse("[example]\ncount = 11\n").expect_err("the service's own check must run");
        assert!(err.to_string().contains("example.count"), "{err}");

        let mut settings = Settings::default();
        settings.section_mut::<ExampleSettings>().count = 11;
        let err = settings.validate().expect_err("settings built in code are checked the same way");
        assert!(err.to_string().contains("example.count"), "{err}");
    }

    #[test]
    fn a_file_overrides_defaults_and_a_typo_is_a_clear_error() {
        let dir = std::env::temp_dir().join(format!("partnerhub-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.toml");
        std::fs::write(&good, "[server]\nlisten_addr = \"127.0.0.1:6000\"\nshutdown_grace = \"3s\"\n").unwrap();
        let settings = Settings::load(Some(&good), &[]).unwrap();
        assert_eq!(settings.server.listen_addr.port(), 6000);
        assert_eq!(settings.server.shutdown_grace, Duration::from_secs(3));

        let typo = dir.join("typo.toml");
        std::fs::write(&typo, "[server]\nlisten_adr = \"127.0.0.1:6000\"\n").unwrap();
        let err = Settings::load(Some(&typo), &[]).expect_err("unknown key must be refused");
        assert!(err.to_string().contains("listen_adr"), "{err}");

        let bad = dir.join("bad.toml");
        std::fs::write(&bad, "[server]\nmax_message_bytes = 10\n").unwrap();
        let err = Settings::load(Some(&bad), &[]).expect_err("tiny message limit must be refused");
        assert!(err.to_string().contains("server.max_message_bytes"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn peer_addresses_are_a_list_or_a_comma_separated_string() {
        let listed = parse("[peers]\naccount_urls = [\"http://a:1\", \"http://b:2\"]\n").unwrap();
        assert_eq!(listed.peers.urls_of("account"), ["http://a:1", "http://b:2"]);
        let joined = parse("[peers]\npartner_change_urls = \" http://a:1, http://b:2,\"\n").unwrap();
        assert_eq!(joined.peers.urls_of("partner-change"), ["http://a:1", "http://b:2"]);
        assert!(joined.peers.urls_of("account").is_empty());
        let err =
            parse("[peers]\naccount_url = \"http://a:1\"\n").expect_err("a key that names no peer must be refused");
        assert!(err.to_string().contains("peers.account_url"), "{err}");
    }
}
