// Every mistake is reported at once, each at its own tokens.
use outbox_core::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
#[event(name = "CancelOrder", version = 0, colour = "blue")]
struct OrderCancelled {
    order_id: u64,
}

fn main() {}
