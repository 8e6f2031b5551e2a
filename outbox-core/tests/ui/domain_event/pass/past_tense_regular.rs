// Regular past participles, with a version or an `Event` suffix.
use outbox_core::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
struct OrderCreated;

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
struct PaymentCaptured;

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
#[event(name = "order.placed")]
struct Placed;

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
struct OrderCreatedV2;

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
struct OrderCreatedEvent;

fn main() {}
