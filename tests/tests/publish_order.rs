//! Order per aggregate under a partial publish failure, against a real, independent
//! Kafka-protocol broker (tansu), read back with a plain rdkafka consumer.
//!
//! An event above the producer's `message.max.bytes` (2 MB against the default 1 MB) sits
//! between events of its aggregate. Under `DeadLetterPolicy::Block` nothing after it reaches the
//! topic and its row is dead with the reason; under `Skip` its later events arrive only after
//! it was recorded dead. Other aggregates flow on in both cases.
//!
//! The broker comes from `OUTBOX_TEST_KAFKA_BROKERS` (default `127.0.0.1:9092`, started by
//! `scripts/tansu.sh start`); each test uses a topic of its own. Unreachable broker: failure
//! under `CI=true`, skip elsewhere.

use std::time::Duration;

use outbox_core::HandlerRegistry;
use outbox_kafka::KafkaPublisher;
use outbox_seaorm::Outbox;
use outbox_seaorm::relay::{DeadLetterPolicy, Relay, dead_count};
use outbox_tests::documents::{create_table, new_document, revise};
use outbox_tests::reader::{Read, read_topic_async};
use outbox_tests::{Backend, TestDb, fresh, kafka_brokers};
use sea_orm::{ConnectionTrait, Statement};

/// Above librdkafka's default `message.max.bytes` (1,000,000).
const TWO_MB: usize = 2 * 1024 * 1024;

/// What reached the topic, as `aggregate/sequence` labels in partition order.
async fn on_topic(brokers: &str, topic: &str) -> Vec<String> {
    let read: Vec<Read> = read_topic_async(brokers, topic, &[], 0, Duration::from_secs(3)).await;
    read.iter().map(Read::label).collect()
}

fn of(labels: &[String], aggregate: &str) -> Vec<String> {
    labels
        .iter()
        .filter(|l| l.split('/').next() == Some(aggregate))
        .cloned()
        .collect()
}

/// Saves a/1, b/1, a/2 (2 MB), b/2, a/3, a/4 and c/1, one save each, and returns the relay's
/// topic (created with one partition).
async fn setup(t: &TestDb, brokers: &str, prefix: &str) -> String {
    create_table(&t.db).await;
    let outbox = Outbox::builder(t.db.clone())
        .handlers(HandlerRegistry::new())
        .build();
    let (mut a, mut b, mut c) = (new_document("a"), new_document("b"), new_document("c"));
    revise(&outbox, &mut a, 10).await;
    revise(&outbox, &mut b, 10).await;
    revise(&outbox, &mut a, TWO_MB).await;
    revise(&outbox, &mut b, 10).await;
    revise(&outbox, &mut a, 10).await;
    revise(&outbox, &mut a, 10).await;
    revise(&outbox, &mut c, 10).await;
    let topic = format!("{prefix}document");
    outbox_kafka::provision_topics(
        &outbox_kafka::KafkaConfig::new(brokers),
        &[topic.as_str()],
        1,
        1,
    )
    .await
    .expect("topic");
    topic
}

fn relay(t: &TestDb, brokers: &str, prefix: &str, policy: DeadLetterPolicy) -> Relay {
    let publisher = KafkaPublisher::builder(brokers)
        .topic_prefix(prefix)
        .build()
        .expect("publisher");
    Relay::builder(t.db.clone(), publisher)
        .shards_per_claim(64)
        .dead_letter_policy(policy)
        .build()
}

async fn dead_reason(t: &TestDb) -> String {
    let backend = t.db.get_database_backend();
    t.db.query_one_raw(Statement::from_string(
        backend,
        "SELECT last_error FROM outbox WHERE status = 2 AND aggregateid = 'a' AND sequence = 2",
    ))
    .await
    .expect("query")
    .expect("a/2 is dead")
    .try_get_by_index::<Option<String>>(0)
    .expect("last_error")
    .expect("a reason")
}

async fn status_of(t: &TestDb, aggregate: &str, sequence: i64) -> i16 {
    let backend = t.db.get_database_backend();
    t.db.query_one_raw(Statement::from_string(
        backend,
        format!(
            "SELECT status FROM outbox WHERE aggregateid = '{aggregate}' AND sequence = {sequence}"
        ),
    ))
    .await
    .expect("query")
    .expect("row")
    .try_get_by_index::<i16>(0)
    .expect("status")
}

async fn attempts_of(t: &TestDb, aggregate: &str, sequence: i64) -> i32 {
    let backend = t.db.get_database_backend();
    t.db.query_one_raw(Statement::from_string(
        backend,
        format!(
            "SELECT attempts FROM outbox WHERE aggregateid = '{aggregate}' AND sequence = {sequence}"
        ),
    ))
    .await
    .expect("query")
    .expect("row")
    .try_get_by_index::<i32>(0)
    .expect("attempts")
}

/// The first cycle, the same under both policies: a/1, b/*, c/1 go out; a/2 is dead with its
/// reason; a/3 and a/4 were not handed to the broker and are still pending, uncharged.
async fn first_cycle(t: &TestDb, relay: &Relay, brokers: &str, topic: &str) {
    let report = relay.run_once().await.expect("cycle");
    assert_eq!(report.published(), 4, "{report:?}");
    assert_eq!(report.dead(), 1, "{report:?}");
    assert_eq!(report.held(), 2, "{report:?}");
    assert_eq!(dead_count(&t.db).await.expect("dead"), 1);
    let reason = dead_reason(t).await;
    assert!(
        reason.to_lowercase().contains("too large"),
        "the dead event's reason says why: {reason}"
    );
    for sequence in [3, 4] {
        assert_eq!(status_of(t, "a", sequence).await, 0, "a/{sequence} pending");
        assert_eq!(
            attempts_of(t, "a", sequence).await,
            0,
            "a/{sequence} uncharged"
        );
    }

    let labels = on_topic(brokers, topic).await;
    assert_eq!(
        of(&labels, "a"),
        ["a/1"],
        "nothing after the failed a/2 reached the topic: {labels:?}"
    );
    assert_eq!(of(&labels, "b"), ["b/1", "b/2"], "{labels:?}");
    assert_eq!(of(&labels, "c"), ["c/1"], "{labels:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_event_blocks_its_aggregate_and_others_flow() {
    let Some(brokers) = kafka_brokers() else {
        return;
    };
    let test = concat!(module_path!(), "::oversize_event_blocks_its_aggregate");
    let Some(t) = fresh(Backend::Postgres, test).await else {
        return;
    };
    let prefix = format!("order-block-{}.", uuid::Uuid::now_v7().simple());
    let topic = setup(&t, &brokers, &prefix).await;
    let relay = relay(&t, &brokers, &prefix, DeadLetterPolicy::Block);
    first_cycle(&t, &relay, &brokers, &topic).await;

    // Later cycles send nothing of `a` while a/2 is dead.
    for _ in 0..3 {
        let report = relay.run_once().await.expect("cycle");
        assert_eq!(report.published(), 0, "{report:?}");
    }
    let labels = on_topic(&brokers, &topic).await;
    assert_eq!(of(&labels, "a"), ["a/1"], "{labels:?}");
    assert_eq!(labels.len(), 4, "{labels:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_event_under_skip_lets_later_events_follow_once_dead() {
    let Some(brokers) = kafka_brokers() else {
        return;
    };
    let test = concat!(module_path!(), "::oversize_event_under_skip");
    let Some(t) = fresh(Backend::Postgres, test).await else {
        return;
    };
    let prefix = format!("order-skip-{}.", uuid::Uuid::now_v7().simple());
    let topic = setup(&t, &brokers, &prefix).await;
    let relay = relay(&t, &brokers, &prefix, DeadLetterPolicy::Skip);
    // a/3 and a/4 did not go out in the cycle that recorded a/2 dead ...
    first_cycle(&t, &relay, &brokers, &topic).await;

    // ... and go out, in order, in the next one.
    let report = relay.run_once().await.expect("cycle");
    assert_eq!(report.published(), 2, "{report:?}");
    assert_eq!(report.dead(), 0, "{report:?}");
    let labels = on_topic(&brokers, &topic).await;
    assert_eq!(of(&labels, "a"), ["a/1", "a/3", "a/4"], "{labels:?}");
    assert_eq!(labels.len(), 6, "{labels:?}");
    assert_eq!(dead_count(&t.db).await.expect("dead"), 1);
}

/// The publisher's side of the contract, on librdkafka's mock cluster: after an event of an
/// aggregate fails at enqueue, its later events of the batch are not produced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_publisher_produces_nothing_of_an_aggregate_after_its_failed_event() {
    use outbox_core::{Envelope, PublishError, Publisher};
    use rdkafka::mocking::MockCluster;

    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic("document", 1, 1).expect("topic");
    let brokers = cluster.bootstrap_servers();
    let publisher = KafkaPublisher::builder(&brokers)
        .set("message.max.bytes", "100000")
        .build()
        .expect("publisher");
    let event = |aggregate: &str, sequence: i64, bytes: usize| {
        Envelope::builder("DocumentRevised", "Document", aggregate)
            .sequence(sequence)
            .payload(format!(r#"{{"body":"{}"}}"#, "x".repeat(bytes)))
            .build()
    };
    let batch = [
        event("a", 1, 10),
        event("b", 1, 10),
        event("a", 2, 200_000),
        event("a", 3, 10),
        event("b", 2, 10),
        event("a", 4, 10),
    ];
    let results = publisher.publish(&batch).await;
    assert!(results[0].is_ok(), "{:?}", results[0]);
    assert!(results[1].is_ok(), "{:?}", results[1]);
    assert!(
        matches!(results[2], Err(PublishError::Rejected { .. })),
        "{:?}",
        results[2]
    );
    for i in [3, 5] {
        assert!(
            matches!(results[i], Err(PublishError::NotAttempted)),
            "{:?}",
            results[i]
        );
    }
    assert!(results[4].is_ok(), "{:?}", results[4]);
    let labels = on_topic(&brokers, "document").await;
    assert_eq!(labels, ["a/1", "b/1", "b/2"]);
}

/// A permanent error in the broker's answer to a produce request, while the later events of
/// the aggregate are already queued: none of them is charged as a failure of its own; the ones
/// reported not attempted never reach the topic, the ones reported published did (librdkafka
/// fails what is queued behind the error, `enable.gapless.guarantee`; what was already in flight
/// may be written, see `KafkaPublisher`'s docs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_publisher_reports_the_truth_after_a_failed_delivery() {
    use outbox_core::{Envelope, PublishError, Publisher};
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic("document", 1, 1).expect("topic");
    let brokers = cluster.bootstrap_servers();
    // One message per request, so that the failing request is the first of several.
    let publisher = KafkaPublisher::builder(&brokers)
        .set("batch.num.messages", "1")
        .build()
        .expect("publisher");
    let event = |aggregate: &str, sequence: i64| {
        Envelope::builder("DocumentRevised", "Document", aggregate)
            .sequence(sequence)
            .payload(r#"{"body":""}"#)
            .build()
    };
    // Warm up (metadata, producer id), so the next batch's first request is the one that fails.
    assert!(publisher.publish(&[event("w", 1)]).await[0].is_ok());
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE],
    );
    cluster
        .broker_round_trip_time(1, std::time::Duration::from_millis(50))
        .expect("round trip time");
    let batch: Vec<Envelope> = (1..=20).map(|s| event("a", s)).collect();
    let results = publisher.publish(&batch).await;
    assert!(
        matches!(results[0], Err(PublishError::Rejected { .. })),
        "{:?}",
        results[0]
    );
    let labels = on_topic(&brokers, "document").await;
    for (envelope, result) in batch.iter().zip(&results).skip(1) {
        let label = format!("a/{}", envelope.sequence());
        match result {
            Ok(()) => assert!(labels.contains(&label), "{label} reported published"),
            Err(PublishError::NotAttempted) => {
                assert!(!labels.contains(&label), "{label} reported not attempted");
            }
            Err(other) => panic!("{label} charged with a failure of its own: {other:?}"),
        }
    }
    assert!(!labels.contains(&"a/1".to_owned()));
    assert!(
        results
            .iter()
            .any(|r| matches!(r, Err(PublishError::NotAttempted))),
        "the producer stopped behind the failed event: {labels:?}"
    );
}
