use outbox_core::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
#[event(topic = "")]
struct OrderCreated {
    order_id: u64,
}

fn main() {}
