//! The aggregate, the event and the handlers every scenario uses.

use outbox_core::{AggregateRoot, DomainEvent, DomainEvents, EventContext, HandlerError};
use outbox_core::{Envelope, event_handler};
use outbox_seaorm::TransactionExt;
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use serde::{Deserialize, Serialize};

pub(crate) mod order {
    use outbox_core::{AggregateRoot, DomainEvents};
    use sea_orm::entity::prelude::*;

    /// A plain business row: what the baseline inserts and what `save` upserts.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "bench_orders")]
    pub(crate) struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub(crate) id: String,
        pub(crate) customer: String,
        pub(crate) amount_cents: i64,
        #[sea_orm(ignore)]
        pub(crate) events: DomainEvents,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub(crate) enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}

    impl AggregateRoot for Model {
        const AGGREGATE_TYPE: &'static str = "Order";
        fn aggregate_id(&self) -> String {
            self.id.clone()
        }
        fn pending_events(&self) -> &DomainEvents {
            &self.events
        }
        fn pending_events_mut(&mut self) -> &mut DomainEvents {
            &mut self.events
        }
    }
}

pub(crate) mod vorder {
    use outbox_core::{AggregateRoot, DomainEvents};
    use sea_orm::entity::prelude::*;

    /// The same row with an `#[aggregate(version)]` column: `save` inserts it at version 0,
    /// updates it only at the version it was loaded at, and numbers its events from the
    /// version (no `outbox_sequence` row).
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, AggregateRoot)]
    #[sea_orm(table_name = "bench_vorders")]
    #[aggregate(name = "VOrder")]
    pub(crate) struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        #[aggregate(id)]
        pub(crate) id: String,
        pub(crate) customer: String,
        pub(crate) amount_cents: i64,
        #[aggregate(version)]
        pub(crate) version: i64,
        #[sea_orm(ignore)]
        #[aggregate(events)]
        pub(crate) events: DomainEvents,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub(crate) enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The benchmark's event; `note` pads its JSON to [`EVENT_BYTES`].
#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
#[event(name = "OrderPlaced", version = 1)]
pub(crate) struct OrderPlaced {
    pub(crate) order_id: String,
    pub(crate) customer: String,
    pub(crate) amount_cents: i64,
    pub(crate) note: String,
}

/// Size of one event's JSON payload.
pub(crate) const EVENT_BYTES: usize = 200;

impl OrderPlaced {
    pub(crate) fn sized(order_id: &str, n: usize) -> OrderPlaced {
        let mut e = OrderPlaced {
            order_id: order_id.to_owned(),
            customer: format!("customer-{:06}", n % 1_000_000),
            amount_cents: 1000 + (n as i64 % 9000),
            note: String::new(),
        };
        let len = serde_json::to_string(&e).map_or(0, |s| s.len());
        e.note = "x".repeat(EVENT_BYTES.saturating_sub(len));
        e
    }

    pub(crate) fn json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// A new order with `events` pending events.
pub(crate) fn order_with(n: usize, events: usize) -> order::Model {
    let id = uuid::Uuid::now_v7().to_string();
    let mut order = order::Model {
        id: id.clone(),
        customer: format!("customer-{:06}", n % 1_000_000),
        amount_cents: 1000 + (n as i64 % 9000),
        events: DomainEvents::new(),
    };
    for k in 0..events {
        order.register_event(OrderPlaced::sized(&id, n + k));
    }
    order
}

/// A new versioned order (version 0) with `events` pending events.
pub(crate) fn vorder_with(n: usize, events: usize) -> vorder::Model {
    let order = order_with(n, events);
    vorder::Model {
        id: order.id,
        customer: order.customer,
        amount_cents: order.amount_cents,
        version: 0,
        events: order.events,
    }
}

/// An envelope as a consumer receives it.
pub(crate) fn envelope(n: usize) -> Envelope {
    let id = uuid::Uuid::now_v7().to_string();
    Envelope::builder("OrderPlaced", "Order", id.clone())
        .sequence(1)
        .payload(OrderPlaced::sized(&id, n).json())
        .build()
}

/// The consumer's handler: one effect row per event, through the handler's transaction.
#[event_handler(group = "bench")]
pub(crate) async fn apply_effect(
    event: &OrderPlaced,
    ctx: &EventContext<'_>,
) -> Result<(), HandlerError> {
    let txn = ctx.transaction()?;
    let backend = txn.get_database_backend();
    let sql = match backend {
        DbBackend::Postgres => "INSERT INTO bench_effects (event_id, order_id) VALUES ($1, $2)",
        _ => "INSERT INTO bench_effects (event_id, order_id) VALUES (?, ?)",
    };
    txn.execute_raw(Statement::from_sql_and_values(
        backend,
        sql,
        [
            ctx.event_id().to_string().into(),
            event.order_id.clone().into(),
        ],
    ))
    .await?;
    Ok(())
}

/// In-process after-commit handlers that do nothing themselves: what is measured is the
/// framework's own cost (delivery records, dispatch, completion marks).
#[event_handler]
pub(crate) async fn noop_a(_e: &OrderPlaced, _ctx: &EventContext<'_>) -> Result<(), HandlerError> {
    Ok(())
}
#[event_handler]
pub(crate) async fn noop_b(_e: &OrderPlaced, _ctx: &EventContext<'_>) -> Result<(), HandlerError> {
    Ok(())
}
#[event_handler]
pub(crate) async fn noop_c(_e: &OrderPlaced, _ctx: &EventContext<'_>) -> Result<(), HandlerError> {
    Ok(())
}
