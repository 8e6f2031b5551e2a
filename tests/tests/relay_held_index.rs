//! The migration creates `ix_outbox_held` (status, next_attempt_at), which the relay's batch
//! query needs to find held-back aggregates without scanning the whole outbox every cycle.

use outbox_tests::{TestDb, db_tests};
use sea_orm::{ConnectionTrait, DbBackend, Statement};

async fn migration_creates_the_held_back_index(t: TestDb) {
    let backend = t.db.get_database_backend();
    let sql = match backend {
        DbBackend::Postgres => {
            "SELECT COUNT(*) FROM pg_indexes WHERE tablename = 'outbox' AND indexname = 'ix_outbox_held' \
             AND indexdef LIKE '%(status, next_attempt_at)%'"
        }
        DbBackend::MySql => {
            "SELECT COUNT(*) FROM information_schema.statistics WHERE table_schema = DATABASE() \
             AND table_name = 'outbox' AND index_name = 'ix_outbox_held' \
             AND ((seq_in_index = 1 AND column_name = 'status') \
               OR (seq_in_index = 2 AND column_name = 'next_attempt_at'))"
        }
        _ => {
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND tbl_name = 'outbox' \
             AND name = 'ix_outbox_held' AND sql LIKE '%status%next_attempt_at%'"
        }
    };
    let n =
        t.db.query_one_raw(Statement::from_string(backend, sql))
            .await
            .expect("query")
            .expect("row")
            .try_get_by_index::<i64>(0)
            .expect("count");
    let expected = if backend == DbBackend::MySql { 2 } else { 1 };
    assert_eq!(
        n, expected,
        "ix_outbox_held on outbox (status, next_attempt_at)"
    );
}

db_tests!(migration_creates_the_held_back_index);
