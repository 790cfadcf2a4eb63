//! Following the event stream: one replica at a time (a lease in the
//! database, renewed while it follows, taken over when it lapses) watches
//! `WatchPartnerChangeEvents` as `service:webhooks` from the cursor it stored
//! and turns each event into a delivery per matching endpoint, storing the
//! cursor after it in the same transaction. A delivery is unique per event and
//! endpoint, so an event read twice (a handover, a reconnect) is delivered once.

use std::{sync::Arc, time::Duration};

use partnerhub_proto::partnerchange::v1::{
    WatchPartnerChangeEventsRequest, partner_change_service_client::PartnerChangeServiceClient,
    watch_partner_change_events_response::Kind,
};
use partnerhub_runtime::{outage::Outage, peers::Peer, time::now};
use sea_orm::DatabaseConnection;
use tokio::{sync::Notify, time::Instant};
use tokio_util::sync::CancellationToken;

use crate::{
    domain::{event_type_name, webhook_body},
    settings::WebhooksSettings,
    store::{self, StreamEvent, Watching},
};

/// The most events stored in one transaction.
const BATCH: usize = 100;
/// How long to wait before following again after the stream broke.
const RETRY_DELAY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct Follower {
    db: DatabaseConnection,
    partner_change: Peer,
    lease: Duration,
    /// This replica, as the lease names it.
    holder: String,
    /// Wakes the dispatcher when deliveries were added.
    wake: Arc<Notify>,
    /// A lost database or partner-change service is reported once, not per retry.
    outage: Outage,
}

#[derive(Debug, thiserror::Error)]
enum FollowError {
    #[error("the event stream failed: {0}")]
    Stream(tonic::Status),
    #[error("the event stream ended")]
    Ended,
    /// The stored cursor is older than the events the log retains.
    #[error("the stored cursor is older than the retained events: {0}")]
    CursorExpired(tonic::Status),
    #[error(transparent)]
    Store(#[from] partnerhub_runtime::db::StoreError),
}

impl Follower {
    pub fn new(db: DatabaseConnection, partner_change: Peer, settings: &WebhooksSettings, wake: Arc<Notify>) -> Self {
        let holder = partnerhub_runtime::ids::new_id("replica");
        Self {
            db,
            partner_change,
            lease: settings.follower_lease,
            holder,
            wake,
            outage: Outage::new("webhook_follower"),
        }
    }

    /// Follows the stream whenever this replica holds the lease, until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        // Each change of role is logged once, not every reconnect.
        let mut waiting_logged = false;
        let mut holding = false;
        // Set when the stored cursor has expired: follow from the oldest retained event.
        let mut from_oldest = false;
        while !shutdown.is_cancelled() {
            let pause = match store::take_follower_lease(&self.db, &self.holder, self.lease).await {
                Ok(Some(cursor)) => {
                    waiting_logged = false;
                    if !holding {
                        tracing::info!(holder = %self.holder, "following the event stream for webhooks");
                        holding = true;
                    }
                    let cursor = if from_oldest { String::new() } else { cursor };
                    from_oldest = false;
                    match self.follow(cursor, &shutdown).await {
                        Ok(()) => Duration::ZERO,
                        // The events between were pruned before this service
                        // saw them (it was away longer than `retention.events`):
                        // they cannot be delivered; everything retained still is.
                        Err(FollowError::CursorExpired(status)) => {
                            tracing::error!(%status, "webhooks fell behind the event log's retention; following from the oldest retained event");
                            from_oldest = true;
                            Duration::ZERO
                        }
                        Err(err) => {
                            self.outage.failed(&err);
                            RETRY_DELAY
                        }
                    }
                }
                Ok(None) => {
                    holding = false;
                    if !waiting_logged {
                        tracing::debug!("another replica follows the event stream");
                        waiting_logged = true;
                    }
                    self.lease / 3
                }
                Err(err) => {
                    self.outage.failed(&err);
                    RETRY_DELAY
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(pause) => {}
            }
        }
        if let Err(err) = store::release_follower_lease(&self.db, &self.holder).await {
            tracing::warn!(error = %err, "cannot release the follower lease; it lapses on its own");
        }
    }

    /// Follows from `cursor` while this replica holds the lease. `Ok` when
    /// the lease was lost or at shutdown.
    async fn follow(&self, cursor: String, shutdown: &CancellationToken) -> Result<(), FollowError> {
        let request = WatchPartnerChangeEventsRequest { after_cursor: cursor, ..Default::default() };
        let mut stream = self
            .partner_change
            .call(request, |channel, request| async move {
                PartnerChangeServiceClient::new(channel).watch_partner_change_events(request).await
            })
            .await
            .map_err(FollowError::Stream)?
            .into_inner();
        self.outage.succeeded();
        let renew_every = self.lease / 3;
        let mut renew_at = Instant::now() + renew_every;
        // The last event of batches no endpoint sees: its cursor is stored
        // with the next batch that has deliveries, the next lease renewal, or
        // at shutdown, not one write per batch. Until then a crash only means
        // reading again events that had nothing to deliver.
        let mut unsaved: Option<StreamEvent> = None;
        loop {
            let message = tokio::select! {
                () = shutdown.cancelled() => {
                    if let Some(last) = unsaved.take() {
                        self.store_cursor(last).await?;
                    }
                    return Ok(());
                }
                () = tokio::time::sleep_until(renew_at) => {
                    let renewed = match unsaved.take() {
                        Some(last) => self.store_cursor(last).await?,
                        None => store::take_follower_lease(&self.db, &self.holder, self.lease).await?.is_some(),
                    };
                    if !renewed {
                        tracing::info!("another replica took over the event stream");
                        return Ok(());
                    }
                    renew_at = Instant::now() + renew_every;
                    continue;
                }
                message = stream.message() => message.map_err(|status| match status.code() {
                    tonic::Code::OutOfRange => FollowError::CursorExpired(status),
                    _ => FollowError::Stream(status),
                })?.ok_or(FollowError::Ended)?,
            };
            let mut events = Vec::new();
            let mut next = Some(message);
            // Whatever else has arrived goes into the same transaction.
            while let Some(message) = next.take() {
                if let Some(Kind::Event(event)) = message.kind {
                    match to_stream_event(event) {
                        Some(event) => events.push(event),
                        None => tracing::error!("an event without its partner change; skipped"),
                    }
                }
                if events.len() < BATCH
                    && let Ok(more) = tokio::time::timeout(Duration::ZERO, stream.message()).await
                {
                    next = more.map_err(FollowError::Stream)?;
                }
            }
            if events.is_empty() {
                continue;
            }
            let watching = store::endpoints_watching(&self.db, &events).await?;
            if watching.is_empty() {
                unsaved = events.pop();
                continue;
            }
            self.add_trace_parents(&mut events).await;
            let Some(added) =
                store::record_events(&self.db, &self.holder, &events, &watching, self.lease, now()).await?
            else {
                tracing::info!("another replica took over the event stream");
                return Ok(());
            };
            unsaved = None;
            renew_at = Instant::now() + renew_every;
            if added > 0 {
                self.wake.notify_one();
            }
        }
    }
}

impl Follower {
    /// Stores `last`'s cursor as the follower's, renewing the lease; false if
    /// another replica holds the lease now.
    async fn store_cursor(&self, last: StreamEvent) -> Result<bool, partnerhub_runtime::db::StoreError> {
        let nobody = Watching::default();
        Ok(store::record_events(&self.db, &self.holder, &[last], &nobody, self.lease, now()).await?.is_some())
    }

    /// Each event's partner change trace, so that its deliveries join it.
    /// Without it (the view not there yet, the database busy) they start traces of their own.
    async fn add_trace_parents(&self, events: &mut [StreamEvent]) {
        let ids: Vec<&str> = events.iter().map(|event| event.partner_change_id.as_str()).collect();
        match store::trace_parents(&self.db, &ids).await {
            Ok(found) => {
                for event in events.iter_mut() {
                    event.trace_parent = found.get(&event.partner_change_id).cloned();
                }
            }
            Err(err) => tracing::debug!(error = %err, "cannot read the partner changes' trace contexts"),
        }
    }
}

fn to_stream_event(event: partnerhub_proto::partnerchange::v1::PartnerChangeEvent) -> Option<StreamEvent> {
    let change = event.partner_change.as_ref()?;
    let body = match webhook_body(&event) {
        Ok(body) => body,
        Err(err) => {
            tracing::error!(error = %err, "cannot write a webhook body; event skipped");
            return None;
        }
    };
    Some(StreamEvent {
        cursor: event.cursor.clone(),
        event_type: event_type_name(event.r#type()),
        partner_change_id: change.partner_change_id.clone(),
        client_id: change.client_id.clone(),
        partner_ids: [change.source_partner_id.clone(), change.destination_partner_id.clone()],
        body,
        trace_parent: None,
    })
}
