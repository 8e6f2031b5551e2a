//! Errors of the save path and the delivery worker.

#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
use std::ops::Deref;

#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
use sea_orm::RuntimeErr;
use sea_orm::{DbBackend, DbErr};

use crate::capture::Capture;

/// What can go wrong while saving an aggregate with its events, or while delivering them.
///
/// Whatever the error, a failed save has written nothing (its transaction rolled back, or the
/// caller's transaction must be rolled back) and the aggregate still holds its pending events,
/// so the save can be tried again.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database refused a statement, or the connection failed.
    #[error("database error")]
    Database(
        #[from]
        #[source]
        DbErr,
    ),
    /// A pending event could not be turned into an envelope (its payload does not serialize);
    /// nothing was written.
    #[error("event {index} of aggregate `{aggregate_type}` `{aggregate_id}` cannot be stored")]
    Event {
        /// The aggregate's routing name.
        aggregate_type: &'static str,
        /// The aggregate's id.
        aggregate_id: String,
        /// The position of the event among the aggregate's pending events, from 0.
        index: usize,
        /// The core's error, naming the event.
        #[source]
        source: outbox_core::Error,
    },
    /// An outbox row could not be read back into an envelope (corrupt metadata, say).
    #[error("outbox row of event `{event_id}` cannot be read")]
    Row {
        /// The event id of the row.
        event_id: String,
        /// What did not parse.
        #[source]
        source: serde_json::Error,
    },
    /// The row to delete does not exist; nothing was written.
    #[error("aggregate `{aggregate_type}` `{aggregate_id}` has no row to delete")]
    NotFound {
        /// The aggregate's routing name.
        aggregate_type: &'static str,
        /// The aggregate's id.
        aggregate_id: String,
    },
    /// An earlier statement of this unit of work failed, so it can only be rolled back.
    #[error("an earlier statement of this unit of work failed; it was rolled back")]
    Aborted,
    /// Optimistic concurrency: the versioned aggregate was saved by someone else since it was
    /// loaded (or, saved as new, its id exists). Nothing was written and the aggregate keeps its
    /// events: reload it, apply the change again and save again.
    #[error(
        "aggregate `{aggregate_type}` `{aggregate_id}` was changed since it was loaded: \
         expected version {expected}, stored {}",
        stored(.actual)
    )]
    Conflict {
        /// The aggregate's routing name.
        aggregate_type: &'static str,
        /// The aggregate's id.
        aggregate_id: String,
        /// The version it was loaded at (0: saved as new).
        expected: i64,
        /// The version stored now; `None` when there is no row.
        actual: Option<i64>,
    },
    /// The `#[aggregate(version)]` field is not a column of the aggregate's entity.
    #[error(
        "the version field `{field}` of aggregate `{aggregate_type}` is not a column of its \
         entity (remove `#[sea_orm(ignore)]` from it)"
    )]
    VersionColumn {
        /// The aggregate's routing name.
        aggregate_type: &'static str,
        /// The field's name.
        field: &'static str,
    },
    /// The aggregate's version is negative, or the save would move it past what its field holds.
    #[error(
        "version {version} of aggregate `{aggregate_type}` `{aggregate_id}` cannot move forward \
         (the field holds 0..={max})"
    )]
    VersionOutOfRange {
        /// The aggregate's routing name.
        aggregate_type: &'static str,
        /// The aggregate's id.
        aggregate_id: String,
        /// The version it holds.
        version: i64,
        /// The largest version its field holds.
        max: i64,
    },
    /// Only the events of a versioned aggregate were to be written: its events are numbered
    /// from its version, which only a write of its row checks and moves. Save it with
    /// [`crate::save_in`], [`crate::Outbox::save`] or [`crate::UnitOfWork::save`].
    #[error(
        "aggregate `{aggregate_type}` `{aggregate_id}` is versioned: its row and its events are \
         written together (use `save_in`, `Outbox::save` or `UnitOfWork::save`, not \
         `write_events` or `record`)"
    )]
    VersionedRowNeeded {
        /// The aggregate's routing name.
        aggregate_type: &'static str,
        /// The aggregate's id.
        aggregate_id: String,
    },
    /// The outbox's [`Capture`] mode needs PostgreSQL's logical decoding, and this database is
    /// another (MySQL, MariaDB or SQLite); nothing was written. Use [`Capture::Table`] there.
    #[error(
        "capture mode {capture:?} needs PostgreSQL with wal_level=logical, not {backend:?}: \
         use Capture::Table on this database"
    )]
    CaptureUnsupported {
        /// The mode asked for.
        capture: Capture,
        /// The database's backend.
        backend: DbBackend,
    },
    /// The outbox's [`Capture`] mode hands events to the log relay, and the database has no
    /// pgoutput replication slot yet: events saved now would never reach it, so nothing was
    /// written. Create the slot first ([`crate::log_relay::setup`], which the log relay also
    /// runs when it starts). Retryable: the save goes through once the slot exists.
    #[error(
        "capture mode {capture:?} hands events to the log relay, but this database has no \
         pgoutput replication slot yet; create it first (log_relay::setup, or start the log relay)"
    )]
    NoLogSlot {
        /// The mode asked for.
        capture: Capture,
    },
}

/// The stored version of a conflict, for its message.
fn stored(actual: &Option<i64>) -> String {
    match actual {
        Some(version) => version.to_string(),
        None => "none (no row)".to_owned(),
    }
}

impl Error {
    /// Whether trying the same save again may succeed: a lost connection, an exhausted pool,
    /// a deadlock, a serialization failure or a busy database. Bad input and constraint
    /// violations are not retryable.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Database(err) => db_err_is_retryable(err),
            Error::NoLogSlot { .. } => true,
            Error::Event { .. }
            | Error::Row { .. }
            | Error::NotFound { .. }
            | Error::Aborted
            | Error::Conflict { .. }
            | Error::VersionColumn { .. }
            | Error::VersionOutOfRange { .. }
            | Error::VersionedRowNeeded { .. }
            | Error::CaptureUnsupported { .. } => false,
        }
    }

    /// Whether this is an optimistic-concurrency [`Error::Conflict`]: reload the aggregate,
    /// apply the change again and save again.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Conflict { .. })
    }
}

/// Whether `err` is a passing condition of the database rather than a wrong statement.
pub(crate) fn db_err_is_retryable(err: &DbErr) -> bool {
    match err {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => true,
        #[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => {
            match e.deref() {
                sea_orm::sqlx::Error::Database(db) => {
                    let code = db.code().unwrap_or_default();
                    matches!(
                        code.deref(),
                        // PostgreSQL: serialization failure, deadlock, lock not available,
                        // admin shutdown, cannot connect now.
                        "40001" | "40P01" | "55P03" | "57P01" | "57P03"
                        // MySQL/MariaDB SQLSTATE for deadlock and lock wait timeout.
                        | "40000" | "HY000"
                        // SQLite: SQLITE_BUSY, SQLITE_LOCKED and their extended codes.
                        | "5" | "6" | "261" | "517" | "262"
                    ) && !is_mysql_hy000_other(db.as_ref())
                }
                sea_orm::sqlx::Error::Io(_)
                | sea_orm::sqlx::Error::PoolTimedOut
                | sea_orm::sqlx::Error::PoolClosed
                | sea_orm::sqlx::Error::WorkerCrashed
                | sea_orm::sqlx::Error::Protocol(_) => true,
                _ => false,
            }
        }
        _ => false,
    }
}

/// MySQL reports many unrelated errors as SQLSTATE `HY000`; only lock wait timeout (1205) and
/// deadlock (1213) are worth retrying.
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
fn is_mysql_hy000_other(db: &dyn sea_orm::sqlx::error::DatabaseError) -> bool {
    #[cfg(feature = "mysql")]
    if let Some(my) = db.try_downcast_ref::<sea_orm::sqlx::mysql::MySqlDatabaseError>() {
        return !matches!(my.number(), 1205 | 1213);
    }
    #[cfg(not(feature = "mysql"))]
    let _ = db;
    false
}
