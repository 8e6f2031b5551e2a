use outbox_core::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
#[event(name = "OrderShipped", version = 1)]
struct OrderShipped {
    id: u64,
}

// An upcast reads an older version of the same event, not another event.
#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
#[event(name = "OrderCreated", version = 2, upcast_from = OrderShipped)]
struct OrderCreated {
    id: u64,
}

impl From<OrderShipped> for OrderCreated {
    fn from(old: OrderShipped) -> Self {
        OrderCreated { id: old.id }
    }
}

fn main() {}
