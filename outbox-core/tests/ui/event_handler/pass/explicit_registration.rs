// `handler!(path)` is the handler `#[event_handler]` declared, for registering it by hand.
use outbox_core::{DomainEvent, HandlerRegistry, handler};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
#[event(version = 2)]
pub struct PaymentCaptured {
    pub order_id: u64,
}

mod billing {
    pub mod handlers {
        use outbox_core::{EventContext, HandlerError, event_handler};

        #[event_handler(group = "billing")]
        pub async fn book_payment(
            event: &crate::PaymentCaptured,
            ctx: &EventContext,
        ) -> Result<(), HandlerError> {
            let _ = (event, ctx);
            Ok(())
        }
    }
}

fn main() {
    let registry = HandlerRegistry::new().with(handler!(billing::handlers::book_payment));
    let id = concat!(module_path!(), "::billing::handlers::book_payment");
    let handler = registry.get(id, Some("billing"));
    let handler = handler.map(|h| (h.event(), h.event_version(), h.group()));
    assert_eq!(handler, Some(("PaymentCaptured", 2, Some("billing"))));
    assert_eq!(handler!(crate::billing::handlers::book_payment).id(), id);
}
