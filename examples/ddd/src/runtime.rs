//! The wiring: per service a database, an `Outbox`, a `Relay` with a `KafkaPublisher` and a
//! `KafkaConsumer` for its group (or a `RabbitPublisher` and a `RabbitConsumer`, see
//! `rabbit.rs`); the Kafka cluster (embedded mock or a real broker); and the chaos tools (kill
//! and restart, duplicate deliveries).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use outbox_core::{AggregateRoot, HandlerRegistry, RetryPolicy};
use outbox_kafka::{KafkaConfig, KafkaConsumer, KafkaPublisher, provision_topics};
use outbox_rabbitmq::{RabbitConsumer, RabbitPublisher};
use outbox_seaorm::{DeliveryWorker, Outbox, Relay};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, EntityTrait, Schema,
    Statement,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::rabbit::Names;
use crate::{inventory, order, payment};

/// Error type of the wiring: anything, with its message.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The topics the example's events go to (set on the event types with `#[event(topic)]`).
pub const TOPICS: [&str; 5] = [
    "ddd.orders",
    "ddd.payments",
    "ddd.inventory",
    "ddd.order-outcomes",
    "ddd.compensations",
];
/// Partitions per topic.
pub const PARTITIONS: i32 = 3;

/// Where the services keep their data.
#[derive(Clone, Debug)]
pub enum Store {
    /// One SQLite file per service in this directory (recreated per run).
    Sqlite(PathBuf),
    /// One database per service (`ddd_order`, ...) on this server (dropped and recreated).
    Server(String),
}

impl Store {
    /// Opens a fresh database for `service` with the outbox tables; returns it and its URL.
    pub async fn open(&self, service: &str) -> Result<(DatabaseConnection, String), BoxError> {
        let url = match self {
            Store::Sqlite(dir) => {
                let path = dir.join(format!("{service}.sqlite"));
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                }
                format!("sqlite://{}?mode=rwc", path.display())
            }
            Store::Server(server) => {
                let name = format!("ddd_{service}");
                recreate_database(server, &name).await?;
                let (base, _) = server
                    .rsplit_once('/')
                    .ok_or_else(|| format!("database URL {server} has no /database part"))?;
                format!("{base}/{name}")
            }
        };
        let db = connect(&url, 8).await?;
        if db.get_database_backend() == DbBackend::Sqlite {
            db.execute_unprepared("PRAGMA journal_mode=WAL").await?;
        }
        outbox_seaorm::schema::migrate(&db).await?;
        Ok((db, url))
    }

    /// How the store is announced.
    pub fn describe(&self) -> String {
        match self {
            Store::Sqlite(dir) => format!(
                "embedded SQLite files in {} (order, payment, inventory)",
                dir.display()
            ),
            Store::Server(url) => format!(
                "{} (databases ddd_order, ddd_payment, ddd_inventory)",
                url.split('@').next_back().unwrap_or(url)
            ),
        }
    }
}

async fn connect(url: &str, max: u32) -> Result<DatabaseConnection, sea_orm::DbErr> {
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .max_connections(max)
        .min_connections(0)
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(30))
        .sqlx_logging(false);
    Database::connect(options).await
}

async fn recreate_database(server: &str, name: &str) -> Result<(), BoxError> {
    let admin = connect(server, 1)
        .await
        .map_err(|e| format!("cannot reach the database server {server}: {e}"))?;
    let backend = admin.get_database_backend();
    let (drop, create) = match backend {
        DbBackend::Postgres => (
            format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
            format!("CREATE DATABASE \"{name}\""),
        ),
        _ => (
            format!("DROP DATABASE IF EXISTS `{name}`"),
            format!("CREATE DATABASE `{name}`"),
        ),
    };
    admin.execute_unprepared(&drop).await?;
    admin.execute_unprepared(&create).await?;
    let _ = admin.close().await;
    Ok(())
}

/// Creates the order service's tables.
pub async fn create_order_tables(db: &DatabaseConnection) -> Result<(), BoxError> {
    let schema = Schema::new(db.get_database_backend());
    db.execute(&schema.create_table_from_entity(order::Entity))
        .await?;
    db.execute_unprepared(
        "CREATE TABLE notices (order_id VARCHAR(36) NOT NULL PRIMARY KEY, customer VARCHAR(255) NOT NULL)",
    )
    .await?;
    Ok(())
}

/// Creates the payment service's tables and seeds the customers' limits.
pub async fn create_payment_tables(db: &DatabaseConnection) -> Result<(), BoxError> {
    let schema = Schema::new(db.get_database_backend());
    db.execute(&schema.create_table_from_entity(payment::Entity))
        .await?;
    db.execute(&schema.create_table_from_entity(payment::limit::Entity))
        .await?;
    let rows = payment::LIMITS.map(|(customer, limit_cents)| payment::limit::ActiveModel {
        customer: sea_orm::Set(customer.to_owned()),
        limit_cents: sea_orm::Set(limit_cents),
    });
    payment::limit::Entity::insert_many(rows).exec(db).await?;
    Ok(())
}

/// Creates the inventory service's tables and seeds `stock` items of each SKU (none of the
/// sold-out one).
pub async fn create_inventory_tables(db: &DatabaseConnection, stock: i64) -> Result<(), BoxError> {
    let schema = Schema::new(db.get_database_backend());
    db.execute(&schema.create_table_from_entity(inventory::Entity))
        .await?;
    db.execute(&schema.create_table_from_entity(inventory::stock::Entity))
        .await?;
    let rows = inventory::SKUS.map(|sku| inventory::stock::ActiveModel {
        sku: sea_orm::Set(sku.to_owned()),
        on_hand: sea_orm::Set(if sku == inventory::SOLD_OUT { 0 } else { stock }),
    });
    inventory::stock::Entity::insert_many(rows).exec(db).await?;
    Ok(())
}

/// One number from `sql` (a `COUNT(*)`).
pub async fn count(db: &DatabaseConnection, sql: &str) -> Result<i64, sea_orm::DbErr> {
    let row = db
        .query_one_raw(Statement::from_string(db.get_database_backend(), sql))
        .await?;
    match row {
        Some(row) => row.try_get_by_index::<i64>(0),
        None => Ok(0),
    }
}

/// The sum of the integer column `sql` selects, added up here (`SUM()` returns a different
/// type on each database).
pub async fn sum(db: &DatabaseConnection, sql: &str) -> Result<i64, sea_orm::DbErr> {
    let rows = db
        .query_all_raw(Statement::from_string(db.get_database_backend(), sql))
        .await?;
    let mut total = 0;
    for row in rows {
        total += row
            .try_get_by_index::<i64>(0)
            .or_else(|_| row.try_get_by_index::<i32>(0).map(i64::from))?;
    }
    Ok(total)
}

/// The (event id, topic) of every outbox row marked published.
pub async fn published_rows(
    db: &DatabaseConnection,
) -> Result<Vec<(String, String)>, sea_orm::DbErr> {
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT id, topic FROM outbox WHERE status = 1",
        ))
        .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get_by_index::<String>(0)?,
                r.try_get_by_index::<Option<String>>(1)?.unwrap_or_default(),
            ))
        })
        .collect()
}

/// The (event id, RabbitMQ routing key `<aggregate type>.<event name>`) of every outbox row
/// marked published.
pub async fn published_routes(
    db: &DatabaseConnection,
) -> Result<Vec<(String, String)>, sea_orm::DbErr> {
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT id, aggregatetype, type FROM outbox WHERE status = 1",
        ))
        .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get_by_index::<String>(0)?,
                format!(
                    "{}.{}",
                    r.try_get_by_index::<String>(1)?,
                    r.try_get_by_index::<String>(2)?
                ),
            ))
        })
        .collect()
}

/// How the stored versions of one aggregate type agree with its service's outbox.
#[derive(Debug, Default)]
pub struct VersionAudit {
    /// Aggregates (rows) of the type.
    pub aggregates: usize,
    /// Their events in the outbox.
    pub events: i64,
    /// Their saves that carried no event (`outbox_version_offset.version_minus_sequence`: the
    /// example never deletes an aggregate, so it counts exactly those).
    pub eventless: i64,
    /// The aggregates that break the rule, with what was found.
    pub broken: Vec<String>,
}

/// Checks every aggregate `models` holds (all stored rows of one aggregate type) against `db`'s
/// outbox: its events' sequences are 1..n (no gap, no duplicate) and its stored version is n
/// plus its saves without events. Events of an aggregate with no row break the rule too.
pub async fn audit_versions<A: AggregateRoot>(
    db: &DatabaseConnection,
    models: &[A],
) -> Result<VersionAudit, sea_orm::DbErr> {
    let aggregate_type = A::AGGREGATE_TYPE;
    let versions = models
        .iter()
        .map(|m| (m.aggregate_id(), m.version().unwrap_or(0)));
    let backend = db.get_database_backend();
    // (count, min, max) of each aggregate's event sequences.
    let mut events: HashMap<String, (i64, i64, i64)> = HashMap::new();
    let rows = db
        .query_all_raw(Statement::from_string(
            backend,
            format!(
                "SELECT aggregateid, COUNT(*), MIN(sequence), MAX(sequence) FROM outbox \
                 WHERE aggregatetype = '{aggregate_type}' GROUP BY aggregateid"
            ),
        ))
        .await?;
    for row in rows {
        events.insert(
            row.try_get_by_index(0)?,
            (
                row.try_get_by_index(1)?,
                row.try_get_by_index(2)?,
                row.try_get_by_index(3)?,
            ),
        );
    }
    let mut eventless: HashMap<String, i64> = HashMap::new();
    let rows = db
        .query_all_raw(Statement::from_string(
            backend,
            format!(
                "SELECT aggregateid, version_minus_sequence FROM outbox_version_offset \
                 WHERE aggregatetype = '{aggregate_type}'"
            ),
        ))
        .await?;
    for row in rows {
        eventless.insert(row.try_get_by_index(0)?, row.try_get_by_index(1)?);
    }
    let mut audit = VersionAudit {
        aggregates: models.len(),
        ..VersionAudit::default()
    };
    for (id, version) in versions {
        let (n, first, last) = events.remove(&id).unwrap_or((0, 1, 0));
        let quiet = eventless.get(&id).copied().unwrap_or(0);
        audit.events += n;
        audit.eventless += quiet;
        if first != 1 || last != n || version != n + quiet {
            audit.broken.push(format!(
                "{aggregate_type} {id}: version {version}, {n} events with sequences \
                 {first}..={last}, {quiet} saves without events"
            ));
        }
    }
    for (id, (n, ..)) in events {
        audit
            .broken
            .push(format!("{aggregate_type} {id}: {n} events and no row"));
    }
    Ok(audit)
}

/// The Kafka cluster: librdkafka's in-process mock, or a real broker.
pub struct Kafka {
    brokers: String,
    mock: Option<MockCluster<'static, DefaultProducerContext>>,
}

impl Kafka {
    /// A real broker at `brokers`, or the embedded mock cluster when `None`.
    pub fn start(brokers: Option<String>) -> Result<Kafka, BoxError> {
        match brokers {
            Some(brokers) => Ok(Kafka {
                brokers,
                mock: None,
            }),
            None => {
                let mock = MockCluster::new(1)?;
                Ok(Kafka {
                    brokers: mock.bootstrap_servers(),
                    mock: Some(mock),
                })
            }
        }
    }

    /// `bootstrap.servers`.
    pub fn brokers(&self) -> &str {
        &self.brokers
    }

    /// Whether this is the embedded mock cluster.
    pub fn is_mock(&self) -> bool {
        self.mock.is_some()
    }

    /// How the cluster is announced.
    pub fn describe(&self) -> String {
        if self.is_mock() {
            format!(
                "librdkafka's in-process mock Kafka cluster ({})",
                self.brokers
            )
        } else {
            format!("Kafka broker at {}", self.brokers)
        }
    }

    /// Creates the topics (and their dead-letter topics) unless they exist.
    pub async fn provision(&self) -> Result<(), BoxError> {
        let mut topics: Vec<String> = TOPICS.iter().map(|t| (*t).to_owned()).collect();
        topics.extend(TOPICS.iter().map(|t| format!("{t}.dlt")));
        if let Some(mock) = &self.mock {
            // The mock cluster does not answer admin requests; it has its own call.
            for topic in &topics {
                mock.create_topic(topic, PARTITIONS, 1)?;
            }
            return Ok(());
        }
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        provision_topics(&KafkaConfig::new(&self.brokers), &names, PARTITIONS, 1).await?;
        Ok(())
    }

    /// The end offsets of every partition of the topics now: where this run's messages start.
    pub fn end_offsets(&self) -> Result<HashMap<(String, i32), i64>, BoxError> {
        let reader: BaseConsumer = self.client("ddd-reader").create()?;
        let mut out = HashMap::new();
        for topic in TOPICS {
            for partition in 0..PARTITIONS {
                let (_, high) =
                    reader.fetch_watermarks(topic, partition, Duration::from_secs(10))?;
                out.insert((topic.to_owned(), partition), high);
            }
        }
        Ok(out)
    }

    /// Moves the example's consumer groups past messages of earlier runs (the databases are
    /// fresh, so those events name orders nobody knows).
    pub fn skip_earlier_runs(&self, start: &HashMap<(String, i32), i64>) {
        let registry = HandlerRegistry::from_inventory();
        for group in [order::GROUP, payment::GROUP, inventory::GROUP] {
            let mut tpl = TopicPartitionList::new();
            let topics: Vec<&str> = registry.group(group).filter_map(|h| h.topic()).collect();
            for ((topic, partition), offset) in start {
                if topics.contains(&topic.as_str()) && *offset > 0 {
                    let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset));
                }
            }
            if tpl.count() == 0 {
                continue;
            }
            let committed = self
                .client(group)
                .create::<BaseConsumer>()
                .and_then(|c| c.commit(&tpl, CommitMode::Sync));
            if let Err(error) = committed {
                tracing::warn!(group, %error, "could not move the group past earlier runs");
            }
        }
    }

    /// Reads every message of this run (from `start` to `end`) and returns the event ids found
    /// in each topic (header `event_id`), and how many messages were read.
    pub fn read_event_ids(
        &self,
        start: &HashMap<(String, i32), i64>,
        end: &HashMap<(String, i32), i64>,
    ) -> Result<(HashMap<String, HashSet<String>>, u64), BoxError> {
        let reader: BaseConsumer = self.client("ddd-checker").create()?;
        let mut tpl = TopicPartitionList::new();
        let mut left: i64 = 0;
        for ((topic, partition), from) in start {
            let to = end
                .get(&(topic.clone(), *partition))
                .copied()
                .unwrap_or(*from);
            if to > *from {
                tpl.add_partition_offset(topic, *partition, Offset::Offset(*from))?;
                left += to - from;
            }
        }
        let mut ids: HashMap<String, HashSet<String>> = HashMap::new();
        let mut read = 0;
        if left == 0 {
            return Ok((ids, read));
        }
        reader.assign(&tpl)?;
        // Read to the end offsets taken after the run, then on until the topics are quiet: a
        // broker's end offset may lag behind what it has just acknowledged.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut quiet_since = std::time::Instant::now();
        while std::time::Instant::now() < deadline
            && (left > 0 || quiet_since.elapsed() < Duration::from_secs(2))
        {
            let Some(Ok(m)) = reader.poll(Duration::from_millis(200)) else {
                continue;
            };
            quiet_since = std::time::Instant::now();
            left -= 1;
            read += 1;
            let id = m.headers().and_then(|hs| {
                hs.iter()
                    .find(|h| h.key == "event_id")
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            });
            if let Some(id) = id {
                ids.entry(m.topic().to_owned()).or_default().insert(id);
            }
        }
        Ok((ids, read))
    }

    fn client(&self, group: &str) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", group)
            .set("enable.auto.commit", "false");
        config
    }

    /// Chaos: re-produces up to `per_topic` messages of this run from `topics` as they are (same
    /// key, headers, payload: the same event ids), as a broker or a producer retry would.
    /// Returns how many copies each topic got.
    pub async fn inject_duplicates(
        &self,
        start: &HashMap<(String, i32), i64>,
        topics: &[&str],
        per_topic: usize,
    ) -> Result<HashMap<String, usize>, BoxError> {
        self.reproduce(start, topics, per_topic, |_| true).await
    }

    /// Chaos: re-produces up to `n` of this run's `OrderCreated` messages of version 1 (header
    /// `event_version` = 1), as a replay of old messages would: the consumers skip them as
    /// duplicates (the inbox keys on the event id, whatever the version). Returns how many
    /// copies `ddd.orders` got.
    pub async fn reproduce_v1(
        &self,
        start: &HashMap<(String, i32), i64>,
        n: usize,
    ) -> Result<usize, BoxError> {
        let sent = self
            .reproduce(start, &["ddd.orders"], n, |m| {
                m.headers().is_some_and(|hs| {
                    hs.iter().any(|h| {
                        h.key == outbox_core::wire::EVENT_VERSION
                            && h.value == Some(b"1".as_slice())
                    })
                })
            })
            .await?;
        Ok(sent.values().sum())
    }

    /// Re-produces up to `per_topic` messages of this run from `topics` that `keep` accepts
    /// (reading for at most 3 s per topic).
    async fn reproduce(
        &self,
        start: &HashMap<(String, i32), i64>,
        topics: &[&str],
        per_topic: usize,
        keep: impl Fn(&rdkafka::message::BorrowedMessage<'_>) -> bool,
    ) -> Result<HashMap<String, usize>, BoxError> {
        let reader: BaseConsumer = self.client("ddd-chaos-reader").create()?;
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .create()?;
        let mut sent = HashMap::new();
        for topic in topics {
            let mut tpl = TopicPartitionList::new();
            for partition in 0..PARTITIONS {
                let from = start
                    .get(&((*topic).to_owned(), partition))
                    .copied()
                    .unwrap_or(0);
                tpl.add_partition_offset(topic, partition, Offset::Offset(from))?;
            }
            reader.assign(&tpl)?;
            let mut copies = Vec::new();
            let deadline = std::time::Instant::now() + Duration::from_secs(3);
            while copies.len() < per_topic && std::time::Instant::now() < deadline {
                if let Some(Ok(m)) = reader.poll(Duration::from_millis(100))
                    && keep(&m)
                {
                    let mut headers = OwnedHeaders::new();
                    if let Some(hs) = m.headers() {
                        for h in hs.iter() {
                            headers = headers.insert(Header {
                                key: h.key,
                                value: h.value,
                            });
                        }
                    }
                    copies.push((
                        m.key().map(<[u8]>::to_vec),
                        m.payload().map(<[u8]>::to_vec),
                        headers,
                    ));
                }
            }
            for (key, payload, headers) in &copies {
                let mut record: FutureRecord<'_, [u8], [u8]> =
                    FutureRecord::to(topic).headers(headers.clone());
                if let Some(key) = key {
                    record = record.key(key.as_slice());
                }
                if let Some(payload) = payload {
                    record = record.payload(payload.as_slice());
                }
                producer
                    .send(record, Duration::from_secs(10))
                    .await
                    .map_err(|(e, _)| e)?;
            }
            sent.insert((*topic).to_owned(), copies.len());
        }
        Ok(sent)
    }
}

/// The broker the services talk through.
#[derive(Clone, Debug)]
pub enum Wire {
    /// Kafka at these `bootstrap.servers`.
    Kafka(String),
    /// RabbitMQ: the run's exchange and queues.
    Rabbit(Names),
}

/// A service's running parts: relay, consumer and (order service) delivery worker.
pub struct Service {
    /// `order`, `payment` or `inventory`.
    pub name: &'static str,
    /// Its consumer group.
    pub group: &'static str,
    /// Its database.
    pub db: DatabaseConnection,
    /// Its outbox (saves, and the after-commit handlers it runs).
    pub outbox: Outbox,
    wire: Wire,
    stop: watch::Receiver<bool>,
    /// How many instances of the service consume (members of its group).
    instances: usize,
    relay: Option<JoinHandle<()>>,
    consumers: Vec<JoinHandle<()>>,
    worker: Option<JoinHandle<()>>,
}

async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Waits half a second, or less when the run stops; returns whether it stops.
async fn pause_or_stop(stop: &watch::Receiver<bool>) -> bool {
    let _ = tokio::time::timeout(Duration::from_millis(500), stopped(stop.clone())).await;
    *stop.borrow()
}

/// Runs a service's relay until the run stops.
async fn run_relay<P: outbox_core::Publisher + 'static>(
    name: &'static str,
    db: DatabaseConnection,
    publisher: P,
    stop: watch::Receiver<bool>,
) {
    let relay = Relay::builder(db, publisher)
        .idle_backoff(Duration::from_millis(5), Duration::from_millis(100))
        .instance_id(format!("{name}-relay"))
        .build();
    if let Err(error) = relay.run_until(stopped(stop)).await {
        tracing::error!(service = name, %error, "relay stopped");
    }
}

impl Service {
    /// A service on `db` with the after-commit handlers `local`; call [`Service::start`].
    pub fn new(
        name: &'static str,
        group: &'static str,
        db: DatabaseConnection,
        local: HandlerRegistry,
        wire: &Wire,
        stop: watch::Receiver<bool>,
    ) -> Service {
        let outbox = Outbox::builder(db.clone())
            .handlers(local)
            .delivery_grace(Duration::ZERO)
            .build();
        Service {
            name,
            group,
            db,
            outbox,
            wire: wire.clone(),
            stop,
            instances: 1,
            relay: None,
            consumers: Vec::new(),
            worker: None,
        }
    }

    /// Runs `instances` consumers in the service's group, as that many copies of the service
    /// would: each applies the messages of the partitions it is assigned, at the same time as
    /// the others. Partitions are assigned round-robin over all the group's topics, so one
    /// order's replies (same key, so the same partition number in `ddd.payments` and
    /// `ddd.inventory`) can go to different instances and be applied at once; the range
    /// assignor would give both to one instance and hide the race.
    pub fn with_instances(mut self, instances: usize) -> Service {
        self.instances = instances.max(1);
        self
    }

    /// Starts the relay, the consumer and, when the outbox has after-commit handlers, the
    /// delivery worker that runs them.
    pub fn start(&mut self) {
        self.start_relay();
        self.start_consumer();
        if !self.outbox.handlers().is_empty() {
            let worker =
                DeliveryWorker::new(self.outbox.clone()).poll_interval(Duration::from_millis(50));
            let stop = self.stop.clone();
            self.worker = Some(tokio::spawn(async move {
                worker.run_until(stopped(stop)).await;
            }));
        }
    }

    /// Starts (again) the relay: outbox → Kafka or RabbitMQ.
    pub fn start_relay(&mut self) {
        let db = self.db.clone();
        let stop = self.stop.clone();
        let name = self.name;
        let task = match self.wire.clone() {
            Wire::Kafka(brokers) => tokio::spawn(async move {
                let publisher = match KafkaPublisher::builder(brokers).build() {
                    Ok(p) => p,
                    Err(error) => {
                        tracing::error!(service = name, %error, "cannot create the Kafka publisher");
                        return;
                    }
                };
                run_relay(name, db, publisher, stop).await;
            }),
            Wire::Rabbit(names) => tokio::spawn(async move {
                // The publisher connects at build: try again until the broker answers.
                let publisher = loop {
                    let built = RabbitPublisher::builder(names.uri.as_str())
                        .exchange(names.exchange.as_str())
                        .build()
                        .await;
                    match built {
                        Ok(p) => break p,
                        Err(error) => {
                            tracing::warn!(service = name, %error, "cannot connect the RabbitMQ publisher yet");
                            if pause_or_stop(&stop).await {
                                return;
                            }
                        }
                    }
                };
                run_relay(name, db, publisher, stop).await;
            }),
        };
        self.relay = Some(task);
    }

    /// Starts (again) the consumers: Kafka or RabbitMQ → this service's
    /// `#[event_handler(group)]`s, one per instance.
    pub fn start_consumer(&mut self) {
        for _ in 0..self.instances {
            let db = self.db.clone();
            let stop = self.stop.clone();
            let group = self.group;
            let instances = self.instances;
            // A save refused by a conflict (another instance saved the order first) succeeds on
            // the next attempt: retry at once, not after a second.
            let retry = RetryPolicy::default().with_initial_delay(Duration::from_millis(20));
            let task = match self.wire.clone() {
                Wire::Kafka(brokers) => tokio::spawn(async move {
                    let mut builder = KafkaConsumer::builder(
                        brokers,
                        group,
                        db,
                        HandlerRegistry::from_inventory(),
                    )
                    .set("session.timeout.ms", "6000")
                    .set("heartbeat.interval.ms", "500")
                    .retry(retry);
                    if instances > 1 {
                        builder = builder.set("partition.assignment.strategy", "roundrobin");
                    }
                    match builder.build().await {
                        Ok(consumer) => {
                            if let Err(error) = consumer.run_until(stopped(stop)).await {
                                tracing::error!(group, %error, "consumer stopped");
                            }
                        }
                        Err(error) => tracing::error!(group, %error, "cannot start the consumer"),
                    }
                }),
                // Each instance consumes the service's queue: with two, they compete for its
                // messages, so one order's payment and inventory replies can be applied at once.
                Wire::Rabbit(names) => tokio::spawn(async move {
                    let consumer = loop {
                        let built = RabbitConsumer::builder(
                            names.uri.as_str(),
                            group,
                            db.clone(),
                            HandlerRegistry::from_inventory(),
                        )
                        .exchange(names.exchange.as_str())
                        .queue(names.queue(group))
                        .retry(retry.clone())
                        // Below the database pool's 8 connections, also with two instances.
                        .concurrency(4)
                        .build()
                        .await;
                        match built {
                            Ok(c) => break c,
                            Err(error) => {
                                tracing::warn!(group, %error, "cannot start the RabbitMQ consumer yet");
                                if pause_or_stop(&stop).await {
                                    return;
                                }
                            }
                        }
                    };
                    if let Err(error) = consumer.run_until(stopped(stop)).await {
                        tracing::error!(group, %error, "consumer stopped");
                    }
                }),
            };
            self.consumers.push(task);
        }
    }

    /// Chaos: aborts the relay task (no graceful shutdown: a batch may be half done).
    pub async fn kill_relay(&mut self) {
        if let Some(task) = self.relay.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Chaos: aborts the consumer tasks (offsets of applied messages may not be committed).
    pub async fn kill_consumer(&mut self) {
        for task in self.consumers.drain(..) {
            task.abort();
            let _ = task.await;
        }
    }

    /// Waits for the tasks after the stop signal, `timeout` in all; a task still running then
    /// is aborted, so none outlives the service.
    pub async fn join(&mut self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        let tasks = [self.relay.take(), self.worker.take()]
            .into_iter()
            .flatten()
            .chain(self.consumers.drain(..));
        for mut task in tasks.collect::<Vec<_>>() {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                task.abort();
                let _ = task.await;
            }
        }
    }
}

/// The data directory for embedded runs, created empty.
pub fn fresh_dir(dir: &Path) -> Result<PathBuf, BoxError> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| format!("cannot clear {}: {e}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir.to_owned())
}
