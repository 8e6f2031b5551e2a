//! Consumers of one group joining and leaving mid-stream (rebalances) on librdkafka's mock
//! cluster: every event is applied exactly once, and in order per aggregate.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use outbox_core::{
    DomainEvent, Envelope, EventContext, HandlerError, HandlerRegistry, Publisher, event_handler,
    handler,
};
use outbox_kafka::{KafkaConsumer, KafkaPublisher};
use outbox_seaorm::TransactionExt;
use outbox_tests::{Backend, TestDb, fresh};
use rdkafka::mocking::MockCluster;
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

const TOPIC: &str = "rebalance-tickets";
const GROUP: &str = "rebalance-group";

/// A ticket was sold; `n` is its sequence within the show.
#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
#[event(topic = "rebalance-tickets")]
struct TicketSold {
    n: i64,
}

/// Records the event in the consumer's transaction; slow enough that rebalances hit mid-batch.
#[event_handler(group = "rebalance-group")]
async fn record_ticket(event: &TicketSold, ctx: &EventContext) -> Result<(), HandlerError> {
    let txn = ctx.transaction()?;
    txn.execute_raw(Statement::from_sql_and_values(
        txn.get_database_backend(),
        "INSERT INTO effects (event_id, aggregate_id, n) VALUES ($1, $2, $3)",
        [
            ctx.event_id().to_string().into(),
            ctx.aggregate_id().to_owned().into(),
            event.n.into(),
        ],
    ))
    .await?;
    tokio::time::sleep(Duration::from_millis(2)).await;
    Ok(())
}

async fn count(db: &DatabaseConnection, sql: &str) -> i64 {
    db.query_one_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .expect("count")
        .and_then(|r| r.try_get_by_index::<i64>(0).ok())
        .unwrap_or(0)
}

fn start_consumer(
    brokers: &str,
    db: &DatabaseConnection,
) -> (
    oneshot::Sender<()>,
    tokio::task::JoinHandle<outbox_kafka::ConsumerStats>,
) {
    let registry = HandlerRegistry::new().with(handler!(record_ticket));
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let brokers = brokers.to_owned();
    let db = db.clone();
    let task = tokio::spawn(async move {
        let consumer = KafkaConsumer::builder(brokers, GROUP, db, registry)
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "500")
            .max_batch(16)
            .build()
            .await
            .expect("consumer");
        consumer
            .run_until(async {
                let _ = stop_rx.await;
            })
            .await
            .expect("consumer ran")
    });
    (stop_tx, task)
}

async fn run(t: TestDb) {
    t.db.execute_unprepared(
        "CREATE TABLE effects (applied BIGSERIAL PRIMARY KEY, event_id TEXT NOT NULL, \
         aggregate_id TEXT NOT NULL, n BIGINT NOT NULL)",
    )
    .await
    .expect("effects table");

    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic(TOPIC, 3, 1).expect("topic");
    let brokers = cluster.bootstrap_servers();
    let publisher = KafkaPublisher::builder(brokers.clone())
        .build()
        .expect("publisher");
    // 1,200 events over 30 aggregates, published in order per aggregate: long enough that the
    // consumers, applying up to 16 messages per transaction, are still busy when C joins.
    let batch: Vec<Envelope> = (1..=40)
        .flat_map(|n| {
            (0..30).map(move |a| {
                Envelope::builder(TicketSold::NAME, "Show", format!("show-{a}"))
                    .sequence(n)
                    .payload(format!(r#"{{"n":{n}}}"#))
                    .topic(Some(TOPIC.to_owned()))
                    .build()
            })
        })
        .collect();
    for chunk in batch.chunks(100) {
        assert!(publisher.publish(chunk).await.iter().all(Result::is_ok));
    }
    let total = i64::try_from(batch.len()).expect("count");

    // A starts alone; B joins mid-stream; A leaves; C joins: three rebalances.
    let (stop_a, a) = start_consumer(&brokers, &t.db);
    let wait_for = |at_least: i64| {
        let db = t.db.clone();
        async move {
            let start = Instant::now();
            while count(&db, "SELECT COUNT(*) FROM effects").await < at_least {
                assert!(
                    start.elapsed() < Duration::from_secs(60),
                    "stalled below {at_least}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_for(60).await;
    let (stop_b, b) = start_consumer(&brokers, &t.db);
    wait_for(400).await;
    let _ = stop_a.send(());
    let stats_a = a.await.expect("consumer A");
    let (stop_c, c) = start_consumer(&brokers, &t.db);
    wait_for(total).await;
    // Let redeliveries of uncommitted offsets arrive, if any.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = stop_b.send(());
    let _ = stop_c.send(());
    let stats_b = b.await.expect("consumer B");
    let stats_c = c.await.expect("consumer C");

    // Exactly once: one effect row per event, as many as published.
    assert_eq!(count(&t.db, "SELECT COUNT(*) FROM effects").await, total);
    assert_eq!(
        count(&t.db, "SELECT COUNT(DISTINCT event_id) FROM effects").await,
        total
    );
    let applied = stats_a.applied + stats_b.applied + stats_c.applied;
    assert_eq!(
        applied,
        u64::try_from(total).expect("total"),
        "{stats_a:?} {stats_b:?} {stats_c:?}"
    );
    assert!(
        stats_a.applied > 0 && stats_b.applied > 0 && stats_c.applied > 0,
        "every consumer worked: {stats_a:?} {stats_b:?} {stats_c:?}"
    );
    assert!(
        stats_a.batches + stats_b.batches + stats_c.batches > 0,
        "the backlog was applied in batches: {stats_a:?} {stats_b:?} {stats_c:?}"
    );

    eprintln!(
        "applied by A/B/C: {}/{}/{}, duplicates skipped: {}, batches: {}",
        stats_a.applied,
        stats_b.applied,
        stats_c.applied,
        stats_a.duplicates + stats_b.duplicates + stats_c.duplicates,
        stats_a.batches + stats_b.batches + stats_c.batches
    );

    // In order per aggregate, in commit order of the effects.
    let rows =
        t.db.query_all_raw(Statement::from_string(
            t.db.get_database_backend(),
            "SELECT aggregate_id, n FROM effects ORDER BY applied",
        ))
        .await
        .expect("effects");
    let mut last: HashMap<String, i64> = HashMap::new();
    let mut aggregates = HashSet::new();
    for row in rows {
        let aggregate: String = row.try_get("", "aggregate_id").expect("aggregate");
        let n: i64 = row.try_get("", "n").expect("n");
        let prev = last.insert(aggregate.clone(), n).unwrap_or(0);
        assert_eq!(n, prev + 1, "{aggregate}: {n} applied after {prev}");
        aggregates.insert(aggregate);
    }
    assert_eq!(aggregates.len(), 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rebalances_lose_nothing_and_apply_nothing_twice() {
    if let Some(t) = fresh(Backend::Postgres, "kafka_rebalance::rebalances").await {
        run(t).await;
    }
}
