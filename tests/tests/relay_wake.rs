//! The whole way: `Outbox::save` to the relay's publisher, with the envelope intact. On
//! PostgreSQL the relay must be woken by the save's `NOTIFY`: its polls are set to 30 s here.

use std::time::{Duration, Instant};

use outbox_core::testing::InMemoryPublisher;
use outbox_core::{AggregateRoot, DomainEvent, DomainEvents, EventMetadata};
use outbox_seaorm::{Outbox, Relay};
use outbox_tests::{Backend, TestDb, db_tests};
use sea_orm::{ConnectionTrait, Schema};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

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

async fn saved_events_reach_the_publisher_intact_and_promptly(t: TestDb) {
    let backend = t.db.get_database_backend();
    t.db.execute(&Schema::new(backend).create_table_from_entity(order::Entity))
        .await
        .expect("orders table");
    let outbox = Outbox::builder(t.db.clone()).build();
    let publisher = InMemoryPublisher::new();
    let mut relay = Relay::builder(t.connect_again().await, publisher.clone());
    if t.backend == Backend::Postgres {
        // Only a notification can wake it within the test's limit.
        relay = relay
            .fallback_poll(Duration::from_secs(30))
            .idle_backoff(Duration::from_secs(30), Duration::from_secs(30));
    }
    let relay = relay.build();
    let (stop, mut stopped) = watch::channel(false);
    let run = tokio::spawn(async move {
        relay
            .run_until(async move {
                let _ = stopped.wait_for(|s| *s).await;
            })
            .await
            .expect("run")
    });
    // Let the relay go idle (and LISTEN) first.
    tokio::time::sleep(Duration::from_millis(500)).await;

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
    stop.send(true).expect("stop");
    run.await.expect("join");
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

db_tests!(saved_events_reach_the_publisher_intact_and_promptly);
