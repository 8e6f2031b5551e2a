//! PostgreSQL: a whole save in one statement, one round trip, atomic without `BEGIN`/`COMMIT`.
//!
//! ```text
//! WITH e AS (<the aggregate's row: upsert, or versioned insert/update ... RETURNING 1>),
//!      s AS (<the aggregate's last sequence after this save>),
//!      o AS (INSERT INTO outbox ... SELECT ... FROM s CROSS JOIN (VALUES <events>)),
//!      d AS (INSERT INTO outbox_delivery ... SELECT ... FROM s CROSS JOIN (VALUES <deliveries>)),
//!      m AS (SELECT pg_logical_emit_message(true, 'outbox',
//!                   '{"sequence":' || (s.last_sequence - <count> + v.k) || ',' || v.rest) AS lsn
//!            FROM s CROSS JOIN (VALUES (<k>, <rest>), ...) AS v(k, rest) ORDER BY v.k)
//! SELECT s.last_sequence, (SELECT count(m.lsn) FROM m) FROM s
//! ```
//!
//! `o` holds the events that get a row: all of them under [`Capture::Table`] (pending) and
//! [`Capture::LogTable`] (captured); under [`Capture::Messages`] only those with in-process
//! handlers (captured), and `m` emits the others as logical decoding messages, in event order
//! (`v.k` numbers the events from 1; `rest` is [`message::encode_rest`]). PostgreSQL runs a
//! `SELECT` CTE only as far as it is read, hence the count of `m` in the final `SELECT`; `m`
//! reads `s`, so a versioned conflict emits nothing. A CTE with nothing to do is left out.
//!
//! [`Capture::Table`]: crate::Capture::Table
//! [`Capture::LogTable`]: crate::Capture::LogTable
//! [`Capture::Messages`]: crate::Capture::Messages
//! [`message::encode_rest`]: crate::log_relay::message
//!
//! Unversioned, `s` upserts the `outbox_sequence` row and returns its new last sequence: no
//! outbox row (and no `position` from the identity sequence) exists before the upsert has taken,
//! or waited for, that row's lock, so concurrent saves of one aggregate stay serialized. `e` is
//! not read by the rest, and PostgreSQL runs it to completion at the end of the statement.
//!
//! Versioned, `s` reads `e`: when the guarded write changed no row (the stored version moved, or
//! a new aggregate's id exists), `s` is empty, so are `o` and `d`, and the statement returns no
//! row: a conflict that wrote nothing. Otherwise the last sequence is the loaded version, plus
//! the events, minus the versions that carried no event (`outbox_version_offset`, usually no
//! row): no `outbox_sequence` row is written at all.

use std::fmt::Write as _;

use sea_orm::sea_query::Iden;
use sea_orm::{ConnectionTrait, DbBackend, Statement, Value};

use super::NOTIFY_CHANNEL;
use super::entity::EntityWrite;
use super::plan::Plan;
use crate::codec;
use crate::error::Error;
use crate::log_relay::MESSAGE_PREFIX;
use crate::schema::Outbox as O;
use crate::status::DeliveryStatus;

/// Runs `plan` as one statement. Returns the aggregate's new last sequence number, or `None`
/// when a versioned write found the stored version moved (nothing was written).
pub(crate) async fn run<C: ConnectionTrait>(conn: &C, plan: &Plan) -> Result<Option<i64>, Error> {
    let (sql, values) = statement(plan)?;
    let row = conn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            sql,
            values,
        ))
        .await?;
    match row {
        Some(row) => Ok(Some(row.try_get_by_index::<i64>(0)?)),
        None if plan.version.is_some() => Ok(None),
        None => Err(sea_orm::DbErr::RecordNotFound(format!(
            "outbox_sequence row of {} {}",
            plan.aggregate_type, plan.aggregate_id
        ))
        .into()),
    }
}

fn statement(plan: &Plan) -> Result<(String, Vec<Value>), Error> {
    // The entity's own statement, when there is one, is the first CTE; its parameters come first.
    let (entity, guarded) = match &plan.entity {
        EntityWrite::None => (None, false),
        EntityWrite::Upsert(statement) => (Some(statement), false),
        EntityWrite::Guarded { statement, .. } => (Some(statement), true),
        // Deletes never take this path (`Plan::fits_one_statement`).
        EntityWrite::Delete(statement) => (Some(statement), false),
    };
    let (mut sql, mut values) = match entity {
        Some(Statement { sql, values, .. }) => {
            let returning = if guarded { " RETURNING 1" } else { "" };
            (
                format!("WITH e AS ({sql}{returning}), "),
                values.clone().map(|v| v.0).unwrap_or_default(),
            )
        }
        None => ("WITH ".to_owned(), Vec::new()),
    };
    let p = values.len();
    let (p1, p2, p3, p4, p5) = (p + 1, p + 2, p + 3, p + 4, p + 5);
    values.extend([
        plan.aggregate_type.into(),
        plan.aggregate_id.clone().into(),
        plan.count().into(),
        plan.now.into(),
        plan.due.into(),
    ]);
    // Writing to a String cannot fail.
    match plan.version {
        None => {
            let _ = write!(
                sql,
                "s AS (\
                 INSERT INTO outbox_sequence (aggregatetype, aggregateid, last_sequence) \
                 VALUES (${p1}::varchar, ${p2}::varchar, ${p3}::bigint) \
                 ON CONFLICT (aggregatetype, aggregateid) DO UPDATE \
                 SET last_sequence = outbox_sequence.last_sequence + EXCLUDED.last_sequence \
                 RETURNING last_sequence)"
            );
        }
        Some(version) => {
            values.push(version.loaded.into());
            let p6 = values.len();
            let _ = write!(
                sql,
                "s AS (\
                 SELECT ${p6}::bigint + ${p3}::bigint - COALESCE((\
                 SELECT v.version_minus_sequence FROM outbox_version_offset v \
                 WHERE v.aggregatetype = ${p1}::varchar AND v.aggregateid = ${p2}::varchar\
                 ), 0) AS last_sequence FROM e)"
            );
        }
    }
    // The envelope's columns from the codec: the aggregate's are bound once for all events, the
    // sequence is counted from `s`, the others come from each event's row of the VALUES list
    // `v(k, ...)`, `k` numbering the events from 1.
    let columns = codec::columns();
    let types = codec::pg_types();
    let per_event = |column: &O| !matches!(column, O::AggregateType | O::AggregateId | O::Sequence);
    let names = columns.map(|c| c.unquoted().to_owned()).join(", ");
    let selected = columns
        .iter()
        .zip(types)
        .map(|(column, ty)| match column {
            O::AggregateType => format!("${p1}::{ty}"),
            O::AggregateId => format!("${p2}::{ty}"),
            O::Sequence => format!("s.last_sequence - ${p3}::{ty} + v.k"),
            other => format!("v.{}", other.unquoted()),
        })
        .collect::<Vec<_>>()
        .join(", ");
    let status = plan.row_status().value();
    let aliases = columns
        .iter()
        .filter(|c| per_event(c))
        .map(|c| c.unquoted())
        .collect::<Vec<_>>()
        .join(", ");
    // `o` only when some event gets a row (under `Capture::Messages` maybe none).
    let mut first_row = true;
    for (k, e) in plan.envelopes.iter().enumerate() {
        if !plan.has_row(k) {
            continue;
        }
        if first_row {
            let _ = write!(
                sql,
                ", o AS (\
                 INSERT INTO outbox ({names}, created_at, status, attempts, next_attempt_at) \
                 SELECT {selected}, ${p4}::bigint, {status}, 0, ${p4}::bigint \
                 FROM s CROSS JOIN (VALUES ",
            );
            first_row = false;
        } else {
            sql.push_str(", ");
        }
        let _ = write!(sql, "({}::bigint", k + 1);
        for ((column, ty), value) in columns.iter().zip(types).zip(codec::values(e)?) {
            if per_event(column) {
                values.push(value);
                let _ = write!(sql, ", ${}::{ty}", values.len());
            }
        }
        sql.push(')');
    }
    if !first_row {
        let _ = write!(sql, ") AS v(k, {aliases}) ORDER BY v.k)");
    }
    let mut first_delivery = true;
    for (e, hs) in plan.envelopes.iter().zip(&plan.handlers) {
        for h in hs {
            let n = values.len();
            if first_delivery {
                let pending = DeliveryStatus::Pending.value();
                let _ = write!(
                    sql,
                    ", d AS (INSERT INTO outbox_delivery \
                     (event_id, handler, status, attempts, next_attempt_at, created_at) \
                     SELECT v.event_id, v.handler, {pending}, 0, ${p5}::bigint, ${p4}::bigint \
                     FROM s CROSS JOIN (VALUES "
                );
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
    // `m`: one logical decoding message per event without a row, in event order (the volatile
    // emit is evaluated after the sort). Only referenced CTEs run: the final SELECT counts `m`.
    let mut first_message = true;
    for (k, rest) in plan.messages.iter().enumerate() {
        let Some(rest) = rest else { continue };
        if first_message {
            values.push(MESSAGE_PREFIX.into());
            let prefix = values.len();
            let _ = write!(
                sql,
                ", m AS (SELECT pg_logical_emit_message(true, ${prefix}::text, \
                 '{{\"sequence\":' || (s.last_sequence - ${p3}::bigint + v.k) || ',' || v.rest) \
                 AS lsn FROM s CROSS JOIN (VALUES "
            );
            first_message = false;
        } else {
            sql.push_str(", ");
        }
        values.push(rest.clone().into());
        let _ = write!(sql, "({}::bigint, ${}::text)", k + 1, values.len());
    }
    if !first_message {
        sql.push_str(") AS v(k, rest) ORDER BY v.k)");
    }
    sql.push_str(" SELECT s.last_sequence");
    if !first_message {
        sql.push_str(", (SELECT count(m.lsn) FROM m)");
    }
    if plan.notifies() {
        values.push(NOTIFY_CHANNEL.into());
        let _ = write!(sql, ", pg_notify(${}, '')", values.len());
    }
    sql.push_str(" FROM s");
    Ok((sql, values))
}
