//! The outbox's tables, as SeaORM migrations.
//!
//! | table | holds |
//! |---|---|
//! | `outbox` | one row per event: `id`, `aggregatetype`, `aggregateid`, `type`, `payload` (the columns Debezium's outbox event router reads by default), plus order, routing and delivery state |
//! | `outbox_sequence` | the last sequence number of each aggregate; its row lock orders concurrent saves of one aggregate |
//! | `outbox_version_offset` | per versioned aggregate whose version and event sequence differ, by how much (a save without events moves the version only; a delete records where the sequence stopped) |
//! | `outbox_shard` | one row per relay shard; a relay holds a shard's row lock while it publishes the shard's events |
//! | `outbox_delivery` | one row per (event, in-process handler): the durable after-commit handler registry |
//! | `outbox_inbox` | one row per (event, consumer) applied: consumers' idempotency |
//!
//! Times are stored as microseconds since the Unix epoch (UTC) in `BIGINT` columns, the same on
//! every database.
//!
//! Run [`migrations`] inside your own migrator, or [`migrate`] to apply them directly:
//!
//! ```no_run
//! # async fn run(db: &sea_orm::DatabaseConnection) -> Result<(), sea_orm::DbErr> {
//! outbox_seaorm::schema::migrate(db).await?;
//! # Ok(()) }
//! ```

use sea_orm::{ConnectionTrait, DbErr};
use sea_orm_migration::prelude::*;
use sea_orm_migration::{MigrationName, MigrationTrait, MigratorTrait, SchemaManager};

use crate::status::{DeliveryStatus, EventStatus};

/// How many shards the relay spreads aggregates over. Fixed: a row's shard is stored with it.
pub const SHARDS: i16 = 64;

/// Table and column names.
#[derive(DeriveIden, Clone, Copy, Debug)]
pub enum Outbox {
    /// `outbox`
    Table,
    /// Insertion order, the primary key.
    Position,
    /// Event id (UUIDv7, text).
    Id,
    /// Aggregate routing name.
    #[sea_orm(iden = "aggregatetype")]
    AggregateType,
    /// Aggregate id.
    #[sea_orm(iden = "aggregateid")]
    AggregateId,
    /// Event name.
    #[sea_orm(iden = "type")]
    EventType,
    /// Payload version.
    Version,
    /// Per-aggregate sequence number, from 1.
    Sequence,
    /// JSON payload.
    Payload,
    /// JSON metadata (correlation, causation, traceparent, extra).
    Metadata,
    /// Topic override.
    Topic,
    /// Relay shard, `0..SHARDS`.
    Shard,
    /// When the event occurred.
    OccurredAt,
    /// When the row was written.
    CreatedAt,
    /// Where the event stands with the relay: pending, published, dead or captured (the crate's
    /// `status::EventStatus` holds the stored values).
    Status,
    /// Failed publish attempts.
    Attempts,
    /// Not published before this time.
    NextAttemptAt,
    /// The last publishing error.
    LastError,
    /// When the broker acknowledged it.
    PublishedAt,
}

/// Table and column names.
#[derive(DeriveIden, Clone, Copy, Debug)]
pub enum OutboxSequence {
    /// `outbox_sequence`
    Table,
    /// Aggregate routing name.
    #[sea_orm(iden = "aggregatetype")]
    AggregateType,
    /// Aggregate id.
    #[sea_orm(iden = "aggregateid")]
    AggregateId,
    /// The last sequence number given out.
    LastSequence,
}

/// Table and column names.
#[derive(DeriveIden, Clone, Copy, Debug)]
pub enum OutboxVersionOffset {
    /// `outbox_version_offset`
    Table,
    /// Aggregate routing name.
    #[sea_orm(iden = "aggregatetype")]
    AggregateType,
    /// Aggregate id.
    #[sea_orm(iden = "aggregateid")]
    AggregateId,
    /// The aggregate's version minus its last event's sequence: each save without events adds
    /// one; a delete sets it to minus the last sequence, so a new aggregate under the same id
    /// goes on numbering from there.
    VersionMinusSequence,
}

/// Table and column names.
#[derive(DeriveIden, Clone, Copy, Debug)]
pub enum OutboxShard {
    /// `outbox_shard`
    Table,
    /// Shard number.
    Shard,
    /// Who processed it last.
    Owner,
    /// When it was processed last.
    ClaimedAt,
}

/// Table and column names.
#[derive(DeriveIden, Clone, Copy, Debug)]
pub enum OutboxDelivery {
    /// `outbox_delivery`
    Table,
    /// Event id.
    EventId,
    /// Handler id.
    Handler,
    /// Where the (event, handler) pair stands: pending, done or dead (the crate's
    /// `status::DeliveryStatus` holds the stored values).
    Status,
    /// Failed attempts.
    Attempts,
    /// Not attempted by recovery before this time.
    NextAttemptAt,
    /// The last handler error.
    LastError,
    /// When the row was written.
    CreatedAt,
    /// When the handler completed.
    CompletedAt,
}

/// Table and column names.
#[derive(DeriveIden, Clone, Copy, Debug)]
pub enum OutboxInbox {
    /// `outbox_inbox`
    Table,
    /// Event id.
    EventId,
    /// Consumer group or handler id.
    Consumer,
    /// When it was applied.
    ProcessedAt,
}

/// Creates the outbox tables (migration `outbox_m0001_create_tables`).
#[derive(Clone, Copy, Debug, Default)]
pub struct CreateOutboxTables;

impl MigrationName for CreateOutboxTables {
    fn name(&self) -> &str {
        "outbox_m0001_create_tables"
    }
}

fn big(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).big_integer().not_null().to_owned()
}

fn name(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).string_len(255).not_null().to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for CreateOutboxTables {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Outbox::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(Outbox::Position)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(Outbox::Id).string_len(36).not_null())
                    .col(name(Outbox::AggregateType))
                    .col(name(Outbox::AggregateId))
                    .col(name(Outbox::EventType))
                    .col(ColumnDef::new(Outbox::Version).integer().not_null())
                    .col(big(Outbox::Sequence))
                    .col(ColumnDef::new(Outbox::Payload).text().not_null())
                    .col(ColumnDef::new(Outbox::Metadata).text().null())
                    .col(ColumnDef::new(Outbox::Topic).string_len(255).null())
                    .col(ColumnDef::new(Outbox::Shard).small_integer().not_null())
                    .col(big(Outbox::OccurredAt))
                    .col(big(Outbox::CreatedAt))
                    .col(
                        ColumnDef::new(Outbox::Status)
                            .small_integer()
                            .not_null()
                            .default(EventStatus::Pending.value()),
                    )
                    .col(
                        ColumnDef::new(Outbox::Attempts)
                            .integer()
                            .not_null()
                            .default(0),
                    )
                    .col(big(Outbox::NextAttemptAt))
                    .col(ColumnDef::new(Outbox::LastError).text().null())
                    .col(ColumnDef::new(Outbox::PublishedAt).big_integer().null())
                    .to_owned(),
            )
            .await?;
        let indexes = [
            Index::create()
                .name("ux_outbox_id")
                .table(Outbox::Table)
                .col(Outbox::Id)
                .unique()
                .to_owned(),
            Index::create()
                .name("ux_outbox_aggregate_sequence")
                .table(Outbox::Table)
                .col(Outbox::AggregateType)
                .col(Outbox::AggregateId)
                .col(Outbox::Sequence)
                .unique()
                .to_owned(),
            Index::create()
                .name("ix_outbox_claim")
                .table(Outbox::Table)
                .col(Outbox::Status)
                .col(Outbox::Shard)
                .col(Outbox::Position)
                .to_owned(),
            Index::create()
                .name("ix_outbox_cleanup")
                .table(Outbox::Table)
                .col(Outbox::Status)
                .col(Outbox::PublishedAt)
                .to_owned(),
            // The relay's batch query leaves out aggregates held back by a row that is dead or
            // waits for a retry; this index finds those (few) rows directly instead of scanning
            // the whole table on every cycle (20 ms at 30k rows on PostgreSQL, growing with it).
            Index::create()
                .name("ix_outbox_held")
                .table(Outbox::Table)
                .col(Outbox::Status)
                .col(Outbox::NextAttemptAt)
                .to_owned(),
        ];
        for mut index in indexes {
            manager
                .create_index(index.if_not_exists().to_owned())
                .await?;
        }

        manager
            .create_table(
                Table::create()
                    .table(OutboxSequence::Table)
                    .if_not_exists()
                    .col(name(OutboxSequence::AggregateType))
                    .col(name(OutboxSequence::AggregateId))
                    .col(big(OutboxSequence::LastSequence))
                    .primary_key(
                        Index::create()
                            .col(OutboxSequence::AggregateType)
                            .col(OutboxSequence::AggregateId),
                    )
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(OutboxShard::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(OutboxShard::Shard)
                            .small_integer()
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(OutboxShard::Owner).string_len(255).null())
                    .col(ColumnDef::new(OutboxShard::ClaimedAt).big_integer().null())
                    .to_owned(),
            )
            .await?;
        let mut seed = Query::insert()
            .into_table(OutboxShard::Table)
            .columns([OutboxShard::Shard])
            .to_owned();
        for shard in 0..SHARDS {
            seed.values_panic([shard.into()]);
        }
        let existing = manager
            .get_connection()
            .query_one(
                &Query::select()
                    .expr(Expr::col(OutboxShard::Shard).count())
                    .from(OutboxShard::Table)
                    .to_owned(),
            )
            .await?
            .and_then(|row| row.try_get_by_index::<i64>(0).ok())
            .unwrap_or(0);
        if existing == 0 {
            manager.exec_stmt(seed).await?;
        }

        manager
            .create_table(
                Table::create()
                    .table(OutboxDelivery::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(OutboxDelivery::EventId)
                            .string_len(36)
                            .not_null(),
                    )
                    .col(name(OutboxDelivery::Handler))
                    .col(
                        ColumnDef::new(OutboxDelivery::Status)
                            .small_integer()
                            .not_null()
                            .default(DeliveryStatus::Pending.value()),
                    )
                    .col(
                        ColumnDef::new(OutboxDelivery::Attempts)
                            .integer()
                            .not_null()
                            .default(0),
                    )
                    .col(big(OutboxDelivery::NextAttemptAt))
                    .col(ColumnDef::new(OutboxDelivery::LastError).text().null())
                    .col(big(OutboxDelivery::CreatedAt))
                    .col(
                        ColumnDef::new(OutboxDelivery::CompletedAt)
                            .big_integer()
                            .null(),
                    )
                    .primary_key(
                        Index::create()
                            .col(OutboxDelivery::EventId)
                            .col(OutboxDelivery::Handler),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_outbox_delivery_due")
                    .table(OutboxDelivery::Table)
                    .col(OutboxDelivery::Status)
                    .col(OutboxDelivery::NextAttemptAt)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(OutboxInbox::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(OutboxInbox::EventId)
                            .string_len(36)
                            .not_null(),
                    )
                    .col(name(OutboxInbox::Consumer))
                    .col(big(OutboxInbox::ProcessedAt))
                    .primary_key(
                        Index::create()
                            .col(OutboxInbox::EventId)
                            .col(OutboxInbox::Consumer),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_outbox_inbox_processed")
                    .table(OutboxInbox::Table)
                    .col(OutboxInbox::ProcessedAt)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            OutboxInbox::Table.into_iden(),
            OutboxDelivery::Table.into_iden(),
            OutboxShard::Table.into_iden(),
            OutboxSequence::Table.into_iden(),
            Outbox::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}

/// Widens the outbox's text columns on MySQL/MariaDB to `LONGTEXT` (migration
/// `outbox_m0002_long_text_columns`): `outbox.payload`, `outbox.metadata`, `outbox.last_error`
/// and `outbox_delivery.last_error`.
///
/// MySQL's `TEXT` holds 64 KB, less than a Kafka broker accepts by default (1 MB), so a larger
/// event failed to save ("Data too long for column 'payload'"). `LONGTEXT` holds 4 GB; the
/// columns keep their nullability. A new install runs it right after
/// [`CreateOutboxTables`], so every MySQL/MariaDB outbox gets `LONGTEXT`. On PostgreSQL and
/// SQLite, whose `TEXT` has no such limit, it does nothing.
///
/// `down` narrows the columns back to `TEXT`; on MySQL/MariaDB in strict mode it fails while a
/// row holds more than 64 KB in one of them, rather than cut the row.
#[derive(Clone, Copy, Debug, Default)]
pub struct LongTextColumns;

impl MigrationName for LongTextColumns {
    fn name(&self) -> &str {
        "outbox_m0002_long_text_columns"
    }
}

impl LongTextColumns {
    /// Sets the four columns to `ty` (`LONGTEXT` or `TEXT`) on MySQL/MariaDB.
    async fn retype(manager: &SchemaManager<'_>, ty: &str) -> Result<(), DbErr> {
        if manager.get_database_backend() != sea_orm::DbBackend::MySql {
            return Ok(());
        }
        let column = |col: Outbox, not_null: bool| {
            let mut def = ColumnDef::new(col);
            def.custom(Alias::new(ty));
            if not_null {
                def.not_null();
            } else {
                def.null();
            }
            def
        };
        manager
            .alter_table(
                Table::alter()
                    .table(Outbox::Table)
                    .modify_column(column(Outbox::Payload, true))
                    .modify_column(column(Outbox::Metadata, false))
                    .modify_column(column(Outbox::LastError, false))
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(OutboxDelivery::Table)
                    .modify_column(
                        ColumnDef::new(OutboxDelivery::LastError)
                            .custom(Alias::new(ty))
                            .null()
                            .to_owned(),
                    )
                    .to_owned(),
            )
            .await
    }
}

#[async_trait::async_trait]
impl MigrationTrait for LongTextColumns {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        Self::retype(manager, "LONGTEXT").await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        Self::retype(manager, "TEXT").await
    }
}

/// Adds `outbox_version_offset`, for versioned aggregates (migration
/// `outbox_m0003_version_offset`).
///
/// A versioned aggregate's events are numbered from its version, which moves by one per event
/// and by one for a save without events; so that the events' sequence has no gap, the
/// difference is kept here and subtracted. An aggregate that always saves with events never gets
/// a row.
#[derive(Clone, Copy, Debug, Default)]
pub struct CreateVersionOffset;

impl MigrationName for CreateVersionOffset {
    fn name(&self) -> &str {
        "outbox_m0003_version_offset"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for CreateVersionOffset {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(OutboxVersionOffset::Table)
                    .if_not_exists()
                    .col(name(OutboxVersionOffset::AggregateType))
                    .col(name(OutboxVersionOffset::AggregateId))
                    .col(big(OutboxVersionOffset::VersionMinusSequence))
                    .primary_key(
                        Index::create()
                            .col(OutboxVersionOffset::AggregateType)
                            .col(OutboxVersionOffset::AggregateId),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(
                Table::drop()
                    .table(OutboxVersionOffset::Table)
                    .if_exists()
                    .to_owned(),
            )
            .await
    }
}

/// The outbox's migrations, in order, to add to your own `MigratorTrait::migrations()`.
pub fn migrations() -> Vec<Box<dyn MigrationTrait>> {
    vec![
        Box::new(CreateOutboxTables),
        Box::new(LongTextColumns),
        Box::new(CreateVersionOffset),
    ]
}

/// A migrator holding only the outbox's migrations.
#[derive(Clone, Copy, Debug, Default)]
pub struct OutboxMigrator;

#[async_trait::async_trait]
impl MigratorTrait for OutboxMigrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        migrations()
    }
}

/// Applies the outbox's pending migrations to `db` (pass `&DatabaseConnection`).
///
/// # Errors
/// The database's error when a statement fails.
pub async fn migrate<'c, C>(db: C) -> Result<(), DbErr>
where
    C: sea_orm_migration::IntoSchemaManagerConnection<'c>,
{
    OutboxMigrator::up(db, None).await
}
