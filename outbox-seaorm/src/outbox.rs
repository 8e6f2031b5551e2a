//! The service object: saves aggregates with their events and dispatches after commit.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use outbox_core::{
    AggregateRoot, Dispatcher, DuplicateHandlerId, Handler, HandlerRegistry, RetryPolicy,
    SpawnDispatcher,
};
use sea_orm::{
    ActiveModelTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr,
    IntoActiveModel, ModelTrait, SqliteTransactionMode, TransactionOptions, TransactionTrait,
};

use crate::capture::Capture;
use crate::delivery::dispatch_job_within;
use crate::error::Error;
use crate::notifier::Notifier;
use crate::save::{self, ActiveOf, Wake, Written};
use crate::uow::UnitOfWork;

/// Saves aggregates together with their pending events, and runs the in-process handlers after
/// the commit.
///
/// Cheap to clone (an `Arc` inside); build one per database with [`Outbox::builder`] and share
/// it. See the crate documentation for a complete example.
#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

struct Inner {
    db: DatabaseConnection,
    handlers: HandlerRegistry,
    dispatcher: Box<dyn Dispatcher>,
    retry: RetryPolicy,
    grace: Duration,
    handler_timeout: Duration,
    capture: Capture,
    notifier: Notifier,
    /// Set once a pgoutput slot was seen in the database (log capture modes).
    slot_seen: AtomicBool,
}

impl fmt::Debug for Outbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outbox")
            .field("handlers", &self.inner.handlers)
            .field("dispatcher", &self.inner.dispatcher)
            .field("retry", &self.inner.retry)
            .field("delivery_grace", &self.inner.grace)
            .field("handler_timeout", &self.inner.handler_timeout)
            .field("capture", &self.inner.capture)
            .finish_non_exhaustive()
    }
}

/// Configures an [`Outbox`]; see [`Outbox::builder`].
#[must_use]
pub struct OutboxBuilder {
    db: DatabaseConnection,
    handlers: Option<HandlerRegistry>,
    dispatcher: Box<dyn Dispatcher>,
    retry: RetryPolicy,
    grace: Duration,
    handler_timeout: Duration,
    capture: Capture,
}

impl fmt::Debug for OutboxBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboxBuilder")
            .field("handlers", &self.handlers)
            .field("dispatcher", &self.dispatcher)
            .field("retry", &self.retry)
            .field("delivery_grace", &self.grace)
            .field("handler_timeout", &self.handler_timeout)
            .field("capture", &self.capture)
            .finish_non_exhaustive()
    }
}

impl OutboxBuilder {
    /// Sets the handlers run after commit (default: every `#[event_handler]` linked in,
    /// [`HandlerRegistry::from_inventory`]). Only handlers without a consumer group run here.
    pub fn handlers(mut self, handlers: HandlerRegistry) -> Self {
        self.handlers = Some(handlers);
        self
    }

    /// Sets where after-commit work runs (default [`SpawnDispatcher`]: a new tokio task).
    pub fn dispatcher(mut self, dispatcher: impl Dispatcher) -> Self {
        self.dispatcher = Box::new(dispatcher);
        self
    }

    /// Sets how failed in-process handlers are retried and when they are given up
    /// (default [`RetryPolicy::default`]).
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Sets how long after the commit the recovery worker leaves a delivery to the immediate
    /// dispatch before it runs it itself (default 30 s). Make it longer than your handlers
    /// usually take.
    pub fn delivery_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Sets how long an in-process handler without its own timeout
    /// (`#[event_handler(timeout = "...")]`) may run after the commit before it is cancelled
    /// and its attempt fails as retryable (default [`Handler::DEFAULT_TIMEOUT`], 30 s). A
    /// [`crate::DeliveryWorker`] built from this outbox starts with the same bound.
    pub fn handler_timeout(mut self, timeout: Duration) -> Self {
        self.handler_timeout = timeout;
        self
    }

    /// Sets how saves hand their events to a relay (default [`Capture::Table`]: pending rows
    /// for the table relay). [`Capture::LogTable`] and [`Capture::Messages`] are for the log
    /// relay and need PostgreSQL with `wal_level=logical`: on another database every save fails
    /// with [`Error::CaptureUnsupported`] and writes nothing. In those modes no `NOTIFY` wakes
    /// the table relay after a commit (it has nothing to poll).
    ///
    /// Every save of this outbox uses it: [`Outbox::save`], [`Outbox::delete`],
    /// [`Outbox::save_in`], [`Outbox::write`] and [`UnitOfWork`]; the free functions
    /// [`crate::save_in`] and [`crate::write_events`] do not (they write as [`Capture::Table`];
    /// see [`crate::save_in_with`] and [`crate::write_events_with`]).
    pub fn capture(mut self, capture: Capture) -> Self {
        self.capture = capture;
        self
    }

    /// Builds the outbox.
    ///
    /// Two in-process handlers under one id cannot both be run: their delivery rows would be
    /// one. The registry keeps the first and logs the conflict at `error` level; prefer
    /// [`OutboxBuilder::try_build`], which refuses it.
    pub fn build(self) -> Outbox {
        let handlers = self
            .handlers
            .unwrap_or_else(HandlerRegistry::from_inventory);
        Outbox {
            inner: Arc::new(Inner {
                db: self.db,
                handlers,
                dispatcher: self.dispatcher,
                retry: self.retry,
                grace: self.grace,
                handler_timeout: self.handler_timeout,
                capture: self.capture,
                notifier: Notifier::new(),
                slot_seen: AtomicBool::new(false),
            }),
        }
    }

    /// Builds the outbox, or refuses handlers that share an id.
    ///
    /// # Errors
    /// [`DuplicateHandlerId`] naming both handlers when two in-process handlers (or two of one
    /// consumer group) share an id: rename one, or give it `#[event_handler(id = "...")]`.
    pub fn try_build(mut self) -> Result<Outbox, DuplicateHandlerId> {
        let handlers = match self.handlers.take() {
            Some(handlers) => handlers,
            None => HandlerRegistry::try_from_inventory()?,
        };
        handlers.check()?;
        Ok(self.handlers(handlers).build())
    }
}

impl Outbox {
    /// Starts configuring an outbox on `db` (whose schema has the outbox tables, see
    /// [`crate::schema::migrate`]).
    pub fn builder(db: DatabaseConnection) -> OutboxBuilder {
        OutboxBuilder {
            db,
            handlers: None,
            dispatcher: Box::new(SpawnDispatcher),
            retry: RetryPolicy::default(),
            grace: Duration::from_secs(30),
            handler_timeout: Handler::DEFAULT_TIMEOUT,
            capture: Capture::Table,
        }
    }

    /// The database connection.
    pub fn connection(&self) -> &DatabaseConnection {
        &self.inner.db
    }

    /// The handlers it runs after commit.
    pub fn handlers(&self) -> &HandlerRegistry {
        &self.inner.handlers
    }

    /// The retry policy of the in-process handlers.
    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.inner.retry
    }

    /// How long the recovery worker leaves a fresh delivery to the immediate dispatch.
    pub fn delivery_grace(&self) -> Duration {
        self.inner.grace
    }

    /// How long an in-process handler without its own timeout may run.
    pub fn handler_timeout(&self) -> Duration {
        self.inner.handler_timeout
    }

    /// How its saves hand their events to a relay ([`OutboxBuilder::capture`]).
    pub fn capture(&self) -> Capture {
        self.inner.capture
    }

    /// Saves `aggregate` and its pending events in one transaction.
    ///
    /// The aggregate's row is written first:
    ///
    /// - **versioned** (`#[aggregate(version)]`, recommended): at version 0 the row is inserted,
    ///   and an existing row with the same id is a conflict, never overwritten; otherwise the row
    ///   is updated only where the stored version is the one the aggregate was loaded at, and
    ///   the same statement moves the version forward (by one per event, or by one when there
    ///   is none). When the stored version moved, the save fails with [`Error::Conflict`] and
    ///   writes nothing: reload, apply the change again, save again;
    /// - **unversioned**: the row is inserted, or every non-key column of the row with its
    ///   primary key is updated: the last writer wins, even over a change it never saw.
    ///
    /// The key must be set by the application, as a UUID is: the events name the aggregate before
    /// its row exists. Then the events are written as [`write_events`](crate::write_events)
    /// describes (a versioned aggregate's events are numbered from its version), and the
    /// transaction commits. Only after the commit are the events removed from the aggregate, its
    /// version set to the new one, the relay woken (as in [`Outbox::after_commit`]) and the
    /// in-process handlers handed to the dispatcher; their failures never come back here.
    ///
    /// On PostgreSQL a save with events (and a row write that is not a delete) is one statement,
    /// one round trip, with no `BEGIN` and `COMMIT`.
    ///
    /// # Errors
    /// [`Error::Conflict`] when a versioned aggregate's stored version moved, [`Error::Event`]
    /// when an event does not serialize, [`Error::CaptureUnsupported`] when the outbox's
    /// [`Capture`] mode needs PostgreSQL and this database is another, [`Error::Database`] when
    /// a statement or the commit fails. In every error case nothing was committed and `aggregate` still holds its events
    /// and its version.
    pub async fn save<A>(&self, aggregate: &mut A) -> Result<(), Error>
    where
        A: AggregateRoot + ModelTrait + IntoActiveModel<ActiveOf<A>>,
        ActiveOf<A>: ActiveModelTrait<Entity = A::Entity>,
    {
        let backend = self.inner.db.get_database_backend();
        let plan = save::plan_save(
            &*aggregate,
            &self.inner.handlers,
            self.inner.grace,
            Wake::AfterCommit,
            self.inner.capture,
            backend,
        )?;
        let written = self.execute(plan).await?;
        self.after_commit(aggregate, written).await;
        Ok(())
    }

    /// Deletes `aggregate`'s row and writes its pending events (`OrderDeleted`, say) in one
    /// transaction; after the commit, as [`Outbox::save`]. A versioned aggregate's row is deleted
    /// only at the version it was loaded at.
    ///
    /// # Errors
    /// [`Error::NotFound`] when there is no row to delete, [`Error::Conflict`] when a versioned
    /// aggregate's stored version moved, otherwise as [`Outbox::save`]; nothing was committed
    /// and `aggregate` still holds its events.
    pub async fn delete<A>(&self, aggregate: &mut A) -> Result<(), Error>
    where
        A: AggregateRoot + ModelTrait,
    {
        let backend = self.inner.db.get_database_backend();
        let plan = save::plan_delete(
            &*aggregate,
            &self.inner.handlers,
            self.inner.grace,
            Wake::AfterCommit,
            self.inner.capture,
            backend,
        )?;
        let written = self.execute(plan).await?;
        self.after_commit(aggregate, written).await;
        Ok(())
    }

    /// Runs a plan on the pool: without a transaction when it is one statement, else in one.
    async fn execute(&self, plan: save::Plan) -> Result<Written, Error> {
        let db = &self.inner.db;
        // Before a transaction begins (on SQLite it takes the write lock).
        save::check_capture(&plan, db.get_database_backend())?;
        self.check_slot(db).await?;
        if save::is_one_statement(&plan, db.get_database_backend()) {
            return save::execute(db, plan).await;
        }
        let txn = begin_write(db).await?;
        let written = save::execute(&txn, plan).await?;
        txn.commit().await?;
        Ok(written)
    }

    /// In a log capture mode, checks (once, then remembered) that the database has a pgoutput
    /// replication slot: events saved before one exists would never reach the log relay.
    pub(crate) async fn check_slot<C: ConnectionTrait>(&self, conn: &C) -> Result<(), Error> {
        let capture = self.inner.capture;
        if capture == Capture::Table
            || conn.get_database_backend() != DbBackend::Postgres
            || self.inner.slot_seen.load(Ordering::Relaxed)
        {
            return Ok(());
        }
        save::require_slot(conn, capture).await?;
        self.inner.slot_seen.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Begins a [`UnitOfWork`]: several aggregates and the caller's own writes in one
    /// transaction.
    ///
    /// # Errors
    /// [`Error::Database`] when the transaction cannot begin.
    pub async fn begin<'a>(&self) -> Result<UnitOfWork<'a>, Error> {
        let txn = begin_write(&self.inner.db).await?;
        Ok(UnitOfWork::new(self.clone(), txn))
    }

    /// [`save_in`](crate::save_in) with this outbox's handlers and delivery grace: saves
    /// `aggregate` (its row, by the rules of [`Outbox::save`], and its pending events) through
    /// the caller's transaction `conn`, leaving the events in the aggregate. After the commit,
    /// pass the result to [`Outbox::after_commit`].
    ///
    /// It sends no `pg_notify` from the transaction on PostgreSQL (that would serialize
    /// concurrent commits): [`Outbox::after_commit`] wakes the relay instead.
    ///
    /// # Errors
    /// As [`Outbox::save`]; roll the transaction back then.
    pub async fn save_in<A, C>(&self, conn: &C, aggregate: &A) -> Result<Written, Error>
    where
        A: AggregateRoot + ModelTrait + IntoActiveModel<ActiveOf<A>>,
        ActiveOf<A>: ActiveModelTrait<Entity = A::Entity>,
        C: ConnectionTrait,
    {
        let plan = save::plan_save(
            aggregate,
            &self.inner.handlers,
            self.inner.grace,
            Wake::AfterCommit,
            self.inner.capture,
            conn.get_database_backend(),
        )?;
        self.check_slot(conn).await?;
        save::execute(conn, plan).await
    }

    /// [`write_events`](crate::write_events) with this outbox's handlers and delivery grace:
    /// writes `aggregate`'s pending events through the caller's transaction `conn`, leaving them
    /// in the aggregate. After the commit, pass the result to [`Outbox::after_commit`].
    ///
    /// Unlike [`write_events`](crate::write_events), it sends no `pg_notify` from the transaction
    /// on PostgreSQL (that would serialize concurrent commits): [`Outbox::after_commit`] wakes the
    /// relay instead.
    ///
    /// # Errors
    /// As [`write_events`](crate::write_events) (a versioned aggregate is refused: use
    /// [`Outbox::save_in`]).
    pub async fn write<A, C>(&self, conn: &C, aggregate: &A) -> Result<Written, Error>
    where
        A: AggregateRoot + ?Sized,
        C: ConnectionTrait,
    {
        let plan = save::plan_events(
            aggregate,
            &self.inner.handlers,
            self.inner.grace,
            Wake::AfterCommit,
            self.inner.capture,
        )?;
        save::execute(conn, plan).await
    }

    /// Finishes a save made with [`save_in`](crate::save_in) or
    /// [`write_events`](crate::write_events) in the caller's transaction, once that transaction
    /// has committed: removes the written events from `aggregate` (events registered since stay
    /// pending), sets a versioned aggregate's new version, wakes the relay on PostgreSQL (a `NOTIFY` sent from a
    /// background task, folded with the wake-ups of other commits under load), and hands the
    /// in-process handlers' work to the dispatcher.
    ///
    /// Never call it before the commit succeeded; after a rollback, just drop `written`. If it is
    /// never called after a commit, nothing is lost: the recovery worker ([`crate::DeliveryWorker`])
    /// runs the handlers once the delivery grace has passed, but the aggregate keeps its events
    /// and saving them again fails on the outbox's unique event id.
    pub async fn after_commit<A>(&self, aggregate: &mut A, written: Written)
    where
        A: AggregateRoot + ?Sized,
    {
        written.settle(aggregate);
        self.dispatch(written).await;
    }

    /// Hands committed events to the dispatcher.
    pub(crate) async fn dispatch(&self, written: Written) {
        // Only the table relay polls rows and listens for a wake-up.
        if !written.is_empty() && self.inner.capture == Capture::Table {
            self.inner.notifier.wake(&self.inner.db);
        }
        if written.deliveries() == 0 {
            return;
        }
        let job = dispatch_job_within(
            self.inner.db.clone(),
            self.inner.retry.clone(),
            self.inner.handler_timeout,
            written,
        );
        self.inner.dispatcher.dispatch(job).await;
    }
}

/// Begins a transaction that will write. On SQLite it starts `IMMEDIATE`, taking the write lock
/// at once (waiting for the busy timeout): a deferred transaction that reads first fails at once
/// with `SQLITE_BUSY` when it later writes after another connection's commit.
pub(crate) async fn begin_write(db: &DatabaseConnection) -> Result<DatabaseTransaction, DbErr> {
    if db.get_database_backend() == DbBackend::Sqlite {
        db.begin_with_options(TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..TransactionOptions::default()
        })
        .await
    } else {
        db.begin().await
    }
}
