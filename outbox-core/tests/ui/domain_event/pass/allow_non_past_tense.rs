use outbox_core::DomainEvent;
use serde::{Deserialize, Serialize};

/// A legacy name other services already consume.
#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
#[event(name = "LegacyOrderSnapshot", allow_non_past_tense)]
struct Snapshot {
    order_id: u64,
}

fn main() {
    assert_eq!(<Snapshot as DomainEvent>::NAME, "LegacyOrderSnapshot");
}
