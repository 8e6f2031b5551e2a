//! What one save writes, decided before the first statement: the serialized events, the
//! in-process handlers that get a delivery row, the aggregate's row, and where the events'
//! sequence numbers come from.

use std::time::Duration;

use outbox_core::{AggregateRoot, Envelope, Handler, HandlerRegistry};

use super::Wake;
use super::entity::EntityWrite;
use crate::capture::Capture;
use crate::error::Error;
use crate::log_relay::message;
use crate::status::EventStatus;
use crate::time;

/// Rows per multi-row `INSERT`: well under every backend's bind-parameter limit (SQLite 32766,
/// PostgreSQL and MySQL 65535) with the outbox's 16 columns.
pub(crate) const ROWS_PER_INSERT: usize = 1000;

/// A versioned aggregate's version before and after the save.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct VersionStep {
    /// The version it was loaded at (0: new).
    pub(crate) loaded: i64,
    /// The version the save moves it to: one more per event, or one more when it has none.
    pub(crate) next: i64,
}

/// One save, ready to run.
pub(crate) struct Plan {
    pub(crate) aggregate_type: &'static str,
    pub(crate) aggregate_id: String,
    /// The events, in order; their sequence numbers are filled in when they are known.
    pub(crate) envelopes: Vec<Envelope>,
    /// For each envelope, the in-process handlers it gets a delivery row for.
    pub(crate) handlers: Vec<Vec<Handler>>,
    pub(crate) entity: EntityWrite,
    /// `Some` for a versioned aggregate: the events are numbered from its version.
    pub(crate) version: Option<VersionStep>,
    pub(crate) now: i64,
    /// When the recovery worker may run a delivery the immediate dispatch has not.
    pub(crate) due: i64,
    pub(crate) wake: Wake,
    /// How the events are handed to a relay.
    pub(crate) capture: Capture,
    /// For each envelope under [`Capture::Messages`] without in-process handlers: its message
    /// content after the sequence ([`message::encode_rest`]); it is emitted, not stored. `None`:
    /// the event gets an outbox row.
    pub(crate) messages: Vec<Option<String>>,
}

impl Plan {
    /// Serializes `aggregate`'s pending events (nothing is written when one fails) and works out
    /// its version step. The aggregate's row is left alone until [`Plan::with_entity`].
    pub(crate) fn new<A>(
        aggregate: &A,
        handlers: &HandlerRegistry,
        grace: Duration,
        wake: Wake,
        capture: Capture,
    ) -> Result<Plan, Error>
    where
        A: AggregateRoot + ?Sized,
    {
        let aggregate_type = A::AGGREGATE_TYPE;
        let aggregate_id = aggregate.aggregate_id();
        let pending = aggregate.pending_events().as_slice();
        let mut envelopes = Vec::with_capacity(pending.len());
        for (index, event) in pending.iter().enumerate() {
            let mut envelope = event
                .to_envelope(aggregate_type, &aggregate_id, 0)
                .map_err(|source| Error::Event {
                    aggregate_type,
                    aggregate_id: aggregate_id.clone(),
                    index,
                    source,
                })?;
            // With the `opentelemetry` feature, the trace the save runs in.
            outbox_core::trace::stamp_current(&mut envelope);
            envelopes.push(envelope);
        }
        let handlers: Vec<Vec<Handler>> = envelopes
            .iter()
            .map(|e| handlers.local(e.event_name()).copied().collect())
            .collect();
        let mut messages = Vec::with_capacity(envelopes.len());
        let events = pending.iter().zip(&envelopes).zip(&handlers);
        for (index, ((event, envelope), hs)) in events.enumerate() {
            if capture != Capture::Messages || !hs.is_empty() {
                messages.push(None);
                continue;
            }
            let rest = message::encode_rest(envelope).map_err(|source| Error::Event {
                aggregate_type,
                aggregate_id: aggregate_id.clone(),
                index,
                source: outbox_core::Error::Serialize {
                    event: event.name(),
                    source,
                },
            })?;
            messages.push(Some(rest));
        }
        let version = match aggregate.version().filter(|_| A::VERSIONED) {
            None => None,
            Some(loaded) => {
                let moves = i64::try_from(envelopes.len().max(1)).unwrap_or(i64::MAX);
                let next = loaded.checked_add(moves).filter(|n| *n <= A::MAX_VERSION);
                match next {
                    Some(next) if loaded >= 0 => Some(VersionStep { loaded, next }),
                    _ => {
                        return Err(Error::VersionOutOfRange {
                            aggregate_type,
                            aggregate_id,
                            version: loaded,
                            max: A::MAX_VERSION,
                        });
                    }
                }
            }
        };
        let now = time::now_micros();
        let due = now.saturating_add(i64::try_from(grace.as_micros()).unwrap_or(i64::MAX));
        Ok(Plan {
            aggregate_type,
            aggregate_id,
            envelopes,
            handlers,
            entity: EntityWrite::None,
            version,
            now,
            due,
            wake,
            capture,
            messages,
        })
    }

    /// Sets what the save does to the aggregate's own row.
    pub(crate) fn with_entity(mut self, entity: EntityWrite) -> Self {
        self.entity = entity;
        self
    }

    /// How many events it writes.
    pub(crate) fn count(&self) -> i64 {
        i64::try_from(self.envelopes.len()).unwrap_or(i64::MAX)
    }

    /// How many delivery rows it writes.
    pub(crate) fn deliveries(&self) -> usize {
        self.handlers.iter().map(Vec::len).sum()
    }

    /// Whether it writes nothing at all.
    pub(crate) fn is_empty(&self) -> bool {
        self.envelopes.is_empty() && matches!(self.entity, EntityWrite::None)
    }

    /// Whether it runs as one statement on PostgreSQL: it has events, both multi-row inserts fit
    /// in one statement, and its row write (if any) can be a CTE of it.
    pub(crate) fn fits_one_statement(&self) -> bool {
        !self.envelopes.is_empty()
            && self.envelopes.len() <= ROWS_PER_INSERT
            && self.deliveries() <= ROWS_PER_INSERT
            && !self.entity.is_delete()
    }

    /// The status of the outbox rows it writes: pending for the table relay, captured for the
    /// log relay.
    pub(crate) fn row_status(&self) -> EventStatus {
        match self.capture {
            Capture::Table => EventStatus::Pending,
            Capture::LogTable | Capture::Messages => EventStatus::Captured,
        }
    }

    /// Whether the event at `index` gets an outbox row (else it is emitted as a message).
    pub(crate) fn has_row(&self, index: usize) -> bool {
        !matches!(self.messages.get(index), Some(Some(_)))
    }

    /// Whether a `pg_notify` in the transaction should wake the table relay: only under
    /// [`Wake::InTransaction`], and only when the table relay has rows to poll.
    pub(crate) fn notifies(&self) -> bool {
        self.wake == Wake::InTransaction && self.capture == Capture::Table
    }

    /// The events numbered from `first`.
    pub(crate) fn sequenced(&mut self, first: i64) {
        let envelopes = std::mem::take(&mut self.envelopes);
        self.envelopes = envelopes
            .into_iter()
            .zip(first..)
            .map(|(e, sequence)| e.with_sequence(sequence))
            .collect();
    }
}
