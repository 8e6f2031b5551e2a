use outbox_core::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
#[event(name = "OrderCreate", version = 1)]
struct Created {
    order_id: u64,
}

fn main() {}
