//! Background work that loses a dependency (the database, a peer) keeps
//! retrying, but says so once: one line when it starts failing, one when it
//! recovers (with how many attempts failed and for how long), and the counts in
//! metrics. A log line per attempt would drown every other problem.

use std::{
    fmt::Display,
    sync::{Arc, Mutex},
    time::Instant,
};

use crate::metrics::{TaskLabels, metrics};

/// The failure state of one kind of background task; clones share it, so the
/// several loops of one task (the migration worker's) report one outage.
#[derive(Debug, Clone)]
pub struct Outage {
    task: &'static str,
    /// A std mutex: held only to update the counts, never across `.await`.
    failing: Arc<Mutex<Option<Failing>>>,
}

#[derive(Debug, Clone, Copy)]
struct Failing {
    since: Instant,
    attempts: u64,
}

impl Outage {
    /// `task` names it in logs and in the metrics' `task` label.
    pub fn new(task: &'static str) -> Self {
        Self { task, failing: Arc::new(Mutex::new(None)) }
    }

    /// An attempt failed. Logs only the first failure of an outage.
    pub fn failed(&self, error: &dyn Display) {
        let labels = TaskLabels { task: self.task };
        metrics().background_failures.get_or_create(&labels).inc();
        let first = {
            let mut failing = self.lock();
            match failing.as_mut() {
                Some(failing) => {
                    failing.attempts += 1;
                    false
                }
                None => {
                    *failing = Some(Failing { since: Instant::now(), attempts: 1 });
                    true
                }
            }
        };
        if first {
            metrics().background_failing.get_or_create(&labels).set(1);
            tracing::error!(task = self.task, %error, "background task failing; retrying quietly until it recovers");
        }
    }

    /// An attempt succeeded. Logs once if it ends an outage.
    pub fn succeeded(&self) {
        let ended = self.lock().take();
        if let Some(Failing { since, attempts }) = ended {
            metrics().background_failing.get_or_create(&TaskLabels { task: self.task }).set(0);
            tracing::info!(
                task = self.task,
                failed_attempts = attempts,
                outage = ?since.elapsed(),
                "background task recovered"
            );
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Failing>> {
        // A poisoned lock only means a panic mid-update of two integers; the state is still usable.
        self.failing.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_counted_once_per_attempt_and_reported_once() {
        let outage = Outage::new("test_outage");
        let clone = outage.clone();
        let failures = || metrics().background_failures.get_or_create(&TaskLabels { task: "test_outage" }).get();
        let failing = || metrics().background_failing.get_or_create(&TaskLabels { task: "test_outage" }).get();
        assert!(!outage.lock().is_some());
        outage.failed(&"connection refused");
        clone.failed(&"connection refused");
        outage.failed(&"connection refused");
        assert!(outage.lock().is_some(), "clones share one outage");
        assert_eq!((failures(), failing()), (3, 1));
        assert_eq!(outage.lock().map(|failing| failing.attempts), Some(3));
        clone.succeeded();
        assert!(!outage.lock().is_some());
        assert_eq!((failures(), failing()), (3, 0));
        outage.succeeded();
        assert_eq!(failures(), 3, "a success without an outage changes nothing");
    }
}
