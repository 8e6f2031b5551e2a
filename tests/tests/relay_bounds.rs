//! The relay's bounds: a publisher that hangs cannot hold a cycle (and its shard locks) longer
//! than the publish timeout, events a publisher did not attempt cost no attempt, and a batch
//! larger than any backend's bind-parameter limit is recorded.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use outbox_core::testing::InMemoryPublisher;
use outbox_core::{Envelope, PublishError, Publisher, RetryPolicy};
use outbox_seaorm::relay::{Completion, Relay, dead_count, pending_count};
use outbox_tests::fixtures::{as_refs, count, insert_events, round_robin};
use outbox_tests::{Backend, RunningRelay, TestDb, db_tests, fresh};
use sea_orm::{ConnectionTrait, Statement, TransactionTrait};

/// How many shards another connection can lock right now (all 64 when no relay holds any).
async fn free_shards(t: &TestDb) -> usize {
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
    free
}

async fn hung_publisher_times_out_and_releases_the_shards(t: TestDb) {
    // Two aggregates, five events each.
    let pairs = round_robin(2, 10);
    insert_events(&t.db, &as_refs(&pairs)).await;
    let hung = InMemoryPublisher::new();
    hung.set_delay(Some(Duration::from_secs(3600)));
    let bound = Duration::from_millis(300);
    let relay = Relay::builder(t.db.clone(), hung.clone())
        .publish_timeout(bound)
        .retry(
            RetryPolicy::default()
                .with_initial_delay(Duration::from_millis(50))
                .with_jitter(0.0),
        )
        .build();

    let started = Instant::now();
    let report = tokio::time::timeout(Duration::from_secs(20), relay.run_once())
        .await
        .expect("the cycle ended although the publisher never answered")
        .expect("cycle");
    let took = started.elapsed();
    assert!(took >= bound, "gave up before the bound: {took:?}");
    assert!(took < Duration::from_secs(10), "cycle took {took:?}");
    assert_eq!(hung.calls(), 1);
    assert!(hung.published().is_empty());
    // The first event of each aggregate failed (retryable) and was charged an attempt; the
    // later ones stay pending behind it, uncharged.
    assert_eq!(report.published(), 0);
    assert_eq!(report.failed(), 2, "{report:?}");
    assert_eq!(report.dead(), 0, "{report:?}");
    assert_eq!(report.held(), 8, "{report:?}");
    assert_eq!(
        count(&t.db, "outbox", "attempts = 1 AND status = 0").await,
        2
    );
    assert_eq!(
        count(&t.db, "outbox", "attempts = 0 AND status = 0").await,
        8
    );
    assert_eq!(
        count(&t.db, "outbox", "last_error LIKE '%publish timeout%'").await,
        2
    );

    // The shards are free again: another connection locks all of them, and a second relay
    // with a working publisher takes the events.
    if t.backend != Backend::Sqlite {
        assert_eq!(free_shards(&t).await, 64);
    }
    let healthy = InMemoryPublisher::new();
    let second = RunningRelay::start(Relay::builder(t.db.clone(), healthy.clone()).build());
    let deadline = Instant::now() + Duration::from_secs(20);
    while pending_count(&t.db).await.expect("pending") > 0 {
        assert!(Instant::now() < deadline, "the second relay did not drain");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    second.stop().await;
    assert_eq!(healthy.published().count(), 10);
    for aggregate in ["o0", "o1"] {
        let sequences: Vec<i64> = healthy
            .published()
            .for_aggregate("Order", aggregate)
            .envelopes()
            .iter()
            .map(Envelope::sequence)
            .collect();
        assert_eq!(sequences, vec![1, 2, 3, 4, 5], "order of {aggregate}");
    }
}

/// Answers [`PublishError::NotAttempted`] for every envelope, as a publisher that could not try
/// any of them would.
#[derive(Debug)]
struct AttemptsNothing;

#[async_trait]
impl Publisher for AttemptsNothing {
    async fn publish(&self, batch: &[Envelope]) -> Vec<Result<(), PublishError>> {
        batch
            .iter()
            .map(|_| Err(PublishError::NotAttempted))
            .collect()
    }
}

async fn not_attempted_events_cost_no_attempt(t: TestDb) {
    let pairs = round_robin(3, 9);
    insert_events(&t.db, &as_refs(&pairs)).await;
    // One attempt only: a charged failure would be dead at once.
    let relay = Relay::builder(t.db.clone(), AttemptsNothing)
        .retry(RetryPolicy::default().with_max_attempts(1))
        .build();
    for _ in 0..3 {
        let report = relay.run_once().await.expect("cycle");
        assert_eq!(report.claimed(), 9);
        assert_eq!(report.failed(), 0, "{report:?}");
        assert_eq!(report.dead(), 0, "{report:?}");
        assert_eq!(report.held(), 9, "{report:?}");
    }
    assert_eq!(dead_count(&t.db).await.expect("dead"), 0);
    assert_eq!(
        count(&t.db, "outbox", "attempts = 0 AND status = 0").await,
        9
    );
    assert_eq!(count(&t.db, "outbox", "last_error IS NOT NULL").await, 0);

    // The same rows go out in order once a publisher takes them.
    let publisher = InMemoryPublisher::new();
    let relay = Relay::builder(t.db.clone(), publisher.clone()).build();
    assert_eq!(relay.run_once().await.expect("cycle").published(), 9);
}

db_tests!(
    hung_publisher_times_out_and_releases_the_shards,
    not_attempted_events_cost_no_attempt,
);

/// 70,000 rows in one batch: more positions than SQLite (32,766) or PostgreSQL (65,535) binds
/// in one statement.
const ABOVE_THE_BIND_LIMIT: usize = 70_000;

async fn batch_above_the_bind_limit_is_recorded(t: TestDb, completion: Completion) {
    let pairs = round_robin(1_000, ABOVE_THE_BIND_LIMIT);
    let txn = t.db.begin().await.expect("begin");
    insert_events(&txn, &as_refs(&pairs)).await;
    txn.commit().await.expect("commit");
    let publisher = InMemoryPublisher::new();
    let relay = Relay::builder(t.db.clone(), publisher.clone())
        .batch_size(ABOVE_THE_BIND_LIMIT)
        .shards_per_claim(64)
        .completion(completion)
        .build();
    let report = relay
        .run_once()
        .await
        .expect("a batch above the bind limit");
    assert_eq!(report.claimed(), ABOVE_THE_BIND_LIMIT);
    assert_eq!(report.published(), ABOVE_THE_BIND_LIMIT);
    assert_eq!(publisher.published().count(), ABOVE_THE_BIND_LIMIT);
    assert_eq!(pending_count(&t.db).await.expect("pending"), 0);
    let left = count(&t.db, "outbox", "1 = 1").await;
    match completion {
        Completion::Delete => assert_eq!(left, 0),
        _ => assert_eq!(
            count(&t.db, "outbox", "status = 1").await,
            i64::try_from(ABOVE_THE_BIND_LIMIT).expect("fits")
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_above_the_bind_limit_sqlite() {
    let test = concat!(module_path!(), "::batch_above_the_bind_limit_sqlite");
    if let Some(t) = fresh(Backend::Sqlite, test).await {
        batch_above_the_bind_limit_is_recorded(t, Completion::Mark).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_above_the_bind_limit_postgres() {
    let test = concat!(module_path!(), "::batch_above_the_bind_limit_postgres");
    if let Some(t) = fresh(Backend::Postgres, test).await {
        batch_above_the_bind_limit_is_recorded(t, Completion::Delete).await;
    }
}
