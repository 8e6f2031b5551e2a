use outbox_core::{DomainEvent, EventContext, event_handler};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
struct OrderCreated {
    order_id: u64,
}

#[event_handler]
async fn send_confirmation(event: &OrderCreated, ctx: &EventContext) {
    let _ = (event, ctx);
}

fn main() {}
