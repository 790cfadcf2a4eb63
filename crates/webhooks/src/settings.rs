//! The webhooks service's section of the settings tree, `[webhooks]`.

use std::time::Duration;

use partnerhub_runtime::config::{Addresses, ConfigError, ServiceSettings, require_nonzero};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksSettings {
    /// How long one POST may take, connection included.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// The delays between attempts, after the first: a list, or one string of
    /// comma-separated durations (`1s,1s,2s`). After the last, the delivery has failed.
    pub retry_schedule: RetrySchedule,
    /// An endpoint that has failed every delivery for this long is disabled.
    #[serde(with = "humantime_serde")]
    pub disable_after: Duration,
    /// Accept and deliver to private, loopback and link-local addresses (tests, the local cluster).
    pub allow_private_networks: bool,
    /// Accept `http://` endpoints (tests, the local cluster).
    pub allow_http: bool,
    /// Deliveries in flight at once, per replica.
    pub max_in_flight: usize,
    /// Deliveries in flight at once to one endpoint, so that a slow one cannot take every slot.
    pub max_in_flight_per_endpoint: usize,
    /// The most endpoints one partner or client may have (each event is sent to every one).
    pub max_endpoints_per_owner: u64,
    /// How often due deliveries are looked for (new events wake the dispatcher at once).
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// How long the replica that follows the event stream holds that role
    /// without renewing it; another replica takes over after it lapses.
    #[serde(with = "humantime_serde")]
    pub follower_lease: Duration,
}

impl Default for WebhooksSettings {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(15),
            retry_schedule: RetrySchedule::default(),
            disable_after: Duration::from_secs(5 * 24 * 60 * 60),
            allow_private_networks: false,
            allow_http: false,
            max_in_flight: 256,
            max_in_flight_per_endpoint: 4,
            max_endpoints_per_owner: 20,
            poll_interval: Duration::from_secs(1),
            follower_lease: Duration::from_secs(15),
        }
    }
}

/// The longest one retry may be put off.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// The delays between a delivery's attempts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule(pub Vec<Duration>);

impl Default for RetrySchedule {
    /// About a day: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
    fn default() -> Self {
        let minutes = |m: u64| Duration::from_secs(m * 60);
        Self(vec![
            Duration::from_secs(5),
            minutes(5),
            minutes(30),
            minutes(120),
            minutes(300),
            minutes(600),
            minutes(600),
        ])
    }
}

impl<'de> Deserialize<'de> for RetrySchedule {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let Addresses(items) = Addresses::deserialize(deserializer)?;
        items
            .iter()
            .map(|item| humantime::parse_duration(item).map_err(|err| format!("{item:?}: {err}")))
            .collect::<Result<Vec<_>, _>>()
            .map(RetrySchedule)
            .map_err(serde::de::Error::custom)
    }
}

impl RetrySchedule {
    /// The delay before attempt `attempts + 1`, after `attempts` failed ones;
    /// `None` when the schedule is exhausted.
    pub fn delay_after(&self, attempts: u32) -> Option<Duration> {
        self.0.get(usize::try_from(attempts).ok()?.checked_sub(1)?).copied()
    }
}

impl ServiceSettings for WebhooksSettings {
    const SECTION: &'static str = "webhooks";

    fn validate(&self) -> Result<(), ConfigError> {
        require_nonzero(&[
            ("webhooks.request_timeout", self.request_timeout),
            ("webhooks.disable_after", self.disable_after),
            ("webhooks.poll_interval", self.poll_interval),
            ("webhooks.follower_lease", self.follower_lease),
        ])?;
        if self.max_in_flight == 0 || self.max_in_flight_per_endpoint == 0 || self.max_endpoints_per_owner == 0 {
            return Err(ConfigError::invalid("webhooks.max_in_flight", "must be at least 1"));
        }
        if self.retry_schedule.0.len() > 100 {
            return Err(ConfigError::invalid("webhooks.retry_schedule", "at most 100 retries"));
        }
        if self.retry_schedule.0.iter().any(|delay| *delay > MAX_RETRY_DELAY) {
            return Err(ConfigError::invalid("webhooks.retry_schedule", "each delay at most 30 days"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_retry_schedule_reads_a_list_or_comma_separated_durations() {
        WebhooksSettings::default().validate().unwrap();
        let parse = |json: serde_json::Value| serde_json::from_value::<RetrySchedule>(json);
        let expected = RetrySchedule(vec![Duration::from_secs(1), Duration::from_secs(1), Duration::from_secs(2)]);
        assert_eq!(parse(serde_json::json!("1s,1s,2s")).unwrap(), expected);
        assert_eq!(parse(serde_json::json!(["1s", "1s", "2s"])).unwrap(), expected);
        assert!(parse(serde_json::json!("1s,soon")).unwrap_err().to_string().contains("soon"));

        assert_eq!(expected.delay_after(1), Some(Duration::from_secs(1)));
        assert_eq!(expected.delay_after(3), Some(Duration::from_secs(2)));
        assert_eq!(expected.delay_after(4), None, "three retries, then failed");
        assert_eq!(RetrySchedule::default().0.iter().sum::<Duration>().as_secs() / 3600, 27, "about a day");
        let far = WebhooksSettings {
            retry_schedule: RetrySchedule(vec![Duration::from_secs(31 * 24 * 60 * 60)]),
            ..WebhooksSettings::default()
        };
        assert!(far.validate().unwrap_err().to_string().contains("webhooks.retry_schedule"));
    }
}
