//! Helpers of the log relay tests: a relay running in a task, the server's log position, and
//! waiting until a slot confirmed a position.

use std::time::{Duration, Instant};

use outbox_seaorm::log_relay::{LogRelay, LogStats, SlotStatus, slot_status};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};

/// A log relay running in its own task until [`crate::Running::stop`].
pub type RunningLogRelay = crate::Running<LogStats>;

impl crate::Running<LogStats> {
    /// Spawns `relay.run_until(..)`.
    pub fn start(relay: LogRelay) -> Self {
        crate::Running::spawn(|stop| async move { relay.run_until(stop).await.expect("log relay") })
    }
}

/// The server's current write-ahead log position, in bytes (`pg_current_wal_lsn()`).
pub async fn wal_lsn(db: &DatabaseConnection) -> u64 {
    let row = db
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint",
        ))
        .await
        .expect("current log position")
        .expect("a row");
    let lsn: i64 = row.try_get_by_index(0).expect("position");
    u64::try_from(lsn).expect("a positive position")
}

/// The status of `slot`; panics when it does not exist.
pub async fn status(db: &DatabaseConnection, slot: &str) -> SlotStatus {
    slot_status(db, slot)
        .await
        .expect("slot status")
        .unwrap_or_else(|| panic!("slot {slot} does not exist"))
}

/// Waits until `slot` confirmed position `lsn` (everything committed before it was published
/// and acknowledged), or panics after `within`.
pub async fn wait_confirmed(db: &DatabaseConnection, slot: &str, lsn: u64, within: Duration) {
    let start = Instant::now();
    loop {
        let now = status(db, slot).await;
        if now.confirmed_lsn_bytes.is_some_and(|c| c >= lsn) {
            return;
        }
        assert!(
            start.elapsed() < within,
            "slot {slot} did not confirm {lsn} within {within:?}: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
