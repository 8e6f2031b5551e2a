//! How a save hands its events to a relay: outbox rows that a relay polls, outbox rows that the
//! log relay reads from PostgreSQL's write-ahead log, or no rows at all.

/// How [`crate::Outbox`] writes the events it saves; set with
/// [`crate::OutboxBuilder::capture`]. Every mode writes the same envelope and the same
/// `outbox_delivery` rows for in-process handlers, in the save's transaction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Capture {
    /// One `outbox` row per event, pending until a relay marks it published: what the table
    /// relay ([`crate::Relay`]) polls. Works on every database. The log relay reads these rows
    /// too (from the log) and marks them published after the broker acknowledged them.
    #[default]
    Table,
    /// One `outbox` row per event, written already settled (status captured): the log relay
    /// ([`crate::log_relay::LogRelay`]) publishes it from the write-ahead log, the table relay
    /// never touches it, and [`crate::Cleanup`] deletes it by age like a published row. Nothing
    /// marks rows, so the write path pays for the insert only. PostgreSQL with
    /// `wal_level=logical` only.
    LogTable,
    /// No `outbox` row: each event is a transactional logical decoding message,
    /// `pg_logical_emit_message(true, 'outbox', <the envelope as JSON>)`, emitted in the save's
    /// transaction (a rolled-back save emits nothing); the log relay publishes it. An event with
    /// in-process handlers still gets a settled row (as [`Capture::LogTable`]) instead of a
    /// message, because the delivery worker reads the envelope back from it. The cheapest write
    /// path. PostgreSQL with `wal_level=logical` only; see
    /// [`crate::log_relay::message`] for the content.
    Messages,
}
