//! Small admin functions over the outbox: counts and requeueing dead events.

use sea_orm::{ConnectionTrait, DbErr};
use uuid::Uuid;

use super::RelayError;
use crate::sql::{execute, query, scalar};
use crate::status::EventStatus;
use crate::time::now_micros;

/// How many events wait to be published (status pending, due or not).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let db = sea_orm::Database::connect("sqlite::memory:").await?;
/// outbox_seaorm::schema::migrate(&db).await?;
/// assert_eq!(outbox_seaorm::relay::pending_count(&db).await?, 0);
/// # Ok(()) }
/// ```
///
/// # Errors
/// [`RelayError::Database`] when the query fails.
pub async fn pending_count<C: ConnectionTrait>(db: &C) -> Result<u64, RelayError> {
    let sql = format!(
        "SELECT COUNT(*) FROM outbox WHERE status = {}",
        EventStatus::Pending.value()
    );
    let n = scalar(db, &sql, vec![]).await?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// How many events are dead (failed for the last time, or refused by the broker).
///
/// # Errors
/// [`RelayError::Database`] when the query fails.
pub async fn dead_count<C: ConnectionTrait>(db: &C) -> Result<u64, RelayError> {
    let sql = format!(
        "SELECT COUNT(*) FROM outbox WHERE status = {}",
        EventStatus::Dead.value()
    );
    let n = scalar(db, &sql, vec![]).await?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Puts dead event `event_id` back to pending, due now, with its attempts reset; its last error
/// stays for reference. Returns whether a dead event with that id was found.
///
/// Under [`DeadLetterPolicy::Block`](super::DeadLetterPolicy::Block) this also releases the
/// later events of its aggregate, which are then published after it, in order.
///
/// # Errors
/// [`RelayError::Database`] when the update fails.
pub async fn requeue_dead<C: ConnectionTrait>(db: &C, event_id: Uuid) -> Result<bool, RelayError> {
    let changed = execute(
        db,
        "UPDATE outbox SET status = ?, attempts = 0, next_attempt_at = ? \
         WHERE id = ? AND status = ?",
        vec![
            EventStatus::Pending.into(),
            now_micros().into(),
            event_id.to_string().into(),
            EventStatus::Dead.into(),
        ],
    )
    .await?;
    Ok(changed > 0)
}

/// Pending count and the oldest pending row's `created_at`.
pub(super) async fn pending_stats<C: ConnectionTrait>(db: &C) -> Result<(i64, Option<i64>), DbErr> {
    let sql = format!(
        "SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM outbox WHERE status = {}",
        EventStatus::Pending.value()
    );
    let rows = query(db, &sql, vec![]).await?;
    match rows.first() {
        Some(row) => Ok((
            row.try_get_by_index::<Option<i64>>(0)?.unwrap_or(0),
            row.try_get_by_index::<Option<i64>>(1)?,
        )),
        None => Ok((0, None)),
    }
}
