//! The log relay's runtime: the slot reader, its lanes and its statements (feature `postgres`).

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use outbox_core::{Publisher, RetryPolicy};
use sea_orm::{ConnectOptions, Database, DatabaseConnection};

use super::{
    DEFAULT_SETUP_TIMEOUT, DEFAULT_SLOT, LogRelayError, LogStats, SlotStatus, session, slot,
    slot_status,
};
use crate::relay::DeadLetterPolicy;

/// Publishes committed events read from the write-ahead log; see the
/// [module documentation](super).
#[derive(Clone)]
pub struct LogRelay {
    config: Arc<Config>,
    publisher: Arc<dyn Publisher>,
}

impl std::fmt::Debug for LogRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogRelay")
            .field("slot", &self.config.slot)
            .field("publication", &self.config.publication)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) url: String,
    pub(crate) slot: String,
    pub(crate) publication: String,
    pub(crate) batch_size: usize,
    pub(crate) concurrency: usize,
    pub(crate) max_buffered: usize,
    pub(crate) retry: RetryPolicy,
    pub(crate) dead_letter_policy: DeadLetterPolicy,
    pub(crate) publish_timeout: Duration,
    pub(crate) heartbeat: Duration,
    pub(crate) lag_warning: u64,
    pub(crate) standby_retry: Duration,
    pub(crate) status_interval: Duration,
    pub(crate) create_slot: bool,
    pub(crate) sweep_interval: Duration,
    pub(crate) sweep_age: Duration,
    pub(crate) setup_timeout: Duration,
}

/// Configures a [`LogRelay`]; see [`LogRelay::builder`].
#[must_use]
#[derive(Clone)]
pub struct LogRelayBuilder {
    config: Config,
    publisher: Arc<dyn Publisher>,
}

impl std::fmt::Debug for LogRelayBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogRelayBuilder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl LogRelay {
    /// Starts configuring a log relay for the PostgreSQL database at `url`
    /// (`postgres://user:password@host:port/database`, `?sslmode=require` for TLS; the user needs
    /// the `REPLICATION` attribute), publishing through `publisher`.
    pub fn builder(url: impl Into<String>, publisher: impl Publisher + 'static) -> LogRelayBuilder {
        LogRelayBuilder {
            config: Config {
                url: url.into(),
                slot: DEFAULT_SLOT.to_owned(),
                publication: DEFAULT_SLOT.to_owned(),
                batch_size: 500,
                concurrency: super::DEFAULT_LANES,
                max_buffered: 20_000,
                retry: RetryPolicy::default(),
                dead_letter_policy: DeadLetterPolicy::Block,
                publish_timeout: crate::relay::DEFAULT_PUBLISH_TIMEOUT,
                heartbeat: Duration::from_secs(10),
                lag_warning: 1 << 30,
                standby_retry: Duration::from_secs(1),
                status_interval: Duration::from_secs(1),
                create_slot: true,
                sweep_interval: Duration::from_secs(30),
                sweep_age: Duration::from_secs(60),
                setup_timeout: DEFAULT_SETUP_TIMEOUT,
            },
            publisher: crate::relay::traced(publisher),
        }
    }

    /// Creates the slot and the publication where they are missing ([`setup`](super::setup)).
    ///
    /// # Errors
    /// As [`setup`](super::setup), and [`LogRelayError::Url`] for a bad URL.
    pub async fn setup(&self) -> Result<(), LogRelayError> {
        let db = connect(&self.config.url).await?;
        let config = &self.config;
        let result =
            slot::setup_within(&db, &config.slot, &config.publication, config.setup_timeout).await;
        // A statement cut off by a timeout may still hold its connection: bounded.
        let _ = tokio::time::timeout(Duration::from_secs(5), db.close()).await;
        result
    }

    /// Reads the slot and publishes until `shutdown` completes, then stops reading, waits (up
    /// to the publish timeout) for the batches in flight, confirms what they completed and
    /// returns. Creates the slot and publication first (unless
    /// [`LogRelayBuilder::create_slot`] is off). Lost connections (the database restarting,
    /// the walsender terminated) are logged and retried with a backoff; while another
    /// instance holds the slot, this one stands by.
    ///
    /// # Errors
    /// [`LogRelayError::Url`] and [`LogRelayError::Setup`] when the relay cannot work with this
    /// database at all; everything else is retried.
    pub async fn run_until<F: Future>(&self, shutdown: F) -> Result<LogStats, LogRelayError> {
        let config = &self.config;
        let replication = session::replication_config(config)?;
        let db = connect(&config.url).await?;
        if config.create_slot {
            slot::setup_within(&db, &config.slot, &config.publication, config.setup_timeout)
                .await?;
        } else {
            slot::check_name("slot", &config.slot)?;
        }
        let lag = tokio::spawn(session::watch_lag(
            db.clone(),
            config.slot.clone(),
            config.lag_warning,
        ));
        let mut shutdown = pin!(shutdown);
        let mut stats = LogStats::default();
        let mut standing_by = false;
        let mut failures = 0u32;
        loop {
            // While another session holds the slot, stand by without connecting for
            // replication (the attempt would be refused, and logged as an error by the client).
            let held_elsewhere = matches!(
                tokio::time::timeout(Duration::from_secs(10), slot_status(&db, &config.slot)).await,
                Ok(Ok(Some(SlotStatus { active: true, .. })))
            );
            let outcome = if held_elsewhere {
                session::Outcome::Busy
            } else {
                session::run(
                    config,
                    &replication,
                    &db,
                    &self.publisher,
                    &mut stats,
                    shutdown.as_mut(),
                )
                .await
            };
            let wait = match outcome {
                session::Outcome::Shutdown => break,
                session::Outcome::Busy => {
                    if !standing_by {
                        tracing::info!(
                            slot = %config.slot,
                            "log relay: another instance reads the slot; standing by"
                        );
                        standing_by = true;
                    }
                    failures = 0;
                    config.standby_retry
                }
                session::Outcome::Lost { reason, held } => {
                    standing_by = false;
                    // A session that held the slot and then ended starts the backoff over.
                    failures = if held { 1 } else { failures.saturating_add(1) };
                    let wait = Duration::from_millis(200)
                        .saturating_mul(2u32.saturating_pow(failures.min(5)))
                        .min(Duration::from_secs(5));
                    tracing::warn!(
                        slot = %config.slot,
                        error = %reason,
                        retry_in = ?wait,
                        "log relay: replication session ended"
                    );
                    wait
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = shutdown.as_mut() => break,
            }
        }
        lag.abort();
        // A statement cut off by a timeout may still hold its connection: bounded.
        let _ = tokio::time::timeout(Duration::from_secs(5), db.close()).await;
        Ok(stats)
    }
}

impl LogRelayBuilder {
    /// The replication slot to read (default `outbox`): lowercase letters, digits and `_`.
    pub fn slot(mut self, slot: impl Into<String>) -> Self {
        self.config.slot = slot.into();
        self
    }

    /// The publication of the `outbox` table's inserts (default `outbox`).
    pub fn publication(mut self, publication: impl Into<String>) -> Self {
        self.config.publication = publication.into();
        self
    }

    /// Events per publish call of one lane (at least 1). Default 500.
    pub fn batch_size(mut self, events: usize) -> Self {
        self.config.batch_size = events.max(1);
        self
    }

    /// Lanes publishing at once (at least 1), each taking the events of its share of the
    /// aggregates. Default [`DEFAULT_LANES`](super::DEFAULT_LANES).
    pub fn concurrency(mut self, lanes: usize) -> Self {
        self.config.concurrency = lanes.max(1);
        self
    }

    /// Events read but not yet acknowledged, past which the relay stops reading (the server
    /// then waits). Default 20,000.
    pub fn max_buffered(mut self, events: usize) -> Self {
        self.config.max_buffered = events.max(1);
        self
    }

    /// Backoff and attempts for events that fail to publish (default [`RetryPolicy::default`]).
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.config.retry = retry;
        self
    }

    /// What to do with an event that fails for good (default [`DeadLetterPolicy::Block`]).
    pub fn dead_letter_policy(mut self, policy: DeadLetterPolicy) -> Self {
        self.config.dead_letter_policy = policy;
        self
    }

    /// The longest wait for one publish call; past it the batch counts as a retryable failure.
    /// Default [`crate::relay::DEFAULT_PUBLISH_TIMEOUT`].
    pub fn publish_timeout(mut self, timeout: Duration) -> Self {
        self.config.publish_timeout = timeout;
        self
    }

    /// How often an idle relay emits and confirms a heartbeat message. Default 10 s.
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.config.heartbeat = every.max(Duration::from_millis(10));
        self
    }

    /// Slot lag, in bytes, past which a warning is logged (every 5 s). Default 1 GiB.
    pub fn lag_warning(mut self, bytes: u64) -> Self {
        self.config.lag_warning = bytes;
        self
    }

    /// How often a standby instance tries to take the slot. Default 1 s.
    pub fn standby_retry(mut self, every: Duration) -> Self {
        self.config.standby_retry = every.max(Duration::from_millis(10));
        self
    }

    /// How soon a confirmed position reaches the server. Default 1 s.
    pub fn status_interval(mut self, every: Duration) -> Self {
        self.config.status_interval = every.max(Duration::from_millis(10));
        self
    }

    /// Whether [`LogRelay::run_until`] creates a missing slot and publication (default `true`).
    /// Off, a missing slot is an error that is retried.
    pub fn create_slot(mut self, create: bool) -> Self {
        self.config.create_slot = create;
        self
    }

    /// How often the relay holding the slot looks for pending rows the log did not carry (a
    /// row requeued with [`crate::relay::requeue_dead`], or saved before the slot existed), and
    /// how old such a row must be: younger pending rows are the log's to publish. Defaults 30 s
    /// and 60 s. The sweep publishes them (oldest first, up to 500 a time) and marks them.
    pub fn sweep(mut self, every: Duration, older_than: Duration) -> Self {
        self.config.sweep_interval = every.max(Duration::from_millis(10));
        self.config.sweep_age = older_than;
        self
    }

    /// The longest the slot's creation may wait (default [`DEFAULT_SETUP_TIMEOUT`]): it waits
    /// for every transaction running on the server to end.
    pub fn setup_timeout(mut self, timeout: Duration) -> Self {
        self.config.setup_timeout = timeout;
        self
    }

    /// Builds the relay.
    pub fn build(self) -> LogRelay {
        LogRelay {
            config: Arc::new(self.config),
            publisher: self.publisher,
        }
    }
}

/// A small pool for the relay's own statements (status, marks, dead rows, heartbeats).
async fn connect(url: &str) -> Result<DatabaseConnection, LogRelayError> {
    session::postgres_url(url)?;
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .max_connections(3)
        .min_connections(0)
        .connect_timeout(Duration::from_secs(10))
        .acquire_timeout(Duration::from_secs(30))
        .sqlx_logging(false);
    Ok(Database::connect(options).await?)
}
