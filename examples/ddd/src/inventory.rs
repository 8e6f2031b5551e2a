//! The Inventory service: reserves the items of each new order from its own stock, or rejects
//! the order when the stock is short; puts reserved items back when the order is cancelled.

use std::time::Duration;

use outbox_core::{AggregateRoot, DomainEvent, DomainEvents, EventContext, HandlerError};
use outbox_core::{HandlerRegistry, event_handler};
use outbox_seaorm::{TransactionExt, save_in};
use sea_orm::entity::prelude::*;
use sea_orm::sea_query::ExprTrait;
use serde::{Deserialize, Serialize};

use crate::order::{OrderCancelled, OrderCreated};
use crate::payment::NotDecidedYet;
use crate::report::{self, Step};

/// The consumer group of the inventory service.
pub const GROUP: &str = "inventory-service";

/// The items are set aside for the order.
#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
#[event(name = "InventoryReserved", version = 1, topic = "ddd.inventory")]
pub struct InventoryReserved {
    pub order_id: Uuid,
    pub sku: String,
    pub quantity: i32,
}

/// The items could not be reserved.
#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
#[event(name = "InventoryRejected", version = 1, topic = "ddd.inventory")]
pub struct InventoryRejected {
    pub order_id: Uuid,
    pub reason: String,
}

/// Reserved items went back to stock, because their order was cancelled.
#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
#[event(name = "StockReleased", version = 1, topic = "ddd.compensations")]
pub struct StockReleased {
    pub order_id: Uuid,
    pub sku: String,
    pub quantity: i32,
}

/// A reservation, one per order: the aggregate of this service.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel, AggregateRoot)]
#[sea_orm(table_name = "reservations")]
#[aggregate(name = "Reservation")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    #[aggregate(id)]
    pub order_id: Uuid,
    pub sku: String,
    pub quantity: i32,
    /// `RESERVED`, `REJECTED`, or `RELEASED` (reserved, then put back).
    pub status: String,
    /// Items put back (0 unless `RELEASED`).
    pub released: i32,
    /// Saves so far (optimistic concurrency): 1 once decided, 2 once released.
    #[aggregate(version)]
    pub version: i64,
    #[sea_orm(ignore)]
    #[aggregate(events)]
    pub events: DomainEvents,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

/// Stock on hand per SKU: this service's own state. Not an aggregate (it records no events):
/// the conditional decrement in `reserve_items` is its concurrency control.
pub mod stock {
    use sea_orm::entity::prelude::*;

    /// Items of `sku` on hand.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "stock")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub sku: String,
        pub on_hand: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The SKUs the example sells; the last one is out of stock (its orders are rejected).
pub const SKUS: [&str; 4] = ["book", "lamp", "mug", "kite"];
/// The SKU seeded with no stock.
pub const SOLD_OUT: &str = "kite";

/// Applied once per `OrderCreated`: the stock update, the reservation row, its reply event in
/// this service's outbox and the inbox record commit in one transaction.
#[event_handler(group = "inventory-service")]
async fn reserve_items(event: &OrderCreated, ctx: &EventContext<'_>) -> Result<(), HandlerError> {
    let txn = ctx.transaction()?;
    // A conditional decrement: two orders cannot both take the last item.
    let taken = stock::Entity::update_many()
        .col_expr(
            stock::Column::OnHand,
            Expr::col(stock::Column::OnHand).sub(i64::from(event.quantity)),
        )
        .filter(stock::Column::Sku.eq(event.sku.clone()))
        .filter(stock::Column::OnHand.gte(i64::from(event.quantity)))
        .exec(txn)
        .await?
        .rows_affected
        == 1;
    let mut reservation = Model {
        order_id: event.order_id,
        sku: event.sku.clone(),
        quantity: event.quantity,
        status: if taken { RESERVED } else { "REJECTED" }.to_owned(),
        released: 0,
        version: 0,
        events: DomainEvents::new(),
    };
    if taken {
        reservation.register_event(InventoryReserved {
            order_id: event.order_id,
            sku: event.sku.clone(),
            quantity: event.quantity,
        });
    } else {
        reservation.register_event(InventoryRejected {
            order_id: event.order_id,
            reason: format!("{} x{} out of stock", event.sku, event.quantity),
        });
    }
    // A new reservation (version 0): the row is inserted with the reply event; if it exists
    // already the save is a conflict, permanent (running again cannot change it), and this
    // transaction, stock decrement included, rolls back. No in-process handler here, so no
    // after-commit work to hand on (`Written` is dropped).
    let _written = save_in(txn, &reservation, &HandlerRegistry::new(), Duration::ZERO)
        .await
        .map_err(|error| {
            if error.is_conflict() {
                HandlerError::permanent(error)
            } else {
                HandlerError::retryable(error)
            }
        })?;
    for e in reservation.pending_events().as_slice() {
        report::step(event.order_id, Step::new(GROUP, e.name()));
    }
    Ok(())
}

/// Reservation statuses.
pub const RESERVED: &str = "RESERVED";
pub const RELEASED: &str = "RELEASED";

/// Applied once per `OrderCancelled` (the inbox): reserved items go back to stock; the stock
/// increment, the reservation (a versioned save) and `StockReleased` commit with the inbox
/// record, so a redelivered cancellation releases nothing twice.
#[event_handler(group = "inventory-service")]
async fn release_items(event: &OrderCancelled, ctx: &EventContext<'_>) -> Result<(), HandlerError> {
    let txn = ctx.transaction()?;
    let Some(mut reservation) = Entity::find_by_id(event.order_id).one(txn).await? else {
        // The cancellation overtook the order here: retried until it is reserved or rejected.
        return Err(HandlerError::retryable(NotDecidedYet(event.order_id)));
    };
    if reservation.status != RESERVED {
        return Ok(());
    }
    reservation.status = RELEASED.to_owned();
    reservation.released = reservation.quantity;
    reservation.register_event(StockReleased {
        order_id: event.order_id,
        sku: reservation.sku.clone(),
        quantity: reservation.quantity,
    });
    stock::Entity::update_many()
        .col_expr(
            stock::Column::OnHand,
            Expr::col(stock::Column::OnHand).add(i64::from(reservation.quantity)),
        )
        .filter(stock::Column::Sku.eq(reservation.sku.clone()))
        .exec(txn)
        .await?;
    // A conflict (the row moved since it was loaded) is retried on the reloaded row.
    let _written = save_in(txn, &reservation, &HandlerRegistry::new(), Duration::ZERO)
        .await
        .map_err(HandlerError::retryable)?;
    for e in reservation.pending_events().as_slice() {
        report::step(event.order_id, Step::new(GROUP, e.name()));
    }
    Ok(())
}
