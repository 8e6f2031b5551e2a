//! One replication session: holds the slot, reads committed transactions, publishes their
//! events lane by lane and confirms each transaction once it and all before it are acknowledged.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use outbox_core::{Envelope, PublishError, Publisher};
use pgwire_replication::{
    Lsn, PgWireError, ReplicationClient, ReplicationConfig, ReplicationEvent, TlsConfig,
};
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict, Query};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, Statement};

use super::pgoutput::{self, Change, Relations};
use super::{Config, HEARTBEAT_PREFIX, LogRelayError, LogStats, MESSAGE_PREFIX, message};
use crate::codec::{self, Stored};
use crate::relay::DeadLetterPolicy;
use crate::schema::Outbox as O;
use crate::status::EventStatus;
use crate::time::now_micros;

/// How a session ended.
pub(super) enum Outcome {
    /// Asked to stop.
    Shutdown,
    /// Another session holds the slot.
    Busy,
    /// The connection or the stream failed; `held` when it had held the slot.
    Lost { reason: String, held: bool },
}

/// The replication connection's settings from the relay's URL.
pub(super) fn replication_config(config: &Config) -> Result<ReplicationConfig, LogRelayError> {
    let url = postgres_url(&config.url)?;
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8()
            .map(|s| s.into_owned())
            .map_err(|_| LogRelayError::Url("bad percent-encoding".to_owned()))
    };
    let user = match url.username() {
        "" => "postgres".to_owned(),
        user => decode(user)?,
    };
    let password = decode(url.password().unwrap_or(""))?;
    let host = url.host_str().unwrap_or("localhost").to_owned();
    let database = decode(url.path().trim_start_matches('/'))?;
    if database.is_empty() {
        return Err(LogRelayError::Url("the URL names no database".to_owned()));
    }
    let mut tls = TlsConfig::disabled();
    for (key, value) in url.query_pairs() {
        if key == "sslmode" {
            tls = match value.as_ref() {
                "disable" | "allow" | "prefer" => TlsConfig::disabled(),
                "require" => TlsConfig::require(),
                "verify-ca" => TlsConfig::verify_ca(None),
                "verify-full" => TlsConfig::verify_full(None),
                other => {
                    return Err(LogRelayError::Url(format!("unknown sslmode `{other}`")));
                }
            };
        }
    }
    Ok(ReplicationConfig::new(
        host,
        user,
        password,
        database,
        config.slot.clone(),
        config.publication.clone(),
    )
    .with_port(url.port().unwrap_or(5432))
    .with_tls(tls)
    .with_status_interval(config.status_interval)
    .with_application_name("outbox-log-relay"))
}

/// Parses `url`, refusing anything but a `postgres://` (or `postgresql://`) URL.
pub(super) fn postgres_url(url: &str) -> Result<url::Url, LogRelayError> {
    let parsed = url::Url::parse(url).map_err(|e| LogRelayError::Url(e.to_string()))?;
    if matches!(parsed.scheme(), "postgres" | "postgresql") {
        Ok(parsed)
    } else {
        Err(LogRelayError::Url(format!(
            "the log relay needs a postgres:// URL, not {}://",
            parsed.scheme()
        )))
    }
}

/// Where an event was read from, which says what to do once it is published.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    /// A logical decoding message: nothing to mark.
    Message,
    /// An `outbox` row inserted pending: mark it published.
    PendingRow,
    /// An `outbox` row inserted settled: nothing to mark.
    CapturedRow,
}

/// An event on its way to the broker.
struct Item {
    /// The transaction it belongs to (its number in this session).
    txn: u64,
    envelope: Envelope,
    source: Source,
    attempts: u32,
}

/// An item without its envelope, while the publisher holds the envelope.
struct Meta {
    txn: u64,
    source: Source,
    attempts: u32,
}

impl Item {
    fn split(self) -> (Meta, Envelope) {
        let Item {
            txn,
            envelope,
            source,
            attempts,
        } = self;
        (
            Meta {
                txn,
                source,
                attempts,
            },
            envelope,
        )
    }

    fn join(meta: Meta, envelope: Envelope) -> Item {
        Item {
            txn: meta.txn,
            envelope,
            source: meta.source,
            attempts: meta.attempts,
        }
    }
}

/// A committed transaction not yet confirmed.
struct Txn {
    end_lsn: Lsn,
    outstanding: usize,
}

#[derive(Default)]
struct Lane {
    queue: VecDeque<Item>,
    busy: bool,
    not_before: Option<tokio::time::Instant>,
}

/// A lane's finished publish call: the lane, its events (as handed over) and their results.
type Published = (usize, Vec<Item>, Vec<Result<(), PublishError>>);

struct State {
    /// Committed transactions in commit order; the first is number `first_txn`.
    txns: VecDeque<Txn>,
    first_txn: u64,
    lanes: Vec<Lane>,
    buffered: usize,
    confirmed: Lsn,
    /// Ids of pending rows published, to mark.
    marks: Vec<String>,
}

impl State {
    fn txn_mut(&mut self, number: u64) -> Option<&mut Txn> {
        let index = usize::try_from(number.checked_sub(self.first_txn)?).ok()?;
        self.txns.get_mut(index)
    }

    /// One event of transaction `txn` is done (published or recorded dead).
    fn done(&mut self, txn: u64) {
        self.buffered = self.buffered.saturating_sub(1);
        if let Some(t) = self.txn_mut(txn) {
            t.outstanding = t.outstanding.saturating_sub(1);
        }
    }

    /// Pops the leading transactions that are complete; returns the new confirmable position.
    fn settle(&mut self, stats: &mut LogStats) -> Option<Lsn> {
        let mut moved = None;
        while self.txns.front().is_some_and(|t| t.outstanding == 0) {
            if let Some(t) = self.txns.pop_front() {
                self.first_txn += 1;
                if t.end_lsn > self.confirmed {
                    self.confirmed = t.end_lsn;
                    moved = Some(t.end_lsn);
                }
                stats.transactions += 1;
            }
        }
        moved
    }

    /// A position with nothing before it left to publish (a keepalive's or heartbeat's):
    /// confirmable once the transactions before it are.
    fn mark_position(&mut self, lsn: Lsn) {
        match self.txns.back_mut() {
            Some(last) if last.outstanding == 0 => last.end_lsn = last.end_lsn.max(lsn),
            _ => self.txns.push_back(Txn {
                end_lsn: lsn,
                outstanding: 0,
            }),
        }
    }

    fn is_idle(&self) -> bool {
        self.buffered == 0
    }
}

/// Runs one session until shutdown or failure.
pub(super) async fn run(
    config: &Config,
    replication: &ReplicationConfig,
    db: &DatabaseConnection,
    publisher: &Arc<dyn Publisher>,
    stats: &mut LogStats,
    mut shutdown: Pin<&mut impl Future>,
) -> Outcome {
    let mut client = match tokio::time::timeout(
        Duration::from_secs(15),
        ReplicationClient::connect(replication.clone()),
    )
    .await
    {
        Ok(Ok(client)) => client,
        Ok(Err(e)) => return lost(&e, false),
        Err(_) => {
            return Outcome::Lost {
                reason: "connecting for replication timed out".to_owned(),
                held: false,
            };
        }
    };
    match tokio::time::timeout(Duration::from_secs(15), client.wait_started()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            client.abort();
            return lost(&e, false);
        }
        Err(_) => {
            client.abort();
            return Outcome::Lost {
                reason: "starting replication timed out".to_owned(),
                held: false,
            };
        }
    }
    stats.sessions += 1;
    tracing::info!(
        slot = %config.slot,
        lanes = config.concurrency,
        batch_size = config.batch_size,
        "log relay: reading the slot"
    );
    let mut state = State {
        txns: VecDeque::new(),
        first_txn: 0,
        lanes: (0..config.concurrency).map(|_| Lane::default()).collect(),
        buffered: 0,
        confirmed: Lsn(0),
        marks: Vec::new(),
    };
    let mut relations = Relations::default();
    let mut open: Option<Vec<(Envelope, Source)>> = None;
    let mut in_flight: FuturesUnordered<BoxFuture<'static, Published>> = FuturesUnordered::new();
    let mut heartbeat = tokio::time::interval(config.heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    heartbeat.reset();
    let mut last_event = Instant::now();
    let mut marking: Option<tokio::task::JoinHandle<()>> = None;
    let mut sweep_tick = tokio::time::interval(config.sweep_interval);
    sweep_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sweeping: Option<tokio::task::JoinHandle<()>> = None;

    let outcome = loop {
        start_lanes(config, publisher, &mut state, &mut in_flight);
        let retry_at = state
            .lanes
            .iter()
            .filter(|l| !l.busy && !l.queue.is_empty())
            .filter_map(|l| l.not_before)
            .min();
        let reading = state.buffered < config.max_buffered;
        tokio::select! {
            _ = shutdown.as_mut() => break Outcome::Shutdown,
            event = client.recv(), if reading => {
                let event = match event {
                    Ok(Some(event)) => event,
                    Ok(None) => break Outcome::Lost {
                        reason: "the server ended the replication stream".to_owned(),
                        held: true,
                    },
                    Err(e) => break lost(&e, true),
                };
                match event {
                    ReplicationEvent::Begin { .. } => open = Some(Vec::new()),
                    ReplicationEvent::XLogData { data, .. } => {
                        if let Some(read) = decode_change(&data, &mut relations) {
                            open.get_or_insert_with(Vec::new).push(read);
                        }
                    }
                    ReplicationEvent::Message { transactional: true, prefix, content, .. }
                        if prefix == MESSAGE_PREFIX =>
                    {
                        match message::decode(&content) {
                            Ok(envelope) => open
                                .get_or_insert_with(Vec::new)
                                .push((envelope, Source::Message)),
                            Err(e) => {
                                metrics::counter!("outbox_log_relay_undecodable_total")
                                    .increment(1);
                                tracing::error!(
                                    error = %e,
                                    "log relay: an `outbox` message is not an event; skipped"
                                );
                            }
                        }
                    }
                    ReplicationEvent::Message { transactional: false, lsn, .. } => {
                        if open.is_none() {
                            state.mark_position(lsn);
                        }
                    }
                    ReplicationEvent::Message { .. } => {}
                    ReplicationEvent::Commit { end_lsn, lsn, .. } => {
                        tracing::trace!(%lsn, %end_lsn, "commit");
                        let events = open.take().unwrap_or_default();
                        let txn = state.first_txn + state.txns.len() as u64;
                        state.txns.push_back(Txn { end_lsn, outstanding: events.len() });
                        state.buffered += events.len();
                        let lanes = state.lanes.len();
                        for (envelope, source) in events {
                            let shard = crate::shard_of(
                                envelope.aggregate_type(),
                                envelope.aggregate_id(),
                            );
                            let lane = usize::from(shard.unsigned_abs()) % lanes;
                            state.lanes[lane].queue.push_back(Item {
                                txn,
                                envelope,
                                source,
                                attempts: 0,
                            });
                        }
                        last_event = Instant::now();
                    }
                    ReplicationEvent::KeepAlive { wal_end, .. } => {
                        if open.is_none() && !wal_end.is_zero() {
                            state.mark_position(wal_end);
                        }
                    }
                    ReplicationEvent::StoppedAt { .. } => {}
                }
            }
            Some((lane, items, results)) = in_flight.next(), if !in_flight.is_empty() => {
                settle_batch(config, db, &mut state, stats, lane, items, results).await;
            }
            () = sleep_until(retry_at), if retry_at.is_some() => {}
            _ = sweep_tick.tick() => {
                if sweeping.as_ref().is_none_or(tokio::task::JoinHandle::is_finished) {
                    let (db, publisher) = (db.clone(), Arc::clone(publisher));
                    let (timeout, age) = (config.publish_timeout, config.sweep_age);
                    sweeping = Some(tokio::spawn(async move {
                        match super::sweep::sweep(db, publisher, timeout, age).await {
                            Ok(n) => metrics::counter!("outbox_relay_published_total").increment(n),
                            Err(e) => tracing::warn!(error = %e, "log relay sweep failed"),
                        }
                    }));
                }
            }
            _ = heartbeat.tick() => {
                if state.is_idle() && last_event.elapsed() >= config.heartbeat {
                    emit_heartbeat(db).await;
                }
            }
        }
        if let Some(lsn) = state.settle(stats) {
            tracing::trace!(%lsn, "confirm");
            client.update_applied_lsn(lsn);
        }
        if state.marks.len() >= 1000 || (!state.marks.is_empty() && state.is_idle()) {
            let done = marking
                .as_ref()
                .is_none_or(tokio::task::JoinHandle::is_finished);
            if done {
                let ids = std::mem::take(&mut state.marks);
                marking = Some(tokio::spawn(mark_published(db.clone(), ids)));
            }
        }
    };

    // Let the batches in flight finish (bounded by the publish timeout each), confirm what they
    // completed, then end the stream.
    if matches!(outcome, Outcome::Shutdown) {
        let deadline = tokio::time::Instant::now() + config.publish_timeout;
        while !in_flight.is_empty() {
            match tokio::time::timeout_at(deadline, in_flight.next()).await {
                Ok(Some((lane, items, results))) => {
                    settle_batch(config, db, &mut state, stats, lane, items, results).await;
                }
                _ => break,
            }
        }
        if let Some(lsn) = state.settle(stats) {
            client.update_applied_lsn(lsn);
        }
        // Give the worker one status interval to report the last position.
        tokio::time::sleep(config.status_interval.min(Duration::from_secs(2))).await;
    }
    if !state.marks.is_empty() {
        let ids = std::mem::take(&mut state.marks);
        let _ =
            tokio::time::timeout(Duration::from_secs(10), mark_published(db.clone(), ids)).await;
    }
    if let Some(marking) = marking {
        let _ = tokio::time::timeout(Duration::from_secs(10), marking).await;
    }
    if let Some(sweeping) = sweeping {
        sweeping.abort();
    }
    client.stop();
    let _ = tokio::time::timeout(Duration::from_secs(5), client.shutdown()).await;
    outcome
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

fn lost(e: &PgWireError, held: bool) -> Outcome {
    let reason = e.to_string();
    // 55006 object_in_use: "replication slot ... is active for PID ..."
    if reason.contains("55006") || reason.contains("is active for PID") {
        Outcome::Busy
    } else {
        Outcome::Lost { reason, held }
    }
}

/// Decodes one pgoutput change; `Some` for an insert into `outbox` that carries an event to
/// publish (pending or captured). Rows the relay wrote itself (dead) are not published.
fn decode_change(data: &[u8], relations: &mut Relations) -> Option<(Envelope, Source)> {
    match pgoutput::decode(data) {
        Ok(Change::Relation(relation)) => {
            relations.learn(relation);
            None
        }
        Ok(Change::Insert {
            relation,
            mut values,
        }) => {
            let relation = relations.get(relation)?;
            if relation.name != "outbox" {
                return None;
            }
            // Each value moves out of the decoded row into the envelope: no copy.
            let mut column = |name: &str| -> Option<String> {
                let index = relation.columns.iter().position(|c| c == name)?;
                values.get_mut(index)?.take()
            };
            let source = match column("status").and_then(|s| s.parse::<i16>().ok()) {
                Some(s) if s == EventStatus::Pending.value() => Source::PendingRow,
                Some(s) if s == EventStatus::Captured.value() => Source::CapturedRow,
                _ => return None,
            };
            let stored = match Stored::from_text(column) {
                Ok(stored) => stored,
                Err(missing) => {
                    metrics::counter!("outbox_log_relay_undecodable_total").increment(1);
                    tracing::error!(
                        column = missing,
                        "log relay: an outbox row lacks a column; skipped"
                    );
                    return None;
                }
            };
            let id = stored.id().to_owned();
            match stored.envelope() {
                Ok(envelope) => Some((envelope, source)),
                Err(e) => {
                    metrics::counter!("outbox_log_relay_undecodable_total").increment(1);
                    tracing::error!(event_id = %id, error = %e, "log relay: outbox row skipped");
                    None
                }
            }
        }
        Ok(Change::Other) => None,
        Err(e) => {
            metrics::counter!("outbox_log_relay_undecodable_total").increment(1);
            tracing::error!(error = %e, "log relay: change skipped");
            None
        }
    }
}

/// Hands the next batch of each free lane to the publisher.
fn start_lanes(
    config: &Config,
    publisher: &Arc<dyn Publisher>,
    state: &mut State,
    in_flight: &mut FuturesUnordered<BoxFuture<'static, Published>>,
) {
    let now = tokio::time::Instant::now();
    for (index, lane) in state.lanes.iter_mut().enumerate() {
        if lane.busy || lane.queue.is_empty() || lane.not_before.is_some_and(|at| at > now) {
            continue;
        }
        lane.not_before = None;
        let take = lane.queue.len().min(config.batch_size);
        let items: Vec<Item> = lane.queue.drain(..take).collect();
        lane.busy = true;
        let publisher = Arc::clone(publisher);
        let timeout = config.publish_timeout;
        in_flight.push(
            async move {
                // The publisher takes a slice of envelopes: move them out of the items for the
                // call (no copy of the payloads) and back afterwards.
                let (metas, batch): (Vec<Meta>, Vec<Envelope>) =
                    items.into_iter().map(Item::split).unzip();
                let results = match tokio::time::timeout(timeout, publisher.publish(&batch)).await {
                    Ok(results) if results.len() == batch.len() => results,
                    Ok(results) => {
                        let error = format!(
                            "the publisher returned {} results for {} events",
                            results.len(),
                            batch.len()
                        );
                        batch
                            .iter()
                            .map(|_| Err(PublishError::transient(error.clone())))
                            .collect()
                    }
                    Err(_) => batch
                        .iter()
                        .map(|_| {
                            Err(PublishError::transient(format!(
                                "no acknowledgement within {timeout:?}"
                            )))
                        })
                        .collect(),
                };
                let items = metas
                    .into_iter()
                    .zip(batch)
                    .map(|(meta, envelope)| Item::join(meta, envelope))
                    .collect();
                (index, items, results)
            }
            .boxed(),
        );
    }
}

/// Applies the results of one lane's batch: done, retried (back to the front of the lane, in
/// order) or dead.
async fn settle_batch(
    config: &Config,
    db: &DatabaseConnection,
    state: &mut State,
    stats: &mut LogStats,
    lane: usize,
    items: Vec<Item>,
    results: Vec<Result<(), PublishError>>,
) {
    let mut back = Vec::new();
    let mut delay = None;
    let mut published = 0u64;
    for (mut item, result) in items.into_iter().zip(results) {
        match result {
            Ok(()) => {
                published += 1;
                if item.source == Source::PendingRow {
                    state.marks.push(item.envelope.id().to_string());
                }
                state.done(item.txn);
            }
            Err(e) if e.is_not_attempted() => back.push(item),
            Err(e) => {
                item.attempts = item.attempts.saturating_add(1);
                let gives_up = !e.is_retryable() || !config.retry.should_retry(item.attempts);
                if gives_up && config.dead_letter_policy == DeadLetterPolicy::Skip {
                    match record_dead(db, &item, &e.to_string()).await {
                        Ok(()) => {
                            stats.dead_lettered += 1;
                            metrics::counter!("outbox_relay_dead_lettered_total").increment(1);
                            tracing::error!(
                                event_id = %item.envelope.id(),
                                aggregate_type = item.envelope.aggregate_type(),
                                aggregate_id = item.envelope.aggregate_id(),
                                error = %e,
                                "log relay: event dead, recorded in the outbox table"
                            );
                            state.done(item.txn);
                            continue;
                        }
                        Err(db_error) => tracing::warn!(
                            error = %db_error,
                            "log relay: recording a dead event failed; retrying it"
                        ),
                    }
                }
                let wait = config.retry.delay_after(Ord::min(item.attempts, 30));
                if gives_up {
                    tracing::error!(
                        event_id = %item.envelope.id(),
                        error = %e,
                        "log relay: event keeps failing; its lane waits (dead-letter policy Block)"
                    );
                } else {
                    tracing::warn!(
                        event_id = %item.envelope.id(),
                        attempts = item.attempts,
                        error = %e,
                        "log relay: publish failed; retrying"
                    );
                }
                stats.retried += 1;
                metrics::counter!("outbox_relay_retried_total").increment(1);
                delay = Some(delay.map_or(wait, |d: Duration| d.max(wait)));
                back.push(item);
            }
        }
    }
    stats.published += published;
    metrics::counter!("outbox_relay_published_total").increment(published);
    let lane = &mut state.lanes[lane];
    lane.busy = false;
    for item in back.into_iter().rev() {
        lane.queue.push_front(item);
    }
    if let Some(delay) = delay {
        lane.not_before = Some(tokio::time::Instant::now() + delay);
    }
}

/// Records `item` as a dead `outbox` row with `error`: updates its row, or (a message, which
/// has none) inserts one.
async fn record_dead(db: &DatabaseConnection, item: &Item, error: &str) -> Result<(), DbErr> {
    let now = now_micros();
    let attempts = i32::try_from(item.attempts).unwrap_or(i32::MAX);
    let statement = if item.source == Source::Message {
        let values = codec::values(&item.envelope).map_err(|e| DbErr::Custom(e.to_string()))?;
        let mut insert = Query::insert()
            .into_table(O::Table)
            .columns(codec::columns().into_iter().chain([
                O::CreatedAt,
                O::NextAttemptAt,
                O::Status,
                O::Attempts,
                O::LastError,
            ]))
            .on_conflict(OnConflict::column(O::Id).do_nothing().to_owned())
            .to_owned();
        // As many values as columns, by the codec's array lengths: this cannot panic.
        insert.values_panic(values.into_iter().map(Expr::val).chain([
            Expr::val(now),
            Expr::val(now),
            Expr::val(EventStatus::Dead.value()),
            Expr::val(attempts),
            Expr::val(error),
        ]));
        db.get_database_backend().build(&insert)
    } else {
        let update = Query::update()
            .table(O::Table)
            .values([
                (O::Status, EventStatus::Dead.into()),
                (O::Attempts, attempts.into()),
                (O::LastError, error.into()),
                (O::NextAttemptAt, now.into()),
            ])
            .and_where(Expr::col(O::Id).eq(item.envelope.id().to_string()))
            .to_owned();
        db.get_database_backend().build(&update)
    };
    tokio::time::timeout(Duration::from_secs(30), db.execute_raw(statement))
        .await
        .unwrap_or_else(|_| Err(DbErr::Custom("recording a dead event timed out".to_owned())))
        .map(drop)
}

/// Marks published the pending rows with these ids (rows saved with [`crate::Capture::Table`]),
/// so that a table relay does not send them again.
pub(super) async fn mark_published(db: DatabaseConnection, ids: Vec<String>) {
    let now = now_micros();
    for chunk in ids.chunks(1000) {
        let update = Query::update()
            .table(O::Table)
            .values([
                (O::Status, EventStatus::Published.into()),
                (O::PublishedAt, now.into()),
            ])
            .and_where(Expr::col(O::Status).eq(EventStatus::Pending.value()))
            .and_where(Expr::col(O::Id).is_in(chunk.iter().map(String::as_str)))
            .to_owned();
        let update = db.execute_raw(db.get_database_backend().build(&update));
        match tokio::time::timeout(Duration::from_secs(30), update).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "log relay: marking rows published failed"),
            Err(_) => tracing::warn!("log relay: marking rows published timed out"),
        }
    }
}

/// Emits a heartbeat message, so the idle relay has a position to confirm.
async fn emit_heartbeat(db: &DatabaseConnection) {
    let emit = db.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "SELECT pg_logical_emit_message(false, $1, '')",
        [HEARTBEAT_PREFIX.into()],
    ));
    match tokio::time::timeout(Duration::from_secs(10), emit).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "log relay: heartbeat failed"),
        Err(_) => tracing::warn!("log relay: heartbeat timed out"),
    }
}

/// Reports the slot's lag and confirmed position every 5 s; warns past `warning` bytes.
pub(super) async fn watch_lag(db: DatabaseConnection, slot: String, warning: u64) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        let status = tokio::time::timeout(Duration::from_secs(10), super::slot_status(&db, &slot));
        match status.await {
            Ok(Ok(Some(status))) => {
                let lag = status.lag_bytes.unwrap_or(0);
                metrics::gauge!("outbox_log_slot_lag_bytes", "slot" => slot.clone())
                    .set(lag as f64);
                if let Some(lsn) = status.confirmed_lsn_bytes {
                    metrics::gauge!("outbox_log_confirmed_lsn", "slot" => slot.clone())
                        .set(lsn as f64);
                }
                if lag > warning {
                    tracing::warn!(
                        slot = %slot,
                        lag_bytes = lag,
                        "log relay: the slot keeps more write-ahead log than the warning level"
                    );
                }
            }
            Ok(Ok(None)) => tracing::warn!(slot = %slot, "log relay: the slot does not exist"),
            Ok(Err(e)) => tracing::debug!(error = %e, "log relay: reading the slot's lag failed"),
            Err(_) => tracing::debug!("log relay: reading the slot's lag timed out"),
        }
    }
}
