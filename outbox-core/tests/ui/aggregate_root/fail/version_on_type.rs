use outbox_core::{AggregateRoot, DomainEvents};

#[derive(Debug, AggregateRoot)]
#[aggregate(name = "Order", version)]
struct Order {
    #[aggregate(id)]
    id: u64,
    #[aggregate(events)]
    events: DomainEvents,
}

fn main() {}
