//! Fixtures that write outbox rows directly, in bulk, exactly as the save path does (sequence
//! table bumped, `shard = shard_of(..)`, status pending, `next_attempt_at = created_at`, and a
//! `pg_notify('outbox', '')` on PostgreSQL), and helpers to check what a relay published.

use std::collections::{HashMap, HashSet};

use outbox_seaorm::schema::{Outbox, OutboxSequence};
use outbox_seaorm::time::now_micros;
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict, Query};
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use uuid::Uuid;

/// One event as written by [`insert_events`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    /// The event id.
    pub id: Uuid,
    /// Aggregate type.
    pub aggregate_type: String,
    /// Aggregate id.
    pub aggregate_id: String,
    /// Per-aggregate sequence.
    pub sequence: i64,
}

/// Writes one pending `Ping` event per `(aggregate_type, aggregate_id)` entry, in order, with
/// per-aggregate sequence numbers continuing from `outbox_sequence`. Works inside the caller's
/// transaction.
pub async fn insert_events<C: ConnectionTrait>(db: &C, events: &[(&str, &str)]) -> Vec<Written> {
    let backend = db.get_database_backend();
    let mut next: HashMap<(String, String), i64> = HashMap::new();
    let mut written = Vec::with_capacity(events.len());
    for (t, a) in events {
        let key = ((*t).to_owned(), (*a).to_owned());
        if !next.contains_key(&key) {
            let last = db
                .query_one(
                    &Query::select()
                        .column(OutboxSequence::LastSequence)
                        .from(OutboxSequence::Table)
                        .and_where(Expr::col(OutboxSequence::AggregateType).eq(*t))
                        .and_where(Expr::col(OutboxSequence::AggregateId).eq(*a))
                        .to_owned(),
                )
                .await
                .expect("read sequence")
                .map(|row| row.try_get_by_index::<i64>(0).expect("last_sequence"))
                .unwrap_or(0);
            next.insert(key.clone(), last);
        }
        let seq = next.get_mut(&key).expect("present");
        *seq += 1;
        written.push(Written {
            id: Uuid::now_v7(),
            aggregate_type: key.0,
            aggregate_id: key.1,
            sequence: *seq,
        });
    }
    for ((t, a), last) in &next {
        // An upsert, as the save path does: no gap locks between concurrent transactions.
        db.execute(
            &Query::insert()
                .into_table(OutboxSequence::Table)
                .columns([
                    OutboxSequence::AggregateType,
                    OutboxSequence::AggregateId,
                    OutboxSequence::LastSequence,
                ])
                .values_panic([t.as_str().into(), a.as_str().into(), (*last).into()])
                .on_conflict(
                    OnConflict::columns([
                        OutboxSequence::AggregateType,
                        OutboxSequence::AggregateId,
                    ])
                    .update_column(OutboxSequence::LastSequence)
                    .to_owned(),
                )
                .to_owned(),
        )
        .await
        .expect("bump sequence");
    }
    for chunk in written.chunks(500) {
        let now = now_micros();
        let mut insert = Query::insert()
            .into_table(Outbox::Table)
            .columns([
                Outbox::Id,
                Outbox::AggregateType,
                Outbox::AggregateId,
                Outbox::EventType,
                Outbox::Version,
                Outbox::Sequence,
                Outbox::Payload,
                Outbox::Shard,
                Outbox::OccurredAt,
                Outbox::CreatedAt,
                Outbox::Status,
                Outbox::Attempts,
                Outbox::NextAttemptAt,
            ])
            .to_owned();
        for w in chunk {
            insert.values_panic([
                w.id.to_string().into(),
                w.aggregate_type.as_str().into(),
                w.aggregate_id.as_str().into(),
                "Ping".into(),
                1i32.into(),
                w.sequence.into(),
                format!(r#"{{"sequence":{}}}"#, w.sequence).into(),
                outbox_seaorm::shard_of(&w.aggregate_type, &w.aggregate_id).into(),
                now.into(),
                now.into(),
                0i16.into(),
                0i32.into(),
                now.into(),
            ]);
        }
        db.execute(&insert).await.expect("insert outbox rows");
    }
    if backend == DbBackend::Postgres {
        db.execute_raw(Statement::from_string(
            backend,
            "SELECT pg_notify('outbox', '')",
        ))
        .await
        .expect("notify");
    }
    written
}

/// `n` events spread round-robin over `aggregates` aggregates of type `Order` (ids `o0`, `o1`, …).
pub fn round_robin(aggregates: usize, n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| ("Order".to_owned(), format!("o{}", i % aggregates)))
        .collect()
}

/// Borrows [`round_robin`]'s pairs for [`insert_events`].
pub fn as_refs(pairs: &[(String, String)]) -> Vec<(&str, &str)> {
    pairs
        .iter()
        .map(|(t, a)| (t.as_str(), a.as_str()))
        .collect()
}

/// One published event: (aggregate type/id, sequence, event id).
pub type Published = (String, i64, Uuid);

/// What `publisher` accepted, in order, as [`Published`] entries (`Type/id`, sequence, id).
pub fn published(publisher: &outbox_core::testing::InMemoryPublisher) -> Vec<Published> {
    publisher
        .published()
        .envelopes()
        .iter()
        .map(|e| {
            (
                format!("{}/{}", e.aggregate_type(), e.aggregate_id()),
                e.sequence(),
                e.id(),
            )
        })
        .collect()
}

/// Checks publish order: per aggregate, after dropping repeats of already seen event ids, the
/// sequence numbers strictly increase. Returns the number of repeats.
pub fn assert_ordered(published: &[Published]) -> usize {
    let mut seen: HashSet<Uuid> = HashSet::new();
    let mut last: HashMap<&str, i64> = HashMap::new();
    let mut repeats = 0;
    for (aggregate, sequence, id) in published {
        if !seen.insert(*id) {
            repeats += 1;
            continue;
        }
        let prev = last.insert(aggregate.as_str(), *sequence).unwrap_or(0);
        assert!(
            *sequence > prev,
            "aggregate {aggregate}: sequence {sequence} published after {prev}"
        );
    }
    repeats
}

/// Counts rows of `table` matching `filter` (SQL).
pub async fn count<C: ConnectionTrait>(db: &C, table: &str, filter: &str) -> i64 {
    let backend = db.get_database_backend();
    db.query_one_raw(Statement::from_string(
        backend,
        format!("SELECT COUNT(*) FROM {table} WHERE {filter}"),
    ))
    .await
    .expect("count")
    .expect("row")
    .try_get_by_index::<i64>(0)
    .expect("count value")
}

/// Runs `sql` (no parameters).
pub async fn exec<C: ConnectionTrait>(db: &C, sql: &str) -> u64 {
    let backend = db.get_database_backend();
    db.execute_raw(Statement::from_string(backend, sql.to_owned()))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .rows_affected()
}
