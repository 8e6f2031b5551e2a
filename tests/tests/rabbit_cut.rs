//! RabbitMQ connections cut (`rabbitmqctl close_all_connections`) while saves go on: the relay's
//! `RabbitPublisher` and the `RabbitConsumer` reconnect, nothing is lost, everything is applied
//! once and in order per aggregate. A test binary of its own: the cut closes every connection
//! on the server, so no other test of this binary may hold one.

use std::collections::BTreeMap;
use std::time::Duration;

use outbox_core::{Envelope, HandlerRegistry, Publisher, handler};
use outbox_rabbitmq::{RabbitConsumer, RabbitPublisher};
use outbox_seaorm::relay::Relay;
use outbox_tests::rabbitmq_uri;

mod rabbit_common;
use rabbit_common::*;

// ---- 2. connections cut while saves go on ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_connections_lose_nothing_and_apply_everything_once_in_order() {
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
        stats.applied + stats.duplicates,
        "{stats:?}"
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
