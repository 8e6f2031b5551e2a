use outbox_core::{EventContext, HandlerError, event_handler};

#[derive(Clone, Debug)]
struct OrderCreated {
    order_id: u64,
}

#[event_handler]
async fn send_confirmation(event: &OrderCreated, ctx: &EventContext) -> Result<(), HandlerError> {
    let _ = (event.order_id, ctx);
    Ok(())
}

fn main() {}
