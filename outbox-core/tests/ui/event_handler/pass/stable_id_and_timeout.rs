// `id` sets the handler's stable id (its database key) and `timeout` its own timeout; the
// explicit registration with `handler!` carries both.
use std::time::Duration;

use outbox_core::{DomainEvent, EventContext, HandlerError, HandlerRegistry, event_handler, handler};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
pub struct PaymentCaptured {
    pub order_id: u64,
}

#[event_handler(id = "billing.book-payment", group = "billing", timeout = "1500ms")]
async fn book_payment(event: &PaymentCaptured, ctx: &EventContext) -> Result<(), HandlerError> {
    let _ = (event, ctx);
    Ok(())
}

#[event_handler(timeout = "2m")]
async fn notify(event: &PaymentCaptured, ctx: &EventContext) -> Result<(), HandlerError> {
    let _ = (event, ctx);
    Ok(())
}

fn main() {
    let explicit = handler!(book_payment);
    assert_eq!(explicit.id(), "billing.book-payment");
    assert_eq!(explicit.function(), concat!(module_path!(), "::book_payment"));
    assert_eq!(explicit.timeout(), Some(Duration::from_millis(1500)));
    assert_eq!(handler!(notify).id(), concat!(module_path!(), "::notify"));
    assert_eq!(handler!(notify).timeout(), Some(Duration::from_secs(120)));

    // The inventory's entry and the explicit one are the same handler: no duplicate.
    let registry = HandlerRegistry::try_from_inventory()
        .and_then(|r| r.try_with(explicit))
        .unwrap();
    let found = registry.get("billing.book-payment", Some("billing")).map(|h| h.function());
    assert_eq!(found, Some(explicit.function()));
    assert_eq!(registry.iter().count(), 2);
}
