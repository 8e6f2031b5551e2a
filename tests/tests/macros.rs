//! The derives at run time: a SeaORM `Model` that is also an aggregate root (its events field
//! not a column), a generic plain struct, and `#[event_handler]` registration.

use outbox_core::{
    AggregateRoot, DomainEvent, DomainEvents, EventContext, HandlerError, HandlerRegistry,
    event_handler, handler,
};
use outbox_tests::{TestDb, db_tests};
use sea_orm::{ActiveModelTrait, ConnectionTrait, EntityTrait, IntoActiveModel, Schema};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, DomainEvent)]
#[event(name = "OrderPlaced", version = 2, topic = "orders")]
struct Placed {
    order_id: uuid::Uuid,
    amount_cents: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, DomainEvent)]
struct OrderShipped {
    order_id: uuid::Uuid,
}

mod order {
    // SeaORM's entity layout: everything `pub`, as in a real service's entity module.
    #![allow(unreachable_pub)]

    use outbox_core::{AggregateRoot, DomainEvents};
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, AggregateRoot)]
    #[sea_orm(table_name = "macro_orders")]
    #[aggregate(name = "Order")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        #[aggregate(id)]
        pub id: Uuid,
        pub status: String,
        pub amount_cents: i64,
        #[sea_orm(ignore)]
        #[aggregate(events)]
        pub events: DomainEvents,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}

    impl Model {
        pub fn place(amount_cents: i64) -> Self {
            let mut order = Model {
                id: Uuid::now_v7(),
                status: "PENDING".into(),
                amount_cents,
                events: DomainEvents::new(),
            };
            order.register_event(super::Placed {
                order_id: order.id,
                amount_cents,
            });
            order
        }

        pub fn ship(&mut self) {
            self.status = "SHIPPED".into();
            self.register_event(super::OrderShipped { order_id: self.id });
        }
    }
}

#[test]
fn seaorm_model_registers_events_under_its_aggregate_name() {
    let mut order = order::Model::place(1250);
    order.ship();
    assert_eq!(order::Model::AGGREGATE_TYPE, "Order");
    assert_eq!(order.aggregate_id(), order.id.to_string());

    let pending = order.pending_events().as_slice();
    let names: Vec<_> = pending.iter().map(|e| (e.name(), e.version())).collect();
    assert_eq!(names, [("OrderPlaced", 2), ("OrderShipped", 1)]);
    let placed: Vec<_> = order.pending_events().of_type::<Placed>().collect();
    assert_eq!(
        placed,
        [&Placed {
            order_id: order.id,
            amount_cents: 1250
        }]
    );

    let envelope = pending[0]
        .to_envelope(order::Model::AGGREGATE_TYPE, &order.aggregate_id(), 1)
        .expect("envelope");
    assert_eq!(envelope.aggregate_type(), "Order");
    assert_eq!(envelope.aggregate_id(), order.id.to_string());
    assert_eq!(envelope.topic(), Some("orders"));
    assert_eq!(
        envelope.decode::<Placed>().expect("decode").amount_cents,
        1250
    );

    // Clone and PartialEq of the model still work with the events field in it.
    let copy = order.clone();
    assert_eq!(copy, order);
    let taken = order.take_events();
    assert_eq!(taken.len(), 2);
    assert!(order.pending_events().is_empty());
    assert_ne!(copy, order, "the copy still holds its events");
}

/// The events field is no column: the model saves and loads, and a loaded model has no events.
async fn seaorm_model_round_trips_without_its_events(t: TestDb) {
    let backend = t.db.get_database_backend();
    let create = Schema::new(backend).create_table_from_entity(order::Entity);
    t.db.execute(&create).await.expect("create table");

    let mut order = order::Model::place(990);
    let events = order.take_events();
    order.events = events.clone();
    order
        .clone()
        .into_active_model()
        .insert(&t.db)
        .await
        .expect("insert");
    let loaded = order::Entity::find_by_id(order.id)
        .one(&t.db)
        .await
        .expect("select")
        .expect("row");
    assert_eq!(loaded.amount_cents, 990);
    assert_eq!(loaded.status, "PENDING");
    assert!(loaded.pending_events().is_empty());
    assert_eq!(loaded.aggregate_id(), order.aggregate_id());
    assert_eq!(events.len(), 1);
}

db_tests!(seaorm_model_round_trips_without_its_events);

/// A generic aggregate with a where clause.
#[derive(Debug, AggregateRoot)]
#[aggregate(name = "Ledger")]
struct Ledger<Id, Entry>
where
    Id: std::fmt::Display,
    Entry: Clone,
{
    #[aggregate(events)]
    events: DomainEvents,
    entries: Vec<Entry>,
    #[aggregate(id)]
    id: Id,
}

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
struct EntryBooked {
    cents: i64,
}

#[test]
fn generic_plain_struct() {
    let mut ledger = Ledger {
        events: DomainEvents::new(),
        entries: vec![5_i64],
        id: "acct-7",
    };
    ledger.register_event(EntryBooked { cents: 5 });
    assert_eq!(
        <Ledger<&str, i64> as AggregateRoot>::AGGREGATE_TYPE,
        "Ledger"
    );
    assert_eq!(ledger.aggregate_id(), "acct-7");
    assert_eq!(ledger.pending_events().len(), 1);
    assert_eq!(ledger.pending_events().as_slice()[0].name(), "EntryBooked");
    assert_eq!(ledger.entries, [5]);

    let numbered = Ledger::<u64, String> {
        events: DomainEvents::new(),
        entries: Vec::new(),
        id: 42,
    };
    assert_eq!(numbered.aggregate_id(), "42");
}

#[event_handler(group = "shipping-service")]
async fn on_placed(event: &Placed, ctx: &EventContext) -> Result<(), HandlerError> {
    if event.amount_cents < 0 {
        return Err(HandlerError::permanent(std::io::Error::other(
            "negative amount",
        )));
    }
    assert_eq!(ctx.aggregate_id(), event.order_id.to_string());
    Ok(())
}

#[tokio::test]
async fn handlers_register_and_run() {
    let from_inventory = HandlerRegistry::from_inventory();
    let found: Vec<_> = from_inventory
        .in_group("shipping-service", "OrderPlaced")
        .collect();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].id(), concat!(module_path!(), "::on_placed"));
    assert_eq!(found[0].event_version(), 2);
    assert_eq!(found[0].topic(), Some("orders"));

    let explicit = HandlerRegistry::new().with(handler!(on_placed));
    let handler = explicit
        .get(found[0].id(), Some("shipping-service"))
        .expect("handler");

    let mut order = order::Model::place(100);
    let envelope = order.take_events().as_slice()[0]
        .to_envelope("Order", &order.aggregate_id(), 1)
        .expect("envelope");
    let ctx = EventContext::new(&envelope, handler.id(), 1);
    handler.call(&envelope, &ctx).await.expect("handled");

    let bad = outbox_core::Envelope::builder("OrderPlaced", "Order", "x")
        .version(2)
        .payload("{\"order_id\":\"x\"}")
        .build();
    let ctx = EventContext::new(&bad, handler.id(), 1);
    let err = handler.call(&bad, &ctx).await.expect_err("bad payload");
    assert!(
        !err.is_retryable(),
        "a payload that does not decode is permanent"
    );
    assert!(err.to_string().contains("does not deserialize"), "{err}");
}
