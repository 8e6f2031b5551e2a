//! Scenario 4: a consumer's handler with the inbox dedup vs the same handler without it.

use std::time::Instant;

use outbox_core::{EventContext, Handler, handler};
use outbox_seaorm::inbox::{BatchItem, Inbox, Processed};
use outbox_seaorm::with_transaction;
use sea_orm::TransactionTrait;

use crate::db::BenchDb;
use crate::model::envelope;
use crate::report::{Report, Section, num};
use crate::stats::median;
use crate::{BoxResult, Opts};

const CONSUMER: &str = "bench/apply_effect";

/// Messages per transaction in the batched contenders: `KafkaConsumer`'s default `max_batch`.
const BATCH: usize = 64;

/// How the events are applied.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// One transaction per event, handler only.
    Plain,
    /// `Inbox::process`, one transaction per event.
    Inbox,
    /// [`BATCH`] events per transaction, handlers only.
    PlainBatch,
    /// `Inbox::process_batch`, [`BATCH`] events per transaction.
    InboxBatch,
}

const MODES: [(Mode, &str); 4] = [
    (Mode::Plain, "handler, no dedup, 1 event per transaction"),
    (
        Mode::Inbox,
        "`Inbox::process` (dedup), 1 event per transaction",
    ),
    (
        Mode::PlainBatch,
        "handler, no dedup, 64 events per transaction",
    ),
    (
        Mode::InboxBatch,
        "`Inbox::process_batch` (dedup), 64 events per transaction",
    ),
];

async fn one(bench: &BenchDb, mode: Mode, n: usize) -> BoxResult<f64> {
    bench.reset().await?;
    let handler: Handler = handler!(crate::model::apply_effect);
    let envelopes: Vec<_> = (0..n).map(envelope).collect();
    let start = Instant::now();
    match mode {
        Mode::Plain | Mode::PlainBatch => {
            let per = if mode == Mode::Plain { 1 } else { BATCH };
            for chunk in envelopes.chunks(per) {
                let txn = bench.db.begin().await?;
                for env in chunk {
                    let ctx = with_transaction(EventContext::new(env, handler.id(), 1), &txn);
                    handler.call(env, &ctx).await.map_err(|e| e.into_source())?;
                }
                txn.commit().await?;
            }
        }
        Mode::Inbox => {
            for env in &envelopes {
                let r = Inbox::process(&bench.db, CONSUMER, &handler, env, 1).await?;
                if r != Processed::Applied {
                    return Err("a fresh event was taken for a duplicate".into());
                }
            }
        }
        Mode::InboxBatch => {
            for chunk in envelopes.chunks(BATCH) {
                let items: Vec<BatchItem<'_>> = chunk
                    .iter()
                    .map(|envelope| BatchItem {
                        consumer: CONSUMER,
                        handler: &handler,
                        envelope,
                    })
                    .collect();
                let outcomes = Inbox::process_batch(&bench.db, &items).await?;
                if outcomes.iter().any(|o| *o != Processed::Applied) {
                    return Err("a fresh event was taken for a duplicate".into());
                }
            }
        }
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

pub(crate) async fn run(opts: &Opts, bench: &BenchDb, report: &mut Report) -> BoxResult<()> {
    let n = opts.scaled(5_000, 50);
    let mut rates: Vec<Vec<f64>> = MODES.iter().map(|_| Vec::new()).collect();
    // Warm-up (not recorded), then the contenders in a rotating order, so none always goes
    // first.
    for (mode, _) in MODES {
        one(bench, mode, (n / 10).max(10)).await?;
    }
    for r in 0..opts.runs {
        for k in 0..MODES.len() {
            let i = (k + r) % MODES.len();
            rates[i].push(one(bench, MODES[i].0, n).await?);
        }
        eprintln!(
            "consumer {} run {}: {}",
            bench.backend.name(),
            r + 1,
            MODES
                .iter()
                .zip(&rates)
                .map(|((_, label), rs)| format!("{label}: {:.0}/s", rs[r]))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let m: Vec<f64> = rates.iter().map(|rs| median(rs)).collect();
    let name = bench.backend.name();
    for (plain, dedup, what) in [(0, 1, "1 event"), (2, 3, "64 events")] {
        let cost = 1.0 - m[dedup] / m[plain];
        report.check(
            format!("{name}: consumer, cost of the inbox dedup, {what} per transaction"),
            format!("{:.0}%", cost * 100.0),
            "<= 20%",
            cost <= 0.20,
        );
    }
    report.sections.push(Section {
        title: format!("4. Consumer, {name}: events applied per second"),
        note: format!(
            "{n} envelopes fed directly (no Kafka), in order as a partition's consumer applies \
             them; the handler decodes the event and writes one effect row through its \
             transaction. `Inbox::process`: begin, inbox insert, handler, commit. \
             `Inbox::process_batch` (what `KafkaConsumer` does with the messages it has \
             already received, up to `max_batch`, default 64): begin, one query for the events \
             already applied, one multi-row inbox insert, the handlers, commit. Without dedup: \
             the same transactions without the inbox statements."
        ),
        header: vec!["contender", "events/s", "vs without dedup"],
        rows: MODES
            .iter()
            .enumerate()
            .map(|(i, (_, label))| {
                let base = if i < 2 { m[0] } else { m[2] };
                vec![
                    (*label).to_owned(),
                    num(m[i]),
                    format!("{:.2}", m[i] / base),
                ]
            })
            .collect(),
    });
    Ok(())
}
