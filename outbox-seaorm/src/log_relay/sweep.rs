//! The log relay's sweep: pending `outbox` rows the log never carried to it. A row requeued
//! with [`crate::relay::requeue_dead`] (an update, which the publication leaves out), or saved
//! pending before the slot existed (a service switching from the table relay), is published and
//! marked here, oldest first, once it is older than the sweep age; younger pending rows are the
//! log's to publish ([`crate::Capture::Table`] rows wait for their mark for a moment).

use std::sync::Arc;
use std::time::Duration;

use outbox_core::{Envelope, Publisher};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, Statement};

use crate::codec::{self, Stored};
use crate::status::EventStatus;
use crate::time::now_micros;

/// Rows one sweep reads.
const SWEEP_BATCH: u64 = 500;

/// Publishes up to one batch of pending rows older than `older_than` and marks the acknowledged
/// ones published. Returns how many were published.
pub(super) async fn sweep(
    db: DatabaseConnection,
    publisher: Arc<dyn Publisher>,
    publish_timeout: Duration,
    older_than: Duration,
) -> Result<u64, DbErr> {
    let cutoff = now_micros().saturating_sub(i64::try_from(older_than.as_micros()).unwrap_or(0));
    let sql = format!(
        "SELECT {} FROM outbox WHERE status = {} AND created_at < $1 \
         ORDER BY position LIMIT {SWEEP_BATCH}",
        codec::select_list(""),
        EventStatus::Pending.value()
    );
    let rows = db
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            sql,
            [cutoff.into()],
        ))
        .await?;
    let mut batch: Vec<Envelope> = Vec::with_capacity(rows.len());
    for row in &rows {
        let stored = Stored::read(row, "")?;
        let id = stored.id().to_owned();
        match stored.envelope() {
            Ok(envelope) => batch.push(envelope),
            // The table relay reports such rows; the sweep leaves them alone.
            Err(e) => tracing::warn!(event_id = %id, error = %e, "log relay sweep: row skipped"),
        }
    }
    if batch.is_empty() {
        return Ok(0);
    }
    let Ok(results) = tokio::time::timeout(publish_timeout, publisher.publish(&batch)).await else {
        tracing::warn!("log relay sweep: no acknowledgement in time; the rows stay pending");
        return Ok(0);
    };
    let published: Vec<String> = batch
        .iter()
        .zip(&results)
        .filter(|(_, r)| r.is_ok())
        .map(|(e, _)| e.id().to_string())
        .collect();
    if !published.is_empty() {
        super::session::mark_published(db, published.clone()).await;
        tracing::info!(
            events = published.len(),
            "log relay sweep: published pending rows the log did not carry"
        );
    }
    Ok(published.len() as u64)
}
