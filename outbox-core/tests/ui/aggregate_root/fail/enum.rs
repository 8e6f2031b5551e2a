use outbox_core::AggregateRoot;

#[derive(Debug, AggregateRoot)]
enum Order {
    Pending { id: u64 },
    Shipped { id: u64 },
}

fn main() {}
