//! `outbox relay` (and the `outbox-relay` binary): publishes a database's outbox to Kafka or
//! RabbitMQ until SIGINT or SIGTERM.
//!
//! By default it polls the outbox table ([`Relay`]). With `--log` (PostgreSQL only) it reads
//! the write-ahead log through a logical replication slot instead ([`LogRelay`]): the database
//! needs `wal_level=logical` and the user the `REPLICATION` attribute; the slot and the
//! publication are created when missing, and a second instance on the same slot stands by
//! until the first one's session ends. `--concurrency` is then the number of publishing lanes
//! (default the log relay's, [`outbox_seaorm::log_relay::DEFAULT_LANES`]);
//! `--delete-published` does not apply.
//!
//! Every flag also reads an `OUTBOX_*` environment variable. A bad configuration (including a
//! database that cannot carry a log relay) exits with code 2; on shutdown a one-line summary
//! is printed. With `--metrics-addr` the relay's metrics are served in Prometheus' text format
//! at `http://ADDR/metrics`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use metrics_exporter_prometheus::PrometheusBuilder;
use outbox_core::{Publisher, error_chain};
use outbox_kafka::KafkaPublisher;
use outbox_rabbitmq::RabbitPublisher;
use outbox_seaorm::log_relay::{DEFAULT_SLOT, LogRelay, LogRelayError};
use outbox_seaorm::{Cleanup, Completion, Relay};
use tokio::sync::watch;

/// Publishes the outbox to Kafka (`--brokers`) or RabbitMQ (`--amqp-url`).
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("broker").required(true).multiple(false)))]
pub(crate) struct RelayArgs {
    /// Database URL (postgres://, mysql://, sqlite://).
    #[arg(long, env = "OUTBOX_DATABASE_URL")]
    database_url: String,
    /// Kafka bootstrap servers, comma-separated host:port.
    #[arg(long, env = "OUTBOX_KAFKA_BROKERS", group = "broker")]
    brokers: Option<String>,
    /// RabbitMQ URL (amqp://user:password@host:port/vhost, the vhost URL-encoded: %2f for /):
    /// publish there instead of to Kafka.
    #[arg(long, env = "OUTBOX_AMQP_URL", group = "broker")]
    amqp_url: Option<String>,
    /// With --amqp-url: the exchange to publish to (default: the publisher's, `outbox`).
    #[arg(long, env = "OUTBOX_EXCHANGE", requires = "amqp_url")]
    exchange: Option<String>,
    /// Serve the relay's metrics in Prometheus' text format at http://ADDR/metrics.
    #[arg(long, env = "OUTBOX_METRICS_ADDR")]
    metrics_addr: Option<SocketAddr>,
    /// Rows per relay batch.
    #[arg(long, env = "OUTBOX_BATCH_SIZE", default_value_t = 500)]
    batch_size: usize,
    /// Relay cycles in flight at once, each on its own shards (PostgreSQL, MariaDB/MySQL; SQLite
    /// runs one), default 2; opens up to this many database connections, plus one. With `--log`:
    /// the publishing lanes, each taking its share of the aggregates, default the log relay's.
    #[arg(long, env = "OUTBOX_CONCURRENCY")]
    concurrency: Option<usize>,
    /// Delete each row once its event is published, instead of marking it for the cleanup.
    #[arg(long, env = "OUTBOX_DELETE_PUBLISHED")]
    delete_published: bool,
    /// Prefix of the default topic names.
    #[arg(long, env = "OUTBOX_TOPIC_PREFIX", default_value = "")]
    topic_prefix: String,
    /// A librdkafka property, key=value (repeatable).
    #[arg(long = "kafka-config", value_parser = parse_pair, conflicts_with = "amqp_url")]
    kafka_config: Vec<(String, String)>,
    /// Create each topic (3 partitions, replication 1) the first time it is published to.
    #[arg(long, env = "OUTBOX_PROVISION_TOPICS", conflicts_with = "amqp_url")]
    provision_topics: bool,
    /// Also delete published rows (and applied inbox rows) older than this many seconds, in
    /// bounded batches. Off unless given.
    #[arg(long, env = "OUTBOX_CLEANUP_AFTER_SECS")]
    cleanup_after_secs: Option<u64>,
    /// The longest a relay cycle waits for Kafka to acknowledge its batch; past it the batch is
    /// retried and the cycle's shards are released. Keep it above `message.timeout.ms`.
    #[arg(long, env = "OUTBOX_PUBLISH_TIMEOUT_SECS", default_value_t = 60)]
    publish_timeout_secs: u64,
    /// Read the write-ahead log through a logical replication slot instead of polling the
    /// table (PostgreSQL with wal_level=logical; the user needs REPLICATION).
    #[arg(long, env = "OUTBOX_LOG")]
    log: bool,
    /// With --log: the replication slot (created when missing).
    #[arg(long, env = "OUTBOX_SLOT", default_value = DEFAULT_SLOT)]
    slot: String,
    /// With --log: the publication of the outbox table's inserts (default: the slot's name).
    #[arg(long, env = "OUTBOX_PUBLICATION")]
    publication: Option<String>,
    /// With --log: warn while the slot keeps more write-ahead log than this many bytes.
    #[arg(long, env = "OUTBOX_LAG_WARNING_BYTES", default_value_t = 1 << 30)]
    lag_warning_bytes: u64,
    /// With --log: how often an idle relay emits and confirms a heartbeat, so an idle slot
    /// keeps no log.
    #[arg(long, env = "OUTBOX_HEARTBEAT_SECS", default_value_t = 10)]
    heartbeat_secs: u64,
}

/// What a relay did, for the summary line.
struct Summary {
    published: u64,
    retried: u64,
    dead: u64,
}

/// Completes once `stop` turns true (or its sender is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn parse_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(format!("`{s}` is not key=value")),
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Runs the relay until SIGINT or SIGTERM; the exit code says how it ended.
pub(crate) async fn run(args: RelayArgs) -> ExitCode {
    if args.batch_size == 0 {
        eprintln!("outbox-relay: --batch-size must be at least 1");
        return ExitCode::from(2);
    }
    if args.concurrency.is_some_and(|c| !(1..=16).contains(&c)) {
        eprintln!("outbox-relay: --concurrency must be between 1 and 16");
        return ExitCode::from(2);
    }
    if args.publish_timeout_secs == 0 {
        eprintln!("outbox-relay: --publish-timeout-secs must be at least 1");
        return ExitCode::from(2);
    }
    if args.log {
        if !(args.database_url.starts_with("postgres://")
            || args.database_url.starts_with("postgresql://"))
        {
            eprintln!(
                "outbox-relay: --log reads PostgreSQL's write-ahead log; --database-url must be \
                 a postgres:// URL"
            );
            return ExitCode::from(2);
        }
        if args.delete_published {
            eprintln!(
                "outbox-relay: --delete-published does not apply with --log (rows are marked \
                 published; --cleanup-after-secs deletes them)"
            );
            return ExitCode::from(2);
        }
        if args.heartbeat_secs == 0 {
            eprintln!("outbox-relay: --heartbeat-secs must be at least 1");
            return ExitCode::from(2);
        }
    }
    if let Some(addr) = args.metrics_addr
        && let Err(e) = PrometheusBuilder::new().with_http_listener(addr).install()
    {
        eprintln!(
            "outbox-relay: cannot serve metrics at {addr}: {}",
            error_chain(&e)
        );
        return ExitCode::from(2);
    }
    match (&args.brokers, &args.amqp_url) {
        (Some(brokers), _) => match kafka_publisher(&args, brokers) {
            Ok(publisher) => relay(&args, publisher).await,
            Err(code) => code,
        },
        (None, Some(url)) => match rabbit_publisher(&args, url).await {
            Ok(publisher) => relay(&args, publisher).await,
            Err(code) => code,
        },
        // clap requires one of the two.
        (None, None) => {
            eprintln!("outbox-relay: give --brokers or --amqp-url");
            ExitCode::from(2)
        }
    }
}

fn kafka_publisher(args: &RelayArgs, brokers: &str) -> Result<KafkaPublisher, ExitCode> {
    let mut builder = KafkaPublisher::builder(brokers).topic_prefix(&args.topic_prefix);
    for (k, v) in &args.kafka_config {
        builder = builder.set(k, v);
    }
    if args.provision_topics {
        builder = builder.provision_topics(3, 1);
    }
    builder.build().map_err(|e| {
        eprintln!("outbox-relay: bad Kafka configuration: {}", error_chain(&e));
        ExitCode::from(2)
    })
}

async fn rabbit_publisher(args: &RelayArgs, url: &str) -> Result<RabbitPublisher, ExitCode> {
    if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
        eprintln!("outbox-relay: --amqp-url must be an amqp:// or amqps:// URL");
        return Err(ExitCode::from(2));
    }
    let mut builder = RabbitPublisher::builder(url);
    if let Some(exchange) = &args.exchange {
        builder = builder.exchange(exchange);
    }
    builder.build().await.map_err(|e| {
        eprintln!("outbox-relay: RabbitMQ: {}", error_chain(&e));
        // A broker that cannot be reached is a runtime failure; a refused set-up is the
        // configuration's.
        ExitCode::from(if e.is_retryable() { 1 } else { 2 })
    })
}

/// Connects to the database and relays through `publisher` until a signal.
async fn relay<P: Publisher + 'static>(args: &RelayArgs, publisher: P) -> ExitCode {
    let db = match sea_orm::Database::connect(&args.database_url).await {
        Ok(db) => db,
        Err(e) => {
            eprintln!(
                "outbox-relay: cannot connect to the database: {}",
                error_chain(&e)
            );
            return ExitCode::from(2);
        }
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let cleanup = args.cleanup_after_secs.map(|secs| {
        let keep = Duration::from_secs(secs);
        let cleanup = Cleanup::builder(db.clone())
            .published_retention(keep)
            .inbox_retention(keep)
            .build();
        let stop = stopped(stop_rx.clone());
        tokio::spawn(async move { cleanup.run_until(stop).await })
    });
    let started = Instant::now();
    let outcome = if args.log {
        // The log relay opens its own connections; this pool serves the cleanup only.
        run_log(args, publisher, stopped(stop_rx)).await
    } else {
        run_table(args, db, publisher, stopped(stop_rx)).await
    };
    if let Some(cleanup) = cleanup {
        // A relay that cannot run takes the cleanup beside it down too.
        if outcome.is_err() {
            cleanup.abort();
        }
        match cleanup.await {
            Ok(Err(e)) => eprintln!("outbox-relay: cleanup stopped: {}", error_chain(&e)),
            Err(e) if !e.is_cancelled() => eprintln!("outbox-relay: cleanup task failed: {e}"),
            _ => {}
        }
    }
    match outcome {
        Ok(stats) => {
            println!(
                "outbox-relay: published {}, retried {}, dead-lettered {}, elapsed {:.1}s",
                stats.published,
                stats.retried,
                stats.dead,
                started.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

/// Polls the outbox table until `stop`.
async fn run_table(
    args: &RelayArgs,
    db: sea_orm::DatabaseConnection,
    publisher: impl Publisher + 'static,
    stop: impl std::future::Future<Output = ()>,
) -> Result<Summary, ExitCode> {
    let completion = if args.delete_published {
        Completion::Delete
    } else {
        Completion::Mark
    };
    let mut relay = Relay::builder(db, publisher)
        .batch_size(args.batch_size)
        .completion(completion)
        .publish_timeout(Duration::from_secs(args.publish_timeout_secs));
    if let Some(cycles) = args.concurrency {
        relay = relay.concurrency(cycles);
    }
    let relay = relay.build();
    match relay.run_until(stop).await {
        Ok(stats) => Ok(Summary {
            published: stats.published(),
            retried: stats.failed(),
            dead: stats.dead(),
        }),
        Err(e) => {
            eprintln!("outbox-relay: {}", error_chain(&e));
            Err(ExitCode::from(1))
        }
    }
}

/// Reads the write-ahead log through the slot until `stop` (`--log`).
async fn run_log(
    args: &RelayArgs,
    publisher: impl Publisher + 'static,
    stop: impl std::future::Future<Output = ()>,
) -> Result<Summary, ExitCode> {
    let publication = args.publication.as_deref().unwrap_or(&args.slot);
    let mut relay = LogRelay::builder(&args.database_url, publisher)
        .slot(&args.slot)
        .publication(publication)
        .batch_size(args.batch_size)
        .publish_timeout(Duration::from_secs(args.publish_timeout_secs))
        .lag_warning(args.lag_warning_bytes)
        .heartbeat(Duration::from_secs(args.heartbeat_secs));
    // The table relay's default cycles are not the log relay's default lanes.
    if let Some(lanes) = args.concurrency {
        relay = relay.concurrency(lanes);
    }
    let relay = relay.build();
    match relay.run_until(stop).await {
        Ok(stats) => Ok(Summary {
            published: stats.published,
            retried: stats.retried,
            dead: stats.dead_lettered,
        }),
        Err(e @ (LogRelayError::Url(_) | LogRelayError::Setup(_))) => {
            eprintln!(
                "outbox-relay: this database cannot carry a log relay: {}",
                error_chain(&e)
            );
            Err(ExitCode::from(2))
        }
        Err(e) => {
            eprintln!("outbox-relay: {}", error_chain(&e));
            Err(ExitCode::from(1))
        }
    }
}
