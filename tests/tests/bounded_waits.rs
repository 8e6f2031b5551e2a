//! Bounded handler runs: a handler that hangs is cancelled at its timeout and fails as
//! retryable, giving back its row lock and its pooled connection; a consumer handler that hangs
//! or panics is retried, then dead-lettered; SQLite delivery transactions take the write lock at
//! their start.

use std::time::Duration;

use outbox_core::{
    AggregateRoot, DeferredDispatcher, DomainEvent, DomainEvents, Envelope, EventContext,
    HandlerError, HandlerRegistry, InlineDispatcher, Publisher, RetryPolicy, event_handler,
    handler,
};
use outbox_kafka::{KafkaConsumer, KafkaPublisher, dlt};
use outbox_seaorm::{DeliveryWorker, Outbox, TransactionExt};
use outbox_tests::{Backend, TestDb, db_tests, fresh};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::mocking::MockCluster;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DbBackend, Statement};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
#[event(name = "CrateStuck")]
struct CrateStuck {}

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
#[event(name = "CrateDelayed")]
struct CrateDelayed {}

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
#[event(name = "CrateCounted")]
struct CrateCounted {}

/// Never completes; its own timeout cancels it.
#[event_handler(id = "bounded.hangs", timeout = "300ms")]
async fn hangs(_event: &CrateStuck, _ctx: &EventContext<'_>) -> Result<(), HandlerError> {
    std::future::pending().await
}

/// Never completes; it has no timeout of its own.
#[event_handler(id = "bounded.slow")]
async fn slow(_event: &CrateDelayed, _ctx: &EventContext<'_>) -> Result<(), HandlerError> {
    std::future::pending().await
}

#[derive(AggregateRoot)]
struct Crate {
    #[aggregate(id)]
    id: String,
    #[aggregate(events)]
    events: DomainEvents,
}

async fn record<E: DomainEvent>(outbox: &Outbox, id: &str, event: E) -> String {
    let mut aggregate = Crate {
        id: id.to_owned(),
        events: DomainEvents::new(),
    };
    aggregate.register_event(event);
    let event_id = aggregate.events.as_slice()[0].id().to_string();
    let mut uow = outbox.begin().await.expect("begin");
    uow.record(&mut aggregate).await.expect("record");
    uow.commit().await.expect("commit");
    event_id
}

/// (status, attempts, last error) of the delivery row of `event_id`.
async fn delivery(db: &impl ConnectionTrait, event_id: &str) -> (i16, i32, String) {
    let backend = db.get_database_backend();
    let sql = if backend == DbBackend::Postgres {
        "SELECT status, attempts, last_error FROM outbox_delivery WHERE event_id = $1"
    } else {
        "SELECT status, attempts, last_error FROM outbox_delivery WHERE event_id = ?"
    };
    let row = db
        .query_one_raw(Statement::from_sql_and_values(
            backend,
            sql,
            [event_id.into()],
        ))
        .await
        .expect("query")
        .expect("delivery row");
    (
        row.try_get_by_index(0).expect("status"),
        row.try_get_by_index(1).expect("attempts"),
        row.try_get_by_index::<Option<String>>(2)
            .expect("last_error")
            .unwrap_or_default(),
    )
}

/// A pool of one connection: a connection the hung handler kept would starve every save.
async fn pool_of_one(t: &TestDb) -> sea_orm::DatabaseConnection {
    let mut opts = ConnectOptions::new(t.url.clone());
    opts.max_connections(1)
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(5))
        .sqlx_logging(false);
    Database::connect(opts).await.expect("pool of one")
}

const BOUND: Duration = Duration::from_secs(30);

/// The after-commit dispatch cancels a hung handler at its `#[event_handler(timeout)]`: the save
/// returns, the attempt is a retryable failure, the one pooled connection serves the next saves,
/// and the recovery worker retries the row until it is dead.
async fn hung_handler_times_out_and_frees_its_connection(t: TestDb) {
    let db = pool_of_one(&t).await;
    let outbox = Outbox::builder(db.clone())
        .handlers(HandlerRegistry::new().with(handler!(hangs)))
        .dispatcher(InlineDispatcher)
        .retry(
            RetryPolicy::default()
                .with_max_attempts(3)
                .with_initial_delay(Duration::from_millis(10))
                .with_jitter(0.0),
        )
        .delivery_grace(Duration::ZERO)
        .build();
    let event_id = tokio::time::timeout(BOUND, record(&outbox, "c-1", CrateStuck {}))
        .await
        .expect("the save returned: the hung handler was cancelled");
    let (status, attempts, error) = delivery(&db, &event_id).await;
    assert_eq!((status, attempts), (0, 1), "retryable: {error}");
    assert!(
        error.contains("`bounded.hangs` did not complete within 300ms"),
        "{error}"
    );
    for n in 0..3 {
        tokio::time::timeout(
            BOUND,
            record(&outbox, &format!("c-{}", n + 2), CrateStuck {}),
        )
        .await
        .expect("the pool serves other saves");
    }
    let worker = DeliveryWorker::new(outbox);
    let deadline = tokio::time::Instant::now() + BOUND;
    while delivery(&db, &event_id).await.0 == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never retried to death"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        tokio::time::timeout(BOUND, worker.run_once())
            .await
            .expect("a round ends")
            .expect("round");
    }
    let (status, attempts, error) = delivery(&db, &event_id).await;
    assert_eq!(
        (status, attempts),
        (2, 3),
        "dead after its attempts: {error}"
    );
    assert!(error.contains("did not complete within 300ms"), "{error}");
}

/// A handler without its own timeout gets the worker's.
async fn worker_default_timeout_bounds_handlers(t: TestDb) {
    let db = pool_of_one(&t).await;
    let outbox = Outbox::builder(db.clone())
        .handlers(HandlerRegistry::new().with(handler!(slow)))
        .dispatcher(DeferredDispatcher)
        .delivery_grace(Duration::ZERO)
        .build();
    let event_id = record(&outbox, "c-1", CrateDelayed {}).await;
    let worker = DeliveryWorker::new(outbox.clone()).handler_timeout(Duration::from_millis(200));
    let claimed = tokio::time::timeout(BOUND, worker.run_once())
        .await
        .expect("the round ended: the hung handler was cancelled")
        .expect("round");
    assert_eq!(claimed, 1);
    let (status, attempts, error) = delivery(&db, &event_id).await;
    assert_eq!((status, attempts), (0, 1), "{error}");
    assert!(
        error.contains("`bounded.slow` did not complete within 200ms"),
        "{error}"
    );
    tokio::time::timeout(BOUND, record(&outbox, "c-2", CrateDelayed {}))
        .await
        .expect("the pool serves other saves");
}

/// A handler without its own timeout gets the outbox's in the after-commit dispatch, and a
/// worker built from that outbox starts with the same bound.
async fn outbox_default_timeout_bounds_after_commit_handlers(t: TestDb) {
    let db = pool_of_one(&t).await;
    let outbox = Outbox::builder(db.clone())
        .handlers(HandlerRegistry::new().with(handler!(slow)))
        .dispatcher(InlineDispatcher)
        .retry(
            RetryPolicy::default()
                .with_initial_delay(Duration::from_millis(10))
                .with_jitter(0.0),
        )
        .handler_timeout(Duration::from_millis(250))
        .delivery_grace(Duration::ZERO)
        .build();
    assert_eq!(outbox.handler_timeout(), Duration::from_millis(250));
    let event_id = tokio::time::timeout(BOUND, record(&outbox, "c-1", CrateDelayed {}))
        .await
        .expect("the save returned: the hung handler was cancelled");
    let (status, attempts, error) = delivery(&db, &event_id).await;
    assert_eq!((status, attempts), (0, 1), "{error}");
    assert!(
        error.contains("`bounded.slow` did not complete within 250ms"),
        "{error}"
    );
    let worker = DeliveryWorker::new(outbox);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let claimed = tokio::time::timeout(BOUND, worker.run_once())
        .await
        .expect("the worker's round ended at the outbox's bound")
        .expect("round");
    assert_eq!(claimed, 1);
    let (_, attempts, error) = delivery(&db, &event_id).await;
    assert_eq!(attempts, 2, "{error}");
    assert!(error.contains("within 250ms"), "{error}");
}

db_tests!(
    hung_handler_times_out_and_frees_its_connection,
    worker_default_timeout_bounds_handlers,
    outbox_default_timeout_bounds_after_commit_handlers,
);

/// Reads a row, lets another connection commit a write, then writes: a deferred SQLite
/// transaction fails there with `SQLITE_BUSY` (its snapshot is stale), an immediate one holds
/// the write lock from its start and makes the other writer wait.
#[event_handler(id = "bounded.read-then-write")]
async fn read_then_write(
    _event: &CrateCounted,
    ctx: &EventContext<'_>,
) -> Result<(), HandlerError> {
    let txn = ctx.transaction()?;
    txn.execute_unprepared("SELECT COUNT(*) FROM counter")
        .await?;
    let other = OTHER_WRITER
        .get()
        .cloned()
        .ok_or_else(|| HandlerError::permanent(std::io::Error::other("no other writer")))?;
    let writer = tokio::spawn(async move {
        other
            .execute_unprepared("UPDATE counter SET other = other + 1")
            .await
    });
    // Time for the other writer to commit, if the database lets it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    txn.execute_unprepared("UPDATE counter SET mine = mine + 1")
        .await?;
    drop(writer);
    Ok(())
}

static OTHER_WRITER: std::sync::OnceLock<sea_orm::DatabaseConnection> = std::sync::OnceLock::new();

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_delivery_takes_the_write_lock_at_begin() {
    let Some(t) = fresh(Backend::Sqlite, "bounded_waits::sqlite_immediate").await else {
        return;
    };
    t.db.execute_unprepared("CREATE TABLE counter (mine INTEGER NOT NULL, other INTEGER NOT NULL)")
        .await
        .expect("table");
    t.db.execute_unprepared("INSERT INTO counter VALUES (0, 0)")
        .await
        .expect("row");
    let _ = OTHER_WRITER.set(t.connect_again().await);
    let outbox = Outbox::builder(t.db.clone())
        .handlers(HandlerRegistry::new().with(handler!(read_then_write)))
        .dispatcher(InlineDispatcher)
        .build();
    let event_id = tokio::time::timeout(BOUND, record(&outbox, "c-1", CrateCounted {}))
        .await
        .expect("saved");
    let (status, attempts, error) = delivery(&t.db, &event_id).await;
    assert_eq!((status, attempts), (1, 0), "completed at once: {error}");
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        let row =
            t.db.query_one_raw(Statement::from_string(
                DbBackend::Sqlite,
                "SELECT mine, other FROM counter",
            ))
            .await
            .expect("query")
            .expect("row");
        let mine: i64 = row.try_get_by_index(0).expect("mine");
        let other: i64 = row.try_get_by_index(1).expect("other");
        assert_eq!(mine, 1);
        if other == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the other writer never wrote"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---- consumer handlers ----

const TOPIC: &str = "crates";

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
#[event(name = "CrateLost", topic = "crates")]
struct CrateLost {}

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
#[event(name = "CrateBurst", topic = "crates")]
struct CrateBurst {}

/// Never completes; the consumer's default timeout cancels it.
#[event_handler(id = "bounded.consumer-hangs", group = "g")]
async fn consumer_hangs(_event: &CrateLost, _ctx: &EventContext<'_>) -> Result<(), HandlerError> {
    std::future::pending().await
}

/// Panics.
#[event_handler(id = "bounded.consumer-panics", group = "g")]
async fn consumer_panics(_event: &CrateBurst, _ctx: &EventContext<'_>) -> Result<(), HandlerError> {
    panic!("burst in the handler")
}

/// Reads `n` messages of `topic` from the beginning; their headers.
fn read_headers(brokers: &str, topic: &str, n: usize) -> Vec<Vec<(String, String)>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "reader")
        .create()
        .expect("reader");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .expect("offset");
    consumer.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while out.len() < n && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            out.push(
                m.headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (
                                    h.key.to_owned(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            );
        }
    }
    assert_eq!(out.len(), n, "messages read from {topic}");
    out
}

fn header<'a>(headers: &'a [(String, String)], key: &str) -> &'a str {
    headers
        .iter()
        .find(|(k, _)| k == key)
        .map_or("", |(_, v)| v.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_handlers_that_hang_or_panic_are_retried_then_dead_lettered() {
    let Some(t) = fresh(Backend::Sqlite, "bounded_waits::consumer").await else {
        return;
    };
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic(TOPIC, 1, 1).expect("topic");
    cluster
        .create_topic(&format!("{TOPIC}.dlt"), 1, 1)
        .expect("dlt topic");
    let brokers = cluster.bootstrap_servers();
    let publisher = KafkaPublisher::builder(&brokers)
        .router(|_| TOPIC.to_owned())
        .build()
        .expect("publisher");
    let events = [
        Envelope::builder("CrateLost", "Crate", "c-1")
            .sequence(1)
            .payload("{}")
            .build(),
        Envelope::builder("CrateBurst", "Crate", "c-2")
            .sequence(1)
            .payload("{}")
            .build(),
    ];
    for result in publisher.publish(&events).await {
        result.expect("published");
    }
    let registry = HandlerRegistry::new()
        .with(handler!(consumer_hangs))
        .with(handler!(consumer_panics));
    let consumer = KafkaConsumer::builder(&brokers, "g", t.db.clone(), registry)
        .handler_timeout(Duration::from_millis(200))
        .retry(
            RetryPolicy::default()
                .with_max_attempts(2)
                .with_initial_delay(Duration::from_millis(20))
                .with_jitter(0.0),
        )
        .build()
        .await
        .expect("consumer");
    let dlt_brokers = brokers.clone();
    let reader =
        tokio::task::spawn_blocking(move || read_headers(&dlt_brokers, &format!("{TOPIC}.dlt"), 2));
    let stats = tokio::time::timeout(
        Duration::from_secs(60),
        consumer.run_until(async {
            while !reader.is_finished() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }),
    )
    .await
    .expect("the consumer was not stuck in a handler")
    .expect("consumer ran");
    assert_eq!(stats.dead_lettered, 2, "{stats:?}");
    assert_eq!(stats.retries, 2, "one retry each: {stats:?}");
    let mut dead = read_headers(&brokers, &format!("{TOPIC}.dlt"), 2);
    // The two events have different keys, applied concurrently: order them by offset.
    dead.sort_by_key(|h| {
        header(h, dlt::ORIGINAL_OFFSET)
            .parse::<i64>()
            .expect("offset")
    });
    assert_eq!(header(&dead[0], dlt::HANDLER), "bounded.consumer-hangs");
    assert_eq!(header(&dead[0], dlt::REASON), "handler-failed");
    assert!(
        header(&dead[0], dlt::ERROR).contains("did not complete within 200ms"),
        "{:?}",
        dead[0]
    );
    assert_eq!(header(&dead[1], dlt::HANDLER), "bounded.consumer-panics");
    assert_eq!(header(&dead[1], dlt::REASON), "handler-failed");
    assert!(
        header(&dead[1], dlt::ERROR).contains("panicked: burst in the handler"),
        "{:?}",
        dead[1]
    );
    assert_eq!(header(&dead[1], dlt::ATTEMPTS), "2");
    let inbox =
        t.db.query_one_raw(Statement::from_string(
            DbBackend::Sqlite,
            "SELECT COUNT(*) FROM outbox_inbox",
        ))
        .await
        .expect("query")
        .expect("row")
        .try_get_by_index::<i64>(0)
        .expect("count");
    assert_eq!(inbox, 0, "the failed attempts' inbox rows were rolled back");
}
