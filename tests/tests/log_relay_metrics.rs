//! The log relay's metrics: the slot's lag and confirmed position as gauges, the publish
//! counters. One test per binary, since a `metrics` recorder is process-wide.

use std::time::{Duration, Instant};

use outbox_core::testing::InMemoryPublisher;
use outbox_seaorm::log_relay::{LogRelay, slot_status};
use outbox_tests::fixtures::{as_refs, insert_events, round_robin};
use outbox_tests::{Backend, database_name, fresh};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_slot_lag_and_confirmed_position() {
    let values = outbox_tests::recorder::install();
    let test = "log_relay_metrics::lag";
    let Some(db) = fresh(Backend::Postgres, test).await else {
        return;
    };
    let slot = database_name(test, Backend::Postgres);
    let publisher = InMemoryPublisher::new();
    let relay = LogRelay::builder(db.url.clone(), publisher.clone())
        .slot(&slot)
        .publication(&slot)
        .status_interval(Duration::from_millis(100))
        .build();
    relay.setup().await.expect("slot");
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move {
        relay
            .run_until(async move {
                let _ = stopped.wait_for(|s| *s).await;
            })
            .await
    });
    let written = insert_events(&db.db, &as_refs(&round_robin(3, 30))).await;
    let get = |name: &str| values.lock().expect("metrics").get(name).copied();
    let start = Instant::now();
    loop {
        let confirmed = slot_status(&db.db, &slot)
            .await
            .unwrap()
            .and_then(|s| s.confirmed_lsn_bytes);
        let reported = get("outbox_log_confirmed_lsn");
        // The gauges are refreshed every 5 s: wait for one that shows the published events.
        if get("outbox_relay_published_total") == Some(written.len() as f64)
            && reported.is_some()
            && reported.map(|r| r as u64) == confirmed
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "gauges not reported: {:?}",
            values.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let lag = get("outbox_log_slot_lag_bytes").expect("lag gauge");
    assert!((0.0..(16.0 * 1024.0 * 1024.0)).contains(&lag), "lag {lag}");
    let _ = stop.send(true);
    task.await.unwrap().unwrap();
}
