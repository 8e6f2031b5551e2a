//! Cleanup: bounded growth of the outbox tables.
//!
//! Deletes, in bounded batches so that no statement holds many locks for long:
//!
//! * published `outbox` rows older than the published retention (by `published_at`), and
//!   captured rows ([`crate::Capture::LogTable`], and [`crate::Capture::Messages`]' rows of
//!   events with in-process handlers) older than it (by `created_at`); never a pending or dead
//!   row, and never a row whose in-process deliveries (`outbox_delivery`) are not all done;
//! * done `outbox_delivery` rows older than the published retention;
//! * `outbox_inbox` rows older than the inbox retention. Keep this longer than any redelivery
//!   can take (broker retention, consumer lag): an event redelivered after its inbox row is gone
//!   is applied again.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use outbox_seaorm::Cleanup;
//!
//! let db = sea_orm::Database::connect("sqlite::memory:").await?;
//! outbox_seaorm::schema::migrate(&db).await?;
//!
//! let cleanup = Cleanup::builder(db.clone())
//!     .published_retention(Duration::from_secs(24 * 3600))
//!     .inbox_retention(Duration::from_secs(14 * 24 * 3600))
//!     .batch_size(1000)
//!     .build();
//! let report = cleanup.run_once().await?;
//! assert_eq!(report.outbox(), 0);
//! # Ok(()) }
//! ```

use std::future::Future;
use std::pin::pin;
use std::time::Duration;

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr};

use crate::sql::{error_chain, execute};
use crate::status::{DeliveryStatus, EventStatus};
use crate::time::now_micros;

/// Why a cleanup pass failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CleanupError {
    /// A delete failed or the connection was lost.
    #[error("outbox cleanup failed")]
    Database {
        /// SeaORM's error.
        #[from]
        source: DbErr,
    },
}

/// How many rows one cleanup pass deleted, per table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CleanupReport {
    outbox: u64,
    deliveries: u64,
    inbox: u64,
    full: bool,
}

impl CleanupReport {
    /// Published and captured `outbox` rows deleted.
    pub fn outbox(&self) -> u64 {
        self.outbox
    }
    /// Done `outbox_delivery` rows deleted.
    pub fn deliveries(&self) -> u64 {
        self.deliveries
    }
    /// `outbox_inbox` rows deleted.
    pub fn inbox(&self) -> u64 {
        self.inbox
    }
    /// Whether a batch came back full, so more rows are probably due.
    pub fn has_more(&self) -> bool {
        self.full
    }
}

/// Deletes old rows; see the [module documentation](self).
#[derive(Debug)]
pub struct Cleanup {
    db: DatabaseConnection,
    published_retention: Duration,
    inbox_retention: Duration,
    batch_size: usize,
    interval: Duration,
}

/// Configures a [`Cleanup`]; see [`Cleanup::builder`].
#[derive(Debug)]
#[must_use]
pub struct CleanupBuilder {
    cleanup: Cleanup,
}

impl CleanupBuilder {
    /// How long published events, captured events (counted from their save) and done
    /// deliveries are kept. Default 1 day.
    pub fn published_retention(mut self, keep: Duration) -> Self {
        self.cleanup.published_retention = keep;
        self
    }
    /// How long inbox (idempotency) rows are kept. Default 7 days.
    pub fn inbox_retention(mut self, keep: Duration) -> Self {
        self.cleanup.inbox_retention = keep;
        self
    }
    /// Rows deleted per statement (at least 1). Default 1000.
    pub fn batch_size(mut self, rows: usize) -> Self {
        self.cleanup.batch_size = rows.max(1);
        self
    }
    /// Pause between passes in [`Cleanup::run_until`] when nothing more is due. Default 60 s.
    pub fn interval(mut self, every: Duration) -> Self {
        self.cleanup.interval = every.max(Duration::from_millis(1));
        self
    }
    /// Finishes the cleanup.
    pub fn build(self) -> Cleanup {
        self.cleanup
    }
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

impl Cleanup {
    /// Starts configuring a cleanup of the outbox tables in `db`.
    pub fn builder(db: DatabaseConnection) -> CleanupBuilder {
        CleanupBuilder {
            cleanup: Cleanup {
                db,
                published_retention: Duration::from_secs(24 * 3600),
                inbox_retention: Duration::from_secs(7 * 24 * 3600),
                batch_size: 1000,
                interval: Duration::from_secs(60),
            },
        }
    }

    /// Deletes at most one batch from each table.
    ///
    /// # Errors
    /// [`CleanupError::Database`] when a delete fails.
    pub async fn run_once(&self) -> Result<CleanupReport, CleanupError> {
        let now = now_micros();
        let published_cutoff = now.saturating_sub(micros(self.published_retention));
        let inbox_cutoff = now.saturating_sub(micros(self.inbox_retention));
        let limit = i64::try_from(self.batch_size).unwrap_or(i64::MAX);
        let backend = self.db.get_database_backend();
        let db = &self.db;

        let deliveries = delete_deliveries(db, backend, published_cutoff, limit).await?;
        let outbox = delete_outbox(db, backend, published_cutoff, limit).await?;
        let inbox = delete_inbox(db, backend, inbox_cutoff, limit).await?;
        let full = [deliveries, outbox, inbox]
            .iter()
            .any(|n| *n >= self.batch_size as u64);
        if outbox + deliveries + inbox > 0 {
            tracing::debug!(outbox, deliveries, inbox, "outbox cleanup pass");
        }
        Ok(CleanupReport {
            outbox,
            deliveries,
            inbox,
            full,
        })
    }

    /// Runs passes until `shutdown` completes: at once again while batches come back full,
    /// else after the interval. Failed passes are logged and retried.
    ///
    /// # Errors
    /// None at present; the `Result` leaves room for fatal configuration errors.
    pub async fn run_until(
        &self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<CleanupReport, CleanupError> {
        let mut shutdown = pin!(shutdown);
        let mut total = CleanupReport::default();
        loop {
            let wait = match self.run_once().await {
                Ok(report) => {
                    total.outbox += report.outbox;
                    total.deliveries += report.deliveries;
                    total.inbox += report.inbox;
                    if report.full {
                        Duration::ZERO
                    } else {
                        self.interval
                    }
                }
                Err(error) => {
                    tracing::warn!(error = %error_chain(&error), "outbox cleanup failed; retrying");
                    self.interval.min(Duration::from_secs(5))
                }
            };
            tokio::select! {
                () = &mut shutdown => return Ok(total),
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
}

async fn delete_outbox<C: ConnectionTrait>(
    db: &C,
    backend: DbBackend,
    cutoff: i64,
    limit: i64,
) -> Result<u64, DbErr> {
    let published = EventStatus::Published.value();
    let captured = EventStatus::Captured.value();
    // A captured row is settled when written (the log relay publishes it from the log); its age
    // counts from then.
    let settled = format!(
        "((status = {published} AND published_at < ?) OR (status = {captured} AND created_at < ?))"
    );
    let unfinished = format!(
        "SELECT 1 FROM outbox_delivery d WHERE d.event_id = outbox.id AND d.status <> {}",
        DeliveryStatus::Done.value()
    );
    let sql = match backend {
        DbBackend::MySql => format!(
            "DELETE FROM outbox WHERE {settled} \
             AND NOT EXISTS ({unfinished}) ORDER BY position LIMIT ?"
        ),
        _ => format!(
            "DELETE FROM outbox WHERE position IN (SELECT position FROM outbox \
             WHERE {settled} AND NOT EXISTS ({unfinished}) \
             ORDER BY position LIMIT ?)"
        ),
    };
    execute(db, &sql, vec![cutoff.into(), cutoff.into(), limit.into()]).await
}

async fn delete_deliveries<C: ConnectionTrait>(
    db: &C,
    backend: DbBackend,
    cutoff: i64,
    limit: i64,
) -> Result<u64, DbErr> {
    let done = DeliveryStatus::Done.value();
    let sql = match backend {
        DbBackend::MySql => format!(
            "DELETE FROM outbox_delivery WHERE status = {done} AND completed_at < ? \
             ORDER BY completed_at LIMIT ?"
        ),
        _ => format!(
            "DELETE FROM outbox_delivery WHERE (event_id, handler) IN \
             (SELECT event_id, handler FROM outbox_delivery \
             WHERE status = {done} AND completed_at < ? ORDER BY completed_at LIMIT ?)"
        ),
    };
    execute(db, &sql, vec![cutoff.into(), limit.into()]).await
}

async fn delete_inbox<C: ConnectionTrait>(
    db: &C,
    backend: DbBackend,
    cutoff: i64,
    limit: i64,
) -> Result<u64, DbErr> {
    let sql = match backend {
        DbBackend::MySql => {
            "DELETE FROM outbox_inbox WHERE processed_at < ? \
                             ORDER BY processed_at LIMIT ?"
        }
        _ => {
            "DELETE FROM outbox_inbox WHERE (event_id, consumer) IN \
              (SELECT event_id, consumer FROM outbox_inbox \
               WHERE processed_at < ? ORDER BY processed_at LIMIT ?)"
        }
    };
    execute(db, sql, vec![cutoff.into(), limit.into()]).await
}
