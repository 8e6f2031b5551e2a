use outbox_core::AggregateRoot;

#[derive(Debug, AggregateRoot)]
struct Order {
    #[aggregate(id)]
    id: u64,
    status: String,
}

fn main() {}
