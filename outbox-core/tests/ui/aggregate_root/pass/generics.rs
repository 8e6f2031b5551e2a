use std::fmt::Display;

use outbox_core::{AggregateRoot, DomainEvent, DomainEvents};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
struct ItemAdded {
    sku: String,
}

#[derive(Debug, AggregateRoot)]
#[aggregate(name = "Cart")]
struct Cart<'a, Id, const N: usize>
where
    Id: Display,
{
    #[aggregate(id)]
    id: Id,
    label: &'a str,
    slots: [u8; N],
    #[aggregate(events)]
    events: DomainEvents,
}

#[derive(Debug, Default, AggregateRoot)]
struct Wishlist {
    #[aggregate(events)]
    events: DomainEvents,
    #[aggregate(id)]
    owner: String,
}

fn main() {
    let mut cart = Cart::<_, 2> { id: "c-1", label: "x", slots: [0; 2], events: DomainEvents::new() };
    cart.register_event(ItemAdded { sku: "a".into() });
    assert_eq!(<Cart<'_, &str, 2> as AggregateRoot>::AGGREGATE_TYPE, "Cart");
    assert_eq!(cart.aggregate_id(), "c-1");
    assert_eq!(cart.pending_events().len(), 1);
    assert_eq!(cart.take_events().len(), 1);
    assert!(cart.pending_events().is_empty());

    let list = Wishlist { owner: "ada".into(), ..Default::default() };
    assert_eq!(Wishlist::AGGREGATE_TYPE, "Wishlist");
    assert_eq!(list.aggregate_id(), "ada");
    let _ = (cart.label, cart.slots);
}
