// A phrasal verb with no object: no name to suggest, the generic hint.
use outbox_core::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
struct LogIn {
    id: u64,
}

fn main() {}
