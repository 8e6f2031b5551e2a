use outbox_core::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
struct OrderCreated {
    order_id: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
#[event(name = "PaymentPaid", version = 3, topic = "payments")]
struct Paid {
    amount_cents: i64,
}

fn main() {
    assert_eq!(<OrderCreated as DomainEvent>::NAME, "OrderCreated");
    assert_eq!(<OrderCreated as DomainEvent>::VERSION, 1);
    assert_eq!(<OrderCreated as DomainEvent>::TOPIC, None);
    assert_eq!(<Paid as DomainEvent>::NAME, "PaymentPaid");
    assert_eq!(<Paid as DomainEvent>::VERSION, 3);
    assert_eq!(<Paid as DomainEvent>::TOPIC, Some("payments"));
}
