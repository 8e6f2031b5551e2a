//! Running in-process handlers after commit, with durable completion records, and the recovery
//! worker that reruns what a crash or a failure left pending.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::FutureExt;
use outbox_core::{DispatchJob, Envelope, EventContext, EventMetadata, Handler, RetryPolicy};
use sea_orm::sea_query::{Condition, Expr, ExprTrait, Order, Query};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, DbErr, IsolationLevel, Statement,
    TransactionTrait,
};

use crate::error::Error;
use crate::outbox::Outbox;
use crate::schema::{Outbox as O, OutboxDelivery as D};
use crate::time;
use crate::write::Written;

/// `outbox_delivery.status` of a row waiting for its handler.
pub(crate) const PENDING: i16 = crate::status::DeliveryStatus::Pending.value();
/// `outbox_delivery.status` of a row whose handler completed.
pub(crate) const DONE: i16 = crate::status::DeliveryStatus::Done.value();
/// `outbox_delivery.status` of a row given up on.
pub(crate) const DEAD: i16 = crate::status::DeliveryStatus::Dead.value();

/// The longest `last_error` stored, in bytes.
const MAX_ERROR_LEN: usize = 8 * 1024;

/// A handler panicked; recorded as a retryable failure.
#[derive(Debug, thiserror::Error)]
#[error("handler panicked: {message}")]
struct HandlerPanicked {
    message: String,
}

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

/// The after-commit job of one transaction: runs every (event, handler) pair in order.
pub(crate) fn dispatch_job(
    db: DatabaseConnection,
    retry: RetryPolicy,
    written: Written,
) -> DispatchJob {
    Box::pin(async move {
        for (envelope, handlers) in written.envelopes.iter().zip(&written.handlers) {
            for handler in handlers {
                deliver_logged(&db, &retry, envelope, handler).await;
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
) -> Option<Outcome> {
    match deliver(db, retry, envelope, handler).await {
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
/// `outbox_delivery`.
///
/// On PostgreSQL and MariaDB the delivery row is locked (`SELECT .. FOR UPDATE`) for the whole
/// run, so the immediate dispatch and the recovery worker never run one handler twice at once.
/// SQLite has a single writer, and holding it while the handler runs would stall every other
/// write (the handler's own saves included): there the row is checked first, and the completion
/// is recorded with `UPDATE .. WHERE status = 0`; if another run completed it meanwhile, this
/// run's writes are rolled back.
pub(crate) async fn deliver(
    db: &DatabaseConnection,
    retry: &RetryPolicy,
    envelope: &Envelope,
    handler: &Handler,
) -> Result<Outcome, DbErr> {
    let backend = db.get_database_backend();
    let event_id = envelope.id().to_string();
    let select = |lock: &str| {
        Statement::from_sql_and_values(
            backend,
            format!(
                "SELECT status, attempts FROM outbox_delivery WHERE event_id = {} AND handler = {}{lock}",
                placeholder(backend, 1),
                placeholder(backend, 2)
            ),
            [event_id.as_str().into(), handler.id().into()],
        )
    };
    let (txn, row) = if backend == DbBackend::Sqlite {
        let row = db.query_one_raw(select("")).await?;
        (db.begin().await?, row)
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
    if status != PENDING {
        txn.rollback().await?;
        return Ok(Outcome::Skipped);
    }
    let attempt = u32::try_from(attempts).unwrap_or(0).saturating_add(1);

    let result = {
        let ctx = crate::with_transaction(EventContext::new(envelope, handler.id(), attempt), &txn);
        match AssertUnwindSafe(handler.call(envelope, &ctx))
            .catch_unwind()
            .await
        {
            Ok(result) => result,
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a non-string payload".to_owned());
                Err(outbox_core::HandlerError::retryable(HandlerPanicked {
                    message,
                }))
            }
        }
    };

    match result {
        Ok(()) => {
            let done = txn
                .execute_raw(Statement::from_sql_and_values(
                    backend,
                    format!(
                        "UPDATE outbox_delivery SET status = {}, completed_at = {} \
                         WHERE event_id = {} AND handler = {} AND status = {}",
                        placeholder(backend, 1),
                        placeholder(backend, 2),
                        placeholder(backend, 3),
                        placeholder(backend, 4),
                        placeholder(backend, 5),
                    ),
                    [
                        DONE.into(),
                        time::now_micros().into(),
                        event_id.as_str().into(),
                        handler.id().into(),
                        PENDING.into(),
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
            db.execute_raw(Statement::from_sql_and_values(
                backend,
                format!(
                    "UPDATE outbox_delivery SET status = {}, attempts = {}, next_attempt_at = {}, \
                     last_error = {} WHERE event_id = {} AND handler = {} AND status = {}",
                    placeholder(backend, 1),
                    placeholder(backend, 2),
                    placeholder(backend, 3),
                    placeholder(backend, 4),
                    placeholder(backend, 5),
                    placeholder(backend, 6),
                    placeholder(backend, 7),
                ),
                [
                    if dead { DEAD } else { PENDING }.into(),
                    i32::try_from(attempt).unwrap_or(i32::MAX).into(),
                    next.into(),
                    message.as_str().into(),
                    event_id.as_str().into(),
                    handler.id().into(),
                    PENDING.into(),
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

fn placeholder(backend: DbBackend, n: usize) -> String {
    match backend {
        DbBackend::Postgres => format!("${n}"),
        _ => "?".to_owned(),
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
/// round claims up to `batch_size` due rows (`status = 0 AND next_attempt_at <= now`, with
/// `FOR UPDATE SKIP LOCKED` on PostgreSQL and MariaDB so that several workers share the work),
/// pushes their `next_attempt_at` a lease ahead so no other worker picks them up meanwhile, then
/// runs each handler exactly as the after-commit dispatch does, recording success, a retry with
/// the outbox's [`RetryPolicy`], or death after its last attempt. A row whose handler is not in
/// the outbox's registry is logged and left for a process that has it.
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
}

impl DeliveryWorker {
    /// A worker for `outbox`'s database, handlers and retry policy: polls every 5 s, claims up to
    /// 100 rows at a time with a 60 s lease.
    pub fn new(outbox: Outbox) -> Self {
        DeliveryWorker {
            outbox,
            poll_interval: Duration::from_secs(5),
            batch_size: 100,
            lease: Duration::from_secs(60),
        }
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

    /// Runs one round: claims the due rows and runs their handlers. Returns how many rows it
    /// claimed (including those it could not run: handler unknown here, event row missing).
    ///
    /// # Errors
    /// [`Error::Database`] when claiming fails; failures of single deliveries are recorded on
    /// their rows and logged instead.
    pub async fn run_once(&self) -> Result<usize, Error> {
        let db = self.outbox.connection();
        let claimed = self.claim(db).await?;
        let mut envelopes: HashMap<String, Option<Envelope>> = HashMap::new();
        for (event_id, handler_id) in &claimed {
            let Some(handler) = self.outbox.handlers().get(handler_id, None) else {
                tracing::warn!(
                    event_id = %event_id,
                    handler = %handler_id,
                    "no in-process handler with this id is registered here; delivery left pending"
                );
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
            deliver_logged(db, self.outbox.retry_policy(), envelope, handler).await;
        }
        Ok(claimed.len())
    }

    async fn claim(&self, db: &DatabaseConnection) -> Result<Vec<(String, String)>, Error> {
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
            .and_where(Expr::col(D::Status).eq(PENDING))
            .and_where(Expr::col(D::NextAttemptAt).lte(now))
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
                        .add(Expr::col(D::Status).eq(PENDING))
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
            O::OccurredAt,
        ])
        .from(O::Table)
        .and_where(Expr::col(O::Id).eq(event_id))
        .to_owned();
    let Some(row) = conn.query_one(&select).await? else {
        return Ok(None);
    };
    let id: String = row.try_get_by_index(0)?;
    let uuid = uuid::Uuid::parse_str(&id)
        .map_err(|e| DbErr::Type(format!("outbox row id `{id}` is not a UUID: {e}")))?;
    let metadata: Option<String> = row.try_get_by_index(7)?;
    let metadata = match metadata {
        Some(json) => {
            serde_json::from_str::<EventMetadata>(&json).map_err(|source| Error::Row {
                event_id: id.clone(),
                source,
            })?
        }
        None => EventMetadata::default(),
    };
    let version: i32 = row.try_get_by_index(4)?;
    Ok(Some(
        Envelope::builder(
            row.try_get_by_index::<String>(3)?,
            row.try_get_by_index::<String>(1)?,
            row.try_get_by_index::<String>(2)?,
        )
        .id(uuid)
        .version(u32::try_from(version).unwrap_or(0))
        .sequence(row.try_get_by_index(5)?)
        .payload(row.try_get_by_index::<String>(6)?)
        .metadata(metadata)
        .topic(row.try_get_by_index(8)?)
        .occurred_at(time::from_micros(row.try_get_by_index(9)?))
        .build(),
    ))
}
