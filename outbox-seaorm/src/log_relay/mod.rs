//! The log relay (PostgreSQL): publishes committed events read from the write-ahead log through
//! a logical replication slot, in commit order, with no polling and no row marking.
//!
//! It streams slot `outbox` (pgoutput, publication `outbox` of the `outbox` table's inserts,
//! both created by [`setup`] when missing) through
//! [`pgwire-replication`](https://docs.rs/pgwire-replication), and hands each committed event to
//! the same [`Publisher`](outbox_core::Publisher) as the table relay ([`crate::Relay`]), so keys, headers and
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
//! An event that fails for good follows the [`DeadLetterPolicy`](crate::relay::DeadLetterPolicy): `Block` (the default) retries
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
#[cfg(feature = "postgres")]
mod pgoutput;
#[cfg(feature = "postgres")]
mod runner;
#[cfg(feature = "postgres")]
mod session;
mod slot;
#[cfg(feature = "postgres")]
mod sweep;

use sea_orm::DbErr;

pub use message::MESSAGE_PREFIX;
#[cfg(feature = "postgres")]
pub(crate) use runner::Config;
#[cfg(feature = "postgres")]
pub use runner::{LogRelay, LogRelayBuilder};
pub use slot::{
    DEFAULT_SETUP_TIMEOUT, SlotStatus, drop_publication, drop_slot, setup, slot_status,
};

/// The prefix of the heartbeat messages the log relay emits while idle.
pub const HEARTBEAT_PREFIX: &str = "outbox-heartbeat";

/// The default slot and publication name.
pub const DEFAULT_SLOT: &str = "outbox";

/// The publishing lanes of a log relay unless [`LogRelayBuilder::concurrency`] sets another
/// number.
pub const DEFAULT_LANES: usize = 4;

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
