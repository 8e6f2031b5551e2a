use outbox_core::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
#[event(nmae = "OrderCreated")]
struct OrderCreated {
    order_id: u64,
}

fn main() {}
