use outbox_core::{DomainEvent, EventContext, HandlerError, event_handler};

#[event_handler]
async fn log_any<E: DomainEvent>(event: &E, ctx: &EventContext) -> Result<(), HandlerError> {
    let _ = (event, ctx);
    Ok(())
}

fn main() {}
