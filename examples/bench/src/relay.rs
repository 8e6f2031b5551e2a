//! Scenario 2 (and 6): draining a backlog into Kafka, each contender in its own child process.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use outbox_core::Envelope;
use outbox_seaorm::log_relay::{MESSAGE_PREFIX, message};

use outbox_seaorm::Completion;
use outbox_seaorm::relay::{Relay, pending_count};
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use sea_orm::sea_query::{Alias, Expr, Query};
use sea_orm::{ConnectionTrait, TransactionTrait, Value};
use serde::{Deserialize, Serialize};

use crate::db::{Backend, BenchDb, LOG_SLOT, Running, TOPIC, Tap, connect, env_knob, kafka, stmt};
use crate::model::OrderPlaced;
use crate::report::{Report, Section, num};
use crate::stats::{cpu_time, median, peak_rss_kib, process_cpu_time};
use crate::{BoxResult, Opts};

/// Arguments of `bench relay-child`.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct ChildArgs {
    /// raw, raw-headers, naive, ours, tuned, log-rows, log-messages or log-unsent.
    #[arg(long)]
    mode: String,
    /// The database holding the backlog.
    #[arg(long)]
    child_url: String,
    /// Kafka bootstrap servers.
    #[arg(long)]
    child_brokers: String,
    /// Stop after this many events (the naive relay; the log relays stop once they reach it).
    #[arg(long, default_value_t = usize::MAX)]
    limit: usize,
    /// Stop after this many seconds (the naive relay and the log relays).
    #[arg(long, default_value_t = 3600.0)]
    budget_secs: f64,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy)]
struct ChildResult {
    events: u64,
    secs: f64,
    cpu_secs: f64,
    peak_rss_kib: u64,
    /// The log relays: CPU time of the walsender that streamed the slot to the child (the
    /// server's decoding), when the database runs on this machine.
    #[serde(default)]
    server_cpu_secs: Option<f64>,
}

/// How the backlog of a contender is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Backlog {
    /// Pending `outbox` rows: what the table relays claim (and what the raw producer reads).
    Pending,
    /// Settled `outbox` rows (`Capture::LogTable`), committed after the log relay's slot was
    /// created: only the log relay sees them.
    Captured,
    /// Logical decoding messages (`Capture::Messages`), no rows, committed after the slot.
    Messages,
}

/// One contender: the child's `--mode`, its label, its backlog.
struct Mode {
    name: &'static str,
    label: &'static str,
    backlog: Backlog,
}

const MODES: [Mode; 8] = [
    Mode {
        name: "raw",
        label: "raw rdkafka producer (ceiling)",
        backlog: Backlog::Pending,
    },
    Mode {
        name: "raw-headers",
        label: "raw rdkafka producer, the relay's headers",
        backlog: Backlog::Pending,
    },
    Mode {
        name: "naive",
        label: "naive relay (1 row per transaction)",
        backlog: Backlog::Pending,
    },
    Mode {
        name: "ours",
        label: "our relay, defaults (`Relay` + `KafkaPublisher`)",
        backlog: Backlog::Pending,
    },
    Mode {
        name: "tuned",
        label: "our relay, 4 cycles in flight, rows deleted on publish",
        backlog: Backlog::Pending,
    },
    Mode {
        name: "log-rows",
        label: "log relay, captured rows (`LogRelay` + `KafkaPublisher`)",
        backlog: Backlog::Captured,
    },
    Mode {
        name: "log-messages",
        label: "log relay, logical decoding messages",
        backlog: Backlog::Messages,
    },
    Mode {
        name: "log-unsent",
        label: "log relay, logical decoding messages, publisher that sends nothing",
        backlog: Backlog::Messages,
    },
];

/// Cycles in flight of the tuned relay (`RelayBuilder::concurrency`).
const TUNED_CONCURRENCY: usize = 4;

/// Events per seeding statement, each its own transaction: the log relay reads a transaction
/// once its commit is decoded, so a backlog of many commits is what it meets after saves (one
/// commit per save would be smaller still).
const SEED_TXN: usize = 100;

/// `outbox.status` of a pending row and of a captured one (`Capture::LogTable`).
const PENDING: i16 = 0;
const CAPTURED: i16 = 3;

/// Writes a backlog of `n` events: `n / 10` aggregates, 10 events each, interleaved, in
/// transactions of [`SEED_TXN`] events.
pub(crate) async fn seed(bench: &BenchDb, n: usize, backlog: Backlog) -> BoxResult<()> {
    let aggregates = (n / 10).max(1);
    let now = outbox_seaorm::time::now_micros();
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
    let status = if backlog == Backlog::Captured {
        CAPTURED
    } else {
        PENDING
    };
    for first in (0..n).step_by(SEED_TXN) {
        let events = (first..(first + SEED_TXN).min(n)).map(|j| {
            let agg = format!("order-{:08}", j % aggregates);
            let seq = (j / aggregates + 1) as i64;
            let payload = OrderPlaced::sized(&agg, j).json();
            (agg, seq, payload)
        });
        if backlog == Backlog::Messages {
            let mut contents: Vec<Value> = Vec::with_capacity(SEED_TXN);
            for (agg, seq, payload) in events {
                let envelope = Envelope::builder("OrderPlaced", "Order", agg)
                    .sequence(seq)
                    .payload(payload)
                    .build();
                contents.push(message::encode(&envelope)?.into());
            }
            let sql = format!(
                "SELECT pg_logical_emit_message(true, '{MESSAGE_PREFIX}', content) \
                 FROM (VALUES {}) AS t (content)",
                vec!["(?)"; contents.len()].join(", ")
            );
            bench
                .db
                .execute_raw(stmt(bench.db.get_database_backend(), &sql, contents))
                .await?;
            continue;
        }
        let mut insert = Query::insert()
            .into_table(Alias::new("outbox"))
            .columns(cols.map(Alias::new))
            .to_owned();
        for (agg, seq, payload) in events {
            insert.values_panic([
                Expr::val(uuid::Uuid::now_v7().to_string()),
                Expr::val("Order"),
                Expr::val(agg.clone()),
                Expr::val("OrderPlaced"),
                Expr::val(1i32),
                Expr::val(seq),
                Expr::val(payload),
                Expr::val(outbox_seaorm::shard_of("Order", &agg)),
                Expr::val(now),
                Expr::val(now),
                Expr::val(status),
                Expr::val(0i32),
                Expr::val(now),
            ]);
        }
        bench.db.execute(&insert).await?;
    }
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

/// Publishes one message to [`TOPIC`] before the clock starts, so that no contender's time
/// holds the producer's start: its idempotent producer id and the topic's metadata, which
/// librdkafka waits for before it sends anything (about 0.45 s in some runs, at random).
async fn warm_up(publisher: &dyn outbox_core::Publisher) -> BoxResult<()> {
    let envelope = Envelope::builder("WarmedUp", "Order", "warm-up")
        .topic(Some(TOPIC.to_owned()))
        .build();
    match publisher.publish(&[envelope]).await.pop() {
        Some(Ok(())) => Ok(()),
        other => Err(format!("warm-up publish failed: {other:?}").into()),
    }
}

/// [`warm_up`] for a bare producer.
async fn warm_up_producer(producer: &FutureProducer) -> BoxResult<()> {
    let record: FutureRecord<'_, str, str> = FutureRecord::to(TOPIC).key("warm-up").payload("{}");
    match producer.send_result(record) {
        Ok(delivery) => match delivery.await {
            Ok(Ok(_)) => Ok(()),
            other => Err(format!("warm-up send failed: {other:?}").into()),
        },
        Err((e, _)) => Err(e.into()),
    }
}

/// `bench relay-child`: one contender, measured in this process.
pub(crate) async fn child(args: ChildArgs) -> BoxResult<()> {
    // Room for the tuned relay's cycles, its LISTEN and the backlog watcher.
    let db = connect(&args.child_url, 8).await?;
    let backend = db.get_database_backend();
    let mut server_cpu = None;
    let (events, secs, cpu) = match args.mode.as_str() {
        "raw" | "raw-headers" => {
            let columns = "aggregateid, payload, id, aggregatetype, type, sequence";
            let rows = db
                .query_all_raw(stmt(
                    backend,
                    &format!("SELECT {columns} FROM outbox WHERE status = 0 ORDER BY position"),
                    vec![],
                ))
                .await?;
            let mut messages = Vec::with_capacity(rows.len());
            for r in &rows {
                let (key, payload) = (
                    r.try_get_by_index::<String>(0)?,
                    r.try_get_by_index::<String>(1)?,
                );
                // The headers the relay's publisher writes for this row, built before the
                // clock starts (as the raw producer's messages are).
                let headers = if args.mode == "raw-headers" {
                    let id: String = r.try_get_by_index(2)?;
                    let envelope = Envelope::builder(
                        r.try_get_by_index::<String>(4)?,
                        r.try_get_by_index::<String>(3)?,
                        key.clone(),
                    )
                    .id(id.parse()?)
                    .sequence(r.try_get_by_index::<i64>(5)?)
                    .payload(payload.clone())
                    .build();
                    let source = format!("/outbox/{}", envelope.aggregate_type());
                    Some(outbox_kafka::headers::encode(&envelope, &source))
                } else {
                    None
                };
                messages.push((key, payload, headers));
            }
            drop(rows);
            let producer = producer(&args.child_brokers)?;
            warm_up_producer(&producer).await?;
            let (cpu0, t0) = (cpu_time(), Instant::now());
            let mut in_flight: std::collections::VecDeque<DeliveryFuture> = Default::default();
            let mut ok = 0u64;
            for (key, payload, headers) in messages {
                let mut record = FutureRecord::to(TOPIC).key(&key).payload(&payload);
                if let Some(headers) = headers {
                    record = record.headers(headers);
                }
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
            warm_up_producer(&producer).await?;
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
            warm_up(&publisher).await?;
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
        "log-rows" | "log-messages" | "log-unsent" => {
            let (events, secs, cpu, walsender) = log_drain(&args, &db).await?;
            server_cpu = walsender;
            (events, secs, cpu)
        }
        other => return Err(format!("unknown mode {other:?}").into()),
    };
    let result = ChildResult {
        events,
        secs: secs.as_secs_f64(),
        cpu_secs: cpu.as_secs_f64(),
        peak_rss_kib: peak_rss_kib(),
        server_cpu_secs: server_cpu.map(|d: Duration| d.as_secs_f64()),
    };
    println!("RESULT {}", serde_json::to_string(&result)?);
    Ok(())
}

/// The log relay contenders: reads the slot (created and filled by the parent) until
/// `args.limit` events are acknowledged; the time is taken at the last acknowledgement (the
/// slot's confirmation follows within a status interval, not waited for). Also returns the CPU
/// time of the walsender streaming the slot, read from `/proc` when the server runs here.
async fn log_drain(
    args: &ChildArgs,
    db: &sea_orm::DatabaseConnection,
) -> BoxResult<(u64, Duration, Duration, Option<Duration>)> {
    let acked = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&acked);
    let publisher = Tap {
        inner: if args.mode == "log-unsent"
            || std::env::var("BENCH_LOG_PUBLISHER").as_deref() == Ok("discard")
        {
            Box::new(crate::db::Discard)
        } else {
            Box::new(crate::db::publisher(&args.child_brokers).build()?)
        },
        on_batch: Box::new(move |_, results| {
            let ok = results.iter().filter(|r| r.is_ok()).count();
            counter.fetch_add(ok as u64, Ordering::Relaxed);
        }),
    };
    warm_up(publisher.inner.as_ref()).await?;
    let mut builder = crate::db::log_relay(&args.child_url, publisher);
    if let Some(events) = env_knob("BENCH_RELAY_BATCH") {
        builder = builder.batch_size(events);
    }
    if let Some(lanes) = env_knob("BENCH_RELAY_CONCURRENCY") {
        builder = builder.concurrency(lanes);
    }
    if let Some(events) = env_knob("BENCH_LOG_MAX_BUFFERED") {
        builder = builder.max_buffered(events);
    }
    let relay = builder.build();
    let (cpu0, t0) = (cpu_time(), Instant::now());
    let running = Running::spawn(|stop| async move {
        relay.run_until(stop).await?;
        Ok(())
    });
    let target = args.limit as u64;
    let budget = Duration::from_secs_f64(args.budget_secs);
    // The walsender's process id, once the relay has started streaming (one query per wait
    // step until then; its CPU time from its start is read at the end).
    let mut walsender: Option<String> = None;
    while acked.load(Ordering::Relaxed) < target && t0.elapsed() < budget && !running.is_finished()
    {
        if walsender.is_none() {
            walsender = walsender_pid(db).await?;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let (secs, cpu) = (t0.elapsed(), cpu_time() - cpu0);
    if walsender.is_none() {
        walsender = walsender_pid(db).await?;
    }
    let server = walsender.and_then(|pid| process_cpu_time(&pid));
    running.stop().await?;
    Ok((acked.load(Ordering::Relaxed), secs, cpu, server))
}

/// The process id of the walsender streaming the bench's slot, if one is.
async fn walsender_pid(db: &sea_orm::DatabaseConnection) -> BoxResult<Option<String>> {
    let row = db
        .query_one_raw(stmt(
            db.get_database_backend(),
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = ?",
            vec![LOG_SLOT.into()],
        ))
        .await?;
    Ok(row
        .and_then(|r| r.try_get_by_index::<Option<i32>>(0).ok().flatten())
        .map(|pid| pid.to_string()))
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

/// One contender's run: a fresh backlog (after the slot, for a log relay), a fresh cluster, the
/// child. The slot and publication of a log relay are dropped again whatever happened.
async fn measure(
    opts: &Opts,
    bench: &BenchDb,
    mode: &Mode,
    n: usize,
    naive: (usize, f64),
) -> BoxResult<ChildResult> {
    bench.reset().await?;
    let log = mode.backlog != Backlog::Pending;
    if log {
        crate::db::log_setup(bench).await?;
    }
    let result = async {
        seed(bench, n, mode.backlog).await?;
        if bench.backend == Backend::Postgres {
            bench.db.execute_unprepared("VACUUM ANALYZE outbox").await?;
        }
        let (cluster, brokers) = kafka(opts.brokers.as_deref()).await?;
        let (limit, budget) = if mode.name == "naive" {
            naive
        } else {
            (n, 600.0)
        };
        let res = spawn_child(bench, mode.name, &brokers, limit, budget).await;
        drop(cluster);
        res
    }
    .await;
    if log {
        crate::db::log_teardown(bench).await?;
    }
    result
}

pub(crate) async fn run(opts: &Opts, bench: &BenchDb, report: &mut Report) -> BoxResult<()> {
    let n = opts.scaled(100_000, 500);
    let naive_limit = opts.scaled(5_000, 50);
    let naive_budget = (20.0 * opts.scale).max(2.0);
    let sqlite = bench.backend == Backend::Sqlite;
    // The log relays read PostgreSQL's write-ahead log: not measured on SQLite.
    // Profiling knob: `BENCH_RELAY_ONLY=raw,log-messages` runs only those contenders.
    let only: Option<Vec<String>> = std::env::var("BENCH_RELAY_ONLY")
        .ok()
        .map(|v| v.split(',').map(|s| s.trim().to_owned()).collect());
    let measured = |mode: &Mode| {
        !(sqlite && mode.backlog != Backlog::Pending)
            && only
                .as_ref()
                .is_none_or(|o| o.iter().any(|m| m == mode.name))
    };
    let mut results: Vec<Vec<ChildResult>> = MODES.iter().map(|_| Vec::new()).collect();
    for r in 0..opts.runs {
        for (i, mode) in MODES.iter().enumerate().filter(|(_, m)| measured(m)) {
            let res = measure(opts, bench, mode, n, (naive_limit, naive_budget)).await?;
            let label = mode.label;
            if mode.name != "naive" && res.events != n as u64 {
                return Err(format!("{label} delivered {} of {n} events", res.events).into());
            }
            eprintln!(
                "relay {} run {}: {label}: {} events in {:.2} s ({:.0}/s), {:.2} CPU s, {} MiB peak, \
                 walsender {:?} CPU s",
                bench.backend.name(),
                r + 1,
                res.events,
                res.secs,
                res.events as f64 / res.secs,
                res.cpu_secs,
                res.peak_rss_kib / 1024,
                res.server_cpu_secs
            );
            results[i].push(res);
        }
    }
    let of = |rs: &[ChildResult], f: fn(&ChildResult) -> f64| {
        median(&rs.iter().map(f).collect::<Vec<_>>())
    };
    let rates: Vec<f64> = results
        .iter()
        .map(|rs| of(rs, |r| r.events as f64 / r.secs))
        .collect();
    let label = |i: usize| -> String {
        if sqlite && MODES[i].name == "tuned" {
            // SQLite runs one cycle at a time whatever the setting.
            "our relay, rows deleted on publish".to_owned()
        } else {
            MODES[i].label.to_owned()
        }
    };
    let mut rows = Vec::new();
    for (i, rs) in results.iter().enumerate() {
        if !measured(&MODES[i]) {
            let why = if sqlite && MODES[i].backlog != Backlog::Pending {
                "n/a: PostgreSQL only"
            } else {
                "n/a: not selected (`BENCH_RELAY_ONLY`)"
            };
            let mut row = vec![label(i), why.to_owned()];
            row.resize(7, "n/a".to_owned());
            rows.push(row);
            continue;
        }
        let server: Vec<f64> = rs.iter().filter_map(|r| r.server_cpu_secs).collect();
        rows.push(vec![
            label(i),
            num(of(rs, |r| r.events as f64)),
            num(rates[i]),
            num(of(rs, |r| r.events as f64 / r.cpu_secs.max(1e-3))),
            if server.len() == rs.len() && !server.is_empty() {
                format!("{:.2}", median(&server))
            } else {
                "n/a".to_owned()
            },
            format!("{:.2}", rates[i] / rates[0]),
            format!("{:.1}", of(rs, |r| r.peak_rss_kib as f64) / 1024.0),
        ]);
    }
    let name = bench.backend.name();
    let at = |mode: &str| MODES.iter().position(|m| m.name == mode).unwrap_or(0);
    let raw_measured = measured(&MODES[0]);
    for (i, which) in [(at("ours"), "defaults"), (at("tuned"), "tuned")] {
        if !(raw_measured && measured(&MODES[i]) && measured(&MODES[at("naive")])) {
            continue;
        }
        let vs_raw = rates[i] / rates[0];
        let vs_naive = rates[i] / rates[at("naive")];
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
    for (i, mode) in MODES.iter().enumerate() {
        // The publisher that sends nothing shows the log's own pace: no target.
        if mode.backlog == Backlog::Pending
            || mode.name == "log-unsent"
            || !measured(mode)
            || !raw_measured
        {
            continue;
        }
        let vs_raw = rates[i] / rates[0];
        report.check(
            format!("{name}: relay drain, {} vs raw producer", mode.label),
            format!("{vs_raw:.2}x"),
            ">= 0.5x",
            vs_raw >= 0.5,
        );
    }
    report.sections.push(Section {
        title: format!(
            "2 and 6. Relay drain of a {} -event backlog into Kafka, {name}",
            num(n as f64)
        ),
        note: format!(
            "{} aggregates, 10 events each, committed {SEED_TXN} events per transaction. Each \
             contender runs alone in a child process \
             (`bench relay-child`); events/s is wall time from the first send to the last \
             acknowledgement (and mark, for the relays); CPU is that child's user + system time \
             (librdkafka threads included, the database server and the mock cluster not). The \
             raw producer reads all messages into memory first (not timed) and only sends them \
             (no headers, no marking): the ceiling. The second raw producer sends the same \
             messages with the headers the relays' `KafkaPublisher` writes (15 here: ids, \
             CloudEvents; built before the clock starts): what the wire format itself costs \
             librdkafka. The naive relay (claim 1 row `FOR UPDATE SKIP \
             LOCKED`, produce, await the ack, mark, commit) is stopped after {} events or {:.0} s, \
             whichever comes first. Our relay runs `Relay::run_until` until the backlog is \
             gone, once with the builder's defaults (two cycles in flight, 500 rows, 16 of 64 \
             shards per claim, rows marked published) and once tuned for draining \
             (`concurrency(4)`: four cycles in flight on disjoint shards; \
             `completion(Completion::Delete)`: rows deleted instead of marked). The log relay \
             (`LogRelay`, defaults: 4 lanes, 500 events per publish, 20,000 buffered) reads a \
             backlog committed after its slot was created: once `outbox` rows written settled \
             (status captured, as `Capture::LogTable` writes them; nothing to mark), once \
             logical decoding messages (`pg_logical_emit_message`, as `Capture::Messages` \
             emits them; no rows); timed from its start (connection and replication start \
             included) to the last acknowledgement; the server decodes the log meanwhile: its \
             CPU is not in the child's, but the walsender's CPU time for the run is shown \
             (read from `/proc`, n/a when the database runs elsewhere). The third log relay \
             reads the messages with a publisher that acknowledges at once and sends nothing: \
             the pace of the server's decoding and the relay's reading alone. {} Peak RSS is the child's `VmHWM` (item 6).",
            num((n / 10).max(1) as f64),
            num(naive_limit as f64),
            naive_budget,
            if sqlite {
                "On SQLite there is no log relay: it reads PostgreSQL's write-ahead log."
            } else {
                "The slot and publication are dropped after each log relay run."
            }
        ),
        header: vec![
            "contender",
            "events",
            "events/s",
            "events/CPU-s",
            "walsender CPU-s",
            "vs raw",
            "peak RSS MiB",
        ],
        rows,
    });
    Ok(())
}
