//! RabbitMQ connections cut (`rabbitmqctl close_all_connections`) while saves go on: the relay's
//! `RabbitPublisher` and the `RabbitConsumer` reconnect, nothing is lost, everything is applied
//! once and in order per aggregate. A test binary of its own: the cut closes every connection
//! on the server, so the tests of this binary take [`CUTS`] and run one at a time.

use std::collections::BTreeMap;
use std::time::Duration;

use outbox_core::{Envelope, HandlerRegistry, Publisher, handler};
use outbox_rabbitmq::{RabbitConsumer, RabbitPublisher};
use outbox_seaorm::relay::{Relay, pending_count};
use outbox_tests::rabbitmq_uri;

mod rabbit_common;
use rabbit_common::*;

/// Held by each test for its whole run: a cut closes every connection on the server.
static CUTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---- 2. connections cut while saves go on ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_connections_lose_nothing_and_apply_everything_once_in_order() {
    let _cuts = CUTS.lock().await;
    let Some(uri) = rabbitmq_uri() else {
        return;
    };
    let Some(src) = source_db("rabbit_e2e::cut_source").await else {
        return;
    };
    let Some(dst) = consumer_db("rabbit_e2e::cut_consumer").await else {
        return;
    };
    let exchange = unique("cut");
    let queue = format!("{exchange}.applied");
    let consumer = RabbitConsumer::builder(
        &uri,
        "rb-applied",
        dst.db.clone(),
        HandlerRegistry::new().with(handler!(applied_item)),
    )
    .exchange(&exchange)
    .queue(&queue)
    .prefetch(8)
    .build()
    .await
    .expect("consumer");
    let publisher = RabbitPublisher::builder(&uri)
        .exchange(&exchange)
        .connect_timeout(Duration::from_secs(5))
        .confirm_timeout(Duration::from_secs(5))
        .build()
        .await
        .expect("publisher");

    // The publisher on its own: a cut between two batches is noticed, and the second batch
    // goes out on a new connection.
    let probe_queue = format!("{exchange}.probe");
    publisher
        .declare_queue(&probe_queue, &["Probe.#"])
        .await
        .expect("probe queue");
    let probe = |n: i64| {
        Envelope::builder("Probed", "Probe", "p-1")
            .sequence(n)
            .payload("{}")
            .build()
    };
    assert!(publisher.publish(&[probe(1)]).await[0].is_ok());
    cut_all_connections();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after_cut = publisher.publish(&[probe(2)]).await;
    assert!(
        after_cut[0].is_ok(),
        "published after the cut: {after_cut:?}"
    );

    let relay = Relay::builder(src.db.clone(), publisher)
        .retry(quick_retries())
        .build();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let relay_task = tokio::spawn(async move {
        relay
            .run_until(async {
                let _ = stopped.await;
            })
            .await
    });

    let outbox = outbox(&src.db);
    let mut baskets: Vec<basket::Model> = (0..4)
        .map(|i| new_basket(format!("cut-{i}-{}", uuid::Uuid::now_v7())))
        .collect();
    let drive = async {
        for round in 0..30 {
            for b in &mut baskets {
                add_items(&outbox, b, 2, 1).await;
            }
            if round % 10 == 5 {
                // Both the relay's and the consumer's connections go away, mid-stream.
                cut_all_connections();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let total: i64 = baskets.iter().map(|b| b.items).sum();
        wait_published(&src.db, Duration::from_secs(40)).await;
        wait_count(
            &dst.db,
            "SELECT COUNT(DISTINCT event_id) FROM effects",
            total,
            Duration::from_secs(40),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        total
    };
    let (stats, total) = tokio::time::timeout(Duration::from_secs(120), async {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let run = consumer.run_until(async {
            let _ = rx.await;
        });
        let drive = async move {
            let total = drive.await;
            let _ = tx.send(());
            total
        };
        let (stats, total) = tokio::join!(run, drive);
        (stats.expect("consumer ran"), total)
    })
    .await
    .expect("cut test finished in time");

    eprintln!("consumer: {stats:?}");
    assert_eq!(total, 4 * 60);
    assert_eq!(count(&dst.db, "SELECT COUNT(*) FROM effects").await, total);
    assert_eq!(stats.applied, total as u64, "{stats:?}");
    assert_eq!(stats.dead_lettered, 0, "{stats:?}");
    assert!(
        stats.reconnects >= 3,
        "the consumer reconnected after each cut: {stats:?}"
    );
    assert_eq!(
        stats.messages,
        stats.applied + stats.duplicates + stats.abandoned,
        "every message received was applied, skipped as a duplicate, or left to come again: \
         {stats:?}"
    );

    let per_aggregate: BTreeMap<String, i64> =
        baskets.iter().map(|b| (b.id.clone(), b.items)).collect();
    assert_in_order(&applied_order(&dst.db).await, &per_aggregate);

    let _ = stop.send(());
    let relay_stats = relay_task.await.expect("relay task").expect("relay");
    assert!(relay_stats.published() >= total as u64, "{relay_stats:?}");
    eprintln!("relay: {relay_stats:?}");
    let dlq = consumer.dead_letter_queue().to_owned();
    delete_all(
        &uri,
        &[&exchange, &format!("{exchange}.dlx")],
        &[&queue, &dlq, &probe_queue],
    )
    .await;
}

// ---- 3. the consumer cut while many aggregates are in flight at concurrency 8 ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_during_concurrent_runs_applies_everything_once_in_order() {
    let _cuts = CUTS.lock().await;
    let Some(uri) = rabbitmq_uri() else {
        return;
    };
    let Some(dst) = consumer_db("rabbit_cut::concurrent_consumer").await else {
        return;
    };
    let exchange = unique("cutconc");
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
    .max_buffered(64)
    .build()
    .await
    .expect("consumer");
    let publisher = RabbitPublisher::builder(&uri)
        .exchange(&exchange)
        .build()
        .await
        .expect("publisher");
    let baskets: Vec<String> = (0..30).map(|i| format!("cc-{i}-{}", unique("b"))).collect();
    let per = 40;
    publish_interleaved(&publisher, &baskets, per).await;
    publisher.close().await;
    let total = baskets.len() as i64 * per;

    let sql = "SELECT COUNT(*) FROM effects";
    let stats = tokio::time::timeout(
        Duration::from_secs(120),
        consumer.run_until(async {
            // Two cuts while runs are in flight, each once a share of the events is applied.
            for share in [4, 2] {
                let deadline = std::time::Instant::now() + Duration::from_secs(40);
                while count(&dst.db, sql).await < total / share {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "progress before the cut"
                    );
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                cut_all_connections();
            }
            wait_count(&dst.db, sql, total, Duration::from_secs(60)).await;
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }),
    )
    .await
    .expect("in time")
    .expect("consumer ran");
    eprintln!("consumer: {stats:?}");
    assert!(stats.reconnects >= 2, "{stats:?}");
    assert_eq!(
        stats.applied, total as u64,
        "each event applied once: {stats:?}"
    );
    assert_eq!(count(&dst.db, sql).await, total);
    assert_eq!(
        count(&dst.db, "SELECT COUNT(DISTINCT event_id) FROM effects").await,
        total
    );
    assert!(
        stats.abandoned > 0,
        "the cuts left messages unacknowledged that came again: {stats:?}"
    );
    assert_eq!(
        stats.messages,
        stats.applied + stats.duplicates + stats.abandoned,
        "{stats:?}"
    );
    let per_aggregate: BTreeMap<String, i64> = baskets.iter().map(|b| (b.clone(), per)).collect();
    assert_in_order(&applied_order(&dst.db).await, &per_aggregate);
    let dlq = consumer.dead_letter_queue().to_owned();
    delete_all(
        &uri,
        &[&exchange, &format!("{exchange}.dlx")],
        &[&queue, &dlq],
    )
    .await;
}

// ---- 4. the relay's connection cut while confirms are outstanding ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_with_confirms_outstanding_is_republished_and_applied_once() {
    let _cuts = CUTS.lock().await;
    let Some(uri) = rabbitmq_uri() else {
        return;
    };
    let Some(src) = source_db("rabbit_cut::confirms_source").await else {
        return;
    };
    let Some(dst) = consumer_db("rabbit_cut::confirms_consumer").await else {
        return;
    };
    let exchange = unique("confirms");
    let queue = format!("{exchange}.applied");
    let tap = format!("{exchange}.tap");
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
        .declare_queue(&tap, ["#"])
        .connect_timeout(Duration::from_secs(5))
        .confirm_timeout(Duration::from_secs(5))
        .build()
        .await
        .expect("publisher");
    let outbox = outbox(&src.db);
    // Enough events that the relay is still publishing when `rabbitmqctl` (about 1 s to start)
    // closes its connection.
    let mut baskets: Vec<basket::Model> = (0..20)
        .map(|i| new_basket(format!("conf-{i}-{}", uuid::Uuid::now_v7())))
        .collect();
    for b in &mut baskets {
        add_items(&outbox, b, 600, 200).await;
    }
    let total: i64 = baskets.iter().map(|b| b.items).sum();
    assert_eq!(total, 12_000);
    let relay = Relay::builder(src.db.clone(), publisher)
        .retry(quick_retries())
        .build();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let relay_task = tokio::spawn(async move {
        relay
            .run_until(async {
                let _ = stopped.await;
            })
            .await
    });
    // Cut as soon as the relay has started publishing and before it is done: its batches in
    // flight lose their confirms.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let pending = pending_count(&src.db).await.expect("pending");
        if pending < total as u64 {
            assert!(
                pending > 0,
                "the relay finished before the cut; make the test bigger"
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the relay started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Cut (each `rabbitmqctl` call takes about 1 s) until nothing is pending, at most 15 times:
    // a cut that lands between two batches fails nothing, one during a batch fails the
    // publishes whose confirms were outstanding.
    for _ in 0..15 {
        cut_all_connections();
        if pending_count(&src.db).await.expect("pending") == 0 {
            break;
        }
    }
    wait_published(&src.db, Duration::from_secs(60)).await;
    let (connection, channel) = raw(&uri).await;
    // Read the tap queue until it is empty (every copy, duplicates included).
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while message_count(&channel, &tap).await > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the tap queue was read"
        );
        got.extend(drain(&channel, &tap, 500, Duration::from_millis(500)).await);
    }
    let ids: std::collections::HashSet<&str> = got
        .iter()
        .map(|m| header(&m.delivery.properties, "event_id"))
        .collect();
    assert_eq!(ids.len(), total as usize, "every event reached the broker");
    eprintln!("tap: {} messages for {total} events", got.len());
    let _ = connection.close(200, "done".into()).await;
    let stats = consume_until(
        &consumer,
        &dst.db,
        "SELECT COUNT(*) FROM effects",
        total,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(stats.applied, total as u64, "{stats:?}");
    assert_eq!(
        count(&dst.db, "SELECT COUNT(DISTINCT event_id) FROM effects").await,
        total
    );
    let per_aggregate: BTreeMap<String, i64> =
        baskets.iter().map(|b| (b.id.clone(), b.items)).collect();
    assert_in_order(&applied_order(&dst.db).await, &per_aggregate);
    let _ = stop.send(());
    let relay_stats = relay_task.await.expect("relay task").expect("relay");
    eprintln!("relay: {relay_stats:?}");
    assert!(
        relay_stats.failed() > 0,
        "a cut failed publishes whose confirms were outstanding: {relay_stats:?}"
    );
    assert!(relay_stats.published() >= total as u64, "{relay_stats:?}");
    let dlq = consumer.dead_letter_queue().to_owned();
    delete_all(
        &uri,
        &[&exchange, &format!("{exchange}.dlx")],
        &[&queue, &dlq, &tap],
    )
    .await;
}
