//! Scenario 4b: `KafkaConsumer` end to end (Kafka → inbox → handler) at several concurrencies,
//! with a handler that waits 5 ms for its own I/O and with one that does not wait.

use std::time::{Duration, Instant};

use outbox_core::{BoxFuture, Envelope, EventContext, Handler, HandlerError, HandlerRegistry};
use outbox_kafka::{KafkaConfig, KafkaConsumer, KafkaConsumerBuilder, provision_topics};
use outbox_seaorm::TransactionExt;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};

use crate::db::{BenchDb, PARTITIONS, connect, publisher};
use crate::model::OrderPlaced;
use crate::report::{Report, Section, num};
use crate::stats::median;
use crate::{BoxResult, Opts};

pub(crate) const GROUP: &str = "bench-consume";
/// Keys (aggregates) the events are spread over.
pub(crate) const KEYS: usize = 200;
/// The simulated I/O of the waiting handler.
pub(crate) const WAIT: Duration = Duration::from_millis(5);

/// Writes one effect row through the handler's transaction.
async fn effect(envelope: &Envelope, ctx: &EventContext<'_>) -> Result<(), HandlerError> {
    let txn = ctx.transaction()?;
    txn.execute_raw(Statement::from_sql_and_values(
        txn.get_database_backend(),
        "INSERT INTO bench_effects (event_id, order_id) VALUES ($1, $2)",
        [
            envelope.id().to_string().into(),
            envelope.aggregate_id().to_owned().into(),
        ],
    ))
    .await?;
    Ok(())
}

fn waiting<'a>(
    envelope: &'a Envelope,
    ctx: &'a EventContext<'a>,
) -> BoxFuture<'a, Result<(), HandlerError>> {
    Box::pin(async move {
        tokio::time::sleep(WAIT).await;
        effect(envelope, ctx).await
    })
}

fn not_waiting<'a>(
    envelope: &'a Envelope,
    ctx: &'a EventContext<'a>,
) -> BoxFuture<'a, Result<(), HandlerError>> {
    Box::pin(effect(envelope, ctx))
}

pub(crate) const WAITING: Handler = Handler::new(
    "bench::waiting",
    "OrderPlaced",
    1,
    None,
    Some(GROUP),
    waiting,
);
const NOT_WAITING: Handler = Handler::new(
    "bench::not_waiting",
    "OrderPlaced",
    1,
    None,
    Some(GROUP),
    not_waiting,
);

#[derive(Clone, Copy)]
struct Contender {
    label: &'static str,
    handler: Handler,
    concurrency: usize,
    wait: bool,
}

const CONTENDERS: [Contender; 5] = [
    Contender {
        label: "5 ms handler, concurrency 1",
        handler: WAITING,
        concurrency: 1,
        wait: true,
    },
    Contender {
        label: "5 ms handler, concurrency 8",
        handler: WAITING,
        concurrency: 8,
        wait: true,
    },
    Contender {
        label: "5 ms handler, concurrency 32",
        handler: WAITING,
        concurrency: 32,
        wait: true,
    },
    Contender {
        label: "no-wait handler, concurrency 1",
        handler: NOT_WAITING,
        concurrency: 1,
        wait: false,
    },
    Contender {
        label: "no-wait handler, default concurrency (8)",
        handler: NOT_WAITING,
        concurrency: KafkaConsumerBuilder::DEFAULT_CONCURRENCY,
        wait: false,
    },
];

struct Kafka {
    cluster: Option<MockCluster<'static, DefaultProducerContext>>,
    brokers: String,
}

impl Kafka {
    async fn new(brokers: Option<&str>) -> BoxResult<Kafka> {
        Ok(match brokers {
            Some(b) => Kafka {
                cluster: None,
                brokers: b.to_owned(),
            },
            None => {
                let cluster = MockCluster::new(1)?;
                let brokers = cluster.bootstrap_servers();
                Kafka {
                    cluster: Some(cluster),
                    brokers,
                }
            }
        })
    }

    /// A fresh topic of [`PARTITIONS`] partitions holding `n` events over [`KEYS`] keys, in
    /// order per key.
    async fn backlog(&self, n: usize) -> BoxResult<String> {
        let topic = format!("bench-consume-{}", uuid::Uuid::now_v7().simple());
        match &self.cluster {
            Some(cluster) => cluster.create_topic(&topic, PARTITIONS, 1)?,
            None => {
                provision_topics(&KafkaConfig::new(&self.brokers), &[&topic], PARTITIONS, 1)
                    .await?;
            }
        }
        let publisher = publisher(&self.brokers).build()?;
        let envelopes: Vec<Envelope> = (0..n)
            .map(|i| {
                let key = format!("order-{:03}", i % KEYS);
                Envelope::builder("OrderPlaced", "Order", key.clone())
                    .sequence(i64::try_from(i / KEYS + 1).unwrap_or(i64::MAX))
                    .payload(OrderPlaced::sized(&key, i).json())
                    .topic(Some(topic.clone()))
                    .build()
            })
            .collect();
        for chunk in envelopes.chunks(500) {
            for r in outbox_core::Publisher::publish(&publisher, chunk).await {
                r?;
            }
        }
        Ok(topic)
    }
}

pub(crate) async fn effects(db: &DatabaseConnection) -> BoxResult<i64> {
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT COUNT(*) FROM bench_effects",
        ))
        .await?;
    Ok(row.map_or(Ok(0), |r| r.try_get_by_index::<i64>(0))?)
}

/// Events applied per second by one consumer of `contender` draining `n` events: from the
/// first effect seen to the last (the group join before is not counted).
async fn one(bench: &BenchDb, kafka: &Kafka, contender: Contender, n: usize) -> BoxResult<f64> {
    bench.reset().await?;
    let topic = kafka.backlog(n).await?;
    let db = connect(&bench.url, 40).await?;
    let consumer = KafkaConsumer::builder(
        kafka.brokers.clone(),
        GROUP,
        db,
        HandlerRegistry::new().with(contender.handler),
    )
    .topics([topic])
    .concurrency(contender.concurrency)
    .build()
    .await?;
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
            return Err(format!("{}: {done} of {n} applied", contender.label).into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let _ = stop.send(());
    let stats = task.await??;
    if stats.applied != u64::try_from(n)? {
        return Err(format!("{}: {stats:?}, want {n} applied", contender.label).into());
    }
    let (start, at_start) = first.unwrap_or((end, 0));
    let secs = end.duration_since(start).as_secs_f64().max(1e-3);
    Ok((want - at_start) as f64 / secs)
}

pub(crate) async fn run(opts: &Opts, bench: &BenchDb, report: &mut Report) -> BoxResult<()> {
    if bench.backend != crate::db::Backend::Postgres {
        // SQLite serializes writers: a handler waiting inside its transaction holds every
        // other key back, so there is no concurrency to measure.
        return Ok(());
    }
    let kafka = Kafka::new(opts.brokers.as_deref()).await?;
    let n_wait = opts.scaled(1_200, 200);
    let n_plain = opts.scaled(4_000, 400);
    let size = |c: &Contender| if c.wait { n_wait } else { n_plain };
    let mut rates: Vec<Vec<f64>> = CONTENDERS.iter().map(|_| Vec::new()).collect();
    for r in 0..opts.runs {
        for k in 0..CONTENDERS.len() {
            let i = (k + r) % CONTENDERS.len();
            let c = CONTENDERS[i];
            rates[i].push(one(bench, &kafka, c, size(&c)).await?);
        }
        eprintln!(
            "consumer concurrency run {}: {}",
            r + 1,
            CONTENDERS
                .iter()
                .zip(&rates)
                .map(|(c, rs)| format!("{}: {:.0}/s", c.label, rs[r]))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let m: Vec<f64> = rates.iter().map(|rs| median(rs)).collect();
    let name = bench.backend.name();
    let speedup = m[2] / m[0];
    report.check(
        format!("{name}: consumer, 5 ms handler with dedup, concurrency 32 vs 1"),
        format!("{speedup:.1}x"),
        ">= 10x",
        speedup >= 10.0,
    );
    let plain = m[4] / m[3];
    report.check(
        format!("{name}: consumer, no-wait handler with dedup, default concurrency vs 1"),
        format!("{plain:.2}x"),
        ">= 0.9x",
        plain >= 0.9,
    );
    report.sections.push(Section {
        title: format!("4b. Consumer through Kafka, {name}: events applied per second"),
        note: format!(
            "`KafkaConsumer` draining a backlog of a {PARTITIONS}-partition topic, {KEYS} keys, \
             in order per key, through the inbox (`Inbox::process`/`process_batch`, dedup on), \
             default `max_batch` and `max_buffered`. The 5 ms handler sleeps 5 ms (its own I/O, \
             simulated) inside its transaction, then writes one effect row; the no-wait handler \
             only writes the row. {n_wait} events for the 5 ms handler, {n_plain} for the \
             no-wait one; timed from the first effect to the last (the group join is not \
             counted)."
        ),
        header: vec!["contender", "events/s", "vs concurrency 1"],
        rows: CONTENDERS
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let base = if c.wait { m[0] } else { m[3] };
                vec![c.label.to_owned(), num(m[i]), format!("{:.2}", m[i] / base)]
            })
            .collect(),
    });
    Ok(())
}
