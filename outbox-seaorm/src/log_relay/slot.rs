//! The slot and the publication the log relay reads through: creation, status, removal.

use std::time::Duration;

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, Statement, Value};

use super::LogRelayError;

/// A replication slot as PostgreSQL reports it (`pg_replication_slots`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SlotStatus {
    /// The slot's name.
    pub name: String,
    /// Whether a session reads it now (an active log relay).
    pub active: bool,
    /// The process id of that session on the server.
    pub active_pid: Option<i32>,
    /// The position up to which the relay confirmed everything published
    /// (`confirmed_flush_lsn`, as PostgreSQL writes it: `16/B374D848`).
    pub confirmed_lsn: Option<String>,
    /// The same position as a number of bytes into the log.
    pub confirmed_lsn_bytes: Option<u64>,
    /// How many bytes of write-ahead log the server keeps for this slot: from the confirmed
    /// position to the current end of the log.
    pub lag_bytes: Option<u64>,
}

/// Checks that a slot or publication name is one PostgreSQL takes for a slot as is: lowercase
/// letters, digits and `_`, at most 63 bytes.
pub(crate) fn check_name(what: &'static str, name: &str) -> Result<(), LogRelayError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(LogRelayError::Setup(format!(
            "{what} name `{name}` must be 1 to 63 lowercase letters, digits or `_`"
        )))
    }
}

fn statement(sql: &str, values: Vec<Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

/// Creates what the log relay reads through, where it is missing: the publication
/// `publication` of the `outbox` table's inserts, and the logical replication slot `slot` with
/// the `pgoutput` plugin. Idempotent; safe to run from several instances at once.
///
/// Events committed before the slot exists are not in it: create it (this function, or
/// [`super::LogRelay::run_until`], which calls it) before the service saves events with
/// [`crate::Capture::LogTable`] or [`crate::Capture::Messages`].
///
/// Bounded by [`DEFAULT_SETUP_TIMEOUT`] (see [`super::LogRelayBuilder::setup_timeout`]).
///
/// # Errors
/// [`LogRelayError::Setup`] when the database is not PostgreSQL, `wal_level` is not `logical`,
/// a name is invalid, the `outbox` table is missing (run the migrations first) or the bound
/// passed;
/// [`LogRelayError::Database`] when a statement fails.
pub async fn setup(
    db: &DatabaseConnection,
    slot: &str,
    publication: &str,
) -> Result<(), LogRelayError> {
    setup_within(db, slot, publication, DEFAULT_SETUP_TIMEOUT).await
}

/// The longest [`setup`] waits. Creating a slot waits until every transaction running at that
/// moment has ended, so a transaction left open elsewhere would hold it without bound.
pub const DEFAULT_SETUP_TIMEOUT: Duration = Duration::from_secs(60);

/// [`setup`], bounded by `timeout`.
pub(crate) async fn setup_within(
    db: &DatabaseConnection,
    slot: &str,
    publication: &str,
    timeout: Duration,
) -> Result<(), LogRelayError> {
    tokio::time::timeout(timeout, create(db, slot, publication))
        .await
        .unwrap_or_else(|_| {
            Err(LogRelayError::Setup(format!(
                "creating slot `{slot}` did not finish within {timeout:?}: it waits for every \
                 transaction running on the server to end (see pg_stat_activity for one left open)"
            )))
        })
}

async fn create(
    db: &DatabaseConnection,
    slot: &str,
    publication: &str,
) -> Result<(), LogRelayError> {
    check_name("slot", slot)?;
    check_name("publication", publication)?;
    if db.get_database_backend() != DbBackend::Postgres {
        return Err(LogRelayError::Setup(format!(
            "the log relay reads PostgreSQL's write-ahead log; this database is {:?}",
            db.get_database_backend()
        )));
    }
    let wal_level: String = db
        .query_one_raw(statement("SHOW wal_level", vec![]))
        .await?
        .map(|row| row.try_get_by_index(0))
        .transpose()?
        .unwrap_or_default();
    if wal_level != "logical" {
        return Err(LogRelayError::Setup(format!(
            "wal_level is `{wal_level}`; the log relay needs `logical` \
             (ALTER SYSTEM SET wal_level = logical, then restart PostgreSQL)"
        )));
    }
    let table = db
        .query_one_raw(statement("SELECT to_regclass('outbox')::text", vec![]))
        .await?
        .and_then(|row| row.try_get_by_index::<Option<String>>(0).ok().flatten());
    if table.is_none() {
        return Err(LogRelayError::Setup(
            "the `outbox` table is missing: run the outbox migrations first".to_owned(),
        ));
    }
    let exists = db
        .query_one_raw(statement(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            vec![publication.into()],
        ))
        .await?
        .is_some();
    if !exists {
        let create = format!(
            "CREATE PUBLICATION \"{publication}\" FOR TABLE outbox WITH (publish = 'insert')"
        );
        if let Err(e) = db.execute_raw(statement(&create, vec![])).await {
            // Another instance created it meanwhile.
            if !is_duplicate(&e) {
                return Err(e.into());
            }
        }
    }
    let exists = db
        .query_one_raw(statement(
            "SELECT plugin FROM pg_replication_slots WHERE slot_name = $1 \
             AND database = current_database()",
            vec![slot.into()],
        ))
        .await?;
    match exists {
        Some(row) => {
            let plugin: Option<String> = row.try_get_by_index(0)?;
            if plugin.as_deref() != Some("pgoutput") {
                return Err(LogRelayError::Setup(format!(
                    "replication slot `{slot}` exists with plugin {plugin:?}, not pgoutput"
                )));
            }
        }
        None => {
            let create = "SELECT pg_create_logical_replication_slot($1, 'pgoutput')";
            if let Err(e) = db.execute_raw(statement(create, vec![slot.into()])).await
                && !is_duplicate(&e)
            {
                return Err(e.into());
            }
            tracing::info!(slot, publication, "log relay: replication slot created");
        }
    }
    Ok(())
}

fn is_duplicate(e: &DbErr) -> bool {
    let text = e.to_string();
    text.contains("already exists") || text.contains("42710")
}

/// The status of slot `slot`, or `None` when there is no such slot.
///
/// # Errors
/// When the query fails.
pub async fn slot_status(db: &DatabaseConnection, slot: &str) -> Result<Option<SlotStatus>, DbErr> {
    let row = db
        .query_one_raw(statement(
            "SELECT slot_name::text, active, active_pid, confirmed_flush_lsn::text, \
             (confirmed_flush_lsn - '0/0'::pg_lsn)::bigint, \
             (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint \
             FROM pg_replication_slots WHERE slot_name = $1",
            vec![slot.into()],
        ))
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let unsigned = |v: Option<i64>| v.and_then(|v| u64::try_from(v).ok());
    Ok(Some(SlotStatus {
        name: row.try_get_by_index(0)?,
        active: row.try_get_by_index(1)?,
        active_pid: row.try_get_by_index(2)?,
        confirmed_lsn: row.try_get_by_index(3)?,
        confirmed_lsn_bytes: unsigned(row.try_get_by_index(4)?),
        lag_bytes: unsigned(row.try_get_by_index(5)?),
    }))
}

/// Drops replication slot `slot`, ending the session that reads it first (a running relay
/// then retries and, with the slot gone, fails to set it up again only if told not to create
/// it). Returns whether there was such a slot. Drop the slot of a relay you retire: an
/// abandoned slot keeps write-ahead log on the server without bound.
///
/// # Errors
/// When a statement fails.
pub async fn drop_slot(db: &DatabaseConnection, slot: &str) -> Result<bool, DbErr> {
    for _ in 0..50 {
        let Some(status) = slot_status(db, slot).await? else {
            return Ok(false);
        };
        if let Some(pid) = status.active_pid {
            db.execute_raw(statement(
                "SELECT pg_terminate_backend($1)",
                vec![pid.into()],
            ))
            .await?;
        }
        match db
            .execute_raw(statement(
                "SELECT pg_drop_replication_slot($1)",
                vec![slot.into()],
            ))
            .await
        {
            Ok(_) => return Ok(true),
            // Still active for a moment after its session was ended.
            Err(e) if e.to_string().contains("is active") => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e),
        }
    }
    Err(DbErr::Custom(format!(
        "replication slot `{slot}` stayed active: another relay keeps taking it"
    )))
}

/// Drops publication `publication`. Returns whether there was one.
///
/// # Errors
/// When the name is invalid or the statement fails.
pub async fn drop_publication(db: &DatabaseConnection, publication: &str) -> Result<bool, DbErr> {
    check_name("publication", publication).map_err(|e| DbErr::Custom(e.to_string()))?;
    let exists = db
        .query_one_raw(statement(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            vec![publication.into()],
        ))
        .await?
        .is_some();
    if exists {
        db.execute_raw(statement(
            &format!("DROP PUBLICATION IF EXISTS \"{publication}\""),
            vec![],
        ))
        .await?;
    }
    Ok(exists)
}
