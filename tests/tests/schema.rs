//! The migrations apply, re-apply and roll back on every backend.

use outbox_tests::{TestDb, db_tests};
use sea_orm::{ConnectionTrait, Statement};
use sea_orm_migration::MigratorTrait;

async fn migrations_apply_and_roll_back(t: TestDb) {
    let backend = t.db.get_database_backend();
    let count = |sql: &'static str| {
        let db = &t.db;
        async move {
            db.query_one_raw(Statement::from_string(backend, sql))
                .await
                .expect("query")
                .expect("row")
                .try_get_by_index::<i64>(0)
                .expect("count")
        }
    };
    assert_eq!(count("SELECT COUNT(*) FROM outbox_shard").await, 64);
    assert_eq!(count("SELECT COUNT(*) FROM outbox").await, 0);
    // Applying again is a no-op.
    outbox_seaorm::schema::migrate(&t.db)
        .await
        .expect("re-apply");
    assert_eq!(count("SELECT COUNT(*) FROM outbox_shard").await, 64);
    outbox_seaorm::schema::OutboxMigrator::down(&t.db, None)
        .await
        .expect("down");
    let gone =
        t.db.query_one_raw(Statement::from_string(
            backend,
            "SELECT COUNT(*) FROM outbox",
        ))
        .await;
    assert!(gone.is_err(), "outbox table still exists after down");
    outbox_seaorm::schema::migrate(&t.db)
        .await
        .expect("up again");
    assert_eq!(count("SELECT COUNT(*) FROM outbox_shard").await, 64);
}

db_tests!(migrations_apply_and_roll_back);
