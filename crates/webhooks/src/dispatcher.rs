//! Sending deliveries: every replica claims due deliveries (a lease per
//! delivery, so no two replicas send one at once and a dead replica's are
//! taken over when their lease lapses), POSTs each signed, and records the
//! attempt and what follows: delivered, due again on the retry schedule, or
//! failed. A slow or failing endpoint holds at most
//! `max_in_flight_per_endpoint` of the replica's `max_in_flight` slots, so
//! it never delays the others.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use partnerhub_runtime::{outage::Outage, time::now};
use sea_orm::DatabaseConnection;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{
    address::{AddressPolicy, CheckedResolver},
    metrics::{OutcomeLabels, metrics},
    settings::WebhooksSettings,
    signing::sign,
    store::{self, AfterAttempt, AttemptOutcome, Claimed},
};

/// The most of a response body read (then discarded).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone)]
pub struct Dispatcher {
    db: DatabaseConnection,
    settings: WebhooksSettings,
    client: reqwest::Client,
    addresses: AddressPolicy,
    wake: Arc<Notify>,
    slots: Arc<Semaphore>,
    /// Deliveries in flight per endpoint, on this replica.
    in_flight: Arc<Mutex<HashMap<String, usize>>>,
    /// A lost database is reported once, not per claim or attempt: the
    /// deliveries are not lost (an unrecorded attempt's claim lapses and it is sent again).
    outage: Outage,
    /// Delivered attempts, recorded together by [`Dispatcher::record_delivered`].
    delivered: tokio::sync::mpsc::UnboundedSender<Delivered>,
    to_record: Arc<Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Delivered>>>>,
}

/// A delivered attempt, waiting to be recorded.
type Delivered = (Claimed, AttemptOutcome);

/// The most delivered attempts recorded in one transaction.
const RECORD_BATCH: usize = 256;

#[derive(Debug, thiserror::Error)]
#[error("cannot build the webhook HTTP client: {0}")]
pub struct ClientError(#[from] reqwest::Error);

impl Dispatcher {
    pub fn new(db: DatabaseConnection, settings: WebhooksSettings, wake: Arc<Notify>) -> Result<Self, ClientError> {
        let addresses =
            AddressPolicy { allow_http: settings.allow_http, allow_private_networks: settings.allow_private_networks };
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .https_only(!settings.allow_http)
            .timeout(settings.request_timeout)
            .connect_timeout(settings.request_timeout)
            .dns_resolver(Arc::new(CheckedResolver(addresses)))
            .user_agent(concat!("partnerhub-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let slots = Arc::new(Semaphore::new(settings.max_in_flight));
        let (delivered, to_record) = tokio::sync::mpsc::unbounded_channel();
        Ok(Self {
            db,
            settings,
            client,
            addresses,
            wake,
            slots,
            in_flight: Arc::default(),
            outage: Outage::new("webhook_dispatcher"),
            delivered,
            to_record: Arc::new(Mutex::new(Some(to_record))),
        })
    }

    /// Claims and sends due deliveries until `shutdown`; woken by new
    /// deliveries and freed slots, and otherwise every poll interval.
    pub async fn run(self, shutdown: CancellationToken) {
        let to_record = self.to_record.lock().unwrap_or_else(PoisonError::into_inner).take();
        let recorder =
            to_record.map(|to_record| tokio::spawn(record_delivered(self.db.clone(), to_record, self.outage.clone())));
        self.dispatch(shutdown).await;
        // What was delivered before the shutdown is still recorded.
        drop(self);
        if let Some(recorder) = recorder {
            let _ = recorder.await;
        }
    }

    async fn dispatch(&self, shutdown: CancellationToken) {
        let mut depth_checked: Option<Instant> = None;
        while !shutdown.is_cancelled() {
            // Wakes that come while claiming are kept for the next round.
            let woken = self.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            match self.claim_and_send(&shutdown).await {
                Ok(()) => self.outage.succeeded(),
                Err(err) => self.outage.failed(&err),
            }
            if depth_checked.is_none_or(|at| at.elapsed() >= Duration::from_secs(5)) {
                depth_checked = Some(Instant::now());
                self.report_queue().await;
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = woken => {}
                () = tokio::time::sleep(self.settings.poll_interval) => {}
            }
        }
    }

    async fn claim_and_send(&self, shutdown: &CancellationToken) -> Result<(), partnerhub_runtime::db::StoreError> {
        let free = self.slots.available_permits();
        // Claim in batches: while many POSTs are in flight, wait until a
        // quarter of the slots are free (each finishing POST wakes this loop)
        // rather than paying a claim per delivery.
        let in_flight = self.settings.max_in_flight - free;
        if free == 0 || (in_flight > 0 && free < self.settings.max_in_flight.div_ceil(4)) {
            return Ok(());
        }
        let cap = self.settings.max_in_flight_per_endpoint;
        let in_flight = self.in_flight.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let busy: Vec<String> =
            in_flight.iter().filter(|(_, count)| **count >= cap).map(|(endpoint, _)| endpoint.clone()).collect();
        let room = |endpoint: &str| cap.saturating_sub(in_flight.get(endpoint).copied().unwrap_or(0));
        // A POST ends within the request timeout; the rest is for recording it.
        let lease = self.settings.request_timeout * 2;
        let claimed = store::claim_due(&self.db, free as u64, &busy, room, lease, now()).await?;
        let mut over_cap = Vec::new();
        for claim in claimed {
            let endpoint_id = claim.endpoint.webhook_endpoint_id.clone();
            let admitted = {
                let mut in_flight = self.in_flight.lock().unwrap_or_else(PoisonError::into_inner);
                let count = in_flight.entry(endpoint_id.clone()).or_default();
                if *count < self.settings.max_in_flight_per_endpoint {
                    *count += 1;
                    true
                } else {
                    false
                }
            };
            let permit = if admitted { self.slots.clone().try_acquire_owned().ok() } else { None };
            let Some(permit) = permit else {
                if admitted {
                    self.done_with(&endpoint_id);
                }
                over_cap.push(claim.delivery.webhook_delivery_id);
                continue;
            };
            let this = self.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                // At shutdown a POST in flight is given up: its claim lapses
                // and the delivery is sent again (by this process restarted, or another).
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = this.deliver(claim) => {}
                }
                this.done_with(&endpoint_id);
                drop(permit);
                this.wake.notify_one();
            });
        }
        if !over_cap.is_empty() {
            store::release_claims(&self.db, &over_cap).await?;
        }
        Ok(())
    }

    fn done_with(&self, endpoint_id: &str) {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = in_flight.get_mut(endpoint_id) {
            *count -= 1;
            if *count == 0 {
                in_flight.remove(endpoint_id);
            }
        }
    }

    /// One attempt of a claimed delivery, recorded.
    async fn deliver(&self, claimed: Claimed) {
        let span = tracing::info_span!(
            "webhook delivery",
            webhook_delivery_id = %claimed.delivery.webhook_delivery_id,
            webhook_endpoint_id = %claimed.endpoint.webhook_endpoint_id,
            partner_change_id = %claimed.delivery.partner_change_id,
            attempt = claimed.delivery.attempt_count + 1,
        );
        partnerhub_runtime::rpc::continue_trace(&span, claimed.delivery.trace_parent.as_deref());
        self.deliver_in(claimed).instrument(span).await;
    }

    async fn deliver_in(&self, claimed: Claimed) {
        let outcome = self.attempt(&claimed).await;
        metrics().attempt_seconds.observe(outcome.duration.as_secs_f64());
        if outcome.delivered() {
            tracing::debug!(status = ?outcome.http_status, "webhook delivered");
            // Recorded with others in one transaction; if the recorder is gone
            // (shutdown), the claim lapses and the delivery is sent again.
            let _ = self.delivered.send((claimed, outcome));
            return;
        }
        let attempts = u32::try_from(claimed.delivery.attempt_count).unwrap_or(0) + 1;
        let retry_in = self.settings.retry_schedule.delay_after(attempts).map(jitter);
        let recorded =
            store::record_failed_attempt(&self.db, &claimed, &outcome, retry_in, self.settings.disable_after).await;
        let metrics = metrics();
        let outcome_label = match &recorded {
            Ok(AfterAttempt::Retry(_)) => "retry",
            Ok(AfterAttempt::Failed) => "failed",
            Ok(AfterAttempt::EndpointDisabled) => "disabled",
            Ok(AfterAttempt::Deleted) => "deleted",
            // The claim lapses and another attempt follows: nothing is lost.
            Err(err) => {
                self.outage.failed(&err);
                return;
            }
        };
        metrics.attempts.get_or_create(&OutcomeLabels { outcome: outcome_label }).inc();
        tracing::info!(status = ?outcome.http_status, error = %outcome.error, outcome = outcome_label, "webhook attempt");
    }

    async fn attempt(&self, claimed: &Claimed) -> AttemptOutcome {
        let (endpoint, delivery) = (&claimed.endpoint, &claimed.delivery);
        let time = now();
        let started = Instant::now();
        let finish = |http_status: Option<u16>, error: String| AttemptOutcome {
            time,
            http_status,
            error,
            duration: started.elapsed(),
        };
        // Names are checked by the resolver the client connects with; addresses here.
        if let Err(refused) = self.addresses.check_form(&endpoint.url) {
            return finish(None, format!("url {refused}"));
        }
        let mut secrets = vec![endpoint.secret.as_str()];
        if let (Some(previous), Some(until)) = (&endpoint.previous_secret, endpoint.previous_secret_expire_time)
            && until > time
        {
            secrets.push(previous);
        }
        let timestamp = time.timestamp();
        let signature = sign(&secrets, &delivery.webhook_delivery_id, timestamp, delivery.body.as_bytes());
        let request = self
            .client
            .post(&endpoint.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", &delivery.webhook_delivery_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(delivery.body.clone());
        let mut response = match request.send().await {
            Ok(response) => response,
            Err(err) => return finish(None, describe(&err)),
        };
        let status = response.status().as_u16();
        // Read a little of the answer, so the connection can be reused; none of it is kept.
        let mut read = 0;
        while read < MAX_RESPONSE_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => read += chunk.len(),
                Ok(None) | Err(_) => break,
            }
        }
        finish(Some(status), String::new())
    }

    async fn report_queue(&self) {
        match store::queue_depth(&self.db, now()).await {
            Ok((depth, oldest)) => {
                let metrics = metrics();
                metrics.queue_depth.set(i64::try_from(depth).unwrap_or(i64::MAX));
                metrics
                    .oldest_due_seconds
                    .set(oldest.map_or(0, |age| i64::try_from(age.as_secs()).unwrap_or(i64::MAX)));
            }
            Err(err) => tracing::debug!(error = %err, "cannot measure the webhook queue"),
        }
    }
}

/// Records delivered attempts as they come, many in one transaction, until
/// every sender is gone. A batch that cannot be recorded is left to its
/// claims, which lapse: those deliveries are sent again (at least once).
async fn record_delivered(
    db: DatabaseConnection,
    mut to_record: tokio::sync::mpsc::UnboundedReceiver<Delivered>,
    outage: Outage,
) {
    let mut batch = Vec::with_capacity(RECORD_BATCH);
    while to_record.recv_many(&mut batch, RECORD_BATCH).await > 0 {
        match store::record_delivered(&db, &batch).await {
            Ok(()) => {
                let metrics = metrics();
                let delivered = metrics.attempts.get_or_create(&OutcomeLabels { outcome: "delivered" });
                for (claimed, _) in &batch {
                    let age = (now() - claimed.delivery.create_time).to_std().unwrap_or_default();
                    metrics.delivery_delay_seconds.observe(age.as_secs_f64());
                    delivered.inc();
                }
            }
            Err(err) => outage.failed(&err),
        }
        batch.clear();
    }
}

/// `delay` give or take up to a tenth, so that retries of many deliveries spread out.
fn jitter(delay: Duration) -> Duration {
    let mut byte = [0u8; 1];
    if getrandom::fill(&mut byte).is_err() {
        return delay;
    }
    let tenth = delay / 10;
    // byte / 255 of two tenths, minus one tenth: -10 % ..= +10 %.
    delay - tenth + tenth * 2 * u32::from(byte[0]) / 255
}

/// Why a request got no answer, with its causes.
fn describe(err: &reqwest::Error) -> String {
    if err.is_timeout() { "timed out".to_owned() } else { partnerhub_runtime::error::with_causes(err) }
}
