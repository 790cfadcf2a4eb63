//! The partner-change service's section of the settings tree, `[partner_change]`.

use std::time::Duration;

use partnerhub_runtime::config::{ConfigError, ServiceSettings, require_nonzero};
use serde::Deserialize;

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
    /// Bytes (of the messages' approximate encoded size) buffered for one
    /// subscriber before it counts as not reading, whichever of this and
    /// `subscriber_buffer` is reached first. What one stalled subscriber
    /// holds is this plus the HTTP/2 layer's per-stream send buffer.
    pub subscriber_buffer_bytes: usize,
    /// A subscriber whose buffer stays full this long is ended, told where to resume.
    #[serde(with = "humantime_serde")]
    pub stall_timeout: Duration,
}

/// Bounds of `stream.subscriber_buffer_bytes`.
const MIN_SUBSCRIBER_BUFFER_BYTES: usize = 4 * 1024;
const MAX_SUBSCRIBER_BUFFER_BYTES: usize = 1024 * 1024 * 1024;

/// The migration worker. Any number of replicas may run it: a request is
/// claimed with a lease, and a lapsed lease lets another replica resume it.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerSettings {
    /// Off: this process never migrates (another replica must).
    pub enabled: bool,
    /// How many sagas this process drives at once (one claim loop fills them,
    /// several requests per statement).
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

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(15),
            poll_interval: Duration::from_secs(1),
            subscriber_buffer: 256,
            subscriber_buffer_bytes: 256 * 1024,
            stall_timeout: Duration::from_secs(10),
        }
    }
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            concurrency: 32,
            poll_interval: Duration::from_secs(1),
            lease: Duration::from_secs(5),
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
        }
    }
}

impl ServiceSettings for PartnerChangeSettings {
    const SECTION: &'static str = "partner_change";

    fn validate(&self) -> Result<(), ConfigError> {
        require_nonzero(&[
            ("partner_change.request_ttl", self.request_ttl),
            ("partner_change.expiry_sweep_interval", self.expiry_sweep_interval),
            ("partner_change.max_schedule_ahead", self.max_schedule_ahead),
            ("partner_change.worker.poll_interval", self.worker.poll_interval),
            ("partner_change.worker.lease", self.worker.lease),
            ("partner_change.worker.backoff_initial", self.worker.backoff_initial),
            ("partner_change.stream.heartbeat_interval", self.stream.heartbeat_interval),
            ("partner_change.stream.poll_interval", self.stream.poll_interval),
            ("partner_change.stream.stall_timeout", self.stream.stall_timeout),
        ])?;
        if self.worker.lease < Duration::from_millis(100) {
            return Err(ConfigError::invalid(
                "partner_change.worker.lease",
                "must be at least 100ms (it is renewed every third of it while a step runs)",
            ));
        }
        if self.worker.backoff_max < self.worker.backoff_initial {
            return Err(ConfigError::invalid(
                "partner_change.worker.backoff_max",
                "must not be shorter than backoff_initial",
            ));
        }
        if self.stream.subscriber_buffer < 2 {
            return Err(ConfigError::invalid("partner_change.stream.subscriber_buffer", "must be at least 2"));
        }
        if !(MIN_SUBSCRIBER_BUFFER_BYTES..=MAX_SUBSCRIBER_BUFFER_BYTES).contains(&self.stream.subscriber_buffer_bytes) {
            return Err(ConfigError::invalid(
                "partner_change.stream.subscriber_buffer_bytes",
                "must be from 4096 (4 KiB) to 1073741824 (1 GiB)",
            ));
        }
        if self.worker.concurrency == 0 {
            return Err(ConfigError::invalid(
                "partner_change.worker.concurrency",
                "must be at least 1 (use worker.enabled = false to stop migrating)",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_a_short_lease_is_refused() {
        PartnerChangeSettings::default().validate().unwrap();
        let mut settings = PartnerChangeSettings::default();
        settings.worker.lease = Duration::from_millis(50);
        let err = settings.validate().expect_err("a lease shorter than 100ms must be refused");
        assert!(err.to_string().contains("partner_change.worker.lease"), "{err}");
    }

    #[test]
    fn a_subscriber_byte_budget_out_of_bounds_is_refused() {
        for bytes in [0, 4095, 1024 * 1024 * 1024 + 1] {
            let mut settings = PartnerChangeSettings::default();
            settings.stream.subscriber_buffer_bytes = bytes;
            let err = settings.validate().expect_err("out of bounds");
            assert!(err.to_string().contains("partner_change.stream.subscriber_buffer_bytes"), "{bytes}: {err}");
        }
        for bytes in [4096, 1024 * 1024 * 1024] {
            let mut settings = PartnerChangeSettings::default();
            settings.stream.subscriber_buffer_bytes = bytes;
            settings.validate().unwrap();
        }
    }
}
