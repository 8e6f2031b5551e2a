//! Scenario 1: the write path, 8 concurrent clients.

use std::time::Instant;

use outbox_core::AggregateRoot;
use outbox_core::testing::InMemoryPublisher;
use outbox_seaorm::Capture;
use sea_orm::{ConnectionTrait, EntityTrait, IntoActiveModel, TransactionTrait, Value};

use crate::db::{BenchDb, Running, stmt};
use crate::model::{order, order_with, vorder, vorder_with};
use crate::report::{Report, Section, ms, num};
use crate::stats::{Latency, cpu_time, median, postgres_cpu_time};
use crate::{BoxResult, Opts};

const CLIENTS: usize = 8;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    Insert,
    InsertTxn,
    /// A new aggregate with this many events.
    Save(usize),
    /// A new versioned aggregate (`#[aggregate(version)]`) with this many events.
    SaveVersioned(usize),
    /// An existing aggregate changed, with one event (its row and `outbox_sequence` row exist).
    Update,
    /// An existing versioned aggregate at version 1 changed, with one event: saved where the
    /// stored version is still 1.
    UpdateVersioned,
    /// A new aggregate (versioned or not) with one event, saved in a log relay's capture mode;
    /// with `read`, a log relay reads the slot meanwhile (the server decodes as the saves
    /// commit), otherwise the slot exists but nobody reads it.
    Captured {
        capture: Capture,
        versioned: bool,
        read: bool,
    },
}

impl Variant {
    fn label(self) -> String {
        let events = |n: usize| {
            if n == 1 {
                "1 event".to_owned()
            } else {
                format!("{n} events")
            }
        };
        match self {
            Variant::Insert => "plain SeaORM insert (baseline)".into(),
            Variant::InsertTxn => "insert in an explicit transaction".into(),
            Variant::Save(n) => format!("`Outbox::save`, {}", events(n)),
            Variant::SaveVersioned(n) => format!("`Outbox::save`, versioned, {}", events(n)),
            Variant::Update => "`Outbox::save`, update, 1 event".into(),
            Variant::UpdateVersioned => "`Outbox::save`, versioned update, 1 event".into(),
            Variant::Captured {
                capture,
                versioned,
                read,
            } => format!(
                "`Outbox::save`, {}1 event, `Capture::{capture:?}`{}",
                if versioned { "versioned, " } else { "" },
                if read {
                    ", slot read by a log relay"
                } else {
                    ""
                }
            ),
        }
    }

    fn capture(self) -> Capture {
        match self {
            Variant::Captured { capture, .. } => capture,
            _ => Capture::Table,
        }
    }

    /// Whether a log relay reads a slot during the run.
    fn reads_slot(self) -> bool {
        matches!(self, Variant::Captured { read: true, .. })
    }

    fn events(self) -> usize {
        match self {
            Variant::Save(k) | Variant::SaveVersioned(k) => k,
            Variant::Update | Variant::UpdateVersioned | Variant::Captured { .. } => 1,
            Variant::Insert | Variant::InsertTxn => 0,
        }
    }
}

/// What one client writes in one transaction.
enum Work {
    Plain(order::Model),
    Versioned(vorder::Model),
}

/// Rows per seeding `INSERT` (well under SQLite's bind-parameter limit).
const SEED_CHUNK: usize = 500;

/// The work of every client: new aggregates, or for the update contenders existing ones (their
/// rows written beforehand, not timed) changed with one event each.
async fn prepare(
    bench: &BenchDb,
    variant: Variant,
    per_client: usize,
) -> BoxResult<Vec<Vec<Work>>> {
    let events = variant.events();
    let mut work: Vec<Vec<Work>> = Vec::with_capacity(CLIENTS);
    for c in 0..CLIENTS {
        let items = (0..per_client).map(|i| {
            let n = c * per_client + i;
            match variant {
                Variant::SaveVersioned(_)
                | Variant::UpdateVersioned
                | Variant::Captured {
                    versioned: true, ..
                } => Work::Versioned(vorder_with(n, events)),
                _ => Work::Plain(order_with(n, events)),
            }
        });
        work.push(items.collect());
    }
    match variant {
        Variant::Update => {
            let rows: Vec<&order::Model> = work
                .iter()
                .flatten()
                .filter_map(|w| match w {
                    Work::Plain(o) => Some(o),
                    Work::Versioned(_) => None,
                })
                .collect();
            for chunk in rows.chunks(SEED_CHUNK) {
                let models = chunk.iter().map(|o| {
                    let mut seeded = (*o).clone();
                    seeded.amount_cents -= 1;
                    seeded.events = Default::default();
                    seeded.into_active_model()
                });
                order::Entity::insert_many(models)
                    .exec_without_returning(&bench.db)
                    .await?;
                // The aggregate saved once before: its sequence row is at 1.
                let mut values: Vec<Value> = Vec::with_capacity(chunk.len() * 3);
                for o in chunk {
                    values.extend([
                        order::Model::AGGREGATE_TYPE.into(),
                        o.id.clone().into(),
                        1i64.into(),
                    ]);
                }
                let sql = format!(
                    "INSERT INTO outbox_sequence (aggregatetype, aggregateid, last_sequence) \
                     VALUES {}",
                    vec!["(?, ?, ?)"; chunk.len()].join(", ")
                );
                bench
                    .db
                    .execute_raw(stmt(bench.db.get_database_backend(), &sql, values))
                    .await?;
            }
        }
        Variant::UpdateVersioned => {
            for client in &mut work {
                for w in client.iter_mut() {
                    if let Work::Versioned(o) = w {
                        // As loaded after one save: version 1.
                        o.version = 1;
                    }
                }
            }
            let rows: Vec<&vorder::Model> = work
                .iter()
                .flatten()
                .filter_map(|w| match w {
                    Work::Versioned(o) => Some(o),
                    Work::Plain(_) => None,
                })
                .collect();
            for chunk in rows.chunks(SEED_CHUNK) {
                let models = chunk.iter().map(|o| {
                    let mut seeded = (*o).clone();
                    seeded.amount_cents -= 1;
                    seeded.events = Default::default();
                    seeded.into_active_model()
                });
                vorder::Entity::insert_many(models)
                    .exec_without_returning(&bench.db)
                    .await?;
            }
        }
        _ => {}
    }
    Ok(work)
}

struct Run {
    tps: f64,
    latency: Latency,
    /// This process's CPU time per transaction during the timed part, in microseconds.
    client_cpu_us: f64,
    /// The PostgreSQL server's CPU time per transaction during the timed part, in
    /// microseconds, when it runs on this machine.
    server_cpu_us: Option<f64>,
}

async fn one(bench: &BenchDb, variant: Variant, total: usize) -> BoxResult<Run> {
    bench.reset().await?;
    // A log capture mode saves only once a slot exists (else `Error::NoLogSlot`); the slot is
    // read by a log relay only in the contender that says so.
    let slot = variant.capture() != Capture::Table;
    let reader = if variant.reads_slot() {
        Some(read_slot(bench).await?)
    } else {
        if slot {
            crate::db::log_setup(bench).await?;
        }
        None
    };
    let run = timed(bench, variant, total).await;
    if let Some(reader) = reader {
        reader.stop().await?;
    }
    if slot {
        crate::db::log_teardown(bench).await?;
    }
    run
}

/// Creates the slot and starts a log relay on it that publishes nowhere (an in-memory
/// publisher): the server decodes what commits, as it does for a service with a log relay.
async fn read_slot(bench: &BenchDb) -> BoxResult<Running> {
    crate::db::log_setup(bench).await?;
    let relay = crate::db::log_relay(&bench.url, InMemoryPublisher::new()).build();
    Ok(Running::spawn(|stop| async move {
        relay.run_until(stop).await?;
        Ok(())
    }))
}

/// The timed part of a run: the clients' transactions.
async fn timed(bench: &BenchDb, variant: Variant, total: usize) -> BoxResult<Run> {
    let outbox = crate::db::outbox(&bench.db, variant.capture());
    let per_client = total.div_ceil(CLIENTS);
    let work = prepare(bench, variant, per_client).await?;
    let server_cpu = || match bench.backend {
        crate::db::Backend::Postgres => postgres_cpu_time(&bench.url),
        crate::db::Backend::Sqlite => None,
    };
    let server0 = server_cpu();
    let cpu0 = cpu_time();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for items in work {
        let db = bench.db.clone();
        let outbox = outbox.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_client);
            for item in items {
                let t = Instant::now();
                match (variant, item) {
                    (Variant::Insert, Work::Plain(order)) => {
                        order::Entity::insert(order.into_active_model())
                            .exec_without_returning(&db)
                            .await?;
                    }
                    (Variant::InsertTxn, Work::Plain(order)) => {
                        let txn = db.begin().await?;
                        order::Entity::insert(order.into_active_model())
                            .exec_without_returning(&txn)
                            .await?;
                        txn.commit().await?;
                    }
                    (_, Work::Plain(mut order)) => outbox.save(&mut order).await?,
                    (_, Work::Versioned(mut order)) => outbox.save(&mut order).await?,
                }
                lat.push(t.elapsed().as_micros() as u64);
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(lat)
        }));
    }
    let mut all = Vec::with_capacity(total);
    for t in tasks {
        all.extend(t.await??);
    }
    let secs = start.elapsed().as_secs_f64();
    let per_tx = |cpu: std::time::Duration| cpu.as_secs_f64() * 1e6 / all.len().max(1) as f64;
    let client_cpu_us = per_tx(cpu_time() - cpu0);
    let server_cpu_us = server0
        .zip(server_cpu())
        .map(|(before, after)| per_tx(after.saturating_sub(before)));
    Ok(Run {
        tps: all.len() as f64 / secs,
        latency: Latency::of(all),
        client_cpu_us,
        server_cpu_us,
    })
}

pub(crate) async fn run(opts: &Opts, bench: &BenchDb, report: &mut Report) -> BoxResult<()> {
    // PostgreSQL: runs of several seconds each, so that a checkpoint or a stall of the machine
    // is a small part of any one of them. SQLite commits one writer at a time: fewer
    // transactions keep its run short.
    let total = match bench.backend {
        crate::db::Backend::Postgres => opts.scaled(24_000, 80),
        crate::db::Backend::Sqlite => opts.scaled(2_000, 40),
    };
    let variants = [
        Variant::Insert,
        Variant::InsertTxn,
        Variant::Save(1),
        Variant::Save(10),
        Variant::SaveVersioned(1),
        Variant::SaveVersioned(10),
        Variant::Update,
        Variant::UpdateVersioned,
    ];
    let captured = [
        (Capture::Messages, false, false),
        (Capture::Messages, true, false),
        (Capture::LogTable, false, false),
        (Capture::LogTable, true, false),
        (Capture::Messages, false, true),
    ]
    .map(|(capture, versioned, read)| Variant::Captured {
        capture,
        versioned,
        read,
    });
    // The capture modes of the log relay need PostgreSQL's write-ahead log.
    let variants: Vec<Variant> = if bench.backend == crate::db::Backend::Postgres {
        variants.into_iter().chain(captured).collect()
    } else {
        variants.to_vec()
    };
    let mut results: Vec<Vec<Run>> = variants.iter().map(|_| Vec::new()).collect();
    // Warm-up (not recorded): connections, caches, the database's plans.
    for v in &variants {
        one(bench, *v, (total / 10).max(16)).await?;
    }
    for r in 0..opts.runs {
        for (i, v) in variants.iter().enumerate() {
            let run = one(bench, *v, total).await?;
            eprintln!(
                "write {} run {}: {} {:.0} tx/s, client CPU {:.0} us/tx, server CPU {} us/tx",
                bench.backend.name(),
                r + 1,
                v.label(),
                run.tps,
                run.client_cpu_us,
                run.server_cpu_us
                    .map_or_else(|| "n/a".to_owned(), |us| format!("{us:.0}"))
            );
            results[i].push(run);
        }
    }
    let tps: Vec<f64> = results
        .iter()
        .map(|rs| median(&rs.iter().map(|r| r.tps).collect::<Vec<_>>()))
        .collect();
    let base = tps[0];
    let mut rows = Vec::new();
    for (i, v) in variants.iter().enumerate() {
        let rs = &results[i];
        let p50 = median(&rs.iter().map(|r| r.latency.p50).collect::<Vec<_>>());
        let p99 = median(&rs.iter().map(|r| r.latency.p99).collect::<Vec<_>>());
        let cpu = median(&rs.iter().map(|r| r.client_cpu_us).collect::<Vec<_>>());
        let server: Vec<f64> = rs.iter().filter_map(|r| r.server_cpu_us).collect();
        let server = if server.len() == rs.len() {
            format!("{:.0}", median(&server))
        } else {
            "n/a".to_owned()
        };
        rows.push(vec![
            v.label(),
            num(tps[i]),
            format!("{:.2}", tps[i] / base),
            ms(p50),
            ms(p99),
            format!("{cpu:.0}"),
            server,
        ]);
    }
    let name = bench.backend.name();
    let captured_checks = variants
        .iter()
        .enumerate()
        .filter(|(_, v)| matches!(v, Variant::Captured { .. }))
        .map(|(i, _)| (i, 0.85));
    for (i, target) in [(2usize, 0.85), (3, 0.6), (4, 0.85), (5, 0.6)]
        .into_iter()
        .chain(captured_checks)
    {
        let ratio = tps[i] / base;
        report.check(
            format!(
                "{name}: write path, {} vs plain insert",
                variants[i].label()
            ),
            format!("{ratio:.2}x"),
            &format!(">= {target}x"),
            ratio >= target,
        );
    }
    report.sections.push(Section {
        title: format!("1. Write path, {name}: {CLIENTS} concurrent clients, 200-byte events"),
        note: format!(
            "{total} transactions per contender and run. The baseline is one autocommit \
             `INSERT` of the entity (`Entity::insert(..).exec_without_returning`). {} \
             \"versioned\": the entity has an `#[aggregate(version)]` column; a new one is \
             inserted at version 0 (an existing id would be a conflict, never overwritten) and \
             its events are numbered from the version, with no `outbox_sequence` statement. \
             \"update\": the entity's row (and, unversioned, its `outbox_sequence` row) exists \
             before the timed save, which changes it and adds one event; versioned, that is an \
             `UPDATE .. WHERE version = <loaded>` moving the version. No in-process handlers. \
             \"client CPU\": this process's CPU time (all its threads: the clients, SeaORM, \
             sqlx, the `Outbox`'s tasks, and the log relay where one reads the slot) per \
             transaction during the timed part; the database server's work is not in it. \
             \"server CPU\": the CPU time per transaction of every `postgres` process on \
             this machine over the same part (backends, walsenders, background workers; read \
             from `/proc`; n/a for SQLite, which runs inside the client, and for a server \
             elsewhere). On two cores shared by both, their sum is what a transaction costs.{}",
            if bench.backend == crate::db::Backend::Postgres {
                "`save` is one autocommit statement (data-modifying CTEs): the entity write, \
                 the `outbox_sequence` bump (unversioned) and the outbox rows, one round trip \
                 like the baseline; after it returns, the `Outbox`'s notifier task sends one \
                 `NOTIFY` for whatever committed meanwhile (outside the saving transaction)."
            } else {
                "`save` runs `BEGIN IMMEDIATE`, the entity write, the `outbox_sequence` upsert \
                 (unversioned), one multi-row outbox insert, `COMMIT`."
            },
            if bench.backend == crate::db::Backend::Postgres {
                " `Capture::LogTable`: the outbox rows are written settled, for the log relay \
                 (nothing marks them later). `Capture::Messages`: no outbox row; each event is \
                 a `pg_logical_emit_message` in the save's transaction. Both with a \
                 replication slot that nobody reads during the run (a log-mode save is refused \
                 until one exists), like the table-mode contenders without a relay: with \
                 `wal_level=logical` the server writes the same log whether a slot is read or \
                 not, and a slot nobody reads costs a write nothing (it only keeps log). \
                 \"slot read by a log relay\": a log relay (publishing to memory) streams the \
                 slot during the run, so the server decodes each commit as it happens; its \
                 walsender and the relay share the machine with the clients."
            } else {
                " The log relay's capture modes need PostgreSQL: not measured on SQLite."
            }
        ),
        header: vec![
            "contender",
            "tx/s",
            "vs baseline",
            "p50 ms",
            "p99 ms",
            "client CPU us/tx",
            "server CPU us/tx",
        ],
        rows,
    });
    Ok(())
}
