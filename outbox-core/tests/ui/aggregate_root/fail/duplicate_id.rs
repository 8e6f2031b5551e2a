use outbox_core::{AggregateRoot, DomainEvents};

#[derive(Debug, AggregateRoot)]
struct Order {
    #[aggregate(id)]
    id: u64,
    #[aggregate(id)]
    customer_id: u64,
    #[aggregate(events)]
    events: DomainEvents,
}

fn main() {}
