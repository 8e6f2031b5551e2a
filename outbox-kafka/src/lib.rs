//! Kafka backend of the outbox framework.
//!
//! * [`KafkaPublisher`]: the relay's [`outbox_core::Publisher`] for Kafka (idempotent producer,
//!   aggregate id as key, pipelined batches, CloudEvents headers);
//! * [`KafkaConsumer`]: runs a consumer group's `#[event_handler(group = "...")]` handlers on the
//!   events of their topics, exactly once per event through the inbox
//!   ([`outbox_seaorm::inbox`]), with retries and a dead-letter topic;
//! * [`provision_topics`]: creates topics for brokers that do not create them on first use;
//! * the relay as its own process is the `outbox relay` command of the `outbox-cli` crate.
//!
//! librdkafka is built from source by `rdkafka-sys` (a C compiler, `make` and zlib headers
//! (`zlib1g-dev`) are needed; the `ssl` feature also needs `libssl-dev`).
//!
//! ```
//! use outbox_core::Envelope;
//! use outbox_kafka::KafkaPublisher;
//!
//! let publisher = KafkaPublisher::builder("127.0.0.1:9092")
//!     .topic_prefix("shop.")
//!     .set("sasl.password", "not in the logs")
//!     .build()
//!     .unwrap();
//! let order_created = Envelope::builder("OrderCreated", "Order", "o-1").build();
//! assert_eq!(publisher.topic_for(&order_created), "shop.order");
//! assert!(!format!("{publisher:?}").contains("not in the logs"));
//! ```

mod admin;
mod config;
mod consumer;
mod error;
pub mod headers;
mod publisher;
mod reports;

pub use admin::provision_topics;
pub use config::{KafkaConfig, is_secret};
pub use consumer::{ConsumerStats, KafkaConsumer, KafkaConsumerBuilder, dlt};
pub use error::{DeliveryError, SetupError, is_retryable};
pub use headers::MalformedMessage;
pub use publisher::{KafkaPublisher, KafkaPublisherBuilder, default_topic};
