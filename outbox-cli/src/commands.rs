//! The operator's commands: parse, call [`outbox_seaorm::admin`], print.

use std::process::ExitCode;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use outbox_core::error_chain;
use outbox_seaorm::admin::{self, AdminError, DeadFilter, EventState, ReplayFilter};
use outbox_seaorm::{Cleanup, schema};
use sea_orm::{ConnectOptions, Database, DatabaseConnection, TransactionTrait};
use uuid::Uuid;

use crate::print::{age, one_line, table};

/// How a command failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Bad input: exit code 2.
    Input(String),
    /// A failure at run time: exit code 1.
    Runtime(String),
}

impl Failure {
    /// Prints the failure and returns its exit code.
    pub(crate) fn report(self) -> ExitCode {
        match self {
            Failure::Input(msg) => {
                eprintln!("outbox: {msg}");
                ExitCode::from(2)
            }
            Failure::Runtime(msg) => {
                eprintln!("outbox: {msg}");
                ExitCode::from(1)
            }
        }
    }
}

impl From<AdminError> for Failure {
    fn from(e: AdminError) -> Self {
        match e {
            AdminError::NoSuchSlot { .. } => Failure::Input(error_chain(&e)),
            _ => Failure::Runtime(error_chain(&e)),
        }
    }
}

impl From<sea_orm::DbErr> for Failure {
    fn from(e: sea_orm::DbErr) -> Self {
        Failure::Runtime(format!("database: {}", error_chain(&e)))
    }
}

/// Parses a duration: a number of seconds (`3600`) or a number with a unit (`7d`, `12h`,
/// `30m`, `45s`, and combinations such as `1h 30m`).
///
/// # Errors
/// A message saying what is wrong.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration such as 7d, 12h, 30m or 3600 ({e})"))
}

/// Parses an RFC 3339 time (`2026-12-01T08:00:00Z`).
///
/// # Errors
/// A message saying what is wrong.
pub(crate) fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("`{s}` is not an RFC 3339 time such as 2026-12-01T08:00:00Z ({e})"))
}

/// The database to work on.
#[derive(Debug, Args)]
pub(crate) struct DbArgs {
    /// Database URL (postgres://, mysql://, sqlite://).
    #[arg(long, env = "OUTBOX_DATABASE_URL")]
    database_url: String,
}

impl DbArgs {
    async fn connect(&self) -> Result<DatabaseConnection, Failure> {
        let url = self.database_url.trim();
        let known = [
            "postgres://",
            "postgresql://",
            "mysql://",
            "mariadb://",
            "sqlite:",
        ];
        if !known.iter().any(|scheme| url.starts_with(scheme)) {
            return Err(Failure::Input(format!(
                "--database-url must start with postgres://, mysql:// or sqlite: (got `{}`)",
                url.split("://").next().unwrap_or_default()
            )));
        }
        let mut opts = ConnectOptions::new(url.to_owned());
        opts.max_connections(2)
            .min_connections(0)
            .connect_timeout(Duration::from_secs(10))
            .acquire_timeout(Duration::from_secs(10))
            .sqlx_logging(false);
        Database::connect(opts).await.map_err(|e| {
            Failure::Runtime(format!(
                "cannot connect to the database: {}",
                error_chain(&e)
            ))
        })
    }
}

/// `outbox status`.
#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    #[command(flatten)]
    db: DbArgs,
    /// The log relay's replication slot to report (PostgreSQL; default: `outbox` if it exists).
    #[arg(long, env = "OUTBOX_SLOT")]
    slot: Option<String>,
    /// Print one JSON document.
    #[arg(long)]
    json: bool,
}

fn json<T: serde::Serialize>(value: &T) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Failure::Runtime(format!("cannot write JSON: {e}")))?;
    println!("{text}");
    Ok(())
}

fn oldest(secs: Option<f64>) -> String {
    secs.map_or_else(|| "-".to_owned(), age)
}

/// Prints the outbox's status.
pub(crate) async fn status(args: StatusArgs) -> Result<(), Failure> {
    let db = args.db.connect().await?;
    let status = admin::status(&db, args.slot.as_deref()).await?;
    if args.json {
        return json(&status);
    }
    let mut out = format!(
        "events: {} pending ({} held), {} dead, oldest pending {}\n",
        status.pending,
        status.held,
        status.dead,
        oldest(status.oldest_pending_age_secs)
    );
    out.push_str(&format!("inbox: {} rows\n", status.inbox));
    if let Some(slot) = &status.slot {
        out.push_str(&format!(
            "log relay slot {}: lag {} bytes, {}\n",
            slot.slot,
            slot.lag_bytes
                .map_or_else(|| "unknown".to_owned(), |b| b.to_string()),
            if slot.active { "active" } else { "inactive" }
        ));
    }
    let groups = |title: &str, map: &std::collections::BTreeMap<String, admin::GroupStatus>| {
        let rows: Vec<Vec<String>> = map
            .iter()
            .map(|(name, g)| {
                vec![
                    if name.is_empty() {
                        "(default)".to_owned()
                    } else {
                        name.clone()
                    },
                    g.pending.to_string(),
                    g.held.to_string(),
                    g.dead.to_string(),
                    oldest(g.oldest_pending_age_secs),
                ]
            })
            .collect();
        format!(
            "\n{}",
            table(&[title, "PENDING", "HELD", "DEAD", "OLDEST PENDING"], &rows)
        )
    };
    if !status.by_aggregate_type.is_empty() {
        out.push_str(&groups("AGGREGATE TYPE", &status.by_aggregate_type));
        out.push_str(&groups("TOPIC", &status.by_topic));
    }
    if !status.deliveries.is_empty() {
        let rows: Vec<Vec<String>> = status
            .deliveries
            .iter()
            .map(|d| vec![d.handler.clone(), d.pending.to_string(), d.dead.to_string()])
            .collect();
        out.push('\n');
        out.push_str(&table(&["HANDLER", "PENDING", "DEAD"], &rows));
    }
    print!("{out}");
    Ok(())
}

/// `outbox dead …`.
#[derive(Debug, Subcommand)]
pub(crate) enum DeadCommand {
    /// List dead events with their last error.
    List(DeadListArgs),
    /// Show one event with its payload and last error.
    Show(DeadShowArgs),
    /// Put dead events back to pending (with the earlier dead events of their aggregates).
    Requeue(DeadSelectArgs),
    /// Delete dead events (needs --yes).
    Drop(DeadDropArgs),
}

/// `outbox dead list`.
#[derive(Debug, Args)]
pub(crate) struct DeadListArgs {
    #[command(flatten)]
    db: DbArgs,
    /// Only events of this aggregate type.
    #[arg(long)]
    aggregate_type: Option<String>,
    /// Only events of this type.
    #[arg(long)]
    event_type: Option<String>,
    /// Only events written at or after this RFC 3339 time.
    #[arg(long, value_parser = parse_time)]
    since: Option<DateTime<Utc>>,
    /// Print one JSON document.
    #[arg(long)]
    json: bool,
}

/// `outbox dead show`.
#[derive(Debug, Args)]
pub(crate) struct DeadShowArgs {
    #[command(flatten)]
    db: DbArgs,
    /// The event id.
    id: Uuid,
    /// Print one JSON document.
    #[arg(long)]
    json: bool,
}

/// Which dead events `requeue` and `drop` act on: one id, all, or all of one event type.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).multiple(false)))]
pub(crate) struct DeadSelectArgs {
    #[command(flatten)]
    db: DbArgs,
    /// One dead event, by id.
    #[arg(group = "which")]
    id: Option<Uuid>,
    /// Every dead event.
    #[arg(long, group = "which")]
    all: bool,
    /// Every dead event of this event type.
    #[arg(long = "type", group = "which", value_name = "EVENT_TYPE")]
    event_type: Option<String>,
}

/// `outbox dead drop`.
#[derive(Debug, Args)]
pub(crate) struct DeadDropArgs {
    #[command(flatten)]
    select: DeadSelectArgs,
    /// Really delete them.
    #[arg(long)]
    yes: bool,
}

impl DeadSelectArgs {
    /// The filter, after checking that a given id names a dead event.
    async fn filter(&self, db: &DatabaseConnection) -> Result<DeadFilter, Failure> {
        if let Some(id) = self.id {
            return match admin::event(db, id).await? {
                None => Err(Failure::Input(format!("no event with id {id}"))),
                Some(e) if e.status != Some(EventState::Dead) => Err(Failure::Input(format!(
                    "event {id} is not dead (it is {})",
                    state_name(e.status)
                ))),
                Some(_) => Ok(DeadFilter::id(id)),
            };
        }
        Ok(match &self.event_type {
            Some(t) => DeadFilter::all().event_type(t),
            None => DeadFilter::all(),
        })
    }
}

fn state_name(state: Option<EventState>) -> &'static str {
    match state {
        Some(EventState::Pending) => "pending",
        Some(EventState::Published) => "published",
        Some(EventState::Dead) => "dead",
        Some(EventState::Captured) => "captured",
        _ => "in an unknown state",
    }
}

fn dead_rows(events: &[admin::EventInfo]) -> String {
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            vec![
                e.id.clone(),
                format!("{}/{}", e.aggregate_type, e.aggregate_id),
                e.sequence.to_string(),
                e.event_type.clone(),
                e.attempts.to_string(),
                e.created_at.to_rfc3339(),
                one_line(e.last_error.as_deref().unwrap_or("-")),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "AGGREGATE",
            "SEQ",
            "TYPE",
            "ATTEMPTS",
            "CREATED",
            "LAST ERROR",
        ],
        &rows,
    )
}

/// Runs `outbox dead …`.
pub(crate) async fn dead(command: DeadCommand) -> Result<(), Failure> {
    match command {
        DeadCommand::List(args) => {
            let db = args.db.connect().await?;
            let mut filter = DeadFilter::all();
            filter.aggregate_type = args.aggregate_type;
            filter.event_type = args.event_type;
            filter.since = args.since;
            let events = admin::list_dead(&db, &filter).await?;
            if args.json {
                return json(&events);
            }
            if events.is_empty() {
                println!("no dead events");
            } else {
                print!("{}", dead_rows(&events));
            }
            Ok(())
        }
        DeadCommand::Show(args) => {
            let db = args.db.connect().await?;
            let event = admin::event(&db, args.id)
                .await?
                .ok_or_else(|| Failure::Input(format!("no event with id {}", args.id)))?;
            if args.json {
                return json(&event);
            }
            let rows = vec![
                vec!["id".to_owned(), event.id.clone()],
                vec!["status".to_owned(), state_name(event.status).to_owned()],
                vec![
                    "aggregate".to_owned(),
                    format!("{}/{}", event.aggregate_type, event.aggregate_id),
                ],
                vec!["sequence".to_owned(), event.sequence.to_string()],
                vec![
                    "type".to_owned(),
                    format!("{} v{}", event.event_type, event.version),
                ],
                vec![
                    "topic".to_owned(),
                    event
                        .topic
                        .clone()
                        .unwrap_or_else(|| "(default)".to_owned()),
                ],
                vec!["attempts".to_owned(), event.attempts.to_string()],
                vec!["occurred".to_owned(), event.occurred_at.to_rfc3339()],
                vec!["created".to_owned(), event.created_at.to_rfc3339()],
                vec![
                    "last error".to_owned(),
                    one_line(event.last_error.as_deref().unwrap_or("-")),
                ],
                vec![
                    "metadata".to_owned(),
                    event.metadata.clone().unwrap_or_else(|| "-".to_owned()),
                ],
                vec![
                    "payload".to_owned(),
                    event.payload.clone().unwrap_or_default(),
                ],
            ];
            // No header: a key/value listing.
            let text = table(&["", ""], &rows);
            print!("{}", text.split_once('\n').map_or("", |(_, rest)| rest));
            Ok(())
        }
        DeadCommand::Requeue(select) => {
            let db = select.db.connect().await?;
            let filter = select.filter(&db).await?;
            let txn = db.begin().await?;
            let done = admin::requeue(&txn, &filter).await?;
            txn.commit().await?;
            if done.selected == 0 {
                println!("no dead events to requeue");
            } else {
                println!(
                    "requeued {} dead events ({} selected, {} earlier ones of the same aggregates \
                     taken along to keep the order)",
                    done.selected + done.taken_along,
                    done.selected,
                    done.taken_along
                );
            }
            Ok(())
        }
        DeadCommand::Drop(args) => {
            let db = args.select.db.connect().await?;
            let filter = args.select.filter(&db).await?;
            if !args.yes {
                let events = admin::list_dead(&db, &filter).await?;
                let mut msg = format!(
                    "refusing to drop without --yes; it would delete {} dead events",
                    events.len()
                );
                if !events.is_empty() {
                    msg.push_str(":\n");
                    msg.push_str(dead_rows(&events).trim_end());
                }
                return Err(Failure::Input(msg));
            }
            let txn = db.begin().await?;
            let n = admin::drop_dead(&txn, &filter).await?;
            txn.commit().await?;
            println!("dropped {n} dead events");
            Ok(())
        }
    }
}

/// `outbox replay`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).multiple(false)))]
pub(crate) struct ReplayArgs {
    #[command(flatten)]
    db: DbArgs,
    /// The events of this aggregate id.
    #[arg(long, group = "which")]
    aggregate: Option<String>,
    /// With --aggregate: only the aggregate of this type.
    #[arg(long, requires = "aggregate")]
    aggregate_type: Option<String>,
    /// The events written at or after this RFC 3339 time.
    #[arg(long, group = "which", value_parser = parse_time)]
    since: Option<DateTime<Utc>>,
}

/// Runs `outbox replay`.
pub(crate) async fn replay(args: ReplayArgs) -> Result<(), Failure> {
    let db = args.db.connect().await?;
    let filter = match (&args.aggregate, args.since) {
        (Some(id), _) => {
            let filter = ReplayFilter::aggregate(id);
            match &args.aggregate_type {
                Some(t) => filter.aggregate_type(t),
                None => filter,
            }
        }
        (None, Some(at)) => ReplayFilter::since(at),
        (None, None) => {
            return Err(Failure::Input("give --aggregate or --since".to_owned()));
        }
    };
    let txn = db.begin().await?;
    let n = admin::replay(&txn, &filter).await?;
    txn.commit().await?;
    if n == 0 && args.aggregate.is_some() {
        return Err(Failure::Input(format!(
            "no published event of aggregate {} in the table",
            args.aggregate.unwrap_or_default()
        )));
    }
    println!("replaying {n} events: pending again, the relay publishes them in order");
    Ok(())
}

/// `outbox cleanup`.
#[derive(Debug, Args)]
pub(crate) struct CleanupArgs {
    #[command(flatten)]
    db: DbArgs,
    /// Delete published rows and inbox rows older than this (7d, 12h, 30m, or seconds).
    #[arg(long, value_parser = parse_duration)]
    older_than: Duration,
}

/// The longest a command (or one batch of `outbox cleanup`) waits for the database: a statement
/// that waits on a lock held elsewhere fails then instead of hanging; its transaction is rolled
/// back.
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `run`, a failure at run time once `limit` passed.
pub(crate) async fn within<T>(
    limit: Duration,
    run: impl std::future::Future<Output = Result<T, Failure>>,
) -> Result<T, Failure> {
    tokio::time::timeout(limit, run).await.unwrap_or_else(|_| {
        Err(Failure::Runtime(format!(
            "the database did not answer within {} s; nothing was changed",
            limit.as_secs()
        )))
    })
}

/// Runs `outbox cleanup`: batches until nothing older is left.
pub(crate) async fn cleanup(args: CleanupArgs) -> Result<(), Failure> {
    let db = args.db.connect().await?;
    let cleanup = Cleanup::builder(db)
        .published_retention(args.older_than)
        .inbox_retention(args.older_than)
        .build();
    let (mut outbox, mut deliveries, mut inbox) = (0, 0, 0);
    loop {
        let batch = async {
            cleanup
                .run_once()
                .await
                .map_err(|e| Failure::Runtime(error_chain(&e)))
        };
        let report = within(COMMAND_TIMEOUT, batch).await?;
        outbox += report.outbox();
        deliveries += report.deliveries();
        inbox += report.inbox();
        if !report.has_more() {
            break;
        }
    }
    println!("deleted {outbox} outbox rows, {deliveries} delivery rows, {inbox} inbox rows");
    Ok(())
}

/// Runs `outbox migrate`.
pub(crate) async fn migrate(args: DbArgs) -> Result<(), Failure> {
    use sea_orm_migration::MigratorTrait;
    let db = args.connect().await?;
    let pending = schema::OutboxMigrator::get_pending_migrations(&db).await?;
    schema::migrate(&db).await?;
    println!(
        "applied {} outbox migrations; the outbox tables are up to date",
        pending.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_units_or_seconds() {
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert_eq!(parse_duration("12h"), Ok(Duration::from_secs(12 * 3600)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("3600"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("7 parsecs").is_err());
        assert!(parse_duration("-5").is_err());
    }

    #[test]
    fn times_are_rfc_3339() {
        let t = parse_time("2026-12-01T08:00:00+01:00").expect("valid");
        assert_eq!(t.to_rfc3339(), "2026-12-01T07:00:00+00:00");
        assert!(parse_time("yesterday").is_err());
    }
}
