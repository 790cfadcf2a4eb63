//! The permissions service's section of the settings tree, `[permissions]`.

use std::time::Duration;

use partnerhub_runtime::config::{ConfigError, ServiceSettings, require_nonzero};
use serde::Deserialize;

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

impl Default for PermissionsSettings {
    fn default() -> Self {
        Self { cache_poll_interval: Duration::from_millis(250), cache_trust_window: Duration::from_secs(1) }
    }
}

impl ServiceSettings for PermissionsSettings {
    const SECTION: &'static str = "permissions";

    fn validate(&self) -> Result<(), ConfigError> {
        require_nonzero(&[
            ("permissions.cache_poll_interval", self.cache_poll_interval),
            ("permissions.cache_trust_window", self.cache_trust_window),
        ])?;
        if self.cache_poll_interval >= self.cache_trust_window {
            return Err(ConfigError::invalid(
                "permissions.cache_poll_interval",
                "must be shorter than cache_trust_window, or the cache would never be trusted",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_a_cache_that_could_never_be_trusted_is_refused() {
        PermissionsSettings::default().validate().unwrap();
        let settings =
            PermissionsSettings { cache_poll_interval: Duration::from_secs(2), ..PermissionsSettings::default() };
        let err = settings.validate().expect_err("polling slower than the trust window must be refused");
        assert!(err.to_string().contains("permissions.cache_poll_interval"), "{err}");
    }
}
