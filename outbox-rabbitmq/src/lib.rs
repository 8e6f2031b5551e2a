//! RabbitMQ backend of the outbox framework (AMQP 0-9-1, through the `lapin` client).
//!
//! * [`RabbitPublisher`]: the relay's [`outbox_core::Publisher`] for RabbitMQ: persistent,
//!   mandatory messages to a durable topic exchange (default `outbox`), routing key
//!   `<aggregate type>.<event name>`, publisher confirms (a row counts as published only on a
//!   positive acknowledgement of a routed message), the envelope headers shared with Kafka
//!   ([`outbox_core::wire`]) and the CloudEvents AMQP binding's `cloudEvents:*` properties;
//! * [`RabbitConsumer`]: runs a consumer group's `#[event_handler(group = "...")]` handlers on
//!   the events of its queue, exactly once per event through the inbox
//!   ([`outbox_seaorm::inbox`]), several aggregates at once and each aggregate's events in
//!   order, with retries and a dead-letter exchange and queue;
//! * [`properties`]: an event as AMQP properties, headers and body, and the strict decoding
//!   back.
//!
//! ```
//! use outbox_core::Envelope;
//! use outbox_rabbitmq::properties;
//!
//! let order_created = Envelope::builder("OrderCreated", "Order", "o-1").payload("{}").build();
//! let props = properties::encode(&order_created, "/shop");
//! assert_eq!(props.delivery_mode(), &Some(properties::PERSISTENT));
//! let back = properties::decode(&props, b"{}", "billing").unwrap();
//! assert_eq!(back.id(), order_created.id());
//! assert_eq!(back.aggregate_id(), "o-1");
//! ```
//!
//! The order the publisher keeps is described on [`RabbitPublisher`] (*Order*); what a
//! consumer applies in which order, also after a lost connection, on [`RabbitConsumer`]
//! (*Ordering and concurrency*).

mod consumer;
mod error;
mod link;
pub mod properties;
mod publisher;

pub use consumer::{ConsumerStats, RabbitConsumer, RabbitConsumerBuilder};
pub use error::{DeliveryError, SetupError};
pub use link::{ExchangeType, SINGLE_ACTIVE_CONSUMER};
pub use outbox_core::wire::{MalformedMessage, dlt};
pub use publisher::{RabbitPublisher, RabbitPublisherBuilder, default_routing_key};
