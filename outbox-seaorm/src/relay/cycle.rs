//! One relay cycle: claim shards, read a batch, publish it, record the outcome.

use std::collections::HashSet;
use std::fmt;

use outbox_core::{Envelope, PublishError};
use sea_orm::{
    AccessMode, ConnectionTrait, DbBackend, DbErr, IsolationLevel, QueryResult, TransactionTrait,
    Value,
};

use super::{Completion, CycleReport, DeadLetterPolicy, Relay, RelayError};
use crate::codec::{self, Stored, Undecodable};
use crate::schema::SHARDS;
use crate::sql::{error_chain, execute, placeholders, query};
use crate::status::{DeliveryStatus, EventStatus};
use crate::time::{from_micros, now_micros};

/// One outbox row read for publishing.
struct Row {
    position: i64,
    aggregate_type: String,
    aggregate_id: String,
    attempts: i32,
    /// Whether it was handed to the publisher.
    handed: bool,
    /// The envelope, or why the row cannot become one.
    envelope: Result<Envelope, InvalidRow>,
}

/// A stored row that does not make an envelope (hand-edited, or written by another tool).
#[derive(Debug, thiserror::Error)]
#[error("outbox row {position} cannot be published")]
struct InvalidRow {
    position: i64,
    #[source]
    reason: Undecodable,
}

/// The publisher answered with fewer outcomes than envelopes.
#[derive(Debug, thiserror::Error)]
#[error("the publisher returned no outcome for this envelope")]
struct MissingOutcome;

/// The publisher did not answer within the relay's publish timeout.
#[derive(Debug, thiserror::Error)]
#[error("the publisher did not answer within {0:?} (the relay's publish timeout)")]
struct PublishTimedOut(std::time::Duration);

/// The most positions bound in one statement: far below the bind-parameter limits of every
/// backend (SQLite 32,766; PostgreSQL and MySQL/MariaDB 65,535), whatever the batch size.
pub(crate) const POSITIONS_PER_STATEMENT: usize = 10_000;

impl Row {
    fn read(row: &QueryResult) -> Result<Row, DbErr> {
        let position: i64 = row.try_get("", "position")?;
        let attempts: i32 = row.try_get("", "attempts")?;
        let stored = Stored::read(row, "")?;
        let aggregate_type = stored.aggregate_type().to_owned();
        let aggregate_id = stored.aggregate_id().to_owned();
        let envelope = stored
            .envelope()
            .map_err(|reason| InvalidRow { position, reason });
        Ok(Row {
            position,
            aggregate_type,
            aggregate_id,
            attempts,
            handed: false,
            envelope,
        })
    }
}

impl fmt::Debug for Row {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Row")
            .field("position", &self.position)
            .finish_non_exhaustive()
    }
}

/// The batch query: pending, due rows, oldest first within each shard, leaving out aggregates
/// held back by an earlier row that waits for a retry (or is dead, under
/// [`DeadLetterPolicy::Block`]).
///
/// Ordered by (shard, position), which the claim index `(status, shard, position)` yields as
/// it is: ordering by position alone let PostgreSQL walk the primary key past every published
/// row while draining a backlog. All events of an aggregate share a shard, so its events still
/// come in position (= commit) order.
///
/// The held-back aggregates come from a small derived table (the rows that block: waiting or
/// dead ones, few in normal operation), joined to the pending rows; so the cost stays linear in
/// the pending rows of the claimed shards, however many published rows an aggregate has.
fn batch_sql(policy: DeadLetterPolicy, shards: Option<usize>) -> String {
    let pending = EventStatus::Pending.value();
    let (inner, outer) = match shards {
        Some(n) => (
            format!(" AND shard IN ({})", placeholders(n)),
            format!(" AND o.shard IN ({})", placeholders(n)),
        ),
        None => (String::new(), String::new()),
    };
    let columns = codec::select_list("o.");
    let held_back = held_back_join(policy, &inner);
    format!(
        "SELECT o.position, {columns}, o.attempts FROM outbox o {held_back} \
         WHERE o.status = {pending} AND o.next_attempt_at <= ?{outer} \
         AND (blk.first_blocked IS NULL OR o.sequence < blk.first_blocked) \
         ORDER BY o.shard, o.position LIMIT ?"
    )
}

/// The join that holds aggregates back, for a query over `outbox o`: derived table `blk` gives
/// per aggregate the first sequence that blocks (a pending event waiting for its retry, or
/// under [`DeadLetterPolicy::Block`] a dead one); rows of `o` at or after it are held. Takes
/// one parameter (now) and then those of `filter`, a condition on the blocking rows starting
/// with ` AND `.
pub(crate) fn held_back_join(policy: DeadLetterPolicy, filter: &str) -> String {
    // Literals, not parameters: the planner sees the status it filters on.
    let pending = EventStatus::Pending.value();
    let dead = EventStatus::Dead.value();
    let blocking = match policy {
        DeadLetterPolicy::Skip => format!("status = {pending} AND next_attempt_at > ?"),
        DeadLetterPolicy::Block => {
            format!("(status = {dead} OR (status = {pending} AND next_attempt_at > ?))")
        }
    };
    format!(
        "LEFT JOIN (SELECT aggregatetype, aggregateid, MIN(sequence) AS first_blocked \
           FROM outbox WHERE {blocking}{filter} GROUP BY aggregatetype, aggregateid) blk \
         ON blk.aggregatetype = o.aggregatetype AND blk.aggregateid = o.aggregateid"
    )
}

async fn read_batch<C: ConnectionTrait>(
    db: &C,
    relay: &Relay,
    now: i64,
    shards: Option<&[i16]>,
) -> Result<Vec<Row>, DbErr> {
    let sql = batch_sql(relay.config.dead_letter_policy, shards.map(<[i16]>::len));
    let shard_values = || shards.unwrap_or_default().iter().map(|s| Value::from(*s));
    let mut values: Vec<Value> = vec![now.into()];
    values.extend(shard_values());
    values.push(now.into());
    values.extend(shard_values());
    values.push(
        i64::try_from(relay.config.batch_size)
            .unwrap_or(i64::MAX)
            .into(),
    );
    query(db, &sql, values)
        .await?
        .iter()
        .map(Row::read)
        .collect()
}

/// Locks up to `limit` of `shards` (ascending) with `FOR UPDATE SKIP LOCKED`.
async fn lock_shards<C: ConnectionTrait>(
    db: &C,
    shards: &[i16],
    limit: usize,
) -> Result<Vec<i16>, DbErr> {
    if shards.is_empty() || limit == 0 {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT shard FROM outbox_shard WHERE shard IN ({}) ORDER BY shard LIMIT ? \
         FOR UPDATE SKIP LOCKED",
        placeholders(shards.len())
    );
    let mut values: Vec<Value> = shards.iter().map(|s| Value::from(*s)).collect();
    values.push(i64::try_from(limit).unwrap_or(i64::MAX).into());
    query(db, &sql, values)
        .await?
        .iter()
        .map(|row| row.try_get::<i16>("", "shard"))
        .collect()
}

/// Claims shards in a fair order: the shards that have due rows, starting at a random shard, so
/// that several relays spread over the shards instead of all asking for the same ones.
async fn claim_shards<C: ConnectionTrait>(
    db: &C,
    now: i64,
    limit: usize,
) -> Result<Vec<i16>, DbErr> {
    // One index probe per shard (`ix_outbox_claim`), however large the backlog; no locks.
    let sql = format!(
        "SELECT s.shard FROM outbox_shard s WHERE EXISTS (SELECT 1 FROM outbox o \
         WHERE o.status = {} AND o.shard = s.shard AND o.next_attempt_at <= ?)",
        EventStatus::Pending.value()
    );
    let mut candidates: Vec<i16> = query(db, &sql, vec![now.into()])
        .await?
        .iter()
        .map(|row| row.try_get::<i16>("", "shard"))
        .collect::<Result<_, _>>()?;
    candidates.sort_unstable();
    let start = fastrand::i16(0..SHARDS);
    let (low, high): (Vec<i16>, Vec<i16>) = candidates.iter().partition(|s| **s < start);
    let mut locked = lock_shards(db, &high, limit).await?;
    if locked.len() < limit {
        let more = lock_shards(db, &low, limit - locked.len()).await?;
        locked.extend(more);
    }
    Ok(locked)
}

/// What the relay decided for one batch, before it is written.
#[derive(Default)]
struct Outcome {
    published: Vec<i64>,
    /// (position, attempts after this one, dead, error chain, next attempt at)
    failures: Vec<(i64, i32, bool, String, i64)>,
    held: usize,
    next_retry_at: Option<i64>,
}

fn decide(
    relay: &Relay,
    rows: &[Row],
    results: Vec<Result<(), PublishError>>,
    now: i64,
) -> Outcome {
    let mut outcome = Outcome::default();
    let mut failed: HashSet<(&str, &str)> = HashSet::new();
    let mut results = results.into_iter();
    for row in rows {
        let key = (row.aggregate_type.as_str(), row.aggregate_id.as_str());
        let result: Result<(), RowError> = match &row.envelope {
            Err(invalid) => Err(RowError::Invalid(invalid)),
            // Not handed over: an earlier row of its aggregate is invalid (and in `failed`).
            Ok(_) if !row.handed => Ok(()),
            Ok(_) => match results.next() {
                Some(result) => result.map_err(RowError::Publish),
                None => Err(RowError::Publish(PublishError::transient(MissingOutcome))),
            },
        };
        if failed.contains(&key) {
            // An earlier event of this aggregate failed: this one is sent again after it.
            outcome.held += 1;
            continue;
        }
        match result {
            Ok(()) => outcome.published.push(row.position),
            Err(RowError::Publish(error)) if error.is_not_attempted() => {
                // Never handed to the broker: no attempt counted, nothing recorded; it is read
                // again next cycle, and so are the later rows of its aggregate.
                failed.insert(key);
                outcome.held += 1;
            }
            Err(error) => {
                failed.insert(key);
                let attempts = row.attempts.saturating_add(1);
                let retryable = error.is_retryable();
                let dead = !retryable
                    || !relay
                        .config
                        .retry
                        .should_retry(u32::try_from(attempts).unwrap_or(u32::MAX));
                let delay = relay
                    .config
                    .retry
                    .delay_after(u32::try_from(attempts).unwrap_or(u32::MAX));
                let next = now.saturating_add(i64::try_from(delay.as_micros()).unwrap_or(i64::MAX));
                let chain = error.chain();
                if dead {
                    tracing::error!(position = row.position, aggregate_type = %row.aggregate_type,
                        aggregate_id = %row.aggregate_id, attempts, error = %chain,
                        "outbox event dead-lettered");
                } else {
                    tracing::warn!(position = row.position, aggregate_type = %row.aggregate_type,
                        aggregate_id = %row.aggregate_id, attempts, error = %chain,
                        "publishing an outbox event failed; it will be retried");
                    outcome.next_retry_at =
                        Some(outcome.next_retry_at.map_or(next, |n| n.min(next)));
                }
                outcome
                    .failures
                    .push((row.position, attempts, dead, chain, next));
            }
        }
    }
    outcome
}

enum RowError<'a> {
    Invalid(&'a InvalidRow),
    Publish(PublishError),
}

impl RowError<'_> {
    fn is_retryable(&self) -> bool {
        match self {
            RowError::Invalid(_) => false,
            RowError::Publish(e) => e.is_retryable(),
        }
    }
    fn chain(&self) -> String {
        match self {
            RowError::Invalid(e) => error_chain(*e),
            RowError::Publish(e) => error_chain(e),
        }
    }
}

/// Writes the outcome: one statement per [`POSITIONS_PER_STATEMENT`] published rows (two when
/// [`Completion::Delete`] keeps some rows back), one per failure.
async fn record<C: ConnectionTrait>(
    db: &C,
    completion: Completion,
    outcome: &Outcome,
    now: i64,
) -> Result<(), DbErr> {
    // In chunks, so that no statement binds more parameters than the backend takes.
    for published in outcome.published.chunks(POSITIONS_PER_STATEMENT) {
        let mut mark = true;
        if completion == Completion::Delete {
            // A row whose in-process handlers have not all run stays (marked): the delivery
            // worker reads the event back from it. `Cleanup` removes it later.
            let sql = format!(
                "DELETE FROM outbox WHERE position IN ({}) AND NOT EXISTS (SELECT 1 FROM \
                 outbox_delivery d WHERE d.event_id = outbox.id AND d.status <> {})",
                placeholders(published.len()),
                DeliveryStatus::Done.value()
            );
            let values: Vec<Value> = published.iter().map(|p| Value::from(*p)).collect();
            let deleted = execute(db, &sql, values).await?;
            mark = usize::try_from(deleted).unwrap_or(usize::MAX) < published.len();
        }
        if mark {
            let sql = format!(
                "UPDATE outbox SET status = {}, published_at = ? WHERE position IN ({})",
                EventStatus::Published.value(),
                placeholders(published.len())
            );
            let mut values: Vec<Value> = vec![now.into()];
            values.extend(published.iter().map(|p| Value::from(*p)));
            execute(db, &sql, values).await?;
        }
    }
    for (position, attempts, dead, error, next) in &outcome.failures {
        let status = if *dead {
            EventStatus::Dead
        } else {
            EventStatus::Pending
        };
        execute(
            db,
            "UPDATE outbox SET attempts = ?, status = ?, last_error = ?, next_attempt_at = ? \
             WHERE position = ?",
            vec![
                (*attempts).into(),
                status.into(),
                error.clone().into(),
                (*next).into(),
                (*position).into(),
            ],
        )
        .await?;
    }
    Ok(())
}

/// Hands the batch to the publisher: every row that makes an envelope, except the rows after an
/// invalid row of the same aggregate (they would overtake it).
///
/// Waits at most the relay's publish timeout: past it, the publisher's work is dropped and every
/// envelope handed over counts as a transient failure (the first of each aggregate is charged an
/// attempt and retried with backoff, the later ones stay pending behind it), so the cycle ends
/// and its shard locks are released. Messages the publisher already sent may still arrive:
/// delivery stays at least once.
async fn publish(relay: &Relay, rows: &mut [Row]) -> Vec<Result<(), PublishError>> {
    let mut broken: HashSet<(String, String)> = HashSet::new();
    let mut envelopes: Vec<Envelope> = Vec::with_capacity(rows.len());
    for row in rows.iter_mut() {
        let key = (row.aggregate_type.clone(), row.aggregate_id.clone());
        match &row.envelope {
            Err(_) => {
                broken.insert(key);
            }
            Ok(envelope) if !broken.contains(&key) => {
                row.handed = true;
                envelopes.push(envelope.clone());
            }
            Ok(_) => {}
        }
    }
    if envelopes.is_empty() {
        return Vec::new();
    }
    let timeout = relay.config.publish_timeout;
    match tokio::time::timeout(timeout, relay.publisher.publish(&envelopes)).await {
        Ok(results) => results,
        Err(_elapsed) => {
            tracing::warn!(
                envelopes = envelopes.len(),
                timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                "the publisher did not answer within the publish timeout; the batch is retried"
            );
            envelopes
                .iter()
                .map(|_| Err(PublishError::transient(PublishTimedOut(timeout))))
                .collect()
        }
    }
}

fn report(rows: &[Row], shards: usize, outcome: &Outcome) -> CycleReport {
    let dead = outcome.failures.iter().filter(|f| f.2).count();
    CycleReport {
        shards,
        claimed: rows.len(),
        published: outcome.published.len(),
        failed: outcome.failures.len() - dead,
        dead,
        held: outcome.held,
        next_retry_at: outcome.next_retry_at.map(from_micros),
        more: false,
    }
}

/// A cycle on PostgreSQL or MariaDB/MySQL: everything in one transaction that holds the shard
/// locks while publishing.
pub(super) async fn locking(relay: &Relay) -> Result<CycleReport, RelayError> {
    let txn = relay
        .db
        .begin_with_config(
            Some(IsolationLevel::ReadCommitted),
            Some(AccessMode::ReadWrite),
        )
        .await?;
    let now = now_micros();
    let limit = relay.config.shards_per_claim;
    let shards = claim_shards(&txn, now, limit).await?;
    if shards.is_empty() {
        txn.commit().await?;
        return Ok(CycleReport::default());
    }
    let mut rows = read_batch(&txn, relay, now, Some(&shards)).await?;
    let results = publish(relay, &mut rows).await;
    let done = now_micros();
    let outcome = decide(relay, &rows, results, done);
    record(&txn, relay.config.completion, &outcome, done).await?;
    let sql = format!(
        "UPDATE outbox_shard SET owner = ?, claimed_at = ? WHERE shard IN ({})",
        placeholders(shards.len())
    );
    let mut values: Vec<Value> = vec![relay.config.instance_id.clone().into(), done.into()];
    values.extend(shards.iter().map(|s| Value::from(*s)));
    execute(&txn, &sql, values).await?;
    txn.commit().await?;
    let mut report = report(&rows, shards.len(), &outcome);
    // Full batch, or more shards with due rows than one claim takes: go again at once.
    report.more =
        rows.len() >= relay.config.batch_size || (shards.len() >= limit && !rows.is_empty());
    Ok(report)
}

/// A cycle on SQLite: read and publish outside any transaction (a write transaction held while
/// publishing would block the application's saves), then mark in one short transaction. Only
/// one relay per SQLite database is supported.
pub(super) async fn single(relay: &Relay) -> Result<CycleReport, RelayError> {
    let now = now_micros();
    let mut rows = read_batch(&relay.db, relay, now, None).await?;
    if rows.is_empty() {
        return Ok(CycleReport::default());
    }
    let results = publish(relay, &mut rows).await;
    let done = now_micros();
    let outcome = decide(relay, &rows, results, done);
    let txn = relay.db.begin().await?;
    record(&txn, relay.config.completion, &outcome, done).await?;
    txn.commit().await?;
    let mut report = report(&rows, 0, &outcome);
    report.more = rows.len() >= relay.config.batch_size;
    Ok(report)
}

/// Runs the cycle that fits the backend.
pub(super) async fn run(relay: &Relay) -> Result<CycleReport, RelayError> {
    match relay.db.get_database_backend() {
        DbBackend::Sqlite => single(relay).await,
        _ => locking(relay).await,
    }
}
