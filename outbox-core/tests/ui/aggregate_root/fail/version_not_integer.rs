use outbox_core::{AggregateRoot, DomainEvents};

#[derive(Debug, AggregateRoot)]
struct Order {
    #[aggregate(id)]
    id: u64,
    #[aggregate(version)]
    version: String,
    #[aggregate(events)]
    events: DomainEvents,
}

fn main() {}
