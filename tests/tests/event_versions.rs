//! Event versions: old payloads reach a handler written for the newest version, upcast one
//! version at a time, in their partition's order; a version no upcast reaches is dead-lettered
//! with the reason. The messages are produced raw (the headers of `outbox_core::wire`), as an
//! older producer, a replay or a dead-letter re-drive would have written them.

use std::collections::HashMap;
use std::time::Duration;

use outbox_core::{DomainEvent, Envelope, EventContext, HandlerError, HandlerRegistry, wire};
use outbox_core::{event_handler, handler};
use outbox_kafka::{KafkaConfig, KafkaConsumer, dlt, provision_topics};
use outbox_seaorm::TransactionExt;
use outbox_tests::{Backend, fresh, kafka_brokers};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use serde::{Deserialize, Serialize};

/// Version 1: the whole name in one field, the amount in whole euros.
#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
#[event(name = "VersionedOrderPlaced", version = 1, topic = "versioned.orders")]
struct OrderPlacedV1 {
    customer: String,
    euros: i64,
}

/// Version 2: the amount in cents.
#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
#[event(
    name = "VersionedOrderPlaced",
    version = 2,
    topic = "versioned.orders",
    upcast_from = OrderPlacedV1
)]
struct OrderPlacedV2 {
    customer: String,
    cents: i64,
}

impl From<OrderPlacedV1> for OrderPlacedV2 {
    fn from(v1: OrderPlacedV1) -> Self {
        OrderPlacedV2 {
            customer: v1.customer,
            cents: v1.euros * 100,
        }
    }
}

/// Version 3, what this binary's handler knows: a currency added (versions before it were euros).
#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
#[event(
    name = "VersionedOrderPlaced",
    version = 3,
    topic = "versioned.orders",
    upcast_from = OrderPlacedV2
)]
struct OrderPlaced {
    customer: String,
    cents: i64,
    currency: String,
}

impl From<OrderPlacedV2> for OrderPlaced {
    fn from(v2: OrderPlacedV2) -> Self {
        OrderPlaced {
            customer: v2.customer,
            cents: v2.cents,
            currency: "EUR".to_owned(),
        }
    }
}

/// Version 2 of another event, with no upcast: its version-1 payloads cannot be read here.
#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
#[event(name = "VersionedOrderNoted", version = 2, topic = "versioned.orders")]
struct OrderNoted {
    note: String,
}

/// Records what it received, in the inbox transaction, in the order it ran.
#[event_handler(group = "versions", id = "versions.record")]
async fn record(event: &OrderPlaced, ctx: &EventContext<'_>) -> Result<(), HandlerError> {
    let txn = ctx.transaction()?;
    txn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Sqlite,
        "INSERT INTO applied (aggregate_id, sequence, version, customer, cents, currency) \
         VALUES (?, ?, ?, ?, ?, ?)",
        [
            ctx.aggregate_id().into(),
            ctx.sequence().into(),
            i64::from(ctx.envelope().event_version()).into(),
            event.customer.clone().into(),
            event.cents.into(),
            event.currency.clone().into(),
        ],
    ))
    .await?;
    Ok(())
}

#[event_handler(group = "versions", id = "versions.noted")]
async fn noted(_event: &OrderNoted, _ctx: &EventContext<'_>) -> Result<(), HandlerError> {
    Ok(())
}

/// An envelope of `name` at `version`, aggregate `key`, position `sequence`.
fn envelope(name: &str, version: u32, key: &str, sequence: i64, payload: &str) -> Envelope {
    Envelope::builder(name, "Order", key)
        .version(version)
        .sequence(sequence)
        .payload(payload)
        .build()
}

/// Produces `envelope` to `topic` as a raw Kafka record with the wire headers, keyed by its
/// aggregate id.
async fn produce(producer: &FutureProducer, topic: &str, envelope: &Envelope) {
    let mut headers = OwnedHeaders::new();
    for (key, value) in wire::encode(envelope, "/old-producer", wire::KAFKA_CLOUDEVENTS_PREFIX) {
        headers = headers.insert(Header {
            key: key.as_ref(),
            value: Some(value.as_ref()),
        });
    }
    let record: FutureRecord<'_, str, str> = FutureRecord::to(topic)
        .key(envelope.aggregate_id())
        .payload(envelope.payload())
        .headers(headers);
    producer
        .send(record, Duration::from_secs(5))
        .await
        .expect("produce");
}

struct Dead {
    headers: HashMap<String, String>,
}

/// Reads `n` dead letters from the beginning of `topic`'s dead-letter topic (bounded wait).
fn read_dead(brokers: &str, topic: &str, n: usize) -> Vec<Dead> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "dead-reader")
        .create()
        .expect("reader");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&format!("{topic}.dlt"), 0, Offset::Beginning)
        .expect("offset");
    consumer.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while out.len() < n && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            (
                                h.key.to_owned(),
                                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push(Dead { headers });
        }
    }
    assert_eq!(out.len(), n, "dead letters read");
    out
}

async fn applied(db: &DatabaseConnection) -> Vec<(String, i64, i64, String, i64, String)> {
    db.query_all_raw(Statement::from_string(
        DbBackend::Sqlite,
        "SELECT aggregate_id, sequence, version, customer, cents, currency FROM applied ORDER BY run",
    ))
    .await
    .expect("applied")
    .into_iter()
    .map(|row| {
        (
            row.try_get_by_index(0).expect("aggregate_id"),
            row.try_get_by_index(1).expect("sequence"),
            row.try_get_by_index(2).expect("version"),
            row.try_get_by_index(3).expect("customer"),
            row.try_get_by_index(4).expect("cents"),
            row.try_get_by_index(5).expect("currency"),
        )
    })
    .collect()
}

/// What the in-process handler below received.
static SEEN: std::sync::Mutex<Vec<(u32, i64, String)>> = std::sync::Mutex::new(Vec::new());

/// An in-process (after-commit) handler of the newest version.
#[event_handler(id = "versions.local")]
async fn local(event: &OrderPlaced, ctx: &EventContext<'_>) -> Result<(), HandlerError> {
    SEEN.lock().unwrap_or_else(|p| p.into_inner()).push((
        ctx.envelope().event_version(),
        event.cents,
        event.currency.clone(),
    ));
    Ok(())
}

#[tokio::test]
async fn in_process_handlers_and_the_testing_helpers_read_old_versions_too() {
    const NAME: &str = "VersionedOrderPlaced";
    let envelopes = vec![
        envelope(NAME, 1, "o-1", 1, r#"{"customer":"ada","euros":2}"#),
        envelope(NAME, 2, "o-1", 2, r#"{"customer":"ada","cents":250}"#),
        envelope(
            NAME,
            3,
            "o-1",
            3,
            r#"{"customer":"ada","cents":3,"currency":"CHF"}"#,
        ),
        envelope(
            NAME,
            4,
            "o-1",
            4,
            r#"{"customer":"ada","cents":4,"currency":"CHF"}"#,
        ),
    ];
    // The entry point the delivery worker and the consumers call.
    let handler = handler!(local);
    for e in &envelopes[..3] {
        let ctx = EventContext::new(e, handler.id(), 1);
        handler
            .call(e, &ctx)
            .await
            .expect("an older version is upcast");
    }
    let ctx = EventContext::new(&envelopes[3], handler.id(), 1);
    let err = handler
        .call(&envelopes[3], &ctx)
        .await
        .expect_err("a newer version");
    assert!(!err.is_retryable(), "{err}");
    assert!(err.to_string().contains("version 4 is newer"), "{err}");
    let seen = SEEN.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert_eq!(
        seen,
        [
            (1, 200, "EUR".to_owned()),
            (2, 250, "EUR".to_owned()),
            (3, 3, "CHF".to_owned())
        ]
    );

    // The testing helper: every readable version, as the newest type, in order.
    let published = outbox_core::testing::PublishedEvents::from_envelopes(envelopes);
    let cents: Vec<i64> = published
        .of_type::<OrderPlaced>()
        .iter()
        .map(|e| e.cents)
        .collect();
    assert_eq!(cents, [200, 250, 3]);
}

#[test]
fn the_chain_is_declared() {
    assert_eq!(OrderPlaced::VERSION, 3);
    assert_eq!(OrderPlaced::OLDEST_VERSION, 1);
    assert_eq!(OrderNoted::OLDEST_VERSION, 2);
    let h = handler!(record);
    assert_eq!((h.event(), h.event_version()), ("VersionedOrderPlaced", 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_versions_reach_a_newer_handler_in_order_and_unreachable_ones_are_dead_lettered() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let topic = "versioned.orders";
    // One partition: every message of the test is in one log, in the order produced.
    cluster.create_topic(topic, 1, 1).expect("topic");
    cluster
        .create_topic(&format!("{topic}.dlt"), 1, 1)
        .expect("dlt topic");
    versions_in_one_partition(&cluster.bootstrap_servers(), topic, "mock").await;
}

/// The same on a real Kafka-protocol broker (tansu at `OUTBOX_TEST_KAFKA_BROKERS`), on a topic
/// of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_versions_reach_a_newer_handler_on_a_real_broker() {
    let Some(brokers) = kafka_brokers() else {
        return;
    };
    let run = uuid::Uuid::now_v7().simple().to_string();
    let topic = format!("versions-{run}.orders");
    provision_topics(
        &KafkaConfig::new(&brokers),
        &[topic.as_str(), format!("{topic}.dlt").as_str()],
        1,
        1,
    )
    .await
    .expect("provision");
    // The group of the handlers; its offsets are per topic, and the topic is new.
    versions_in_one_partition(&brokers, &topic, "broker").await;
}

/// v1, v2 and v3 of `VersionedOrderPlaced` in one partition of `topic`, and three unreadable
/// messages, consumed by group `versions` whose handler knows v3.
async fn versions_in_one_partition(brokers: &str, topic: &str, db: &str) {
    let Some(t) = fresh(Backend::Sqlite, &format!("event_versions::{db}")).await else {
        return;
    };
    t.db.execute_raw(Statement::from_string(
        DbBackend::Sqlite,
        "CREATE TABLE applied (run INTEGER PRIMARY KEY AUTOINCREMENT, aggregate_id TEXT NOT NULL, \
         sequence INTEGER NOT NULL, version INTEGER NOT NULL, customer TEXT NOT NULL, \
         cents INTEGER NOT NULL, currency TEXT NOT NULL)",
    ))
    .await
    .expect("table");
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("producer");

    const NAME: &str = "VersionedOrderPlaced";
    // Order o-1 in three versions, mixed; o-2 only in version 1 (written before any upgrade).
    let placed = [
        envelope(NAME, 1, "o-1", 1, r#"{"customer":"ada","euros":12}"#),
        envelope(NAME, 1, "o-2", 1, r#"{"customer":"bob","euros":3}"#),
        envelope(
            NAME,
            3,
            "o-1",
            2,
            r#"{"customer":"ada","cents":99,"currency":"CHF"}"#,
        ),
        envelope(NAME, 2, "o-1", 3, r#"{"customer":"ada","cents":1250}"#),
        envelope(NAME, 1, "o-1", 4, r#"{"customer":"ada","euros":7}"#),
        envelope(NAME, 1, "o-2", 2, r#"{"customer":"bob","euros":4}"#),
    ];
    for e in &placed {
        produce(&producer, topic, e).await;
    }
    // Three that cannot be read here: a version newer than the handler's, a version no upcast
    // reaches, and a version-1 payload that is not the version-1 shape.
    let too_new = envelope(
        NAME,
        4,
        "o-3",
        1,
        r#"{"customer":"cyd","cents":1,"currency":"EUR","vat":1}"#,
    );
    let unreachable = envelope(
        "VersionedOrderNoted",
        1,
        "o-4",
        1,
        r#"{"text":"old shape"}"#,
    );
    let broken = envelope(NAME, 1, "o-5", 1, r#"{"customer":"dee","cents":5}"#);
    for e in [&too_new, &unreachable, &broken] {
        produce(&producer, topic, e).await;
    }

    let registry = HandlerRegistry::new()
        .with(handler!(record))
        .with(handler!(noted));
    let consumer = KafkaConsumer::builder(brokers, "versions", t.db.clone(), registry)
        .topics([topic.to_owned()])
        .build()
        .await
        .expect("consumer");
    let (dlt_brokers, dlt_topic) = (brokers.to_owned(), topic.to_owned());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let watcher = tokio::task::spawn_blocking(move || {
        let dead = read_dead(&dlt_brokers, &dlt_topic, 3);
        // Let the consumer finish the messages before the dead letters' (it runs keys
        // concurrently), then stop it.
        std::thread::sleep(Duration::from_millis(500));
        let _ = stop_tx.send(());
        dead
    });
    let stats = tokio::time::timeout(
        Duration::from_secs(60),
        consumer.run_until(async {
            let _ = stop_rx.await;
        }),
    )
    .await
    .expect("consumer finished in time")
    .expect("consumer ran");
    let dead = watcher.await.expect("watcher");

    assert_eq!(stats.messages, 9, "{stats:?}");
    assert_eq!(stats.applied, 6, "{stats:?}");
    assert_eq!(stats.dead_lettered, 3, "{stats:?}");

    // Each order's events were applied in their partition's order, each upcast to version 3.
    let rows = applied(&t.db).await;
    let of = |key: &str| -> Vec<(i64, i64, String, i64, String)> {
        rows.iter()
            .filter(|r| r.0 == key)
            .map(|r| (r.1, r.2, r.3.clone(), r.4, r.5.clone()))
            .collect()
    };
    let eur = || "EUR".to_owned();
    assert_eq!(
        of("o-1"),
        [
            (1, 1, "ada".to_owned(), 1200, eur()),
            (2, 3, "ada".to_owned(), 99, "CHF".to_owned()),
            (3, 2, "ada".to_owned(), 1250, eur()),
            (4, 1, "ada".to_owned(), 700, eur()),
        ]
    );
    assert_eq!(
        of("o-2"),
        [
            (1, 1, "bob".to_owned(), 300, eur()),
            (2, 1, "bob".to_owned(), 400, eur()),
        ]
    );

    // The dead letters: permanent at once (one attempt), each with its reason.
    let by_id: HashMap<&str, &Dead> = dead
        .iter()
        .map(|d| (d.headers[wire::EVENT_ID].as_str(), d))
        .collect();
    let reason = |e: &Envelope| -> &Dead { by_id[e.id().to_string().as_str()] };
    for e in [&too_new, &unreachable, &broken] {
        let d = reason(e);
        assert_eq!(
            d.headers[dlt::REASON],
            "handler-permanent",
            "{:?}",
            d.headers
        );
        assert_eq!(d.headers[dlt::ATTEMPTS], "1", "{:?}", d.headers);
    }
    let error = |e: &Envelope| reason(e).headers[dlt::ERROR].clone();
    let too_new_error = error(&too_new);
    assert!(
        too_new_error.contains("version 4 is newer than version 3"),
        "{too_new_error}"
    );
    let unreachable_error = error(&unreachable);
    assert!(
        unreachable_error.contains("version 1 cannot be read: no upcast reaches it")
            && unreachable_error.contains("reads versions 2 to 2"),
        "{unreachable_error}"
    );
    let broken_error = error(&broken);
    assert!(
        broken_error.contains("does not deserialize") && broken_error.contains("euros"),
        "{broken_error}"
    );
}
