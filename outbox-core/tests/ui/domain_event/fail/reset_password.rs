// A base form that is also the participle reads as a command at the start of a name.
use outbox_core::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
struct ResetPassword {
    id: u64,
}

fn main() {}
