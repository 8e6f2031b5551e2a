//! The inbox applies an event once per consumer, on every backend, also under concurrency.

use std::sync::Arc;

use outbox_core::{BoxFuture, Envelope, EventContext, Handler, HandlerError};
use outbox_seaorm::TransactionExt;
use outbox_seaorm::inbox::{BatchItem, Inbox, InboxError, Processed};
use outbox_tests::{TestDb, db_tests};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};

async fn exec(db: &DatabaseConnection, sql: &str) {
    db.execute_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

async fn count(db: &DatabaseConnection, sql: &str) -> i64 {
    db.query_one_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .expect("query")
        .expect("row")
        .try_get_by_index::<i64>(0)
        .expect("count")
}

async fn effects_table(db: &DatabaseConnection) {
    exec(
        db,
        "CREATE TABLE effects (event_id VARCHAR(36) NOT NULL, note VARCHAR(64) NOT NULL)",
    )
    .await;
}

/// Writes one `effects` row through the inbox transaction, then waits a little so that a
/// concurrent task overlaps with it.
fn write_effect<'a>(
    envelope: &'a Envelope,
    ctx: &'a EventContext<'a>,
) -> BoxFuture<'a, Result<(), HandlerError>> {
    Box::pin(async move {
        let txn = ctx.transaction()?;
        let backend = txn.get_database_backend();
        let sql = match backend {
            DbBackend::Postgres => "INSERT INTO effects (event_id, note) VALUES ($1, $2)",
            _ => "INSERT INTO effects (event_id, note) VALUES (?, ?)",
        };
        txn.execute_raw(Statement::from_sql_and_values(
            backend,
            sql,
            [envelope.id().to_string().into(), "applied".into()],
        ))
        .await?;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        Ok(())
    })
}

/// Writes an effect, then fails: the write must roll back with the inbox row.
fn write_then_fail<'a>(
    envelope: &'a Envelope,
    ctx: &'a EventContext<'a>,
) -> BoxFuture<'a, Result<(), HandlerError>> {
    Box::pin(async move {
        write_effect(envelope, ctx).await?;
        Err(HandlerError::retryable(std::io::Error::other(
            "downstream said no",
        )))
    })
}

const WRITER: Handler = Handler::new(
    "tests::write_effect",
    "ThingHappened",
    1,
    Some("things"),
    Some("g"),
    write_effect,
);
const FAILER: Handler = Handler::new(
    "tests::write_then_fail",
    "ThingHappened",
    1,
    Some("things"),
    Some("g"),
    write_then_fail,
);

fn envelope() -> Envelope {
    Envelope::builder("ThingHappened", "Thing", "t-1")
        .sequence(1)
        .payload("{}")
        .build()
}

async fn applies_once_then_skips_duplicates(t: TestDb) {
    effects_table(&t.db).await;
    let env = envelope();
    let first = Inbox::process(&t.db, "g/w", &WRITER, &env, 1)
        .await
        .expect("first");
    assert_eq!(first, Processed::Applied);
    let second = Inbox::process(&t.db, "g/w", &WRITER, &env, 1)
        .await
        .expect("second");
    assert_eq!(second, Processed::Duplicate);
    assert_eq!(count(&t.db, "SELECT COUNT(*) FROM effects").await, 1);
    // Another consumer applies it on its own.
    let other = Inbox::process(&t.db, "h/w", &WRITER, &env, 1)
        .await
        .expect("other consumer");
    assert_eq!(other, Processed::Applied);
    assert_eq!(count(&t.db, "SELECT COUNT(*) FROM effects").await, 2);
    assert_eq!(count(&t.db, "SELECT COUNT(*) FROM outbox_inbox").await, 2);
}

async fn failed_handler_rolls_back_and_can_retry(t: TestDb) {
    effects_table(&t.db).await;
    let env = envelope();
    let err = Inbox::process(&t.db, "g/w", &FAILER, &env, 1)
        .await
        .expect_err("handler fails");
    assert!(matches!(
        err,
        InboxError::Handler {
            handler: "tests::write_then_fail",
            ..
        }
    ));
    assert!(err.is_retryable());
    let chain = std::error::Error::source(&err).map(ToString::to_string);
    assert_eq!(chain.as_deref(), Some("downstream said no"));
    assert_eq!(count(&t.db, "SELECT COUNT(*) FROM effects").await, 0);
    assert_eq!(count(&t.db, "SELECT COUNT(*) FROM outbox_inbox").await, 0);
    // The inbox row was rolled back too, so a retry applies it.
    let retry = Inbox::process(&t.db, "g/w", &WRITER, &env, 2)
        .await
        .expect("retry");
    assert_eq!(retry, Processed::Applied);
    assert_eq!(count(&t.db, "SELECT COUNT(*) FROM effects").await, 1);
}

async fn concurrent_duplicates_apply_once(t: TestDb) {
    effects_table(&t.db).await;
    let db = Arc::new(t.db.clone());
    for round in 0..5 {
        let env = Arc::new(envelope());
        let tasks: Vec<_> = (0..2)
            .map(|_| {
                let db = Arc::clone(&db);
                let env = Arc::clone(&env);
                tokio::spawn(async move { Inbox::process(&*db, "g/w", &WRITER, &env, 1).await })
            })
            .collect();
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.push(task.await.expect("join").expect("process"));
        }
        outcomes.sort_by_key(|o| matches!(o, Processed::Duplicate));
        assert_eq!(
            outcomes,
            [Processed::Applied, Processed::Duplicate],
            "round {round}"
        );
        let sql = format!(
            "SELECT COUNT(*) FROM effects WHERE event_id = '{}'",
            env.id()
        );
        assert_eq!(count(&t.db, &sql).await, 1, "round {round}");
    }
}

async fn rejects_an_oversized_consumer_key(t: TestDb) {
    effects_table(&t.db).await;
    let long = "c".repeat(300);
    let err = Inbox::process(&t.db, &long, &WRITER, &envelope(), 1)
        .await
        .expect_err("too long");
    assert!(matches!(err, InboxError::ConsumerTooLong { len: 300 }));
    assert!(!err.is_retryable());
    assert_eq!(count(&t.db, "SELECT COUNT(*) FROM outbox_inbox").await, 0);
}

fn event(id: &str) -> Envelope {
    Envelope::builder("ThingHappened", "Thing", id)
        .sequence(1)
        .payload("{}")
        .build()
}

fn item<'a>(consumer: &'a str, handler: &'a Handler, envelope: &'a Envelope) -> BatchItem<'a> {
    BatchItem {
        consumer,
        handler,
        envelope,
    }
}

/// One transaction for several events: earlier and repeated ones are duplicates, the rest are
/// applied once, in order.
async fn batch_applies_new_events_once_and_skips_duplicates(t: TestDb) {
    exec(
        &t.db,
        "CREATE TABLE effects (event_id VARCHAR(36) NOT NULL, note VARCHAR(64) NOT NULL)",
    )
    .await;
    let (a, b, c) = (event("a"), event("b"), event("c"));
    let first = Inbox::process(&t.db, "g/w", &WRITER, &a, 1)
        .await
        .expect("a alone");
    assert_eq!(first, Processed::Applied);
    let items = [
        item("g/w", &WRITER, &a),
        item("g/w", &WRITER, &b),
        item("g/w", &WRITER, &c),
        item("g/w", &WRITER, &b),
        item("h/w", &WRITER, &a),
    ];
    let outcomes = Inbox::process_batch(&t.db, &items).await.expect("batch");
    assert_eq!(
        outcomes,
        [
            Processed::Duplicate,
            Processed::Applied,
            Processed::Applied,
            Processed::Duplicate,
            Processed::Applied
        ]
    );
    assert_eq!(count(&t.db, "SELECT COUNT(*) FROM effects").await, 4);
    let b_once = format!("SELECT COUNT(*) FROM effects WHERE event_id = '{}'", b.id());
    assert_eq!(count(&t.db, &b_once).await, 1);
    assert_eq!(count(&t.db, "SELECT COUNT(*) FROM outbox_inbox").await, 4);
    // The whole batch again: all duplicates, nothing written.
    let again = Inbox::process_batch(&t.db, &items).await.expect("again");
    assert!(again.iter().all(|o| *o == Processed::Duplicate));
    assert_eq!(count(&t.db, "SELECT COUNT(*) FROM effects").await, 4);
}

/// A failing handler rolls the whole batch back: no effect, no inbox row; retried, it applies.
async fn batch_failure_rolls_back_the_whole_batch(t: TestDb) {
    effects_table(&t.db).await;
    let (b, c) = (event("b"), event("c"));
    let err = Inbox::process_batch(&t.db, &[item("g/w", &WRITER, &b), item("g/w", &FAILER, &c)])
        .await
        .expect_err("second handler fails");
    assert!(matches!(
        err,
        InboxError::Handler {
            handler: "tests::write_then_fail",
            ..
        }
    ));
    assert_eq!(count(&t.db, "SELECT COUNT(*) FROM effects").await, 0);
    assert_eq!(count(&t.db, "SELECT COUNT(*) FROM outbox_inbox").await, 0);
    let outcomes =
        Inbox::process_batch(&t.db, &[item("g/w", &WRITER, &b), item("g/w", &WRITER, &c)])
            .await
            .expect("retry");
    assert_eq!(outcomes, [Processed::Applied, Processed::Applied]);
    assert_eq!(count(&t.db, "SELECT COUNT(*) FROM effects").await, 2);
}

/// A batch racing a single `process` of one of its events: the event is applied exactly once
/// whichever wins. A batch that loses counts it as a duplicate, or (SQLite, busy) fails as a
/// whole, and its events one by one then apply the rest.
async fn batch_racing_a_single_event_applies_it_once(t: TestDb) {
    effects_table(&t.db).await;
    let db = Arc::new(t.db.clone());
    for round in 0..3 {
        let a = Arc::new(event(&format!("a{round}")));
        let b = Arc::new(event(&format!("b{round}")));
        let single = {
            let (db, a) = (Arc::clone(&db), Arc::clone(&a));
            tokio::spawn(async move { Inbox::process(&*db, "g/w", &WRITER, &a, 1).await })
        };
        let batch = {
            let (db, a, b) = (Arc::clone(&db), Arc::clone(&a), Arc::clone(&b));
            tokio::spawn(async move {
                Inbox::process_batch(&*db, &[item("g/w", &WRITER, &a), item("g/w", &WRITER, &b)])
                    .await
            })
        };
        let single = single.await.expect("join").expect("single");
        match batch.await.expect("join") {
            Ok(outcomes) => {
                let expected_a = if single == Processed::Applied {
                    Processed::Duplicate
                } else {
                    Processed::Applied
                };
                assert_eq!(outcomes, [expected_a, Processed::Applied], "round {round}");
            }
            Err(error) => {
                assert!(
                    matches!(error, InboxError::Database(_)),
                    "round {round}: {error}"
                );
                assert_eq!(single, Processed::Applied, "round {round}");
                for e in [&a, &b] {
                    Inbox::process(&t.db, "g/w", &WRITER, e, 2)
                        .await
                        .expect("one by one");
                }
            }
        }
        for e in [&a, &b] {
            let sql = format!("SELECT COUNT(*) FROM effects WHERE event_id = '{}'", e.id());
            assert_eq!(count(&t.db, &sql).await, 1, "round {round}");
        }
    }
}

db_tests!(
    batch_applies_new_events_once_and_skips_duplicates,
    batch_failure_rolls_back_the_whole_batch,
    batch_racing_a_single_event_applies_it_once,
);

db_tests!(
    applies_once_then_skips_duplicates,
    failed_handler_rolls_back_and_can_retry,
    concurrent_duplicates_apply_once,
    rejects_an_oversized_consumer_key,
);
