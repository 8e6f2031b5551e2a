//! Scenario 5: what in-process after-commit handlers add to a save.

use std::time::{Duration, Instant};

use outbox_core::{HandlerRegistry, InlineDispatcher, handler};
use outbox_seaorm::Outbox;
use sea_orm::ConnectionTrait;

use crate::db::{BenchDb, stmt};
use crate::model::order_with;
use crate::report::{Report, Section, ms};
use crate::stats::{Latency, median};
use crate::{BoxResult, Opts};

const VARIANTS: [&str; 3] = [
    "0 handlers (baseline)",
    "3 handlers, spawned (default dispatcher)",
    "3 handlers, inline (save returns after them)",
];

async fn one(bench: &BenchDb, variant: usize, n: usize) -> BoxResult<Latency> {
    bench.reset().await?;
    let three = HandlerRegistry::new()
        .with(handler!(crate::model::noop_a))
        .with(handler!(crate::model::noop_b))
        .with(handler!(crate::model::noop_c));
    let builder = Outbox::builder(bench.db.clone());
    let outbox = match variant {
        0 => builder.handlers(HandlerRegistry::new()).build(),
        1 => builder.handlers(three).build(),
        _ => builder.handlers(three).dispatcher(InlineDispatcher).build(),
    };
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let mut order = order_with(i, 1);
        let t = Instant::now();
        outbox.save(&mut order).await?;
        lat.push(t.elapsed().as_micros() as u64);
    }
    // Let spawned handlers finish before the next contender starts.
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let row = bench
            .db
            .query_one_raw(stmt(
                bench.db.get_database_backend(),
                "SELECT COUNT(*) FROM outbox_delivery WHERE status = 0",
                vec![],
            ))
            .await?;
        let pending = row.map_or(Ok(0), |r| r.try_get_by_index::<i64>(0))?;
        if pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(Latency::of(lat))
}

pub(crate) async fn run(opts: &Opts, bench: &BenchDb, report: &mut Report) -> BoxResult<()> {
    let n = opts.scaled(2_000, 50);
    let mut results: Vec<Vec<Latency>> = VARIANTS.iter().map(|_| Vec::new()).collect();
    for v in 0..VARIANTS.len() {
        one(bench, v, (n / 10).max(10)).await?; // warm-up, not recorded
    }
    for r in 0..opts.runs {
        for (v, label) in VARIANTS.iter().enumerate() {
            let l = one(bench, v, n).await?;
            eprintln!(
                "dispatch {} run {}: {label}: mean {:.2} ms",
                bench.backend.name(),
                r + 1,
                l.mean / 1000.0
            );
            results[v].push(l);
        }
    }
    let m =
        |v: usize, f: fn(&Latency) -> f64| median(&results[v].iter().map(f).collect::<Vec<_>>());
    let base = m(0, |l| l.mean);
    let rows = VARIANTS
        .iter()
        .enumerate()
        .map(|(v, label)| {
            vec![
                (*label).to_owned(),
                ms(m(v, |l| l.mean)),
                ms(m(v, |l| l.p50)),
                ms(m(v, |l| l.p99)),
                ms(m(v, |l| l.mean) - base),
            ]
        })
        .collect();
    report.sections.push(Section {
        title: format!(
            "5. After-commit dispatch, {}: latency per save",
            bench.backend.name()
        ),
        note: format!(
            "{n} sequential saves of 1 event per contender and run. With handlers, the save also \
             writes one `outbox_delivery` row per handler; after the commit each handler runs in \
             its own transaction that marks its row done. The handlers themselves do nothing."
        ),
        header: vec!["contender", "mean ms", "p50 ms", "p99 ms", "added mean ms"],
        rows,
    });
    Ok(())
}
