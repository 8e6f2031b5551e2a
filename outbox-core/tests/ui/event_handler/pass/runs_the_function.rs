// The registered handler decodes the envelope and runs the function.
use std::sync::atomic::{AtomicU64, Ordering};

use outbox_core::{
    AggregateRoot, DomainEvent, DomainEvents, EventContext, HandlerError, event_handler, handler,
};
use serde::{Deserialize, Serialize};

static SEEN: AtomicU64 = AtomicU64::new(0);

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
struct OrderPaid {
    amount_cents: u64,
}

#[derive(Debug, AggregateRoot)]
struct Order {
    #[aggregate(id)]
    id: u64,
    #[aggregate(events)]
    events: DomainEvents,
}

#[event_handler]
async fn record(event: &OrderPaid, ctx: &EventContext) -> Result<(), HandlerError> {
    assert_eq!(ctx.aggregate_id(), "9");
    SEEN.fetch_add(event.amount_cents, Ordering::SeqCst);
    Ok(())
}

fn main() {
    let mut order = Order { id: 9, events: DomainEvents::new() };
    order.register_event(OrderPaid { amount_cents: 250 });
    let envelope = order.pending_events().as_slice()[0]
        .to_envelope(Order::AGGREGATE_TYPE, &order.aggregate_id(), 1)
        .unwrap();
    let handler = handler!(record);
    let ctx = EventContext::new(&envelope, handler.id(), 1);
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    runtime.block_on(handler.call(&envelope, &ctx)).unwrap();
    assert_eq!(SEEN.load(Ordering::SeqCst), 250);
}
