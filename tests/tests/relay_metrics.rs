//! The relay's metrics: counters for published, retried and dead-lettered events, gauges for
//! the backlog. One test per binary, since a `metrics` recorder is process-wide.

use std::time::{Duration, Instant};

use outbox_core::RetryPolicy;
use outbox_core::testing::InMemoryPublisher;
use outbox_seaorm::Relay;
use outbox_seaorm::relay::{dead_count, pending_count};
use outbox_tests::fixtures::insert_events;
use outbox_tests::{Backend, RunningRelay, fresh};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_reports_counters_and_backlog_gauges() {
    let values = outbox_tests::recorder::install();
    let Some(t) = fresh(Backend::Sqlite, "relay_metrics::counters_and_gauges").await else {
        return;
    };
    let w = insert_events(
        &t.db,
        &[
            ("Order", "a"),
            ("Order", "a"),
            ("Order", "a"),
            ("Order", "b"),
        ],
    )
    .await;
    let publisher = InMemoryPublisher::new();
    let (a2, b1) = (w[1].id, w[3].id);
    publisher.fail_matching(move |e| e.id() == a2, 1);
    publisher.reject_matching(move |e| e.id() == b1);
    let relay = Relay::builder(t.db.clone(), publisher.clone())
        .retry(
            RetryPolicy::default()
                .with_initial_delay(Duration::from_millis(20))
                .with_jitter(0.0),
        )
        .idle_backoff(Duration::from_millis(5), Duration::from_millis(20))
        .build();
    let running = RunningRelay::start(relay);
    let start = Instant::now();
    while pending_count(&t.db).await.expect("pending") > 0 {
        assert!(start.elapsed() < Duration::from_secs(10), "not drained");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    running.stop().await;
    assert_eq!(dead_count(&t.db).await.expect("dead"), 1);

    let values = values.lock().expect("metrics lock").clone();
    let get = |name: &str| values.get(name).copied();
    assert_eq!(get("outbox_relay_published_total"), Some(3.0), "{values:?}");
    assert_eq!(get("outbox_relay_retried_total"), Some(1.0), "{values:?}");
    assert_eq!(
        get("outbox_relay_dead_lettered_total"),
        Some(1.0),
        "{values:?}"
    );
    // Refreshed after the first cycle (then every few seconds): a#2 waits, a#3 is held.
    assert_eq!(get("outbox_pending"), Some(2.0), "{values:?}");
    let age = get("outbox_oldest_pending_age_seconds").expect("age gauge");
    assert!((0.0..60.0).contains(&age), "age {age}");
}
