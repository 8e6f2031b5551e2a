//! The save path, top-down: a public entry ([`crate::Outbox::save`], [`crate::UnitOfWork`],
//! [`save_in`], [`write_events`]) builds a [`plan::Plan`] (events serialized, handlers chosen,
//! the aggregate's row statement from [`entity`], the version step), and [`execute`] runs it:
//! as one statement on PostgreSQL when it fits ([`postgres`]), else statement by statement
//! ([`steps`]).

mod entity;
mod plan;
mod postgres;
mod steps;

use std::fmt;
use std::time::Duration;

use outbox_core::{AggregateRoot, DomainEvents, Envelope, Handler, HandlerRegistry};
use sea_orm::{ActiveModelTrait, ConnectionTrait, DbBackend, IntoActiveModel, ModelTrait};
use uuid::Uuid;

pub(crate) use entity::ActiveOf;
pub(crate) use plan::Plan;

use crate::capture::Capture;
use crate::error::Error;

/// The PostgreSQL channel the save path notifies on commit; the relay `LISTEN`s on it.
pub const NOTIFY_CHANNEL: &str = "outbox";

/// How a write wakes the relay on PostgreSQL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wake {
    /// `pg_notify` in the writing transaction: the caller may never tell us about its commit.
    InTransaction,
    /// Not in the transaction: the caller wakes the relay after the commit.
    AfterCommit,
}

/// What one save stored, waiting for the commit.
///
/// Hand it to [`crate::Outbox::after_commit`] once the transaction committed; drop it when the
/// transaction rolled back.
#[must_use = "after the commit, hand it to `Outbox::after_commit`, or the handlers run only when the recovery worker finds them"]
pub struct Written {
    pub(crate) envelopes: Vec<Envelope>,
    /// For each envelope, the in-process handlers a delivery row was written for.
    pub(crate) handlers: Vec<Vec<Handler>>,
    /// A versioned aggregate's version after the save.
    pub(crate) version: Option<i64>,
}

impl Written {
    pub(crate) fn empty() -> Self {
        Written {
            envelopes: Vec::new(),
            handlers: Vec::new(),
            version: None,
        }
    }

    /// The stored events, in order, with their sequence numbers.
    pub fn envelopes(&self) -> &[Envelope] {
        &self.envelopes
    }

    /// How many events were stored.
    pub fn len(&self) -> usize {
        self.envelopes.len()
    }

    /// Whether no event was stored.
    pub fn is_empty(&self) -> bool {
        self.envelopes.is_empty()
    }

    /// How many (event, in-process handler) delivery records were written.
    pub fn deliveries(&self) -> usize {
        self.handlers.iter().map(Vec::len).sum()
    }

    /// The version a versioned aggregate has once this save commits (`None`: not versioned).
    pub fn version(&self) -> Option<i64> {
        self.version
    }

    /// Appends the events of `other` (written in the same transaction, after these).
    pub(crate) fn append(&mut self, mut other: Written) {
        self.envelopes.append(&mut other.envelopes);
        self.handlers.append(&mut other.handlers);
    }

    /// After the commit: removes the stored events from `aggregate` (keeping any registered
    /// since) and moves a versioned aggregate to its new version.
    pub(crate) fn settle<A: AggregateRoot + ?Sized>(&self, aggregate: &mut A) {
        forget(aggregate.pending_events_mut(), self);
        if let Some(version) = self.version {
            aggregate.set_version(version);
        }
    }

    fn ids(&self) -> impl Iterator<Item = Uuid> + '_ {
        self.envelopes.iter().map(Envelope::id)
    }
}

impl fmt::Debug for Written {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Written")
            .field("events", &self.envelopes.len())
            .field("deliveries", &self.deliveries())
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// Removes the events of `written` from `events`, keeping any registered since.
fn forget(events: &mut DomainEvents, written: &Written) {
    let ids: std::collections::HashSet<Uuid> = written.ids().collect();
    let kept: Vec<_> = events
        .drain()
        .into_iter()
        .filter(|e| !ids.contains(&e.id()))
        .collect();
    events.restore(kept);
}

/// Saves `aggregate` (its row and its pending events) through `conn`, the caller's transaction,
/// without taking the events from it.
///
/// The row is written as [`crate::Outbox::save`] writes it: a versioned aggregate only where the
/// stored version is the one it was loaded at, moving it forward ([`Error::Conflict`]
/// otherwise); an unversioned one is upserted. The events are then written as
/// [`write_events`] describes. After the commit, pass the result to
/// [`crate::Outbox::after_commit`]: it removes the events from the aggregate and sets its new
/// version. Use this, not [`write_events`], for a versioned aggregate in a transaction of your
/// own (a consumer handler's, say).
///
/// It writes the events as [`Capture::Table`] does, whatever mode an [`crate::Outbox`] is built
/// with: use [`save_in_with`] (or [`crate::Outbox::save_in`]) for another mode.
///
/// # Errors
/// As [`crate::Outbox::save`]; roll the transaction back then.
pub async fn save_in<A, C>(
    conn: &C,
    aggregate: &A,
    handlers: &HandlerRegistry,
    grace: Duration,
) -> Result<Written, Error>
where
    A: AggregateRoot + ModelTrait + IntoActiveModel<ActiveOf<A>>,
    ActiveOf<A>: ActiveModelTrait<Entity = A::Entity>,
    C: ConnectionTrait,
{
    save_in_with(conn, aggregate, handlers, grace, Capture::Table).await
}

/// [`save_in`] under capture mode `capture` instead of [`Capture::Table`] (see [`Capture`]):
/// the events become settled rows or logical decoding messages for the log relay, and no
/// `pg_notify` is sent (no table relay needs waking).
///
/// # Errors
/// As [`save_in`], and [`Error::CaptureUnsupported`] (nothing written) for a mode other than
/// [`Capture::Table`] on a database other than PostgreSQL, [`Error::NoLogSlot`] (nothing
/// written) for a log mode while the database has no pgoutput slot.
pub async fn save_in_with<A, C>(
    conn: &C,
    aggregate: &A,
    handlers: &HandlerRegistry,
    grace: Duration,
    capture: Capture,
) -> Result<Written, Error>
where
    A: AggregateRoot + ModelTrait + IntoActiveModel<ActiveOf<A>>,
    ActiveOf<A>: ActiveModelTrait<Entity = A::Entity>,
    C: ConnectionTrait,
{
    let plan = plan_save(
        aggregate,
        handlers,
        grace,
        Wake::InTransaction,
        capture,
        conn.get_database_backend(),
    )?;
    require_slot(conn, capture).await?;
    execute(conn, plan).await
}

/// The plan of a save of `aggregate`: its row, then its events.
pub(crate) fn plan_save<A>(
    aggregate: &A,
    handlers: &HandlerRegistry,
    grace: Duration,
    wake: Wake,
    capture: Capture,
    backend: DbBackend,
) -> Result<Plan, Error>
where
    A: AggregateRoot + ModelTrait + IntoActiveModel<ActiveOf<A>>,
    ActiveOf<A>: ActiveModelTrait<Entity = A::Entity>,
{
    let plan = Plan::new(aggregate, handlers, grace, wake, capture)?;
    let entity = entity::save(aggregate, plan.version, backend)?;
    Ok(plan.with_entity(entity))
}

/// The plan of a delete of `aggregate`: its row (at its loaded version, if versioned), then its
/// events.
pub(crate) fn plan_delete<A>(
    aggregate: &A,
    handlers: &HandlerRegistry,
    grace: Duration,
    wake: Wake,
    capture: Capture,
    backend: DbBackend,
) -> Result<Plan, Error>
where
    A: AggregateRoot + ModelTrait,
{
    let plan = Plan::new(aggregate, handlers, grace, wake, capture)?;
    let entity = entity::delete(aggregate, backend)?;
    Ok(plan.with_entity(entity))
}

/// The plan of writing only `aggregate`'s events, whose row the caller writes (or that has
/// none). A versioned aggregate is refused: its row and its events go together.
pub(crate) fn plan_events<A>(
    aggregate: &A,
    handlers: &HandlerRegistry,
    grace: Duration,
    wake: Wake,
    capture: Capture,
) -> Result<Plan, Error>
where
    A: AggregateRoot + ?Sized,
{
    if A::VERSIONED {
        return Err(Error::VersionedRowNeeded {
            aggregate_type: A::AGGREGATE_TYPE,
            aggregate_id: aggregate.aggregate_id(),
        });
    }
    Plan::new(aggregate, handlers, grace, wake, capture)
}

/// Writes the pending events of `aggregate` through `conn`, without taking them from it.
///
/// This is the low-level part of [`crate::Outbox::save`] for a transaction the caller runs
/// itself, for an aggregate whose row the caller writes (or that has none). In order, on `conn`:
///
/// 1. every pending event is serialized; if one fails, nothing is written and
///    [`Error::Event`] names it;
/// 2. the aggregate's `outbox_sequence` row is bumped by the number of events (its row lock
///    orders concurrent saves of the same aggregate until the commit);
/// 3. one multi-row `INSERT` writes the outbox rows, one more writes an `outbox_delivery` row per
///    (event, in-process handler of `handlers`), due for recovery `grace` after now;
/// 4. on PostgreSQL, `pg_notify('outbox', '')` wakes the relay when the transaction commits.
///
/// That notification serializes the commits of all transactions that notify (PostgreSQL holds a
/// database-wide lock for it until the commit is flushed). [`crate::Outbox::save`],
/// [`crate::Outbox::write`] and [`crate::UnitOfWork`] leave it out and wake the relay after the
/// commit instead (see [`crate::Outbox::after_commit`]); prefer them where many transactions
/// write events at once.
///
/// On PostgreSQL steps 2 to 4 are one statement (one round trip). Saves of more than 1000 events
/// or delivery rows run them as separate statements, as MariaDB and SQLite always do.
///
/// A versioned aggregate (`#[aggregate(version)]`) is refused with
/// [`Error::VersionedRowNeeded`]: its events are numbered from its version, which only a write
/// of its row can check and move. Use [`save_in`] for it.
///
/// The contract: `conn` must be a transaction (a [`sea_orm::DatabaseTransaction`]) that also
/// carries the aggregate's own row, so that both commit or roll back together. After it
/// committed, call [`crate::Outbox::after_commit`] with the aggregate and the returned
/// [`Written`]: it removes the stored events from the aggregate and runs the handlers. If the
/// transaction rolled back, drop the `Written`: the aggregate still holds its events and can be
/// saved again (with the same event ids). On error, roll the transaction back: some statements
/// may have run.
///
/// An aggregate without pending events writes nothing and returns an empty [`Written`].
///
/// It writes the events as [`Capture::Table`] does, whatever mode an [`crate::Outbox`] is built
/// with: use [`write_events_with`] (or [`crate::Outbox::write`]) for another mode.
///
/// # Errors
/// [`Error::Event`] when an event does not serialize (nothing written),
/// [`Error::VersionedRowNeeded`] for a versioned aggregate, [`Error::Database`] when a statement
/// fails.
pub async fn write_events<A, C>(
    conn: &C,
    aggregate: &A,
    handlers: &HandlerRegistry,
    grace: Duration,
) -> Result<Written, Error>
where
    A: AggregateRoot + ?Sized,
    C: ConnectionTrait,
{
    write_events_with(conn, aggregate, handlers, grace, Capture::Table).await
}

/// [`write_events`] under capture mode `capture` instead of [`Capture::Table`] (see
/// [`Capture`]): the events become settled rows or logical decoding messages for the log relay,
/// and step 4 (`pg_notify`) is left out (no table relay needs waking).
///
/// # Errors
/// As [`write_events`], and [`Error::CaptureUnsupported`] (nothing written) for a mode other
/// than [`Capture::Table`] on a database other than PostgreSQL, [`Error::NoLogSlot`] (nothing
/// written) for a log mode while the database has no pgoutput slot.
pub async fn write_events_with<A, C>(
    conn: &C,
    aggregate: &A,
    handlers: &HandlerRegistry,
    grace: Duration,
    capture: Capture,
) -> Result<Written, Error>
where
    A: AggregateRoot + ?Sized,
    C: ConnectionTrait,
{
    let plan = plan_events(aggregate, handlers, grace, Wake::InTransaction, capture)?;
    require_slot(conn, capture).await?;
    execute(conn, plan).await
}

/// Whether `plan` runs as a single statement on `backend`, so an autocommit connection is as
/// atomic as a transaction.
pub(crate) fn is_one_statement(plan: &Plan, backend: DbBackend) -> bool {
    if backend == DbBackend::Postgres && plan.fits_one_statement() {
        return true;
    }
    plan.envelopes.is_empty()
        && matches!(
            plan.entity,
            entity::EntityWrite::Upsert(_) | entity::EntityWrite::Delete(_)
        )
}

/// Refuses a log capture mode on PostgreSQL while the database has no pgoutput replication slot
/// ([`Error::NoLogSlot`]): the log relay would never see what is saved now. One query.
pub(crate) async fn require_slot<C: ConnectionTrait>(
    conn: &C,
    capture: Capture,
) -> Result<(), Error> {
    if capture == Capture::Table || conn.get_database_backend() != DbBackend::Postgres {
        return Ok(());
    }
    let found = conn
        .query_one_raw(sea_orm::Statement::from_string(
            DbBackend::Postgres,
            "SELECT 1 FROM pg_replication_slots \
             WHERE database = current_database() AND plugin = 'pgoutput'",
        ))
        .await?
        .is_some();
    if found {
        Ok(())
    } else {
        Err(Error::NoLogSlot { capture })
    }
}

/// Refuses a log capture mode on a database without logical decoding, before anything is
/// written.
pub(crate) fn check_capture(plan: &Plan, backend: DbBackend) -> Result<(), Error> {
    if plan.capture != Capture::Table && backend != DbBackend::Postgres {
        return Err(Error::CaptureUnsupported {
            capture: plan.capture,
            backend,
        });
    }
    Ok(())
}

/// Runs `plan` through `conn`: one statement on PostgreSQL when it fits, else statement by
/// statement (then `conn` must be a transaction, unless [`is_one_statement`]).
pub(crate) async fn execute<C: ConnectionTrait>(
    conn: &C,
    mut plan: Plan,
) -> Result<Written, Error> {
    let backend = conn.get_database_backend();
    check_capture(&plan, backend)?;
    if plan.is_empty() {
        return Ok(Written::empty());
    }
    if backend == DbBackend::Postgres && plan.fits_one_statement() {
        let Some(last) = postgres::run(conn, &plan).await? else {
            return Err(steps::conflict(conn, &plan).await);
        };
        let first = last - plan.count() + 1;
        plan.sequenced(first);
    } else {
        steps::run(conn, &mut plan).await?;
    }
    tracing::debug!(
        aggregate_type = plan.aggregate_type,
        aggregate_id = %plan.aggregate_id,
        events = plan.envelopes.len(),
        first_sequence = plan.envelopes.first().map(Envelope::sequence),
        version = plan.version.map(|v| v.next),
        "aggregate saved"
    );
    Ok(Written {
        version: plan.version.map(|v| v.next),
        envelopes: plan.envelopes,
        handlers: plan.handlers,
    })
}
