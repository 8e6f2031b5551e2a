//! Large events on every database: a 1 MB event is saved, relayed to Kafka (librdkafka's mock
//! cluster), read back whole by a plain client and applied by `KafkaConsumer` through the inbox,
//! with the producer's and the readers' size limits raised as a user would through the builders'
//! librdkafka passthrough; an event over the producer's limit goes dead with its reason while the
//! other aggregates' events flow on.

use std::time::Duration;

use outbox_core::{EventContext, HandlerError, HandlerRegistry, event_handler, handler};
use outbox_kafka::{KafkaConsumer, KafkaPublisher};
use outbox_seaorm::Outbox;
use outbox_seaorm::TransactionExt;
use outbox_seaorm::relay::{Relay, dead_count, pending_count};
use outbox_tests::documents::{DocumentRevised, create_table, new_document, revise};
use outbox_tests::reader::read_topic_async;
use outbox_tests::{TestDb, db_tests};
use rdkafka::mocking::MockCluster;
use sea_orm::{ConnectionTrait, Statement};

/// 1 MiB of body: above MySQL's `TEXT` (64 KB) and librdkafka's default `message.max.bytes`
/// (1,000,000).
const ONE_MB: usize = 1024 * 1024;
/// The producer's limit the test raises to (`message.max.bytes`).
const PRODUCER_LIMIT: &str = "2000000";
/// Over the raised limit.
const THREE_MB: usize = 3 * 1024 * 1024;

async fn last_error(t: &TestDb, aggregate_id: &str) -> String {
    let backend = t.db.get_database_backend();
    let row =
        t.db.query_one_raw(Statement::from_string(
            backend,
            format!(
                "SELECT last_error FROM outbox WHERE aggregateid = '{aggregate_id}' AND status = 2"
            ),
        ))
        .await
        .expect("query")
        .expect("a dead row");
    row.try_get_by_index::<Option<String>>(0)
        .expect("last_error")
        .expect("a reason")
}

/// The consumer side: records each revision's body length through the inbox transaction.
#[event_handler(id = "large.received", group = "documents")]
async fn received(event: &DocumentRevised, ctx: &EventContext<'_>) -> Result<(), HandlerError> {
    let txn = ctx.transaction()?;
    let backend = txn.get_database_backend();
    let sql = if backend == sea_orm::DbBackend::Postgres {
        "INSERT INTO received (document, revision, body_len) VALUES ($1, $2, $3)"
    } else {
        "INSERT INTO received (document, revision, body_len) VALUES (?, ?, ?)"
    };
    let body_len = i64::try_from(event.body.len()).unwrap_or(i64::MAX);
    txn.execute_raw(Statement::from_sql_and_values(
        backend,
        sql,
        [
            event.document.clone().into(),
            event.revision.into(),
            body_len.into(),
        ],
    ))
    .await?;
    Ok(())
}

/// `(document, revision, body length)` of what the consumer applied, in order.
async fn applied(t: &TestDb) -> Vec<(String, i64, i64)> {
    t.db.query_all_raw(Statement::from_string(
        t.db.get_database_backend(),
        "SELECT document, revision, body_len FROM received ORDER BY document, revision",
    ))
    .await
    .expect("received")
    .iter()
    .map(|r| {
        (
            r.try_get_by_index(0).expect("document"),
            r.try_get_by_index(1).expect("revision"),
            r.try_get_by_index(2).expect("length"),
        )
    })
    .collect()
}

async fn one_megabyte_event_is_saved_relayed_and_read(t: TestDb) {
    create_table(&t.db).await;
    t.db.execute_unprepared(
        "CREATE TABLE received (document VARCHAR(64) NOT NULL, revision BIGINT NOT NULL, \
         body_len BIGINT NOT NULL)",
    )
    .await
    .expect("received table");
    let outbox = Outbox::builder(t.db.clone())
        .handlers(HandlerRegistry::new())
        .build();
    // Interleaved: a large event, one over the producer's limit, and small ones of other
    // aggregates before and after it.
    let mut large = new_document("large");
    let mut huge = new_document("huge");
    let mut small = new_document("small");
    revise(&outbox, &mut small, 10).await;
    revise(&outbox, &mut large, ONE_MB).await;
    revise(&outbox, &mut huge, THREE_MB).await;
    revise(&outbox, &mut small, 10).await;
    // Stored whole, on every backend.
    let backend = t.db.get_database_backend();
    let length = match backend {
        sea_orm::DbBackend::MySql => "CHAR_LENGTH(payload)",
        sea_orm::DbBackend::Postgres => "CAST(LENGTH(payload) AS BIGINT)",
        _ => "LENGTH(payload)",
    };
    let stored =
        t.db.query_one_raw(Statement::from_string(
            backend,
            format!("SELECT {length} FROM outbox WHERE aggregateid = 'huge'"),
        ))
        .await
        .expect("query")
        .expect("row")
        .try_get_by_index::<i64>(0)
        .expect("length");
    assert!(stored > i64::try_from(THREE_MB).expect("fits"), "{stored}");

    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic("document", 1, 1).expect("topic");
    let brokers = cluster.bootstrap_servers();
    let publisher = KafkaPublisher::builder(&brokers)
        .set("message.max.bytes", PRODUCER_LIMIT)
        .build()
        .expect("publisher");
    let relay = Relay::builder(t.db.clone(), publisher)
        .shards_per_claim(64)
        .build();
    let report = relay.run_once().await.expect("cycle");
    assert_eq!(report.published(), 3, "{report:?}");
    assert_eq!(report.dead(), 1, "{report:?}");
    assert_eq!(pending_count(&t.db).await.expect("pending"), 0);
    assert_eq!(dead_count(&t.db).await.expect("dead"), 1);
    let reason = last_error(&t, "huge").await;
    assert!(
        reason.to_lowercase().contains("too large"),
        "the dead event's reason says why: {reason}"
    );

    let read = read_topic_async(
        &brokers,
        "document",
        &[("fetch.message.max.bytes", PRODUCER_LIMIT)],
        0,
        Duration::from_secs(2),
    )
    .await;
    // Across aggregates the relay's order is by shard; within one it is the save order.
    let labels: Vec<String> = read.iter().map(|m| m.label()).collect();
    let small: Vec<&String> = labels.iter().filter(|l| l.starts_with("small/")).collect();
    assert_eq!(small, ["small/1", "small/2"], "{labels:?}");
    let mut sorted = labels.clone();
    sorted.sort();
    assert_eq!(sorted, ["large/1", "small/1", "small/2"], "{labels:?}");
    let large = read
        .iter()
        .find(|m| m.header("aggregate_id") == "large")
        .expect("the large event");
    let event: DocumentRevised = serde_json::from_slice(&large.payload).expect("whole JSON");
    assert_eq!(event.document, "large");
    assert_eq!(event.body.len(), ONE_MB);
    assert!(event.body.bytes().all(|b| b == b'x'));

    // And the project's consumer applies it, once, through the inbox on this database, with its
    // fetch limit raised as a user would.
    let consumer = KafkaConsumer::builder(
        &brokers,
        "documents",
        t.db.clone(),
        HandlerRegistry::new().with(handler!(received)),
    )
    .topics(["document"])
    .set("fetch.message.max.bytes", PRODUCER_LIMIT)
    .build()
    .await
    .expect("consumer");
    let db = t.db.clone();
    let stats = consumer
        .run_until(async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while tokio::time::Instant::now() < deadline {
                let count = db
                    .query_one_raw(Statement::from_string(
                        db.get_database_backend(),
                        "SELECT COUNT(*) FROM received",
                    ))
                    .await
                    .ok()
                    .flatten()
                    .and_then(|r| r.try_get_by_index::<i64>(0).ok())
                    .unwrap_or(0);
                if count >= 3 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("consumer ran");
    let one_mb = i64::try_from(ONE_MB).expect("fits");
    assert_eq!(
        applied(&t).await,
        [
            ("large".to_owned(), 1, one_mb),
            ("small".to_owned(), 1, 10),
            ("small".to_owned(), 2, 10),
        ],
        "{stats:?}"
    );
}

db_tests!(one_megabyte_event_is_saved_relayed_and_read);

/// The `DATA_TYPE` of the four widened columns on MariaDB.
async fn text_types(t: &TestDb) -> Vec<String> {
    let rows =
        t.db.query_all_raw(Statement::from_string(
            t.db.get_database_backend(),
            "SELECT CONCAT(TABLE_NAME, '.', COLUMN_NAME, ' ', DATA_TYPE, ' ', IS_NULLABLE) \
             FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND \
             COLUMN_NAME IN ('payload', 'metadata', 'last_error') ORDER BY 1",
        ))
        .await
        .expect("columns");
    rows.iter()
        .map(|r| r.try_get_by_index::<String>(0).expect("text"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_text_migration_goes_up_and_down_on_mariadb() {
    use sea_orm_migration::MigratorTrait;
    let test = concat!(
        module_path!(),
        "::long_text_migration_goes_up_and_down_on_mariadb"
    );
    let Some(t) = outbox_tests::fresh(outbox_tests::Backend::MariaDb, test).await else {
        return;
    };
    let long = [
        "outbox.last_error longtext YES",
        "outbox.metadata longtext YES",
        "outbox.payload longtext NO",
        "outbox_delivery.last_error longtext YES",
    ];
    assert_eq!(text_types(&t).await, long);
    // Down past the later migrations to the long-text one.
    let later = outbox_seaorm::schema::migrations()
        .iter()
        .skip_while(|m| m.name() != "outbox_m0002_long_text_columns")
        .count();
    let later = u32::try_from(later).expect("few migrations");
    outbox_seaorm::schema::OutboxMigrator::down(&t.db, Some(later))
        .await
        .expect("down");
    assert_eq!(
        text_types(&t).await,
        long.map(|c| c.replace("longtext", "text"))
    );
    outbox_seaorm::schema::migrate(&t.db)
        .await
        .expect("up again");
    assert_eq!(text_types(&t).await, long);
}
