use outbox_core::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
#[event(name = "OrderCreated", version = 1)]
struct OrderCreatedV1 {
    id: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
#[event(name = "OrderCreated", version = 1)]
struct OrderCreatedOld {
    id: u64,
}

// One version, two upcasts.
#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
#[event(name = "OrderCreated", version = 2, upcast_from = OrderCreatedV1, upcast_from = OrderCreatedOld)]
struct OrderCreated {
    id: u64,
}

impl From<OrderCreatedV1> for OrderCreated {
    fn from(v1: OrderCreatedV1) -> Self {
        OrderCreated { id: v1.id }
    }
}

fn main() {}
