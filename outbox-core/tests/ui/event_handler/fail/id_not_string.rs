use outbox_core::{DomainEvent, EventContext, HandlerError, event_handler};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
struct OrderCreated {
    order_id: u64,
}

#[event_handler(id = capture)]
async fn capture(event: &OrderCreated, ctx: &EventContext) -> Result<(), HandlerError> {
    let _ = (event, ctx);
    Ok(())
}

fn main() {}
