use outbox_core::{DomainEvent, EventContext, HandlerError, HandlerRegistry, event_handler};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
#[event(topic = "orders")]
struct OrderCreated {
    order_id: u64,
}

#[event_handler]
async fn send_confirmation(event: &OrderCreated, ctx: &EventContext) -> Result<(), HandlerError> {
    let _ = (event, ctx);
    Ok(())
}

#[event_handler(group = "payment-service")]
async fn capture_payment(
    event: &OrderCreated,
    ctx: &EventContext<'_>,
) -> Result<(), HandlerError> {
    let _ = (event, ctx);
    Ok(())
}

fn main() {
    let registry = HandlerRegistry::from_inventory();
    let local: Vec<_> = registry.local("OrderCreated").collect();
    assert_eq!(local.len(), 1);
    assert!(local[0].id().ends_with("::send_confirmation"));
    assert_eq!(local[0].topic(), Some("orders"));
    let group: Vec<_> = registry.in_group("payment-service", "OrderCreated").collect();
    assert_eq!(group.len(), 1);
    assert!(group[0].id().ends_with("::capture_payment"));
    assert_eq!(group[0].event_version(), 1);
}
