//! The log relay against the real PostgreSQL (wal_level=logical, set by scripts/services.sh):
//! events read from the slot, published in order, confirmed only after the broker acknowledged
//! them, resumed after a restart.

use std::time::{Duration, Instant};

use outbox_core::RetryPolicy;
use outbox_core::testing::InMemoryPublisher;
use outbox_seaorm::DeadLetterPolicy;
use outbox_seaorm::log_relay::{LogRelay, drop_publication, drop_slot, slot_status};
use outbox_tests::fixtures::{
    as_refs, assert_ordered, count, insert_events, published, round_robin,
};
use outbox_tests::log::{RunningLogRelay, wal_lsn};
use outbox_tests::{Backend, TestDb, database_name, fresh};
use sea_orm::TransactionTrait;

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
    let relay = relay(&db, &slot, &publisher);
    relay.setup().await.unwrap();
    // Write-ahead log that is not ours (another table) moves the server's position; with no
    // relay reading, the slot keeps all of it.
    let other_wal = async || {
        for _ in 0..20 {
            outbox_tests::fixtures::exec(
                &db.db,
                "INSERT INTO other SELECT repeat('x', 1000) FROM generate_series(1, 1000)",
            )
            .await;
        }
    };
    outbox_tests::fixtures::exec(&db.db, "CREATE TABLE other (v text)").await;
    other_wal().await;
    let before = slot_status(&db.db, &slot).await.unwrap().unwrap();
    assert!(before.lag_bytes.unwrap() > 1 << 20, "{before:?}");
    // The relay, with nothing to publish, confirms keepalives and heartbeats.
    let running = RunningLogRelay::start(relay);
    let lag = async || {
        slot_status(&db.db, &slot)
            .await
            .unwrap()
            .unwrap()
            .lag_bytes
            .unwrap()
    };
    wait_for("the lag to shrink", Duration::from_secs(30), async || {
        lag().await < 64 * 1024
    })
    .await;
    other_wal().await;
    wait_for(
        "the lag to shrink again",
        Duration::from_secs(30),
        async || lag().await < 64 * 1024,
    )
    .await;
    running.stop().await;
}

fn quick_retry(attempts: u32) -> RetryPolicy {
    RetryPolicy::default()
        .with_max_attempts(attempts)
        .with_initial_delay(Duration::from_millis(20))
        .with_max_delay(Duration::from_millis(100))
        .with_jitter(0.0)
}

async fn confirmed(db: &TestDb, slot: &str) -> u64 {
    slot_status(&db.db, slot)
        .await
        .unwrap()
        .and_then(|s| s.confirmed_lsn_bytes)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_in_order_and_confirms_nothing_unacknowledged() {
    let Some((db, slot)) = database("log_relay::retries").await else {
        return;
    };
    let publisher = InMemoryPublisher::new();
    let relay = LogRelay::builder(db.url.clone(), publisher.clone())
        .slot(&slot)
        .publication(&slot)
        .retry(quick_retry(1000))
        .status_interval(Duration::from_millis(100))
        .build();
    relay.setup().await.unwrap();
    let start = confirmed(&db, &slot).await;
    // The broker refuses everything for a while: nothing is confirmed past the saved events.
    publisher.fail_matching(|_| true, 10);
    let running = RunningLogRelay::start(relay);
    let written = insert_events(&db.db, &as_refs(&round_robin(4, 40))).await;
    let saved_at = wal_lsn(&db.db).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        confirmed(&db, &slot).await < saved_at,
        "confirmed past events the broker has not acknowledged"
    );
    wait_for("every event", Duration::from_secs(30), async || {
        publisher.published().count() >= written.len()
    })
    .await;
    wait_for("the confirmation", Duration::from_secs(30), async || {
        confirmed(&db, &slot).await >= saved_at
    })
    .await;
    let stats = running.stop().await;
    assert!(stats.retried > 0, "{stats:?}");
    assert!(start < saved_at);
    let events = published(&publisher);
    assert_eq!(events.len(), written.len());
    assert_eq!(assert_ordered(&events), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_a_refused_event_dead_and_goes_on_under_skip() {
    let Some((db, slot)) = database("log_relay::dead").await else {
        return;
    };
    let publisher = InMemoryPublisher::new();
    publisher.reject_matching(|e| e.aggregate_id() == "o1" && e.sequence() == 2);
    let relay = LogRelay::builder(db.url.clone(), publisher.clone())
        .slot(&slot)
        .publication(&slot)
        .retry(quick_retry(3))
        .dead_letter_policy(DeadLetterPolicy::Skip)
        .build();
    relay.setup().await.unwrap();
    let running = RunningLogRelay::start(relay);
    let written = insert_events(&db.db, &as_refs(&round_robin(3, 12))).await;
    wait_for("the others", Duration::from_secs(30), async || {
        publisher.published().count() >= written.len() - 1
    })
    .await;
    wait_for("the dead row", Duration::from_secs(30), async || {
        count(&db.db, "outbox", "status = 2").await == 1
    })
    .await;
    let stats = running.stop().await;
    assert_eq!(stats.dead_lettered, 1, "{stats:?}");
    assert_eq!(
        count(
            &db.db,
            "outbox",
            "status = 2 AND aggregateid = 'o1' AND sequence = 2 AND last_error IS NOT NULL"
        )
        .await,
        1
    );
    let events = published(&publisher);
    assert_eq!(events.len(), written.len() - 1);
    assert!(events.iter().any(|(a, s, _)| a == "Order/o1" && *s == 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_the_slot() {
    let Some((db, slot)) = database("log_relay::standby").await else {
        return;
    };
    let first = InMemoryPublisher::new();
    let second = InMemoryPublisher::new();
    let build = |publisher: &InMemoryPublisher| {
        LogRelay::builder(db.url.clone(), publisher.clone())
            .slot(&slot)
            .publication(&slot)
            .standby_retry(Duration::from_millis(200))
            .status_interval(Duration::from_millis(100))
            .build()
    };
    build(&first).setup().await.unwrap();
    let active = RunningLogRelay::start(build(&first));
    wait_for("the slot held", Duration::from_secs(30), async || {
        slot_status(&db.db, &slot)
            .await
            .unwrap()
            .is_some_and(|s| s.active)
    })
    .await;
    let standby = RunningLogRelay::start(build(&second));
    let before = insert_events(&db.db, &as_refs(&round_robin(3, 30))).await;
    wait_for("the active relay", Duration::from_secs(30), async || {
        first.published().count() >= before.len()
    })
    .await;
    assert_eq!(second.published().count(), 0, "the standby published");
    active.stop().await;
    let after = insert_events(&db.db, &as_refs(&round_robin(3, 30))).await;
    let stopped = Instant::now();
    wait_for("the standby", Duration::from_secs(30), async || {
        second.published().count() >= after.len()
    })
    .await;
    assert!(stopped.elapsed() < Duration::from_secs(10));
    standby.stop().await;
    let mut all = published(&first);
    all.extend(published(&second));
    assert_eq!(assert_ordered(&all), 0);
    let ids: std::collections::HashSet<_> = all.iter().map(|p| p.2).collect();
    assert!(before.iter().chain(&after).all(|w| ids.contains(&w.id)));
    // Retiring the relay: the slot and the publication go.
    assert!(drop_slot(&db.db, &slot).await.unwrap());
    assert!(drop_publication(&db.db, &slot).await.unwrap());
    assert!(slot_status(&db.db, &slot).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_database_it_cannot_read() {
    let publisher = InMemoryPublisher::new();
    let relay = LogRelay::builder("mysql://root@127.0.0.1/test", publisher.clone()).build();
    let error = relay.run_until(async {}).await.unwrap_err();
    assert!(error.to_string().contains("postgres://"), "{error}");
    let relay = LogRelay::builder("postgres://postgres@127.0.0.1/test", publisher)
        .slot("Not A Slot")
        .build();
    let error = relay.setup().await.unwrap_err();
    assert!(error.to_string().contains("lowercase"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_saves_of_every_capture_mode_once() {
    use outbox_seaorm::{Capture, Outbox};
    use outbox_tests::documents::{create_table, new_document, revise};
    let Some((db, slot)) = database("log_relay::capture_modes").await else {
        return;
    };
    create_table(&db.db).await;
    let publisher = InMemoryPublisher::new();
    let relay = relay(&db, &slot, &publisher);
    relay.setup().await.unwrap();
    let running = RunningLogRelay::start(relay);
    let modes = [Capture::Table, Capture::LogTable, Capture::Messages];
    let mut saved = 0;
    for (m, capture) in modes.into_iter().enumerate() {
        let outbox = Outbox::builder(db.db.clone()).capture(capture).build();
        for d in 0..4 {
            let mut doc = new_document(&format!("{m}-{d}"));
            for _ in 0..5 {
                revise(&outbox, &mut doc, 100).await;
                saved += 1;
            }
        }
    }
    wait_for("every save", Duration::from_secs(30), async || {
        publisher.published().count() >= saved
    })
    .await;
    wait_for(
        "the table rows marked",
        Duration::from_secs(30),
        async || count(&db.db, "outbox", "status = 0").await == 0,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    running.stop().await;
    let events = published(&publisher);
    assert_eq!(events.len(), saved, "each event exactly once");
    assert_eq!(assert_ordered(&events), 0);
    for (aggregate, sequence, _) in &events {
        assert!((1..=5).contains(sequence), "{aggregate} #{sequence}");
    }
    // Table rows were marked, LogTable rows stay captured, messages left no row.
    assert_eq!(
        count(&db.db, "outbox", "aggregateid LIKE '0-%' AND status = 1").await,
        20
    );
    assert_eq!(
        count(&db.db, "outbox", "aggregateid LIKE '1-%' AND status = 3").await,
        20
    );
    assert_eq!(count(&db.db, "outbox", "aggregateid LIKE '2-%'").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweeps_rows_the_log_did_not_carry() {
    use outbox_seaorm::relay::requeue_dead;
    let Some((db, slot)) = database("log_relay::sweep").await else {
        return;
    };
    // A backlog saved pending before the slot existed (a service moving from the table relay).
    let backlog = insert_events(&db.db, &as_refs(&round_robin(4, 20))).await;
    let publisher = InMemoryPublisher::new();
    let build = || {
        LogRelay::builder(db.url.clone(), publisher.clone())
            .slot(&slot)
            .publication(&slot)
            .retry(quick_retry(2))
            .dead_letter_policy(DeadLetterPolicy::Skip)
            .sweep(Duration::from_millis(200), Duration::from_millis(300))
            .build()
    };
    build().setup().await.unwrap();
    let running = RunningLogRelay::start(build());
    wait_for("the backlog", Duration::from_secs(30), async || {
        count(&db.db, "outbox", "status = 0").await == 0
    })
    .await;
    assert_eq!(published(&publisher).len(), backlog.len());
    // An event refused for good, recorded dead, then requeued: the sweep sends it.
    publisher.reject_matching(|e| e.aggregate_id() == "o9");
    let dead = insert_events(&db.db, &[("Order", "o9")]).await[0].id;
    wait_for("the dead row", Duration::from_secs(30), async || {
        count(&db.db, "outbox", "status = 2").await == 1
    })
    .await;
    publisher.heal();
    assert!(requeue_dead(&db.db, dead).await.unwrap());
    wait_for("the requeued event", Duration::from_secs(30), async || {
        publisher
            .published()
            .envelopes()
            .iter()
            .any(|e| e.id() == dead)
    })
    .await;
    wait_for("its mark", Duration::from_secs(30), async || {
        count(&db.db, "outbox", "status = 1").await as usize == backlog.len() + 1
    })
    .await;
    running.stop().await;
    let events = published(&publisher);
    assert_eq!(events.len(), backlog.len() + 1, "each once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_creation_behind_an_open_transaction_is_bounded() {
    use sea_orm::ConnectionTrait;
    let Some((db, slot)) = database("log_relay::setup_bound").await else {
        return;
    };
    // A transaction that wrote and stays open: creating a slot waits for it to end.
    let open = db.db.begin().await.unwrap();
    open.execute_unprepared("CREATE TABLE held (v int)")
        .await
        .unwrap();
    let relay = LogRelay::builder(db.url.clone(), InMemoryPublisher::new())
        .slot(&slot)
        .publication(&slot)
        .setup_timeout(Duration::from_secs(2))
        .build();
    let started = Instant::now();
    let error = tokio::time::timeout(Duration::from_secs(30), relay.setup())
        .await
        .expect("setup is bounded")
        .unwrap_err();
    assert!(
        error.to_string().contains("did not finish within"),
        "{error}"
    );
    assert!(started.elapsed() < Duration::from_secs(15));
    open.rollback().await.unwrap();
    relay
        .setup()
        .await
        .expect("set up once the transaction ended");
    assert!(slot_status(&db.db, &slot).await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_message_becomes_a_dead_row() {
    use outbox_seaorm::{Capture, Outbox};
    use outbox_tests::documents::{create_table, new_document, revise};
    let Some((db, slot)) = database("log_relay::dead_message").await else {
        return;
    };
    create_table(&db.db).await;
    let publisher = InMemoryPublisher::new();
    publisher.reject_matching(|e| e.aggregate_id() == "bad" && e.sequence() == 1);
    let relay = LogRelay::builder(db.url.clone(), publisher.clone())
        .slot(&slot)
        .publication(&slot)
        .retry(quick_retry(2))
        .dead_letter_policy(DeadLetterPolicy::Skip)
        .build();
    relay.setup().await.unwrap();
    let running = RunningLogRelay::start(relay);
    let outbox = Outbox::builder(db.db.clone())
        .capture(Capture::Messages)
        .build();
    let (mut bad, mut good) = (new_document("bad"), new_document("good"));
    for _ in 0..2 {
        revise(&outbox, &mut bad, 10).await;
        revise(&outbox, &mut good, 10).await;
    }
    wait_for("the others", Duration::from_secs(30), async || {
        publisher.published().count() >= 3
    })
    .await;
    wait_for("the dead row", Duration::from_secs(30), async || {
        count(
            &db.db,
            "outbox",
            "status = 2 AND aggregateid = 'bad' AND sequence = 1",
        )
        .await
            == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stats = running.stop().await;
    assert_eq!(stats.dead_lettered, 1, "{stats:?}");
    // The relay's own insert of the dead row is not published.
    assert_eq!(published(&publisher).len(), 3);
    assert_eq!(count(&db.db, "outbox", "1 = 1").await, 1);
}
