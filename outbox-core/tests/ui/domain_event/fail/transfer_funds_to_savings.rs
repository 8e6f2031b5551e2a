// A command with a phrase: the phrase stays after the verb.
use outbox_core::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
#[event(name = "TransferFundsToSavings")]
struct Transfer {
    id: u64,
}

fn main() {}
