//! Waking the relay after a commit, on PostgreSQL, without slowing down the commits.
//!
//! A `pg_notify` inside the saving transaction is the obvious way to wake a listening relay, but
//! PostgreSQL serializes every committing transaction that has notified (it holds a database-wide
//! lock from the notify queue insert until its commit record is flushed), so concurrent saves
//! lose group commit and queue behind each other: measured with 8 clients, one save statement
//! went from about 3,000 to about 500 per second once it notified.
//!
//! So [`crate::Outbox::save`] and [`crate::UnitOfWork::commit`] notify *after* the commit, from a
//! small background task of the [`crate::Outbox`]: each wake-up asks the task for one
//! notification; wake-ups that arrive while one is on its way are folded into the next, so under
//! load there is at most one notification per round trip, however many saves commit. The
//! notification runs in its own tiny transaction with `synchronous_commit` off: it carries no
//! data (a relay that misses it still finds the rows by its fallback poll), so it need not wait
//! for a disk flush while it holds that lock.

use std::sync::Mutex;

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use tokio::sync::mpsc;

use crate::save::NOTIFY_CHANNEL;

/// Asks a background task to send `NOTIFY outbox` (PostgreSQL only; a no-op elsewhere).
pub(crate) struct Notifier {
    /// The sender of the running task; `None` until the first wake-up, or after the task ended
    /// (its runtime shut down).
    sender: Mutex<Option<mpsc::Sender<()>>>,
}

impl Notifier {
    pub(crate) fn new() -> Self {
        Notifier {
            sender: Mutex::new(None),
        }
    }

    /// Wakes relays listening on `db`'s database, soon after this call: call it after a commit
    /// that stored events. Never blocks and never fails; errors of the notification are logged.
    pub(crate) fn wake(&self, db: &DatabaseConnection) {
        if db.get_database_backend() != DbBackend::Postgres {
            return;
        }
        let Ok(mut sender) = self.sender.lock() else {
            // A panic elsewhere poisoned the lock: the relay's fallback poll still finds the rows.
            return;
        };
        if let Some(tx) = sender.as_ref() {
            match tx.try_send(()) {
                // Sent, or one is already queued behind the one on its way: folded into it.
                Ok(()) | Err(mpsc::error::TrySendError::Full(())) => return,
                Err(mpsc::error::TrySendError::Closed(())) => {}
            }
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // One slot: a wake-up that finds it taken is folded into the queued one.
        let (tx, rx) = mpsc::channel(1);
        let _ = tx.try_send(());
        runtime.spawn(notify_loop(db.clone(), rx));
        *sender = Some(tx);
    }
}

/// Sends one notification per received wake-up; ends when the [`Notifier`] is dropped.
async fn notify_loop(db: DatabaseConnection, mut rx: mpsc::Receiver<()>) {
    let statement = Statement::from_sql_and_values(
        DbBackend::Postgres,
        // One autocommit statement: its transaction holds only the notification, and its
        // commit does not wait for the disk.
        "SELECT set_config('synchronous_commit', 'off', true), pg_notify($1, '')",
        [NOTIFY_CHANNEL.into()],
    );
    while rx.recv().await.is_some() {
        if let Err(error) = db.execute_raw(statement.clone()).await {
            tracing::debug!(%error, "waking the relay failed; it finds the events by polling");
        }
    }
}
