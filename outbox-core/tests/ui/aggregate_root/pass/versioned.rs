use outbox_core::{AggregateRoot, DomainEvent, DomainEvents};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
struct OrderPlaced {
    id: u64,
}

#[derive(Debug, AggregateRoot)]
struct Order {
    #[aggregate(id)]
    id: u64,
    #[aggregate(version)]
    version: i64,
    #[aggregate(events)]
    events: DomainEvents,
}

#[derive(Debug, AggregateRoot)]
struct Small<T: std::fmt::Debug> {
    #[aggregate(id)]
    id: u64,
    #[aggregate(version)]
    revision: u16,
    #[aggregate(events)]
    events: DomainEvents,
    extra: T,
}

#[derive(Debug, AggregateRoot)]
struct Plain {
    #[aggregate(id)]
    id: u64,
    #[aggregate(events)]
    events: DomainEvents,
}

fn main() {
    let mut order = Order { id: 1, version: 0, events: DomainEvents::new() };
    order.register_event(OrderPlaced { id: 1 });
    assert!(Order::VERSIONED);
    assert_eq!(Order::VERSION_FIELD, Some("version"));
    assert_eq!(Order::MAX_VERSION, i64::MAX);
    assert_eq!(order.version(), Some(0));
    order.set_version(3);
    assert_eq!(order.version, 3);

    let mut small = Small { id: 2, revision: 7, events: DomainEvents::new(), extra: () };
    assert_eq!(Small::<()>::MAX_VERSION, i64::from(u16::MAX));
    assert_eq!(Small::<()>::VERSION_FIELD, Some("revision"));
    assert_eq!(small.version(), Some(7));
    small.set_version(8);
    assert_eq!(small.revision, 8);

    let mut plain = Plain { id: 3, events: DomainEvents::new() };
    assert!(!Plain::VERSIONED);
    assert_eq!(plain.version(), None);
    plain.set_version(5);
    assert_eq!(plain.version(), None);
}
