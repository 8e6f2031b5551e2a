//! The Payment service: captures the payment of each new order, or declines it when the amount
//! is over the customer's limit, a rule it reads from its own database; refunds a captured
//! payment when the order is cancelled.

use std::time::Duration;

use outbox_core::{AggregateRoot, DomainEvent, DomainEvents, EventContext, HandlerError};
use outbox_core::{HandlerRegistry, event_handler};
use outbox_seaorm::{TransactionExt, save_in};
use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

use crate::order::{OrderCancelled, OrderCreated};
use crate::report::{self, Step};

/// The consumer group of the payment service.
pub const GROUP: &str = "payment-service";

/// The amount was captured.
#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
#[event(name = "PaymentCaptured", version = 1, topic = "ddd.payments")]
pub struct PaymentCaptured {
    pub order_id: Uuid,
    pub amount_cents: i64,
}

/// The payment was refused.
#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
#[event(name = "PaymentDeclined", version = 1, topic = "ddd.payments")]
pub struct PaymentDeclined {
    pub order_id: Uuid,
    pub reason: String,
}

/// A captured payment was paid back, because its order was cancelled (another step failed).
#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
#[event(name = "PaymentRefunded", version = 1, topic = "ddd.compensations")]
pub struct PaymentRefunded {
    pub order_id: Uuid,
    pub amount_cents: i64,
    pub currency: String,
}

/// A payment, one per order: the aggregate of this service.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel, AggregateRoot)]
#[sea_orm(table_name = "payments")]
#[aggregate(name = "Payment")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    #[aggregate(id)]
    pub order_id: Uuid,
    pub customer: String,
    pub amount_cents: i64,
    pub currency: String,
    /// `CAPTURED`, `DECLINED`, or `REFUNDED` (captured, then paid back).
    pub status: String,
    /// What was paid back (0 unless `REFUNDED`).
    pub refunded_cents: i64,
    /// Saves so far (optimistic concurrency): 1 once decided, 2 once refunded.
    #[aggregate(version)]
    pub version: i64,
    #[sea_orm(ignore)]
    #[aggregate(events)]
    pub events: DomainEvents,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

/// Per-customer payment limits: this service's own reference data.
pub mod limit {
    use sea_orm::entity::prelude::*;

    /// The most one order of `customer` may cost.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "payment_limits")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub customer: String,
        pub limit_cents: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The customers and their limits the example seeds (an order over the limit is declined).
pub const LIMITS: [(&str, i64); 4] = [
    ("ada", 50_000),
    ("bob", 20_000),
    ("cyd", 10_000),
    ("dee", 5_000),
];

impl Model {
    /// Decides on the payment of `order` against the customer's `limit_cents`.
    fn decide(order: &OrderCreated, limit_cents: Option<i64>) -> Self {
        let mut payment = Model {
            order_id: order.order_id,
            customer: order.customer_id.clone(),
            amount_cents: order.amount_cents,
            currency: order.currency.clone(),
            status: String::new(),
            refunded_cents: 0,
            version: 0,
            events: DomainEvents::new(),
        };
        match limit_cents {
            Some(limit) if order.amount_cents <= limit => {
                payment.status = CAPTURED.to_owned();
                payment.register_event(PaymentCaptured {
                    order_id: order.order_id,
                    amount_cents: order.amount_cents,
                });
            }
            limit => {
                payment.status = "DECLINED".to_owned();
                let reason = match limit {
                    Some(limit) => format!(
                        "{} over the limit of {} for {}",
                        crate::report::money(order.amount_cents),
                        crate::report::money(limit),
                        order.customer_id
                    ),
                    None => format!("unknown customer {}", order.customer_id),
                };
                payment.register_event(PaymentDeclined {
                    order_id: order.order_id,
                    reason,
                });
            }
        }
        payment
    }
}

/// Applied once per `OrderCreated` (the consumer's inbox): the payment row, its reply event in
/// this service's outbox and the inbox record commit in one transaction.
#[event_handler(group = "payment-service")]
async fn capture_payment(event: &OrderCreated, ctx: &EventContext<'_>) -> Result<(), HandlerError> {
    let txn = ctx.transaction()?;
    let limit = limit::Entity::find_by_id(event.customer_id.clone())
        .one(txn)
        .await?
        .map(|l| l.limit_cents);
    let payment = Model::decide(event, limit);
    // A new payment (version 0): the row is inserted with the reply event. No in-process
    // handler here, so no after-commit work to hand on (`Written` is dropped).
    let _written = save_in(txn, &payment, &HandlerRegistry::new(), Duration::ZERO)
        .await
        .map_err(already_decided)?;
    for e in payment.pending_events().as_slice() {
        report::step(event.order_id, Step::new(GROUP, e.name()));
    }
    Ok(())
}

impl Model {
    /// Pays a captured payment back; a declined or refunded one has nothing to give back.
    fn refund(&mut self) {
        if self.status != CAPTURED {
            return;
        }
        self.status = REFUNDED.to_owned();
        self.refunded_cents = self.amount_cents;
        self.register_event(PaymentRefunded {
            order_id: self.order_id,
            amount_cents: self.amount_cents,
            currency: self.currency.clone(),
        });
    }
}

/// Payment statuses.
pub const CAPTURED: &str = "CAPTURED";
pub const REFUNDED: &str = "REFUNDED";

/// Applied once per `OrderCancelled` (the inbox): a captured payment is refunded, its row and
/// `PaymentRefunded` commit with the inbox record, so a redelivered cancellation refunds
/// nothing twice. The save is versioned: it writes only if the payment is still as loaded.
#[event_handler(group = "payment-service")]
async fn refund_payment(
    event: &OrderCancelled,
    ctx: &EventContext<'_>,
) -> Result<(), HandlerError> {
    let txn = ctx.transaction()?;
    let Some(mut payment) = Entity::find_by_id(event.order_id).one(txn).await? else {
        // The cancellation overtook the order (another step failed first, and this service has
        // not applied `OrderCreated` yet): retried until the payment is decided.
        return Err(HandlerError::retryable(NotDecidedYet(event.order_id)));
    };
    payment.refund();
    if payment.pending_events().is_empty() {
        return Ok(());
    }
    // A conflict (the row moved since it was loaded) is retried on the reloaded row.
    let _written = save_in(txn, &payment, &HandlerRegistry::new(), Duration::ZERO)
        .await
        .map_err(HandlerError::retryable)?;
    for e in payment.pending_events().as_slice() {
        report::step(event.order_id, Step::new(GROUP, e.name()));
    }
    Ok(())
}

/// A cancellation arrived before the order it cancels: a retry will find it.
#[derive(Debug)]
pub struct NotDecidedYet(pub Uuid);

impl std::fmt::Display for NotDecidedYet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "order {} is not decided here yet", self.0)
    }
}

impl std::error::Error for NotDecidedYet {}

/// A conflict on a new payment means the order's payment exists already (decided under another
/// inbox record): running again cannot change that, so it is permanent. Anything else (the
/// database) is worth a retry.
fn already_decided(error: outbox_seaorm::Error) -> HandlerError {
    if error.is_conflict() {
        HandlerError::permanent(error)
    } else {
        HandlerError::retryable(error)
    }
}
