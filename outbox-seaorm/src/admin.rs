//! Operating the outbox: its status, the dead events (list, show, requeue, drop), replaying
//! published events and one-off migrations and cleanup. The `outbox` command line calls these;
//! a service can call them too.
//!
//! Every function takes `&C where C: ConnectionTrait`, so several calls can share the caller's
//! transaction (the command line runs each change in one).
//!
//! **Order per aggregate.** [`requeue`] puts the selected dead events back to pending together
//! with the earlier dead events of the same aggregates ("taken along"): a dead event that is
//! requeued alone while an earlier one of its aggregate stays dead would, under
//! [`DeadLetterPolicy::Skip`], be published before it.
//! Requeued rows become due now; the relay reads pending rows in position order, so an
//! aggregate's requeued events and the later events held back behind them go out in sequence.
//! [`replay`] keeps the order the same way: it turns published rows back to pending, and the
//! relay publishes them in position order (consumers drop the duplicates by event id).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use outbox_seaorm::admin::{self, DeadFilter};
//!
//! let db = sea_orm::Database::connect("sqlite::memory:").await?;
//! outbox_seaorm::schema::migrate(&db).await?;
//! let status = admin::status(&db, None).await?;
//! assert_eq!(status.pending, 0);
//! assert!(admin::list_dead(&db, &DeadFilter::all()).await?.is_empty());
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, QueryResult, Value};
use serde::Serialize;
use uuid::Uuid;

use crate::log_relay::{DEFAULT_SLOT, slot_status};
use crate::relay::{DeadLetterPolicy, held_back_join};
use crate::sql::{execute, query, scalar};
use crate::status::{DeliveryStatus, EventStatus};
use crate::time::{from_micros, now_micros, to_micros};

/// The longest `status` waits for the slot's row, as the log relay does.
const SLOT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Aggregates one [`requeue`] statement takes (three parameters each).
const REQUEUE_CHUNK: usize = 100;

/// Why an admin call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// A statement failed or the connection was lost.
    #[error("the outbox admin query failed")]
    Database {
        /// SeaORM's error.
        #[from]
        source: DbErr,
    },
    /// [`status`] was asked for a replication slot that does not exist.
    #[error("there is no replication slot `{slot}`")]
    NoSuchSlot {
        /// The slot's name.
        slot: String,
    },
}

/// Counts of one group of events (an aggregate type, or a topic).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct GroupStatus {
    /// Events waiting to be published (including the held ones).
    pub pending: u64,
    /// Pending events the relay will not publish yet: waiting for a retry, or behind an earlier
    /// event of their aggregate that waits for a retry or is dead (as under the default
    /// [`DeadLetterPolicy::Block`]).
    pub held: u64,
    /// Dead events.
    pub dead: u64,
    /// Age of the oldest pending event in seconds (by `created_at`), if any is pending.
    pub oldest_pending_age_secs: Option<f64>,
}

impl GroupStatus {
    fn add(&mut self, other: &GroupStatus) {
        self.pending += other.pending;
        self.held += other.held;
        self.dead += other.dead;
        self.oldest_pending_age_secs =
            match (self.oldest_pending_age_secs, other.oldest_pending_age_secs) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
    }
}

/// In-process handler deliveries (`outbox_delivery`) of one handler that are not done.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct HandlerStatus {
    /// The handler id.
    pub handler: String,
    /// Deliveries waiting (or waiting for a retry).
    pub pending: u64,
    /// Deliveries given up on.
    pub dead: u64,
}

/// A log relay's replication slot, as [`status`] reports it (PostgreSQL).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct SlotLag {
    /// The slot's name.
    pub slot: String,
    /// Whether a log relay reads it now.
    pub active: bool,
    /// Bytes of write-ahead log the server keeps for the slot.
    pub lag_bytes: Option<u64>,
}

/// What [`status`] reports.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Status {
    /// Pending events, held ones included.
    pub pending: u64,
    /// Pending events held back (see [`GroupStatus::held`]).
    pub held: u64,
    /// Dead events.
    pub dead: u64,
    /// Age of the oldest pending event in seconds.
    pub oldest_pending_age_secs: Option<f64>,
    /// The same counts per aggregate type, by name.
    pub by_aggregate_type: BTreeMap<String, GroupStatus>,
    /// The same counts per topic override; events without one (the publisher's default topic
    /// of their aggregate type) count under `""`.
    pub by_topic: BTreeMap<String, GroupStatus>,
    /// Deliveries to in-process handlers not done, per handler.
    pub deliveries: Vec<HandlerStatus>,
    /// Rows in the consumers' inbox (`outbox_inbox`).
    pub inbox: u64,
    /// The log relay's slot, when one was asked for or the default slot exists.
    pub slot: Option<SlotLag>,
}

fn count(row: &QueryResult, index: usize) -> Result<u64, DbErr> {
    Ok(u64::try_from(row.try_get_by_index::<Option<i64>>(index)?.unwrap_or(0)).unwrap_or(0))
}

fn age_secs(now: i64, oldest: Option<i64>) -> Option<f64> {
    oldest.map(|at| (now.saturating_sub(at)).max(0) as f64 / 1e6)
}

/// The outbox's status: pending, held and dead events in all and per aggregate type and topic,
/// the oldest pending event's age, in-process deliveries per handler, the inbox's size, and on
/// PostgreSQL the lag of log relay slot `slot` (or of [`DEFAULT_SLOT`] when `slot` is `None`
/// and that slot exists).
///
/// # Errors
/// [`AdminError::NoSuchSlot`] when `slot` names no slot (or is given on another database);
/// [`AdminError::Database`] when a query fails.
pub async fn status(db: &DatabaseConnection, slot: Option<&str>) -> Result<Status, AdminError> {
    let now = now_micros();
    let pending = EventStatus::Pending.value();
    let dead = EventStatus::Dead.value();
    // The relay's hold-back under the default policy, counted instead of read.
    let held_back = held_back_join(DeadLetterPolicy::Block, "");
    let sql = format!(
        "SELECT o.aggregatetype, o.topic, \
         COUNT(CASE WHEN o.status = {pending} THEN 1 END), \
         COUNT(CASE WHEN o.status = {pending} AND (o.next_attempt_at > ? \
           OR (blk.first_blocked IS NOT NULL AND o.sequence > blk.first_blocked)) THEN 1 END), \
         COUNT(CASE WHEN o.status = {dead} THEN 1 END), \
         MIN(CASE WHEN o.status = {pending} THEN o.created_at END) \
         FROM outbox o {held_back} \
         WHERE o.status IN ({pending}, {dead}) \
         GROUP BY o.aggregatetype, o.topic"
    );
    let rows = query(db, &sql, vec![now.into(), now.into()]).await?;
    let mut out = Status::default();
    let mut total = GroupStatus::default();
    for row in &rows {
        let aggregate_type: String = row.try_get_by_index(0)?;
        let topic: Option<String> = row.try_get_by_index(1)?;
        let group = GroupStatus {
            pending: count(row, 2)?,
            held: count(row, 3)?,
            dead: count(row, 4)?,
            oldest_pending_age_secs: age_secs(now, row.try_get_by_index(5)?),
        };
        total.add(&group);
        out.by_aggregate_type
            .entry(aggregate_type)
            .or_default()
            .add(&group);
        out.by_topic
            .entry(topic.unwrap_or_default())
            .or_default()
            .add(&group);
    }
    out.pending = total.pending;
    out.held = total.held;
    out.dead = total.dead;
    out.oldest_pending_age_secs = total.oldest_pending_age_secs;

    let sql = format!(
        "SELECT handler, COUNT(CASE WHEN status = {p} THEN 1 END), \
         COUNT(CASE WHEN status = {d} THEN 1 END) FROM outbox_delivery \
         WHERE status IN ({p}, {d}) GROUP BY handler ORDER BY handler",
        p = DeliveryStatus::Pending.value(),
        d = DeliveryStatus::Dead.value()
    );
    for row in query(db, &sql, vec![]).await? {
        out.deliveries.push(HandlerStatus {
            handler: row.try_get_by_index(0)?,
            pending: count(&row, 1)?,
            dead: count(&row, 2)?,
        });
    }
    out.inbox =
        u64::try_from(scalar(db, "SELECT COUNT(*) FROM outbox_inbox", vec![]).await?).unwrap_or(0);

    let postgres = db.get_database_backend() == DbBackend::Postgres;
    out.slot = match (slot, postgres) {
        (Some(name), false) => {
            return Err(AdminError::NoSuchSlot {
                slot: name.to_owned(),
            });
        }
        (None, false) => None,
        (asked, true) => {
            let name = asked.unwrap_or(DEFAULT_SLOT);
            let looked_up = tokio::time::timeout(SLOT_TIMEOUT, slot_status(db, name))
                .await
                .map_err(|_| DbErr::Custom(format!("slot `{name}`: no answer within 10 s")))?;
            match looked_up? {
                Some(s) => Some(SlotLag {
                    slot: s.name,
                    active: s.active,
                    lag_bytes: s.lag_bytes,
                }),
                None if asked.is_some() => {
                    return Err(AdminError::NoSuchSlot {
                        slot: name.to_owned(),
                    });
                }
                None => None,
            }
        }
    };
    Ok(out)
}

/// Which dead events a call is about: the conditions given all hold. [`DeadFilter::all`] (no
/// condition) selects every dead event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadFilter {
    /// Only this event.
    pub id: Option<Uuid>,
    /// Only events of this aggregate type.
    pub aggregate_type: Option<String>,
    /// Only events of this type (the event's name, the `type` column).
    pub event_type: Option<String>,
    /// Only events written at or after this time (`created_at`).
    pub since: Option<DateTime<Utc>>,
}

impl DeadFilter {
    /// Every dead event.
    pub fn all() -> Self {
        Self::default()
    }

    /// Only dead event `id`.
    pub fn id(id: Uuid) -> Self {
        Self {
            id: Some(id),
            ..Self::default()
        }
    }

    /// Also only events of aggregate type `name`.
    pub fn aggregate_type(mut self, name: impl Into<String>) -> Self {
        self.aggregate_type = Some(name.into());
        self
    }

    /// Also only events of type `name`.
    pub fn event_type(mut self, name: impl Into<String>) -> Self {
        self.event_type = Some(name.into());
        self
    }

    /// Also only events written at or after `at`.
    pub fn since(mut self, at: DateTime<Utc>) -> Self {
        self.since = Some(at);
        self
    }

    /// ` AND …` conditions (columns prefixed with `prefix`) and their values.
    fn conditions(&self, prefix: &str) -> (String, Vec<Value>) {
        let mut sql = String::new();
        let mut values: Vec<Value> = Vec::new();
        if let Some(id) = self.id {
            sql.push_str(&format!(" AND {prefix}id = ?"));
            values.push(id.to_string().into());
        }
        if let Some(t) = &self.aggregate_type {
            sql.push_str(&format!(" AND {prefix}aggregatetype = ?"));
            values.push(t.clone().into());
        }
        if let Some(t) = &self.event_type {
            sql.push_str(&format!(" AND {prefix}type = ?"));
            values.push(t.clone().into());
        }
        if let Some(at) = self.since {
            sql.push_str(&format!(" AND {prefix}created_at >= ?"));
            values.push(to_micros(at).into());
        }
        (sql, values)
    }
}

/// Where an event stands with the relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventState {
    /// Waiting to be published.
    Pending,
    /// Published.
    Published,
    /// Dead.
    Dead,
    /// Written for the log relay, which publishes it from the write-ahead log.
    Captured,
}

impl EventState {
    fn from_stored(value: i16) -> Option<Self> {
        [
            (EventStatus::Pending, EventState::Pending),
            (EventStatus::Published, EventState::Published),
            (EventStatus::Dead, EventState::Dead),
            (EventStatus::Captured, EventState::Captured),
        ]
        .into_iter()
        .find(|(s, _)| s.value() == value)
        .map(|(_, state)| state)
    }
}

/// One outbox event as the admin functions show it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct EventInfo {
    /// Event id.
    pub id: String,
    /// Aggregate type.
    pub aggregate_type: String,
    /// Aggregate id.
    pub aggregate_id: String,
    /// Event type.
    pub event_type: String,
    /// Payload version.
    pub version: i32,
    /// Sequence within the aggregate.
    pub sequence: i64,
    /// Topic override, if any.
    pub topic: Option<String>,
    /// Where it stands (`None` for a status value this version does not know).
    pub status: Option<EventState>,
    /// Failed publish attempts.
    pub attempts: i32,
    /// When it was written.
    pub created_at: DateTime<Utc>,
    /// When it occurred.
    pub occurred_at: DateTime<Utc>,
    /// The last publishing error.
    pub last_error: Option<String>,
    /// The JSON payload, as stored (only from [`event`]).
    pub payload: Option<String>,
    /// The JSON metadata, as stored (only from [`event`]).
    pub metadata: Option<String>,
}

const COLUMNS: &str = "id, aggregatetype, aggregateid, type, version, sequence, topic, status, \
                       attempts, created_at, occurred_at, last_error";

fn event_info(row: &QueryResult, full: bool) -> Result<EventInfo, DbErr> {
    let status: i16 = row.try_get_by_index(7)?;
    Ok(EventInfo {
        id: row.try_get_by_index(0)?,
        aggregate_type: row.try_get_by_index(1)?,
        aggregate_id: row.try_get_by_index(2)?,
        event_type: row.try_get_by_index(3)?,
        version: row.try_get_by_index(4)?,
        sequence: row.try_get_by_index(5)?,
        topic: row.try_get_by_index(6)?,
        status: EventState::from_stored(status),
        attempts: row.try_get_by_index(8)?,
        created_at: from_micros(row.try_get_by_index(9)?),
        occurred_at: from_micros(row.try_get_by_index(10)?),
        last_error: row.try_get_by_index(11)?,
        payload: if full {
            row.try_get_by_index(12)?
        } else {
            None
        },
        metadata: if full {
            row.try_get_by_index(13)?
        } else {
            None
        },
    })
}

/// The dead events `filter` selects, in position (write) order.
///
/// # Errors
/// [`AdminError::Database`] when the query fails.
pub async fn list_dead<C: ConnectionTrait>(
    db: &C,
    filter: &DeadFilter,
) -> Result<Vec<EventInfo>, AdminError> {
    let (conditions, values) = filter.conditions("");
    let sql = format!(
        "SELECT {COLUMNS} FROM outbox WHERE status = {}{conditions} ORDER BY position",
        EventStatus::Dead.value()
    );
    let rows = query(db, &sql, values).await?;
    Ok(rows
        .iter()
        .map(|row| event_info(row, false))
        .collect::<Result<_, _>>()?)
}

/// Event `id` with its payload and metadata, whatever its status, or `None` when the table
/// holds no such event.
///
/// # Errors
/// [`AdminError::Database`] when the query fails.
pub async fn event<C: ConnectionTrait>(db: &C, id: Uuid) -> Result<Option<EventInfo>, AdminError> {
    let sql = format!("SELECT {COLUMNS}, payload, metadata FROM outbox WHERE id = ?");
    let rows = query(db, &sql, vec![id.to_string().into()]).await?;
    Ok(rows.first().map(|row| event_info(row, true)).transpose()?)
}

/// What [`requeue`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Requeued {
    /// Dead events the filter selected, now pending.
    pub selected: u64,
    /// Earlier dead events of the same aggregates, requeued with them to keep the order.
    pub taken_along: u64,
}

/// Puts the dead events `filter` selects back to pending, due now, attempts reset (the last
/// error stays for reference), together with the earlier dead events of their aggregates (see
/// the [module documentation](self) on order). Run it inside a transaction to make it atomic.
///
/// # Errors
/// [`AdminError::Database`] when a statement fails.
pub async fn requeue<C: ConnectionTrait>(
    db: &C,
    filter: &DeadFilter,
) -> Result<Requeued, AdminError> {
    let dead = EventStatus::Dead.value();
    let (conditions, values) = filter.conditions("");
    let sql = format!(
        "SELECT aggregatetype, aggregateid, MAX(sequence), COUNT(*) FROM outbox \
         WHERE status = {dead}{conditions} GROUP BY aggregatetype, aggregateid"
    );
    let aggregates = query(db, &sql, values).await?;
    let now = now_micros();
    let mut done = Requeued::default();
    for chunk in aggregates.chunks(REQUEUE_CHUNK) {
        let mut values = vec![
            EventStatus::Pending.into(),
            now.into(),
            EventStatus::Dead.into(),
        ];
        let mut selected = 0;
        for row in chunk {
            let aggregate_type: String = row.try_get_by_index(0)?;
            let aggregate_id: String = row.try_get_by_index(1)?;
            let last: i64 = row.try_get_by_index(2)?;
            selected += count(row, 3)?;
            values.extend([aggregate_type.into(), aggregate_id.into(), last.into()]);
        }
        let each = vec!["(aggregatetype = ? AND aggregateid = ? AND sequence <= ?)"; chunk.len()];
        let sql = format!(
            "UPDATE outbox SET status = ?, attempts = 0, next_attempt_at = ? \
             WHERE status = ? AND ({})",
            each.join(" OR ")
        );
        let changed = execute(db, &sql, values).await?;
        done.selected += selected.min(changed);
        done.taken_along += changed.saturating_sub(selected);
    }
    Ok(done)
}

/// Deletes the dead events `filter` selects; returns how many. Later events of their
/// aggregates are no longer held back by them. Their in-process deliveries are left alone.
///
/// # Errors
/// [`AdminError::Database`] when the statement fails.
pub async fn drop_dead<C: ConnectionTrait>(db: &C, filter: &DeadFilter) -> Result<u64, AdminError> {
    let (conditions, values) = filter.conditions("");
    let sql = format!(
        "DELETE FROM outbox WHERE status = {}{conditions}",
        EventStatus::Dead.value()
    );
    Ok(execute(db, &sql, values).await?)
}

/// Which events [`replay`] publishes again: the conditions given all hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplayFilter {
    /// Only events of this aggregate id.
    pub aggregate_id: Option<String>,
    /// Only events of this aggregate type.
    pub aggregate_type: Option<String>,
    /// Only events written at or after this time (`created_at`).
    pub since: Option<DateTime<Utc>>,
}

impl ReplayFilter {
    /// The events of aggregate `id` (of any type; narrow with [`Self::aggregate_type`]).
    pub fn aggregate(id: impl Into<String>) -> Self {
        Self {
            aggregate_id: Some(id.into()),
            ..Self::default()
        }
    }

    /// The events written at or after `at`.
    pub fn since(at: DateTime<Utc>) -> Self {
        Self {
            since: Some(at),
            ..Self::default()
        }
    }

    /// Also only events of aggregate type `name`.
    pub fn aggregate_type(mut self, name: impl Into<String>) -> Self {
        self.aggregate_type = Some(name.into());
        self
    }
}

/// Makes the published (or captured) events `filter` selects pending again, due now, so the
/// relay publishes them again in their order (the table relay in position order; the log
/// relay through its sweep). Pending and dead events are left as they are. Returns how many
/// events were replayed. Consumers drop the duplicates by event id in their inbox.
///
/// # Errors
/// [`AdminError::Database`] when the statement fails.
pub async fn replay<C: ConnectionTrait>(db: &C, filter: &ReplayFilter) -> Result<u64, AdminError> {
    let mut conditions = String::new();
    let mut values: Vec<Value> = vec![EventStatus::Pending.into(), now_micros().into()];
    if let Some(id) = &filter.aggregate_id {
        conditions.push_str(" AND aggregateid = ?");
        values.push(id.clone().into());
    }
    if let Some(t) = &filter.aggregate_type {
        conditions.push_str(" AND aggregatetype = ?");
        values.push(t.clone().into());
    }
    if let Some(at) = filter.since {
        conditions.push_str(" AND created_at >= ?");
        values.push(to_micros(at).into());
    }
    let sql = format!(
        "UPDATE outbox SET status = ?, attempts = 0, next_attempt_at = ?, published_at = NULL \
         WHERE status IN ({}, {}){conditions}",
        EventStatus::Published.value(),
        EventStatus::Captured.value()
    );
    Ok(execute(db, &sql, values).await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sea_orm::Database;

    /// Writes event `sequence` of `aggregate_type/aggregate_id` with `status`; returns its id.
    async fn row(
        db: &DatabaseConnection,
        aggregate: (&str, &str),
        sequence: i64,
        event_type: &str,
        status: EventStatus,
    ) -> Uuid {
        let id = Uuid::now_v7();
        let now = now_micros();
        execute(
            db,
            "INSERT INTO outbox (id, aggregatetype, aggregateid, type, version, sequence, payload, \
             shard, occurred_at, created_at, status, attempts, next_attempt_at, last_error) \
             VALUES (?, ?, ?, ?, 1, ?, '{}', 0, ?, ?, ?, 0, ?, ?)",
            vec![
                id.to_string().into(),
                aggregate.0.into(),
                aggregate.1.into(),
                event_type.into(),
                sequence.into(),
                now.into(),
                now.into(),
                status.into(),
                now.into(),
                (status == EventStatus::Dead).then_some("refused").into(),
            ],
        )
        .await
        .expect("insert");
        id
    }

    async fn db() -> DatabaseConnection {
        let db = Database::connect("sqlite::memory:").await.expect("sqlite");
        crate::schema::migrate(&db).await.expect("migrate");
        db
    }

    async fn statuses(db: &DatabaseConnection, aggregate_id: &str) -> Vec<(i64, i16)> {
        query(
            db,
            "SELECT sequence, status FROM outbox WHERE aggregateid = ? ORDER BY sequence",
            vec![aggregate_id.into()],
        )
        .await
        .expect("query")
        .iter()
        .map(|r| {
            (
                r.try_get_by_index(0).expect("sequence"),
                r.try_get_by_index(1).expect("status"),
            )
        })
        .collect()
    }

    #[tokio::test]
    async fn status_counts_held_events_behind_a_dead_one() {
        let db = db().await;
        row(&db, ("Order", "o1"), 1, "A", EventStatus::Published).await;
        row(&db, ("Order", "o1"), 2, "A", EventStatus::Dead).await;
        row(&db, ("Order", "o1"), 3, "A", EventStatus::Pending).await;
        row(&db, ("Order", "o2"), 1, "A", EventStatus::Pending).await;
        let status = status(&db, None).await.expect("status");
        assert_eq!((status.pending, status.held, status.dead), (2, 1, 1));
        assert_eq!(status.by_aggregate_type["Order"].held, 1);
        assert!(status.slot.is_none());
        assert!(matches!(
            super::status(&db, Some("outbox")).await,
            Err(AdminError::NoSuchSlot { .. })
        ));
    }

    #[tokio::test]
    async fn requeue_takes_the_earlier_dead_events_of_the_aggregate_along() {
        let db = db().await;
        let p = EventStatus::Pending.value();
        let d = EventStatus::Dead.value();
        row(&db, ("Order", "o1"), 1, "A", EventStatus::Dead).await;
        row(&db, ("Order", "o1"), 2, "A", EventStatus::Dead).await;
        let third = row(&db, ("Order", "o1"), 3, "B", EventStatus::Dead).await;
        row(&db, ("Order", "o1"), 4, "A", EventStatus::Dead).await;
        row(&db, ("Order", "o2"), 1, "A", EventStatus::Dead).await;

        let done = requeue(&db, &DeadFilter::id(third)).await.expect("requeue");
        assert_eq!(
            done,
            Requeued {
                selected: 1,
                taken_along: 2
            }
        );
        assert_eq!(
            statuses(&db, "o1").await,
            [(1, p), (2, p), (3, p), (4, d)],
            "the later dead event stays dead"
        );
        assert_eq!(statuses(&db, "o2").await, [(1, d)]);

        let listed = list_dead(&db, &DeadFilter::all().event_type("A"))
            .await
            .expect("list");
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].last_error.as_deref(), Some("refused"));
        assert_eq!(
            drop_dead(&db, &DeadFilter::all().aggregate_type("Nope"))
                .await
                .ok(),
            Some(0)
        );
        assert_eq!(drop_dead(&db, &DeadFilter::all()).await.ok(), Some(2));
        assert!(
            list_dead(&db, &DeadFilter::all())
                .await
                .expect("list")
                .is_empty()
        );
    }

    #[tokio::test]
    async fn requeue_over_more_aggregates_than_one_statement_takes() {
        let db = db().await;
        let n = REQUEUE_CHUNK * 2 + 30;
        for i in 0..n {
            let aggregate = ("Order", format!("o{i}"));
            for (sequence, event_type) in [(1, "A"), (2, "B"), (3, "A")] {
                row(
                    &db,
                    (aggregate.0, &aggregate.1),
                    sequence,
                    event_type,
                    EventStatus::Dead,
                )
                .await;
            }
        }
        let done = requeue(&db, &DeadFilter::all().event_type("B"))
            .await
            .expect("requeue");
        let n = n as u64;
        assert_eq!(
            done,
            Requeued {
                selected: n,
                taken_along: n
            }
        );
        let (p, d) = (EventStatus::Pending.value(), EventStatus::Dead.value());
        for i in [0, REQUEUE_CHUNK, n as usize - 1] {
            assert_eq!(
                statuses(&db, &format!("o{i}")).await,
                [(1, p), (2, p), (3, d)],
                "aggregate o{i}"
            );
        }
        assert_eq!(
            list_dead(&db, &DeadFilter::all())
                .await
                .expect("list")
                .len() as u64,
            n
        );
    }

    #[tokio::test]
    async fn replay_makes_published_events_pending_and_leaves_dead_ones() {
        let db = db().await;
        let first = row(&db, ("Order", "o1"), 1, "A", EventStatus::Published).await;
        row(&db, ("Order", "o1"), 2, "A", EventStatus::Captured).await;
        row(&db, ("Order", "o1"), 3, "A", EventStatus::Dead).await;
        row(&db, ("Order", "o2"), 1, "A", EventStatus::Published).await;
        let n = replay(&db, &ReplayFilter::aggregate("o1").aggregate_type("Order"))
            .await
            .expect("replay");
        assert_eq!(n, 2);
        let p = EventStatus::Pending.value();
        assert_eq!(
            statuses(&db, "o1").await,
            [(1, p), (2, p), (3, EventStatus::Dead.value())]
        );
        let shown = event(&db, first).await.expect("event").expect("found");
        assert_eq!(shown.status, Some(EventState::Pending));
        assert_eq!(shown.payload.as_deref(), Some("{}"));
        let future = Utc::now() + chrono::Duration::days(1);
        assert_eq!(
            replay(&db, &ReplayFilter::since(future)).await.ok(),
            Some(0)
        );
    }
}
