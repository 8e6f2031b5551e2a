// A bad name is the only error: the stub impl keeps the type usable as an event.
use outbox_core::{AggregateRoot, DomainEvent, DomainEvents};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
struct ShipOrder {
    order_id: u64,
}

#[derive(Debug, AggregateRoot)]
struct Order {
    #[aggregate(id)]
    id: u64,
    #[aggregate(events)]
    events: DomainEvents,
}

fn main() {
    let mut order = Order { id: 1, events: DomainEvents::new() };
    order.register_event(ShipOrder { order_id: 1 });
    let _ = <ShipOrder as DomainEvent>::NAME;
}
