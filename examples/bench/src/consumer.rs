//! Scenario 4: a consumer's handler with the inbox dedup vs the same handler without it.

use std::time::Instant;

use outbox_core::{EventContext, Handler, handler};
use outbox_seaorm::inbox::{Inbox, Processed};
use outbox_seaorm::with_transaction;
use sea_orm::TransactionTrait;

use crate::db::BenchDb;
use crate::model::envelope;
use crate::report::{Report, Section, num};
use crate::stats::median;
use crate::{BoxResult, Opts};

const CONSUMER: &str = "bench/apply_effect";

async fn one(bench: &BenchDb, dedup: bool, n: usize) -> BoxResult<f64> {
    bench.reset().await?;
    let handler: Handler = handler!(crate::model::apply_effect);
    let envelopes: Vec<_> = (0..n).map(envelope).collect();
    let start = Instant::now();
    for env in &envelopes {
        if dedup {
            let r = Inbox::process(&bench.db, CONSUMER, &handler, env, 1).await?;
            if r != Processed::Applied {
                return Err("a fresh event was taken for a duplicate".into());
            }
        } else {
            let txn = bench.db.begin().await?;
            let ctx = with_transaction(EventContext::new(env, handler.id(), 1), &txn);
            handler.call(env, &ctx).await.map_err(|e| e.into_source())?;
            txn.commit().await?;
        }
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

pub(crate) async fn run(opts: &Opts, bench: &BenchDb, report: &mut Report) -> BoxResult<()> {
    let n = opts.scaled(5_000, 50);
    let mut with = Vec::new();
    let mut without = Vec::new();
    // Warm-up (not recorded), then A B, B A, ... so neither always goes first.
    one(bench, false, (n / 10).max(10)).await?;
    one(bench, true, (n / 10).max(10)).await?;
    for r in 0..opts.runs {
        if r % 2 == 0 {
            without.push(one(bench, false, n).await?);
            with.push(one(bench, true, n).await?);
        } else {
            with.push(one(bench, true, n).await?);
            without.push(one(bench, false, n).await?);
        }
        eprintln!(
            "consumer {} run {}: without dedup {:.0}/s, with {:.0}/s",
            bench.backend.name(),
            r + 1,
            without[r],
            with[r]
        );
    }
    let (a, b) = (median(&without), median(&with));
    let cost = 1.0 - b / a;
    let name = bench.backend.name();
    report.check(
        format!("{name}: consumer, cost of the inbox dedup"),
        format!("{:.0}%", cost * 100.0),
        "<= 20%",
        cost <= 0.20,
    );
    report.sections.push(Section {
        title: format!("4. Consumer, {name}: events applied per second"),
        note: format!(
            "{n} envelopes fed directly (no Kafka), one at a time as a partition's consumer \
             does; the handler decodes the event and writes one effect row through its \
             transaction. With dedup: `Inbox::process` (begin, inbox insert, handler, commit). \
             Without: begin, handler, commit."
        ),
        header: vec!["contender", "events/s", "vs without dedup"],
        rows: vec![
            vec!["handler, no dedup (baseline)".into(), num(a), "1.00".into()],
            vec![
                "`Inbox::process` (dedup)".into(),
                num(b),
                format!("{:.2}", b / a),
            ],
        ],
    });
    Ok(())
}
