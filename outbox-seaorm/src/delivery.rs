//! Running in-process handlers after commit, with durable completion records, and the recovery
//! worker that reruns what a crash or a failure left pending.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use outbox_core::{DispatchJob, Envelope, EventContext, Handler, RetryPolicy};
use sea_orm::sea_query::{Condition, Expr, ExprTrait, Order, Query};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, IsolationLevel,
    TransactionTrait,
};

use crate::codec::{self, Stored, Undecodable};
use crate::error::Error;
use crate::outbox::Outbox;
use crate::save::Written;
use crate::schema::{Outbox as O, OutboxDelivery as D};
use crate::sql::statement;
use crate::status::DeliveryStatus;
use crate::time;

/// The longest `last_error` stored, in bytes.
const MAX_ERROR_LEN: usize = 8 * 1024;

/// How often the worker counts the pending rows whose handler it does not know.
const UNKNOWN_CHECK_INTERVAL: Duration = Duration::from_secs(60);

/// What became of one delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The handler succeeded and its completion is recorded.
    Completed,
    /// The handler failed; a retry is scheduled.
    Failed,
    /// The handler failed for the last time (or permanently); the row is dead.
    Dead,
    /// The row is not pending (done, dead, or never written): nothing ran.
    Skipped,
}

/// The after-commit job of one transaction: runs every (event, handler) pair in order, each
/// bounded by its own timeout, else `timeout`.
pub(crate) fn dispatch_job_within(
    db: DatabaseConnection,
    retry: RetryPolicy,
    timeout: Duration,
    written: Written,
) -> DispatchJob {
    Box::pin(async move {
        for (envelope, handlers) in written.envelopes.iter().zip(&written.handlers) {
            for handler in handlers {
                deliver_logged(&db, &retry, envelope, handler, timeout).await;
            }
        }
    })
}

/// [`deliver`], with its database errors logged: the row stays pending for the worker.
pub(crate) async fn deliver_logged(
    db: &DatabaseConnection,
    retry: &RetryPolicy,
    envelope: &Envelope,
    handler: &Handler,
    default_timeout: Duration,
) -> Option<Outcome> {
    match deliver(db, retry, envelope, handler, default_timeout).await {
        Ok(outcome) => Some(outcome),
        Err(error) => {
            tracing::warn!(
                event_id = %envelope.id(),
                handler = handler.id(),
                error = &error as &dyn std::error::Error,
                "could not record a handler's delivery; the recovery worker will run it again"
            );
            None
        }
    }
}

/// Runs `handler` on `envelope` once, in its own transaction, and records the outcome in
/// `outbox_delivery`. The run is bounded by the handler's timeout (else `default_timeout`): a
/// handler that hangs is cancelled, its transaction rolled back (releasing the row lock and the
/// pooled connection), and the attempt recorded as a retryable failure.
///
/// On PostgreSQL and MariaDB the delivery row is locked (`SELECT .. FOR UPDATE`) for the whole
/// run, so the immediate dispatch and the recovery worker never run one handler twice at once.
/// On SQLite the row is checked first, outside the transaction, and the completion is recorded
/// with `UPDATE .. WHERE status = <pending>`; if another run completed it meanwhile, this run's writes
/// are rolled back. The transaction begins `IMMEDIATE`, as a save's does: a deferred one that
/// reads and then writes fails at once with `SQLITE_BUSY` after another connection's commit.
/// It holds SQLite's single write lock while the handler runs, so a handler must write through
/// its context's transaction, not through another connection (which would wait for the lock
/// until the handler's timeout).
pub(crate) async fn deliver(
    db: &DatabaseConnection,
    retry: &RetryPolicy,
    envelope: &Envelope,
    handler: &Handler,
    default_timeout: Duration,
) -> Result<Outcome, DbErr> {
    let backend = db.get_database_backend();
    let event_id = envelope.id().to_string();
    let select = |lock: &str| {
        statement(
            backend,
            &format!(
                "SELECT status, attempts FROM outbox_delivery WHERE event_id = ? AND handler = ?{lock}"
            ),
            vec![event_id.as_str().into(), handler.id().into()],
        )
    };
    let (txn, row) = if backend == DbBackend::Sqlite {
        let row = db.query_one_raw(select("")).await?;
        (crate::outbox::begin_write(db).await?, row)
    } else {
        let txn = db.begin().await?;
        let row = txn.query_one_raw(select(" FOR UPDATE")).await?;
        (txn, row)
    };
    let Some(row) = row else {
        txn.rollback().await?;
        return Ok(Outcome::Skipped);
    };
    let status: i16 = row.try_get_by_index(0)?;
    let attempts: i32 = row.try_get_by_index(1)?;
    if status != DeliveryStatus::Pending.value() {
        txn.rollback().await?;
        return Ok(Outcome::Skipped);
    }
    let attempt = u32::try_from(attempts).unwrap_or(0).saturating_add(1);

    let result = {
        let ctx = crate::with_transaction(EventContext::new(envelope, handler.id(), attempt), &txn);
        let timeout = handler.timeout_or(default_timeout);
        handler.call_within(envelope, &ctx, timeout).await
    };

    match result {
        Ok(()) => {
            let done = txn
                .execute_raw(statement(
                    backend,
                    "UPDATE outbox_delivery SET status = ?, completed_at = ? \
                     WHERE event_id = ? AND handler = ? AND status = ?",
                    vec![
                        DeliveryStatus::Done.into(),
                        time::now_micros().into(),
                        event_id.as_str().into(),
                        handler.id().into(),
                        DeliveryStatus::Pending.into(),
                    ],
                ))
                .await?;
            if done.rows_affected() == 0 {
                txn.rollback().await?;
                tracing::debug!(
                    event_id = %envelope.id(),
                    handler = handler.id(),
                    "delivery completed by another run meanwhile; this run's writes rolled back"
                );
                return Ok(Outcome::Skipped);
            }
            txn.commit().await?;
            metrics::counter!("outbox_handler_completed_total", "handler" => handler.id())
                .increment(1);
            tracing::debug!(
                event_id = %envelope.id(),
                handler = handler.id(),
                attempt,
                "handler completed"
            );
            Ok(Outcome::Completed)
        }
        Err(error) => {
            // The handler's own writes go with its transaction.
            txn.rollback().await?;
            let dead = !error.is_retryable() || !retry.should_retry(attempt);
            let mut message = error.to_string();
            truncate(&mut message, MAX_ERROR_LEN);
            let now = time::now_micros();
            let next = now.saturating_add(
                i64::try_from(retry.delay_after(attempt).as_micros()).unwrap_or(i64::MAX),
            );
            db.execute_raw(statement(
                backend,
                "UPDATE outbox_delivery SET status = ?, attempts = ?, next_attempt_at = ?, \
                 last_error = ? WHERE event_id = ? AND handler = ? AND status = ?",
                vec![
                    if dead {
                        DeliveryStatus::Dead
                    } else {
                        DeliveryStatus::Pending
                    }
                    .into(),
                    i32::try_from(attempt).unwrap_or(i32::MAX).into(),
                    next.into(),
                    message.as_str().into(),
                    event_id.as_str().into(),
                    handler.id().into(),
                    DeliveryStatus::Pending.into(),
                ],
            ))
            .await?;
            if dead {
                metrics::counter!("outbox_handler_dead_total", "handler" => handler.id())
                    .increment(1);
                tracing::error!(
                    event_id = %envelope.id(),
                    event = envelope.event_name(),
                    handler = handler.id(),
                    attempt,
                    permanent = !error.is_retryable(),
                    error = %message,
                    "handler failed for the last time; delivery is dead"
                );
                Ok(Outcome::Dead)
            } else {
                metrics::counter!("outbox_handler_failed_total", "handler" => handler.id())
                    .increment(1);
                tracing::warn!(
                    event_id = %envelope.id(),
                    event = envelope.event_name(),
                    handler = handler.id(),
                    attempt,
                    error = %message,
                    "handler failed; retry scheduled"
                );
                Ok(Outcome::Failed)
            }
        }
    }
}

fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

/// Reruns the in-process handlers whose delivery is still pending: after a crash between commit
/// and completion, after a failure whose retry is due, or when the save used
/// [`outbox_core::DeferredDispatcher`].
///
/// Like Spring Modulith's resubmission of incomplete event publications, but continuous. Each
/// round claims up to `batch_size` due rows (pending, `next_attempt_at <= now`, with
/// `FOR UPDATE SKIP LOCKED` on PostgreSQL and MariaDB so that several workers share the work),
/// pushes their `next_attempt_at` a lease ahead so no other worker picks them up meanwhile, then
/// runs each handler exactly as the after-commit dispatch does, recording success, a retry with
/// the outbox's [`RetryPolicy`], or death after its last attempt. Each run is bounded by the
/// handler's timeout, else [`DeliveryWorker::handler_timeout`]; a run that hangs fails as a
/// retryable attempt.
///
/// A row whose handler is not in the outbox's registry (another service's handler, or one
/// renamed since the row was written) is not claimed: it stays pending for a process that has
/// the handler. The worker counts such rows per handler id every minute in the
/// `outbox_delivery_unknown_handler_rows` gauge (label `handler`) and logs each id once, with
/// what to do; [`DeliveryWorker::unknown_handler_rows`] counts them on demand. After a rename,
/// move the rows with [`rename_handler`] (see "Renaming a handler" on [`outbox_core::Handler`]).
///
/// ```no_run
/// # async fn run(outbox: outbox_seaorm::Outbox) {
/// use std::time::Duration;
/// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
/// let worker = outbox_seaorm::DeliveryWorker::new(outbox).poll_interval(Duration::from_secs(1));
/// let task = tokio::spawn(async move {
///     worker.run_until(async { let _ = stopped.await; }).await;
/// });
/// // ... serve ...
/// let _ = stop.send(());
/// let _ = task.await;
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct DeliveryWorker {
    outbox: Outbox,
    poll_interval: Duration,
    batch_size: u64,
    lease: Duration,
    handler_timeout: Duration,
    unknown: Arc<Mutex<UnknownHandlers>>,
}

/// What the worker knows of rows whose handler it does not have.
#[derive(Debug, Default)]
struct UnknownHandlers {
    /// When they were last counted.
    checked: Option<Instant>,
    /// The ids logged so far (each once), with their last count.
    seen: HashMap<String, u64>,
}

impl DeliveryWorker {
    /// A worker for `outbox`'s database, handlers and retry policy: polls every 5 s, claims up to
    /// 100 rows at a time with a 60 s lease, and gives a handler without its own timeout the
    /// outbox's [`handler_timeout`](crate::OutboxBuilder::handler_timeout) (default
    /// [`Handler::DEFAULT_TIMEOUT`], 30 s).
    pub fn new(outbox: Outbox) -> Self {
        let handler_timeout = outbox.handler_timeout();
        DeliveryWorker {
            outbox,
            poll_interval: Duration::from_secs(5),
            batch_size: 100,
            lease: Duration::from_secs(60),
            handler_timeout,
            unknown: Arc::default(),
        }
    }

    /// Sets how long a handler without its own timeout (`#[event_handler(timeout = "...")]`)
    /// may run before it is cancelled and its attempt fails as retryable (default 30 s). Keep it
    /// under the [lease](DeliveryWorker::lease).
    #[must_use]
    pub fn handler_timeout(mut self, timeout: Duration) -> Self {
        self.handler_timeout = timeout;
        self
    }

    /// Sets how long the worker sleeps when no row is due.
    #[must_use]
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Sets how many rows one round claims (at least 1).
    #[must_use]
    pub fn batch_size(mut self, rows: u64) -> Self {
        self.batch_size = Ord::max(rows, 1);
        self
    }

    /// Sets how far a claim pushes a row's `next_attempt_at`: the time a round has to run it
    /// before another worker may claim it again (a second run then waits for the first one's row
    /// lock and finds the row done).
    #[must_use]
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// Runs rounds until `shutdown` completes; a round that fails is logged and retried after
    /// the poll interval. Rounds follow each other at once while they come back full.
    pub async fn run_until<F: Future<Output = ()>>(&self, shutdown: F) {
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let sleep = tokio::select! {
                () = &mut shutdown => return,
                result = self.run_once() => match result {
                    Ok(n) => u64::try_from(n).unwrap_or(u64::MAX) < self.batch_size,
                    Err(error) => {
                        tracing::warn!(
                            error = &error as &dyn std::error::Error,
                            "delivery worker round failed"
                        );
                        true
                    }
                },
            };
            if sleep {
                tokio::select! {
                    () = &mut shutdown => return,
                    () = tokio::time::sleep(self.poll_interval) => {}
                }
            }
        }
    }

    /// Runs one round: claims the due rows of the handlers it has and runs them. Returns how
    /// many rows it claimed (including those it could not run: event row missing). Once a
    /// minute it also counts the pending rows of handlers it does not have (see
    /// [`DeliveryWorker::unknown_handler_rows`]).
    ///
    /// # Errors
    /// [`Error::Database`] when claiming or counting fails; failures of single deliveries are
    /// recorded on their rows and logged instead.
    pub async fn run_once(&self) -> Result<usize, Error> {
        let db = self.outbox.connection();
        let known = self.known_ids();
        let claimed = self.claim(db, &known).await?;
        let mut envelopes: HashMap<String, Option<Envelope>> = HashMap::new();
        for (event_id, handler_id) in &claimed {
            let Some(handler) = self.outbox.handlers().get(handler_id, None) else {
                continue;
            };
            if !envelopes.contains_key(event_id) {
                let loaded = load_envelope(db, event_id).await?;
                envelopes.insert(event_id.clone(), loaded);
            }
            let Some(Some(envelope)) = envelopes.get(event_id) else {
                tracing::warn!(
                    event_id = %event_id,
                    handler = %handler_id,
                    "delivery row without its outbox row; left pending"
                );
                continue;
            };
            deliver_logged(
                db,
                self.outbox.retry_policy(),
                envelope,
                handler,
                self.handler_timeout,
            )
            .await;
        }
        let due = {
            let unknown = self.unknown.lock().unwrap_or_else(PoisonError::into_inner);
            unknown
                .checked
                .is_none_or(|at| at.elapsed() >= UNKNOWN_CHECK_INTERVAL)
        };
        if due {
            self.unknown_handler_rows().await?;
        }
        Ok(claimed.len())
    }

    /// Counts the pending delivery rows whose handler id no in-process handler of this worker's
    /// registry has, per id (sorted by id): rows another service runs, or rows written under an
    /// id since renamed, which nothing here will ever run. Sets the
    /// `outbox_delivery_unknown_handler_rows` gauge of each id (0 once its rows are gone) and
    /// logs each id the first time it is seen, with what to do about it.
    ///
    /// # Errors
    /// [`Error::Database`] when the count fails.
    pub async fn unknown_handler_rows(&self) -> Result<Vec<(String, u64)>, Error> {
        let db = self.outbox.connection();
        let known = self.known_ids();
        let select = Query::select()
            .column(D::Handler)
            .expr(Expr::col(D::Handler).count())
            .from(D::Table)
            .and_where(Expr::col(D::Status).eq(DeliveryStatus::Pending.value()))
            .and_where(Expr::col(D::Handler).is_not_in(known.iter().copied()))
            .group_by_col(D::Handler)
            .order_by(D::Handler, Order::Asc)
            .to_owned();
        let mut counts = Vec::new();
        for row in db.query_all(&select).await? {
            let handler: String = row.try_get_by_index(0)?;
            let rows: i64 = row.try_get_by_index(1)?;
            counts.push((handler, u64::try_from(rows).unwrap_or(0)));
        }
        let mut unknown = self.unknown.lock().unwrap_or_else(PoisonError::into_inner);
        unknown.checked = Some(Instant::now());
        for (handler, rows) in &counts {
            if !unknown.seen.contains_key(handler) {
                tracing::warn!(
                    handler = %handler,
                    rows,
                    known = ?known,
                    "pending delivery rows of a handler id this process does not have: nothing \
                     here runs them. If another service on this database has the handler, it \
                     runs them. If the handler was renamed, give it back its old id \
                     (`#[event_handler(id = \"<old id>\")]`) or move the rows: \
                     `outbox_seaorm::rename_handler(&db, None, \"<old id>\", \"<new id>\")`, \
                     or `UPDATE outbox_delivery SET handler = '<new id>' WHERE handler = \
                     '<old id>'`"
                );
            }
            metrics::gauge!("outbox_delivery_unknown_handler_rows", "handler" => handler.clone())
                .set(*rows as f64);
        }
        for (handler, last) in &mut unknown.seen {
            if *last > 0 && !counts.iter().any(|(h, _)| h == handler) {
                *last = 0;
                metrics::gauge!("outbox_delivery_unknown_handler_rows", "handler" => handler.clone())
                    .set(0.0);
            }
        }
        for (handler, rows) in &counts {
            unknown.seen.insert(handler.clone(), *rows);
        }
        Ok(counts)
    }

    /// The ids of the in-process handlers this worker runs.
    fn known_ids(&self) -> BTreeSet<&'static str> {
        self.outbox
            .handlers()
            .iter()
            .filter(|h| h.group().is_none())
            .map(Handler::id)
            .collect()
    }

    async fn claim(
        &self,
        db: &DatabaseConnection,
        known: &BTreeSet<&'static str>,
    ) -> Result<Vec<(String, String)>, Error> {
        let backend = db.get_database_backend();
        let now = time::now_micros();
        // READ COMMITTED on the servers: under InnoDB's REPEATABLE READ the skip-locked claim
        // takes gap locks, and two workers claiming at once could deadlock on each other's.
        let txn = match backend {
            DbBackend::Sqlite => crate::outbox::begin_write(db).await?,
            _ => {
                db.begin_with_config(Some(IsolationLevel::ReadCommitted), None)
                    .await?
            }
        };
        let mut select = Query::select()
            .columns([D::EventId, D::Handler])
            .from(D::Table)
            .and_where(Expr::col(D::Status).eq(DeliveryStatus::Pending.value()))
            .and_where(Expr::col(D::NextAttemptAt).lte(now))
            .and_where(Expr::col(D::Handler).is_in(known.iter().copied()))
            .order_by(D::NextAttemptAt, Order::Asc)
            .order_by(D::EventId, Order::Asc)
            .limit(self.batch_size)
            .to_owned();
        if backend != DbBackend::Sqlite {
            select.lock_with_behavior(
                sea_orm::sea_query::LockType::Update,
                sea_orm::sea_query::LockBehavior::SkipLocked,
            );
        }
        let rows = txn.query_all(&select).await?;
        let mut claimed = Vec::with_capacity(rows.len());
        for row in rows {
            claimed.push((
                row.try_get_by_index::<String>(0)?,
                row.try_get_by_index::<String>(1)?,
            ));
        }
        if !claimed.is_empty() {
            let until =
                now.saturating_add(i64::try_from(self.lease.as_micros()).unwrap_or(i64::MAX));
            let mut which = Condition::any();
            for (event_id, handler) in &claimed {
                which = which.add(
                    Condition::all()
                        .add(Expr::col(D::EventId).eq(event_id.as_str()))
                        .add(Expr::col(D::Handler).eq(handler.as_str())),
                );
            }
            let update = Query::update()
                .table(D::Table)
                .value(D::NextAttemptAt, until)
                .cond_where(
                    Condition::all()
                        .add(Expr::col(D::Status).eq(DeliveryStatus::Pending.value()))
                        .add(which),
                )
                .to_owned();
            txn.execute(&update).await?;
        }
        txn.commit().await?;
        Ok(claimed)
    }
}

/// Reads the envelope of event `event_id` back from its outbox row.
pub(crate) async fn load_envelope<C: ConnectionTrait>(
    conn: &C,
    event_id: &str,
) -> Result<Option<Envelope>, Error> {
    let select = Query::select()
        .columns(codec::read_columns())
        .from(O::Table)
        .and_where(Expr::col(O::Id).eq(event_id))
        .to_owned();
    let Some(row) = conn.query_one(&select).await? else {
        return Ok(None);
    };
    let stored = Stored::read(&row, "")?;
    let id = stored.id().to_owned();
    match stored.envelope() {
        Ok(envelope) => Ok(Some(envelope)),
        Err(Undecodable::Metadata(source)) => Err(Error::Row {
            event_id: id,
            source,
        }),
        Err(Undecodable::Id(e)) => {
            Err(DbErr::Type(format!("outbox row id `{id}` is not a UUID: {e}")).into())
        }
        Err(Undecodable::Version(e)) => {
            Err(DbErr::Type(format!("outbox row `{id}` has a negative version: {e}")).into())
        }
    }
}

/// What [`rename_handler`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RenamedRows {
    /// Rows moved to the new id.
    pub moved: u64,
    /// Rows of the old id dropped because their event already had a row under the new id (the
    /// new row is kept).
    pub merged: u64,
}

/// Why [`rename_handler`] renamed nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RenameError {
    /// The database failed; the transaction rolled back and nothing moved.
    #[error("renaming the handler's rows failed")]
    Database(
        #[from]
        #[source]
        DbErr,
    ),
    /// The new key is empty, or longer than the 255 bytes its column holds.
    #[error("the new key `{key}` must be 1 to {MAX_KEY_LEN} bytes long")]
    BadKey {
        /// The key (`"<group>/<id>"` for a consumer handler).
        key: String,
    },
}

/// The longest handler id or inbox consumer key: the columns are `varchar(255)`.
const MAX_KEY_LEN: usize = 255;

/// Moves the rows of handler id `old` to id `new`, in one transaction, after a handler was
/// renamed (see "Renaming a handler" on [`outbox_core::Handler`]).
///
/// For an in-process handler (`group` `None`) it moves its `outbox_delivery` rows, so the
/// pending ones run under the new id; for a consumer handler (`group` `Some`) its
/// `outbox_inbox` rows (`"<group>/<old>"` → `"<group>/<new>"`), so the events it applied under
/// the old id are not applied again. Where an event already has a row under the new id, the old
/// row is dropped and the new one kept. Run it when no process runs the old id any more, before
/// the new binary starts handling (a migration step of the deploy, say); it is idempotent.
///
/// # Errors
/// [`RenameError::BadKey`] when the new key does not fit its column, [`RenameError::Database`]
/// when a statement fails (nothing moved).
pub async fn rename_handler<C>(
    db: &C,
    group: Option<&str>,
    old: &str,
    new: &str,
) -> Result<RenamedRows, RenameError>
where
    C: TransactionTrait<Transaction = DatabaseTransaction>,
{
    let (table, column, old, new) = match group {
        None => ("outbox_delivery", "handler", old.to_owned(), new.to_owned()),
        Some(group) => (
            "outbox_inbox",
            "consumer",
            format!("{group}/{old}"),
            format!("{group}/{new}"),
        ),
    };
    if new.is_empty() || new.len() > MAX_KEY_LEN {
        return Err(RenameError::BadKey { key: new });
    }
    if old == new {
        return Ok(RenamedRows::default());
    }
    let txn = db.begin().await?;
    let backend = txn.get_database_backend();
    // A row whose event already has one under the new key stays behind (the primary key is
    // (event_id, key)) and is deleted next.
    let (update, update_values) = match backend {
        DbBackend::MySql => (
            format!("UPDATE IGNORE {table} SET {column} = ? WHERE {column} = ?"),
            vec![new.as_str().into(), old.as_str().into()],
        ),
        DbBackend::Sqlite => (
            format!("UPDATE OR IGNORE {table} SET {column} = ? WHERE {column} = ?"),
            vec![new.as_str().into(), old.as_str().into()],
        ),
        _ => (
            format!(
                "UPDATE {table} SET {column} = ? WHERE {column} = ? AND NOT EXISTS \
                 (SELECT 1 FROM {table} AS newer WHERE newer.event_id = {table}.event_id \
                 AND newer.{column} = ?)"
            ),
            vec![
                new.as_str().into(),
                old.as_str().into(),
                new.as_str().into(),
            ],
        ),
    };
    let count = format!("SELECT COUNT(*) FROM {table} WHERE {column} = ?");
    let total: i64 = match txn
        .query_one_raw(statement(backend, &count, vec![old.as_str().into()]))
        .await?
    {
        Some(row) => row.try_get_by_index(0)?,
        None => 0,
    };
    // Not its affected rows: MySQL counts the rows it matched, the ignored ones too.
    txn.execute_raw(statement(backend, &update, update_values))
        .await?;
    let merged = txn
        .execute_raw(statement(
            backend,
            &format!("DELETE FROM {table} WHERE {column} = ?"),
            vec![old.as_str().into()],
        ))
        .await?
        .rows_affected();
    txn.commit().await?;
    let moved = u64::try_from(total).unwrap_or(0).saturating_sub(merged);
    tracing::info!(table, old = %old, new = %new, moved, merged, "handler rows renamed");
    Ok(RenamedRows { moved, merged })
}
