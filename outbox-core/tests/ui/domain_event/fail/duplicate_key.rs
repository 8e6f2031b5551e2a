use outbox_core::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
#[event(version = 1)]
#[event(version = 2)]
struct OrderCreated {
    order_id: u64,
}

fn main() {}
