//! The Order service: places orders and ends each one `OrderConfirmed` or `OrderCancelled` from
//! the replies of the payment and inventory services (a choreographed saga).

use std::time::Duration;

use outbox_core::{AggregateRoot, DomainEvent, DomainEvents, EventContext, HandlerError};
use outbox_core::{HandlerRegistry, event_handler, handler};
use outbox_seaorm::{TransactionExt, save_in};
use sea_orm::entity::prelude::*;
use sea_orm::{ConnectionTrait, Statement};
use serde::{Deserialize, Serialize};

use crate::inventory::{InventoryRejected, InventoryReserved};
use crate::payment::{PaymentCaptured, PaymentDeclined};
use crate::report::{self, Step};

/// The consumer group of the order service.
pub const GROUP: &str = "order-service";

/// `OrderCreated` as version 1 of the order service wrote it (no currency: every amount was in
/// euros, and the customer field had another name). Old messages are still in the topic (a
/// replay, a re-driven dead letter, an instance not upgraded yet); the consumers read them as
/// version 2 through the upcast below.
#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
#[event(name = "OrderCreated", version = 1, topic = "ddd.orders")]
pub struct OrderCreatedV1 {
    pub order_id: Uuid,
    pub customer: String,
    pub amount_cents: i64,
    pub sku: String,
    pub quantity: i32,
}

/// An order was placed: the payment and inventory services take it from here.
///
/// Version 2: `customer` is `customer_id`, and the amount says its currency.
#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
#[event(
    name = "OrderCreated",
    version = 2,
    topic = "ddd.orders",
    upcast_from = OrderCreatedV1
)]
pub struct OrderCreated {
    pub order_id: Uuid,
    pub customer_id: String,
    pub amount_cents: i64,
    pub currency: String,
    pub sku: String,
    pub quantity: i32,
}

/// The currency of every order of version 1.
pub const V1_CURRENCY: &str = "EUR";

impl From<OrderCreatedV1> for OrderCreated {
    fn from(v1: OrderCreatedV1) -> Self {
        OrderCreated {
            order_id: v1.order_id,
            customer_id: v1.customer,
            amount_cents: v1.amount_cents,
            currency: V1_CURRENCY.to_owned(),
            sku: v1.sku,
            quantity: v1.quantity,
        }
    }
}

/// Payment was captured and the items are reserved: the order goes ahead.
#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
#[event(name = "OrderConfirmed", version = 1, topic = "ddd.order-outcomes")]
pub struct OrderConfirmed {
    pub order_id: Uuid,
    pub customer: String,
    pub amount_cents: i64,
}

/// A step failed: the order is off.
#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
#[event(name = "OrderCancelled", version = 1, topic = "ddd.order-outcomes")]
pub struct OrderCancelled {
    pub order_id: Uuid,
    pub reason: String,
}

/// The order aggregate; `events` is not a column, `version` is (optimistic concurrency: a save
/// is refused when the stored version moved since the order was loaded).
#[derive(Clone, Debug, PartialEq, DeriveEntityModel, AggregateRoot)]
#[sea_orm(table_name = "orders")]
#[aggregate(name = "Order")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    #[aggregate(id)]
    pub id: Uuid,
    pub customer: String,
    pub amount_cents: i64,
    pub sku: String,
    pub quantity: i32,
    /// `PENDING`, `CONFIRMED` or `CANCELLED`.
    pub status: String,
    /// `CAPTURED` or `DECLINED` once the payment service replied.
    pub payment: Option<String>,
    /// `RESERVED` or `REJECTED` once the inventory service replied.
    pub inventory: Option<String>,
    pub reason: Option<String>,
    /// Saves so far: placed (1), then one per reply applied.
    #[aggregate(version)]
    pub version: i64,
    #[sea_orm(ignore)]
    #[aggregate(events)]
    pub events: DomainEvents,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

/// Order statuses.
pub const PENDING: &str = "PENDING";
pub const CONFIRMED: &str = "CONFIRMED";
pub const CANCELLED: &str = "CANCELLED";

impl Model {
    /// A new order, recording `OrderCreated` (version 2).
    pub fn place(customer: &str, amount_cents: i64, sku: &str, quantity: i32) -> Self {
        let mut order = Self::new(customer, amount_cents, sku, quantity);
        order.register_event(OrderCreated {
            order_id: order.id,
            customer_id: order.customer.clone(),
            amount_cents,
            currency: V1_CURRENCY.to_owned(),
            sku: order.sku.clone(),
            quantity,
        });
        order
    }

    /// A new order as an instance of the order service not upgraded yet places it: it records
    /// `OrderCreated` version 1 (`--chaos` places a few this way during a rolling deploy).
    pub fn place_v1(customer: &str, amount_cents: i64, sku: &str, quantity: i32) -> Self {
        let mut order = Self::new(customer, amount_cents, sku, quantity);
        order.register_event(OrderCreatedV1 {
            order_id: order.id,
            customer: order.customer.clone(),
            amount_cents,
            sku: order.sku.clone(),
            quantity,
        });
        order
    }

    fn new(customer: &str, amount_cents: i64, sku: &str, quantity: i32) -> Self {
        Model {
            id: Uuid::now_v7(),
            customer: customer.to_owned(),
            amount_cents,
            sku: sku.to_owned(),
            quantity,
            status: PENDING.to_owned(),
            payment: None,
            inventory: None,
            reason: None,
            version: 0,
            events: DomainEvents::new(),
        }
    }

    /// Records the payment service's answer, then decides if it can.
    fn payment_replied(&mut self, outcome: &str, reason: Option<String>) {
        self.payment = Some(outcome.to_owned());
        self.decide(reason);
    }

    /// Records the inventory service's answer, then decides if it can.
    fn inventory_replied(&mut self, outcome: &str, reason: Option<String>) {
        self.inventory = Some(outcome.to_owned());
        self.decide(reason);
    }

    /// Cancels on the first failure, confirms when both steps succeeded; a reply that comes
    /// after the final state changes nothing more.
    fn decide(&mut self, failure: Option<String>) {
        if self.status != PENDING {
            return;
        }
        if let Some(reason) = failure {
            self.status = CANCELLED.to_owned();
            self.reason = Some(reason.clone());
            self.register_event(OrderCancelled {
                order_id: self.id,
                reason,
            });
        } else if self.payment.as_deref() == Some("CAPTURED")
            && self.inventory.as_deref() == Some("RESERVED")
        {
            self.status = CONFIRMED.to_owned();
            self.register_event(OrderConfirmed {
                order_id: self.id,
                customer: self.customer.clone(),
                amount_cents: self.amount_cents,
            });
        }
    }
}

/// The order service's in-process, after-commit handlers (its `Outbox` runs only these).
pub fn local_handlers() -> HandlerRegistry {
    HandlerRegistry::new().with(handler!(send_confirmation_notice))
}

/// Loads the order, lets `apply` change it, and saves the row and its new events through the
/// consumer's transaction: the inbox row, the order and the outbox rows commit together.
///
/// The save is versioned: it writes only if the order is still at the version it was loaded at.
/// One instance of the service applies its messages one after the other, but two instances
/// (or a member that lost its partitions while finishing a message) can apply an order's payment
/// reply and its inventory reply at once; the second save then fails with a conflict. The
/// conflict is returned as retryable: the consumer rolls the inbox transaction back and runs the
/// handler again, which loads the order anew and applies the reply to the other's change.
async fn update(
    ctx: &EventContext<'_>,
    order_id: Uuid,
    apply: impl FnOnce(&mut Model),
) -> Result<(), HandlerError> {
    let txn = ctx.transaction()?;
    let Some(mut order) = Entity::find_by_id(order_id).one(txn).await? else {
        // Not ours (another run's event, say): no retry can fix it, so dead-letter it.
        return Err(HandlerError::permanent(UnknownOrder(order_id)));
    };
    apply(&mut order);
    // The consumer runtime commits this transaction, not this handler: the delivery rows of the
    // in-process handlers are due at once (grace zero) and the delivery worker runs them after
    // the commit, so `Written` is not needed here. A reply that registers no event (the second
    // answer to a cancelled order) still saves the row and moves the version by one.
    match save_in(txn, &order, &local_handlers(), Duration::ZERO).await {
        Ok(_written) => {}
        Err(error) if error.is_conflict() => {
            metrics::counter!(CONFLICTS).increment(1);
            return Err(HandlerError::retryable(error));
        }
        Err(error) => return Err(error.into()),
    }
    for event in order.pending_events().as_slice() {
        report::step(order_id, Step::new(GROUP, event.name()));
    }
    Ok(())
}

/// The counter of order saves refused because another reply saved the order first.
pub const CONFLICTS: &str = "ddd_order_conflicts_total";

/// A reply named an order this service does not have.
#[derive(Debug)]
struct UnknownOrder(Uuid);

impl std::fmt::Display for UnknownOrder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no order {}", self.0)
    }
}

impl std::error::Error for UnknownOrder {}

#[event_handler(group = "order-service")]
async fn on_payment_captured(
    event: &PaymentCaptured,
    ctx: &EventContext<'_>,
) -> Result<(), HandlerError> {
    update(ctx, event.order_id, |o| o.payment_replied("CAPTURED", None)).await
}

#[event_handler(group = "order-service")]
async fn on_payment_declined(
    event: &PaymentDeclined,
    ctx: &EventContext<'_>,
) -> Result<(), HandlerError> {
    let reason = format!("payment declined: {}", event.reason);
    update(ctx, event.order_id, |o| {
        o.payment_replied("DECLINED", Some(reason));
    })
    .await
}

#[event_handler(group = "order-service")]
async fn on_inventory_reserved(
    event: &InventoryReserved,
    ctx: &EventContext<'_>,
) -> Result<(), HandlerError> {
    update(ctx, event.order_id, |o| {
        o.inventory_replied("RESERVED", None)
    })
    .await
}

#[event_handler(group = "order-service")]
async fn on_inventory_rejected(
    event: &InventoryRejected,
    ctx: &EventContext<'_>,
) -> Result<(), HandlerError> {
    let reason = format!("inventory rejected: {}", event.reason);
    update(ctx, event.order_id, |o| {
        o.inventory_replied("REJECTED", Some(reason));
    })
    .await
}

/// After the commit of `OrderConfirmed`, in this process: the confirmation notice. It writes
/// through the delivery transaction, so a notice is recorded exactly once even when the process
/// dies half-way and the recovery worker runs the handler again.
#[event_handler]
async fn send_confirmation_notice(
    event: &OrderConfirmed,
    ctx: &EventContext<'_>,
) -> Result<(), HandlerError> {
    let txn = ctx.transaction()?;
    let backend = txn.get_database_backend();
    let sql = match backend {
        sea_orm::DbBackend::Postgres => "INSERT INTO notices (order_id, customer) VALUES ($1, $2)",
        _ => "INSERT INTO notices (order_id, customer) VALUES (?, ?)",
    };
    txn.execute_raw(Statement::from_sql_and_values(
        backend,
        sql,
        [
            event.order_id.to_string().into(),
            event.customer.clone().into(),
        ],
    ))
    .await?;
    report::step(
        event.order_id,
        Step::new("after commit", format!("notice sent to {}", event.customer)),
    );
    Ok(())
}
