//! End to end against a real, independent Kafka-protocol broker (tansu): events saved with
//! `Outbox::save` on PostgreSQL, relayed by `Relay` + `KafkaPublisher`, read back with a plain
//! rdkafka consumer, and applied exactly once into a second PostgreSQL database by a
//! `KafkaConsumer` running `#[event_handler(group = ..)]` handlers.
//!
//! The shared broker comes from `OUTBOX_TEST_KAFKA_BROKERS` (default `127.0.0.1:9092`; started
//! by `scripts/tansu.sh start`). The outage test starts its own tansu from the tool cache
//! (`$OUTBOX_TANSU_BIN`, else `$OUTBOX_TOOLS/bin/tansu`, else `~/.cache/outbox-tools/bin/tansu`)
//! on a free port and freezes it with SIGSTOP. Every test uses topics of its own (UUID suffix)
//! and a consumer group of its own. Unreachable broker: failure under `CI=true`, skip elsewhere.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use outbox_core::{
    AggregateRoot, DomainEvent, DomainEvents, EventContext, HandlerError, HandlerRegistry,
    RetryPolicy, event_handler, handler,
};
use outbox_kafka::{KafkaConfig, KafkaConsumer, KafkaPublisher, dlt, provision_topics};
use outbox_seaorm::relay::{Relay, pending_count};
use outbox_seaorm::{Outbox, TransactionExt};
use outbox_tests::broker::start_own_broker;
use outbox_tests::reader::{self, Read as Received};
use outbox_tests::{Backend, TestDb, fresh, kafka_brokers};
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use serde::{Deserialize, Serialize};

// ---- the source service: a basket aggregate on PostgreSQL ----

mod basket {
    use outbox_core::{AggregateRoot, DomainEvents};
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, AggregateRoot)]
    #[sea_orm(table_name = "baskets")]
    #[aggregate(name = "Basket")]
    pub(crate) struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        #[aggregate(id)]
        pub(crate) id: String,
        pub(crate) items: i64,
        #[sea_orm(ignore)]
        #[aggregate(events)]
        pub(crate) events: DomainEvents,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub(crate) enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// One item added to a basket; `n` is the basket's item count after it (= its sequence).
#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
#[event(name = "E2eItemAdded", version = 2)]
struct ItemAdded {
    basket: String,
    n: i64,
}

// ---- the consuming service: one handler per test, each in a consumer group of its own ----

/// The effect: one row per application, numbered in application order.
async fn record(event: &ItemAdded, ctx: &EventContext<'_>) -> Result<(), HandlerError> {
    let txn = ctx.transaction()?;
    txn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "INSERT INTO effects (event_id, aggregate_id, sequence, n) VALUES ($1, $2, $3, $4)",
        [
            ctx.event_id().to_string().into(),
            ctx.aggregate_id().into(),
            ctx.sequence().into(),
            event.n.into(),
        ],
    ))
    .await?;
    Ok(())
}

#[event_handler(group = "e2e-relayed")]
async fn relayed_item(event: &ItemAdded, ctx: &EventContext) -> Result<(), HandlerError> {
    record(event, ctx).await
}

#[event_handler(group = "e2e-outage")]
async fn outage_item(event: &ItemAdded, ctx: &EventContext) -> Result<(), HandlerError> {
    record(event, ctx).await
}

#[event_handler(group = "e2e-duplicate")]
async fn duplicate_item(event: &ItemAdded, ctx: &EventContext) -> Result<(), HandlerError> {
    record(event, ctx).await
}

#[event_handler(group = "e2e-malformed")]
async fn malformed_item(event: &ItemAdded, ctx: &EventContext) -> Result<(), HandlerError> {
    record(event, ctx).await
}

// ---- helpers ----

fn unique(what: &str) -> String {
    format!("e2e-{what}-{}", uuid::Uuid::now_v7().simple())
}

/// A fresh PostgreSQL database holding the `baskets` table (the source service).
async fn source_db(test: &str) -> Option<TestDb> {
    let t = fresh(Backend::Postgres, test).await?;
    t.db.execute_unprepared(
        "CREATE TABLE baskets (id VARCHAR(64) PRIMARY KEY, items BIGINT NOT NULL)",
    )
    .await
    .expect("baskets table");
    Some(t)
}

/// A second fresh PostgreSQL database holding the `effects` table (the consuming service).
async fn consumer_db(test: &str) -> Option<TestDb> {
    let t = fresh(Backend::Postgres, test).await?;
    t.db.execute_unprepared(
        "CREATE TABLE effects (applied BIGSERIAL PRIMARY KEY, event_id TEXT NOT NULL, \
         aggregate_id TEXT NOT NULL, sequence BIGINT NOT NULL, n BIGINT NOT NULL)",
    )
    .await
    .expect("effects table");
    Some(t)
}

fn outbox(db: &DatabaseConnection) -> Outbox {
    Outbox::builder(db.clone())
        .handlers(HandlerRegistry::new())
        .build()
}

/// Adds `items` items, one event each, to basket `id`, one save per `per_save` events.
async fn add_items(outbox: &Outbox, b: &mut basket::Model, items: usize, per_save: usize) {
    let mut left = items;
    while left > 0 {
        for _ in 0..per_save.min(left) {
            b.items += 1;
            let event = ItemAdded {
                basket: b.id.clone(),
                n: b.items,
            };
            b.register_event(event);
            left -= 1;
        }
        outbox.save(b).await.expect("save");
    }
}

fn new_basket(id: String) -> basket::Model {
    basket::Model {
        id,
        items: 0,
        events: DomainEvents::new(),
    }
}

async fn count(db: &DatabaseConnection, sql: &str) -> i64 {
    db.query_one_raw(Statement::from_string(DbBackend::Postgres, sql))
        .await
        .expect("query")
        .expect("row")
        .try_get_by_index::<i64>(0)
        .expect("count")
}

/// Waits until `sql` counts `want`, or panics after `within`.
async fn wait_count(db: &DatabaseConnection, sql: &str, want: i64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let got = count(db, sql).await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "`{sql}` is {got}, expected {want} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_published(db: &DatabaseConnection, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let pending = pending_count(db).await.expect("pending count");
        if pending == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{pending} events still pending after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads `topic` until `want` messages came and 1.5 s more passed without a new one.
async fn read_topic_async(brokers: &str, topic: &str, want: usize) -> Vec<Received> {
    reader::read_topic_async(brokers, topic, &[], want, Duration::from_millis(1500)).await
}

/// Runs `consumer` until `sql` on `db` counts `want` (then a little longer, so any extra
/// application would show), or panics after `within`.
async fn consume_until(
    consumer: &KafkaConsumer,
    db: &DatabaseConnection,
    sql: &str,
    want: i64,
    within: Duration,
) -> outbox_kafka::ConsumerStats {
    tokio::time::timeout(
        within,
        consumer.run_until(async {
            wait_count(db, sql, want, within).await;
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }),
    )
    .await
    .unwrap_or_else(|_| panic!("consumer did not reach {want} for `{sql}` within {within:?}"))
    .expect("consumer ran")
}

/// Per aggregate, the sequences of the effects in application order.
async fn applied_order(db: &DatabaseConnection) -> BTreeMap<String, Vec<i64>> {
    let rows = db
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT aggregate_id, sequence, n FROM effects ORDER BY applied",
        ))
        .await
        .expect("effects");
    let mut out: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for row in rows {
        let aggregate: String = row.try_get_by_index(0).expect("aggregate");
        let sequence: i64 = row.try_get_by_index(1).expect("sequence");
        let n: i64 = row.try_get_by_index(2).expect("n");
        assert_eq!(sequence, n, "the sequence header matches the payload");
        out.entry(aggregate).or_default().push(sequence);
    }
    out
}

fn assert_in_order(order: &BTreeMap<String, Vec<i64>>, per_aggregate: &BTreeMap<String, i64>) {
    assert_eq!(
        order.keys().collect::<Vec<_>>(),
        per_aggregate.keys().collect::<Vec<_>>()
    );
    for (aggregate, sequences) in order {
        let want: Vec<i64> = (1..=per_aggregate[aggregate]).collect();
        assert_eq!(sequences, &want, "order of {aggregate}");
    }
}

fn raw_producer(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("message.timeout.ms", "10000")
        .create()
        .expect("producer")
}

async fn produce(
    producer: &FutureProducer,
    topic: &str,
    key: Option<&str>,
    headers: Option<OwnedHeaders>,
    payload: &[u8],
) {
    let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic).payload(payload);
    if let Some(key) = key {
        record = record.key(key);
    }
    if let Some(headers) = headers {
        record = record.headers(headers);
    }
    producer
        .send(record, Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)
        .expect("produce");
}

fn headers_of(pairs: &[(&str, &str)]) -> OwnedHeaders {
    pairs.iter().fold(OwnedHeaders::new(), |h, (key, value)| {
        h.insert(Header {
            key,
            value: Some(*value),
        })
    })
}

// ---- 1. saved → relayed → read back → applied exactly once ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saved_events_reach_tansu_with_their_headers_and_are_applied_once() {
    let Some(brokers) = kafka_brokers() else {
        return;
    };
    let Some(src) = source_db("kafka_e2e::relayed_source").await else {
        return;
    };
    let Some(dst) = consumer_db("kafka_e2e::relayed_consumer").await else {
        return;
    };
    let prefix = format!("{}.", unique("relayed"));
    let topic = format!("{prefix}basket");
    provision_topics(
        &KafkaConfig::new(&brokers),
        &[&topic, &format!("{topic}.dlt")],
        3,
        1,
    )
    .await
    .expect("provision");

    // Three baskets, saved interleaved, one to three events per save.
    let outbox = outbox(&src.db);
    let mut baskets: Vec<basket::Model> = (0..3)
        .map(|i| new_basket(format!("basket-{i}-{}", uuid::Uuid::now_v7())))
        .collect();
    for round in 0..3 {
        for (i, b) in baskets.iter_mut().enumerate() {
            add_items(&outbox, b, 1 + (i + round) % 3, 2).await;
        }
    }
    let per_aggregate: BTreeMap<String, i64> =
        baskets.iter().map(|b| (b.id.clone(), b.items)).collect();
    let total: i64 = per_aggregate.values().sum();

    let publisher = KafkaPublisher::builder(&brokers)
        .topic_prefix(&prefix)
        .build()
        .expect("publisher");
    let relay = Relay::builder(src.db.clone(), publisher).build();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let relay_task = tokio::spawn(async move {
        relay
            .run_until(async {
                let _ = stopped.await;
            })
            .await
    });
    wait_published(&src.db, Duration::from_secs(30)).await;

    // Read back with a plain rdkafka consumer; compare with the outbox rows.
    let got = read_topic_async(&brokers, &topic, total as usize).await;
    assert_eq!(got.len(), total as usize, "exactly one message per event");
    let rows = src
        .db
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT id, aggregatetype, aggregateid, type, version, sequence, payload FROM outbox",
        ))
        .await
        .expect("outbox rows");
    let mut by_id: HashMap<String, (String, String, String, i32, i64, String)> = HashMap::new();
    for row in rows {
        by_id.insert(
            row.try_get_by_index(0).expect("id"),
            (
                row.try_get_by_index(1).expect("aggregatetype"),
                row.try_get_by_index(2).expect("aggregateid"),
                row.try_get_by_index(3).expect("type"),
                row.try_get_by_index(4).expect("version"),
                row.try_get_by_index(5).expect("sequence"),
                row.try_get_by_index(6).expect("payload"),
            ),
        );
    }
    assert_eq!(by_id.len(), total as usize);
    let mut seen = HashSet::new();
    for m in &got {
        let id = m.header("event_id");
        assert!(seen.insert(id.to_owned()), "event {id} read twice");
        let (aggregate_type, aggregate_id, name, version, sequence, payload) = by_id
            .get(id)
            .unwrap_or_else(|| panic!("unknown event {id}"));
        assert_eq!(m.key.as_deref(), Some(aggregate_id.as_str()), "key");
        assert_eq!(m.header("aggregate_id"), aggregate_id);
        assert_eq!(m.header("aggregate_type"), aggregate_type);
        assert_eq!(aggregate_type, "Basket");
        assert_eq!(m.header("event_name"), name);
        assert_eq!(name, "E2eItemAdded");
        assert_eq!(m.header("event_version"), version.to_string());
        assert_eq!(m.header("event_version"), "2");
        assert_eq!(m.header("sequence"), sequence.to_string());
        assert_eq!(m.header("content-type"), "application/json");
        assert_eq!(m.header("ce_specversion"), "1.0");
        assert_eq!(m.header("ce_id"), id);
        assert_eq!(m.header("ce_type"), name);
        assert_eq!(m.header("ce_source"), "/outbox/Basket");
        assert_eq!(m.header("ce_subject"), aggregate_id);
        assert_eq!(m.header("ce_sequence"), sequence.to_string());
        let time = m.header("ce_time");
        assert_eq!(time, m.header("occurred_at"));
        assert!(time.len() >= 20 && time.ends_with('Z') && time.contains('T'));
        let body: serde_json::Value = serde_json::from_slice(&m.payload).expect("JSON payload");
        let row: serde_json::Value = serde_json::from_str(payload).expect("row payload");
        assert_eq!(body, row);
        assert_eq!(body["basket"], aggregate_id.as_str());
        assert_eq!(body["n"], *sequence);
    }
    // Per aggregate: one partition, sequences 1..=n in offset order.
    for (aggregate, n) in &per_aggregate {
        let mine: Vec<&Received> = got
            .iter()
            .filter(|m| m.key.as_deref() == Some(aggregate.as_str()))
            .collect();
        assert!(
            mine.iter().all(|m| m.partition == mine[0].partition),
            "{aggregate} spans partitions"
        );
        let sequences: Vec<i64> = mine
            .iter()
            .map(|m| m.header("sequence").parse().expect("sequence"))
            .collect();
        assert_eq!(
            sequences,
            (1..=*n).collect::<Vec<_>>(),
            "order of {aggregate}"
        );
    }

    // The consuming service applies each event exactly once, in order per aggregate.
    let registry = HandlerRegistry::from_inventory();
    assert_eq!(registry.in_group("e2e-relayed", "E2eItemAdded").count(), 1);
    let consumer = KafkaConsumer::builder(&brokers, "e2e-relayed", dst.db.clone(), registry)
        .topics([topic.clone()])
        .build()
        .await
        .expect("consumer");
    let stats = consume_until(
        &consumer,
        &dst.db,
        "SELECT COUNT(*) FROM effects",
        total,
        Duration::from_secs(40),
    )
    .await;
    assert_eq!(stats.messages, total as u64, "{stats:?}");
    assert_eq!(stats.applied, total as u64, "{stats:?}");
    assert_eq!(stats.duplicates, 0, "{stats:?}");
    assert_eq!(stats.dead_lettered, 0, "{stats:?}");
    assert_eq!(
        count(&dst.db, "SELECT COUNT(DISTINCT event_id) FROM effects").await,
        total
    );
    assert_eq!(
        count(&dst.db, "SELECT COUNT(*) FROM outbox_inbox").await,
        total
    );
    assert_in_order(&applied_order(&dst.db).await, &per_aggregate);

    let _ = stop.send(());
    let relay_stats = relay_task.await.expect("relay task").expect("relay");
    assert_eq!(relay_stats.published(), total as u64);
}

// ---- 2. broker outage while saves go on ----

/// How long the broker stays frozen.
const OUTAGE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_broker_loses_nothing_and_applies_everything_once_in_order() {
    // The shared broker is not used, but its absence tells that Kafka is not set up here.
    if kafka_brokers().is_none() {
        return;
    }
    let Some(broker) = start_own_broker() else {
        return;
    };
    let Some(src) = source_db("kafka_e2e::outage_source").await else {
        return;
    };
    let Some(dst) = consumer_db("kafka_e2e::outage_consumer").await else {
        return;
    };
    let brokers = broker.url.clone();
    let prefix = format!("{}.", unique("outage"));
    let topic = format!("{prefix}basket");
    provision_topics(&KafkaConfig::new(&brokers), &[&topic], 3, 1)
        .await
        .expect("provision");

    let publisher = KafkaPublisher::builder(&brokers)
        .topic_prefix(&prefix)
        // Fail a delivery after 4 s, so the relay records attempts during the outage.
        .set("message.timeout.ms", "4000")
        .set("socket.timeout.ms", "3000")
        .build()
        .expect("publisher");
    let relay = Relay::builder(src.db.clone(), publisher)
        .retry(
            RetryPolicy::default()
                .with_max_attempts(1000)
                .with_initial_delay(Duration::from_millis(200))
                .with_max_delay(Duration::from_secs(1)),
        )
        .build();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let relay_task = tokio::spawn(async move {
        relay
            .run_until(async {
                let _ = stopped.await;
            })
            .await
    });
    let consumer = KafkaConsumer::builder(
        &brokers,
        "e2e-outage",
        dst.db.clone(),
        HandlerRegistry::new().with(handler!(outage_item)),
    )
    .topics([topic.clone()])
    .build()
    .await
    .expect("consumer");

    let outbox = outbox(&src.db);
    let mut baskets: Vec<basket::Model> = (0..4)
        .map(|i| new_basket(format!("outage-{i}-{}", uuid::Uuid::now_v7())))
        .collect();
    let consumed = async {
        // Before the outage: everything flows.
        for b in &mut baskets {
            add_items(&outbox, b, 3, 2).await;
        }
        wait_published(&src.db, Duration::from_secs(20)).await;
        let before: i64 = baskets.iter().map(|b| b.items).sum();

        // Freeze the broker; saves go on and stay pending while the relay keeps trying.
        broker.signal("-STOP");
        let frozen_at = Instant::now();
        let mut during = 0i64;
        while frozen_at.elapsed() < OUTAGE - Duration::from_secs(2) {
            for b in &mut baskets {
                add_items(&outbox, b, 2, 1).await;
                during += 2;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let pending = pending_count(&src.db).await.expect("pending");
        assert_eq!(
            pending, during as u64,
            "every event saved during the outage waits"
        );
        let tried = count(
            &src.db,
            "SELECT COUNT(*) FROM outbox WHERE status = 0 AND attempts > 0",
        )
        .await;
        assert!(tried > 0, "the relay kept trying during the outage");
        tokio::time::sleep(OUTAGE.saturating_sub(frozen_at.elapsed())).await;
        broker.signal("-CONT");
        let thawed_at = Instant::now();

        wait_published(&src.db, Duration::from_secs(30)).await;
        let total = before + during;
        wait_count(
            &dst.db,
            "SELECT COUNT(DISTINCT event_id) FROM effects",
            total,
            Duration::from_secs(30),
        )
        .await;
        eprintln!(
            "outage: {before} events before, {during} during a {OUTAGE:?} freeze ({tried} retried), \
             all relayed and applied {:?} after the thaw",
            thawed_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(1500)).await;
        total
    };
    let (stats, total) = tokio::time::timeout(Duration::from_secs(90), async {
        let (tx, rx) = tokio::sync::oneshot::channel::<i64>();
        let run = consumer.run_until(async {
            let _ = rx.await;
        });
        let drive = async move {
            let total = consumed.await;
            let _ = tx.send(total);
            total
        };
        let (stats, total) = tokio::join!(run, drive);
        (stats.expect("consumer ran"), total)
    })
    .await
    .expect("outage test finished in time");

    // Exactly once in effect, in order per aggregate; the topic holds every event at least
    // once (a produce request buffered by the frozen broker may land besides its retry).
    assert_eq!(count(&dst.db, "SELECT COUNT(*) FROM effects").await, total);
    assert_eq!(stats.applied, total as u64, "{stats:?}");
    assert_eq!(stats.dead_lettered, 0, "{stats:?}");
    assert_eq!(
        stats.messages,
        stats.applied + stats.duplicates,
        "{stats:?}"
    );
    let per_aggregate: BTreeMap<String, i64> =
        baskets.iter().map(|b| (b.id.clone(), b.items)).collect();
    assert_in_order(&applied_order(&dst.db).await, &per_aggregate);
    let got = read_topic_async(&brokers, &topic, total as usize).await;
    let ids: HashSet<&str> = got.iter().map(|m| m.header("event_id")).collect();
    assert_eq!(ids.len(), total as usize, "every event is on the topic");
    assert_eq!(
        got.len() as u64,
        stats.messages,
        "the consumer saw every message"
    );

    let _ = stop.send(());
    let relay_stats = relay_task.await.expect("relay task").expect("relay");
    assert!(relay_stats.failed() > 0, "{relay_stats:?}");
    drop(broker);
}

// ---- 3. a duplicate delivery is applied once ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_produced_twice_is_applied_once() {
    let Some(brokers) = kafka_brokers() else {
        return;
    };
    let Some(src) = source_db("kafka_e2e::duplicate_source").await else {
        return;
    };
    let Some(dst) = consumer_db("kafka_e2e::duplicate_consumer").await else {
        return;
    };
    let prefix = format!("{}.", unique("duplicate"));
    let topic = format!("{prefix}basket");
    // The consumer provisions its topic and dead-letter topic.
    let consumer = KafkaConsumer::builder(
        &brokers,
        "e2e-duplicate",
        dst.db.clone(),
        HandlerRegistry::new().with(handler!(duplicate_item)),
    )
    .topics([topic.clone()])
    .provision_topics(3, 1)
    .build()
    .await
    .expect("consumer");

    let outbox = outbox(&src.db);
    let mut b = new_basket(format!("dup-{}", uuid::Uuid::now_v7()));
    add_items(&outbox, &mut b, 1, 1).await;
    let publisher = KafkaPublisher::builder(&brokers)
        .topic_prefix(&prefix)
        .build()
        .expect("publisher");
    let report = Relay::builder(src.db.clone(), publisher)
        .build()
        .run_once()
        .await
        .expect("relay cycle");
    assert_eq!(report.published(), 1);

    // Produce the relayed message again, by hand: same key, headers and payload.
    let original = read_topic_async(&brokers, &topic, 1).await;
    assert_eq!(original.len(), 1);
    let m = &original[0];
    let pairs: Vec<(&str, &str)> = m
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    produce(
        &raw_producer(&brokers),
        &topic,
        m.key.as_deref(),
        Some(headers_of(&pairs)),
        &m.payload,
    )
    .await;
    let both = read_topic_async(&brokers, &topic, 2).await;
    assert_eq!(both.len(), 2);
    assert_eq!(both[0].header("event_id"), both[1].header("event_id"));

    let stats = consume_until(
        &consumer,
        &dst.db,
        "SELECT COUNT(*) FROM effects",
        1,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(stats.messages, 2, "{stats:?}");
    assert_eq!(stats.applied, 1, "{stats:?}");
    assert_eq!(stats.duplicates, 1, "{stats:?}");
    assert_eq!(count(&dst.db, "SELECT COUNT(*) FROM effects").await, 1);
    assert_eq!(count(&dst.db, "SELECT COUNT(*) FROM outbox_inbox").await, 1);
}

// ---- 4. malformed messages land in the dead-letter topic with their reason ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_are_dead_lettered_with_their_reason() {
    let Some(brokers) = kafka_brokers() else {
        return;
    };
    let Some(dst) = consumer_db("kafka_e2e::malformed_consumer").await else {
        return;
    };
    // One partition, so the dead letters come back in the order of the originals.
    let topic = unique("malformed");
    let dead_topic = format!("{topic}.dlt");
    provision_topics(&KafkaConfig::new(&brokers), &[&topic, &dead_topic], 1, 1)
        .await
        .expect("provision");
    let consumer = KafkaConsumer::builder(
        &brokers,
        "e2e-malformed",
        dst.db.clone(),
        HandlerRegistry::new().with(handler!(malformed_item)),
    )
    .topics([topic.clone()])
    .build()
    .await
    .expect("consumer");

    let producer = raw_producer(&brokers);
    let id = || uuid::Uuid::now_v7().to_string();
    let valid = |id: &str, name: &str| {
        headers_of(&[
            ("event_id", id),
            ("event_name", name),
            ("event_version", "2"),
            ("aggregate_type", "Basket"),
            ("aggregate_id", "b-1"),
            ("sequence", "1"),
            ("content-type", "application/json"),
        ])
    };
    let good = br#"{"basket":"b-1","n":1}"#;
    // (what, reason expected in the dead letter)
    let cases = [
        ("garbage bytes", "malformed:not-json"),
        ("no headers", "malformed:missing-header"),
        ("headers without an event name", "malformed:missing-header"),
        ("unknown event name", "malformed:unknown-event"),
        ("payload that does not deserialize", "handler-permanent"),
    ];
    produce(
        &producer,
        &topic,
        Some("b-1"),
        Some(valid(&id(), "E2eItemAdded")),
        b"\x00\xff garbage",
    )
    .await;
    produce(&producer, &topic, Some("b-1"), None, good).await;
    produce(
        &producer,
        &topic,
        Some("b-1"),
        Some(headers_of(&[
            ("event_id", &id()),
            ("aggregate_type", "Basket"),
            ("aggregate_id", "b-1"),
        ])),
        good,
    )
    .await;
    produce(
        &producer,
        &topic,
        Some("b-1"),
        Some(valid(&id(), "E2eSomethingElse")),
        good,
    )
    .await;
    let undecodable = id();
    produce(
        &producer,
        &topic,
        Some("b-1"),
        Some(valid(&undecodable, "E2eItemAdded")),
        br#"{"basket":"b-1","n":"not a number"}"#,
    )
    .await;
    // Then a good one: the consumer is not blocked by what came before.
    let fine = id();
    produce(
        &producer,
        &topic,
        Some("b-1"),
        Some(valid(&fine, "E2eItemAdded")),
        good,
    )
    .await;

    let stats = consume_until(
        &consumer,
        &dst.db,
        "SELECT COUNT(*) FROM effects",
        1,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(stats.messages, 6, "{stats:?}");
    assert_eq!(stats.applied, 1, "{stats:?}");
    assert_eq!(stats.dead_lettered, cases.len() as u64, "{stats:?}");
    assert_eq!(
        count(
            &dst.db,
            &format!("SELECT COUNT(*) FROM effects WHERE event_id = '{fine}'")
        )
        .await,
        1
    );

    let dead = read_topic_async(&brokers, &dead_topic, cases.len()).await;
    assert_eq!(
        dead.len(),
        cases.len(),
        "one dead letter per malformed message"
    );
    for (i, ((what, reason), m)) in cases.iter().zip(&dead).enumerate() {
        assert_eq!(m.header(dlt::REASON), *reason, "{what}");
        assert_eq!(m.header(dlt::ORIGINAL_TOPIC), topic, "{what}");
        assert_eq!(m.header(dlt::ORIGINAL_PARTITION), "0", "{what}");
        assert_eq!(m.header(dlt::ORIGINAL_OFFSET), i.to_string(), "{what}");
        assert_eq!(m.header(dlt::GROUP), "e2e-malformed", "{what}");
        assert!(!m.header(dlt::ERROR).is_empty(), "{what}");
        assert_eq!(m.key.as_deref(), Some("b-1"), "{what}: the key is kept");
    }
    assert_eq!(dead[0].payload, b"\x00\xff garbage", "the payload is kept");
    assert!(dead[2].header(dlt::ERROR).contains("event_name"));
    assert!(dead[3].header(dlt::ERROR).contains("E2eSomethingElse"));
    assert_eq!(dead[4].header("event_id"), undecodable);
    assert_eq!(
        dead[4].header(dlt::HANDLER),
        concat!(module_path!(), "::malformed_item")
    );
}
