// A noun in -ed is not a past form, and no verb to inflect: the generic hint.
use outbox_core::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
struct OrderFeed {
    id: u64,
}

fn main() {}
