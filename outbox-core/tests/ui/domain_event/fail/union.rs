use outbox_core::DomainEvent;

#[derive(Clone, Copy, DomainEvent)]
union OrderCreated {
    order_id: u64,
    amount: f64,
}

fn main() {}
