//! The relay against real databases: draining with several relays, commit order, retries and
//! dead letters, graceful shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use outbox_core::testing::InMemoryPublisher;
use outbox_core::{Envelope, PublishError, Publisher, RetryPolicy};
use outbox_seaorm::relay::{dead_count, pending_count, requeue_dead};
use outbox_seaorm::{Completion, DeadLetterPolicy, Relay};
use outbox_tests::fixtures::{
    as_refs, assert_ordered, count, exec, insert_events, published, round_robin,
};
use outbox_tests::{Backend, RunningRelay, TestDb, db_tests, fresh};
use sea_orm::{ConnectionTrait, Statement, TransactionTrait};

fn quick_retry(attempts: u32) -> RetryPolicy {
    RetryPolicy::default()
        .with_max_attempts(attempts)
        .with_initial_delay(Duration::from_millis(20))
        .with_max_delay(Duration::from_millis(100))
        .with_jitter(0.0)
}

/// Waits until `pending_count` is 0, at most `limit`.
async fn wait_drained(db: &sea_orm::DatabaseConnection, limit: Duration) {
    let start = Instant::now();
    loop {
        let pending = pending_count(db).await.expect("pending count");
        if pending == 0 {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "{pending} events still pending after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn ten_thousand_events_drained_by_three_relays(t: TestDb) {
    let pairs = round_robin(100, 10_000);
    insert_events(&t.db, &as_refs(&pairs)).await;
    let publisher = InMemoryPublisher::new();
    // SQLite supports one relay per database.
    let relays = if t.backend == Backend::Sqlite { 1 } else { 3 };
    let started = Instant::now();
    let mut running = Vec::new();
    for i in 0..relays {
        let db = t.connect_again().await;
        let relay = Relay::builder(db, publisher.clone())
            .instance_id(format!("relay-{i}"))
            .batch_size(500)
            .fallback_poll(Duration::from_millis(200))
            .build();
        running.push(RunningRelay::start(relay));
    }
    wait_drained(&t.db, Duration::from_secs(60)).await;
    let elapsed = started.elapsed();
    let mut per_relay = Vec::new();
    for relay in running {
        per_relay.push(relay.stop().await.published());
    }
    eprintln!(
        "{:?}: 10,000 events drained by {relays} relay(s) in {elapsed:?}, per relay {per_relay:?}",
        t.backend
    );
    let published = published(&publisher);
    assert_eq!(
        published.len(),
        10_000,
        "every event published exactly once"
    );
    assert_eq!(assert_ordered(&published), 0, "no duplicates");
    assert_eq!(per_relay.iter().sum::<u64>(), 10_000);
    assert_eq!(count(&t.db, "outbox", "status = 1").await, 10_000);
}

async fn failing_event_is_retried_then_dead_and_blocks_its_aggregate(t: TestDb) {
    let written = insert_events(
        &t.db,
        &[
            ("Order", "a"),
            ("Order", "b"),
            ("Order", "a"),
            ("Order", "b"),
            ("Order", "a"),
        ],
    )
    .await;
    let bad = written[2].id; // a #2
    let publisher = InMemoryPublisher::new();
    publisher.fail_matching(move |e| e.id() == bad, 100);
    // Long enough that the immediate second cycle below always falls inside the backoff.
    let relay = Relay::builder(t.db.clone(), publisher.clone())
        .retry(
            quick_retry(3)
                .with_initial_delay(Duration::from_millis(200))
                .with_max_delay(Duration::from_millis(200)),
        )
        .build();

    let before = outbox_seaorm::time::now_micros();
    let first = relay.run_once().await.expect("cycle");
    assert_eq!(first.claimed(), 5);
    assert_eq!(first.published(), 3, "a#1, b#1, b#2");
    assert_eq!(first.failed(), 1);
    assert_eq!(first.held(), 1, "a#3 is not marked after a#2 failed");
    let row = t
        .db
        .query_one_raw(Statement::from_string(
            t.db.get_database_backend(),
            format!("SELECT attempts, status, next_attempt_at, last_error FROM outbox WHERE id = '{bad}'"),
        ))
        .await
        .expect("query")
        .expect("row");
    assert_eq!(row.try_get_by_index::<i32>(0).expect("attempts"), 1);
    assert_eq!(row.try_get_by_index::<i16>(1).expect("status"), 0);
    let next: i64 = row.try_get_by_index(2).expect("next");
    assert!(next >= before + 200_000, "backoff of 200 ms applied");
    let error: String = row.try_get_by_index(3).expect("last_error");
    assert!(
        error.contains("scripted failure"),
        "full chain stored: {error}"
    );

    // Immediately again: a#2 is not due, and a#3 is held back behind it.
    let again = relay.run_once().await.expect("cycle");
    assert_eq!(again.claimed(), 0, "{again:?}");

    let start = Instant::now();
    while dead_count(&t.db).await.expect("dead") == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "never dead-lettered"
        );
        relay.run_once().await.expect("cycle");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The first batch of 5, then a#2 with a#3 behind it twice more: nothing in between, since
    // nothing is handed over while a#2 waits for its backoff.
    assert_eq!(publisher.attempts(), 5 + 2 + 2);
    assert_eq!(
        count(
            &t.db,
            "outbox",
            &format!("id = '{bad}' AND status = 2 AND attempts = 3")
        )
        .await,
        1
    );
    // Block: a#3 stays pending while a#2 is dead; b was never affected.
    for _ in 0..3 {
        relay.run_once().await.expect("cycle");
    }
    assert_eq!(pending_count(&t.db).await.expect("pending"), 1);
    let a3 = written[4].id;
    assert!(
        !publisher
            .published()
            .envelopes()
            .iter()
            .any(|e| e.id() == a3),
        "a#3 must not pass a dead a#2"
    );
    assert_eq!(publisher.published().for_aggregate("Order", "b").count(), 2);

    // Requeue after the broker is fixed: a#2 then a#3, in order.
    publisher.heal();
    assert!(requeue_dead(&t.db, bad).await.expect("requeue"));
    assert!(
        !requeue_dead(&t.db, bad).await.expect("requeue"),
        "no longer dead"
    );
    let report = relay.run_once().await.expect("cycle");
    assert_eq!(report.published(), 2);
    assert_eq!(pending_count(&t.db).await.expect("pending"), 0);
    let order: Vec<i64> = publisher
        .published()
        .for_aggregate("Order", "a")
        .envelopes()
        .iter()
        .map(Envelope::sequence)
        .collect();
    assert_eq!(order, vec![1, 2, 3]);
}

async fn rejected_is_dead_at_once_and_skip_releases_its_aggregate(t: TestDb) {
    let written = insert_events(
        &t.db,
        &[
            ("Order", "a"),
            ("Order", "a"),
            ("Order", "a"),
            ("Order", "c"),
        ],
    )
    .await;
    let bad = written[1].id;
    let publisher = InMemoryPublisher::new();
    publisher.reject_matching(move |e| e.id() == bad);

    // Block: a#3 is held behind the dead a#2.
    let blocking = Relay::builder(t.db.clone(), publisher.clone())
        .retry(quick_retry(10))
        .build();
    let report = blocking.run_once().await.expect("cycle");
    assert_eq!(
        (report.published(), report.dead(), report.held()),
        (2, 1, 1)
    );
    assert_eq!(
        count(
            &t.db,
            "outbox",
            &format!("id = '{bad}' AND status = 2 AND attempts = 1")
        )
        .await,
        1,
        "rejected goes dead at the first attempt"
    );
    assert_eq!(blocking.run_once().await.expect("cycle").claimed(), 0);

    // Skip: the dead a#2 no longer holds a#3 back.
    let skipping = Relay::builder(t.db.clone(), publisher.clone())
        .dead_letter_policy(DeadLetterPolicy::Skip)
        .build();
    let report = skipping.run_once().await.expect("cycle");
    assert_eq!(report.published(), 1);
    assert_eq!(pending_count(&t.db).await.expect("pending"), 0);
    let a: Vec<i64> = publisher
        .published()
        .for_aggregate("Order", "a")
        .envelopes()
        .iter()
        .map(Envelope::sequence)
        .collect();
    assert_eq!(a, vec![1, 3]);
}

async fn intermittent_failures_retry_without_losing_order(t: TestDb) {
    let pairs = round_robin(10, 400);
    insert_events(&t.db, &as_refs(&pairs)).await;
    let publisher = InMemoryPublisher::new();
    // Every fifth event fails twice before it goes through, and three calls fail entirely: at
    // most five failures per event, under the eight attempts allowed.
    publisher.fail_matching(|e| e.sequence() % 5 == 0, 2);
    let relay = Relay::builder(t.db.clone(), publisher.clone())
        .batch_size(50)
        .retry(quick_retry(8).with_initial_delay(Duration::from_millis(5)))
        .fallback_poll(Duration::from_millis(50))
        .idle_backoff(Duration::from_millis(2), Duration::from_millis(20))
        .build();
    let fail_calls = publisher.clone();
    let flaky = tokio::spawn(async move {
        for _ in 0..3 {
            fail_calls.fail_next_calls(1);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let running = RunningRelay::start(relay);
    wait_drained(&t.db, Duration::from_secs(30)).await;
    let stats = running.stop().await;
    flaky.await.expect("join");
    assert_eq!(dead_count(&t.db).await.expect("dead"), 0);
    assert!(
        stats.failed() >= 80,
        "every fifth event failed twice: {stats:?}"
    );
    let published = published(&publisher);
    if std::env::var("DEBUG_ORDER").is_ok() {
        let o0: Vec<i64> = published
            .iter()
            .filter(|p| p.0 == "Order/o0")
            .map(|p| p.1)
            .collect();
        eprintln!("o0: {o0:?}");
    }
    let repeats = assert_ordered(&published);
    assert_eq!(published.len() - repeats, 400, "every event published");
}

/// Counts the batches a relay has in the publisher at once.
struct PeakPublisher {
    inner: InMemoryPublisher,
    in_flight: AtomicUsize,
    peak: AtomicUsize,
}

#[async_trait::async_trait]
impl Publisher for PeakPublisher {
    async fn publish(&self, batch: &[Envelope]) -> Vec<Result<(), PublishError>> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        let results = self.inner.publish(batch).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        results
    }
}

/// One relay with four cycles in flight on disjoint shards, deleting rows on publish: every
/// event once, in order per aggregate; published rows are gone, except one whose in-process
/// handler has not run yet (the delivery worker still reads it), which is marked instead.
async fn concurrent_cycles_publish_once_in_order_and_delete_rows(t: TestDb) {
    let pairs = round_robin(100, 4_000);
    let written = insert_events(&t.db, &as_refs(&pairs)).await;
    // The first event has a delivery row still to run.
    exec(
        &t.db,
        &format!(
            "INSERT INTO outbox_delivery (event_id, handler, status, attempts, next_attempt_at, \
             created_at) VALUES ('{}', 'test::handler', 0, 0, 0, 0)",
            written[0].id
        ),
    )
    .await;
    let inner = InMemoryPublisher::new();
    inner.set_delay(Some(Duration::from_millis(20)));
    let publisher = Arc::new(PeakPublisher {
        inner: inner.clone(),
        in_flight: AtomicUsize::new(0),
        peak: AtomicUsize::new(0),
    });
    let relay = Relay::builder(t.connect_again().await, publisher.clone())
        .batch_size(100)
        .shards_per_claim(8)
        .concurrency(4)
        .completion(Completion::Delete)
        .fallback_poll(Duration::from_millis(200))
        .build();
    let running = RunningRelay::start(relay);
    wait_drained(&t.db, Duration::from_secs(60)).await;
    let stats = running.stop().await;
    let peak = publisher.peak.load(Ordering::SeqCst);
    eprintln!(
        "{:?}: {} cycles, peak {peak} batches in flight",
        t.backend,
        stats.cycles()
    );

    let published = published(&inner);
    assert_eq!(published.len(), 4_000, "every event published exactly once");
    assert_eq!(assert_ordered(&published), 0, "no duplicates");
    assert_eq!(stats.published(), 4_000);
    if t.backend == Backend::Sqlite {
        assert_eq!(peak, 1, "SQLite runs one cycle at a time");
    } else {
        assert!(peak > 1, "cycles never overlapped (peak {peak})");
    }
    assert_eq!(
        count(&t.db, "outbox", "1 = 1").await,
        1,
        "published rows deleted"
    );
    let kept = format!("status = 1 AND id = '{}'", written[0].id);
    assert_eq!(
        count(&t.db, "outbox", &kept).await,
        1,
        "the row with an unfinished delivery is kept, marked published"
    );
}

db_tests!(
    ten_thousand_events_drained_by_three_relays,
    concurrent_cycles_publish_once_in_order_and_delete_rows,
    failing_event_is_retried_then_dead_and_blocks_its_aggregate,
    rejected_is_dead_at_once_and_skip_releases_its_aggregate,
    intermittent_failures_retry_without_losing_order,
    graceful_shutdown_finishes_the_batch_and_releases_shards,
);

async fn graceful_shutdown_finishes_the_batch_and_releases_shards(t: TestDb) {
    let pairs = round_robin(5, 50);
    insert_events(&t.db, &as_refs(&pairs)).await;
    let publisher = InMemoryPublisher::new();
    publisher.set_delay(Some(Duration::from_millis(300)));
    let relay = Relay::builder(t.db.clone(), publisher.clone()).build();
    let running = RunningRelay::start(relay);
    let start = Instant::now();
    while publisher.calls() == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "relay never published"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Mid-batch: the publisher is still sleeping.
    let asked = Instant::now();
    let stats = running.stop().await;
    let took = asked.elapsed();
    assert!(took < Duration::from_secs(2), "shutdown took {took:?}");
    assert_eq!(
        stats.published(),
        50,
        "the batch in flight was finished and marked"
    );
    assert_eq!(pending_count(&t.db).await.expect("pending"), 0);

    // Nothing stays claimed: another connection can take every shard at once.
    if t.backend != Backend::Sqlite {
        let txn = t.db.begin().await.expect("begin");
        let free = txn
            .query_all_raw(Statement::from_string(
                txn.get_database_backend(),
                "SELECT shard FROM outbox_shard FOR UPDATE SKIP LOCKED",
            ))
            .await
            .expect("lock shards")
            .len();
        txn.rollback().await.expect("rollback");
        assert_eq!(free, 64);
    }

    // Idle: shutdown returns promptly as well.
    let relay = Relay::builder(t.db.clone(), publisher.clone())
        .fallback_poll(Duration::from_secs(30))
        .idle_backoff(Duration::from_secs(1), Duration::from_secs(10))
        .build();
    let running = RunningRelay::start(relay);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let asked = Instant::now();
    running.stop().await;
    assert!(
        asked.elapsed() < Duration::from_millis(500),
        "idle shutdown too slow"
    );
}

/// Two transactions on different aggregates; the one with the lower position commits later.
async fn out_of_order_commits(backend: Backend, test: &str) {
    let Some(t) = fresh(backend, test).await else {
        return;
    };
    let publisher = InMemoryPublisher::new();
    let relay = Relay::builder(t.db.clone(), publisher.clone()).build();

    let first = t.db.begin().await.expect("begin");
    let a = insert_events(&first, &[("Order", "early"), ("Order", "early")]).await;
    let second = t.db.begin().await.expect("begin");
    let b = insert_events(&second, &[("Order", "late"), ("Order", "late")]).await;
    second.commit().await.expect("commit second");

    let report = relay.run_once().await.expect("cycle");
    assert_eq!(report.published(), 2, "only the committed aggregate");
    first.commit().await.expect("commit first");
    let report = relay.run_once().await.expect("cycle");
    assert_eq!(report.published(), 2);

    let positions = |id: uuid::Uuid| {
        let db = t.db.clone();
        async move {
            db.query_one_raw(Statement::from_string(
                db.get_database_backend(),
                format!("SELECT position FROM outbox WHERE id = '{id}'"),
            ))
            .await
            .expect("query")
            .expect("row")
            .try_get_by_index::<i64>(0)
            .expect("position")
        }
    };
    assert!(
        positions(a[0].id).await < positions(b[0].id).await,
        "lower position committed later"
    );
    let published = published(&publisher);
    assert_eq!(published.len(), 4);
    assert_eq!(assert_ordered(&published), 0);
    assert_eq!(published[0].2, b[0].id);
    assert_eq!(published[2].2, a[0].id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_commits_postgres() {
    out_of_order_commits(Backend::Postgres, "relay::out_of_order_commits_postgres").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_commits_mariadb() {
    out_of_order_commits(Backend::MariaDb, "relay::out_of_order_commits_mariadb").await;
}

/// SQLite serializes writers, so positions always follow commit order there; what remains to
/// check is that rows of an open transaction are not published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_transaction_is_not_published_sqlite() {
    let Some(t) = fresh(
        Backend::Sqlite,
        "relay::open_transaction_is_not_published_sqlite",
    )
    .await
    else {
        return;
    };
    let publisher = InMemoryPublisher::new();
    let relay = Relay::builder(t.db.clone(), publisher.clone()).build();
    let open = t.db.begin().await.expect("begin");
    insert_events(&open, &[("Order", "x")]).await;
    let report = relay.run_once().await.expect("cycle");
    assert_eq!(report.claimed(), 0);
    open.commit().await.expect("commit");
    assert_eq!(relay.run_once().await.expect("cycle").published(), 1);
}

async fn cleanup_respects_state_retention_and_batch_size(t: TestDb) {
    use outbox_seaorm::Cleanup;

    // 25 old published, 5 recent published, 3 old pending, 2 old dead, 1 old published with a
    // pending in-process delivery, 1 old published with a done, old delivery.
    let pairs = round_robin(7, 37);
    let w = insert_events(&t.db, &as_refs(&pairs)).await;
    let now = outbox_seaorm::time::now_micros();
    let old = now - 2 * 3600 * 1_000_000;
    let ids = |range: std::ops::Range<usize>| {
        w[range]
            .iter()
            .map(|e| format!("'{}'", e.id))
            .collect::<Vec<_>>()
            .join(", ")
    };
    exec(
        &t.db,
        &format!(
            "UPDATE outbox SET status = 1, published_at = {old} WHERE id IN ({})",
            ids(0..25)
        ),
    )
    .await;
    exec(
        &t.db,
        &format!(
            "UPDATE outbox SET status = 1, published_at = {now} WHERE id IN ({})",
            ids(25..30)
        ),
    )
    .await;
    exec(
        &t.db,
        &format!(
            "UPDATE outbox SET created_at = {old} WHERE id IN ({})",
            ids(30..33)
        ),
    )
    .await;
    exec(
        &t.db,
        &format!(
            "UPDATE outbox SET status = 2, created_at = {old} WHERE id IN ({})",
            ids(33..35)
        ),
    )
    .await;
    exec(
        &t.db,
        &format!(
            "UPDATE outbox SET status = 1, published_at = {old} WHERE id IN ({})",
            ids(35..37)
        ),
    )
    .await;
    let (busy, done) = (w[35].id, w[36].id);
    exec(&t.db, &format!(
        "INSERT INTO outbox_delivery (event_id, handler, status, attempts, next_attempt_at, created_at, completed_at) \
         VALUES ('{busy}', 'h', 0, 0, {old}, {old}, NULL), ('{done}', 'h', 1, 0, {old}, {old}, {old})"
    )).await;
    for i in 0..15 {
        let at = if i < 12 { old } else { now };
        exec(&t.db, &format!(
            "INSERT INTO outbox_inbox (event_id, consumer, processed_at) VALUES ('{}', 'g', {at})",
            uuid::Uuid::now_v7()
        )).await;
    }

    let cleanup = Cleanup::builder(t.db.clone())
        .published_retention(Duration::from_secs(3600))
        .inbox_retention(Duration::from_secs(3600))
        .batch_size(10)
        .build();
    let first = cleanup.run_once().await.expect("cleanup");
    assert_eq!(first.outbox(), 10, "bounded by the batch size");
    assert_eq!(first.inbox(), 10);
    assert_eq!(first.deliveries(), 1);
    assert!(first.has_more());
    let mut total = first.outbox();
    loop {
        let report = cleanup.run_once().await.expect("cleanup");
        assert!(report.outbox() <= 10);
        total += report.outbox();
        if !report.has_more() {
            break;
        }
    }
    assert_eq!(
        total, 26,
        "the 25 old published rows and the one whose delivery is done"
    );
    assert_eq!(
        count(&t.db, "outbox", "status = 1").await,
        6,
        "recent ones and the busy one"
    );
    assert_eq!(count(&t.db, "outbox", &format!("id = '{busy}'")).await, 1);
    assert_eq!(
        count(&t.db, "outbox", "status = 0").await,
        3,
        "pending rows stay"
    );
    assert_eq!(
        count(&t.db, "outbox", "status = 2").await,
        2,
        "dead rows stay"
    );
    assert_eq!(
        count(&t.db, "outbox_delivery", "1 = 1").await,
        1,
        "the pending delivery stays"
    );
    assert_eq!(
        count(&t.db, "outbox_inbox", "1 = 1").await,
        3,
        "recent inbox rows stay"
    );
}

db_tests!(cleanup_respects_state_retention_and_batch_size);

/// A row that cannot become an envelope (bad metadata, written by hand or another tool) is
/// dead-lettered with the reason; it never stops the relay.
async fn unreadable_row_is_dead_lettered_with_its_reason(t: TestDb) {
    let w = insert_events(
        &t.db,
        &[("Order", "bad"), ("Order", "bad"), ("Order", "ok")],
    )
    .await;
    exec(
        &t.db,
        &format!(
            "UPDATE outbox SET metadata = 'not json' WHERE id = '{}'",
            w[0].id
        ),
    )
    .await;
    let publisher = InMemoryPublisher::new();
    let relay = Relay::builder(t.db.clone(), publisher.clone()).build();
    let report = relay.run_once().await.expect("cycle");
    assert_eq!(
        (report.published(), report.dead(), report.held()),
        (1, 1, 1)
    );
    assert_eq!(
        count(
            &t.db,
            "outbox",
            &format!(
                "id = '{}' AND status = 2 AND last_error LIKE '%metadata is not valid JSON%'",
                w[0].id
            )
        )
        .await,
        1
    );
    assert_eq!(
        publisher.published().count(),
        1,
        "only the other aggregate's event"
    );
    // Block: the second event of the aggregate waits for the first.
    assert_eq!(relay.run_once().await.expect("cycle").claimed(), 0);
}

db_tests!(unreadable_row_is_dead_lettered_with_its_reason);
