use outbox_core::{AggregateRoot, DomainEvents};

#[derive(Debug, AggregateRoot)]
#[aggregate(name = "Order")]
pub struct Model {
    #[aggregate(id)]
    pub id: uuid::Uuid,
    #[aggregate(events)]
    pub events: outbox_core::DomainEvents,
}

fn main() {
    let id = uuid::Uuid::now_v7();
    let model = Model { id, events: DomainEvents::new() };
    assert_eq!(Model::AGGREGATE_TYPE, "Order");
    assert_eq!(model.aggregate_id(), id.to_string());
}
