//! `CheckPermission` from memory.
//!
//! Each replica holds every grant in memory: a snapshot read at start, then
//! kept current by following the permission log (positions become visible in
//! order, so "after my last position" misses nothing). It follows the log when
//! this replica changes permissions (before that call returns, so this replica
//! answers the new truth at once; a change whose entries are the next in the
//! log is applied as logged, without a read), when PostgreSQL notifies a
//! change by any replica, and every `poll_interval` regardless.
//!
//! The cache answers only while it is trusted: its last successful read of the
//! log started less than `trust_window` ago. Past that (the database is
//! unreachable, say) a check goes to the database instead, and fails closed if
//! that fails too. So no replica ever answers from data older than the window.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, RwLock},
};

use partnerhub_runtime::outage::Outage;
use sea_orm::{DatabaseConnection, DbErr};
use tokio::{sync::Notify, time::Instant};
use tokio_util::sync::CancellationToken;

use crate::{domain::Logged, metrics::metrics, settings::PermissionsSettings, store};

/// Every grant of the deployment, as of `position` in the permission log.
#[derive(Debug, Default)]
struct Grants {
    /// Partner ID → the numbers it may manage.
    by_partner: HashMap<String, HashSet<String>>,
    /// Partner ID → the numbers a migration is taking from it (denied even
    /// where a grant is left, until the migration's revoke has run). Read
    /// afresh on every sync.
    migrating: HashMap<String, HashSet<String>>,
    position: i64,
    /// Whether the snapshot has been read (after that, the log is followed).
    loaded: bool,
    /// When the last successful sync started; `None` while the cache must not
    /// answer (before the first sync, and from a local change until the next).
    synced_at: Option<Instant>,
}

impl Grants {
    /// Applies one log entry: `partner_id` may manage `number` from now on, or not.
    /// `delay`: how long after its commit the entry reached this replica's answers.
    fn apply(&mut self, partner_id: String, number: String, allowed: bool, delay: chrono::TimeDelta) {
        metrics().cache_invalidation_seconds.observe(delay.to_std().unwrap_or_default().as_secs_f64());
        let numbers = self.by_partner.entry(partner_id).or_default();
        if allowed {
            numbers.insert(number);
        } else {
            numbers.remove(&number);
        }
    }
}

/// Shared by the gRPC handlers (reads) and the follower task (writes).
#[derive(Debug)]
pub struct PermissionCache {
    db: DatabaseConnection,
    settings: PermissionsSettings,
    /// A std lock: held only for a lookup or for applying a batch, never across `.await`.
    grants: RwLock<Grants>,
    /// One sync at a time, so batches are applied in order.
    syncing: tokio::sync::Mutex<()>,
    /// Rung on a PostgreSQL notification of a change.
    changed: Arc<Notify>,
}

/// A cache miss that is no answer: the cache cannot be trusted right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Untrusted;

const SYNC_BATCH: u64 = 10_000;

/// After a notification, the follower reads the log no sooner than this after
/// its last read began: under load every commit notifies, and one read then
/// serves the notifications of several. Another replica's change reaches this
/// one's answers at most this much later; this replica's own changes are in
/// its answers before their calls return, whatever the spacing.
const NOTIFIED_SYNC_SPACING: std::time::Duration = std::time::Duration::from_millis(10);

impl PermissionCache {
    pub fn new(db: DatabaseConnection, settings: PermissionsSettings) -> Arc<Self> {
        Arc::new(Self {
            db,
            settings,
            grants: RwLock::new(Grants::default()),
            syncing: tokio::sync::Mutex::new(()),
            changed: Arc::new(Notify::new()),
        })
    }

    /// Whether `partner_id` may manage `number`, if the cache is trusted.
    pub fn check(&self, partner_id: &str, number: &str) -> Result<bool, Untrusted> {
        let grants = self.grants.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        match grants.synced_at {
            Some(synced_at) if synced_at.elapsed() < self.settings.cache_trust_window => {}
            _ => return Err(Untrusted),
        }
        let granted = grants.by_partner.get(partner_id).is_some_and(|numbers| numbers.contains(number));
        Ok(granted && !grants.migrating.get(partner_id).is_some_and(|numbers| numbers.contains(number)))
    }

    /// Brings the cache up to the log's current end: the first time from a
    /// snapshot, then from the log.
    pub async fn sync(&self) -> Result<(), DbErr> {
        let _one_at_a_time = self.syncing.lock().await;
        self.sync_now().await
    }

    /// [`Self::sync`], once the caller holds `syncing`.
    async fn sync_now(&self) -> Result<(), DbErr> {
        let started = Instant::now();
        // Read after `started`: a migration that began before it is seen, so
        // the trust window bounds how late a replica learns of one too.
        let (loaded, mut after) = {
            let grants = self.grants.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            (grants.loaded, grants.position)
        };
        if !loaded {
            let migrating = store::migrating_numbers(&self.db, None).await?;
            return self.load(migrating, started).await;
        }
        // The migrating numbers and the first batch of the log in one read.
        let (migrating, mut entries) = store::migrating_and_log_after(&self.db, after, SYNC_BATCH).await?;
        loop {
            // Positions are dense and pruning keeps the newest entry: a first
            // entry past `after + 1` means what lay between was pruned (this
            // replica fell behind the retention). Start over from a snapshot.
            if entries.first().is_some_and(|entry| entry.position > after + 1) {
                tracing::warn!(
                    after,
                    "the permission log was pruned past this replica's position; reloading every grant"
                );
                return self.load(migrating, started).await;
            }
            let full = entries.len() as u64 == SYNC_BATCH;
            {
                let mut grants = self.write();
                let applied_at = chrono::Utc::now();
                for entry in entries {
                    grants.apply(entry.partner_id, entry.phone_number, entry.allowed, applied_at - entry.time);
                    grants.position = entry.position;
                }
                if !full {
                    grants.migrating = migrating;
                    grants.synced_at = Some(started);
                    return Ok(());
                }
                after = grants.position;
            }
            entries = store::log_after(&self.db, after, SYNC_BATCH).await?;
        }
    }

    /// Replaces the cache with every grant as of one snapshot.
    async fn load(&self, migrating: HashMap<String, HashSet<String>>, started: Instant) -> Result<(), DbErr> {
        let (rows, position) = store::snapshot(&self.db).await?;
        let mut by_partner: HashMap<String, HashSet<String>> = HashMap::new();
        for (partner_id, number) in rows {
            by_partner.entry(partner_id).or_default().insert(number);
        }
        *self.write() = Grants { by_partner, migrating, position, loaded: true, synced_at: Some(started) };
        Ok(())
    }

    /// After this replica changed permissions (committed), before the change
    /// call returns, so that the caller's next check sees the change. When
    /// the cache has read the log past the entries `logged` took, nothing is
    /// left to do; when it holds every entry before them, they are applied as
    /// they are. Either way nothing is read. Otherwise (another change came
    /// between, or nothing was logged now: `None`) it stops answering from
    /// memory until it has read the log up to them.
    pub async fn after_local_change(&self, logged: Option<&Logged>) {
        let _one_at_a_time = self.syncing.lock().await;
        {
            let mut grants = self.write();
            match logged {
                Some(logged) if grants.loaded && grants.position >= logged.last => return,
                Some(logged) if grants.loaded && logged.follows() == Some(grants.position) => {
                    let delay = chrono::Utc::now() - logged.time;
                    for (number, allowed) in &logged.entries {
                        grants.apply(logged.partner_id.clone(), number.clone(), *allowed, delay);
                    }
                    grants.position = logged.last;
                    return;
                }
                _ => grants.synced_at = None,
            }
        }
        if let Err(err) = self.sync_now().await {
            tracing::warn!(error = %err, "cannot read back a permission change; checks go to the database");
        }
    }

    /// Follows the log until `shutdown`; with a PostgreSQL URL, also listens
    /// for changes by other replicas.
    pub async fn follow(self: Arc<Self>, postgres_url: Option<String>, shutdown: CancellationToken) {
        if let Some(url) = postgres_url {
            tokio::spawn(partnerhub_runtime::db::listen_for_notifications(
                url,
                store::LOG_CHANNEL,
                self.changed.clone(),
                shutdown.clone(),
            ));
        }
        // While the log cannot be read, checks go to the database (and fail closed if it is away).
        let outage = Outage::new("permission_cache");
        loop {
            let started = Instant::now();
            match self.sync().await {
                Ok(()) => outage.succeeded(),
                Err(err) => outage.failed(&err),
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.changed.notified() => {
                    // Notifications that come in a burst are served by one read.
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep_until(started + NOTIFIED_SYNC_SPACING) => {}
                    }
                }
                () = tokio::time::sleep(self.settings.cache_poll_interval) => {}
            }
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Grants> {
        self.grants.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sea_orm::{ConnectOptions, ConnectionTrait, Database};

    use super::*;

    /// One in-memory SQLite database (one connection, so every query sees it), migrated.
    async fn database() -> DatabaseConnection {
        let mut options = ConnectOptions::new("sqlite::memory:");
        options.max_connections(1).sqlx_logging(false);
        let db = Database::connect(options).await.unwrap();
        crate::store::migrate(&db).await.unwrap();
        // The partner-change service's published view, as a table the test can write
        // (its contract: the columns; the owning side tests the view itself).
        db.execute_unprepared(
            "CREATE TABLE partner_change_moves (partner_change_id TEXT PRIMARY KEY, waba_id TEXT, \
             source_partner_id TEXT, phone_numbers TEXT, migrating BOOLEAN, starts_after TEXT)",
        )
        .await
        .unwrap();
        db
    }

    async fn grant(db: &DatabaseConnection, position: i64, number: &str, allowed: bool) {
        if allowed {
            db.execute_unprepared(&format!(
                "INSERT INTO permission_grants (partner_id, phone_number, client_id, grant_time) VALUES ('p', '{number}', 'c', '2026-01-01T00:00:00Z')"
            ))
            .await
            .unwrap();
        }
        db.execute_unprepared(&format!(
            "INSERT INTO permission_log (position, partner_id, phone_number, allowed, time) VALUES ({position}, 'p', '{number}', {allowed}, '2026-01-01T00:00:00Z')"
        ))
        .await
        .unwrap();
        db.execute_unprepared(&format!("UPDATE permission_log_head SET last_position = {position} WHERE id = 1"))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn the_cache_answers_only_while_it_has_read_the_log_recently() {
        let db = database().await;
        let cache = PermissionCache::new(db.clone(), PermissionsSettings::default());
        assert_eq!(cache.check("p", "+4915100000001"), Err(Untrusted), "nothing loaded yet");

        grant(&db, 1, "+4915100000001", true).await;
        cache.sync().await.unwrap();
        assert_eq!(cache.check("p", "+4915100000001"), Ok(true), "from the snapshot");
        assert_eq!(cache.check("p", "+4915100000002"), Ok(false));
        assert_eq!(cache.check("other", "+4915100000001"), Ok(false));

        // Changes arrive through the log.
        grant(&db, 2, "+4915100000002", true).await;
        grant(&db, 3, "+4915100000001", false).await;
        assert_eq!(cache.check("p", "+4915100000001"), Ok(true), "not read yet");
        cache.sync().await.unwrap();
        assert_eq!(cache.check("p", "+4915100000001"), Ok(false));
        assert_eq!(cache.check("p", "+4915100000002"), Ok(true));

        // Without a successful read for longer than the window, it stops
        // answering. (Time is paused only here: the database calls need real time.)
        tokio::time::pause();
        tokio::time::advance(Duration::from_millis(900)).await;
        assert_eq!(cache.check("p", "+4915100000002"), Ok(true));
        tokio::time::advance(Duration::from_millis(200)).await;
        assert_eq!(cache.check("p", "+4915100000002"), Err(Untrusted), "older than the trust window");
        tokio::time::resume();
        cache.sync().await.unwrap();
        assert_eq!(cache.check("p", "+4915100000002"), Ok(true), "trusted again after a read");

        // A local change stops answers from memory until it has been read back.
        cache.write().synced_at = None;
        assert_eq!(cache.check("p", "+4915100000002"), Err(Untrusted));
        cache.after_local_change(None).await;
        assert_eq!(cache.check("p", "+4915100000002"), Ok(true));
    }

    #[tokio::test]
    async fn a_local_change_next_in_the_log_is_applied_without_a_read_any_other_is_read_back() {
        let db = database().await;
        let cache = PermissionCache::new(db.clone(), PermissionsSettings::default());
        let logged = |number: &str, allowed: bool, last: i64| Logged {
            partner_id: "p".to_owned(),
            entries: vec![(number.to_owned(), allowed)],
            time: chrono::Utc::now(),
            last,
        };
        grant(&db, 1, "+4915100000001", true).await;
        cache.sync().await.unwrap();

        // Another replica's change (2) came before this replica's own (3): the log is read.
        grant(&db, 2, "+4915100000002", true).await;
        grant(&db, 3, "+4915100000003", true).await;
        cache.after_local_change(Some(&logged("+4915100000003", true, 3))).await;
        assert_eq!(cache.check("p", "+4915100000002"), Ok(true), "the change between, read back");
        assert_eq!(cache.check("p", "+4915100000003"), Ok(true));

        // A call that logged nothing now (a repeat): the log is read, whatever came since.
        grant(&db, 4, "+4915100000001", false).await;
        cache.after_local_change(None).await;
        assert_eq!(cache.check("p", "+4915100000001"), Ok(false));

        // The next entry is this replica's own: applied as logged, nothing read
        // (the log is out of reach here, so a read would leave the cache untrusted).
        grant(&db, 5, "+4915100000004", true).await;
        db.execute_unprepared("ALTER TABLE permission_log RENAME TO permission_log_away").await.unwrap();
        cache.after_local_change(Some(&logged("+4915100000004", true, 5))).await;
        assert_eq!(cache.check("p", "+4915100000004"), Ok(true), "applied without a read");
        assert_eq!(cache.check("p", "+4915100000002"), Ok(true), "the rest kept");
        // Already read past (a sync came first): nothing to do, nothing read.
        cache.after_local_change(Some(&logged("+4915100000003", true, 3))).await;
        assert_eq!(cache.check("p", "+4915100000004"), Ok(true), "still trusted: nothing was read");
        // Not the next entry (6 is missing): a read is needed, and fails here: no answers from memory.
        cache.after_local_change(Some(&logged("+4915100000004", false, 7))).await;
        assert_eq!(cache.check("p", "+4915100000004"), Err(Untrusted));
        db.execute_unprepared("ALTER TABLE permission_log_away RENAME TO permission_log").await.unwrap();
    }

    #[tokio::test]
    async fn a_migrating_request_denies_its_source_partner_its_numbers_until_it_completes() {
        let db = database().await;
        let cache = PermissionCache::new(
            db.clone(),
            PermissionsSettings { cache_trust_window: Duration::from_secs(5), ..PermissionsSettings::default() },
        );
        grant(&db, 1, "+4915100000001", true).await;
        grant(&db, 2, "+4915100000002", true).await;
        cache.sync().await.unwrap();
        assert_eq!(cache.check("p", "+4915100000001"), Ok(true));

        db.execute_unprepared(
            "INSERT INTO partner_change_moves VALUES ('pc-1', 'w-1', 'p', '+4915100000001,+4915100000003', TRUE, NULL), \
             ('pc-2', 'w-2', 'p', '+4915100000002', FALSE, NULL), ('pc-3', 'w-3', 'other', '+4915100000002', TRUE, NULL)",
        )
        .await
        .unwrap();
        cache.sync().await.unwrap();
        assert_eq!(cache.check("p", "+4915100000001"), Ok(false), "the grant is still there, but the number is moving");
        assert_eq!(cache.check("p", "+4915100000002"), Ok(true), "only a migrating request of this partner fences");
        assert!(!store::is_allowed(&db, "p", "+4915100000001").await.unwrap(), "the database answer agrees");
        assert!(store::is_allowed(&db, "p", "+4915100000002").await.unwrap());

        db.execute_unprepared("DELETE FROM partner_change_moves WHERE partner_change_id = 'pc-1'").await.unwrap();
        cache.sync().await.unwrap();
        assert_eq!(cache.check("p", "+4915100000001"), Ok(true), "the fence ends with the migration");
    }

    #[tokio::test]
    async fn a_replica_the_pruner_left_behind_reloads_every_grant_instead_of_missing_changes() {
        let db = database().await;
        let cache = PermissionCache::new(db.clone(), PermissionsSettings::default());
        grant(&db, 1, "+4915100000001", true).await;
        cache.sync().await.unwrap();
        // While this replica does not read, the log moves on and its old part
        // is pruned: entries 2 and 3 are gone before the cache has seen them.
        grant(&db, 2, "+4915100000002", true).await;
        grant(&db, 3, "+4915100000003", true).await;
        grant(&db, 4, "+4915100000004", true).await;
        db.execute_unprepared("DELETE FROM permission_grants WHERE phone_number = '+4915100000001'").await.unwrap();
        let pruned =
            partnerhub_runtime::retention::prune(&db, store::PERMISSION_LOG, chrono::Utc::now(), 2).await.unwrap();
        assert_eq!(pruned, 2, "the oldest two of four entries (the newest is always kept)");
        let pruned =
            partnerhub_runtime::retention::prune(&db, store::PERMISSION_LOG, chrono::Utc::now(), 2).await.unwrap();
        assert_eq!(pruned, 1, "then the third; the newest stays");

        cache.sync().await.unwrap();
        assert_eq!(cache.check("p", "+4915100000002"), Ok(true), "a pruned entry's grant, from the reload");
        assert_eq!(cache.check("p", "+4915100000003"), Ok(true), "a pruned entry's grant, from the reload");
        assert_eq!(cache.check("p", "+4915100000004"), Ok(true));
        assert_eq!(cache.check("p", "+4915100000001"), Ok(false), "a grant removed meanwhile is gone too");
    }
}
