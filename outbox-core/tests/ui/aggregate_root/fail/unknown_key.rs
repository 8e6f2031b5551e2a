use outbox_core::{AggregateRoot, DomainEvents};

#[derive(Debug, AggregateRoot)]
struct Order {
    #[aggregate(key)]
    id: u64,
    #[aggregate(events)]
    events: DomainEvents,
}

fn main() {}
