use outbox_core::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
#[event(name = "OrderCreated", version = 1)]
struct OrderCreatedV1 {
    id: u64,
}

// No `impl From<OrderCreatedV1> for OrderCreated`: nothing says how an old payload converts.
#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
#[event(name = "OrderCreated", version = 2, upcast_from = OrderCreatedV1)]
struct OrderCreated {
    id: u64,
}

fn main() {}
