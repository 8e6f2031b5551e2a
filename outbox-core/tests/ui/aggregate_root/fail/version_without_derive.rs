use outbox_core::DomainEvents;

/// `#[aggregate(version)]` means nothing without `#[derive(AggregateRoot)]`.
#[derive(Debug)]
struct Order {
    id: u64,
    #[aggregate(version)]
    version: i64,
    events: DomainEvents,
}

fn main() {}
