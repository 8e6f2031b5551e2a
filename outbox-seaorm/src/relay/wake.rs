//! Waking the relay on PostgreSQL: `LISTEN outbox` in a background task.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sea_orm::DatabaseConnection;
use sea_orm::sqlx::postgres::{PgListener, PgPool};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::sql::error_chain;

/// A background task that holds one pooled connection in `LISTEN outbox` and wakes the relay
/// on every notification. It reconnects (with backoff) when the connection is lost, and wakes
/// the relay after reconnecting, since notifications sent meanwhile were lost. Stopped on drop.
pub(super) struct Listener {
    notify: Arc<Notify>,
    listening: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Listener {
    /// Starts listening; `db` must be a PostgreSQL connection.
    pub(super) fn start(db: &DatabaseConnection) -> Listener {
        let pool = db.get_postgres_connection_pool().clone();
        let notify = Arc::new(Notify::new());
        let listening = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(listen(pool, notify.clone(), listening.clone()));
        Listener {
            notify,
            listening,
            task,
        }
    }

    /// Whether notifications are arriving (else the relay polls).
    pub(super) fn is_listening(&self) -> bool {
        self.listening.load(Ordering::Acquire)
    }

    /// Completes at the next notification (at once if one came since the last call).
    pub(super) async fn notified(&self) {
        self.notify.notified().await;
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn listen(pool: PgPool, notify: Arc<Notify>, listening: Arc<AtomicBool>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match subscribe(&pool).await {
            Ok(mut listener) => {
                listening.store(true, Ordering::Release);
                backoff = Duration::from_millis(100);
                // Anything committed before the LISTEN took effect was not announced.
                notify.notify_one();
                loop {
                    match listener.try_recv().await {
                        Ok(Some(_)) => notify.notify_one(),
                        Ok(None) => {
                            tracing::debug!("outbox LISTEN connection lost and re-established");
                            notify.notify_one();
                        }
                        Err(error) => {
                            tracing::warn!(error = %error_chain(&error), "outbox LISTEN connection failed; reconnecting");
                            break;
                        }
                    }
                }
            }
            Err(error) => {
                tracing::warn!(error = %error_chain(&error), "cannot LISTEN on the outbox channel; polling meanwhile");
            }
        }
        listening.store(false, Ordering::Release);
        notify.notify_one();
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn subscribe(pool: &PgPool) -> Result<PgListener, sea_orm::sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(crate::NOTIFY_CHANNEL).await?;
    Ok(listener)
}
