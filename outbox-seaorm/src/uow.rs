//! A unit of work: several aggregates and the caller's own writes in one transaction.

use std::fmt;
use std::ops::Deref;

use outbox_core::AggregateRoot;
use sea_orm::{
    ActiveModelTrait, ConnectionTrait, DatabaseTransaction, DbBackend, IntoActiveModel, ModelTrait,
};

use crate::error::Error;
use crate::outbox::Outbox;
use crate::save::{self, ActiveOf, Wake, Written};

/// What the commit does to one enlisted aggregate: removes its written events and sets its new
/// version.
type Settle<'a> = Box<dyn FnOnce(&Written) + Send + 'a>;

/// One transaction in which several aggregates are saved or deleted, events recorded, and the
/// caller's own statements run; begun with [`Outbox::begin`].
///
/// What happens to the events, exactly:
///
/// - [`save`](Self::save), [`delete`](Self::delete) and [`record`](Self::record) write the
///   aggregate's pending events through the transaction but leave them in the aggregate. The
///   unit of work keeps the aggregate mutably borrowed until it ends, so nothing can change its
///   events meanwhile (and one aggregate cannot be enlisted twice).
/// - A versioned aggregate is saved, or deleted, only at the version it was loaded at
///   ([`Error::Conflict`] otherwise, which spoils the unit of work like any failure).
/// - [`commit`](Self::commit) commits; only if the commit succeeds are the written events
///   removed from the aggregates, their new versions set, and the events dispatched to the in-process handlers, in the order they
///   were enlisted.
/// - [`rollback`](Self::rollback), a failed commit, or dropping the unit of work rolls the
///   transaction back: every aggregate still holds all its events and no handler runs.
/// - If one of its own operations fails, the unit of work is spoiled: `commit` then rolls back
///   and returns [`Error::Aborted`], so a half-written aggregate can never commit. A failing
///   statement of your own (run through [`connection`](Self::connection)) is yours to handle:
///   roll back (on PostgreSQL the transaction is unusable after an error anyway).
#[must_use = "a unit of work rolls back unless `commit` is called"]
pub struct UnitOfWork<'a> {
    outbox: Outbox,
    txn: DatabaseTransaction,
    enlisted: Vec<(Settle<'a>, Written)>,
    aborted: bool,
}

impl fmt::Debug for UnitOfWork<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnitOfWork")
            .field("aggregates", &self.enlisted.len())
            .field("aborted", &self.aborted)
            .finish_non_exhaustive()
    }
}

impl<'a> UnitOfWork<'a> {
    pub(crate) fn new(outbox: Outbox, txn: DatabaseTransaction) -> Self {
        UnitOfWork {
            outbox,
            txn,
            enlisted: Vec::new(),
            aborted: false,
        }
    }

    /// The transaction, for the caller's own statements (`Deref` gives the same).
    pub fn connection(&self) -> &DatabaseTransaction {
        &self.txn
    }

    fn check(&self) -> Result<(), Error> {
        if self.aborted {
            Err(Error::Aborted)
        } else {
            Ok(())
        }
    }

    fn spoil<T>(&mut self, result: Result<T, Error>) -> Result<T, Error> {
        if result.is_err() {
            self.aborted = true;
        }
        result
    }

    /// Runs `plan` in the transaction and enlists `aggregate` for the commit.
    async fn run<A>(
        &mut self,
        aggregate: &'a mut A,
        plan: Result<save::Plan, Error>,
    ) -> Result<(), Error>
    where
        A: AggregateRoot + Send,
    {
        self.check()?;
        let result = match plan {
            Ok(plan) => match self.outbox.check_slot(&self.txn).await {
                Ok(()) => save::execute(&self.txn, plan).await,
                Err(err) => Err(err),
            },
            Err(err) => Err(err),
        };
        let written = self.spoil(result)?;
        self.enlisted.push((
            Box::new(move |written: &Written| written.settle(aggregate)),
            written,
        ));
        Ok(())
    }

    /// Saves `aggregate`'s row and its pending events (see [`Outbox::save`]: a versioned
    /// aggregate only at the version it was loaded at, an unversioned one upserted).
    ///
    /// # Errors
    /// As [`Outbox::save`]; the unit of work is then spoiled (see the type's documentation).
    pub async fn save<A>(&mut self, aggregate: &'a mut A) -> Result<(), Error>
    where
        A: AggregateRoot + ModelTrait + IntoActiveModel<ActiveOf<A>> + Send,
        ActiveOf<A>: ActiveModelTrait<Entity = A::Entity>,
    {
        let outbox = &self.outbox;
        let plan = save::plan_save(
            &*aggregate,
            outbox.handlers(),
            outbox.delivery_grace(),
            Wake::AfterCommit,
            outbox.capture(),
            self.txn.get_database_backend(),
        );
        self.run(aggregate, plan).await
    }

    /// Deletes `aggregate`'s row and writes its pending events (see [`Outbox::delete`]).
    ///
    /// # Errors
    /// As [`Outbox::delete`]; the unit of work is then spoiled.
    pub async fn delete<A>(&mut self, aggregate: &'a mut A) -> Result<(), Error>
    where
        A: AggregateRoot + ModelTrait + Send,
    {
        let outbox = &self.outbox;
        let plan = save::plan_delete(
            &*aggregate,
            outbox.handlers(),
            outbox.delivery_grace(),
            Wake::AfterCommit,
            outbox.capture(),
            self.txn.get_database_backend(),
        );
        self.run(aggregate, plan).await
    }

    /// Writes only the pending events of `aggregate`, whose own row the caller writes (through
    /// [`connection`](Self::connection)) or that has none.
    ///
    /// # Errors
    /// As [`crate::write_events`] (a versioned aggregate is refused: use [`Self::save`]); the
    /// unit of work is then spoiled.
    pub async fn record<A>(&mut self, aggregate: &'a mut A) -> Result<(), Error>
    where
        A: AggregateRoot + Send,
    {
        let outbox = &self.outbox;
        let plan = save::plan_events(
            &*aggregate,
            outbox.handlers(),
            outbox.delivery_grace(),
            Wake::AfterCommit,
            outbox.capture(),
        );
        self.run(aggregate, plan).await
    }

    /// Commits; then removes the written events from the aggregates and dispatches them.
    ///
    /// # Errors
    /// [`Error::Aborted`] (after rolling back) when an operation of this unit of work failed,
    /// [`Error::Database`] when the commit fails. The aggregates then keep their events.
    pub async fn commit(self) -> Result<(), Error> {
        let UnitOfWork {
            outbox,
            txn,
            enlisted,
            aborted,
        } = self;
        if aborted {
            txn.rollback().await?;
            return Err(Error::Aborted);
        }
        // PostgreSQL answers COMMIT of a transaction that a failed statement aborted with a
        // silent ROLLBACK. A caller who ignored the failure of their own statement would then
        // lose the events from memory without them being stored: probe the transaction first.
        if txn.get_database_backend() == DbBackend::Postgres
            && let Err(probe) = txn.execute_unprepared("SELECT 1").await
        {
            let _ = txn.rollback().await;
            return Err(Error::Database(probe));
        }
        txn.commit().await?;
        let mut all = Written::empty();
        for (settle, written) in enlisted {
            settle(&written);
            all.append(written);
        }
        outbox.dispatch(all).await;
        Ok(())
    }

    /// Rolls back: nothing is written, the aggregates keep their events, no handler runs.
    ///
    /// # Errors
    /// [`Error::Database`] when the rollback statement fails (the transaction is gone either way).
    pub async fn rollback(self) -> Result<(), Error> {
        self.txn.rollback().await?;
        Ok(())
    }
}

impl Deref for UnitOfWork<'_> {
    type Target = DatabaseTransaction;

    fn deref(&self) -> &DatabaseTransaction {
        &self.txn
    }
}
