//! The relay: publishes committed outbox rows through a [`Publisher`], at least once, in order
//! per aggregate.
//!
//! A cycle claims up to `shards_per_claim` of the 64 relay shards with
//! `SELECT … FOR UPDATE SKIP LOCKED` (PostgreSQL, MariaDB/MySQL), reads the pending, due rows of
//! those shards in position order, leaving out aggregates held back by an earlier row that waits
//! for a retry or is dead, hands the batch to the publisher, marks every confirmed row published
//! in one statement (or deletes them, with [`Completion::Delete`]), records failures with backoff,
//! and commits, which releases the shards. A
//! shard is held by one relay at a time, so several relays can run against one database and
//! events of one aggregate are still published in order. If an event fails, the later events of
//! its aggregate in the batch are not handed to the broker (the [`Publisher`] contract: they come
//! back [`PublishError::NotAttempted`](outbox_core::PublishError::NotAttempted)); they stay
//! pending, charged no attempt, and are sent after it. The wait on the publisher is bounded
//! ([`RelayBuilder::publish_timeout`]), so a hung broker cannot hold a cycle's shard locks: past
//! the bound the batch counts as a retryable failure and the shards are released.
//!
//! SQLite has no row locks: there, the relay reads and publishes outside any transaction (so the
//! application's saves are not blocked meanwhile) and marks the batch in one short write
//! transaction. **Run a single relay per SQLite database.**
//!
//! On PostgreSQL the relay `LISTEN`s on channel `outbox` (the save path notifies it after commit)
//! with a slow fallback poll; the listener keeps one connection of the relay's pool for itself
//! and each cycle in flight holds one (two by default), so give the pool at least three. Elsewhere it polls with a backoff while idle. It runs again at
//! once while batches come back full, and survives lost connections: it logs, backs off and
//! retries; the pool reconnects and the listener re-subscribes.
//!
//! Several relays (processes or tasks, each with its own [`Relay`]) may share a PostgreSQL or
//! MariaDB database: each cycle takes up to `shards_per_claim` shards that no other relay holds,
//! starting at a random shard, so with the default of 16 up to four relays work side by side.
//! One relay can also run several cycles at once ([`RelayBuilder::concurrency`]): each claims its
//! own shards as a separate relay would, so one cycle's database work overlaps another's
//! publishing.
//!
//! Metrics (through the `metrics` facade): counters `outbox_relay_published_total`,
//! `outbox_relay_retried_total`, `outbox_relay_dead_lettered_total`; gauges `outbox_pending` and
//! `outbox_oldest_pending_age_seconds`, refreshed every 5 s by [`Relay::run_until`]. Dead events
//! stay in the table with their last error; [`requeue_dead`] puts one back.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use outbox_core::RetryPolicy;
//! use outbox_core::testing::InMemoryPublisher;
//! use outbox_seaorm::relay::{DeadLetterPolicy, Relay};
//!
//! let db = sea_orm::Database::connect("sqlite::memory:").await?;
//! outbox_seaorm::schema::migrate(&db).await?;
//!
//! let publisher = InMemoryPublisher::new();
//! let relay = Relay::builder(db.clone(), publisher.clone())
//!     .batch_size(100)
//!     .retry(RetryPolicy::default().with_max_attempts(5))
//!     .dead_letter_policy(DeadLetterPolicy::Block)
//!     .idle_backoff(Duration::from_millis(10), Duration::from_secs(1))
//!     .build();
//!
//! let report = relay.run_once().await?;
//! assert_eq!(report.published(), 0); // nothing saved yet
//! assert_eq!(outbox_seaorm::relay::pending_count(&db).await?, 0);
//!
//! // In a service: run until shutdown (here: at once).
//! let stats = relay.run_until(async {}).await?;
//! assert_eq!(stats.published(), 0);
//! # Ok(()) }
//! ```

mod admin;
mod cycle;
#[cfg(feature = "postgres")]
mod wake;
/// Without the PostgreSQL driver there is nothing to listen to.
#[cfg(not(feature = "postgres"))]
mod wake {
    /// Never constructed: only PostgreSQL wakes relays with `NOTIFY`.
    pub(super) struct Listener;

    impl Listener {
        pub(super) fn is_listening(&self) -> bool {
            false
        }

        pub(super) async fn notified(&self) {
            std::future::pending::<()>().await;
        }
    }
}

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::future::join_all;
use outbox_core::{Publisher, RetryPolicy};
use sea_orm::{DatabaseConnection, DbBackend, DbErr};
use tokio::sync::{Notify, watch};
use tracing::Instrument;

pub use admin::{dead_count, pending_count, requeue_dead};
pub(crate) use cycle::held_back_join;

/// What happens to the later events of an aggregate whose event is dead.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeadLetterPolicy {
    /// Hold them back until the dead event is requeued ([`requeue_dead`]) or removed: order
    /// per aggregate is never broken. The default.
    #[default]
    Block,
    /// Publish them: a dead event no longer holds its aggregate back (it stays dead, with its
    /// error, for inspection). An event waiting for a retry still holds its aggregate back.
    Skip,
}

/// What the relay does with an outbox row once its event is published.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Completion {
    /// Keep the row, marked published with its time; [`crate::Cleanup`] deletes it after its
    /// retention. The table then doubles as an audit log of what was sent and when.
    #[default]
    Mark,
    /// Delete the row in the cycle's transaction. Cheaper for the database (a delete writes no
    /// new row version and no index entries; the mark updates every index of the row), so a
    /// relay drains faster, but nothing of a published event stays behind. A row whose
    /// in-process handlers have not all run yet is marked instead, and left to `Cleanup`.
    Delete,
}

/// Why a relay cycle failed. The relay's run loop logs these and tries again.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// A statement failed or the connection was lost; the cycle's transaction rolled back.
    #[error("the relay's database work failed")]
    Database {
        /// SeaORM's error.
        #[from]
        source: DbErr,
    },
}

impl RelayError {
    /// Whether running the cycle again may succeed (a lost connection, a lock timeout).
    pub fn is_retryable(&self) -> bool {
        match self {
            RelayError::Database { source } => !matches!(
                source,
                DbErr::Type(_) | DbErr::Json(_) | DbErr::TryIntoErr { .. }
            ),
        }
    }
}

/// What one relay cycle did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CycleReport {
    shards: usize,
    claimed: usize,
    published: usize,
    failed: usize,
    dead: usize,
    held: usize,
    next_retry_at: Option<DateTime<Utc>>,
    more: bool,
}

impl CycleReport {
    /// Shards locked by this cycle (0 on SQLite, which has no shard locks).
    pub fn shards(&self) -> usize {
        self.shards
    }
    /// Rows read for publishing.
    pub fn claimed(&self) -> usize {
        self.claimed
    }
    /// Rows the publisher confirmed, now marked published.
    pub fn published(&self) -> usize {
        self.published
    }
    /// Rows that failed and will be retried.
    pub fn failed(&self) -> usize {
        self.failed
    }
    /// Rows that failed for the last time (or were rejected) and are now dead.
    pub fn dead(&self) -> usize {
        self.dead
    }
    /// Rows left pending because an earlier event of their aggregate failed in the same batch.
    pub fn held(&self) -> usize {
        self.held
    }
    /// The earliest retry this cycle scheduled.
    pub fn next_retry_at(&self) -> Option<DateTime<Utc>> {
        self.next_retry_at
    }
    /// Whether more work is likely waiting (a full batch): the run loop goes again at once.
    pub fn has_more(&self) -> bool {
        self.more
    }
}

/// Totals of a relay's run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RelayStats {
    cycles: u64,
    published: u64,
    failed: u64,
    dead: u64,
    errors: u64,
}

impl RelayStats {
    /// Cycles run.
    pub fn cycles(&self) -> u64 {
        self.cycles
    }
    /// Rows published.
    pub fn published(&self) -> u64 {
        self.published
    }
    /// Failures scheduled for retry.
    pub fn failed(&self) -> u64 {
        self.failed
    }
    /// Rows dead-lettered.
    pub fn dead(&self) -> u64 {
        self.dead
    }
    /// Cycles that failed (database errors), logged and retried.
    pub fn errors(&self) -> u64 {
        self.errors
    }

    fn merge(&mut self, other: &RelayStats) {
        self.cycles += other.cycles;
        self.published += other.published;
        self.failed += other.failed;
        self.dead += other.dead;
        self.errors += other.errors;
    }

    fn add(&mut self, report: &CycleReport) {
        self.cycles += 1;
        self.published += report.published as u64;
        self.failed += report.failed as u64;
        self.dead += report.dead as u64;
    }
}

#[derive(Clone, Debug)]
struct Config {
    batch_size: usize,
    shards_per_claim: usize,
    concurrency: usize,
    completion: Completion,
    retry: RetryPolicy,
    dead_letter_policy: DeadLetterPolicy,
    idle_min: Duration,
    idle_max: Duration,
    fallback_poll: Duration,
    publish_timeout: Duration,
    instance_id: String,
}

/// Publishes outbox rows; see the [module documentation](self).
pub struct Relay {
    db: DatabaseConnection,
    publisher: Arc<dyn Publisher>,
    config: Config,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("instance_id", &self.config.instance_id)
            .field("batch_size", &self.config.batch_size)
            .field("shards_per_claim", &self.config.shards_per_claim)
            .finish_non_exhaustive()
    }
}

/// Configures a [`Relay`]; see [`Relay::builder`].
#[must_use]
pub struct RelayBuilder {
    db: DatabaseConnection,
    publisher: Arc<dyn Publisher>,
    config: Config,
}

impl std::fmt::Debug for RelayBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayBuilder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl RelayBuilder {
    /// Rows per batch (at least 1). Default 500.
    ///
    /// Any size works on every backend: the statements that bind one parameter per row are
    /// split so that none exceeds the backend's bind-parameter limit (SQLite 32,766,
    /// PostgreSQL and MySQL/MariaDB 65,535). The whole batch is held in memory and handed to
    /// the publisher at once, so very large batches mostly cost memory and latency.
    pub fn batch_size(mut self, rows: usize) -> Self {
        self.config.batch_size = rows.max(1);
        self
    }
    /// Cycles in flight at once in [`Relay::run_until`] (at least 1; default 2), each on its own
    /// shards, so one cycle's database work overlaps another's publishing. Each holds a
    /// connection of the relay's pool for its cycle, so give the pool `concurrency + 1` (one
    /// for the `LISTEN` on PostgreSQL). Two cycles cut the tail of the delivery latency under
    /// load: a notification no longer waits for the running cycle to end (p99 at 1,000 saves/s
    /// in `examples/bench`). With the default 16 shards per claim, up to four cycles
    /// (of all relays together) find shards; raise it along with a smaller
    /// [`shards_per_claim`](Self::shards_per_claim). Ignored on SQLite, which runs one cycle
    /// at a time.
    pub fn concurrency(mut self, cycles: usize) -> Self {
        self.config.concurrency = cycles.max(1);
        self
    }
    /// What happens to a row once its event is published. Default [`Completion::Mark`].
    pub fn completion(mut self, completion: Completion) -> Self {
        self.config.completion = completion;
        self
    }
    /// Shards locked per cycle (1 to 64). Default 16, so up to four relays share the work.
    pub fn shards_per_claim(mut self, shards: usize) -> Self {
        self.config.shards_per_claim = shards.clamp(1, crate::schema::SHARDS as usize);
        self
    }
    /// Backoff between failed attempts and the number of attempts before an event is dead.
    /// Default: [`RetryPolicy::default`].
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.config.retry = policy;
        self
    }
    /// Whether a dead event holds its aggregate's later events back. Default
    /// [`DeadLetterPolicy::Block`].
    pub fn dead_letter_policy(mut self, policy: DeadLetterPolicy) -> Self {
        self.config.dead_letter_policy = policy;
        self
    }
    /// Polling backoff while idle (no notifications): from `min`, doubling up to `max`.
    /// Default 10 ms to 1 s.
    pub fn idle_backoff(mut self, min: Duration, max: Duration) -> Self {
        let min = min.max(Duration::from_millis(1));
        self.config.idle_min = min;
        self.config.idle_max = max.max(min);
        self
    }
    /// PostgreSQL: how long to wait for a notification before looking anyway. Default 5 s.
    pub fn fallback_poll(mut self, every: Duration) -> Self {
        self.config.fallback_poll = every.max(Duration::from_millis(1));
        self
    }
    /// The longest a cycle waits for the publisher to answer for its batch (at least 1 ms).
    /// Default 60 s ([`DEFAULT_PUBLISH_TIMEOUT`]).
    ///
    /// A cycle holds its shard locks, its transaction and a pooled connection while it
    /// publishes; this bounds that time when a broker hangs. Past it, the cycle gives up on the
    /// publisher: every envelope of the batch counts as a transient failure (the first event of
    /// each aggregate is charged an attempt and retried with the [`retry`](Self::retry)
    /// backoff; its later events stay pending behind it), the outcome is recorded and the
    /// shards are released. Messages the publisher already sent may still reach the broker and
    /// are sent again later (at least once). Keep it above the publisher's own bound on a batch
    /// (for `KafkaPublisher`: `message.timeout.ms`, 30 s by default, plus its queue timeout
    /// when the local queue is full), so that the publisher's own, more precise, answer comes
    /// first.
    pub fn publish_timeout(mut self, timeout: Duration) -> Self {
        self.config.publish_timeout = timeout.max(Duration::from_millis(1));
        self
    }
    /// The name written to `outbox_shard.owner`. Default: `relay-<pid>-<random>`.
    pub fn instance_id(mut self, id: impl Into<String>) -> Self {
        self.config.instance_id = id.into();
        self
    }
    /// Finishes the relay.
    pub fn build(self) -> Relay {
        Relay {
            db: self.db,
            publisher: self.publisher,
            config: self.config,
        }
    }
}

/// The default of [`RelayBuilder::publish_timeout`]: 60 s.
pub const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(60);

/// How often the `outbox_pending` gauges are refreshed.
const GAUGE_INTERVAL: Duration = Duration::from_secs(5);
/// The longest wait after a failed cycle.
const MAX_ERROR_BACKOFF: Duration = Duration::from_secs(5);

impl Relay {
    /// Starts configuring a relay that reads `db` and publishes through `publisher`.
    pub fn builder(db: DatabaseConnection, publisher: impl Publisher + 'static) -> RelayBuilder {
        RelayBuilder {
            db,
            publisher: traced(publisher),
            config: Config {
                batch_size: 500,
                shards_per_claim: 16,
                concurrency: 2,
                completion: Completion::Mark,
                retry: RetryPolicy::default(),
                dead_letter_policy: DeadLetterPolicy::Block,
                idle_min: Duration::from_millis(10),
                idle_max: Duration::from_secs(1),
                fallback_poll: Duration::from_secs(5),
                publish_timeout: DEFAULT_PUBLISH_TIMEOUT,
                instance_id: format!("relay-{}-{:08x}", std::process::id(), fastrand::u32(..)),
            },
        }
    }

    /// This relay's instance id.
    pub fn instance_id(&self) -> &str {
        &self.config.instance_id
    }

    /// Runs one cycle: claim, read, publish, record, commit.
    ///
    /// # Errors
    /// [`RelayError::Database`] when a statement fails; the cycle's transaction rolls back, so
    /// rows published by it are published again later (at least once).
    pub async fn run_once(&self) -> Result<CycleReport, RelayError> {
        let span = tracing::debug_span!("outbox.relay.cycle", instance = %self.config.instance_id);
        let report = cycle::run(self).instrument(span).await?;
        if report.published > 0 {
            metrics::counter!("outbox_relay_published_total").increment(report.published as u64);
        }
        if report.failed > 0 {
            metrics::counter!("outbox_relay_retried_total").increment(report.failed as u64);
        }
        if report.dead > 0 {
            metrics::counter!("outbox_relay_dead_lettered_total").increment(report.dead as u64);
        }
        if report.claimed > 0 {
            tracing::debug!(
                claimed = report.claimed,
                published = report.published,
                failed = report.failed,
                dead = report.dead,
                held = report.held,
                "relay cycle"
            );
        }
        Ok(report)
    }

    /// Runs cycles until `shutdown` completes, then finishes the batches in flight and returns.
    ///
    /// With [`RelayBuilder::concurrency`] above 1 (PostgreSQL, MariaDB/MySQL), that many cycles
    /// run at once, each on shards the others do not hold; a cycle that finds more work than it
    /// took wakes an idle sibling. Failed cycles (a lost connection, say) are logged and retried
    /// with a backoff; this never gives up on its own.
    ///
    /// # Errors
    /// None at present; the `Result` leaves room for fatal configuration errors.
    pub async fn run_until(
        &self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<RelayStats, RelayError> {
        let listener = match self.db.get_database_backend() {
            #[cfg(feature = "postgres")]
            DbBackend::Postgres => Some(wake::Listener::start(&self.db)),
            _ => None,
        };
        let siblings = Notify::new();
        let (stop, stopped) = watch::channel(false);
        tracing::info!(
            instance = %self.config.instance_id,
            concurrency = self.concurrency(),
            "outbox relay started"
        );
        let workers = join_all(
            (0..self.concurrency())
                .map(|index| self.work(listener.as_ref(), &siblings, stopped.clone(), index == 0)),
        );
        let mut workers = pin!(workers);
        let per_worker = tokio::select! {
            stats = &mut workers => stats,
            () = shutdown => {
                let _ = stop.send(true);
                workers.await
            }
        };
        let mut stats = RelayStats::default();
        for worker in per_worker {
            stats.merge(&worker);
        }
        tracing::info!(
            instance = %self.config.instance_id,
            published = stats.published,
            "outbox relay stopped"
        );
        Ok(stats)
    }

    /// Cycles in flight at once: 1 on SQLite (one writer, one relay).
    fn concurrency(&self) -> usize {
        match self.db.get_database_backend() {
            DbBackend::Sqlite => 1,
            _ => self.config.concurrency,
        }
    }

    /// One cycle loop of [`Relay::run_until`]; `gauges`: this loop refreshes the gauges.
    async fn work(
        &self,
        listener: Option<&wake::Listener>,
        siblings: &Notify,
        mut stopped: watch::Receiver<bool>,
        gauges: bool,
    ) -> RelayStats {
        let mut stats = RelayStats::default();
        let mut idle = self.config.idle_min;
        let mut error_backoff = self.config.idle_min.max(Duration::from_millis(50));
        let mut retry_due: Option<Instant> = None;
        let mut gauges_at: Option<Instant> = None;
        loop {
            // A cycle once begun runs to its end, so its batch is recorded.
            let result = self.run_once().await;
            if let Ok(report) = &result {
                stats.add(report);
            }
            if gauges && gauges_at.is_none_or(|at| at.elapsed() >= GAUGE_INTERVAL) {
                gauges_at = Some(Instant::now());
                self.refresh_gauges().await;
            }
            if *stopped.borrow() {
                break;
            }
            let wait = match result {
                Ok(report) => {
                    error_backoff = self.config.idle_min.max(Duration::from_millis(50));
                    if let Some(at) = report.next_retry_at {
                        let in_ = (at - Utc::now()).to_std().unwrap_or_default();
                        let due = Instant::now() + in_;
                        retry_due = Some(retry_due.map_or(due, |d| d.min(due)));
                    }
                    if report.more {
                        // More than this cycle took: an idle sibling takes other shards.
                        siblings.notify_one();
                        continue;
                    }
                    if report.published > 0 || report.dead > 0 {
                        idle = self.config.idle_min;
                    } else {
                        idle = (idle * 2).min(self.config.idle_max);
                    }
                    let listening = listener.is_some_and(wake::Listener::is_listening);
                    let mut wait = if listening {
                        self.config.fallback_poll
                    } else {
                        idle
                    };
                    if let Some(due) = retry_due {
                        let until = due.saturating_duration_since(Instant::now());
                        if until <= wait {
                            wait = until;
                            retry_due = None;
                        }
                    }
                    wait
                }
                Err(error) => {
                    stats.errors += 1;
                    tracing::warn!(
                        instance = %self.config.instance_id,
                        error = %crate::sql::error_chain(&error),
                        backoff_ms = error_backoff.as_millis() as u64,
                        "outbox relay cycle failed; retrying"
                    );
                    let wait = error_backoff;
                    error_backoff = (error_backoff * 2).min(MAX_ERROR_BACKOFF);
                    wait
                }
            };
            let notified = async {
                match listener {
                    Some(listener) => listener.notified().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stopped.wait_for(|s| *s) => break,
                () = tokio::time::sleep(wait) => {}
                () = notified => {}
                () = siblings.notified() => {}
            }
        }
        stats
    }

    async fn refresh_gauges(&self) {
        match admin::pending_stats(&self.db).await {
            Ok((pending, oldest)) => {
                metrics::gauge!("outbox_pending").set(pending as f64);
                let age = oldest.map_or(0.0, |at| {
                    (crate::time::now_micros() - at).max(0) as f64 / 1_000_000.0
                });
                metrics::gauge!("outbox_oldest_pending_age_seconds").set(age);
            }
            Err(error) => {
                tracing::debug!(error = %crate::sql::error_chain(&error), "refreshing outbox gauges failed");
            }
        }
    }
}

/// The publisher a relay (table or log) uses: with the `opentelemetry` feature each envelope is
/// published in an `outbox.publish` span that joins the trace the event was saved in.
pub(crate) fn traced(publisher: impl Publisher + 'static) -> Arc<dyn Publisher> {
    #[cfg(feature = "opentelemetry")]
    return Arc::new(outbox_core::trace::TracedPublisher::new(publisher));
    #[cfg(not(feature = "opentelemetry"))]
    Arc::new(publisher)
}
