//! The benchmark database (created fresh, dropped at the end) and the Kafka cluster.

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use futures::future::BoxFuture;
use outbox_core::{Envelope, HandlerRegistry, PublishError, Publisher};
use outbox_kafka::{KafkaConfig, provision_topics};
use outbox_seaorm::log_relay::{LogRelay, LogRelayBuilder};
use outbox_seaorm::{Capture, Outbox};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, Schema, Statement,
    Value,
};

use crate::BoxResult;
use crate::model::{order, vorder};

/// The database name created (and dropped) on the PostgreSQL server.
const PG_DATABASE: &str = "outbox_bench";
/// The topic every scenario publishes to (`default_topic("", "Order")`).
pub(crate) const TOPIC: &str = "order";
/// Partitions of [`TOPIC`].
pub(crate) const PARTITIONS: i32 = 6;
/// The replication slot (and publication) of the log relay contenders.
pub(crate) const LOG_SLOT: &str = "bench_outbox";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Backend {
    Postgres,
    Sqlite,
}

impl Backend {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Backend::Postgres => "PostgreSQL",
            Backend::Sqlite => "SQLite",
        }
    }
}

pub(crate) struct BenchDb {
    pub(crate) backend: Backend,
    pub(crate) url: String,
    admin_url: Option<String>,
    pub(crate) db: DatabaseConnection,
}

pub(crate) async fn connect(url: &str, max: u32) -> BoxResult<DatabaseConnection> {
    let mut opts = ConnectOptions::new(url.to_owned());
    opts.max_connections(max)
        .min_connections(0)
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(60))
        .sqlx_logging(false)
        // SQLite serializes writers: 8 clients on a busy machine wait longer than sqlx's 5 s
        // default before their turn, which is contention to measure, not an error.
        .map_sqlx_sqlite_opts(|o| o.busy_timeout(Duration::from_secs(120)));
    Ok(Database::connect(opts).await?)
}

impl BenchDb {
    pub(crate) async fn create(backend: Backend, pg_url: &str) -> BoxResult<BenchDb> {
        let (url, admin_url) = match backend {
            Backend::Postgres => {
                let admin = connect(pg_url, 1).await?;
                drop_pg_database(&admin).await?;
                admin
                    .execute_unprepared(&format!("CREATE DATABASE \"{PG_DATABASE}\""))
                    .await?;
                admin.close().await?;
                let base = pg_url.rsplit_once('/').map_or(pg_url, |(b, _)| b);
                (format!("{base}/{PG_DATABASE}"), Some(pg_url.to_owned()))
            }
            Backend::Sqlite => {
                let path =
                    std::env::temp_dir().join(format!("outbox_bench_{}.db", std::process::id()));
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                }
                (format!("sqlite://{}?mode=rwc", path.display()), None)
            }
        };
        let db = connect(&url, 16).await?;
        outbox_seaorm::schema::migrate(&db).await?;
        let schema = Schema::new(db.get_database_backend());
        db.execute(&schema.create_table_from_entity(order::Entity))
            .await?;
        db.execute(&schema.create_table_from_entity(vorder::Entity))
            .await?;
        db.execute_unprepared(
            "CREATE TABLE bench_effects (event_id VARCHAR(36) PRIMARY KEY, order_id VARCHAR(64) NOT NULL)",
        )
        .await?;
        Ok(BenchDb {
            backend,
            url,
            admin_url,
            db,
        })
    }

    /// Empties every table the scenarios write.
    pub(crate) async fn reset(&self) -> BoxResult<()> {
        let tables = "outbox, outbox_sequence, outbox_version_offset, outbox_delivery, \
                      outbox_inbox, bench_orders, bench_vorders, bench_effects";
        match self.backend {
            Backend::Postgres => {
                self.db
                    .execute_unprepared(&format!("TRUNCATE {tables}"))
                    .await?;
                self.db.execute_unprepared("VACUUM ANALYZE").await?;
            }
            Backend::Sqlite => {
                for t in tables.split(", ") {
                    self.db
                        .execute_unprepared(&format!("DELETE FROM {t}"))
                        .await?;
                }
            }
        }
        Ok(())
    }

    pub(crate) async fn version(&self) -> String {
        let sql = match self.backend {
            Backend::Postgres => "SELECT version()",
            Backend::Sqlite => "SELECT 'SQLite ' || sqlite_version()",
        };
        match self
            .db
            .query_one_raw(Statement::from_string(self.db.get_database_backend(), sql))
            .await
        {
            Ok(Some(row)) => row.try_get_by_index::<String>(0).unwrap_or_default(),
            _ => format!("{} (version unknown)", self.backend.name()),
        }
    }

    pub(crate) async fn drop_database(self) -> BoxResult<()> {
        self.db.close().await?;
        if let Some(admin_url) = &self.admin_url {
            let admin = connect(admin_url, 1).await?;
            drop_pg_database(&admin).await?;
        } else if let Some(path) = self.url.strip_prefix("sqlite://") {
            let path = path.trim_end_matches("?mode=rwc");
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{path}{suffix}"));
            }
        }
        Ok(())
    }
}

/// Drops the benchmark database, and first the replication slots left in it (a slot keeps the
/// database from being dropped; a run that failed between a log relay contender's set-up and
/// its teardown leaves one).
async fn drop_pg_database(admin: &DatabaseConnection) -> BoxResult<()> {
    admin
        .execute_unprepared(&format!(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
             WHERE database = '{PG_DATABASE}' AND NOT active"
        ))
        .await?;
    admin
        .execute_unprepared(&format!(
            "DROP DATABASE IF EXISTS \"{PG_DATABASE}\" WITH (FORCE)"
        ))
        .await?;
    Ok(())
}

/// Creates the log relay's slot and publication ([`LOG_SLOT`]): what a log relay contender
/// reads is only what commits after this.
pub(crate) async fn log_setup(bench: &BenchDb) -> BoxResult<()> {
    outbox_seaorm::log_relay::setup(&bench.db, LOG_SLOT, LOG_SLOT).await?;
    Ok(())
}

/// Drops the slot and the publication again: a slot left behind keeps write-ahead log and
/// decodes everything written after it in the next contenders' runs.
pub(crate) async fn log_teardown(bench: &BenchDb) -> BoxResult<()> {
    outbox_seaorm::log_relay::drop_slot(&bench.db, LOG_SLOT).await?;
    outbox_seaorm::log_relay::drop_publication(&bench.db, LOG_SLOT).await?;
    Ok(())
}

/// A log relay on [`LOG_SLOT`] (created beforehand by [`log_setup`]) publishing through
/// `publisher`, to build.
pub(crate) fn log_relay(url: &str, publisher: impl Publisher + 'static) -> LogRelayBuilder {
    LogRelay::builder(url, publisher)
        .slot(LOG_SLOT)
        .publication(LOG_SLOT)
        .create_slot(false)
}

/// A relay running in a task until [`Running::stop`].
pub(crate) struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<BoxResult<()>>,
}

impl Running {
    /// Spawns `run`, handing it the future that completes when [`Running::stop`] is called
    /// (the relay's shutdown signal).
    pub(crate) fn spawn<Fut>(run: impl FnOnce(BoxFuture<'static, ()>) -> Fut) -> Running
    where
        Fut: Future<Output = BoxResult<()>> + Send + 'static,
    {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stopped.await;
        };
        Running {
            stop,
            task: tokio::spawn(run(shutdown.boxed())),
        }
    }

    /// Whether the relay stopped by itself (it failed).
    pub(crate) fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops the relay and waits for it to return.
    pub(crate) async fn stop(self) -> BoxResult<()> {
        let _ = self.stop.send(());
        self.task.await?
    }
}

/// An `Outbox` on `db` without in-process handlers, saving in capture mode `capture`.
pub(crate) fn outbox(db: &DatabaseConnection, capture: Capture) -> Outbox {
    Outbox::builder(db.clone())
        .handlers(HandlerRegistry::new())
        .capture(capture)
        .build()
}

/// What a [`Tap`] is told after each batch: the envelopes and their results.
pub(crate) type OnBatch = Box<dyn Fn(&[Envelope], &[Result<(), PublishError>]) + Send + Sync>;

/// Delegates to `KafkaPublisher` and shows each batch with its results to `on_batch` once the
/// batch's delivery reports are in (the moment a relay may mark or confirm it).
pub(crate) struct Tap {
    pub(crate) inner: Box<dyn Publisher>,
    pub(crate) on_batch: OnBatch,
}

#[async_trait]
impl Publisher for Tap {
    async fn publish(&self, batch: &[Envelope]) -> Vec<Result<(), PublishError>> {
        let results = self.inner.publish(batch).await;
        (self.on_batch)(batch, &results);
        results
    }
}

/// A publisher that acknowledges every event at once and sends nothing: the drain contender
/// `log-unsent` (and any log relay contender with `BENCH_LOG_PUBLISHER=discard`, a profiling
/// knob) measures the server's decoding and the relay's reading alone.
pub(crate) struct Discard;

#[async_trait]
impl Publisher for Discard {
    async fn publish(&self, batch: &[Envelope]) -> Vec<Result<(), PublishError>> {
        batch.iter().map(|_| Ok(())).collect()
    }
}

/// A statement written with `?` placeholders, numbered for PostgreSQL.
pub(crate) fn stmt(backend: DbBackend, sql: &str, values: Vec<Value>) -> Statement {
    if backend != DbBackend::Postgres {
        return Statement::from_sql_and_values(backend, sql, values);
    }
    let mut out = String::with_capacity(sql.len() + 8);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push_str(&format!("${n}"));
        } else {
            out.push(c);
        }
    }
    Statement::from_sql_and_values(backend, out, values)
}

/// A Kafka cluster for one measurement: a fresh in-process mock cluster (returned, keep it
/// alive) or the given brokers; [`TOPIC`] exists on it.
pub(crate) async fn kafka(
    brokers: Option<&str>,
) -> BoxResult<(Option<MockCluster<'static, DefaultProducerContext>>, String)> {
    match brokers {
        Some(b) => {
            provision_topics(&KafkaConfig::new(b), &[TOPIC], PARTITIONS, 1).await?;
            Ok((None, b.to_owned()))
        }
        None => {
            let cluster = MockCluster::new(1)?;
            cluster.create_topic(TOPIC, PARTITIONS, 1)?;
            let servers = cluster.bootstrap_servers();
            Ok((Some(cluster), servers))
        }
    }
}

/// `KafkaPublisher::builder(brokers)` with the librdkafka properties of `BENCH_KAFKA_CONFIG`
/// (`key=value,key=value`) applied, for profiling; the figures in the report use the defaults.
pub(crate) fn publisher(brokers: &str) -> outbox_kafka::KafkaPublisherBuilder {
    let mut builder = outbox_kafka::KafkaPublisher::builder(brokers);
    if let Ok(config) = std::env::var("BENCH_KAFKA_CONFIG") {
        for pair in config.split(',') {
            if let Some((k, v)) = pair.split_once('=') {
                builder = builder.set(k.trim(), v.trim());
            }
        }
    }
    builder
}

/// A numeric `BENCH_*` environment knob, for profiling.
pub(crate) fn env_knob(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}
