//! The whole way: `Outbox::save` to the relay's publisher, with the envelope intact. On
//! PostgreSQL the relay must be woken by a `NOTIFY`: its polls are set to 30 s here. `save`,
//! `Outbox::write` and the unit of work notify after the commit; `write_events` in the caller's
//! own transaction notifies from that transaction.

use std::time::{Duration, Instant};

use outbox_core::testing::InMemoryPublisher;
use outbox_core::{AggregateRoot, DomainEvent, DomainEvents, EventMetadata, HandlerRegistry};
use outbox_seaorm::{Outbox, Relay, write_events};
use outbox_tests::{Backend, RunningRelay, TestDb, db_tests};
use sea_orm::{ActiveModelTrait, ConnectionTrait, IntoActiveModel, Schema, TransactionTrait};
use serde::{Deserialize, Serialize};

mod order {
    use outbox_core::{AggregateRoot, DomainEvents};
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "orders")]
    pub(crate) struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub(crate) id: String,
        pub(crate) amount: i64,
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

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, DomainEvent)]
#[event(name = "OrderPlaced", version = 2, topic = "orders.placed")]
struct OrderPlaced {
    order_id: String,
    amount: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, DomainEvent)]
#[event(name = "OrderPaid")]
struct OrderPaid {
    order_id: String,
}

/// A relay that only a notification can wake within 5 s on PostgreSQL, already idle.
async fn start_relay(t: &TestDb, publisher: &InMemoryPublisher) -> RunningRelay {
    let mut relay = Relay::builder(t.connect_again().await, publisher.clone());
    if t.backend == Backend::Postgres {
        // Only a notification can wake it within the test's limit.
        relay = relay
            .fallback_poll(Duration::from_secs(30))
            .idle_backoff(Duration::from_secs(30), Duration::from_secs(30));
    }
    let relay = relay.build();
    let running = RunningRelay::start(relay);
    // Let the relay go idle (and LISTEN) first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    running
}

async fn create_orders(t: &TestDb) {
    let backend = t.db.get_database_backend();
    t.db.execute(&Schema::new(backend).create_table_from_entity(order::Entity))
        .await
        .expect("orders table");
}

/// Waits until `publisher` has `n` events; fails after 5 s (the relay's polls are 30 s on
/// PostgreSQL).
async fn published_promptly(publisher: &InMemoryPublisher, n: usize, what: &str) -> Duration {
    let since = Instant::now();
    while publisher.published().count() < n {
        assert!(
            since.elapsed() < Duration::from_secs(5),
            "the relay was not woken after {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    since.elapsed()
}

async fn saved_events_reach_the_publisher_intact_and_promptly(t: TestDb) {
    create_orders(&t).await;
    let outbox = Outbox::builder(t.db.clone()).build();
    let publisher = InMemoryPublisher::new();
    let running = start_relay(&t, &publisher).await;

    let mut order = order::Model {
        id: "o-1".into(),
        amount: 1250,
        events: DomainEvents::new(),
    };
    let metadata = EventMetadata::new()
        .with_correlation_id("corr-1")
        .with_extra("tenant", "t-9");
    let saved_at = Instant::now();
    // Metadata is captured when an event is registered.
    outbox_core::context::with_metadata(metadata, async {
        order.register_event(OrderPlaced {
            order_id: "o-1".into(),
            amount: 1250,
        });
        order.register_event(OrderPaid {
            order_id: "o-1".into(),
        });
        outbox.save(&mut order).await
    })
    .await
    .expect("save");

    while publisher.published().count() < 2 {
        assert!(
            saved_at.elapsed() < Duration::from_secs(5),
            "the relay was not woken by the save"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let latency = saved_at.elapsed();
    running.stop().await;
    eprintln!("{:?}: save to publish in {latency:?}", t.backend);

    let published = publisher.published();
    let placed = &published.envelopes()[0];
    assert_eq!(placed.event_name(), "OrderPlaced");
    assert_eq!(placed.event_version(), 2);
    assert_eq!(placed.topic(), Some("orders.placed"));
    assert_eq!(
        (placed.aggregate_type(), placed.aggregate_id()),
        ("Order", "o-1")
    );
    assert_eq!(placed.sequence(), 1);
    assert_eq!(placed.metadata().correlation_id(), Some("corr-1"));
    assert_eq!(
        placed.metadata().extra().get("tenant").map(String::as_str),
        Some("t-9")
    );
    assert_eq!(
        published.of_type::<OrderPlaced>(),
        vec![OrderPlaced {
            order_id: "o-1".into(),
            amount: 1250
        }]
    );
    let paid = &published.envelopes()[1];
    assert_eq!(paid.sequence(), 2);
    assert_eq!(paid.topic(), None);
    assert!(published.contains::<OrderPaid>(|e| e.order_id == "o-1"));
    assert_eq!(published.for_aggregate("Order", "o-2").count(), 0);
}

fn placed(id: &str) -> order::Model {
    let mut order = order::Model {
        id: id.into(),
        amount: 100,
        events: DomainEvents::new(),
    };
    order.register_event(OrderPlaced {
        order_id: id.into(),
        amount: 100,
    });
    order
}

/// Every way of writing events wakes an idle relay: the unit of work and `Outbox::write` +
/// `after_commit` after their commits, `write_events` (whose caller may never report the
/// commit) from inside its transaction.
async fn every_write_path_wakes_the_relay(t: TestDb) {
    create_orders(&t).await;
    let outbox = Outbox::builder(t.db.clone()).build();
    let publisher = InMemoryPublisher::new();
    let running = start_relay(&t, &publisher).await;

    let mut a = placed("uow");
    let mut uow = outbox.begin().await.expect("begin");
    uow.save(&mut a).await.expect("uow save");
    uow.commit().await.expect("uow commit");
    let uow_latency = published_promptly(&publisher, 1, "a unit of work").await;
    assert!(a.pending_events().is_empty());

    let mut b = placed("write");
    let txn = t.db.begin().await.expect("begin");
    b.clone()
        .into_active_model()
        .insert(&txn)
        .await
        .expect("insert");
    let written = outbox.write(&txn, &b).await.expect("write");
    txn.commit().await.expect("commit");
    // Give a wrongly sent in-transaction notification time to arrive before `after_commit`:
    // the relay must still be woken by `after_commit`, not before.
    // (The other backends poll: their relay may find it in the meantime.)
    tokio::time::sleep(Duration::from_millis(300)).await;
    if t.backend == Backend::Postgres {
        assert_eq!(
            publisher.published().count(),
            1,
            "Outbox::write must leave the wake-up to after_commit"
        );
    }
    outbox.after_commit(&mut b, written).await;
    let write_latency = published_promptly(&publisher, 2, "Outbox::write + after_commit").await;

    let c = placed("free");
    let txn = t.db.begin().await.expect("begin");
    let _written = write_events(&txn, &c, &HandlerRegistry::new(), Duration::ZERO)
        .await
        .expect("write_events");
    txn.commit().await.expect("commit");
    // No after_commit: only the transaction's own NOTIFY wakes the relay.
    let free_latency = published_promptly(&publisher, 3, "write_events in a transaction").await;

    running.stop().await;
    eprintln!(
        "{:?}: unit of work {uow_latency:?}, write + after_commit {write_latency:?}, \
         write_events {free_latency:?}",
        t.backend
    );
    let published = publisher.published();
    let ids: Vec<&str> = published
        .envelopes()
        .iter()
        .map(|e| e.aggregate_id())
        .collect();
    assert_eq!(ids, ["uow", "write", "free"]);
}

db_tests!(
    saved_events_reach_the_publisher_intact_and_promptly,
    every_write_path_wakes_the_relay
);
