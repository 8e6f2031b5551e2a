//! Puts relayed events on a Kafka topic, for the independent client check
//! (`scripts/kafka_check.py`).
//!
//! `kafka_seed BROKERS TOPIC` creates TOPIC (3 partitions) when missing, saves events of three
//! aggregates with `Outbox::save` on a fresh PostgreSQL database, relays them with `Relay` and
//! `KafkaPublisher` to TOPIC, waits until every one is acknowledged, and prints how many it
//! published (the only line on stdout). Exit code 1 when anything fails.

use std::time::{Duration, Instant};

use outbox_core::{AggregateRoot, DomainEvent, DomainEvents, HandlerRegistry};
use outbox_kafka::{KafkaConfig, KafkaPublisher, provision_topics};
use outbox_seaorm::Outbox;
use outbox_seaorm::relay::{Relay, pending_count};
use outbox_tests::{Backend, fresh};
use sea_orm::ConnectionTrait;
use serde::{Deserialize, Serialize};

mod shipment {
    use outbox_core::{AggregateRoot, DomainEvents};
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, AggregateRoot)]
    #[sea_orm(table_name = "shipments")]
    #[aggregate(name = "Shipment")]
    pub(crate) struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        #[aggregate(id)]
        pub(crate) id: String,
        pub(crate) legs: i64,
        #[sea_orm(ignore)]
        #[aggregate(events)]
        pub(crate) events: DomainEvents,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub(crate) enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
#[event(name = "ShipmentLegAdded", version = 1)]
struct LegAdded {
    shipment: String,
    leg: i64,
    city: String,
}

const AGGREGATES: usize = 3;
const EVENTS_EACH: i64 = 4;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [brokers, topic] = args.as_slice() else {
        eprintln!("usage: kafka_seed BROKERS TOPIC");
        std::process::exit(2);
    };
    match seed(brokers, topic).await {
        Ok(n) => println!("{n}"),
        Err(e) => {
            eprintln!("kafka_seed: {e}");
            std::process::exit(1);
        }
    }
}

async fn seed(brokers: &str, topic: &str) -> Result<usize, Box<dyn std::error::Error>> {
    let Some(t) = fresh(Backend::Postgres, "kafka_seed").await else {
        return Err("PostgreSQL is not reachable".into());
    };
    t.db.execute_unprepared(
        "CREATE TABLE shipments (id VARCHAR(64) PRIMARY KEY, legs BIGINT NOT NULL)",
    )
    .await?;
    provision_topics(&KafkaConfig::new(brokers), &[topic], 3, 1).await?;
    let outbox = Outbox::builder(t.db.clone())
        .handlers(HandlerRegistry::new())
        .build();
    let cities = ["Lyon", "Graz", "Porto", "Turku"];
    let mut shipments: Vec<shipment::Model> = (0..AGGREGATES)
        .map(|i| shipment::Model {
            id: format!("shipment-{i}-{}", uuid::Uuid::now_v7()),
            legs: 0,
            events: DomainEvents::new(),
        })
        .collect();
    for _ in 0..EVENTS_EACH {
        for s in &mut shipments {
            s.legs += 1;
            let event = LegAdded {
                shipment: s.id.clone(),
                leg: s.legs,
                city: cities[(s.legs as usize) % cities.len()].to_owned(),
            };
            s.register_event(event);
            outbox.save(s).await?;
        }
    }
    let route = topic.to_owned();
    let publisher = KafkaPublisher::builder(brokers)
        .router(move |_| route.clone())
        .build()?;
    let relay = Relay::builder(t.db.clone(), publisher).build();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut published = 0;
    while pending_count(&t.db).await? > 0 {
        if Instant::now() > deadline {
            return Err(format!("events still pending after 30 s ({published} published)").into());
        }
        let n = relay.run_once().await?.published();
        if n == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        published += n;
    }
    Ok(published)
}
