use outbox_core::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
struct PayOrder {
    order_id: u64,
    amount_cents: i64,
}

fn main() {}
