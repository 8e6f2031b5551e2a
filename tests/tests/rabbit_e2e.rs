//! End to end against the real RabbitMQ server: events saved with `Outbox::save` on PostgreSQL,
//! relayed by `Relay` + `RabbitPublisher`, and applied exactly once into a second PostgreSQL
//! database by a `RabbitConsumer` running `#[event_handler(group = ..)]` handlers; duplicates,
//! malformed messages, failing handlers and unroutable events. Connection cuts are in
//! `rabbit_cut` (a binary of its own: cutting every connection would disturb these tests).
//!
//! The server comes from `OUTBOX_TEST_AMQP_URL` (default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`). Every test uses an exchange and queues of its own
//! (UUID suffix) and deletes them at the end. Unreachable server: failure under `CI=true`, skip
//! elsewhere.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use outbox_core::{Envelope, HandlerRegistry, Publisher, RetryPolicy, handler};
use outbox_rabbitmq::{ExchangeType, RabbitConsumer, RabbitPublisher, dlt, properties};
use outbox_seaorm::relay::{Relay, pending_count};
use outbox_tests::rabbitmq_uri;

mod rabbit_common;
use rabbit_common::*;

// ---- 1. saved → relayed → consumed, exactly once, in order per aggregate ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saved_events_are_relayed_to_rabbitmq_and_applied_once_in_order() {
    let Some(uri) = rabbitmq_uri() else {
        return;
    };
    let Some(src) = source_db("rabbit_e2e::relayed_source").await else {
        return;
    };
    let Some(dst) = consumer_db("rabbit_e2e::relayed_consumer").await else {
        return;
    };
    let exchange = unique("relayed");
    let queue = format!("{exchange}.applied");
    let tap = format!("{exchange}.tap");

    // The consumer declares its queue and bindings, the publisher a tap queue for every key.
    let consumer = RabbitConsumer::builder(
        &uri,
        "rb-applied",
        dst.db.clone(),
        HandlerRegistry::new().with(handler!(applied_item)),
    )
    .exchange(&exchange)
    .queue(&queue)
    .build()
    .await
    .expect("consumer");
    assert_eq!(consumer.binding_keys(), ["#.RbItemAdded"]);
    let publisher = RabbitPublisher::builder(&uri)
        .exchange(&exchange)
        .declare_queue(&tap, ["#"])
        .build()
        .await
        .expect("publisher");

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

    // The tap queue holds every message once, with its properties and headers.
    let (connection, channel) = raw(&uri).await;
    let got = drain(&channel, &tap, total as usize + 1, Duration::from_secs(3)).await;
    assert_eq!(got.len(), total as usize, "exactly one message per event");
    let mut seen = HashSet::new();
    let mut tapped: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for m in &got {
        let p = &m.delivery.properties;
        let id = header(p, "event_id");
        assert!(seen.insert(id.to_owned()), "event {id} twice");
        assert_eq!(p.message_id().as_ref().map(|s| s.as_str()), Some(id));
        assert_eq!(p.delivery_mode(), &Some(2), "persistent");
        assert_eq!(
            p.content_type().as_ref().map(|s| s.as_str()),
            Some("application/json")
        );
        assert_eq!(p.kind().as_ref().map(|s| s.as_str()), Some("RbItemAdded"));
        assert!(p.timestamp().is_some_and(|t| t > 1_700_000_000));
        assert_eq!(m.delivery.routing_key.as_str(), "Basket.RbItemAdded");
        assert_eq!(header(p, "event_name"), "RbItemAdded");
        assert_eq!(header(p, "event_version"), "2");
        assert_eq!(header(p, "aggregate_type"), "Basket");
        assert_eq!(header(p, "cloudEvents:specversion"), "1.0");
        assert_eq!(header(p, "cloudEvents:id"), id);
        assert_eq!(header(p, "cloudEvents:type"), "RbItemAdded");
        assert_eq!(header(p, "cloudEvents:source"), "/outbox/Basket");
        assert_eq!(header(p, "cloudEvents:subject"), header(p, "aggregate_id"));
        assert_eq!(header(p, "cloudEvents:time"), header(p, "occurred_at"));
        assert_eq!(header(p, "cloudEvents:sequence"), header(p, "sequence"));
        let body: serde_json::Value = serde_json::from_slice(&m.delivery.data).expect("JSON");
        assert_eq!(body["basket"], header(p, "aggregate_id"));
        tapped
            .entry(header(p, "aggregate_id").to_owned())
            .or_default()
            .push(header(p, "sequence").parse().expect("sequence"));
    }
    assert_in_order(&tapped, &per_aggregate);
    let _ = connection.close(200, "done".into()).await;

    let stats = consume_until(
        &consumer,
        &dst.db,
        "SELECT COUNT(*) FROM effects",
        total,
        Duration::from_secs(30),
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
    let dlq = consumer.dead_letter_queue().to_owned();
    delete_all(
        &uri,
        &[&exchange, &format!("{exchange}.dlx")],
        &[&queue, &tap, &dlq],
    )
    .await;
}

// ---- 3. a duplicate is applied once ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_published_twice_is_applied_once() {
    let Some(uri) = rabbitmq_uri() else {
        return;
    };
    let Some(dst) = consumer_db("rabbit_e2e::duplicate_consumer").await else {
        return;
    };
    let exchange = unique("duplicate");
    let queue = format!("{exchange}.applied");
    let consumer = RabbitConsumer::builder(
        &uri,
        "rb-applied",
        dst.db.clone(),
        HandlerRegistry::new().with(handler!(applied_item)),
    )
    .exchange(&exchange)
    .queue(&queue)
    .build()
    .await
    .expect("consumer");
    let publisher = RabbitPublisher::builder(&uri)
        .exchange(&exchange)
        .build()
        .await
        .expect("publisher");
    let envelope = Envelope::builder("RbItemAdded", "Basket", "b-dup")
        .version(2)
        .sequence(1)
        .payload(r#"{"basket":"b-dup","n":1}"#)
        .build();
    for _ in 0..2 {
        let results = publisher.publish(std::slice::from_ref(&envelope)).await;
        assert!(results[0].is_ok(), "{results:?}");
    }
    let stats = consume_until(
        &consumer,
        &dst.db,
        "SELECT COUNT(*) FROM outbox_inbox",
        1,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(stats.messages, 2, "{stats:?}");
    assert_eq!(stats.applied, 1, "{stats:?}");
    assert_eq!(stats.duplicates, 1, "{stats:?}");
    assert_eq!(count(&dst.db, "SELECT COUNT(*) FROM effects").await, 1);
    publisher.close().await;
    let dlq = consumer.dead_letter_queue().to_owned();
    delete_all(
        &uri,
        &[&exchange, &format!("{exchange}.dlx")],
        &[&queue, &dlq],
    )
    .await;
}

// ---- 4. malformed messages are dead-lettered at once, with their reason ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_malformed_kind_is_dead_lettered_with_its_reason() {
    let Some(uri) = rabbitmq_uri() else {
        return;
    };
    let Some(dst) = consumer_db("rabbit_e2e::malformed_consumer").await else {
        return;
    };
    let exchange = unique("malformed");
    let queue = format!("{exchange}.applied");
    let consumer = RabbitConsumer::builder(
        &uri,
        "rb-applied",
        dst.db.clone(),
        HandlerRegistry::new().with(handler!(applied_item)),
    )
    .exchange(&exchange)
    .queue(&queue)
    .build()
    .await
    .expect("consumer");

    let good = Envelope::builder("RbItemAdded", "Basket", "b-1")
        .version(2)
        .sequence(1)
        .payload(r#"{"basket":"b-1","n":1}"#)
        .build();
    let valid = properties::encode(&good, "/test");
    let with_header = |key: &str, value: AMQPValue| {
        let mut headers = valid.headers().clone().expect("headers");
        headers.insert(key.into(), value);
        valid.clone().with_headers(headers)
    };
    let without_header = |key: &str| {
        let kept: BTreeMap<ShortString, AMQPValue> = valid
            .headers()
            .as_ref()
            .expect("headers")
            .inner()
            .iter()
            .filter(|(k, _)| k.as_str() != key)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        valid.clone().with_headers(FieldTable::from(kept))
    };
    let text = |v: &str| AMQPValue::LongString(LongString::from(v));
    let good_body = br#"{"basket":"b-1","n":1}"#.as_slice();
    let cases: Vec<(&str, BasicProperties, &[u8])> = vec![
        ("malformed:no-payload", valid.clone(), b"".as_slice()),
        (
            "malformed:not-json",
            valid.clone(),
            b"\x00garbage".as_slice(),
        ),
        (
            "malformed:missing-header",
            BasicProperties::default(),
            good_body,
        ),
        (
            "malformed:missing-header",
            without_header("aggregate_type"),
            good_body,
        ),
        (
            "malformed:invalid-header",
            with_header("event_id", text("not-a-uuid")),
            good_body,
        ),
        (
            "malformed:invalid-header",
            with_header("sequence", AMQPValue::LongLongInt(1)),
            good_body,
        ),
        (
            "malformed:invalid-header",
            valid.clone().with_content_type("text/plain".into()),
            good_body,
        ),
        (
            "malformed:invalid-header",
            valid
                .clone()
                .with_message_id(uuid::Uuid::now_v7().to_string().into()),
            good_body,
        ),
        (
            "malformed:unknown-event",
            with_header("event_name", text("NobodyKnowsThis")),
            good_body,
        ),
    ];
    let (connection, channel) = raw(&uri).await;
    for (_, props, body) in &cases {
        channel
            .basic_publish(
                exchange.as_str().into(),
                "Basket.RbItemAdded".into(),
                BasicPublishOptions::default(),
                body,
                props.clone(),
            )
            .await
            .expect("publish");
    }
    let stats = tokio::time::timeout(
        Duration::from_secs(30),
        consumer.run_until(async {
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                let dlq = channel
                    .queue_declare(
                        consumer.dead_letter_queue().into(),
                        QueueDeclareOptions {
                            passive: true,
                            ..Default::default()
                        },
                        FieldTable::default(),
                    )
                    .await
                    .expect("dlq");
                if dlq.message_count() as usize >= cases.len() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }),
    )
    .await
    .expect("in time")
    .expect("consumer ran");
    assert_eq!(stats.dead_lettered, cases.len() as u64, "{stats:?}");
    assert_eq!(stats.applied, 0, "{stats:?}");
    let letters = drain(
        &channel,
        consumer.dead_letter_queue(),
        cases.len(),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(letters.len(), cases.len());
    // Messages of different aggregates (and the undecodable ones) are applied concurrently, so
    // their letters may come in another order: each case has its own letter.
    let mut letters: Vec<_> = letters.iter().collect();
    for (reason, _, body) in &cases {
        let at = letters
            .iter()
            .position(|l| {
                header(&l.delivery.properties, dlt::REASON) == *reason
                    && l.delivery.data.as_slice() == *body
            })
            .unwrap_or_else(|| panic!("a letter `{reason}` with its body"));
        let letter = letters.swap_remove(at);
        let p = &letter.delivery.properties;
        assert_eq!(header(p, dlt::REASON), *reason);
        assert_eq!(header(p, dlt::ATTEMPTS), "0");
        assert_eq!(header(p, dlt::GROUP), "rb-applied");
        assert_eq!(header(p, dlt::ORIGINAL_TOPIC), exchange);
        assert_eq!(header(p, dlt::ORIGINAL_QUEUE), queue);
        assert_eq!(header(p, dlt::ORIGINAL_ROUTING_KEY), "Basket.RbItemAdded");
        assert!(!header(p, dlt::ERROR).is_empty());
        assert_eq!(letter.delivery.data.as_slice(), *body, "the body is kept");
    }
    assert_eq!(count(&dst.db, "SELECT COUNT(*) FROM effects").await, 0);
    let _ = connection.close(200, "done".into()).await;
    let dlq = consumer.dead_letter_queue().to_owned();
    delete_all(
        &uri,
        &[&exchange, &format!("{exchange}.dlx")],
        &[&queue, &dlq],
    )
    .await;
}

// ---- 5. a failing handler is retried, then dead-lettered ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_handler_is_retried_then_dead_lettered() {
    let Some(uri) = rabbitmq_uri() else {
        return;
    };
    let Some(dst) = consumer_db("rabbit_e2e::failing_consumer").await else {
        return;
    };
    let exchange = unique("failing");
    let queue = format!("{exchange}.failing");
    let consumer = RabbitConsumer::builder(
        &uri,
        "rb-failing",
        dst.db.clone(),
        HandlerRegistry::new().with(handler!(failing_item)),
    )
    .exchange(&exchange)
    .queue(&queue)
    .retry(
        RetryPolicy::default()
            .with_max_attempts(3)
            .with_initial_delay(Duration::from_millis(50))
            .with_max_delay(Duration::from_millis(100)),
    )
    .build()
    .await
    .expect("consumer");
    let publisher = RabbitPublisher::builder(&uri)
        .exchange(&exchange)
        .build()
        .await
        .expect("publisher");
    let envelope = Envelope::builder("RbItemAdded", "Basket", "b-fail")
        .version(2)
        .sequence(1)
        .payload(r#"{"basket":"b-fail","n":1}"#)
        .build();
    assert!(publisher.publish(std::slice::from_ref(&envelope)).await[0].is_ok());

    let (connection, channel) = raw(&uri).await;
    let dlq = consumer.dead_letter_queue().to_owned();
    let stats = tokio::time::timeout(
        Duration::from_secs(30),
        consumer.run_until(async {
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                let q = channel
                    .queue_declare(
                        dlq.as_str().into(),
                        QueueDeclareOptions {
                            passive: true,
                            ..Default::default()
                        },
                        FieldTable::default(),
                    )
                    .await
                    .expect("dlq");
                if q.message_count() >= 1 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }),
    )
    .await
    .expect("in time")
    .expect("consumer ran");
    assert_eq!(stats.retries, 2, "{stats:?}");
    assert_eq!(stats.dead_lettered, 1, "{stats:?}");
    assert_eq!(stats.applied, 0, "{stats:?}");
    let letters = drain(&channel, &dlq, 1, Duration::from_secs(5)).await;
    assert_eq!(letters.len(), 1);
    let p = &letters[0].delivery.properties;
    assert_eq!(header(p, dlt::REASON), "handler-failed");
    assert_eq!(header(p, dlt::ATTEMPTS), "3");
    assert!(header(p, dlt::HANDLER).ends_with("failing_item"));
    assert!(header(p, dlt::ERROR).contains("downstream said no"));
    assert_eq!(header(p, "event_id"), envelope.id().to_string());
    // The handler's writes rolled back with each attempt.
    assert_eq!(count(&dst.db, "SELECT COUNT(*) FROM effects").await, 0);
    assert_eq!(count(&dst.db, "SELECT COUNT(*) FROM outbox_inbox").await, 0);
    let _ = connection.close(200, "done".into()).await;
    publisher.close().await;
    delete_all(
        &uri,
        &[&exchange, &format!("{exchange}.dlx")],
        &[&queue, &dlq],
    )
    .await;
}

// ---- 6. an unroutable event is a retryable error ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unroutable_event_fails_as_retryable_and_holds_back_its_aggregate() {
    let Some(uri) = rabbitmq_uri() else {
        return;
    };
    let exchange = unique("unroutable");
    let queue = format!("{exchange}.only-a");
    // Only aggregate type A is bound.
    let publisher = RabbitPublisher::builder(&uri)
        .exchange(&exchange)
        .declare_queue(&queue, ["A.#"])
        .build()
        .await
        .expect("publisher");
    let batch = [
        Envelope::builder("Made", "B", "b-1")
            .sequence(1)
            .payload("{}")
            .build(),
        Envelope::builder("Made", "A", "a-1")
            .sequence(1)
            .payload("{}")
            .build(),
        Envelope::builder("Made", "B", "b-1")
            .sequence(2)
            .payload("{}")
            .build(),
    ];
    let results = publisher.publish(&batch).await;
    let first = results[0].as_ref().expect_err("no queue for B");
    assert!(first.is_retryable(), "{first:?}");
    assert!(
        outbox_core::error_chain(first).contains("no queue bound"),
        "{}",
        outbox_core::error_chain(first)
    );
    assert!(results[1].is_ok(), "{results:?}");
    // The second event of b-1 was handed over before the return came back: it fails too (also
    // unroutable), never Ok.
    assert!(results[2].is_err(), "{results:?}");
    publisher.close().await;
    delete_all(&uri, &[&exchange], &[&queue]).await;
}

// ---- 7. a consistent-hash exchange keeps each aggregate on one queue, in order ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consistent_hash_exchange_keeps_each_aggregate_in_one_queue_in_order() {
    let Some(uri) = rabbitmq_uri() else {
        return;
    };
    // Needs the plugin scripts/services.sh enables (rabbitmq_consistent_hash_exchange).
    let exchange = unique("hash");
    let queues = [format!("{exchange}.q0"), format!("{exchange}.q1")];
    let publisher = RabbitPublisher::builder(&uri)
        .exchange(&exchange)
        .exchange_type(ExchangeType::ConsistentHashOnAggregateId)
        .declare_queue(&queues[0], ["1"])
        .declare_queue(&queues[1], ["1"])
        .build()
        .await
        .expect("publisher (is rabbitmq_consistent_hash_exchange enabled? scripts/services.sh)");
    let aggregates = 40;
    let per_aggregate = 5;
    let batch: Vec<Envelope> = (1..=per_aggregate)
        .flat_map(|seq| {
            (0..aggregates).map(move |a| {
                Envelope::builder("Made", "Thing", format!("thing-{a}"))
                    .sequence(seq)
                    .payload("{}")
                    .build()
            })
        })
        .collect();
    let results = publisher.publish(&batch).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");

    let (connection, channel) = raw(&uri).await;
    let mut home: BTreeMap<String, usize> = BTreeMap::new();
    let mut order: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut per_queue = [0usize; 2];
    for (q, queue) in queues.iter().enumerate() {
        let got = drain(&channel, queue, batch.len(), Duration::from_secs(2)).await;
        per_queue[q] = got.len();
        for m in got {
            let p = &m.delivery.properties;
            let aggregate = header(p, "aggregate_id").to_owned();
            let first = *home.entry(aggregate.clone()).or_insert(q);
            assert_eq!(first, q, "{aggregate} went to both queues");
            order
                .entry(aggregate)
                .or_default()
                .push(header(p, "sequence").parse().expect("sequence"));
        }
    }
    assert_eq!(
        per_queue.iter().sum::<usize>(),
        batch.len(),
        "{per_queue:?}"
    );
    assert!(
        per_queue.iter().all(|n| *n > 0),
        "both queues get aggregates: {per_queue:?}"
    );
    assert_eq!(order.len(), aggregates);
    for (aggregate, sequences) in &order {
        assert_eq!(
            sequences,
            &(1..=per_aggregate).collect::<Vec<_>>(),
            "order of {aggregate}"
        );
    }
    let _ = connection.close(200, "done".into()).await;
    publisher.close().await;
    let queues: Vec<&str> = queues.iter().map(String::as_str).collect();
    delete_all(&uri, &[&exchange], &queues).await;
}

// ---- 8. many aggregates at concurrency 8: once each, in order per aggregate, in parallel ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_aggregates_are_applied_concurrently_once_and_in_order() {
    use std::sync::atomic::Ordering;
    let Some(uri) = rabbitmq_uri() else {
        return;
    };
    let Some(dst) = consumer_db("rabbit_e2e::concurrent_consumer").await else {
        return;
    };
    let exchange = unique("concurrent");
    let queue = format!("{exchange}.concurrent");
    let consumer = RabbitConsumer::builder(
        &uri,
        "rb-concurrent",
        dst.db.clone(),
        HandlerRegistry::new().with(handler!(concurrent_item)),
    )
    .exchange(&exchange)
    .queue(&queue)
    .concurrency(8)
    .build()
    .await
    .expect("consumer");
    let publisher = RabbitPublisher::builder(&uri)
        .exchange(&exchange)
        .build()
        .await
        .expect("publisher");
    let baskets: Vec<String> = (0..40)
        .map(|i| format!("conc-{i}-{}", unique("b")))
        .collect();
    let per = 25;
    publish_interleaved(&publisher, &baskets, per).await;
    let total = baskets.len() as i64 * per;

    MAX_IN_FLIGHT.store(0, Ordering::SeqCst);
    let stats = consume_until(
        &consumer,
        &dst.db,
        "SELECT COUNT(*) FROM effects",
        total,
        Duration::from_secs(60),
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
    let per_aggregate: BTreeMap<String, i64> = baskets.iter().map(|b| (b.clone(), per)).collect();
    assert_in_order(&applied_order(&dst.db).await, &per_aggregate);
    let most = MAX_IN_FLIGHT.load(Ordering::SeqCst);
    assert!(
        (2..=8).contains(&most),
        "handlers of different aggregates ran in parallel, at most 8: {most}"
    );
    assert!(
        stats.batches > 0,
        "waiting messages were batched: {stats:?}"
    );
    let (connection, channel) = raw(&uri).await;
    assert_eq!(message_count(&channel, &queue).await, 0, "all acknowledged");
    let _ = connection.close(200, "done".into()).await;
    publisher.close().await;
    let dlq = consumer.dead_letter_queue().to_owned();
    delete_all(
        &uri,
        &[&exchange, &format!("{exchange}.dlx")],
        &[&queue, &dlq],
    )
    .await;
}

// ---- 9. a poisoned aggregate holds back only itself, then is dead-lettered ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoned_aggregate_does_not_block_the_others_and_is_dead_lettered() {
    let Some(uri) = rabbitmq_uri() else {
        return;
    };
    let Some(dst) = consumer_db("rabbit_e2e::poison_consumer").await else {
        return;
    };
    let exchange = unique("poison");
    let queue = format!("{exchange}.poison");
    let consumer = RabbitConsumer::builder(
        &uri,
        "rb-poison",
        dst.db.clone(),
        HandlerRegistry::new().with(handler!(poison_item)),
    )
    .exchange(&exchange)
    .queue(&queue)
    .concurrency(8)
    .retry(
        RetryPolicy::default()
            .with_max_attempts(3)
            .with_initial_delay(Duration::from_millis(400))
            .with_max_delay(Duration::from_millis(400)),
    )
    .build()
    .await
    .expect("consumer");
    let publisher = RabbitPublisher::builder(&uri)
        .exchange(&exchange)
        .build()
        .await
        .expect("publisher");
    let poison = format!("poison-{}", unique("b"));
    let mut baskets: Vec<String> = (0..20)
        .map(|i| format!("good-{i}-{}", unique("b")))
        .collect();
    baskets.insert(3, poison.clone());
    let per = 3;
    publish_interleaved(&publisher, &baskets, per).await;
    let good = (baskets.len() as i64 - 1) * per;

    let (connection, channel) = raw(&uri).await;
    let dlq = consumer.dead_letter_queue().to_owned();
    let started = Instant::now();
    let mut good_done = None;
    let stats = tokio::time::timeout(
        Duration::from_secs(60),
        consumer.run_until(async {
            // Each poisoned event takes 3 attempts 400 ms apart: 2.4 s for the three of them.
            wait_count(
                &dst.db,
                "SELECT COUNT(*) FROM effects",
                good,
                Duration::from_secs(30),
            )
            .await;
            good_done = Some((started.elapsed(), message_count(&channel, &dlq).await));
            let deadline = Instant::now() + Duration::from_secs(30);
            while message_count(&channel, &dlq).await < per as u32 {
                assert!(
                    Instant::now() < deadline,
                    "poisoned events not dead-lettered"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }),
    )
    .await
    .expect("in time")
    .expect("consumer ran");
    let (elapsed, letters_then) = good_done.expect("the good baskets were applied");
    assert!(
        letters_then < per as u32,
        "the other baskets were done ({elapsed:?}) before the poisoned one was dead-lettered \
         ({letters_then} of {per} letters then)"
    );
    assert_eq!(stats.applied, good as u64, "{stats:?}");
    assert_eq!(stats.dead_lettered, per as u64, "{stats:?}");
    assert_eq!(stats.retries, 2 * per as u64, "{stats:?}");
    let per_aggregate: BTreeMap<String, i64> = baskets
        .iter()
        .filter(|b| **b != poison)
        .map(|b| (b.clone(), per))
        .collect();
    assert_in_order(&applied_order(&dst.db).await, &per_aggregate);
    let letters = drain(&channel, &dlq, per as usize, Duration::from_secs(5)).await;
    let sequences: Vec<&str> = letters
        .iter()
        .map(|l| header(&l.delivery.properties, "sequence"))
        .collect();
    assert_eq!(sequences, ["1", "2", "3"], "dead-lettered in order");
    for letter in &letters {
        let p = &letter.delivery.properties;
        assert_eq!(header(p, "aggregate_id"), poison);
        assert_eq!(header(p, dlt::REASON), "handler-failed");
        assert_eq!(header(p, dlt::ATTEMPTS), "3");
        assert!(header(p, dlt::ERROR).contains("poisoned basket"));
    }
    assert_eq!(message_count(&channel, &queue).await, 0, "all acknowledged");
    let _ = connection.close(200, "done".into()).await;
    publisher.close().await;
    delete_all(
        &uri,
        &[&exchange, &format!("{exchange}.dlx")],
        &[&queue, &dlq],
    )
    .await;
}

// ---- 10. a publish the broker refuses (nack) stays pending and is retried ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nacked_publish_is_not_marked_published_and_is_retried() {
    let Some(uri) = rabbitmq_uri() else {
        return;
    };
    let Some(src) = source_db("rabbit_e2e::nack_source").await else {
        return;
    };
    let exchange = unique("nack");
    let full = format!("{exchange}.full");
    let publisher = RabbitPublisher::builder(&uri)
        .exchange(&exchange)
        .build()
        .await
        .expect("publisher");
    // A queue that holds 3 messages and refuses more: the broker nacks the publishes it cannot
    // route to it.
    let (connection, channel) = raw(&uri).await;
    let mut arguments = FieldTable::default();
    arguments.insert("x-max-length".into(), AMQPValue::LongLongInt(3));
    arguments.insert(
        "x-overflow".into(),
        AMQPValue::LongString(LongString::from("reject-publish")),
    );
    channel
        .queue_declare(
            full.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            arguments,
        )
        .await
        .expect("bounded queue");
    channel
        .queue_bind(
            full.as_str().into(),
            exchange.as_str().into(),
            "#".into(),
            lapin::options::QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");

    let outbox = outbox(&src.db);
    let mut baskets: Vec<basket::Model> = (0..8)
        .map(|i| new_basket(format!("nack-{i}-{}", uuid::Uuid::now_v7())))
        .collect();
    for b in &mut baskets {
        add_items(&outbox, b, 1, 1).await;
    }
    let relay = Relay::builder(src.db.clone(), publisher)
        .retry(
            RetryPolicy::default()
                .with_max_attempts(1000)
                .with_initial_delay(Duration::from_millis(100))
                .with_max_delay(Duration::from_millis(200)),
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
    // Three fit; the five nacked stay pending while the queue is full.
    let deadline = Instant::now() + Duration::from_secs(20);
    while message_count(&channel, &full).await < 3 {
        assert!(Instant::now() < deadline, "three messages reach the queue");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        pending_count(&src.db).await.expect("pending"),
        5,
        "nacked rows are not counted as published"
    );
    // Room again: the relay's retries publish the rest.
    let mut got: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while pending_count(&src.db).await.expect("pending") > 0
        || message_count(&channel, &full).await > 0
    {
        assert!(
            Instant::now() < deadline,
            "the nacked rows were published on a retry"
        );
        for m in drain(&channel, &full, 3, Duration::from_millis(200)).await {
            got.push(header(&m.delivery.properties, "event_id").to_owned());
        }
    }
    let distinct: HashSet<&String> = got.iter().collect();
    assert_eq!(distinct.len(), 8, "every event arrived: {got:?}");
    let _ = stop.send(());
    let relay_stats = relay_task.await.expect("relay task").expect("relay");
    assert!(relay_stats.published() >= 8, "{relay_stats:?}");
    let _ = connection.close(200, "done".into()).await;
    delete_all(&uri, &[&exchange], &[&full]).await;
}

// ---- 11. shutdown is bounded: a handler still running is cancelled, its message comes again ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_bounded_and_leaves_unfinished_messages_in_the_queue() {
    let Some(uri) = rabbitmq_uri() else {
        return;
    };
    let Some(dst) = consumer_db("rabbit_e2e::slow_consumer").await else {
        return;
    };
    let exchange = unique("slow");
    let queue = format!("{exchange}.slow");
    let consumer = RabbitConsumer::builder(
        &uri,
        "rb-slow",
        dst.db.clone(),
        HandlerRegistry::new().with(handler!(slow_item)),
    )
    .exchange(&exchange)
    .queue(&queue)
    .build()
    .await
    .expect("consumer");
    let publisher = RabbitPublisher::builder(&uri)
        .exchange(&exchange)
        .build()
        .await
        .expect("publisher");
    let baskets: Vec<String> = (0..3)
        .map(|i| format!("slow-{i}-{}", unique("b")))
        .collect();
    publish_interleaved(&publisher, &baskets, 2).await;
    publisher.close().await;

    let started = Instant::now();
    let stats = tokio::time::timeout(
        Duration::from_secs(40),
        consumer.run_until(tokio::time::sleep(Duration::from_secs(1))),
    )
    .await
    .expect("run_until returned")
    .expect("consumer ran");
    let took = started.elapsed();
    // 1 s of running, at most 10 s of drain, then the connection closes (bounded too).
    assert!(
        took < Duration::from_secs(25),
        "shutdown did not wait for the 30 s handlers: {took:?}"
    );
    assert!(
        took >= Duration::from_secs(10),
        "the drain waited for the runs: {took:?}"
    );
    assert_eq!(stats.applied, 0, "{stats:?}");
    assert_eq!(stats.messages, 6, "{stats:?}");
    assert_eq!(
        stats.abandoned, 6,
        "nothing done, everything left: {stats:?}"
    );
    assert_eq!(count(&dst.db, "SELECT COUNT(*) FROM effects").await, 0);
    assert_eq!(count(&dst.db, "SELECT COUNT(*) FROM outbox_inbox").await, 0);
    let (connection, channel) = raw(&uri).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while message_count(&channel, &queue).await < 6 {
        assert!(
            Instant::now() < deadline,
            "the six messages are back in the queue"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = connection.close(200, "done".into()).await;
    let dlq = consumer.dead_letter_queue().to_owned();
    delete_all(
        &uri,
        &[&exchange, &format!("{exchange}.dlx")],
        &[&queue, &dlq],
    )
    .await;
}

// ---- two consumers of one queue: one active at a time, the order kept across the handover ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_consumers_of_a_queue_take_turns_and_keep_the_order() {
    let Some(uri) = rabbitmq_uri() else {
        return;
    };
    let Some(dst) = consumer_db("rabbit_e2e::two_consumers").await else {
        return;
    };
    let exchange = unique("turns");
    let queue = format!("{exchange}.applied");
    let mut consumers = Vec::new();
    for _ in 0..2 {
        consumers.push(
            RabbitConsumer::builder(
                &uri,
                "rb-applied",
                dst.db.clone(),
                HandlerRegistry::new().with(handler!(applied_item)),
            )
            .exchange(&exchange)
            .queue(&queue)
            .build()
            .await
            .expect("consumer"),
        );
    }
    let publisher = RabbitPublisher::builder(&uri)
        .exchange(&exchange)
        .build()
        .await
        .expect("publisher");

    // Both consume the queue from the start, each until told to stop.
    let mut stops = Vec::new();
    let mut runs = Vec::new();
    for consumer in consumers {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        stops.push(stop);
        runs.push(tokio::spawn(async move {
            consumer
                .run_until(async {
                    let _ = stopped.await;
                })
                .await
        }));
    }
    let per = 20;
    let first: Vec<String> = (0..15).map(|i| format!("t1-{i}-{}", unique("b"))).collect();
    publish_interleaved(&publisher, &first, per).await;
    let total_first = first.len() as i64 * per;
    let sql = "SELECT COUNT(*) FROM effects";
    wait_count(&dst.db, sql, total_first, Duration::from_secs(60)).await;

    // The first consumer leaves; the other one, active or standing by, carries on.
    let mut stops = stops.into_iter();
    let _ = stops.next().expect("first stop").send(());
    let mut runs = runs.into_iter();
    let first_stats = tokio::time::timeout(Duration::from_secs(30), runs.next().expect("run"))
        .await
        .expect("the first consumer stops within its drain")
        .expect("task")
        .expect("first consumer ran");
    let second: Vec<String> = (0..15).map(|i| format!("t2-{i}-{}", unique("b"))).collect();
    publish_interleaved(&publisher, &second, per).await;
    let total = total_first + second.len() as i64 * per;
    wait_count(&dst.db, sql, total, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = stops.next().expect("second stop").send(());
    let second_stats = tokio::time::timeout(Duration::from_secs(30), runs.next().expect("run"))
        .await
        .expect("the second consumer stops within its drain")
        .expect("task")
        .expect("second consumer ran");
    publisher.close().await;
    delete_all(&uri, &[&exchange], &[&queue]).await;

    // One consumer at a time: the first one applied all of round one or none of it.
    assert!(
        first_stats.applied == 0 || first_stats.applied == total_first as u64,
        "the queue was shared between active consumers: {first_stats:?} / {second_stats:?}"
    );
    assert_eq!(
        first_stats.applied + second_stats.applied,
        total as u64,
        "{first_stats:?} / {second_stats:?}"
    );
    assert_eq!(
        count(&dst.db, "SELECT COUNT(DISTINCT event_id) FROM effects").await,
        total
    );
    let per_aggregate: BTreeMap<String, i64> = first
        .iter()
        .chain(&second)
        .map(|b| (b.clone(), per))
        .collect();
    assert_in_order(&applied_order(&dst.db).await, &per_aggregate);
}
