//! The log relay against the real PostgreSQL (wal_level=logical, set by scripts/services.sh):
//! events read from the slot, published in order, confirmed only after the broker acknowledged
//! them, resumed after a restart.

use std::time::{Duration, Instant};

use outbox_core::Envelope;
use outbox_core::testing::InMemoryPublisher;
use outbox_seaorm::log_relay::{LogRelay, slot_status};
use outbox_tests::fixtures::{
    Published, as_refs, assert_ordered, count, insert_events, round_robin,
};
use outbox_tests::log::RunningLogRelay;
use outbox_tests::{Backend, TestDb, database_name, fresh};
use sea_orm::TransactionTrait;

fn published(publisher: &InMemoryPublisher) -> Vec<Published> {
    publisher
        .published()
        .envelopes()
        .iter()
        .map(|e: &Envelope| {
            (
                format!("{}/{}", e.aggregate_type(), e.aggregate_id()),
                e.sequence(),
                e.id(),
            )
        })
        .collect()
}

/// A fresh PostgreSQL database and a slot name of its own.
async fn database(test: &str) -> Option<(TestDb, String)> {
    let db = fresh(Backend::Postgres, test).await?;
    Some((db, database_name(test, Backend::Postgres)))
}

async fn wait_for(what: &str, timeout: Duration, mut done: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !done().await {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn relay(db: &TestDb, slot: &str, publisher: &InMemoryPublisher) -> LogRelay {
    LogRelay::builder(db.url.clone(), publisher.clone())
        .slot(slot)
        .publication(slot)
        .heartbeat(Duration::from_millis(500))
        .status_interval(Duration::from_millis(100))
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_table_rows_in_order_and_marks_them() {
    let Some((db, slot)) = database("log_relay::table_rows").await else {
        return;
    };
    let publisher = InMemoryPublisher::new();
    let relay = relay(&db, &slot, &publisher);
    relay.setup().await.expect("slot and publication");
    let running = RunningLogRelay::start(relay);
    let pairs = round_robin(20, 300);
    let mut written = 0;
    for chunk in pairs.chunks(30) {
        let txn = db.db.begin().await.unwrap();
        written += insert_events(&txn, &as_refs(chunk)).await.len();
        txn.commit().await.unwrap();
    }
    // A rolled-back transaction is never in the log.
    let txn = db.db.begin().await.unwrap();
    insert_events(&txn, &as_refs(&round_robin(3, 9))).await;
    txn.rollback().await.unwrap();
    wait_for("every event", Duration::from_secs(30), async || {
        publisher.published().count() >= written
    })
    .await;
    wait_for("the rows marked", Duration::from_secs(30), async || {
        count(&db.db, "outbox", "status = 0").await == 0
    })
    .await;
    let stats = running.stop().await;
    let events = published(&publisher);
    assert_eq!(events.len(), written, "each event once: {stats:?}");
    assert_eq!(assert_ordered(&events), 0);
    assert_eq!(
        count(&db.db, "outbox", "status = 1").await as usize,
        written
    );
    assert_eq!(stats.published as usize, written);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_from_the_confirmed_position() {
    let Some((db, slot)) = database("log_relay::resumes").await else {
        return;
    };
    let publisher = InMemoryPublisher::new();
    relay(&db, &slot, &publisher).setup().await.unwrap();
    let first = insert_events(&db.db, &as_refs(&round_robin(5, 50)))
        .await
        .len();
    let running = RunningLogRelay::start(relay(&db, &slot, &publisher));
    wait_for("the first events", Duration::from_secs(30), async || {
        publisher.published().count() >= first
    })
    .await;
    // Confirmed on the server before the relay stops.
    wait_for(
        "the confirmed position",
        Duration::from_secs(30),
        async || {
            let status = slot_status(&db.db, &slot).await.unwrap().unwrap();
            status.lag_bytes.unwrap_or(u64::MAX) < 1 << 20 && status.active
        },
    )
    .await;
    eprintln!(
        "before stop: {:?}",
        slot_status(&db.db, &slot).await.unwrap()
    );
    running.stop().await;
    eprintln!(
        "after stop: {:?}",
        slot_status(&db.db, &slot).await.unwrap()
    );
    let second = insert_events(&db.db, &as_refs(&round_robin(5, 50))).await;
    let publisher2 = InMemoryPublisher::new();
    let running = RunningLogRelay::start(relay(&db, &slot, &publisher2));
    wait_for("the second events", Duration::from_secs(30), async || {
        publisher2.published().count() >= second.len()
    })
    .await;
    running.stop().await;
    let again = published(&publisher2);
    let first_ids: std::collections::HashSet<_> =
        published(&publisher).iter().map(|p| p.2).collect();
    let repeats = again.iter().filter(|p| first_ids.contains(&p.2)).count();
    assert_eq!(repeats, 0, "confirmed events are not read again");
    let ids: std::collections::HashSet<_> = again.iter().map(|p| p.2).collect();
    assert!(second.iter().all(|w| ids.contains(&w.id)), "no gap");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_slot_keeps_no_log() {
    let Some((db, slot)) = database("log_relay::idle").await else {
        return;
    };
    let publisher = InMemoryPublisher::new();
    let running = RunningLogRelay::start(relay(&db, &slot, &publisher));
    wait_for("the slot held", Duration::from_secs(30), async || {
        slot_status(&db.db, &slot)
            .await
            .unwrap()
            .is_some_and(|s| s.active)
    })
    .await;
    // Write-ahead log that is not ours (another table) moves the server's position.
    outbox_tests::fixtures::exec(&db.db, "CREATE TABLE other (v text)").await;
    for _ in 0..20 {
        outbox_tests::fixtures::exec(
            &db.db,
            "INSERT INTO other SELECT repeat('x', 1000) FROM generate_series(1, 1000)",
        )
        .await;
    }
    let before = slot_status(&db.db, &slot).await.unwrap().unwrap();
    assert!(before.lag_bytes.unwrap() > 1 << 20, "{before:?}");
    wait_for("the lag to shrink", Duration::from_secs(30), async || {
        let now = slot_status(&db.db, &slot).await.unwrap().unwrap();
        now.lag_bytes.unwrap() < 64 * 1024
    })
    .await;
    running.stop().await;
}
