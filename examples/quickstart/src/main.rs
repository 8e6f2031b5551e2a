//! Quickstart: save orders with their domain events in one transaction, then watch the outbox
//! rows and the after-commit handlers. Runs on an in-memory SQLite database, no set-up:
//!
//! ```text
//! cargo run -p quickstart
//! ```

use outbox_core::event_handler;
use outbox_core::{AggregateRoot, DomainEvent, EventContext, HandlerError, InlineDispatcher};
use outbox_seaorm::{Outbox, TransactionExt};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, EntityTrait, Schema, Statement,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

mod order {
    use outbox_core::{AggregateRoot, DomainEvents};
    use sea_orm::entity::prelude::*;

    use super::{OrderPaid, OrderPlaced};

    /// An order: a SeaORM model and an aggregate root; `events` is not a column.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, AggregateRoot)]
    #[sea_orm(table_name = "orders")]
    #[aggregate(name = "Order")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        #[aggregate(id)]
        pub id: Uuid,
        pub customer: String,
        pub amount_cents: i64,
        pub status: String,
        /// Optimistic concurrency: a save from a stale copy is refused.
        #[aggregate(version)]
        pub version: i64,
        #[sea_orm(ignore)]
        #[aggregate(events)]
        pub events: DomainEvents,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}

    impl Model {
        /// A new order, recording `OrderPlaced`.
        pub fn place(customer: &str, amount_cents: i64) -> Self {
            let mut order = Model {
                id: Uuid::now_v7(),
                customer: customer.to_owned(),
                amount_cents,
                status: "PENDING".to_owned(),
                version: 0,
                events: DomainEvents::new(),
            };
            order.register_event(OrderPlaced {
                order_id: order.id,
                customer: order.customer.clone(),
                amount_cents,
            });
            order
        }

        /// Marks the order paid, recording `OrderPaid`.
        pub fn pay(&mut self) {
            self.status = "PAID".to_owned();
            self.register_event(OrderPaid { order_id: self.id });
        }
    }
}

/// An order was placed.
#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
#[event(name = "OrderPlaced", version = 1)]
pub struct OrderPlaced {
    order_id: Uuid,
    customer: String,
    amount_cents: i64,
}

/// An order was paid.
#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
pub struct OrderPaid {
    order_id: Uuid,
}

/// Runs after the commit. Its write goes through the delivery transaction, so it commits together
/// with the record that the handler completed: exactly once, even across crashes and retries.
#[event_handler]
async fn send_confirmation(
    event: &OrderPlaced,
    ctx: &EventContext<'_>,
) -> Result<(), HandlerError> {
    let txn = ctx.transaction()?;
    txn.execute_raw(Statement::from_sql_and_values(
        txn.get_database_backend(),
        "INSERT INTO confirmations (order_id, customer) VALUES (?, ?)",
        [
            event.order_id.to_string().into(),
            event.customer.clone().into(),
        ],
    ))
    .await?;
    println!(
        "  after commit: send_confirmation({}) for {} (attempt {})",
        event.customer,
        short(&event.order_id.to_string()),
        ctx.attempt()
    );
    Ok(())
}

/// Another in-process handler of another event.
#[event_handler]
async fn start_shipping(event: &OrderPaid, _ctx: &EventContext<'_>) -> Result<(), HandlerError> {
    println!(
        "  after commit: start_shipping({})",
        short(&event.order_id.to_string())
    );
    Ok(())
}

fn short(id: &str) -> &str {
    id.get(id.len().saturating_sub(8)..).unwrap_or(id)
}

async fn connect() -> Result<DatabaseConnection, sea_orm::DbErr> {
    let mut options = ConnectOptions::new("sqlite::memory:");
    // One connection: an in-memory SQLite database lives and dies with its connection.
    options
        .max_connections(1)
        .min_connections(1)
        .sqlx_logging(false);
    Database::connect(options).await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let db = connect().await?;
    outbox_seaorm::schema::migrate(&db).await?;
    let schema = Schema::new(db.get_database_backend());
    db.execute(&schema.create_table_from_entity(order::Entity))
        .await?;
    db.execute_unprepared(
        "CREATE TABLE confirmations (order_id TEXT NOT NULL, customer TEXT NOT NULL)",
    )
    .await?;
    println!("migrated: outbox tables, orders, confirmations\n");

    // Handlers come from `#[event_handler]` (collected at link time). The inline dispatcher runs
    // them before `save` returns, to keep this output in order; the default spawns a task.
    let outbox = Outbox::builder(db.clone())
        .dispatcher(InlineDispatcher)
        .build();

    let mut ada = order::Model::place("ada", 1250);
    println!(
        "save order of ada ({} pending event)",
        ada.pending_events().len()
    );
    outbox.save(&mut ada).await?;

    let mut bob = order::Model::place("bob", 4999);
    bob.pay();
    println!(
        "save order of bob ({} pending events)",
        bob.pending_events().len()
    );
    outbox.save(&mut bob).await?;

    // A second copy of ada's order, loaded now, before the payment below.
    let mut stale = order::Entity::find_by_id(ada.id)
        .one(&db)
        .await?
        .ok_or("ada's order is stored")?;

    ada.pay();
    println!("pay order of ada (an update, 1 pending event)");
    outbox.save(&mut ada).await?;
    println!("  ada's order is at version {}", ada.version);

    // The stale copy does not overwrite the payment it never saw: its save is refused, writes
    // nothing, and it keeps its event (reload, apply again, save again).
    stale.pay();
    match outbox.save(&mut stale).await {
        Err(err) if err.is_conflict() => println!(
            "pay a stale copy of ada's order: refused ({err}); it keeps {} pending event",
            stale.pending_events().len()
        ),
        other => return Err(format!("a stale copy must be refused, got {other:?}").into()),
    }

    // A unit of work that rolls back writes nothing and runs nothing.
    let mut eve = order::Model::place("eve", 100);
    let mut uow = outbox.begin().await?;
    uow.save(&mut eve).await?;
    uow.rollback().await?;
    println!(
        "rolled back order of eve: she keeps {} pending event\n",
        eve.pending_events().len()
    );

    println!("outbox rows (what the relay publishes):");
    println!("  pos  aggregate       seq  type         payload");
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT position, aggregateid, sequence, type, payload FROM outbox ORDER BY position",
        ))
        .await?;
    for row in rows {
        println!(
            "  {:<4} Order/{:<9} {:<4} {:<12} {}",
            row.try_get_by_index::<i64>(0)?,
            short(&row.try_get_by_index::<String>(1)?),
            row.try_get_by_index::<i64>(2)?,
            row.try_get_by_index::<String>(3)?,
            row.try_get_by_index::<String>(4)?,
        );
    }

    println!("\nafter-commit deliveries (outbox_delivery):");
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT handler, status, COUNT(*) FROM outbox_delivery GROUP BY handler, status ORDER BY handler",
        ))
        .await?;
    for row in rows {
        let status = match row.try_get_by_index::<i64>(1)? {
            0 => "pending",
            1 => "done",
            _ => "dead",
        };
        println!(
            "  {:<40} {} x {status}",
            row.try_get_by_index::<String>(0)?,
            row.try_get_by_index::<i64>(2)?,
        );
    }
    let confirmations = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT COUNT(*) FROM confirmations",
        ))
        .await?
        .map(|r| r.try_get_by_index::<i64>(0))
        .transpose()?
        .unwrap_or(0);
    println!("\nconfirmations written by send_confirmation: {confirmations}");
    Ok(())
}
