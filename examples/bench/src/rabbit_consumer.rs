//! Scenario `rabbit` (consumer part): `RabbitConsumer` end to end (RabbitMQ → inbox → handler)
//! at several concurrencies, with a handler that waits 5 ms for its own I/O, like 4b for Kafka.

use std::time::{Duration, Instant};

use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::{Connection, ConnectionProperties};
use outbox_core::{Envelope, HandlerRegistry};
use outbox_rabbitmq::{RabbitConsumer, RabbitPublisher};

use crate::concurrency::{GROUP, KEYS, WAIT, WAITING, effects};
use crate::db::{BenchDb, connect};
use crate::model::OrderPlaced;
use crate::report::{Report, Section, num};
use crate::stats::median;
use crate::{BoxResult, Opts};

const EXCHANGE: &str = "outbox-bench-consume";
/// The concurrencies compared.
const CONCURRENCY: [usize; 3] = [1, 8, 32];

/// Events applied per second by a `RabbitConsumer` at `concurrency` draining `n` events of
/// [`KEYS`] aggregates from a fresh queue: from the first effect seen to the last.
async fn one(uri: &str, bench: &BenchDb, concurrency: usize, n: usize) -> BoxResult<f64> {
    bench.reset().await?;
    let queue = format!("outbox-bench-consume-{}", uuid::Uuid::now_v7().simple());
    let db = connect(&bench.url, 40).await?;
    let consumer = RabbitConsumer::builder(uri, GROUP, db, HandlerRegistry::new().with(WAITING))
        .exchange(EXCHANGE)
        .queue(&queue)
        .concurrency(concurrency)
        .build()
        .await?;
    let publisher = RabbitPublisher::builder(uri)
        .exchange(EXCHANGE)
        .build()
        .await?;
    let envelopes: Vec<Envelope> = (0..n)
        .map(|i| {
            let key = format!("order-{:03}", i % KEYS);
            Envelope::builder("OrderPlaced", "Order", key.clone())
                .sequence(i64::try_from(i / KEYS + 1).unwrap_or(i64::MAX))
                .payload(OrderPlaced::sized(&key, i).json())
                .build()
        })
        .collect();
    for chunk in envelopes.chunks(500) {
        for r in outbox_core::Publisher::publish(&publisher, chunk).await {
            r?;
        }
    }
    publisher.close().await;
    let dlq = consumer.dead_letter_queue().to_owned();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        consumer
            .run_until(async {
                let _ = stopped.await;
            })
            .await
    });
    let want = i64::try_from(n)?;
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut first: Option<(Instant, i64)> = None;
    let end = loop {
        let done = effects(&bench.db).await?;
        let now = Instant::now();
        if done > 0 && first.is_none() {
            first = Some((now, done));
        }
        if done >= want {
            break now;
        }
        if now > deadline || task.is_finished() {
            return Err(format!("rabbit consumer {concurrency}: {done} of {n} applied").into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let _ = stop.send(());
    let stats = task.await??;
    if stats.applied != u64::try_from(n)? {
        return Err(format!("rabbit consumer {concurrency}: {stats:?}, want {n} applied").into());
    }
    let admin = Connection::connect(uri, ConnectionProperties::default()).await?;
    let channel = admin.create_channel().await?;
    for q in [&queue, &dlq] {
        channel
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await?;
    }
    let _ = admin.close(200, "bench".into()).await;
    let (start, at_start) = first.unwrap_or((end, 0));
    let secs = end.duration_since(start).as_secs_f64().max(1e-3);
    Ok((want - at_start) as f64 / secs)
}

/// Runs the scenario and adds its table to `report`.
pub(crate) async fn run(opts: &Opts, bench: &BenchDb, report: &mut Report) -> BoxResult<()> {
    if bench.backend != crate::db::Backend::Postgres {
        // SQLite serializes writers: nothing to measure (as in 4b).
        return Ok(());
    }
    let uri = opts.amqp_url.as_str();
    let n = opts.scaled(1_200, 200);
    let mut rates: Vec<Vec<f64>> = CONCURRENCY.iter().map(|_| Vec::new()).collect();
    for r in 0..opts.runs {
        for k in 0..CONCURRENCY.len() {
            let i = (k + r) % CONCURRENCY.len();
            rates[i].push(one(uri, bench, CONCURRENCY[i], n).await?);
        }
        eprintln!(
            "rabbit consumer run {}: {}",
            r + 1,
            CONCURRENCY
                .iter()
                .zip(&rates)
                .map(|(c, rs)| format!("concurrency {c}: {:.0}/s", rs[r]))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let admin = Connection::connect(uri, ConnectionProperties::default()).await?;
    let channel = admin.create_channel().await?;
    channel
        .exchange_delete(EXCHANGE.into(), ExchangeDeleteOptions::default())
        .await?;
    let _ = admin.close(200, "bench".into()).await;
    let m: Vec<f64> = rates.iter().map(|rs| median(rs)).collect();
    let name = bench.backend.name();
    let speedup = m[1] / m[0];
    report.check(
        format!("{name}: RabbitMQ consumer, 5 ms handler with dedup, concurrency 8 vs 1"),
        format!("{speedup:.1}x"),
        ">= 5x",
        speedup >= 5.0,
    );
    report.sections.push(Section {
        title: format!("Consumer through RabbitMQ, {name}: events applied per second"),
        note: format!(
            "`RabbitConsumer` draining a backlog of {n} events of {KEYS} aggregates from one \
             durable queue, in order per aggregate, through the inbox (dedup on), default \
             `max_batch` and `max_buffered` (prefetch). The handler sleeps {} ms (its own I/O, \
             simulated) inside its transaction, then writes one effect row. Timed from the first \
             effect to the last; median of {} runs, interleaved.",
            WAIT.as_millis(),
            opts.runs
        ),
        header: vec!["contender", "events/s", "vs concurrency 1"],
        rows: CONCURRENCY
            .iter()
            .enumerate()
            .map(|(i, c)| {
                vec![
                    format!("5 ms handler, concurrency {c}"),
                    num(m[i]),
                    format!("{:.2}", m[i] / m[0]),
                ]
            })
            .collect(),
    });
    Ok(())
}
