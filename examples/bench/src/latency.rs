//! Scenario 3: delivery latency from commit to Kafka acknowledgement at a steady offered rate.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outbox_core::{Envelope, PublishError, Publisher};
use outbox_seaorm::relay::Relay;
use outbox_seaorm::{Capture, Outbox};
use uuid::Uuid;

use crate::db::{Backend, BenchDb, Running, kafka};
use crate::model::{envelope, order_with};
use crate::report::{Report, Section, ms, num};
use crate::stats::{Latency, median};
use crate::{BoxResult, Opts};

type Stamps = Arc<Mutex<HashMap<Uuid, Instant>>>;

/// Who publishes what the saves commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Contender {
    /// No database and no relay: the same `KafkaPublisher` publishing each event the moment it
    /// is made, at the same pace. What the broker and librdkafka take by themselves (the floor).
    Publisher,
    /// The table relay (`Relay`), saves writing pending rows.
    Table,
    /// The log relay (`LogRelay`), saves in this capture mode.
    Log(Capture),
}

impl Contender {
    fn label(self) -> &'static str {
        match self {
            Contender::Publisher => "`KafkaPublisher` alone, no database (floor)",
            Contender::Table => "table relay (`Relay`), `Capture::Table`",
            Contender::Log(Capture::Messages) => "log relay (`LogRelay`), `Capture::Messages`",
            Contender::Log(_) => "log relay (`LogRelay`), `Capture::LogTable`",
        }
    }

    fn is_log(self) -> bool {
        matches!(self, Contender::Log(_))
    }
}

const CONTENDERS: [Contender; 4] = [
    Contender::Publisher,
    Contender::Table,
    Contender::Log(Capture::LogTable),
    Contender::Log(Capture::Messages),
];

/// The contender's publisher: `KafkaPublisher`, stamping each event in `handed` when a batch is
/// handed to it and in `acks` when the batch's delivery reports are in (the moment a relay may
/// mark or confirm it).
struct Stamping {
    inner: outbox_kafka::KafkaPublisher,
    handed: Stamps,
    acks: Stamps,
}

#[async_trait::async_trait]
impl Publisher for Stamping {
    async fn publish(&self, batch: &[Envelope]) -> Vec<Result<(), PublishError>> {
        stamp_all(&self.handed, batch.iter().map(Envelope::id));
        let results = self.inner.publish(batch).await;
        let acked = batch.iter().zip(&results).filter(|(_, r)| r.is_ok());
        stamp_all(&self.acks, acked.map(|(e, _)| e.id()));
        results
    }
}

/// Stamps `ids` with the time now, keeping an earlier stamp (a retried event's first).
fn stamp_all(stamps: &Stamps, ids: impl Iterator<Item = Uuid>) {
    let now = Instant::now();
    let mut stamps = stamps.lock().unwrap_or_else(|p| p.into_inner());
    for id in ids {
        stamps.entry(id).or_insert(now);
    }
}

/// Starts the contender's relay in a task (for the log relay, its slot first).
async fn start_relay(
    bench: &BenchDb,
    contender: Contender,
    publisher: Stamping,
) -> BoxResult<Running> {
    if contender.is_log() {
        crate::db::log_setup(bench).await?;
        let mut relay = crate::db::log_relay(&bench.url, publisher);
        if let Some(lanes) = crate::db::env_knob("BENCH_RELAY_CONCURRENCY") {
            relay = relay.concurrency(lanes);
        }
        let relay = relay.build();
        return Ok(Running::spawn(|stop| async move {
            relay.run_until(stop).await?;
            Ok(())
        }));
    }
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
    Ok(Running::spawn(|stop| async move {
        relay.run_until(stop).await?;
        relay_db.close().await?;
        Ok(())
    }))
}

struct Run {
    offered: f64,
    delivered: usize,
    /// From commit to the broker's acknowledgement.
    latency: Latency,
    /// From commit to the moment the relay handed the event to the publisher.
    handed: Latency,
}

/// Saves before the measured ones, at the same rate.
const WARMUP: usize = 500;

/// Starts `emit(n)` for `n` in `first..first + count`, one every `1 / rate` s, each in its own
/// task; returns when all have finished.
async fn offer<F, Fut>(first: usize, count: usize, rate: f64, emit: F) -> BoxResult<()>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = BoxResult<()>> + Send + 'static,
{
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::with_capacity(count);
    for n in first..first + count {
        tick.tick().await;
        tasks.push(tokio::spawn(emit(n)));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// What one contender's writer does: `save` an order of 1 event and stamp its commit, or (the
/// floor) stamp an event and hand it straight to the publisher.
#[derive(Clone)]
enum Writer {
    Save(Outbox),
    Publish(Arc<Stamping>),
}

impl Writer {
    /// Offers `count` events numbered from `first` at `rate` per second, stamping each event's
    /// start in `commits` (after the save's commit, or just before the publish).
    async fn offer(
        &self,
        commits: &Stamps,
        first: usize,
        count: usize,
        rate: f64,
    ) -> BoxResult<()> {
        offer(first, count, rate, |n| {
            let (writer, commits) = (self.clone(), Arc::clone(commits));
            async move {
                match writer {
                    Writer::Save(outbox) => {
                        let mut order = order_with(n, 1);
                        let id = order.events.as_slice()[0].id();
                        outbox.save(&mut order).await?;
                        stamp_all(&commits, std::iter::once(id));
                    }
                    Writer::Publish(publisher) => {
                        let event = envelope(n);
                        stamp_all(&commits, std::iter::once(event.id()));
                        if let Some(Err(e)) =
                            publisher.publish(std::slice::from_ref(&event)).await.pop()
                        {
                            return Err(e.to_string().into());
                        }
                    }
                }
                Ok(())
            }
        })
        .await
    }
}

async fn one(
    opts: &Opts,
    bench: &BenchDb,
    contender: Contender,
    secs: f64,
    rate: f64,
) -> BoxResult<Run> {
    bench.reset().await?;
    let (cluster, brokers) = kafka(opts.brokers.as_deref()).await?;
    let acks: Stamps = Arc::default();
    let handed: Stamps = Arc::default();
    let commits: Stamps = Arc::default();
    let publisher = Stamping {
        inner: crate::db::publisher(&brokers).build()?,
        handed: Arc::clone(&handed),
        acks: Arc::clone(&acks),
    };
    let (relay, writer) = if contender == Contender::Publisher {
        (None, Writer::Publish(Arc::new(publisher)))
    } else {
        let relay = start_relay(bench, contender, publisher).await?;
        // Let the relay start listening before the first commit.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let capture = match contender {
            Contender::Log(capture) => capture,
            _ => Capture::Table,
        };
        let outbox = crate::db::outbox(&bench.db, capture);
        (Some(relay), Writer::Save(outbox))
    };
    // Warm-up, not measured: the producer fetches metadata and its idempotent producer id, the
    // mock cluster creates the topic, the pools open their connections.
    writer.offer(&commits, 0, WARMUP, rate).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while acks.lock().unwrap_or_else(|p| p.into_inner()).len() < WARMUP && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for stamps in [&commits, &handed, &acks] {
        stamps.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    let total = (secs * rate).round() as usize;
    let start = Instant::now();
    writer.offer(&commits, WARMUP, total, rate).await?;
    let offered = total as f64 / start.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(30);
    while acks.lock().unwrap_or_else(|p| p.into_inner()).len() < total && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Some(relay) = relay {
        relay.stop().await?;
    }
    drop(writer);
    if contender.is_log() {
        crate::db::log_teardown(bench).await?;
    }
    drop(cluster);
    let commits = commits.lock().unwrap_or_else(|p| p.into_inner());
    let handed = handed.lock().unwrap_or_else(|p| p.into_inner());
    let acks = acks.lock().unwrap_or_else(|p| p.into_inner());
    let since_commit = |until: &HashMap<Uuid, Instant>| -> Vec<u64> {
        commits
            .iter()
            .filter_map(|(id, c)| {
                until
                    .get(id)
                    .map(|t| t.saturating_duration_since(*c).as_micros() as u64)
            })
            .collect()
    };
    let samples = since_commit(&acks);
    let to_hand_over = since_commit(&handed);
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
        handed: Latency::of(to_hand_over),
    })
}

pub(crate) async fn run(opts: &Opts, bench: &BenchDb, report: &mut Report) -> BoxResult<()> {
    let rate = 1000.0;
    let secs = (10.0 * opts.scale).max(1.0);
    // The log relay reads PostgreSQL's write-ahead log; the floor needs no database, so it runs
    // once, beside the PostgreSQL contenders.
    let contenders: Vec<Contender> = CONTENDERS
        .into_iter()
        .filter(|c| bench.backend == Backend::Postgres || *c == Contender::Table)
        .collect();
    let mut runs: Vec<Vec<Run>> = contenders.iter().map(|_| Vec::new()).collect();
    for r in 0..opts.runs {
        for (i, contender) in contenders.iter().enumerate() {
            let run = one(opts, bench, *contender, secs, rate).await?;
            eprintln!(
                "latency {} run {}: {}: offered {:.0}/s, delivered {}, p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, p99 to hand-over {:.2} ms",
                bench.backend.name(),
                r + 1,
                contender.label(),
                run.offered,
                run.delivered,
                run.latency.p50 / 1000.0,
                run.latency.p99 / 1000.0,
                run.latency.p999 / 1000.0,
                run.handed.p99 / 1000.0
            );
            runs[i].push(run);
        }
    }
    let name = bench.backend.name();
    let mut rows = Vec::new();
    for (contender, runs) in contenders.iter().zip(&runs) {
        let m = |f: fn(&Run) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
        let p99 = m(|r| r.latency.p99);
        match contender {
            Contender::Publisher => {}
            Contender::Table if bench.backend == Backend::Postgres => report.check(
                format!("{name}: delivery latency p99 at 1,000 events/s"),
                format!("{} ms", ms(p99)),
                "< 25 ms",
                p99 < 25_000.0,
            ),
            Contender::Table => {}
            Contender::Log(_) => report.check(
                format!(
                    "{name}: delivery latency p99 at 1,000 events/s, {}",
                    contender.label()
                ),
                format!("{} ms", ms(p99)),
                "<= 15 ms",
                p99 <= 15_000.0,
            ),
        }
        rows.push(vec![
            contender.label().to_owned(),
            num(m(|r| r.offered)),
            num(m(|r| r.delivered as f64)),
            ms(m(|r| r.latency.mean)),
            ms(m(|r| r.latency.p50)),
            ms(p99),
            ms(m(|r| r.latency.p999)),
            ms(m(|r| r.handed.p50)),
            ms(m(|r| r.handed.p99)),
        ]);
    }
    report.sections.push(Section {
        title: format!("3. Delivery latency, {name}: commit to Kafka acknowledgement"),
        note: format!(
            "A paced writer starts one `save` (1 event) every millisecond for {secs:.0} s, after \
             a warm-up of {WARMUP} saves at the same rate (not measured: the producer fetches \
             metadata and its idempotent producer id, the pools open connections); the \
             relay runs in the same process, publishing through `KafkaPublisher` \
             (defaults: `linger.ms=0`, `acks=all`, idempotent). Latency runs from just after \
             `save` returned (commit) to the moment the publisher's batch had all its delivery \
             reports; \"to hand-over\" runs from the commit to the moment the relay handed \
             the event to the publisher (the rest is the broker's). The floor hands each event straight to the same publisher at the same \
             pace, with no database and no relay (latency from the hand-over to the \
             acknowledgement): what the broker and librdkafka take by themselves; it has no \
             target. The table relay is {}.{}",
            if bench.backend == Backend::Postgres {
                "woken by `LISTEN/NOTIFY`"
            } else {
                "polling with its idle backoff, 10 ms to 1 s"
            },
            if bench.backend == Backend::Postgres {
                " The log relay (`LogRelay`, defaults: 4 lanes, 500 events per publish) streams \
                 its slot, created before the warm-up and dropped after the run; the saves \
                 write settled rows (`Capture::LogTable`) or logical decoding messages \
                 (`Capture::Messages`)."
            } else {
                " No log relay on SQLite."
            }
        ),
        header: vec![
            "contender",
            "offered events/s",
            "delivered",
            "mean ms",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "to hand-over p50 ms",
            "to hand-over p99 ms",
        ],
        rows,
    });
    Ok(())
}
