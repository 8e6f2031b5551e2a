use outbox_core::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
#[event(name = "OrderCreated", version = 1)]
struct OrderCreatedV1 {
    id: u64,
}

// No version given: version 1 has nothing older to upcast from.
#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
#[event(name = "OrderCreated", upcast_from = OrderCreatedV1)]
struct OrderCreated {
    id: u64,
}

impl From<OrderCreatedV1> for OrderCreated {
    fn from(v1: OrderCreatedV1) -> Self {
        OrderCreated { id: v1.id }
    }
}

fn main() {}
