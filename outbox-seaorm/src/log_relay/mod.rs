//! The log relay (PostgreSQL): publishes committed events read from the write-ahead log through
//! a logical replication slot, in commit order, with no polling and no row marking.
//!
//! It streams slot `outbox` (pgoutput, publication `outbox` of the `outbox` table's inserts,
//! both created by [`setup`] when missing) through
//! [`pgwire-replication`](https://docs.rs/pgwire-replication), and hands each committed event to
//! the same [`Publisher`] as the table relay ([`crate::Relay`]), so keys, headers and
//! CloudEvents attributes are the same. It reads events in every [`crate::Capture`] mode: rows
//! inserted pending ([`crate::Capture::Table`]; it marks them published afterwards, so a table
//! relay does not send them again), rows inserted settled ([`crate::Capture::LogTable`]; nothing
//! is marked) and logical decoding messages with prefix [`MESSAGE_PREFIX`]
//! ([`crate::Capture::Messages`]; no row at all).
//!
//! **Acknowledgement.** The slot's confirmed position moves past a transaction only after the
//! broker acknowledged its events and every earlier transaction's. After a crash the relay
//! resumes from the confirmed position: what was unconfirmed is published again (duplicates,
//! which the consumers' inbox drops), nothing is skipped.
//!
//! **Order.** Transactions arrive in commit order; saves of one aggregate commit in order (its
//! sequence row or version guard serializes them), so its events arrive in order. Events are
//! spread over [`LogRelayBuilder::concurrency`] lanes by aggregate; each lane publishes one batch
//! at a time and retries a failed event before anything after it, so order per aggregate holds.
//! An event that fails for good follows the [`DeadLetterPolicy`]: `Block` (the default) retries
//! it at the longest backoff until it goes through, holding its lane; `Skip` records it as a
//! dead `outbox` row with its error and goes on. A dead row requeued with
//! [`crate::relay::requeue_dead`] (an update, which the log does not carry to the relay) is
//! published by the relay's sweep ([`LogRelayBuilder::sweep`]), as are pending rows saved
//! before the slot existed.
//!
//! **One reader per slot.** PostgreSQL lets one session read a slot at a time. A second
//! instance stands by: it retries every [`LogRelayBuilder::standby_retry`] (1 s) and takes over
//! once the active one's session ends (a crashed process's connection closes at once; a hung one
//! is dropped by the server after `wal_sender_timeout`).
//!
//! **Operations.** Gauges `outbox_log_slot_lag_bytes` (write-ahead log the server keeps for the
//! slot) and `outbox_log_confirmed_lsn` (the confirmed position, in bytes), refreshed every 5 s;
//! a warning is logged while the lag exceeds [`LogRelayBuilder::lag_warning`]. While nothing is
//! published, a heartbeat ([`LogRelayBuilder::heartbeat`]) emits a non-transactional message
//! (prefix [`HEARTBEAT_PREFIX`]) and confirms it, so an idle database does not keep log without
//! bound. Counters as the table relay's: `outbox_relay_published_total`,
//! `outbox_relay_retried_total`, `outbox_relay_dead_lettered_total`. Retire a relay with
//! [`drop_slot`] and [`drop_publication`]: an abandoned slot keeps log forever.
//!
//! ```no_run
//! # async fn run(
//! #     publisher: outbox_core::testing::InMemoryPublisher,
//! #     shutdown: impl std::future::Future<Output = ()>,
//! # ) -> Result<(), Box<dyn std::error::Error>> {
//! use outbox_seaorm::log_relay::LogRelay;
//!
//! let relay = LogRelay::builder("postgres://postgres@127.0.0.1/app", publisher)
//!     .slot("outbox")
//!     .build();
//! relay.setup().await?; // before the service's first save
//! let stats = relay.run_until(shutdown).await?;
//! println!("published {}", stats.published);
//! # Ok(()) }
//! ```

pub mod message;
mod pgoutput;
mod session;
mod slot;
mod sweep;

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use outbox_core::{Publisher, RetryPolicy};
use sea_orm::{ConnectOptions, Database, DatabaseConnection, DbErr};

pub use message::MESSAGE_PREFIX;
pub use slot::{
    DEFAULT_SETUP_TIMEOUT, SlotStatus, drop_publication, drop_slot, setup, slot_status,
};

use crate::relay::DeadLetterPolicy;

/// The prefix of the heartbeat messages the log relay emits while idle.
pub const HEARTBEAT_PREFIX: &str = "outbox-heartbeat";

/// The default slot and publication name.
pub const DEFAULT_SLOT: &str = "outbox";

/// Why the log relay stopped or could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogRelayError {
    /// The database URL is not a PostgreSQL URL the relay can use.
    #[error("database URL: {0}")]
    Url(String),
    /// The database cannot carry a log relay as it is (see the message).
    #[error("log relay set-up: {0}")]
    Setup(String),
    /// A statement failed.
    #[error("log relay: {0}")]
    Database(#[from] DbErr),
}

/// What a log relay did until it stopped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LogStats {
    /// Events the broker acknowledged.
    pub published: u64,
    /// Publish attempts that failed and were retried.
    pub retried: u64,
    /// Events recorded dead (policy `Skip`).
    pub dead_lettered: u64,
    /// Transactions whose events were all acknowledged and confirmed to the slot.
    pub transactions: u64,
    /// Replication sessions this relay held the slot in.
    pub sessions: u64,
}

/// Publishes committed events read from the write-ahead log; see the
/// [module documentation](self).
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
                concurrency: 4,
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
            publisher: Arc::new(publisher),
        }
    }

    /// Creates the slot and the publication where they are missing ([`setup`]).
    ///
    /// # Errors
    /// As [`setup`], and [`LogRelayError::Url`] for a bad URL.
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
    /// aggregates. Default 4.
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
