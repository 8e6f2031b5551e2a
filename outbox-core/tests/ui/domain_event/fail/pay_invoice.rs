// An irregular verb first: the object goes first, the verb takes its participle.
use outbox_core::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
struct PayInvoice {
    id: u64,
}

fn main() {}
