//! The event stream: every stored event after a cursor, then live events as
//! they commit, with no gap and no duplicate at the seam, on every replica.
//!
//! One **tailer** per process reads the event log after the last position it
//! has read and publishes each event on a broadcast channel. Positions become
//! visible in order (see `store`), so reading "after my last position" never
//! skips an event. The tailer wakes when this process commits events, when
//! PostgreSQL notifies a commit by any replica (`LISTEN`), and every
//! `stream.poll_interval` in any case, so a missed notification only delays.
//!
//! Each **subscriber** first subscribes to the broadcast, then replays the log
//! from its cursor, then takes live events, skipping any at or below the last
//! position it has seen. Whatever commits after the replay's last read is
//! published after the subscription began, so nothing falls between the two.
//! A subscriber that lags on the broadcast replays from the log again; one
//! whose client stops reading (its buffer, bounded in events and in bytes,
//! stays full for `stall_timeout`) is ended with RESOURCE_EXHAUSTED and the
//! cursor to resume from. A slow
//! subscriber never blocks the tailer, the writers or other subscribers.
//!
//! Subscribers yield domain items ([`StreamItem`]); `grpc` maps them to the wire.

use std::{
    pin::Pin,
    sync::{Arc, OnceLock},
};

use partnerhub_proto::encoded::EncodedMessage;
use partnerhub_runtime::{
    error::FieldViolation,
    error::{ErrorReason, Reason, status},
    outage::Outage,
    pagination::TokenSeal,
    time::now,
    validate::Parsed,
};
use sea_orm::DatabaseConnection;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, TryAcquireError, broadcast, mpsc};
use tokio_stream::{Stream, StreamExt, wrappers::ReceiverStream};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};
use tracing::Instrument as _;

use crate::{
    domain::Event,
    error::PartnerChangeReason,
    metrics::metrics,
    settings::StreamSettings,
    store::{self, EVENTS_CHANNEL, EventScope},
};

/// A committed event as the tailer publishes it, with its cursor for every
/// scope that sees it (all events, its client's, and each of its two
/// partners'), and for each scope the slot its wire form is kept in.
#[derive(Debug)]
struct LiveEvent {
    event: Arc<Event>,
    scopes: [(EventScope, String, Encoded); 4],
}

impl LiveEvent {
    /// The event's cursor and wire slot for subscribers of `scope`, if they see it at all.
    fn for_scope(&self, scope: &EventScope) -> Option<(&str, &Encoded)> {
        self.scopes.iter().find(|(seen_by, ..)| seen_by == scope).map(|(_, cursor, encoded)| (cursor.as_str(), encoded))
    }
}

/// An item's wire form, made by the gRPC layer of the first subscriber to send
/// it and shared with every other subscriber of the same scope: an event going
/// to a thousand subscribers is converted and encoded once, not a thousand
/// times. Empty until then; a replayed event has a slot of its own.
pub type Encoded = Arc<OnceLock<EncodedMessage>>;

/// The stream a `WatchPartnerChangeEvents` call returns.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<StreamItem, Status>> + Send>>;

/// What a subscriber is sent; `grpc` maps it to the wire.
#[derive(Debug, Clone)]
pub enum StreamItem {
    /// An event in the subscriber's scope, with the cursor to resume after
    /// it, and the slot of its wire form.
    Event { cursor: String, event: Arc<Event>, encoded: Encoded },
    /// Nothing happened for a while (or the stream starts from now); the
    /// stream is alive, and `cursor` resumes from here.
    Heartbeat { time: chrono::DateTime<chrono::Utc>, cursor: String },
}

impl StreamItem {
    /// About what the item takes encoded on the wire (each text field with its
    /// tag and length, a fixed allowance for numbers and times): what a
    /// subscriber's byte budget counts. Cheap, and exact enough to bound memory.
    pub(crate) fn approximate_bytes(&self) -> usize {
        const FIELD: usize = 2;
        let text = |value: &str| value.len() + FIELD;
        match self {
            StreamItem::Heartbeat { cursor, .. } => text(cursor) + 16,
            StreamItem::Event { cursor, event, .. } => {
                let change = &event.snapshot;
                let texts = [
                    cursor.as_str(),
                    &event.actor,
                    &event.reason,
                    &change.partner_change_id,
                    &change.request_id,
                    &change.waba_id,
                    &change.client_id,
                    &change.source_partner_id,
                    &change.destination_partner_id,
                    &change.accepted_terms_version,
                    &change.failure_reason,
                    change.trace_parent.as_deref().unwrap_or_default(),
                ];
                let numbers = [&change.phone_numbers, &change.grant_phone_numbers, &change.skipped_grant_phone_numbers];
                texts.iter().map(|value| text(value)).sum::<usize>()
                    + numbers.iter().flat_map(|list| list.iter()).map(|number| text(number)).sum::<usize>()
                    + 96
            }
        }
    }
}

/// An item in a subscriber's buffer holds its bytes of the subscriber's
/// budget until the gRPC layer takes it (to encode and send it).
struct Buffered {
    item: Result<StreamItem, Status>,
    _bytes: Budgeted,
}

/// Bytes taken from a subscriber's budget; given back (and taken off the
/// buffered-bytes gauge) when dropped.
struct Budgeted {
    _permit: OwnedSemaphorePermit,
    bytes: i64,
}

impl Drop for Budgeted {
    fn drop(&mut self) {
        metrics().stream_buffered_bytes.dec_by(self.bytes);
    }
}

/// How many events one catch-up read takes from the log.
const CATCH_UP_BATCH: u64 = 256;

/// The process's fan-out point between the tailer and the subscribers.
#[derive(Debug, Clone)]
pub struct EventHub {
    /// Every committed event, in position order, as the tailer reads it. Owned
    /// by the hub; the tailer is the only sender.
    published: broadcast::Sender<Arc<LiveEvent>>,
    /// Rung by this process's writers after each commit that appends events.
    committed: Arc<Notify>,
    /// Seals the cursors it issues.
    cursors: TokenSeal,
}

impl EventHub {
    /// `capacity`: events a subscriber may fall behind the tailer before it
    /// must catch up from the log. `cursors` seals the cursors of every replica.
    pub fn new(capacity: usize, cursors: TokenSeal) -> Self {
        let (published, _) = broadcast::channel(capacity.max(16));
        Self { published, committed: Arc::new(Notify::new()), cursors }
    }

    /// The cursor of `position` for subscribers of `scope`.
    pub fn cursor(&self, position: i64, scope: &EventScope) -> String {
        self.cursors.seal(&position.to_string(), &cursor_scope(scope))
    }

    /// `event` with its cursor for each scope that sees it: sealed once here,
    /// not once per subscriber (a thousand subscribers would seal it a
    /// thousand times).
    fn live(&self, event: Event) -> LiveEvent {
        let change = &event.snapshot;
        let scopes = [
            EventScope::All,
            EventScope::Client(change.client_id.clone()),
            EventScope::Partner(change.source_partner_id.clone()),
            EventScope::Partner(change.destination_partner_id.clone()),
        ];
        let scopes = scopes.map(|scope| {
            let cursor = self.cursor(event.position, &scope);
            (scope, cursor, Encoded::default())
        });
        LiveEvent { event: Arc::new(event), scopes }
    }

    /// The position a cursor stands for, if it was issued for `scope`: a
    /// sealed cursor, or an unsealed one of the first releases (subscribers
    /// store cursors durably; one names only a position in the caller's own
    /// scope, so accepting them gives nobody more than a replay from 0 would).
    pub fn parse_cursor(&self, cursor: &str, scope: &EventScope) -> Parsed<i64> {
        let field = "after_cursor";
        let scope = cursor_scope(scope);
        let key = self
            .cursors
            .open(field, cursor, &scope)
            .or_else(|sealed| TokenSeal::open_legacy(field, cursor, &scope).map_err(|_| sealed))?;
        match key {
            None => Ok(0),
            Some(key) => key.parse().map_err(|_| FieldViolation::new(field, "is not a valid cursor")),
        }
    }

    /// For writers that hold on to it: ring after a commit that appended events.
    pub fn committed(&self) -> Arc<Notify> {
        self.committed.clone()
    }

    /// Wakes the tailer: events were just committed.
    pub fn notify_committed(&self) {
        self.committed.notify_one();
    }
}

/// Reads the log and publishes new events until `shutdown`. With a PostgreSQL
/// `database_url`, also listens for other replicas' commits.
pub async fn run_tailer(
    db: DatabaseConnection,
    hub: EventHub,
    settings: StreamSettings,
    database_url: Option<String>,
    shutdown: CancellationToken,
) {
    if let Some(url) = database_url {
        tokio::spawn(partnerhub_runtime::db::listen_for_notifications(
            url,
            EVENTS_CHANNEL,
            hub.committed.clone(),
            shutdown.clone(),
        ));
    }
    let outage = Outage::new("event_tailer");
    let mut last = loop {
        match store::last_position(&db).await {
            Ok(last) => break last,
            Err(err) => {
                outage.failed(&err);
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(settings.poll_interval) => {}
                }
            }
        }
    };
    loop {
        loop {
            let batch = match store::events_after(&db, last, &EventScope::All, CATCH_UP_BATCH).await {
                Ok(batch) => batch,
                Err(err) => {
                    outage.failed(&err);
                    break;
                }
            };
            outage.succeeded();
            let full = batch.len() as u64 == CATCH_UP_BATCH;
            for event in batch {
                last = event.position;
                // No subscriber is no error (the log keeps everything), and
                // then there is nobody to seal cursors for.
                if hub.published.receiver_count() > 0 {
                    let _ = hub.published.send(Arc::new(hub.live(event)));
                }
            }
            if !full {
                break;
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = hub.committed.notified() => {}
            () = tokio::time::sleep(settings.poll_interval) => {}
        }
    }
}

/// What a subscriber watches, and where its cursors are valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub scope: EventScope,
    /// The last position the subscriber has seen (0: from the oldest retained event).
    pub after: i64,
    /// Send a heartbeat first, so that the subscriber holds a cursor before
    /// any event comes (a stream that starts from now).
    pub announce_start: bool,
}

/// What a cursor is bound to. Spelled out (not a `Debug` form, which a Rust
/// rename would change), in exactly the form the first releases wrote, so that
/// cursors subscribers stored then still work.
fn cursor_scope(scope: &EventScope) -> String {
    match scope {
        EventScope::All => "events:All".to_owned(),
        EventScope::Client(id) => format!("events:Client(\"{id}\")"),
        EventScope::Partner(id) => format!("events:Partner(\"{id}\")"),
    }
}

/// Starts a subscriber and returns its stream. The subscriber lives until its
/// client goes away, it is too slow, or `shutdown`.
pub fn watch(
    db: DatabaseConnection,
    hub: &EventHub,
    settings: StreamSettings,
    subscription: Subscription,
    shutdown: CancellationToken,
) -> EventStream {
    let (events, events_out) = mpsc::channel(settings.subscriber_buffer);
    let budget = Arc::new(Semaphore::new(settings.subscriber_buffer_bytes));
    // Always room for the one status that ends the stream, however full the buffer is.
    let (end, end_out) = mpsc::channel(1);
    // Subscribe before the replay reads the log: see the module documentation.
    let live = hub.published.subscribe();
    let hub = hub.clone();
    // The subscriber's lines belong to the call that started it (its trace ID).
    let span = tracing::Span::current();
    tokio::spawn(
        async move {
            let mut subscriber = Subscriber { db, hub, settings, subscription, events, budget, last_delivered: None };
            metrics().stream_subscribers.inc();
            let ended = subscriber.run(live, shutdown).await;
            metrics().stream_subscribers.dec();
            if let Some(status) = ended {
                let _ = end.send(Err(status)).await;
            }
        }
        .instrument(span),
    );
    // Taking an item out gives its bytes back to the budget.
    let events_out = ReceiverStream::new(events_out).map(|buffered: Buffered| buffered.item);
    Box::pin(events_out.chain(ReceiverStream::new(end_out)))
}

struct Subscriber {
    db: DatabaseConnection,
    /// Issues the cursors of the events it delivers.
    hub: EventHub,
    settings: StreamSettings,
    subscription: Subscription,
    events: mpsc::Sender<Buffered>,
    /// The bytes the client's buffer may hold (`subscriber_buffer_bytes`).
    budget: Arc<Semaphore>,
    /// The position of the last event handed to the client's buffer.
    last_delivered: Option<i64>,
}

/// Why delivery stopped.
enum Stop {
    /// The client went away: nothing more to say.
    Gone,
    /// End the stream with this status.
    End(Status),
}

impl Subscriber {
    /// Replays, then follows the live events; returns the status that ends the
    /// stream, or `None` when the client went away.
    ///
    /// The live path runs once per event per subscriber (a thousand
    /// subscribers: a thousand times), so it arms no timer per event: the
    /// cancellation is registered once, and the heartbeat timer is only moved
    /// when it fires (to the interval after the last message, if one went out since).
    async fn run(
        &mut self,
        mut live: broadcast::Receiver<Arc<LiveEvent>>,
        shutdown: CancellationToken,
    ) -> Option<Status> {
        let mut last = self.subscription.after;
        if self.subscription.announce_start {
            match self.heartbeat(last).await {
                Ok(()) => {}
                Err(Stop::Gone) => return None,
                Err(Stop::End(status)) => return Some(status),
            }
        }
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);
        let every = self.settings.heartbeat_interval;
        'catch_up: loop {
            match self.replay(&mut last).await {
                Ok(()) => {}
                Err(Stop::Gone) => return None,
                Err(Stop::End(status)) => return Some(status),
            }
            let mut last_sent = tokio::time::Instant::now();
            let heartbeat = tokio::time::sleep_until(last_sent + every);
            tokio::pin!(heartbeat);
            loop {
                let outcome = tokio::select! {
                    biased;
                    () = &mut cancelled => return Some(self.ending(Code::Unavailable, ErrorReason::ServerShuttingDown, "the server is shutting down")),
                    received = live.recv() => match received {
                        Ok(live) if live.event.position <= last => Ok(()),
                        Ok(live) => {
                            last = live.event.position;
                            match live.for_scope(&self.subscription.scope) {
                                Some((cursor, encoded)) => {
                                    last_sent = tokio::time::Instant::now();
                                    let delivered = self.deliver(live.event.clone(), cursor.to_owned(), encoded.clone()).await;
                                    let lag = (now() - live.event.time).to_std().unwrap_or_default();
                                    metrics().stream_delivery_lag_seconds.observe(lag.as_secs_f64());
                                    delivered
                                }
                                None => Ok(()),
                            }
                        }
                        // Fell behind the broadcast: the log still has everything.
                        Err(broadcast::error::RecvError::Lagged(_)) => continue 'catch_up,
                        Err(broadcast::error::RecvError::Closed) => {
                            return Some(self.ending(Code::Unavailable, ErrorReason::ServerShuttingDown, "the event tailer stopped"));
                        }
                    },
                    () = &mut heartbeat => {
                        let due = last_sent + every;
                        if tokio::time::Instant::now() < due {
                            // Something went out since: idle only from then on.
                            heartbeat.as_mut().reset(due);
                            Ok(())
                        } else {
                            last_sent = tokio::time::Instant::now();
                            heartbeat.as_mut().reset(last_sent + every);
                            self.heartbeat(last).await
                        }
                    }
                };
                match outcome {
                    Ok(()) => {}
                    Err(Stop::Gone) => return None,
                    Err(Stop::End(status)) => return Some(status),
                }
            }
        }
    }

    /// Delivers every stored event in scope after `last`, advancing it. A
    /// subscriber past whom the log was pruned is ended with OUT_OF_RANGE.
    async fn replay(&mut self, last: &mut i64) -> Result<(), Stop> {
        loop {
            let read_after = *last;
            let batch = store::events_after(&self.db, *last, &self.subscription.scope, CATCH_UP_BATCH).await.map_err(
                |err| {
                    tracing::warn!(error = %err, "cannot replay the event log");
                    Stop::End(self.ending(
                        Code::Unavailable,
                        ErrorReason::Unavailable,
                        "the event log cannot be read right now",
                    ))
                },
            )?;
            // Checked after the read: pruning only ever takes a prefix, so if
            // nothing after `read_after` is gone now, the read lost nothing.
            if read_after > 0 {
                self.check_retained(read_after).await?;
            }
            let full = batch.len() as u64 == CATCH_UP_BATCH;
            for event in batch {
                *last = event.position;
                let cursor = self.hub.cursor(event.position, &self.subscription.scope);
                self.deliver(Arc::new(event), cursor, Encoded::default()).await?;
            }
            if !full {
                return Ok(());
            }
        }
    }

    /// Ends the stream if events after `after` have been pruned (see
    /// `partnerhub_runtime::retention`): the cursor is older than the history.
    async fn check_retained(&self, after: i64) -> Result<(), Stop> {
        let oldest = store::oldest_position(&self.db).await.map_err(|err| {
            tracing::warn!(error = %err, "cannot read the event log's retained range");
            Stop::End(self.ending(
                Code::Unavailable,
                ErrorReason::Unavailable,
                "the event log cannot be read right now",
            ))
        })?;
        match oldest {
            Some(oldest) if oldest > after + 1 => {
                tracing::info!(after, oldest, "a subscriber's cursor is older than the retained events");
                Err(Stop::End(status(
                    Code::OutOfRange,
                    PartnerChangeReason::CursorExpired,
                    "the events after this cursor are older than the retained history (retention.events) and \
                     have been pruned; start over with an empty after_cursor (from the oldest retained event) \
                     or with start_from START_FROM_NOW",
                    [("oldestRetainedPosition", oldest.to_string().as_str())],
                )))
            }
            _ => Ok(()),
        }
    }

    /// A heartbeat whose cursor resumes after `last` (every event in scope up
    /// to it has been handed to the client's buffer before it).
    async fn heartbeat(&self, last: i64) -> Result<(), Stop> {
        let cursor = self.hub.cursor(last, &self.subscription.scope);
        self.send(StreamItem::Heartbeat { time: now(), cursor }).await
    }

    async fn deliver(&mut self, event: Arc<Event>, cursor: String, encoded: Encoded) -> Result<(), Stop> {
        let position = event.position;
        let item = StreamItem::Event { cursor, event, encoded };
        self.send(item).await?;
        self.last_delivered = Some(position);
        Ok(())
    }

    /// Hands `item` to the client's buffer once the buffer has room for it,
    /// in events and in bytes; a client that leaves it full for
    /// `stall_timeout` is too slow. With room (the usual case) no timer is armed.
    async fn send(&self, item: StreamItem) -> Result<(), Stop> {
        // A single item bigger than the whole budget waits for all of it.
        let bytes = item.approximate_bytes().min(self.settings.subscriber_buffer_bytes);
        let permits = u32::try_from(bytes).unwrap_or(u32::MAX);
        let deadline = tokio::time::Instant::now() + self.settings.stall_timeout;
        let permit = match self.budget.clone().try_acquire_many_owned(permits) {
            Ok(permit) => permit,
            Err(TryAcquireError::Closed) => return Err(Stop::Gone),
            Err(TryAcquireError::NoPermits) => {
                match tokio::time::timeout_at(deadline, self.budget.clone().acquire_many_owned(permits)).await {
                    Ok(Ok(permit)) => permit,
                    // The budget is never closed; were it, nobody would be reading.
                    Ok(Err(_)) => return Err(Stop::Gone),
                    Err(_) => return Err(self.too_slow()),
                }
            }
        };
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        metrics().stream_buffered_bytes.inc_by(bytes);
        let buffered = Buffered { item: Ok(item), _bytes: Budgeted { _permit: permit, bytes } };
        let buffered = match self.events.try_send(buffered) {
            Ok(()) => return Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(Stop::Gone),
            Err(mpsc::error::TrySendError::Full(buffered)) => buffered,
        };
        match self.events.send_timeout(buffered, deadline.saturating_duration_since(tokio::time::Instant::now())).await
        {
            Ok(()) => Ok(()),
            Err(mpsc::error::SendTimeoutError::Closed(_)) => Err(Stop::Gone),
            Err(mpsc::error::SendTimeoutError::Timeout(_)) => Err(self.too_slow()),
        }
    }

    fn too_slow(&self) -> Stop {
        metrics().stream_subscribers_ended_too_slow.inc();
        Stop::End(self.ending(
            Code::ResourceExhausted,
            PartnerChangeReason::SubscriberTooSlow,
            "this subscriber fell too far behind",
        ))
    }

    /// A status that ends the stream and says where to resume.
    fn ending(&self, code: Code, reason: impl Reason, what: &str) -> Status {
        let resume = self.hub.cursor(self.last_delivered.unwrap_or(self.subscription.after), &self.subscription.scope);
        status(
            code,
            reason,
            format!("{what}; resume with after_cursor {resume}"),
            [("resumeAfterCursor", resume.as_str())],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cursors as the first releases issued them (kept verbatim): they must
    /// keep working, whatever the Rust types are called now.
    fn hub(key: u8) -> EventHub {
        EventHub::new(16, TokenSeal::derived_from(&[key; 32]))
    }

    #[test]
    fn cursors_issued_by_earlier_releases_still_resume() {
        let hub = hub(1);
        let partner = EventScope::Partner("partner-0192f1d2-4a1b-7c2d-8e3f-4a5b6c7d8e9f".to_owned());
        assert_eq!(hub.parse_cursor("MWFhZjRkMGY3NzU4YWY4OGY0Mg", &partner).unwrap(), 42);
        assert_eq!(hub.parse_cursor("MTQwMmU3OGUyY2JmN2VjODE3", &EventScope::All).unwrap(), 7);
        assert_eq!(
            hub.parse_cursor("MTgwNDA1YTlmNzkzNWMyZDcz", &EventScope::Client("client-1".to_owned())).unwrap(),
            3
        );
        // Bound to its scope: another subscriber's scope refuses it.
        assert!(hub.parse_cursor("MWFhZjRkMGY3NzU4YWY4OGY0Mg", &EventScope::Partner("partner-2".to_owned())).is_err());
    }

    #[test]
    fn todays_cursors_are_sealed_for_their_scope_and_deployment() {
        let partner = EventScope::Partner("partner-1".to_owned());
        let cursor = hub(1).cursor(42, &partner);
        assert_ne!(cursor, "MWFhZjRkMGY3NzU4YWY4OGY0Mg", "no longer the unkeyed form");
        assert_eq!(hub(1).parse_cursor(&cursor, &partner).unwrap(), 42, "any replica of the deployment opens it");
        assert!(hub(1).parse_cursor(&cursor, &EventScope::Partner("partner-2".to_owned())).is_err());
        assert!(hub(2).parse_cursor(&cursor, &partner).is_err(), "another key's cursor is refused");
        assert_eq!(hub(1).parse_cursor("", &partner).unwrap(), 0);
    }
}
