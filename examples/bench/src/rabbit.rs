//! Scenario `rabbit`: draining a backlog into RabbitMQ, the relay (`Relay` + `RabbitPublisher`)
//! against a raw lapin publisher with confirms, interleaved run by run in this process.

use std::time::{Duration, Instant};

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use outbox_core::Envelope;
use outbox_rabbitmq::{RabbitPublisher, properties};
use outbox_seaorm::relay::{Relay, pending_count};

use crate::db::BenchDb;
use crate::model::OrderPlaced;
use crate::relay::{Backlog, seed};
use crate::report::{Report, Section, num};
use crate::stats::{cpu_time, median};
use crate::{BoxResult, Opts};

const EXCHANGE: &str = "outbox-bench";
const QUEUE: &str = "outbox-bench.all";
/// Messages the raw publisher has in flight before it waits for their confirms.
const RAW_WINDOW: usize = 1000;

async fn channel(uri: &str) -> BoxResult<(Connection, Channel)> {
    let connection = Connection::connect(
        uri,
        ConnectionProperties::default().with_connection_name("outbox-bench".into()),
    )
    .await?;
    let channel = connection.create_channel().await?;
    Ok((connection, channel))
}

/// The exchange and one queue bound for every key, empty.
async fn topology(channel: &Channel) -> BoxResult<()> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            EXCHANGE.into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await?;
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(QUEUE.into(), durable, FieldTable::default())
        .await?;
    channel
        .queue_bind(
            QUEUE.into(),
            EXCHANGE.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_purge(QUEUE.into(), QueuePurgeOptions::default())
        .await?;
    Ok(())
}

/// The same `n` events the backlog holds, as envelopes (not timed).
fn envelopes(n: usize) -> Vec<Envelope> {
    let aggregates = (n / 10).max(1);
    (0..n)
        .map(|j| {
            let agg = format!("order-{:08}", j % aggregates);
            let seq = (j / aggregates + 1) as i64;
            let payload = OrderPlaced::sized(&agg, j).json();
            Envelope::builder("OrderPlaced", "Order", agg)
                .sequence(seq)
                .payload(payload)
                .build()
        })
        .collect()
}

/// The ceiling: one channel in confirm mode, persistent mandatory messages with the same
/// properties and headers as the relay's, [`RAW_WINDOW`] in flight, then their confirms.
async fn raw(uri: &str, envelopes: &[Envelope]) -> BoxResult<(f64, f64)> {
    let (connection, channel) = channel(uri).await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let messages: Vec<_> = envelopes
        .iter()
        .map(|e| {
            (
                format!("{}.{}", e.aggregate_type(), e.event_name()),
                properties::encode(e, "/outbox/Order"),
                e.payload().as_bytes(),
            )
        })
        .collect();
    let (cpu0, t0) = (cpu_time(), Instant::now());
    for window in messages.chunks(RAW_WINDOW) {
        let mut confirms = Vec::with_capacity(window.len());
        for (key, props, body) in window {
            confirms.push(
                channel
                    .basic_publish(
                        EXCHANGE.into(),
                        key.as_str().into(),
                        BasicPublishOptions {
                            mandatory: true,
                            ..BasicPublishOptions::default()
                        },
                        body,
                        props.clone(),
                    )
                    .await?,
            );
        }
        for confirm in confirms {
            let confirmation = confirm.await?;
            if !confirmation.is_ack() || confirmation.take_message().is_some() {
                return Err("raw publish not acknowledged".into());
            }
        }
    }
    let (secs, cpu) = (
        t0.elapsed().as_secs_f64(),
        (cpu_time() - cpu0).as_secs_f64(),
    );
    let _ = connection.close(200, "bench".into()).await;
    Ok((secs, cpu))
}

/// Our relay with its defaults, until the backlog is gone.
async fn ours(uri: &str, bench: &BenchDb) -> BoxResult<(f64, f64)> {
    let publisher = RabbitPublisher::builder(uri)
        .exchange(EXCHANGE)
        .build()
        .await?;
    let relay = Relay::builder(bench.db.clone(), publisher).build();
    let watcher = bench.db.clone();
    let (cpu0, t0) = (cpu_time(), Instant::now());
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
    let (secs, cpu) = (
        t0.elapsed().as_secs_f64(),
        (cpu_time() - cpu0).as_secs_f64(),
    );
    if pending_count(&bench.db).await? != 0 {
        return Err("the relay stopped with events pending".into());
    }
    Ok((secs, cpu))
}

async fn queued(channel: &Channel) -> BoxResult<u32> {
    let q = channel
        .queue_declare(
            QUEUE.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok(q.message_count())
}

/// Runs the scenario and adds its table to `report`.
pub(crate) async fn run(opts: &Opts, bench: &BenchDb, report: &mut Report) -> BoxResult<()> {
    let uri = opts.amqp_url.as_str();
    let n = opts.scaled(20_000, 1_000);
    let all = envelopes(n);
    let (admin, channel) = channel(uri).await?;
    let mut raw_runs: Vec<(f64, f64)> = Vec::new();
    let mut our_runs: Vec<(f64, f64)> = Vec::new();
    for run in 0..opts.runs {
        topology(&channel).await?;
        let r = raw(uri, &all).await?;
        let got = queued(&channel).await?;
        if got as usize != n {
            return Err(format!("raw: {got} messages queued, {n} expected").into());
        }
        eprintln!("rabbit run {run}: raw {} events/s", num(n as f64 / r.0));
        raw_runs.push(r);

        topology(&channel).await?;
        bench.reset().await?;
        seed(bench, n, Backlog::Pending).await?;
        let o = ours(uri, bench).await?;
        let got = queued(&channel).await?;
        if (got as usize) < n {
            return Err(format!("relay: {got} messages queued, {n} expected").into());
        }
        eprintln!("rabbit run {run}: relay {} events/s", num(n as f64 / o.0));
        our_runs.push(o);
    }
    channel
        .queue_delete(QUEUE.into(), QueueDeleteOptions::default())
        .await?;
    channel
        .exchange_delete(EXCHANGE.into(), ExchangeDeleteOptions::default())
        .await?;
    let _ = admin.close(200, "bench".into()).await;

    let rate =
        |runs: &[(f64, f64)]| median(&runs.iter().map(|(s, _)| n as f64 / s).collect::<Vec<_>>());
    let cpu = |runs: &[(f64, f64)]| median(&runs.iter().map(|(_, c)| *c).collect::<Vec<_>>());
    let (raw_rate, our_rate) = (rate(&raw_runs), rate(&our_runs));
    report.sections.push(Section {
        title: format!(
            "Relay drain of a {}-event backlog into RabbitMQ, {}",
            num(n as f64),
            bench.backend.name()
        ),
        note: format!(
            "RabbitMQ at {}, a durable topic exchange and one durable queue bound with `#`. \
             Both contenders publish persistent, mandatory messages with the same properties \
             and headers on one channel with publisher confirms; the raw lapin publisher holds \
             every message in memory (not timed) and keeps {RAW_WINDOW} in flight before it \
             waits for their confirms: the ceiling. The relay claims, publishes and marks rows \
             (defaults). Interleaved run by run in one process; CPU is this process's (the \
             broker's and the database's are not counted).",
            redacted(uri)
        ),
        header: vec!["contender", "events/s", "vs raw", "CPU s"],
        rows: vec![
            vec![
                "raw lapin publisher with confirms (ceiling)".to_owned(),
                num(raw_rate),
                "1.00".to_owned(),
                format!("{:.2}", cpu(&raw_runs)),
            ],
            vec![
                "our relay (`Relay` + `RabbitPublisher`)".to_owned(),
                num(our_rate),
                format!("{:.2}", our_rate / raw_rate),
                format!("{:.2}", cpu(&our_runs)),
            ],
        ],
    });
    Ok(())
}

fn redacted(uri: &str) -> String {
    match uri
        .split_once("://")
        .and_then(|(s, rest)| rest.rsplit_once('@').map(|(_, h)| (s, h)))
    {
        Some((scheme, host)) => format!("{scheme}://…@{host}"),
        None => uri.to_owned(),
    }
}
