use outbox_core::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
#[event(name = "OrderCreated", version = 1)]
struct OrderCreatedV1 {
    id: u64,
}

// Version 3 upcasts from version 1: version 2 is missing from the chain.
#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
#[event(name = "OrderCreated", version = 3, upcast_from = OrderCreatedV1)]
struct OrderCreated {
    id: u64,
}

impl From<OrderCreatedV1> for OrderCreated {
    fn from(v1: OrderCreatedV1) -> Self {
        OrderCreated { id: v1.id }
    }
}

fn main() {}
