// The generated code names everything by absolute path: no `use` needed, and a local
// `Result`, `Option` or `String` does not get in the way.
#![allow(dead_code)]

type Result = ();
type Option = ();
type String = ();
struct Box;

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, outbox_core::DomainEvent)]
#[event(topic = "orders")]
struct OrderCreated {
    order_id: u64,
}

#[derive(Debug, outbox_core::AggregateRoot)]
#[aggregate(name = "Order")]
struct Order {
    #[aggregate(id)]
    id: u64,
    #[aggregate(events)]
    events: outbox_core::DomainEvents,
}

#[outbox_core::event_handler]
async fn on_created(
    event: &OrderCreated,
    ctx: &outbox_core::EventContext,
) -> core::result::Result<(), outbox_core::HandlerError> {
    let _ = (event, ctx);
    Ok(())
}

fn main() {
    assert_eq!(<OrderCreated as outbox_core::DomainEvent>::TOPIC, Some("orders"));
    assert_eq!(<Order as outbox_core::AggregateRoot>::AGGREGATE_TYPE, "Order");
    assert_eq!(outbox_core::handler!(on_created).event(), "OrderCreated");
}
