use outbox_core::{AggregateRoot, DomainEvents};

#[derive(Debug)]
struct OrderId(u64);

#[derive(Debug, AggregateRoot)]
struct Order {
    #[aggregate(id)]
    id: OrderId,
    #[aggregate(events)]
    events: DomainEvents,
}

fn main() {}
