use outbox_core::AggregateRoot;

#[derive(Debug, AggregateRoot)]
struct Order {
    #[aggregate(id)]
    id: u64,
    #[aggregate(events)]
    events: Vec<String>,
}

fn main() {}
