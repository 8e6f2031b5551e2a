//! Publisher and consumer runtime against librdkafka's in-process mock cluster.

use std::collections::HashMap;
use std::time::Duration;

use outbox_core::{
    BoxFuture, Envelope, EventContext, EventMetadata, Handler, HandlerError, HandlerRegistry,
    Publisher, RetryPolicy,
};
use outbox_kafka::{KafkaConsumer, KafkaPublisher, dlt};
use outbox_seaorm::TransactionExt;
use outbox_tests::{Backend, fresh};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};

/// An event type this binary declares and no handler of the test's group handles.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, outbox_core::DomainEvent)]
struct ThingArchived {
    n: u32,
}

struct Received {
    key: Option<String>,
    partition: i32,
    headers: HashMap<String, String>,
    payload: String,
}

/// Reads `n` messages of `topic` from the beginning (no consumer group).
fn read(brokers: &str, topic: &str, partitions: i32, n: usize) -> Vec<Received> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "reader")
        .create()
        .expect("reader");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("offset");
    }
    consumer.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
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
            out.push(Received {
                key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                partition: m.partition(),
                headers,
                payload: String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
            });
        }
    }
    assert_eq!(out.len(), n, "messages read from {topic}");
    out
}

fn envelope(name: &str, aggregate: &str, seq: i64, payload: &str) -> Envelope {
    Envelope::builder(name, "Thing", aggregate)
        .sequence(seq)
        .payload(payload)
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_sets_key_headers_topic_and_partition() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic("thing", 3, 1).expect("topic");
    cluster.create_topic("custom", 1, 1).expect("topic");
    let brokers = cluster.bootstrap_servers();
    let publisher = KafkaPublisher::builder(&brokers)
        .set("sasl.password", "s3cret")
        .build()
        .expect("publisher");
    assert!(!format!("{publisher:?}").contains("s3cret"));
    let meta = EventMetadata::new()
        .with_correlation_id("corr-1")
        .with_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        .with_extra("tenant", "acme");
    let batch = vec![
        Envelope::builder("ThingMade", "Thing", "a-1")
            .sequence(1)
            .payload(r#"{"n":1}"#)
            .metadata(meta)
            .build(),
        envelope("ThingMade", "a-2", 1, r#"{"n":2}"#),
        envelope("ThingMade", "a-1", 2, r#"{"n":3}"#),
        envelope("ThingMade", "a-3", 1, r#"{"n":4}"#),
        Envelope::builder("ThingMade", "Thing", "a-1")
            .sequence(3)
            .payload(r#"{"n":5}"#)
            .topic(Some("custom".to_owned()))
            .build(),
    ];
    let results = publisher.publish(&batch).await;
    assert_eq!(results.len(), 5);
    for r in &results {
        assert!(r.is_ok(), "{r:?}");
    }
    let got = read(&brokers, "thing", 3, 4);
    let by_id: HashMap<&str, &Received> = got
        .iter()
        .map(|m| (m.headers["event_id"].as_str(), m))
        .collect();
    for env in &batch[..4] {
        let m = by_id[env.id().to_string().as_str()];
        assert_eq!(m.key.as_deref(), Some(env.aggregate_id()));
        assert_eq!(m.payload, env.payload());
        assert_eq!(m.headers["event_name"], "ThingMade");
        assert_eq!(m.headers["aggregate_type"], "Thing");
        assert_eq!(m.headers["aggregate_id"], env.aggregate_id());
        assert_eq!(m.headers["sequence"], env.sequence().to_string());
        assert_eq!(m.headers["content-type"], "application/json");
        assert_eq!(m.headers["ce_specversion"], "1.0");
        assert_eq!(m.headers["ce_id"], env.id().to_string());
        assert_eq!(m.headers["ce_type"], "ThingMade");
        assert_eq!(m.headers["ce_source"], "/outbox/Thing");
        assert_eq!(m.headers["ce_subject"], env.aggregate_id());
        assert_eq!(m.headers["ce_time"], m.headers["occurred_at"]);
    }
    let first = by_id[batch[0].id().to_string().as_str()];
    assert_eq!(first.headers["correlation_id"], "corr-1");
    assert_eq!(first.headers["meta_tenant"], "acme");
    assert!(first.headers["traceparent"].starts_with("00-0af7"));
    // Both events of aggregate a-1 went to one partition, in order.
    let a1: Vec<&Received> = got
        .iter()
        .filter(|m| m.key.as_deref() == Some("a-1"))
        .collect();
    assert_eq!(a1.len(), 2);
    assert_eq!(a1[0].partition, a1[1].partition);
    assert_eq!(a1[0].headers["sequence"], "1");
    assert_eq!(a1[1].headers["sequence"], "2");
    // The event type's topic overrides the default.
    let custom = read(&brokers, "custom", 1, 1);
    assert_eq!(custom[0].headers["event_id"], batch[4].id().to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_reports_broker_down_as_retryable_and_too_large_as_rejected() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic("thing", 1, 1).expect("topic");
    let publisher = KafkaPublisher::builder(cluster.bootstrap_servers())
        .set("message.timeout.ms", "1500")
        .set("message.max.bytes", "2000")
        .build()
        .expect("publisher");
    let big = format!(r#"{{"blob":"{}"}}"#, "x".repeat(5000));
    let results = publisher
        .publish(&[envelope("ThingMade", "a-1", 1, &big)])
        .await;
    let err = results[0].as_ref().expect_err("too large");
    assert!(!err.is_retryable(), "{err:?}");
    let source = std::error::Error::source(err).expect("source");
    let delivery = source
        .downcast_ref::<outbox_kafka::DeliveryError>()
        .expect("typed Kafka error");
    assert_eq!(delivery.topic(), "thing");

    cluster.broker_down(1).expect("down");
    let results = publisher
        .publish(&[
            envelope("ThingMade", "a-1", 1, "{}"),
            envelope("ThingMade", "a-2", 1, "{}"),
        ])
        .await;
    assert_eq!(results.len(), 2);
    for r in &results {
        let err = r.as_ref().expect_err("broker down");
        assert!(err.is_retryable(), "{err:?}");
    }
    cluster.broker_up(1).expect("up");
    // Back up: publishing succeeds again once librdkafka reconnected (its reconnect backoff
    // can outlast one 1.5 s message timeout on a loaded machine, as a relay's retry would).
    let start = std::time::Instant::now();
    loop {
        let results = publisher
            .publish(&[envelope("ThingMade", "a-1", 1, "{}")])
            .await;
        match &results[0] {
            Ok(()) => break,
            Err(e) if e.is_retryable() && start.elapsed() < Duration::from_secs(30) => {}
            Err(e) => panic!("not published after the broker came back: {e:?}"),
        }
    }
}

/// A batch far larger than the producer's local queue: the publisher waits for room (for its
/// own delivery reports) and every event arrives, in order per aggregate. Concurrent batches
/// share the queue; a publish call dropped half way (a relay's timeout) leaves the publisher
/// usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_waits_for_room_in_a_full_local_queue() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic("thing", 3, 1).expect("topic");
    cluster.create_topic("spill", 1, 1).expect("topic");
    let brokers = cluster.bootstrap_servers();
    let publisher = std::sync::Arc::new(
        KafkaPublisher::builder(&brokers)
            .set("queue.buffering.max.messages", "7")
            .build()
            .expect("publisher"),
    );
    let batch = |lane: usize| -> Vec<Envelope> {
        (0..300)
            .map(|i| {
                let aggregate = format!("l{lane}-a{}", i % 10);
                envelope("ThingMade", &aggregate, (i / 10) as i64 + 1, "{}")
            })
            .collect()
    };
    // Dropped after its first poll: some messages are in librdkafka's hands, nobody awaits
    // their reports (another topic, so that `thing` holds the three lanes only).
    let abandoned: Vec<Envelope> = (0..50)
        .map(|i| {
            Envelope::builder("ThingMade", "Thing", format!("s{i}"))
                .topic(Some("spill".to_owned()))
                .build()
        })
        .collect();
    let _ = tokio::time::timeout(Duration::ZERO, publisher.publish(&abandoned)).await;
    let runs: Vec<_> = (0..3)
        .map(|lane| {
            let publisher = std::sync::Arc::clone(&publisher);
            tokio::spawn(async move {
                let batch = batch(lane);
                let results = publisher.publish(&batch).await;
                (batch, results)
            })
        })
        .collect();
    let mut published = 0;
    for run in runs {
        let (batch, results) = tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .expect("published within 60 s")
            .expect("publish task");
        assert_eq!(results.len(), batch.len());
        for r in &results {
            assert!(r.is_ok(), "{r:?}");
        }
        published += batch.len();
    }
    let got = read(&brokers, "thing", 3, published);
    let mut last: HashMap<String, i64> = HashMap::new();
    for m in &got {
        let sequence: i64 = m.headers["sequence"].parse().expect("sequence");
        let previous = last.insert(m.key.clone().expect("key"), sequence);
        assert_eq!(previous.unwrap_or(0) + 1, sequence, "order of {:?}", m.key);
    }
    assert_eq!(last.len(), 30);
}

// ---- consumer ----

fn record_effect<'a>(
    envelope: &'a Envelope,
    ctx: &'a EventContext<'a>,
) -> BoxFuture<'a, Result<(), HandlerError>> {
    Box::pin(async move {
        #[derive(serde::Deserialize)]
        struct Made {
            n: i64,
        }
        let made: Made =
            serde_json::from_str(envelope.payload()).map_err(HandlerError::permanent)?;
        let txn = ctx.transaction()?;
        txn.execute_raw(Statement::from_sql_and_values(
            DbBackend::Sqlite,
            "INSERT INTO effects (event_id, n) VALUES (?, ?)",
            [envelope.id().to_string().into(), made.n.into()],
        ))
        .await?;
        Ok(())
    })
}

fn always_fails<'a>(
    _: &'a Envelope,
    _: &'a EventContext<'a>,
) -> BoxFuture<'a, Result<(), HandlerError>> {
    Box::pin(async {
        Err(HandlerError::retryable(std::io::Error::other(
            "service down",
        )))
    })
}

const TOPIC: &str = "things";

fn registry() -> HandlerRegistry {
    HandlerRegistry::new()
        .with(Handler::new(
            "tests::record_effect",
            "ThingMade",
            1,
            Some(TOPIC),
            Some("g"),
            record_effect,
        ))
        .with(Handler::new(
            "tests::always_fails",
            "ThingBroke",
            1,
            Some(TOPIC),
            Some("g"),
            always_fails,
        ))
}

async fn effects(db: &DatabaseConnection) -> i64 {
    db.query_one_raw(Statement::from_string(
        DbBackend::Sqlite,
        "SELECT COUNT(*) FROM effects",
    ))
    .await
    .expect("query")
    .expect("row")
    .try_get_by_index::<i64>(0)
    .expect("count")
}

async fn produce_raw(producer: &FutureProducer, headers: Option<OwnedHeaders>, payload: &[u8]) {
    let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(TOPIC).key("k").payload(payload);
    if let Some(h) = headers {
        record = record.headers(h);
    }
    producer
        .send(record, Duration::from_secs(5))
        .await
        .expect("produce");
}

fn committed(brokers: &str, group: &str) -> Offset {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(TOPIC, 0);
    let got = consumer
        .committed_offsets(tpl, Duration::from_secs(5))
        .expect("committed");
    got.find_partition(TOPIC, 0).expect("partition").offset()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_dedupes_retries_and_dead_letters() {
    let Some(t) = fresh(Backend::Sqlite, "kafka_mock::consumer_dedupes").await else {
        return;
    };
    t.db.execute_raw(Statement::from_string(
        DbBackend::Sqlite,
        "CREATE TABLE effects (event_id TEXT NOT NULL, n INTEGER NOT NULL)",
    ))
    .await
    .expect("table");
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic(TOPIC, 1, 1).expect("topic");
    cluster
        .create_topic(&format!("{TOPIC}.dlt"), 1, 1)
        .expect("dlt topic");
    let brokers = cluster.bootstrap_servers();

    // A good event, published twice (a duplicate delivery), then one malformed message of each
    // kind, then one whose handler keeps failing.
    let publisher = KafkaPublisher::builder(&brokers)
        .router(|_| TOPIC.to_owned())
        .build()
        .expect("publisher");
    let good = envelope("ThingMade", "a-1", 1, r#"{"n":7}"#);
    assert!(publisher.publish(std::slice::from_ref(&good)).await[0].is_ok());
    assert!(publisher.publish(std::slice::from_ref(&good)).await[0].is_ok());
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .expect("producer");
    let valid_headers = |name: &str| {
        OwnedHeaders::new()
            .insert(Header {
                key: "event_id",
                value: Some(uuid::Uuid::now_v7().to_string().as_str()),
            })
            .insert(Header {
                key: "event_name",
                value: Some(name),
            })
            .insert(Header {
                key: "aggregate_type",
                value: Some("Thing"),
            })
            .insert(Header {
                key: "aggregate_id",
                value: Some("a-9"),
            })
    };
    produce_raw(&producer, Some(valid_headers("ThingMade")), b"\x00garbage").await;
    produce_raw(&producer, None, br#"{"n":1}"#).await;
    produce_raw(&producer, Some(valid_headers("NobodyCares")), br#"{"n":1}"#).await;
    // Known here (declared below) but handled by no handler of group "g": skipped, not dead.
    produce_raw(
        &producer,
        Some(valid_headers("ThingArchived")),
        br#"{"n":1}"#,
    )
    .await;
    produce_raw(&producer, Some(valid_headers("ThingMade")), br#"{"m":"x"}"#).await;
    let flaky = envelope("ThingBroke", "a-2", 1, "{}");
    assert!(publisher.publish(std::slice::from_ref(&flaky)).await[0].is_ok());

    let consumer = KafkaConsumer::builder(&brokers, "g", t.db.clone(), registry())
        .retry(
            RetryPolicy::default()
                .with_max_attempts(3)
                .with_initial_delay(Duration::from_millis(20))
                .with_jitter(0.0),
        )
        .build()
        .await
        .expect("consumer");
    assert_eq!(consumer.topics(), [TOPIC.to_owned()]);
    let dlt_brokers = brokers.clone();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<Vec<Received>>();
    tokio::task::spawn_blocking(move || {
        let dead = read(&dlt_brokers, &format!("{TOPIC}.dlt"), 1, 5);
        let _ = done_tx.send(dead);
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let watcher = tokio::spawn(async move {
        let dead = done_rx.await.expect("dead letters");
        // Let the last offset commit go out.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = stop_tx.send(());
        dead
    });
    let stats = tokio::time::timeout(
        Duration::from_secs(40),
        consumer.run_until(async {
            let _ = stop_rx.await;
        }),
    )
    .await
    .expect("consumer finished in time")
    .expect("consumer ran");
    let mut dead = watcher.await.expect("watcher");
    // Keys are applied concurrently: dead letters of different keys may come in any order.
    dead.sort_by_key(|m| {
        m.headers[dlt::ORIGINAL_OFFSET]
            .parse::<i64>()
            .expect("offset")
    });

    assert_eq!(stats.messages, 8, "{stats:?}");
    assert_eq!(stats.ignored, 1, "{stats:?}");
    assert_eq!(stats.applied, 1, "{stats:?}");
    assert_eq!(stats.duplicates, 1, "{stats:?}");
    assert_eq!(stats.dead_lettered, 5, "{stats:?}");
    assert_eq!(stats.retries, 2, "{stats:?}");
    assert_eq!(effects(&t.db).await, 1);

    let reasons: Vec<&str> = dead
        .iter()
        .map(|m| m.headers[dlt::REASON].as_str())
        .collect();
    assert_eq!(
        reasons,
        [
            "malformed:not-json",
            "malformed:missing-header",
            "malformed:unknown-event",
            "handler-permanent",
            "handler-failed",
        ]
    );
    for m in &dead {
        assert_eq!(m.headers[dlt::ORIGINAL_TOPIC], TOPIC);
        assert_eq!(m.headers[dlt::ORIGINAL_PARTITION], "0");
        assert_eq!(m.headers[dlt::GROUP], "g");
    }
    assert_eq!(dead[0].headers[dlt::ORIGINAL_OFFSET], "2");
    assert!(dead[2].headers[dlt::ERROR].contains("NobodyCares"));
    assert_eq!(dead[3].headers[dlt::HANDLER], "tests::record_effect");
    assert!(dead[3].headers[dlt::ERROR].contains("missing field"));
    assert_eq!(dead[4].headers[dlt::ATTEMPTS], "3");
    assert!(dead[4].headers[dlt::ERROR].contains("service down"));
    assert!(
        dead.iter()
            .all(|m| m.headers.get("event_name").map(String::as_str) != Some("ThingArchived"))
    );
    assert_eq!(dead[4].headers["event_id"], flaky.id().to_string());
    assert_eq!(dead[4].payload, "{}");
    // Every message is done: the committed offset is past the last one.
    assert_eq!(committed(&brokers, "g"), Offset::Offset(8));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_commits_nothing_while_a_handler_is_still_failing() {
    let Some(t) = fresh(Backend::Sqlite, "kafka_mock::consumer_commits_nothing").await else {
        return;
    };
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic(TOPIC, 1, 1).expect("topic");
    let brokers = cluster.bootstrap_servers();
    let publisher = KafkaPublisher::builder(&brokers)
        .router(|_| TOPIC.to_owned())
        .build()
        .expect("publisher");
    assert!(
        publisher
            .publish(&[envelope("ThingBroke", "a-1", 1, "{}")])
            .await[0]
            .is_ok()
    );
    let consumer = KafkaConsumer::builder(&brokers, "g", t.db.clone(), registry())
        .retry(
            RetryPolicy::default()
                .with_max_attempts(1000)
                .with_initial_delay(Duration::from_millis(20))
                .with_max_delay(Duration::from_millis(20)),
        )
        .build()
        .await
        .expect("consumer");
    let stats = consumer
        .run_until(async {
            tokio::time::sleep(Duration::from_secs(4)).await;
        })
        .await
        .expect("ran");
    assert_eq!(stats.messages, 1, "{stats:?}");
    assert!(stats.retries > 5, "{stats:?}");
    assert_eq!(stats.dead_lettered, 0);
    assert_eq!(committed(&brokers, "g"), Offset::Invalid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_refuses_an_event_without_topic() {
    let Some(t) = fresh(Backend::Sqlite, "kafka_mock::consumer_refuses").await else {
        return;
    };
    let registry = HandlerRegistry::new().with(Handler::new(
        "tests::record_effect",
        "ThingMade",
        1,
        None,
        Some("g"),
        record_effect,
    ));
    let err = KafkaConsumer::builder("127.0.0.1:1", "g", t.db.clone(), registry.clone())
        .build()
        .await
        .expect_err("no topic");
    assert!(
        matches!(
            err,
            outbox_kafka::SetupError::NoTopic {
                event: "ThingMade",
                ..
            }
        ),
        "{err}"
    );
    let err = KafkaConsumer::builder("127.0.0.1:1", "other", t.db.clone(), registry)
        .build()
        .await
        .expect_err("no handlers");
    assert!(
        matches!(err, outbox_kafka::SetupError::NoHandlers { .. }),
        "{err}"
    );
}
