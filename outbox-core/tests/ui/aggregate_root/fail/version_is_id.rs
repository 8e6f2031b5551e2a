use outbox_core::{AggregateRoot, DomainEvents};

#[derive(Debug, AggregateRoot)]
struct Order {
    #[aggregate(id, version)]
    id: u64,
    #[aggregate(events)]
    events: DomainEvents,
}

fn main() {}
