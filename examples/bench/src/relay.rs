//! Scenario 2 (and 6): draining a backlog into Kafka, each contender in its own child process.

use std::time::{Duration, Instant};

use outbox_seaorm::Completion;
use outbox_seaorm::relay::{Relay, pending_count};
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use sea_orm::sea_query::{Alias, Expr, Query};
use sea_orm::{ConnectionTrait, TransactionTrait, Value};
use serde::{Deserialize, Serialize};

use crate::db::{BenchDb, TOPIC, connect, env_knob, kafka, stmt};
use crate::model::OrderPlaced;
use crate::report::{Report, Section, num};
use crate::stats::{cpu_time, median, peak_rss_kib};
use crate::{BoxResult, Opts};

/// Arguments of `bench relay-child`.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct ChildArgs {
    /// raw, naive or ours.
    #[arg(long)]
    mode: String,
    /// The database holding the backlog.
    #[arg(long)]
    child_url: String,
    /// Kafka bootstrap servers.
    #[arg(long)]
    child_brokers: String,
    /// Stop after this many events (the naive relay only).
    #[arg(long, default_value_t = usize::MAX)]
    limit: usize,
    /// Stop after this many seconds (the naive relay only).
    #[arg(long, default_value_t = 3600.0)]
    budget_secs: f64,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy)]
struct ChildResult {
    events: u64,
    secs: f64,
    cpu_secs: f64,
    peak_rss_kib: u64,
}

const MODES: [(&str, &str); 4] = [
    ("raw", "raw rdkafka producer (ceiling)"),
    ("naive", "naive relay (1 row per transaction)"),
    ("ours", "our relay, defaults (`Relay` + `KafkaPublisher`)"),
    (
        "tuned",
        "our relay, 4 cycles in flight, rows deleted on publish",
    ),
];

/// Cycles in flight of the tuned relay (`RelayBuilder::concurrency`).
const TUNED_CONCURRENCY: usize = 4;

/// Writes `n` pending outbox rows: `n / 10` aggregates, 10 events each, interleaved.
async fn seed(bench: &BenchDb, n: usize) -> BoxResult<()> {
    let aggregates = (n / 10).max(1);
    let now = outbox_seaorm::time::now_micros();
    let txn = bench.db.begin().await?;
    let cols = [
        "id",
        "aggregatetype",
        "aggregateid",
        "type",
        "version",
        "sequence",
        "payload",
        "shard",
        "occurred_at",
        "created_at",
        "status",
        "attempts",
        "next_attempt_at",
    ];
    let mut i = 0;
    while i < n {
        let mut insert = Query::insert()
            .into_table(Alias::new("outbox"))
            .columns(cols.map(Alias::new))
            .to_owned();
        for j in i..(i + 1000).min(n) {
            let agg = format!("order-{:08}", j % aggregates);
            let seq = (j / aggregates + 1) as i64;
            insert.values_panic([
                Expr::val(uuid::Uuid::now_v7().to_string()),
                Expr::val("Order"),
                Expr::val(agg.clone()),
                Expr::val("OrderPlaced"),
                Expr::val(1i32),
                Expr::val(seq),
                Expr::val(OrderPlaced::sized(&agg, j).json()),
                Expr::val(outbox_seaorm::shard_of("Order", &agg)),
                Expr::val(now),
                Expr::val(now),
                Expr::val(0i16),
                Expr::val(0i32),
                Expr::val(now),
            ]);
        }
        txn.execute(&insert).await?;
        i += 1000;
    }
    txn.commit().await?;
    Ok(())
}

fn producer(brokers: &str) -> BoxResult<FutureProducer> {
    // The same settings as `KafkaPublisher`'s defaults.
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", "30000")
        .set("linger.ms", "0")
        .create()?)
}

/// `bench relay-child`: one contender, measured in this process.
pub(crate) async fn child(args: ChildArgs) -> BoxResult<()> {
    // Room for the tuned relay's cycles, its LISTEN and the backlog watcher.
    let db = connect(&args.child_url, 8).await?;
    let backend = db.get_database_backend();
    let (events, secs, cpu) = match args.mode.as_str() {
        "raw" => {
            let rows = db
                .query_all_raw(stmt(
                    backend,
                    "SELECT aggregateid, payload FROM outbox WHERE status = 0 ORDER BY position",
                    vec![],
                ))
                .await?;
            let mut messages = Vec::with_capacity(rows.len());
            for r in &rows {
                messages.push((
                    r.try_get_by_index::<String>(0)?,
                    r.try_get_by_index::<String>(1)?,
                ));
            }
            drop(rows);
            let producer = producer(&args.child_brokers)?;
            let (cpu0, t0) = (cpu_time(), Instant::now());
            let mut in_flight: std::collections::VecDeque<DeliveryFuture> = Default::default();
            let mut ok = 0u64;
            for (key, payload) in &messages {
                let mut record = FutureRecord::to(TOPIC).key(key).payload(payload);
                loop {
                    match producer.send_result(record) {
                        Ok(d) => {
                            in_flight.push_back(d);
                            break;
                        }
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                            record = back;
                            if let Some(d) = in_flight.pop_front() {
                                ok += u64::from(matches!(d.await, Ok(Ok(_))));
                            }
                        }
                        Err((e, _)) => return Err(e.into()),
                    }
                }
            }
            for d in in_flight {
                ok += u64::from(matches!(d.await, Ok(Ok(_))));
            }
            (ok, t0.elapsed(), cpu_time() - cpu0)
        }
        "naive" => {
            let producer = producer(&args.child_brokers)?;
            let lock = if backend == sea_orm::DbBackend::Postgres {
                " FOR UPDATE SKIP LOCKED"
            } else {
                ""
            };
            let select = format!(
                "SELECT position, aggregateid, payload FROM outbox WHERE status = 0 \
                 ORDER BY position LIMIT 1{lock}"
            );
            let budget = Duration::from_secs_f64(args.budget_secs);
            let (cpu0, t0) = (cpu_time(), Instant::now());
            let mut done = 0u64;
            while (done as usize) < args.limit && t0.elapsed() < budget {
                let txn = db.begin().await?;
                let Some(row) = txn.query_one_raw(stmt(backend, &select, vec![])).await? else {
                    txn.rollback().await?;
                    break;
                };
                let position: i64 = row.try_get_by_index(0)?;
                let key: String = row.try_get_by_index(1)?;
                let payload: String = row.try_get_by_index(2)?;
                producer
                    .send(
                        FutureRecord::to(TOPIC).key(&key).payload(&payload),
                        Timeout::After(Duration::from_secs(30)),
                    )
                    .await
                    .map_err(|(e, _)| e)?;
                txn.execute_raw(stmt(
                    backend,
                    "UPDATE outbox SET status = 1, published_at = ? WHERE position = ?",
                    vec![
                        Value::from(outbox_seaorm::time::now_micros()),
                        position.into(),
                    ],
                ))
                .await?;
                txn.commit().await?;
                done += 1;
            }
            (done, t0.elapsed(), cpu_time() - cpu0)
        }
        "ours" | "tuned" => {
            let before = pending_count(&db).await?;
            let publisher = crate::db::publisher(&args.child_brokers).build()?;
            let mut builder = Relay::builder(db.clone(), publisher);
            if args.mode == "tuned" {
                builder = builder
                    .concurrency(TUNED_CONCURRENCY)
                    .completion(Completion::Delete);
            }
            if let Some(rows) = env_knob("BENCH_RELAY_BATCH") {
                builder = builder.batch_size(rows);
            }
            if let Some(shards) = env_knob("BENCH_RELAY_SHARDS") {
                builder = builder.shards_per_claim(shards);
            }
            if let Some(cycles) = env_knob("BENCH_RELAY_CONCURRENCY") {
                builder = builder.concurrency(cycles);
            }
            let relay = builder.build();
            let (cpu0, t0) = (cpu_time(), Instant::now());
            // Runs until the backlog is gone: a cheap count every 20 ms stops it, and
            // `run_until` then finishes the cycles in flight.
            let watcher = db.clone();
            relay
                .run_until(async move {
                    loop {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        if matches!(pending_count(&watcher).await, Ok(0)) {
                            break;
                        }
                    }
                })
                .await?;
            let (secs, cpu) = (t0.elapsed(), cpu_time() - cpu0);
            let left = pending_count(&db).await?;
            (before - left, secs, cpu)
        }
        other => return Err(format!("unknown mode {other:?}").into()),
    };
    let result = ChildResult {
        events,
        secs: secs.as_secs_f64(),
        cpu_secs: cpu.as_secs_f64(),
        peak_rss_kib: peak_rss_kib(),
    };
    println!("RESULT {}", serde_json::to_string(&result)?);
    Ok(())
}

async fn spawn_child(
    bench: &BenchDb,
    mode: &str,
    brokers: &str,
    limit: usize,
    budget: f64,
) -> BoxResult<ChildResult> {
    let exe = std::env::current_exe()?;
    let out = tokio::process::Command::new(exe)
        .args(["relay-child", "--mode", mode, "--child-url", &bench.url])
        .args(["--child-brokers", brokers])
        .args(["--limit", &limit.to_string()])
        .args(["--budget-secs", &budget.to_string()])
        .stderr(std::process::Stdio::inherit())
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .ok_or_else(|| format!("relay-child {mode} failed ({}): {stdout}", out.status))?;
    Ok(serde_json::from_str(line)?)
}

pub(crate) async fn run(opts: &Opts, bench: &BenchDb, report: &mut Report) -> BoxResult<()> {
    let n = opts.scaled(100_000, 500);
    let naive_limit = opts.scaled(5_000, 50);
    let naive_budget = (20.0 * opts.scale).max(2.0);
    let mut results: Vec<Vec<ChildResult>> = MODES.iter().map(|_| Vec::new()).collect();
    for r in 0..opts.runs {
        for (i, (mode, label)) in MODES.iter().enumerate() {
            bench.reset().await?;
            seed(bench, n).await?;
            if bench.backend == crate::db::Backend::Postgres {
                bench.db.execute_unprepared("VACUUM ANALYZE outbox").await?;
            }
            let (cluster, brokers) = kafka(opts.brokers.as_deref()).await?;
            let res = spawn_child(bench, mode, &brokers, naive_limit, naive_budget).await?;
            drop(cluster);
            if *mode != "naive" && res.events != n as u64 {
                return Err(format!("{label} delivered {} of {n} events", res.events).into());
            }
            eprintln!(
                "relay {} run {}: {label}: {} events in {:.2} s ({:.0}/s), {:.2} CPU s, {} MiB peak",
                bench.backend.name(),
                r + 1,
                res.events,
                res.secs,
                res.events as f64 / res.secs,
                res.cpu_secs,
                res.peak_rss_kib / 1024
            );
            results[i].push(res);
        }
    }
    let rate = |rs: &[ChildResult]| {
        median(
            &rs.iter()
                .map(|r| r.events as f64 / r.secs)
                .collect::<Vec<_>>(),
        )
    };
    let per_cpu = |rs: &[ChildResult]| {
        median(
            &rs.iter()
                .map(|r| r.events as f64 / r.cpu_secs.max(1e-3))
                .collect::<Vec<_>>(),
        )
    };
    let rss =
        |rs: &[ChildResult]| median(&rs.iter().map(|r| r.peak_rss_kib as f64).collect::<Vec<_>>());
    let rates: Vec<f64> = results.iter().map(|r| rate(r)).collect();
    let sqlite = bench.backend == crate::db::Backend::Sqlite;
    let label = |i: usize| -> String {
        if sqlite && MODES[i].0 == "tuned" {
            // SQLite runs one cycle at a time whatever the setting.
            "our relay, rows deleted on publish".to_owned()
        } else {
            MODES[i].1.to_owned()
        }
    };
    let mut rows = Vec::new();
    for (i, rs) in results.iter().enumerate() {
        rows.push(vec![
            label(i),
            num(median(
                &rs.iter().map(|r| r.events as f64).collect::<Vec<_>>(),
            )),
            num(rates[i]),
            num(per_cpu(rs)),
            format!("{:.2}", rates[i] / rates[0]),
            format!("{:.1}", rss(rs) / 1024.0),
        ]);
    }
    let name = bench.backend.name();
    for (i, which) in [(2, "defaults"), (3, "tuned")] {
        let vs_raw = rates[i] / rates[0];
        let vs_naive = rates[i] / rates[1];
        report.check(
            format!("{name}: relay drain, ours ({which}) vs raw producer"),
            format!("{vs_raw:.2}x"),
            ">= 0.5x",
            vs_raw >= 0.5,
        );
        report.check(
            format!("{name}: relay drain, ours ({which}) vs naive relay"),
            format!("{vs_naive:.1}x"),
            ">= 10x",
            vs_naive >= 10.0,
        );
    }
    report.sections.push(Section {
        title: format!(
            "2 and 6. Relay drain of a {} -event backlog into Kafka, {name}",
            num(n as f64)
        ),
        note: format!(
            "{} aggregates, 10 events each. Each contender runs alone in a child process \
             (`bench relay-child`); events/s is wall time from the first send to the last \
             acknowledgement (and mark, for the relays); CPU is that child's user + system time \
             (librdkafka threads included, the database server and the mock cluster not). The \
             raw producer reads all messages into memory first (not timed) and only sends them \
             (no headers, no marking): the ceiling. The naive relay (claim 1 row `FOR UPDATE SKIP \
             LOCKED`, produce, await the ack, mark, commit) is stopped after {} events or {:.0} s, \
             whichever comes first. Our relay runs `Relay::run_until` until the backlog is \
             gone, once with the builder's defaults (two cycles in flight, 500 rows, 16 of 64 \
             shards per claim, rows marked published) and once tuned for draining \
             (`concurrency(4)`: four cycles in flight on disjoint shards; \
             `completion(Completion::Delete)`: rows deleted instead of marked). Peak RSS is the \
             child's `VmHWM` (item 6).",
            num((n / 10).max(1) as f64),
            num(naive_limit as f64),
            naive_budget
        ),
        header: vec![
            "contender",
            "events",
            "events/s",
            "events/CPU-s",
            "vs raw",
            "peak RSS MiB",
        ],
        rows,
    });
    Ok(())
}
