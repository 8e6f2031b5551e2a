//! SeaORM backend of the outbox framework: the outbox tables, the transactional save, the
//! durable after-commit dispatch to in-process handlers, the relay and the inbox.
//!
//! [`Outbox::save`] writes an aggregate's row and its pending events in one transaction; after
//! the commit it runs the in-process `#[event_handler]`s, each in its
//! own transaction that also records its completion in `outbox_delivery`, so a handler that
//! writes through [`TransactionExt::transaction`] takes effect exactly once. A crash or a failing
//! handler leaves the record pending for the [`DeliveryWorker`]. [`Outbox::begin`] opens a
//! [`UnitOfWork`] for several aggregates and your own statements; [`save_in`] and
//! [`write_events`] work inside a transaction you run yourself. The relay ([`relay`]) publishes
//! the outbox rows to a broker.
//!
//! ```
//! use outbox_core::{AggregateRoot, DomainEvent, DomainEvents, EventContext, HandlerError};
//! use outbox_core::{HandlerRegistry, InlineDispatcher, event_handler, handler};
//! use outbox_seaorm::{Outbox, TransactionExt};
//! use sea_orm::{ConnectionTrait, Database, EntityTrait, Schema};
//! use serde::{Deserialize, Serialize};
//!
//! mod order {
//!     use outbox_core::{AggregateRoot, DomainEvents};
//!     use sea_orm::entity::prelude::*;
//!
//!     #[derive(Clone, Debug, PartialEq, DeriveEntityModel, AggregateRoot)]
//!     #[sea_orm(table_name = "orders")]
//!     #[aggregate(name = "Order")]
//!     pub struct Model {
//!         #[sea_orm(primary_key, auto_increment = false)]
//!         #[aggregate(id)]
//!         pub id: String,
//!         pub amount_cents: i64,
//!         #[sea_orm(ignore)]
//!         #[aggregate(events)]
//!         pub events: DomainEvents,
//!     }
//!
//!     #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
//!     pub enum Relation {}
//!
//!     impl ActiveModelBehavior for ActiveModel {}
//! }
//!
//! #[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
//! #[event(name = "OrderPlaced", version = 1)]
//! struct OrderPlaced { order_id: String, amount_cents: i64 }
//!
//! /// Runs after the commit; its write commits with its completion record, or not at all.
//! #[event_handler]
//! async fn count_order(_event: &OrderPlaced, ctx: &EventContext<'_>) -> Result<(), HandlerError> {
//!     let txn = ctx.transaction()?;
//!     txn.execute_unprepared("UPDATE stats SET orders = orders + 1").await?;
//!     Ok(())
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
//! let db = Database::connect("sqlite::memory:").await?;
//! outbox_seaorm::schema::migrate(&db).await?;
//! let schema = Schema::new(db.get_database_backend());
//! db.execute(&schema.create_table_from_entity(order::Entity)).await?;
//! db.execute_unprepared("CREATE TABLE stats (orders INTEGER NOT NULL)").await?;
//! db.execute_unprepared("INSERT INTO stats VALUES (0)").await?;
//!
//! let outbox = Outbox::builder(db.clone())
//!     .handlers(HandlerRegistry::new().with(handler!(count_order)))
//!     .dispatcher(InlineDispatcher) // the default spawns a task; inline is deterministic
//!     .build();
//!
//! let mut order = order::Model { id: "o-1".into(), amount_cents: 1250, events: DomainEvents::new() };
//! order.register_event(OrderPlaced { order_id: order.id.clone(), amount_cents: 1250 });
//! outbox.save(&mut order).await?; // one transaction: the orders row and the outbox row
//! assert!(order.pending_events().is_empty());
//!
//! assert_eq!(order::Entity::find().all(&db).await?.len(), 1);
//! let row = db.query_one_raw(sea_orm::Statement::from_string(
//!     db.get_database_backend(),
//!     "SELECT type, sequence, payload FROM outbox",
//! )).await?.expect("one outbox row");
//! assert_eq!(row.try_get_by_index::<String>(0)?, "OrderPlaced");
//! assert_eq!(row.try_get_by_index::<i64>(1)?, 1);
//! let stats = db.query_one_raw(sea_orm::Statement::from_string(
//!     db.get_database_backend(),
//!     "SELECT orders FROM stats",
//! )).await?.expect("stats row");
//! assert_eq!(stats.try_get_by_index::<i64>(0)?, 1, "the handler ran after the commit");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod admin;
pub mod schema;
mod shard;
pub mod time;

pub use shard::shard_of;

pub mod cleanup;
pub mod log_relay;
pub mod relay;
pub use cleanup::{Cleanup, CleanupBuilder, CleanupError, CleanupReport};
pub use relay::{
    Completion, CycleReport, DeadLetterPolicy, Relay, RelayBuilder, RelayError, RelayStats,
};
mod context;

pub use context::{NoTransaction, TransactionExt, with_transaction};

pub mod inbox;
pub use inbox::{BatchItem, Inbox, InboxError, Processed};

mod capture;
mod codec;
mod delivery;
mod error;
mod notifier;
mod outbox;
mod save;
mod sql;
mod status;
mod uow;

pub use capture::Capture;
pub use delivery::{DeliveryWorker, RenameError, RenamedRows, rename_handler};
pub use error::Error;
pub use outbox::{Outbox, OutboxBuilder};
pub use save::{NOTIFY_CHANNEL, Written, save_in, save_in_with, write_events, write_events_with};
pub use uow::UnitOfWork;
