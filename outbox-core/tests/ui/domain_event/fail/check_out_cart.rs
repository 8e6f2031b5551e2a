// A phrasal command: the object goes first, the particle stays after the verb.
use outbox_core::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
struct CheckOutCart {
    id: u64,
}

fn main() {}
