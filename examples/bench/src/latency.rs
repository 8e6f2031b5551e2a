//! Scenario 3: delivery latency from commit to Kafka acknowledgement at a steady offered rate.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use outbox_core::{Envelope, HandlerRegistry, PublishError, Publisher};
use outbox_kafka::KafkaPublisher;
use outbox_seaorm::Outbox;
use outbox_seaorm::relay::Relay;
use uuid::Uuid;

use crate::db::{Backend, BenchDb, kafka};
use crate::model::order_with;
use crate::report::{Report, Section, ms, num};
use crate::stats::{Latency, median};
use crate::{BoxResult, Opts};

type Stamps = Arc<Mutex<HashMap<Uuid, Instant>>>;

/// Delegates to `KafkaPublisher` and stamps each acknowledged envelope when the batch's
/// delivery reports are in (the moment the relay may mark the rows published).
struct TimingPublisher {
    inner: KafkaPublisher,
    acks: Stamps,
}

#[async_trait]
impl Publisher for TimingPublisher {
    async fn publish(&self, batch: &[Envelope]) -> Vec<Result<(), PublishError>> {
        let results = self.inner.publish(batch).await;
        let now = Instant::now();
        let mut acks = self.acks.lock().unwrap_or_else(|p| p.into_inner());
        for (e, r) in batch.iter().zip(&results) {
            if r.is_ok() {
                acks.entry(e.id()).or_insert(now);
            }
        }
        results
    }
}

struct Run {
    offered: f64,
    delivered: usize,
    latency: Latency,
}

/// Saves before the measured ones, at the same rate.
const WARMUP: usize = 500;

/// Starts `count` saves of 1 event, one every `1 / rate` s, numbered from `first`; stamps each
/// commit in `commits`; returns when all have committed.
async fn offer(
    outbox: &Outbox,
    commits: &Stamps,
    first: usize,
    count: usize,
    rate: f64,
) -> BoxResult<()> {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut writers = Vec::with_capacity(count);
    for n in first..first + count {
        tick.tick().await;
        let outbox = outbox.clone();
        let commits = commits.clone();
        writers.push(tokio::spawn(async move {
            let mut order = order_with(n, 1);
            let id = order.events.as_slice()[0].id();
            outbox.save(&mut order).await?;
            let now = Instant::now();
            commits
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id, now);
            Ok::<_, outbox_seaorm::Error>(())
        }));
    }
    for w in writers {
        w.await??;
    }
    Ok(())
}

async fn one(opts: &Opts, bench: &BenchDb, secs: f64, rate: f64) -> BoxResult<Run> {
    bench.reset().await?;
    let (cluster, brokers) = kafka(opts.brokers.as_deref()).await?;
    let acks: Stamps = Arc::default();
    let commits: Stamps = Arc::default();
    let publisher = TimingPublisher {
        inner: crate::db::publisher(&brokers).build()?,
        acks: acks.clone(),
    };
    // The relay has its own pool, as in a service that runs it beside the request handlers:
    // queued saves must not make it wait for a connection.
    let relay_db = crate::db::connect(&bench.url, 8).await?;
    let mut relay = Relay::builder(relay_db.clone(), publisher);
    if let Some(cycles) = crate::db::env_knob("BENCH_RELAY_CONCURRENCY") {
        relay = relay.concurrency(cycles);
    }
    if let Some(shards) = crate::db::env_knob("BENCH_RELAY_SHARDS") {
        relay = relay.shards_per_claim(shards);
    }
    let relay = relay.build();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let relay_task = tokio::spawn(async move {
        relay
            .run_until(async {
                let _ = stop_rx.await;
            })
            .await
    });
    // Let the relay start listening before the first commit.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let outbox = Outbox::builder(bench.db.clone())
        .handlers(HandlerRegistry::new())
        .build();
    // Warm-up, not measured: the producer fetches metadata and its idempotent producer id, the
    // mock cluster creates the topic, the pools open their connections.
    offer(&outbox, &commits, 0, WARMUP, rate).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while acks.lock().unwrap_or_else(|p| p.into_inner()).len() < WARMUP && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    commits.lock().unwrap_or_else(|p| p.into_inner()).clear();
    acks.lock().unwrap_or_else(|p| p.into_inner()).clear();

    let total = (secs * rate).round() as usize;
    let start = Instant::now();
    offer(&outbox, &commits, WARMUP, total, rate).await?;
    let offered = total as f64 / start.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(30);
    while acks.lock().unwrap_or_else(|p| p.into_inner()).len() < total && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop_tx.send(());
    relay_task.await??;
    relay_db.close().await?;
    drop(cluster);
    let commits = commits.lock().unwrap_or_else(|p| p.into_inner());
    let acks = acks.lock().unwrap_or_else(|p| p.into_inner());
    let samples: Vec<u64> = commits
        .iter()
        .filter_map(|(id, c)| {
            acks.get(id)
                .map(|a| a.saturating_duration_since(*c).as_micros() as u64)
        })
        .collect();
    if std::env::var_os("BENCH_LATENCY_DUMP").is_some() {
        // Debugging aid: when did the slowest events commit (ms after the start)?
        let mut slow: Vec<(u64, u128)> = commits
            .iter()
            .filter_map(|(id, c)| {
                acks.get(id).map(|a| {
                    (
                        a.saturating_duration_since(*c).as_micros() as u64,
                        c.saturating_duration_since(start).as_millis(),
                    )
                })
            })
            .collect();
        slow.sort_unstable_by(|a, b| b.cmp(a));
        for (latency, at) in slow.iter().take(40) {
            eprintln!(
                "slow: {:.1} ms, committed at {at} ms",
                *latency as f64 / 1000.0
            );
        }
    }
    Ok(Run {
        offered,
        delivered: samples.len(),
        latency: Latency::of(samples),
    })
}

pub(crate) async fn run(opts: &Opts, bench: &BenchDb, report: &mut Report) -> BoxResult<()> {
    let rate = 1000.0;
    let secs = (10.0 * opts.scale).max(1.0);
    let mut runs = Vec::new();
    for r in 0..opts.runs {
        let run = one(opts, bench, secs, rate).await?;
        eprintln!(
            "latency {} run {}: offered {:.0}/s, delivered {}, p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms",
            bench.backend.name(),
            r + 1,
            run.offered,
            run.delivered,
            run.latency.p50 / 1000.0,
            run.latency.p99 / 1000.0,
            run.latency.p999 / 1000.0
        );
        runs.push(run);
    }
    let m = |f: fn(&Run) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
    let p99 = m(|r| r.latency.p99);
    let name = bench.backend.name();
    if bench.backend == Backend::Postgres {
        report.check(
            format!("{name}: delivery latency p99 at 1,000 events/s"),
            format!("{} ms", ms(p99)),
            "< 25 ms",
            p99 < 25_000.0,
        );
    }
    report.sections.push(Section {
        title: format!("3. Delivery latency, {name}: commit to Kafka acknowledgement"),
        note: format!(
            "A paced writer starts one `save` (1 event) every millisecond for {secs:.0} s, after \
             a warm-up of {WARMUP} saves at the same rate (not measured: the producer fetches \
             metadata and its idempotent producer id, the pools open connections); the \
             relay runs in the same process ({}), publishing through `KafkaPublisher` \
             (defaults: `linger.ms=0`, `acks=all`, idempotent). Latency runs from just after \
             `save` returned (commit) to the moment the publisher's batch had all its delivery \
             reports.",
            if bench.backend == Backend::Postgres {
                "woken by `LISTEN/NOTIFY`"
            } else {
                "polling with its idle backoff, 10 ms to 1 s"
            }
        ),
        header: vec![
            "offered events/s",
            "delivered",
            "mean ms",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
        ],
        rows: vec![vec![
            num(m(|r| r.offered)),
            num(m(|r| r.delivered as f64)),
            ms(m(|r| r.latency.mean)),
            ms(m(|r| r.latency.p50)),
            ms(p99),
            ms(m(|r| r.latency.p999)),
        ]],
    });
    Ok(())
}
