//! Writing an aggregate's pending events: sequence numbers, outbox rows, delivery records.

use std::fmt;
use std::time::Duration;

use outbox_core::{AggregateRoot, DomainEvents, Envelope, Handler, HandlerRegistry};
use sea_orm::sea_query::{Expr, OnConflict, Query};
use sea_orm::{
    ActiveModelTrait, ConnectionTrait, DbBackend, EntityTrait, IdenStatic, IntoActiveModel,
    Iterable, ModelTrait, PrimaryKeyToColumn, QueryTrait, Statement,
};
use uuid::Uuid;

use crate::error::Error;
use crate::schema::{Outbox as O, OutboxDelivery as D};
use crate::time;

/// The PostgreSQL channel the save path notifies on commit; the relay `LISTEN`s on it.
pub const NOTIFY_CHANNEL: &str = "outbox";

/// Rows per multi-row `INSERT`: well under every backend's bind-parameter limit (SQLite 32766,
/// PostgreSQL and MySQL 65535) with the outbox's 16 columns.
const ROWS_PER_INSERT: usize = 1000;

/// The events one [`write_events`] call stored, waiting for the commit.
///
/// Hand it to [`crate::Outbox::after_commit`] once the transaction committed; drop it when the
/// transaction rolled back.
#[must_use = "after the commit, hand it to `Outbox::after_commit`, or the handlers run only when the recovery worker finds them"]
pub struct Written {
    pub(crate) envelopes: Vec<Envelope>,
    /// For each envelope, the in-process handlers a delivery row was written for.
    pub(crate) handlers: Vec<Vec<Handler>>,
}

impl Written {
    pub(crate) fn empty() -> Self {
        Written {
            envelopes: Vec::new(),
            handlers: Vec::new(),
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

    /// Appends the events of `other` (written in the same transaction, after these).
    pub(crate) fn append(&mut self, mut other: Written) {
        self.envelopes.append(&mut other.envelopes);
        self.handlers.append(&mut other.handlers);
    }

    pub(crate) fn ids(&self) -> impl Iterator<Item = Uuid> + '_ {
        self.envelopes.iter().map(Envelope::id)
    }
}

impl fmt::Debug for Written {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Written")
            .field("events", &self.envelopes.len())
            .field("deliveries", &self.deliveries())
            .finish_non_exhaustive()
    }
}

/// Writes the pending events of `aggregate` through `conn`, without taking them from it.
///
/// This is the low-level part of [`crate::Outbox::save`] for a transaction the caller runs
/// itself. In order, on `conn`:
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
/// On PostgreSQL steps 2 to 4 are one statement (one round trip): the `outbox_sequence` upsert
/// is a data-modifying CTE whose returned last sequence numbers the outbox rows, so the row lock
/// is still held before any outbox row gets its position. Saves of more than 1000 events or
/// delivery rows run them as separate statements, as MariaDB and SQLite always do.
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
/// # Errors
/// [`Error::Event`] when an event does not serialize (nothing written), [`Error::Database`] when a
/// statement fails.
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
    write(conn, None, aggregate, handlers, grace, Wake::InTransaction).await
}

/// How a write wakes the relay on PostgreSQL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wake {
    /// `pg_notify` in the writing transaction: the caller may never tell us about its commit.
    InTransaction,
    /// Not in the transaction: the caller wakes the relay after the commit.
    AfterCommit,
}

/// Whether a save of `aggregate` fits the single-statement path on PostgreSQL.
pub(crate) fn fits_one_statement<A>(aggregate: &A, handlers: &HandlerRegistry) -> bool
where
    A: AggregateRoot + ?Sized,
{
    let pending = aggregate.pending_events().as_slice();
    let deliveries: usize = pending
        .iter()
        .map(|e| handlers.local(e.name()).count())
        .sum();
    !pending.is_empty() && fits(pending.len(), deliveries)
}

/// The one rule for the single-statement path: both multi-row inserts fit in one statement.
fn fits(events: usize, deliveries: usize) -> bool {
    events <= ROWS_PER_INSERT && deliveries <= ROWS_PER_INSERT
}

/// [`write_events`]; on PostgreSQL, `entity` (the aggregate's own upsert, built for PostgreSQL)
/// runs as the first part of the same statement. Off that path it runs first, on its own, so
/// `conn` must then be a transaction; `Outbox::save` passes an autocommit connection only when
/// [`fits_one_statement`] holds.
pub(crate) async fn write<A, C>(
    conn: &C,
    entity: Option<Statement>,
    aggregate: &A,
    handlers: &HandlerRegistry,
    grace: Duration,
    wake: Wake,
) -> Result<Written, Error>
where
    A: AggregateRoot + ?Sized,
    C: ConnectionTrait,
{
    let pending = aggregate.pending_events().as_slice();
    if pending.is_empty() {
        return Ok(Written::empty());
    }
    let aggregate_type = A::AGGREGATE_TYPE;
    let aggregate_id = aggregate.aggregate_id();
    // Serialize everything before the first write; sequence numbers are filled in below.
    let mut envelopes = Vec::with_capacity(pending.len());
    for (index, event) in pending.iter().enumerate() {
        let envelope = event
            .to_envelope(aggregate_type, &aggregate_id, 0)
            .map_err(|source| Error::Event {
                aggregate_type,
                aggregate_id: aggregate_id.clone(),
                index,
                source,
            })?;
        envelopes.push(envelope);
    }
    let count = i64::try_from(envelopes.len()).unwrap_or(i64::MAX);
    let handlers: Vec<Vec<Handler>> = envelopes
        .iter()
        .map(|e| handlers.local(e.event_name()).copied().collect())
        .collect();
    let now = time::now_micros();
    let due = now.saturating_add(i64::try_from(grace.as_micros()).unwrap_or(i64::MAX));
    let deliveries: usize = handlers.iter().map(Vec::len).sum();
    let one_statement =
        conn.get_database_backend() == DbBackend::Postgres && fits(envelopes.len(), deliveries);
    let entity = match entity {
        // Never dropped: off the single-statement path the entity's write goes first.
        Some(statement) if !one_statement => {
            conn.execute_raw(statement).await?;
            None
        }
        entity => entity,
    };
    let (first, envelopes) = if one_statement {
        // Sequence bump, outbox rows, delivery rows (and NOTIFY) in one round trip.
        let last = write_postgres(
            conn,
            entity,
            aggregate_type,
            &aggregate_id,
            &envelopes,
            &handlers,
            now,
            due,
            wake,
        )
        .await?;
        let first = last - count + 1;
        (first, resequence_all(envelopes, first))
    } else {
        let last = bump_sequence(conn, aggregate_type, &aggregate_id, count).await?;
        let first = last - count + 1;
        let envelopes = resequence_all(envelopes, first);
        insert_outbox_rows(conn, &envelopes, now).await?;
        insert_delivery_rows(conn, &envelopes, &handlers, now, due).await?;
        if conn.get_database_backend() == DbBackend::Postgres && wake == Wake::InTransaction {
            conn.execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT pg_notify($1, '')",
                [NOTIFY_CHANNEL.into()],
            ))
            .await?;
        }
        (first, envelopes)
    };
    tracing::debug!(
        aggregate_type,
        aggregate_id = %aggregate_id,
        events = envelopes.len(),
        first_sequence = first,
        "events written to the outbox"
    );
    Ok(Written {
        envelopes,
        handlers,
    })
}

fn resequence_all(envelopes: Vec<Envelope>, first: i64) -> Vec<Envelope> {
    envelopes
        .into_iter()
        .zip(first..)
        .map(|(e, sequence)| resequence(e, sequence))
        .collect()
}

fn resequence(envelope: Envelope, sequence: i64) -> Envelope {
    Envelope::builder(
        envelope.event_name(),
        envelope.aggregate_type(),
        envelope.aggregate_id(),
    )
    .id(envelope.id())
    .version(envelope.event_version())
    .sequence(sequence)
    .occurred_at(envelope.occurred_at())
    .payload(envelope.payload())
    .metadata(envelope.metadata().clone())
    .topic(envelope.topic().map(str::to_owned))
    .build()
}

/// Adds `count` to the aggregate's last sequence number and returns the new last one.
async fn bump_sequence<C: ConnectionTrait>(
    conn: &C,
    aggregate_type: &str,
    aggregate_id: &str,
    count: i64,
) -> Result<i64, Error> {
    let backend = conn.get_database_backend();
    let values = [aggregate_type.into(), aggregate_id.into(), count.into()];
    let row = match backend {
        DbBackend::MySql => {
            conn.execute_raw(Statement::from_sql_and_values(
                backend,
                "INSERT INTO outbox_sequence (aggregatetype, aggregateid, last_sequence) \
                 VALUES (?, ?, ?) \
                 ON DUPLICATE KEY UPDATE last_sequence = last_sequence + VALUES(last_sequence)",
                values,
            ))
            .await?;
            conn.query_one_raw(Statement::from_sql_and_values(
                backend,
                "SELECT last_sequence FROM outbox_sequence \
                 WHERE aggregatetype = ? AND aggregateid = ?",
                [aggregate_type.into(), aggregate_id.into()],
            ))
            .await?
        }
        DbBackend::Postgres => {
            conn.query_one_raw(Statement::from_sql_and_values(
                backend,
                "INSERT INTO outbox_sequence (aggregatetype, aggregateid, last_sequence) \
                 VALUES ($1, $2, $3) \
                 ON CONFLICT (aggregatetype, aggregateid) DO UPDATE \
                 SET last_sequence = outbox_sequence.last_sequence + EXCLUDED.last_sequence \
                 RETURNING last_sequence",
                values,
            ))
            .await?
        }
        _ => {
            conn.query_one_raw(Statement::from_sql_and_values(
                backend,
                "INSERT INTO outbox_sequence (aggregatetype, aggregateid, last_sequence) \
                 VALUES (?, ?, ?) \
                 ON CONFLICT (aggregatetype, aggregateid) DO UPDATE \
                 SET last_sequence = outbox_sequence.last_sequence + excluded.last_sequence \
                 RETURNING last_sequence",
                values,
            ))
            .await?
        }
    };
    let row = row.ok_or_else(|| {
        sea_orm::DbErr::RecordNotFound(format!(
            "outbox_sequence row of {aggregate_type} {aggregate_id}"
        ))
    })?;
    Ok(row.try_get_by_index::<i64>(0)?)
}

/// The metadata column of `e`: `NULL` when it has none, else its JSON.
fn metadata_json(e: &Envelope) -> Result<Option<String>, Error> {
    if e.metadata().is_empty() {
        return Ok(None);
    }
    serde_json::to_string(e.metadata())
        .map(Some)
        .map_err(|source| Error::Row {
            event_id: e.id().to_string(),
            source,
        })
}

/// PostgreSQL: the whole write in one statement, returning the aggregate's new last sequence.
///
/// The `outbox_sequence` upsert is a data-modifying CTE (`s`); the outbox insert (`o`) reads its
/// returned `last_sequence` to number its rows, so no outbox row (and no `position` from the
/// identity sequence) exists before the upsert has taken, or waited for, the sequence row lock:
/// concurrent saves of one aggregate stay serialized exactly as with separate statements. The
/// main `SELECT` reads `s` (and, under [`Wake::InTransaction`], calls `pg_notify` once,
/// delivered at commit); `o` and
/// the delivery insert `d` are not read by it, so PostgreSQL runs them to completion at the end
/// of the statement. The events' sequence numbers are `last - count + k` for k = 1..=count, the
/// same ones the caller computes from the returned `last`.
#[allow(clippy::too_many_arguments)]
async fn write_postgres<C: ConnectionTrait>(
    conn: &C,
    entity: Option<Statement>,
    aggregate_type: &str,
    aggregate_id: &str,
    envelopes: &[Envelope],
    handlers: &[Vec<Handler>],
    now: i64,
    due: i64,
    wake: Wake,
) -> Result<i64, Error> {
    use std::fmt::Write as _;

    let count = i64::try_from(envelopes.len()).unwrap_or(i64::MAX);
    // The entity's own upsert, when given, is the first CTE; its parameters come first.
    let (mut sql, mut values) = match entity {
        Some(Statement {
            sql,
            values: Some(values),
            ..
        }) => (format!("WITH e AS ({sql}), "), values.0),
        Some(Statement { sql, .. }) => (format!("WITH e AS ({sql}), "), Vec::new()),
        None => ("WITH ".to_owned(), Vec::new()),
    };
    let p = values.len();
    let (p1, p2, p3, p4, p5) = (p + 1, p + 2, p + 3, p + 4, p + 5);
    values.extend([
        aggregate_type.into(),
        aggregate_id.into(),
        count.into(),
        now.into(),
        due.into(),
    ]);
    let _ = write!(
        sql,
        "s AS (\
         INSERT INTO outbox_sequence (aggregatetype, aggregateid, last_sequence) \
         VALUES (${p1}::varchar, ${p2}::varchar, ${p3}::bigint) \
         ON CONFLICT (aggregatetype, aggregateid) DO UPDATE \
         SET last_sequence = outbox_sequence.last_sequence + EXCLUDED.last_sequence \
         RETURNING last_sequence), \
         o AS (\
         INSERT INTO outbox (id, aggregatetype, aggregateid, type, version, sequence, payload, \
         metadata, topic, shard, occurred_at, created_at, status, attempts, next_attempt_at) \
         SELECT v.id, ${p1}::varchar, ${p2}::varchar, v.type, v.version, \
         s.last_sequence - ${p3}::bigint + v.k, v.payload, v.metadata, v.topic, v.shard, \
         v.occurred_at, ${p4}::bigint, 0, 0, ${p4}::bigint \
         FROM s CROSS JOIN (VALUES ",
    );
    for (k, e) in envelopes.iter().enumerate() {
        let n = values.len();
        if k > 0 {
            sql.push_str(", ");
        }
        // Writing to a String cannot fail.
        let _ = write!(
            sql,
            "({}::bigint, ${}::varchar, ${}::varchar, ${}::integer, ${}::text, ${}::text, \
             ${}::varchar, ${}::smallint, ${}::bigint)",
            k + 1,
            n + 1,
            n + 2,
            n + 3,
            n + 4,
            n + 5,
            n + 6,
            n + 7,
            n + 8,
        );
        values.extend([
            e.id().to_string().into(),
            e.event_name().into(),
            i32::try_from(e.event_version()).unwrap_or(i32::MAX).into(),
            e.payload().into(),
            metadata_json(e)?.into(),
            e.topic().map(str::to_owned).into(),
            crate::shard_of(e.aggregate_type(), e.aggregate_id()).into(),
            time::to_micros(e.occurred_at()).into(),
        ]);
    }
    sql.push_str(
        ") AS v(k, id, type, version, payload, metadata, topic, shard, occurred_at) \
         ORDER BY v.k)",
    );
    let mut first_delivery = true;
    for (e, hs) in envelopes.iter().zip(handlers) {
        for h in hs {
            let n = values.len();
            if first_delivery {
                sql.push_str(
                    ", d AS (INSERT INTO outbox_delivery \
                     (event_id, handler, status, attempts, next_attempt_at, created_at) \
                     SELECT v.event_id, v.handler, 0, 0, $",
                );
                let _ = write!(sql, "{p5}::bigint, ${p4}::bigint FROM (VALUES ");
                first_delivery = false;
            } else {
                sql.push_str(", ");
            }
            let _ = write!(sql, "(${}::varchar, ${}::varchar)", n + 1, n + 2);
            values.extend([e.id().to_string().into(), h.id().into()]);
        }
    }
    if !first_delivery {
        sql.push_str(") AS v(event_id, handler))");
    }
    if wake == Wake::InTransaction {
        values.push(NOTIFY_CHANNEL.into());
        let _ = write!(
            sql,
            " SELECT s.last_sequence, pg_notify(${}, '') FROM s",
            values.len()
        );
    } else {
        sql.push_str(" SELECT s.last_sequence FROM s");
    }
    let row = conn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            sql,
            values,
        ))
        .await?
        .ok_or_else(|| {
            sea_orm::DbErr::RecordNotFound(format!(
                "outbox_sequence row of {aggregate_type} {aggregate_id}"
            ))
        })?;
    Ok(row.try_get_by_index::<i64>(0)?)
}

async fn insert_outbox_rows<C: ConnectionTrait>(
    conn: &C,
    envelopes: &[Envelope],
    now: i64,
) -> Result<(), Error> {
    for chunk in envelopes.chunks(ROWS_PER_INSERT) {
        let mut insert = Query::insert()
            .into_table(O::Table)
            .columns([
                O::Id,
                O::AggregateType,
                O::AggregateId,
                O::EventType,
                O::Version,
                O::Sequence,
                O::Payload,
                O::Metadata,
                O::Topic,
                O::Shard,
                O::OccurredAt,
                O::CreatedAt,
                O::Status,
                O::Attempts,
                O::NextAttemptAt,
            ])
            .to_owned();
        for e in chunk {
            let metadata = metadata_json(e)?;
            insert.values_panic([
                Expr::val(e.id().to_string()),
                Expr::val(e.aggregate_type()),
                Expr::val(e.aggregate_id()),
                Expr::val(e.event_name()),
                Expr::val(i32::try_from(e.event_version()).unwrap_or(i32::MAX)),
                Expr::val(e.sequence()),
                Expr::val(e.payload()),
                Expr::val(metadata),
                Expr::val(e.topic().map(str::to_owned)),
                Expr::val(crate::shard_of(e.aggregate_type(), e.aggregate_id())),
                Expr::val(time::to_micros(e.occurred_at())),
                Expr::val(now),
                Expr::val(0i16),
                Expr::val(0i32),
                Expr::val(now),
            ]);
        }
        conn.execute(&insert).await?;
    }
    Ok(())
}

async fn insert_delivery_rows<C: ConnectionTrait>(
    conn: &C,
    envelopes: &[Envelope],
    handlers: &[Vec<Handler>],
    now: i64,
    due: i64,
) -> Result<(), Error> {
    let rows: Vec<(String, &'static str)> = envelopes
        .iter()
        .zip(handlers)
        .flat_map(|(e, hs)| hs.iter().map(move |h| (e.id().to_string(), h.id())))
        .collect();
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        let mut insert = Query::insert()
            .into_table(D::Table)
            .columns([
                D::EventId,
                D::Handler,
                D::Status,
                D::Attempts,
                D::NextAttemptAt,
                D::CreatedAt,
            ])
            .to_owned();
        for (event_id, handler) in chunk {
            insert.values_panic([
                Expr::val(event_id.as_str()),
                Expr::val(*handler),
                Expr::val(0i16),
                Expr::val(0i32),
                Expr::val(due),
                Expr::val(now),
            ]);
        }
        conn.execute(&insert).await?;
    }
    Ok(())
}

/// The active model of a model type.
pub(crate) type ActiveOf<M> = <<M as ModelTrait>::Entity as EntityTrait>::ActiveModel;

/// Inserts `model`'s row, or updates every non-key column of the row with its primary key.
pub(crate) async fn upsert_model<M, C>(conn: &C, model: &M) -> Result<(), Error>
where
    M: ModelTrait + IntoActiveModel<ActiveOf<M>>,
    ActiveOf<M>: ActiveModelTrait<Entity = M::Entity>,
    C: ConnectionTrait,
{
    conn.execute_raw(upsert_statement(model, conn.get_database_backend()))
        .await?;
    Ok(())
}

/// The statement [`upsert_model`] runs, built for `backend`.
pub(crate) fn upsert_statement<M>(model: &M, backend: DbBackend) -> Statement
where
    M: ModelTrait + IntoActiveModel<ActiveOf<M>>,
    ActiveOf<M>: ActiveModelTrait<Entity = M::Entity>,
{
    let keys: Vec<_> = <<M::Entity as EntityTrait>::PrimaryKey as Iterable>::iter()
        .map(PrimaryKeyToColumn::into_column)
        .collect();
    let others: Vec<_> = <<M::Entity as EntityTrait>::Column as Iterable>::iter()
        .filter(|c| !keys.iter().any(|k| k.as_str() == c.as_str()))
        .collect();
    let mut on_conflict = OnConflict::columns(keys.clone());
    if others.is_empty() {
        on_conflict.do_nothing_on(keys);
    } else {
        on_conflict.update_columns(others);
    }
    M::Entity::insert(model.clone().into_active_model())
        .on_conflict(on_conflict)
        .build(backend)
}

/// Deletes `aggregate`'s row, or fails with [`Error::NotFound`] when there is none.
pub(crate) async fn delete_existing<A, C>(conn: &C, aggregate: &A) -> Result<(), Error>
where
    A: AggregateRoot + ModelTrait + IntoActiveModel<ActiveOf<A>>,
    ActiveOf<A>: ActiveModelTrait<Entity = A::Entity>,
    C: ConnectionTrait,
{
    if delete_model(conn, aggregate).await? {
        Ok(())
    } else {
        Err(Error::NotFound {
            aggregate_type: A::AGGREGATE_TYPE,
            aggregate_id: aggregate.aggregate_id(),
        })
    }
}

/// Deletes `model`'s row; `false` when there was none.
pub(crate) async fn delete_model<M, C>(conn: &C, model: &M) -> Result<bool, Error>
where
    M: ModelTrait + IntoActiveModel<ActiveOf<M>>,
    ActiveOf<M>: ActiveModelTrait<Entity = M::Entity>,
    C: ConnectionTrait,
{
    let result = M::Entity::delete(model.clone().into_active_model())
        .exec(conn)
        .await?;
    Ok(result.rows_affected > 0)
}

/// Removes the events of `written` from `events`, keeping any registered since.
pub(crate) fn forget_written(events: &mut DomainEvents, written: &Written) {
    let ids: std::collections::HashSet<Uuid> = written.ids().collect();
    let kept: Vec<_> = events
        .drain()
        .into_iter()
        .filter(|e| !ids.contains(&e.id()))
        .collect();
    events.restore(kept);
}
