//! The inbox: consumers apply each event exactly once.
//!
//! A consumer that receives an event (from Kafka, say) calls [`Inbox::process`]. It begins a
//! transaction, records `(event id, consumer)` in `outbox_inbox` with a conflict-ignoring insert,
//! and:
//!
//! * when the row was already there, rolls back and reports [`Processed::Duplicate`]: the event
//!   was applied before (or is being applied right now by another task, which then wins);
//! * otherwise runs the handler with the transaction attached to its [`EventContext`] (the handler
//!   reaches it with [`crate::TransactionExt::transaction`]) and commits on success
//!   ([`Processed::Applied`]), or rolls back and returns the handler's error.
//!
//! The handler's writes and the inbox row therefore commit together or not at all: a redelivered
//! event is skipped, a failed one is tried again.
//!
//! Every run is bounded ([`Handler::call_within`]): a handler that panics, or runs longer than
//! its timeout ([`Handler::timeout`], else [`Handler::DEFAULT_TIMEOUT`]; a runtime with another
//! default passes `handler.with_timeout(..)`), fails with a retryable [`InboxError::Handler`],
//! and its transaction is rolled back, releasing the inbox row's lock and the connection.
//!
//! A broker consumer does not call these directly: [`GroupInbox`] holds a consumer group's
//! apply loop (routing an envelope to the group's handlers, [`Inbox::process`] per handler with
//! retries, the dead-letter reason, [`Inbox::process_batch`] for several messages), shared by
//! the Kafka and the RabbitMQ consumers; they only decode, order, dispatch and acknowledge.
//!
//! Inbox rows grow with every event applied; `outbox_seaorm::cleanup` deletes rows older than
//! their retention in bounded batches. Keep the retention longer than the longest time a broker
//! may redeliver a message (the topic's retention), or a very late duplicate is applied again.
//!
//! ```no_run
//! use outbox_core::{Envelope, Handler, HandlerRegistry};
//! use outbox_seaorm::inbox::{Inbox, Processed};
//!
//! # async fn run(db: &sea_orm::DatabaseConnection, handler: &Handler, envelope: &Envelope)
//! # -> Result<(), outbox_seaorm::inbox::InboxError> {
//! match Inbox::process(db, "payment-service/capture", handler, envelope, 1).await? {
//!     Processed::Applied => println!("applied"),
//!     Processed::Duplicate => println!("seen before, skipped"),
//!     _ => {}
//! }
//! # Ok(()) }
//! ```

use std::fmt;
use std::future::Future;
use std::time::Duration;

use outbox_core::wire::MalformedMessage;
use outbox_core::{
    BoxError, Envelope, EventContext, EventType, Handler, HandlerError, HandlerErrorKind,
    HandlerRegistry, RetryPolicy, error_chain,
};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, Statement,
    TransactionTrait,
};

use crate::context::with_transaction;
use crate::time::now_micros;

/// The longest consumer key the `outbox_inbox.consumer` column holds.
pub const MAX_CONSUMER_LEN: usize = 255;

/// What [`Inbox::process`] did with an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Processed {
    /// The handler ran and its writes committed with the inbox row.
    Applied,
    /// The event had been applied by this consumer before; the handler did not run.
    Duplicate,
}

/// Why [`Inbox::process`] did not apply an event.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InboxError {
    /// The database failed (begin, insert or commit); nothing was recorded.
    #[error("inbox database operation failed")]
    Database(#[source] DbErr),
    /// The handler failed; its writes and the inbox row were rolled back.
    #[error("handler `{handler}` failed")]
    Handler {
        /// The handler's id.
        handler: &'static str,
        /// Whether the handler asked for a retry.
        kind: HandlerErrorKind,
        /// The handler's error.
        #[source]
        source: BoxError,
    },
    /// The consumer key does not fit the `consumer` column.
    #[error("consumer key is {len} bytes long, at most {MAX_CONSUMER_LEN} fit")]
    ConsumerTooLong {
        /// Its length in bytes.
        len: usize,
    },
}

impl InboxError {
    /// Whether processing the event again may succeed: database errors and retryable handler
    /// errors are, permanent handler errors and a bad consumer key are not.
    pub fn is_retryable(&self) -> bool {
        match self {
            InboxError::Database(_) => true,
            InboxError::Handler { kind, .. } => *kind == HandlerErrorKind::Retryable,
            InboxError::ConsumerTooLong { .. } => false,
        }
    }

    fn handler(handler: &'static str, error: HandlerError) -> Self {
        let kind = error.kind();
        InboxError::Handler {
            handler,
            kind,
            source: error.into_source(),
        }
    }
}

/// Idempotent processing of received events; see the [module docs](self).
#[derive(Clone, Copy, Debug, Default)]
#[non_exhaustive]
pub struct Inbox;

impl Inbox {
    /// Applies `envelope` with `handler` once for `consumer` (by convention
    /// `"<consumer group>/<handler id>"`), as attempt `attempt` (from 1).
    ///
    /// # Errors
    /// [`InboxError::Handler`] when the handler fails (nothing committed),
    /// [`InboxError::Database`] when the database does, [`InboxError::ConsumerTooLong`] for a
    /// consumer key over [`MAX_CONSUMER_LEN`] bytes.
    pub async fn process<C>(
        db: &C,
        consumer: &str,
        handler: &Handler,
        envelope: &Envelope,
        attempt: u32,
    ) -> Result<Processed, InboxError>
    where
        C: TransactionTrait<Transaction = DatabaseTransaction>,
    {
        if consumer.len() > MAX_CONSUMER_LEN {
            return Err(InboxError::ConsumerTooLong {
                len: consumer.len(),
            });
        }
        let txn = db.begin().await.map_err(InboxError::Database)?;
        let inserted = txn
            .execute_raw(insert_statement(
                txn.get_database_backend(),
                &envelope.id().to_string(),
                consumer,
            ))
            .await
            .map_err(InboxError::Database)?
            .rows_affected();
        if inserted == 0 {
            txn.rollback().await.map_err(InboxError::Database)?;
            tracing::debug!(event_id = %envelope.id(), consumer, "duplicate event skipped");
            return Ok(Processed::Duplicate);
        }
        let ctx = with_transaction(EventContext::new(envelope, handler.id(), attempt), &txn);
        let timeout = handler.timeout_or(Handler::DEFAULT_TIMEOUT);
        match handler.call_within(envelope, &ctx, timeout).await {
            Ok(()) => {
                txn.commit().await.map_err(InboxError::Database)?;
                Ok(Processed::Applied)
            }
            Err(error) => {
                if let Err(rollback) = txn.rollback().await {
                    tracing::warn!(event_id = %envelope.id(), consumer, error = %rollback,
                        "rollback after a handler failure failed");
                }
                Err(InboxError::handler(handler.id(), error))
            }
        }
    }
}

/// One event for [`Inbox::process_batch`]: the consumer key, its handler and the event.
#[derive(Clone, Copy, Debug)]
pub struct BatchItem<'a> {
    /// The consumer key, as for [`Inbox::process`].
    pub consumer: &'a str,
    /// The handler to run.
    pub handler: &'a Handler,
    /// The event.
    pub envelope: &'a Envelope,
}

impl Inbox {
    /// Applies several events in **one** transaction, in order, each once per consumer key: one
    /// multi-row conflict-ignoring insert (`RETURNING` the rows it inserted) records them and tells
    /// the new ones from those applied before, the new ones' handlers run (each with the
    /// transaction in its context), and one commit makes it all durable. The result says, per item,
    /// whether it was applied or a duplicate (an event applied before, or twice in `items`).
    ///
    /// All or nothing: if any handler or statement fails, the transaction rolls back and the
    /// error is returned; nothing of the batch was applied, and the caller retries the events
    /// one by one with [`Inbox::process`] (which then reports each event's own outcome). A
    /// consumer racing on the same event makes the insert wait for it, then count the event as
    /// a duplicate. Needs `INSERT … RETURNING`: PostgreSQL, SQLite 3.35+, MariaDB 10.5+ (on
    /// MySQL the statement fails, and a caller that falls back as described loses only speed).
    ///
    /// # Errors
    /// As [`Inbox::process`], for the first failure.
    pub async fn process_batch<C>(
        db: &C,
        items: &[BatchItem<'_>],
    ) -> Result<Vec<Processed>, InboxError>
    where
        C: TransactionTrait<Transaction = DatabaseTransaction>,
    {
        if let Some(item) = items.iter().find(|i| i.consumer.len() > MAX_CONSUMER_LEN) {
            return Err(InboxError::ConsumerTooLong {
                len: item.consumer.len(),
            });
        }
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = items.iter().map(|i| i.envelope.id().to_string()).collect();
        let txn = db.begin().await.map_err(InboxError::Database)?;
        let result = apply_batch(&txn, items, &ids).await;
        match result {
            Ok(outcomes) => {
                txn.commit().await.map_err(InboxError::Database)?;
                Ok(outcomes)
            }
            Err(error) => {
                if let Err(rollback) = txn.rollback().await {
                    tracing::warn!(error = %rollback, "rollback of an inbox batch failed");
                }
                Err(error)
            }
        }
    }
}

async fn apply_batch(
    txn: &DatabaseTransaction,
    items: &[BatchItem<'_>],
    ids: &[String],
) -> Result<Vec<Processed>, InboxError> {
    use std::collections::HashSet;

    // Pairs repeated within the batch are duplicates of their first occurrence.
    let mut in_batch: HashSet<(&str, &str)> = HashSet::with_capacity(items.len());
    let mut candidates: Vec<usize> = Vec::with_capacity(items.len());
    for (k, item) in items.iter().enumerate() {
        if in_batch.insert((ids[k].as_str(), item.consumer)) {
            candidates.push(k);
        }
    }
    // One conflict-ignoring insert; it returns the rows it inserted, so the pairs it does not
    // return were applied before (or by a concurrent consumer that committed meanwhile).
    let backend = txn.get_database_backend();
    let rows = vec!["(?, ?, ?)"; candidates.len()].join(", ");
    let sql = match backend {
        DbBackend::MySql => format!(
            "INSERT IGNORE INTO outbox_inbox (event_id, consumer, processed_at) VALUES {rows} \
             RETURNING event_id, consumer"
        ),
        _ => format!(
            "INSERT INTO outbox_inbox (event_id, consumer, processed_at) VALUES {rows} \
             ON CONFLICT DO NOTHING RETURNING event_id, consumer"
        ),
    };
    let now = now_micros();
    let mut values = Vec::with_capacity(candidates.len() * 3);
    for &k in &candidates {
        values.push(ids[k].clone().into());
        values.push(items[k].consumer.into());
        values.push(now.into());
    }
    let inserted = crate::sql::query(txn, &sql, values)
        .await
        .map_err(InboxError::Database)?;
    let mut fresh: HashSet<(String, String)> = HashSet::with_capacity(inserted.len());
    for row in inserted {
        let event_id: String = row.try_get("", "event_id").map_err(InboxError::Database)?;
        let consumer: String = row.try_get("", "consumer").map_err(InboxError::Database)?;
        fresh.insert((event_id, consumer));
    }
    let mut outcomes = Vec::with_capacity(items.len());
    for (k, item) in items.iter().enumerate() {
        // `remove`: a pair repeated in the batch is applied at its first occurrence only.
        let applied = fresh.remove(&(ids[k].clone(), item.consumer.to_owned()));
        if applied {
            let ctx = with_transaction(EventContext::new(item.envelope, item.handler.id(), 1), txn);
            let timeout = item.handler.timeout_or(Handler::DEFAULT_TIMEOUT);
            item.handler
                .call_within(item.envelope, &ctx, timeout)
                .await
                .map_err(|error| InboxError::handler(item.handler.id(), error))?;
            outcomes.push(Processed::Applied);
        } else {
            outcomes.push(Processed::Duplicate);
        }
    }
    Ok(outcomes)
}

fn insert_statement(backend: DbBackend, event_id: &str, consumer: &str) -> Statement {
    // `INSERT IGNORE` on MySQL/MariaDB also turns truncation into a warning: the consumer length
    // is checked before, and the event id is a 36-character UUID.
    let sql = match backend {
        DbBackend::MySql => {
            "INSERT IGNORE INTO outbox_inbox (event_id, consumer, processed_at) VALUES (?, ?, ?)"
        }
        _ => {
            "INSERT INTO outbox_inbox (event_id, consumer, processed_at) VALUES (?, ?, ?) \
             ON CONFLICT DO NOTHING"
        }
    };
    crate::sql::statement(
        backend,
        sql,
        vec![event_id.into(), consumer.into(), now_micros().into()],
    )
}

// ---- a consumer group's apply loop, shared by the broker consumers ----

/// Where a received event goes in a consumer group; see [`GroupInbox::route`].
#[derive(Debug)]
#[non_exhaustive]
enum Route<'a> {
    /// These handlers of the group handle it, in registration order.
    Handlers(Vec<&'a Handler>),
    /// Its event type is declared in this binary, but no handler of the group handles it: a
    /// topic or queue often carries several event types, so it is skipped.
    Ignored,
    /// No type in this binary declares its event name: the message is malformed.
    Unknown,
}

/// Why a message cannot be applied and goes to the dead letters; the broker consumer copies
/// these into the [`outbox_core::wire::dlt`] headers.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadLetterReason {
    /// `handler-failed`, `handler-permanent` or `malformed:<kind>`.
    pub reason: String,
    /// The error, with its chain of causes.
    pub error: String,
    /// Handler attempts made (0 for a malformed message).
    pub attempts: u32,
    /// The handler that failed, if one did.
    pub handler: Option<&'static str>,
}

impl DeadLetterReason {
    /// A message that did not decode, or named an unknown event: dead-lettered at once.
    pub(crate) fn malformed(error: &MalformedMessage) -> Self {
        DeadLetterReason {
            reason: format!("malformed:{}", error.reason()),
            error: error.to_string(),
            attempts: 0,
            handler: None,
        }
    }
}

/// What [`GroupInbox::apply`] did with one message.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Applied {
    /// Every handler applied it (or had before), or the group ignores it: acknowledge it.
    Done,
    /// It cannot be applied: send it to the dead letters, then acknowledge it.
    DeadLetter(DeadLetterReason),
    /// The cancel future completed during a retry wait: the message is neither applied nor
    /// dead-lettered, leave it unacknowledged.
    Cancelled,
}

/// Counts of what a [`GroupInbox`] did; the consumers add them to their own statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ApplyStats {
    /// (message, handler) pairs applied.
    pub applied: u64,
    /// (message, handler) pairs skipped as already applied.
    pub duplicates: u64,
    /// Handler attempts that failed and were retried.
    pub retries: u64,
    /// Messages of a known event type that no handler of the group handles.
    pub ignored: u64,
    /// Inbox transactions that applied several messages together.
    pub batches: u64,
}

/// A consumer group's handlers applied through the inbox, with retries: the part of a broker
/// consumer that does not depend on the broker (the Kafka and RabbitMQ consumers both use it).
///
/// Each handler of the group for an event runs through [`Inbox::process`] with consumer key
/// `"<group>/<handler id>"`, bounded by its own timeout, else the group's default. A failing
/// handler is retried with the [`RetryPolicy`] and then reported for the dead letters
/// (`handler-failed`, or `handler-permanent` at once for a permanent error); a database error
/// is retried until it goes away or the run is cancelled: it never dead-letters.
pub struct GroupInbox {
    db: DatabaseConnection,
    group: String,
    registry: HandlerRegistry,
    retry: RetryPolicy,
    handler_timeout: Duration,
}

impl fmt::Debug for GroupInbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupInbox")
            .field("group", &self.group)
            .field("retry", &self.retry)
            .field("handler_timeout", &self.handler_timeout)
            .finish_non_exhaustive()
    }
}

impl GroupInbox {
    /// The handlers of `group` in `registry`, applied through the inbox in `db`, retried with
    /// `retry`, each bounded by its own timeout or else `handler_timeout`.
    pub fn new(
        db: DatabaseConnection,
        group: impl Into<String>,
        registry: HandlerRegistry,
        retry: RetryPolicy,
        handler_timeout: Duration,
    ) -> Self {
        GroupInbox {
            db,
            group: group.into(),
            registry,
            retry,
            handler_timeout,
        }
    }

    /// The consumer group.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The retry policy of failing handlers.
    pub fn retry(&self) -> &RetryPolicy {
        &self.retry
    }

    /// The timeout of handlers that set none.
    pub fn handler_timeout(&self) -> Duration {
        self.handler_timeout
    }

    /// Who handles `envelope` in this group. A name nobody in this binary declares is
    /// [`Route::Unknown`] (malformed); a declared one the group does not handle is
    /// [`Route::Ignored`].
    fn route<'a>(&'a self, envelope: &'a Envelope) -> Route<'a> {
        let handlers: Vec<&Handler> = self
            .registry
            .in_group(&self.group, envelope.event_name())
            .collect();
        if !handlers.is_empty() {
            Route::Handlers(handlers)
        } else if EventType::is_known(envelope.event_name()) {
            Route::Ignored
        } else {
            Route::Unknown
        }
    }

    /// `handler`, with this group's default timeout when it sets none.
    fn bounded(&self, handler: &Handler) -> Handler {
        handler.with_timeout(handler.timeout_or(self.handler_timeout))
    }

    fn consumer_key(&self, handler: &Handler) -> String {
        format!("{}/{}", self.group, handler.id())
    }

    /// Applies one message, `decoded` by the broker consumer: every handler of the group, one
    /// inbox transaction each, with retries. Stops at a retry wait when `cancel` completes.
    pub async fn apply<F>(
        &self,
        decoded: Result<Envelope, MalformedMessage>,
        cancel: F,
        stats: &mut ApplyStats,
    ) -> Applied
    where
        F: Future<Output = ()>,
    {
        let envelope = match decoded {
            Ok(envelope) => envelope,
            Err(error) => return Applied::DeadLetter(DeadLetterReason::malformed(&error)),
        };
        let handlers = match self.route(&envelope) {
            Route::Handlers(handlers) => handlers,
            Route::Ignored => {
                stats.ignored += 1;
                metrics::counter!("outbox_consumer_ignored_total", "group" => self.group.clone())
                    .increment(1);
                tracing::debug!(group = %self.group, event = envelope.event_name(),
                    "no handler in this group; skipped");
                return Applied::Done;
            }
            Route::Unknown => {
                return Applied::DeadLetter(DeadLetterReason::malformed(
                    &MalformedMessage::UnknownEvent {
                        group: self.group.clone(),
                        event: envelope.event_name().to_owned(),
                    },
                ));
            }
        };
        let mut cancel = std::pin::pin!(cancel);
        for handler in handlers {
            match self
                .apply_handler(handler, &envelope, cancel.as_mut(), stats)
                .await
            {
                Applied::Done => {}
                other => return other,
            }
        }
        Applied::Done
    }

    async fn apply_handler(
        &self,
        handler: &Handler,
        envelope: &Envelope,
        mut cancel: std::pin::Pin<&mut impl Future<Output = ()>>,
        stats: &mut ApplyStats,
    ) -> Applied {
        let consumer = self.consumer_key(handler);
        let handler = &self.bounded(handler);
        let mut attempt: u32 = 1;
        let mut db_failures: u32 = 0;
        loop {
            let delay = match Inbox::process(&self.db, &consumer, handler, envelope, attempt).await
            {
                Ok(Processed::Applied) => {
                    stats.applied += 1;
                    metrics::counter!("outbox_consumer_applied_total", "group" => self.group.clone()).increment(1);
                    return Applied::Done;
                }
                Ok(_) => {
                    stats.duplicates += 1;
                    metrics::counter!("outbox_consumer_duplicates_total", "group" => self.group.clone()).increment(1);
                    return Applied::Done;
                }
                Err(error @ InboxError::Database(_)) => {
                    db_failures += 1;
                    tracing::warn!(group = %self.group, event_id = %envelope.id(),
                        error = %error_chain(&error), "inbox database error; retrying");
                    self.retry.delay_after(db_failures.min(20))
                }
                Err(error) => {
                    let permanent = !error.is_retryable();
                    if permanent || !self.retry.should_retry(attempt) {
                        tracing::warn!(group = %self.group, event_id = %envelope.id(),
                            handler = handler.id(), attempt, error = %error_chain(&error),
                            "handler failed; dead-lettering");
                        return Applied::DeadLetter(DeadLetterReason {
                            reason: if permanent {
                                "handler-permanent".to_owned()
                            } else {
                                "handler-failed".to_owned()
                            },
                            error: error_chain(&error),
                            attempts: attempt,
                            handler: Some(handler.id()),
                        });
                    }
                    tracing::info!(group = %self.group, event_id = %envelope.id(),
                        handler = handler.id(), attempt, error = %error_chain(&error),
                        "handler failed; retrying");
                    stats.retries += 1;
                    let delay = self.retry.delay_after(attempt);
                    attempt += 1;
                    delay
                }
            };
            tokio::select! {
                () = cancel.as_mut() => return Applied::Cancelled,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Applies `envelopes` (each key's in order) in one inbox transaction with
    /// [`Inbox::process_batch`]; false, with nothing applied, when one names an unknown event or
    /// the transaction fails: the caller then applies them one by one with
    /// [`GroupInbox::apply`], which retries and dead-letters each on its own.
    pub async fn apply_batch(&self, envelopes: &[&Envelope], stats: &mut ApplyStats) -> bool {
        let mut keys: Vec<(String, Handler, &Envelope)> = Vec::new();
        let mut ignored = 0u64;
        for &envelope in envelopes {
            match self.route(envelope) {
                Route::Handlers(handlers) => keys.extend(
                    handlers
                        .into_iter()
                        .map(|h| (self.consumer_key(h), self.bounded(h), envelope)),
                ),
                Route::Ignored => ignored += 1,
                Route::Unknown => return false,
            }
        }
        let items: Vec<BatchItem<'_>> = keys
            .iter()
            .map(|(consumer, handler, envelope)| BatchItem {
                consumer,
                handler,
                envelope,
            })
            .collect();
        match Inbox::process_batch(&self.db, &items).await {
            Ok(outcomes) => {
                let applied = outcomes
                    .iter()
                    .filter(|o| **o == Processed::Applied)
                    .count() as u64;
                let duplicates = outcomes.len() as u64 - applied;
                stats.applied += applied;
                stats.duplicates += duplicates;
                stats.ignored += ignored;
                stats.batches += 1;
                let group = self.group.clone();
                metrics::counter!("outbox_consumer_applied_total", "group" => group.clone())
                    .increment(applied);
                metrics::counter!("outbox_consumer_duplicates_total", "group" => group.clone())
                    .increment(duplicates);
                metrics::counter!("outbox_consumer_ignored_total", "group" => group)
                    .increment(ignored);
                true
            }
            Err(error) => {
                tracing::debug!(group = %self.group, messages = envelopes.len(),
                    error = %error_chain(&error), "batch failed; processing its messages one by one");
                false
            }
        }
    }
}
