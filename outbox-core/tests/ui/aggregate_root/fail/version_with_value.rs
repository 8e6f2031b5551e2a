use outbox_core::{AggregateRoot, DomainEvents};

#[derive(Debug, AggregateRoot)]
struct Order {
    #[aggregate(id)]
    id: u64,
    #[aggregate(version = "revision")]
    revision: i64,
    #[aggregate(events)]
    events: DomainEvents,
}

fn main() {}
