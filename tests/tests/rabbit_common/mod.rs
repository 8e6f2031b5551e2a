//! Shared fixtures of the RabbitMQ end-to-end tests (`rabbit_e2e`, `rabbit_cut`).
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use lapin::options::{BasicGetOptions, ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::types::AMQPValue;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use outbox_core::{
    AggregateRoot, DomainEvent, DomainEvents, EventContext, HandlerError, HandlerRegistry,
    RetryPolicy, event_handler,
};
use outbox_rabbitmq::RabbitConsumer;
use outbox_seaorm::relay::pending_count;
use outbox_seaorm::{Outbox, TransactionExt};
use outbox_tests::{Backend, TestDb, fresh};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use serde::{Deserialize, Serialize};

// ---- the source service: a basket aggregate on PostgreSQL ----

pub mod basket {
    use outbox_core::{AggregateRoot, DomainEvents};
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, AggregateRoot)]
    #[sea_orm(table_name = "baskets")]
    #[aggregate(name = "Basket")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        #[aggregate(id)]
        pub id: String,
        pub items: i64,
        #[sea_orm(ignore)]
        #[aggregate(events)]
        pub events: DomainEvents,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// One item added to a basket; `n` is the basket's item count after it (= its sequence).
#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
#[event(name = "RbItemAdded", version = 2)]
pub struct ItemAdded {
    pub basket: String,
    pub n: i64,
}

// ---- the consuming service ----

/// The effect: one row per application, numbered in application order.
pub async fn record(event: &ItemAdded, ctx: &EventContext<'_>) -> Result<(), HandlerError> {
    let txn = ctx.transaction()?;
    txn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "INSERT INTO effects (event_id, aggregate_id, sequence, n) VALUES ($1, $2, $3, $4)",
        [
            ctx.event_id().to_string().into(),
            ctx.aggregate_id().into(),
            ctx.sequence().into(),
            event.n.into(),
        ],
    ))
    .await?;
    Ok(())
}

#[event_handler(group = "rb-applied")]
pub async fn applied_item(event: &ItemAdded, ctx: &EventContext) -> Result<(), HandlerError> {
    record(event, ctx).await
}

#[event_handler(group = "rb-failing")]
pub async fn failing_item(event: &ItemAdded, ctx: &EventContext) -> Result<(), HandlerError> {
    record(event, ctx).await?;
    Err(HandlerError::retryable(std::io::Error::other(
        "downstream said no",
    )))
}

/// Handlers of `rb-concurrent` running right now, and the most seen at once.
pub static IN_FLIGHT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
pub static MAX_IN_FLIGHT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Records the effect and takes 3 ms, counting how many run at once.
#[event_handler(group = "rb-concurrent")]
pub async fn concurrent_item(event: &ItemAdded, ctx: &EventContext) -> Result<(), HandlerError> {
    use std::sync::atomic::Ordering;
    let now = IN_FLIGHT.fetch_add(1, Ordering::SeqCst) + 1;
    MAX_IN_FLIGHT.fetch_max(now, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(3)).await;
    IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
    record(event, ctx).await
}

/// Fails (retryably) for every basket whose id starts with `poison`; records the others.
#[event_handler(group = "rb-poison")]
pub async fn poison_item(event: &ItemAdded, ctx: &EventContext) -> Result<(), HandlerError> {
    if event.basket.starts_with("poison") {
        return Err(HandlerError::retryable(std::io::Error::other(
            "poisoned basket",
        )));
    }
    record(event, ctx).await
}

/// Takes 30 s (longer than the consumer's shutdown drain), then records the effect.
#[event_handler(group = "rb-slow", timeout = "60s")]
pub async fn slow_item(event: &ItemAdded, ctx: &EventContext) -> Result<(), HandlerError> {
    tokio::time::sleep(Duration::from_secs(30)).await;
    record(event, ctx).await
}

// ---- helpers ----

/// Publishes `per` events (`n` = 1..=per) of each basket in `baskets`, interleaved (every
/// basket's first event, then every basket's second...), in chunks of 100; every one
/// confirmed.
pub async fn publish_interleaved<P: outbox_core::Publisher>(
    publisher: &P,
    baskets: &[String],
    per: i64,
) {
    let mut envelopes = Vec::new();
    for n in 1..=per {
        for b in baskets {
            envelopes.push(
                outbox_core::Envelope::builder("RbItemAdded", "Basket", b.as_str())
                    .version(2)
                    .sequence(n)
                    .payload(format!(r#"{{"basket":"{b}","n":{n}}}"#))
                    .build(),
            );
        }
    }
    for chunk in envelopes.chunks(100) {
        for result in publisher.publish(chunk).await {
            assert!(result.is_ok(), "{result:?}");
        }
    }
}

/// Messages ready in `queue` (a passive declare).
pub async fn message_count(channel: &Channel, queue: &str) -> u32 {
    channel
        .queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .expect("passive declare")
        .message_count()
}

pub fn unique(what: &str) -> String {
    format!("rb-{what}-{}", uuid::Uuid::now_v7().simple())
}

pub async fn source_db(test: &str) -> Option<TestDb> {
    let t = fresh(Backend::Postgres, test).await?;
    t.db.execute_unprepared(
        "CREATE TABLE baskets (id VARCHAR(64) PRIMARY KEY, items BIGINT NOT NULL)",
    )
    .await
    .expect("baskets table");
    Some(t)
}

pub async fn consumer_db(test: &str) -> Option<TestDb> {
    let t = fresh(Backend::Postgres, test).await?;
    t.db.execute_unprepared(
        "CREATE TABLE effects (applied BIGSERIAL PRIMARY KEY, event_id TEXT NOT NULL, \
         aggregate_id TEXT NOT NULL, sequence BIGINT NOT NULL, n BIGINT NOT NULL)",
    )
    .await
    .expect("effects table");
    Some(t)
}

pub fn outbox(db: &DatabaseConnection) -> Outbox {
    Outbox::builder(db.clone())
        .handlers(HandlerRegistry::new())
        .build()
}

/// Adds `items` items, one event each, to basket `b`, one save per `per_save` events.
pub async fn add_items(outbox: &Outbox, b: &mut basket::Model, items: usize, per_save: usize) {
    let mut left = items;
    while left > 0 {
        for _ in 0..per_save.min(left) {
            b.items += 1;
            let event = ItemAdded {
                basket: b.id.clone(),
                n: b.items,
            };
            b.register_event(event);
            left -= 1;
        }
        outbox.save(b).await.expect("save");
    }
}

pub fn new_basket(id: String) -> basket::Model {
    basket::Model {
        id,
        items: 0,
        events: DomainEvents::new(),
    }
}

pub async fn count(db: &DatabaseConnection, sql: &str) -> i64 {
    db.query_one_raw(Statement::from_string(DbBackend::Postgres, sql))
        .await
        .expect("query")
        .expect("row")
        .try_get_by_index::<i64>(0)
        .expect("count")
}

pub async fn wait_count(db: &DatabaseConnection, sql: &str, want: i64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let got = count(db, sql).await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "`{sql}` is {got}, expected {want} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn wait_published(db: &DatabaseConnection, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let pending = pending_count(db).await.expect("pending count");
        if pending == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{pending} events still pending after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Per aggregate, the sequences of the effects in application order.
pub async fn applied_order(db: &DatabaseConnection) -> BTreeMap<String, Vec<i64>> {
    let rows = db
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT aggregate_id, sequence, n FROM effects ORDER BY applied",
        ))
        .await
        .expect("effects");
    let mut out: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for row in rows {
        let aggregate: String = row.try_get_by_index(0).expect("aggregate");
        let sequence: i64 = row.try_get_by_index(1).expect("sequence");
        let n: i64 = row.try_get_by_index(2).expect("n");
        assert_eq!(sequence, n, "the sequence header matches the payload");
        out.entry(aggregate).or_default().push(sequence);
    }
    out
}

pub fn assert_in_order(order: &BTreeMap<String, Vec<i64>>, per_aggregate: &BTreeMap<String, i64>) {
    assert_eq!(
        order.keys().collect::<Vec<_>>(),
        per_aggregate.keys().collect::<Vec<_>>()
    );
    for (aggregate, sequences) in order {
        let want: Vec<i64> = (1..=per_aggregate[aggregate]).collect();
        assert_eq!(sequences, &want, "order of {aggregate}");
    }
}

/// Runs `consumer` until `sql` on `db` counts `want` (then 1.5 s longer, so any extra
/// application would show), or panics after `within`.
pub async fn consume_until(
    consumer: &RabbitConsumer,
    db: &DatabaseConnection,
    sql: &str,
    want: i64,
    within: Duration,
) -> outbox_rabbitmq::ConsumerStats {
    tokio::time::timeout(
        within + Duration::from_secs(15),
        consumer.run_until(async {
            wait_count(db, sql, want, within).await;
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }),
    )
    .await
    .unwrap_or_else(|_| panic!("consumer did not reach {want} for `{sql}` within {within:?}"))
    .expect("consumer ran")
}

/// A plain lapin connection and channel, for reading queues and publishing by hand.
pub async fn raw(uri: &str) -> (Connection, Channel) {
    let connection = Connection::connect(
        uri,
        ConnectionProperties::default().with_connection_name("test-raw".into()),
    )
    .await
    .expect("raw connection");
    let channel = connection.create_channel().await.expect("raw channel");
    (connection, channel)
}

/// Takes up to `want` messages from `queue`, waiting at most `within` for them.
pub async fn drain(
    channel: &Channel,
    queue: &str,
    want: usize,
    within: Duration,
) -> Vec<lapin::message::BasicGetMessage> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    while got.len() < want && Instant::now() < deadline {
        match channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic_get")
        {
            Some(message) => got.push(message),
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    got
}

pub fn header<'a>(properties: &'a BasicProperties, key: &str) -> &'a str {
    match properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(key))
    {
        Some(AMQPValue::LongString(s)) => std::str::from_utf8(s.as_bytes()).expect("UTF-8"),
        other => panic!("header {key}: {other:?}"),
    }
}

/// Deletes what a test declared (queues first, then exchanges).
pub async fn delete_all(uri: &str, exchanges: &[&str], queues: &[&str]) {
    let (connection, channel) = raw(uri).await;
    for queue in queues {
        channel
            .queue_delete((*queue).into(), QueueDeleteOptions::default())
            .await
            .unwrap_or_else(|e| panic!("delete queue {queue}: {e}"));
    }
    for exchange in exchanges {
        channel
            .exchange_delete((*exchange).into(), ExchangeDeleteOptions::default())
            .await
            .unwrap_or_else(|e| panic!("delete exchange {exchange}: {e}"));
    }
    let _ = connection.close(200, "done".into()).await;
}

pub fn cut_all_connections() {
    let out = std::process::Command::new("rabbitmqctl")
        .args(["close_all_connections", "test"])
        .output()
        .expect("rabbitmqctl runs");
    assert!(
        out.status.success(),
        "rabbitmqctl close_all_connections: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn quick_retries() -> RetryPolicy {
    RetryPolicy::default()
        .with_max_attempts(1000)
        .with_initial_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_millis(500))
}
