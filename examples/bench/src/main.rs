//! Benchmark harness of the outbox framework.
//!
//! Measures, against baselines run in the same process and the same run (interleaved, A B C
//! A B C ...), the write path, the relay's drain of a backlog into Kafka, delivery latency,
//! the consumer's inbox dedup and its concurrency through Kafka, the in-process after-commit dispatch and the relay's peak memory;
//! prints the tables and writes them to `BENCHMARKS.md` with the machine they ran on.
//!
//! ```text
//! cargo run --release -p bench -- [--database-url postgres://postgres@127.0.0.1:5432/test]
//!     [--backends postgres,sqlite] [--brokers 127.0.0.1:9092] [--runs 3] [--scale 1.0]
//!     [--only write,relay,latency,consumer,dispatch,rabbit] [--amqp-url amqp://...]
//!     [--out BENCHMARKS.md]
//! ```

/// jemalloc, as the `outbox` binary has (it also serves librdkafka's allocations): every
/// contender of a scenario runs with the same allocator.
#[cfg(all(unix, not(target_env = "musl")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod concurrency;
mod consumer;
mod db;
mod dispatch;
mod latency;
mod model;
mod rabbit;
mod rabbit_consumer;
mod relay;
mod report;
mod stats;
mod write;

use std::error::Error;

use clap::{Parser, Subcommand};

use crate::db::Backend;
use crate::report::Report;

pub(crate) type BoxResult<T> = Result<T, Box<dyn Error + Send + Sync>>;

/// Command line of the harness.
#[derive(Parser, Debug, Clone)]
#[command(about = "Outbox benchmarks: write path, relay, latency, consumer, dispatch, memory")]
pub(crate) struct Opts {
    /// PostgreSQL server to use (a fresh database `outbox_bench` is created and dropped there).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    pub(crate) database_url: String,
    /// Backends to measure, comma-separated: postgres, sqlite.
    #[arg(long, value_delimiter = ',', default_value = "postgres,sqlite")]
    pub(crate) backends: Vec<String>,
    /// Only PostgreSQL (shorthand for `--backends postgres`).
    #[arg(long)]
    pub(crate) no_sqlite: bool,
    /// Kafka bootstrap servers (tansu, say); default: an in-process librdkafka mock cluster.
    #[arg(long)]
    pub(crate) brokers: Option<String>,
    /// Runs of each scenario; the tables show medians.
    #[arg(long, default_value_t = 3)]
    pub(crate) runs: usize,
    /// Multiplies every size (events, transactions, seconds); 1.0 is the full benchmark.
    #[arg(long, default_value_t = 1.0)]
    pub(crate) scale: f64,
    /// Scenarios to run, comma-separated: write, relay, latency, consumer, dispatch, rabbit.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "write,relay,latency,consumer,dispatch"
    )]
    pub(crate) only: Vec<String>,
    /// RabbitMQ server of the `rabbit` scenario (`--only rabbit`; not in the default list).
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub(crate) amqp_url: String,
    /// Where to write the report (`-` for nowhere).
    #[arg(long, default_value = "BENCHMARKS.md")]
    pub(crate) out: String,
    #[command(subcommand)]
    pub(crate) command: Option<Command>,
}

impl Opts {
    /// `n` scaled, at least `min`.
    pub(crate) fn scaled(&self, n: usize, min: usize) -> usize {
        ((n as f64 * self.scale).round() as usize).max(min)
    }
    fn wants(&self, section: &str) -> bool {
        self.only.iter().any(|s| s == section)
    }
}

/// Internal subcommands.
#[derive(Subcommand, Debug, Clone)]
pub(crate) enum Command {
    /// Drains the outbox of `--child-url` into Kafka in this process and prints one `RESULT`
    /// line (events, seconds, CPU seconds, peak RSS). Started by the relay scenario.
    RelayChild(relay::ChildArgs),
}

fn main() -> BoxResult<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let opts = Opts::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if let Some(Command::RelayChild(args)) = &opts.command {
        return runtime.block_on(relay::child(args.clone()));
    }
    runtime.block_on(run(opts))
}

async fn run(opts: Opts) -> BoxResult<()> {
    let mut backends = Vec::new();
    for b in &opts.backends {
        match b.as_str() {
            "postgres" | "pg" => backends.push(Backend::Postgres),
            "sqlite" if !opts.no_sqlite => backends.push(Backend::Sqlite),
            "sqlite" => {}
            other => return Err(format!("unknown backend {other:?}").into()),
        }
    }
    let mut report = Report::new(&opts);
    for backend in backends {
        let bench = db::BenchDb::create(backend, &opts.database_url).await?;
        report.versions.push(bench.version().await);
        eprintln!("== {} ==", backend.name());
        if opts.wants("write") {
            write::run(&opts, &bench, &mut report).await?;
        }
        if opts.wants("relay") {
            relay::run(&opts, &bench, &mut report).await?;
        }
        if opts.wants("latency") {
            latency::run(&opts, &bench, &mut report).await?;
        }
        if opts.wants("consumer") {
            consumer::run(&opts, &bench, &mut report).await?;
            concurrency::run(&opts, &bench, &mut report).await?;
        }
        if opts.wants("dispatch") {
            dispatch::run(&opts, &bench, &mut report).await?;
        }
        if opts.wants("rabbit") {
            rabbit::run(&opts, &bench, &mut report).await?;
            rabbit_consumer::run(&opts, &bench, &mut report).await?;
        }
        if std::env::var_os("BENCH_KEEP_DB").is_none() {
            bench.drop_database().await?;
        }
        // After each backend, so that a failure later keeps what was measured.
        write_report(&opts, &report, false)?;
    }
    write_report(&opts, &report, true)
}

fn write_report(opts: &Opts, report: &Report, last: bool) -> BoxResult<()> {
    let text = report.render();
    if last {
        println!("{text}");
    }
    if opts.out != "-" {
        // Hand-written notes below the marker (analysis of the misses) survive a rerun.
        let notes = std::fs::read_to_string(&opts.out)
            .ok()
            .and_then(|old| old.find(report::NOTES_MARKER).map(|i| old[i..].to_owned()))
            .unwrap_or_default();
        std::fs::write(&opts.out, format!("{text}{notes}"))?;
        if last {
            eprintln!("written to {}", opts.out);
        }
    }
    Ok(())
}
