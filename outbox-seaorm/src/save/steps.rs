//! Every backend: a save as a few statements, in the caller's transaction.
//!
//! 1. the aggregate's row (upsert, delete, or a versioned insert, update or delete);
//! 2. the events' sequence numbers: the `outbox_sequence` row bumped (unversioned), or the
//!    version they start from (versioned; a save without events counts in
//!    `outbox_version_offset` instead, so the next events' sequence has no gap);
//! 3. the outbox rows and the delivery rows, in multi-row inserts;
//! 4. on PostgreSQL under [`crate::Capture::Messages`], the logical decoding messages of the
//!    events without a row, in event order;
//! 5. on PostgreSQL, under [`super::Wake::InTransaction`] and [`crate::Capture::Table`], `pg_notify`.

use outbox_core::Handler;
use sea_orm::sea_query::{Expr, Query};
use sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement};

use super::NOTIFY_CHANNEL;
use super::entity::{EntityWrite, Guard, is_mysql_duplicate, stored_version};
use super::plan::{Plan, ROWS_PER_INSERT};
use crate::codec;
use crate::error::Error;
use crate::log_relay::MESSAGE_PREFIX;
use crate::schema::{Outbox as O, OutboxDelivery as D};
use crate::sql::statement;
use crate::status::DeliveryStatus;

/// Runs `plan` statement by statement through `conn`, which must be a transaction when more
/// than one statement runs.
pub(crate) async fn run<C: ConnectionTrait>(conn: &C, plan: &mut Plan) -> Result<(), Error> {
    write_entity(conn, plan).await?;
    if plan.envelopes.is_empty() {
        if plan.version.is_some() && plan.entity.moves_version() {
            // The version moves, the sequence does not.
            shift_offset(conn, plan.aggregate_type, &plan.aggregate_id, 1).await?;
        }
        forget_deleted(conn, plan).await?;
        return Ok(());
    }
    let count = plan.count();
    let first = match plan.version {
        None => {
            bump_sequence(conn, plan.aggregate_type, &plan.aggregate_id, count).await? - count + 1
        }
        Some(version) => {
            version.loaded
                - version_minus_sequence(conn, plan.aggregate_type, &plan.aggregate_id).await?
                + 1
        }
    };
    plan.sequenced(first);
    forget_deleted(conn, plan).await?;
    insert_outbox_rows(conn, plan).await?;
    insert_delivery_rows(conn, &plan.envelopes, &plan.handlers, plan.now, plan.due).await?;
    emit_messages(conn, plan).await?;
    if conn.get_database_backend() == DbBackend::Postgres && plan.notifies() {
        conn.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pg_notify($1, '')",
            [NOTIFY_CHANNEL.into()],
        ))
        .await?;
    }
    Ok(())
}

async fn write_entity<C: ConnectionTrait>(conn: &C, plan: &Plan) -> Result<(), Error> {
    match &plan.entity {
        EntityWrite::None => Ok(()),
        EntityWrite::Upsert(statement) => {
            conn.execute_raw(statement.clone()).await?;
            Ok(())
        }
        EntityWrite::Delete(statement) => {
            if conn.execute_raw(statement.clone()).await?.rows_affected() == 0 {
                return Err(Error::NotFound {
                    aggregate_type: plan.aggregate_type,
                    aggregate_id: plan.aggregate_id.clone(),
                });
            }
            Ok(())
        }
        EntityWrite::Guarded {
            statement, kind, ..
        } => {
            let changed = match conn.execute_raw(statement.clone()).await {
                Ok(result) => result.rows_affected() > 0,
                Err(err) if *kind == Guard::Insert && is_mysql_duplicate(&err) => false,
                Err(err) => return Err(err.into()),
            };
            if changed {
                Ok(())
            } else {
                Err(conflict(conn, plan).await)
            }
        }
    }
}

/// The error of a versioned write that changed no row: a conflict naming the stored version,
/// or, for a delete of a row that is gone, [`Error::NotFound`].
pub(crate) async fn conflict<C: ConnectionTrait>(conn: &C, plan: &Plan) -> Error {
    let (
        EntityWrite::Guarded {
            kind, read_version, ..
        },
        Some(version),
    ) = (&plan.entity, plan.version)
    else {
        return Error::Database(DbErr::Custom("a versioned save changed no row".to_owned()));
    };
    let actual = match stored_version(conn, read_version).await {
        Ok(actual) => actual,
        Err(err) => return Error::Database(err),
    };
    if *kind == Guard::Delete && actual.is_none() {
        return Error::NotFound {
            aggregate_type: plan.aggregate_type,
            aggregate_id: plan.aggregate_id.clone(),
        };
    }
    tracing::debug!(
        aggregate_type = plan.aggregate_type,
        aggregate_id = %plan.aggregate_id,
        expected = version.loaded,
        actual,
        "versioned save refused: the stored version moved"
    );
    Error::Conflict {
        aggregate_type: plan.aggregate_type,
        aggregate_id: plan.aggregate_id.clone(),
        expected: version.loaded,
        actual,
    }
}

/// Adds `count` to the aggregate's last sequence number and returns the new last one.
async fn bump_sequence<C: ConnectionTrait>(
    conn: &C,
    aggregate_type: &str,
    aggregate_id: &str,
    count: i64,
) -> Result<i64, Error> {
    let backend = conn.get_database_backend();
    let values = vec![aggregate_type.into(), aggregate_id.into(), count.into()];
    let row = if backend == DbBackend::MySql {
        conn.execute_raw(statement(
            backend,
            "INSERT INTO outbox_sequence (aggregatetype, aggregateid, last_sequence) \
             VALUES (?, ?, ?) \
             ON DUPLICATE KEY UPDATE last_sequence = last_sequence + VALUES(last_sequence)",
            values,
        ))
        .await?;
        conn.query_one_raw(statement(
            backend,
            "SELECT last_sequence FROM outbox_sequence \
             WHERE aggregatetype = ? AND aggregateid = ?",
            vec![aggregate_type.into(), aggregate_id.into()],
        ))
        .await?
    } else {
        conn.query_one_raw(statement(
            backend,
            "INSERT INTO outbox_sequence (aggregatetype, aggregateid, last_sequence) \
             VALUES (?, ?, ?) \
             ON CONFLICT (aggregatetype, aggregateid) DO UPDATE \
             SET last_sequence = outbox_sequence.last_sequence + excluded.last_sequence \
             RETURNING last_sequence",
            values,
        ))
        .await?
    };
    let row = row.ok_or_else(|| {
        DbErr::RecordNotFound(format!(
            "outbox_sequence row of {aggregate_type} {aggregate_id}"
        ))
    })?;
    Ok(row.try_get_by_index::<i64>(0)?)
}

/// How many versions of a versioned aggregate carried no event (0 when it has no row).
async fn version_minus_sequence<C: ConnectionTrait>(
    conn: &C,
    aggregate_type: &str,
    aggregate_id: &str,
) -> Result<i64, Error> {
    let row = conn
        .query_one_raw(statement(
            conn.get_database_backend(),
            "SELECT version_minus_sequence FROM outbox_version_offset \
             WHERE aggregatetype = ? AND aggregateid = ?",
            vec![aggregate_type.into(), aggregate_id.into()],
        ))
        .await?;
    match row {
        Some(row) => Ok(row.try_get_by_index::<i64>(0)?),
        None => Ok(0),
    }
}

/// After a versioned delete: the offset becomes minus the last sequence, so an aggregate created
/// again under the same id (from version 0) numbers its events on from there, never again from 1.
async fn forget_deleted<C: ConnectionTrait>(conn: &C, plan: &Plan) -> Result<(), Error> {
    if let (
        EntityWrite::Guarded {
            kind: Guard::Delete,
            ..
        },
        Some(version),
    ) = (&plan.entity, plan.version)
    {
        let shift = -(version.loaded.saturating_add(plan.count()));
        shift_offset(conn, plan.aggregate_type, &plan.aggregate_id, shift).await?;
    }
    Ok(())
}

/// Adds `delta` to the aggregate's version minus sequence.
async fn shift_offset<C: ConnectionTrait>(
    conn: &C,
    aggregate_type: &str,
    aggregate_id: &str,
    delta: i64,
) -> Result<(), Error> {
    let backend = conn.get_database_backend();
    let sql = if backend == DbBackend::MySql {
        "INSERT INTO outbox_version_offset (aggregatetype, aggregateid, version_minus_sequence) \
         VALUES (?, ?, ?) ON DUPLICATE KEY UPDATE \
         version_minus_sequence = version_minus_sequence + VALUES(version_minus_sequence)"
    } else {
        "INSERT INTO outbox_version_offset (aggregatetype, aggregateid, version_minus_sequence) \
         VALUES (?, ?, ?) ON CONFLICT (aggregatetype, aggregateid) DO UPDATE \
         SET version_minus_sequence = \
         outbox_version_offset.version_minus_sequence + excluded.version_minus_sequence"
    };
    conn.execute_raw(statement(
        backend,
        sql,
        vec![aggregate_type.into(), aggregate_id.into(), delta.into()],
    ))
    .await?;
    Ok(())
}

async fn insert_outbox_rows<C: ConnectionTrait>(conn: &C, plan: &Plan) -> Result<(), Error> {
    let rows: Vec<_> = plan
        .envelopes
        .iter()
        .enumerate()
        .filter(|(k, _)| plan.has_row(*k))
        .map(|(_, e)| e)
        .collect();
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        let mut insert = Query::insert()
            .into_table(O::Table)
            .columns(codec::columns().into_iter().chain([
                O::CreatedAt,
                O::Status,
                O::Attempts,
                O::NextAttemptAt,
            ]))
            .to_owned();
        for e in chunk {
            // As many values as columns, by the codec's array lengths: this cannot panic.
            insert.values_panic(codec::values(e)?.into_iter().map(Expr::val).chain([
                Expr::val(plan.now),
                Expr::val(plan.row_status()),
                Expr::val(0i32),
                Expr::val(plan.now),
            ]));
        }
        conn.execute(&insert).await?;
    }
    Ok(())
}

/// Emits the logical decoding messages of the events without a row (PostgreSQL only: the plan
/// of another backend has none), their sequences known by now, in event order.
async fn emit_messages<C: ConnectionTrait>(conn: &C, plan: &Plan) -> Result<(), Error> {
    let messages: Vec<String> = plan
        .envelopes
        .iter()
        .zip(&plan.messages)
        .filter_map(|(e, rest)| {
            let rest = rest.as_deref()?;
            Some(format!("{{\"sequence\":{},{rest}", e.sequence()))
        })
        .collect();
    for chunk in messages.chunks(ROWS_PER_INSERT) {
        // `v(k, content)`, emitted in `k` order: the volatile call is evaluated after the sort.
        let rows = (1..=chunk.len())
            .map(|k| format!("({k}, ?::text)"))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT pg_logical_emit_message(true, ?::text, v.content) FROM (VALUES {rows}) \
             AS v(k, content) ORDER BY v.k"
        );
        let mut values = vec![MESSAGE_PREFIX.into()];
        values.extend(chunk.iter().map(|c| c.as_str().into()));
        conn.query_all_raw(statement(DbBackend::Postgres, &sql, values))
            .await?;
    }
    Ok(())
}

async fn insert_delivery_rows<C: ConnectionTrait>(
    conn: &C,
    envelopes: &[outbox_core::Envelope],
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
                Expr::val(DeliveryStatus::Pending.value()),
                Expr::val(0i32),
                Expr::val(due),
                Expr::val(now),
            ]);
        }
        conn.execute(&insert).await?;
    }
    Ok(())
}
