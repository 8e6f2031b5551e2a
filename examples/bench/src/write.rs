//! Scenario 1: the write path, 8 concurrent clients.

use std::time::Instant;

use outbox_core::HandlerRegistry;
use outbox_seaorm::Outbox;
use sea_orm::{EntityTrait, IntoActiveModel, TransactionTrait};

use crate::db::BenchDb;
use crate::model::{order, order_with};
use crate::report::{Report, Section, ms, num};
use crate::stats::{Latency, median};
use crate::{BoxResult, Opts};

const CLIENTS: usize = 8;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    Insert,
    InsertTxn,
    Save(usize),
}

impl Variant {
    fn label(self) -> String {
        match self {
            Variant::Insert => "plain SeaORM insert (baseline)".into(),
            Variant::InsertTxn => "insert in an explicit transaction".into(),
            Variant::Save(1) => "`Outbox::save`, 1 event".into(),
            Variant::Save(n) => format!("`Outbox::save`, {n} events"),
        }
    }
}

struct Run {
    tps: f64,
    latency: Latency,
}

async fn one(bench: &BenchDb, variant: Variant, total: usize) -> BoxResult<Run> {
    bench.reset().await?;
    let outbox = Outbox::builder(bench.db.clone())
        .handlers(HandlerRegistry::new())
        .build();
    let per_client = total.div_ceil(CLIENTS);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let db = bench.db.clone();
        let outbox = outbox.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_client);
            for i in 0..per_client {
                let n = c * per_client + i;
                let events = match variant {
                    Variant::Save(k) => k,
                    _ => 0,
                };
                let mut order = order_with(n, events);
                let t = Instant::now();
                match variant {
                    Variant::Insert => {
                        order::Entity::insert(order.into_active_model())
                            .exec_without_returning(&db)
                            .await?;
                    }
                    Variant::InsertTxn => {
                        let txn = db.begin().await?;
                        order::Entity::insert(order.into_active_model())
                            .exec_without_returning(&txn)
                            .await?;
                        txn.commit().await?;
                    }
                    Variant::Save(_) => outbox.save(&mut order).await?,
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
    Ok(Run {
        tps: all.len() as f64 / secs,
        latency: Latency::of(all),
    })
}

pub(crate) async fn run(opts: &Opts, bench: &BenchDb, report: &mut Report) -> BoxResult<()> {
    // SQLite commits one writer at a time: a quarter of the transactions keeps its run short.
    let total = match bench.backend {
        crate::db::Backend::Postgres => opts.scaled(8_000, 80),
        crate::db::Backend::Sqlite => opts.scaled(2_000, 40),
    };
    let variants = [
        Variant::Insert,
        Variant::InsertTxn,
        Variant::Save(1),
        Variant::Save(10),
    ];
    let mut results: Vec<Vec<Run>> = variants.iter().map(|_| Vec::new()).collect();
    // Warm-up (not recorded): connections, caches, the database's plans.
    for v in variants {
        one(bench, v, (total / 10).max(16)).await?;
    }
    for r in 0..opts.runs {
        for (i, v) in variants.iter().enumerate() {
            let run = one(bench, *v, total).await?;
            eprintln!(
                "write {} run {}: {} {:.0} tx/s",
                bench.backend.name(),
                r + 1,
                v.label(),
                run.tps
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
        rows.push(vec![
            v.label(),
            num(tps[i]),
            format!("{:.2}", tps[i] / base),
            ms(p50),
            ms(p99),
        ]);
    }
    let name = bench.backend.name();
    for (i, target) in [(2usize, 0.85), (3, 0.6)] {
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
             `INSERT` of the entity (`Entity::insert(..).exec_without_returning`). {} No \
             in-process handlers.",
            if bench.backend == crate::db::Backend::Postgres {
                "`save` is one autocommit statement (data-modifying CTEs): the entity upsert, \
                 the `outbox_sequence` bump and the outbox rows, one round trip like the \
                 baseline; after it returns, the `Outbox`'s notifier task sends one `NOTIFY` \
                 for whatever committed meanwhile (outside the saving transaction)."
            } else {
                "`save` runs `BEGIN IMMEDIATE`, the entity upsert, the `outbox_sequence` \
                 upsert, one multi-row outbox insert, `COMMIT`."
            }
        ),
        header: vec!["contender", "tx/s", "vs baseline", "p50 ms", "p99 ms"],
        rows,
    });
    Ok(())
}
