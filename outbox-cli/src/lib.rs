//! The `outbox` command line: the relay and the operator's commands over an outbox database
//! (PostgreSQL, MariaDB/MySQL or SQLite).
//!
//! ```text
//! outbox relay   --database-url URL (--brokers HOST:PORT | --amqp-url amqp://...) [--metrics-addr ADDR] ...
//! outbox status  [--slot NAME] [--json]
//! outbox dead list [--aggregate-type T] [--event-type T] [--since RFC3339] [--json]
//! outbox dead show ID [--json]
//! outbox dead requeue (ID | --all | --type EVENT_TYPE)
//! outbox dead drop (ID | --all | --type EVENT_TYPE) --yes
//! outbox replay (--aggregate ID [--aggregate-type T] | --since RFC3339)
//! outbox cleanup --older-than DURATION
//! outbox migrate
//! ```
//!
//! Every command takes `--database-url` (or `OUTBOX_DATABASE_URL`). Exit codes: 0 done, 2 bad
//! input (a bad URL, flag, time or duration, an unknown event id, conflicting flags, a drop
//! without `--yes`), 1 a failure at run time (the database or the broker unreachable). The
//! database work is in [`outbox_seaorm::admin`]; this crate parses, calls and prints. The
//! binary `outbox-relay` is `outbox relay` under its old name.

mod commands;
mod print;
mod relay;

/// The binaries' allocator: jemalloc, which also serves librdkafka's allocations (the crate's
/// unprefixed `malloc`). A relay allocates and frees per message on one thread and another
/// (librdkafka frees a message and each of its 15 headers on its own threads), which glibc's
/// allocator serves slowly: the log relay's drain on the mock cluster went from about 120,000
/// to about 180,000 events/s with it (BENCHMARKS.md, the notes on where the log relay's drain goes).
#[cfg(all(unix, not(target_env = "musl")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Operates a transactional outbox.
#[derive(Debug, Parser)]
#[command(name = "outbox", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Publish the outbox to Kafka or RabbitMQ until SIGINT or SIGTERM.
    Relay(Box<relay::RelayArgs>),
    /// Pending, held and dead events, deliveries, inbox and log relay slot.
    Status(commands::StatusArgs),
    /// Inspect, requeue or drop dead events.
    Dead {
        #[command(subcommand)]
        command: commands::DeadCommand,
    },
    /// Publish events still in the table again.
    Replay(commands::ReplayArgs),
    /// Delete published rows and inbox rows older than a duration.
    Cleanup(commands::CleanupArgs),
    /// Apply the outbox's migrations.
    Migrate(commands::DbArgs),
}

/// `outbox-relay`'s arguments: `outbox relay`'s, at the top level.
#[derive(Debug, Parser)]
#[command(
    name = "outbox-relay",
    version,
    about = "Publishes the outbox to Kafka or RabbitMQ (`outbox relay` under its old name)."
)]
struct RelayCli {
    #[command(flatten)]
    args: relay::RelayArgs,
}

fn init_tracing(default: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default.into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

fn block_on<F: std::future::Future<Output = ExitCode>>(run: F) -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(run),
        Err(e) => {
            eprintln!("outbox: cannot start the runtime: {e}");
            ExitCode::from(1)
        }
    }
}

/// The `outbox` binary: parses the command line and runs the command.
pub fn main_outbox() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Relay(args) => {
            init_tracing("info");
            block_on(relay::run(*args))
        }
        command => {
            init_tracing("warn");
            block_on(async move {
                use commands::{COMMAND_TIMEOUT, within};
                let outcome = match command {
                    // Taken by the arm above.
                    Command::Relay(args) => return relay::run(*args).await,
                    Command::Status(args) => within(COMMAND_TIMEOUT, commands::status(args)).await,
                    Command::Dead { command } => {
                        within(COMMAND_TIMEOUT, commands::dead(command)).await
                    }
                    Command::Replay(args) => within(COMMAND_TIMEOUT, commands::replay(args)).await,
                    // Bounded per batch: a large cleanup may take longer in all.
                    Command::Cleanup(args) => commands::cleanup(args).await,
                    Command::Migrate(args) => {
                        within(COMMAND_TIMEOUT, commands::migrate(args)).await
                    }
                };
                match outcome {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(failure) => failure.report(),
                }
            })
        }
    }
}

/// The `outbox-relay` binary: `outbox relay` under its old name.
pub fn main_relay() -> ExitCode {
    let cli = RelayCli::parse();
    init_tracing("info");
    block_on(relay::run(cli.args))
}
