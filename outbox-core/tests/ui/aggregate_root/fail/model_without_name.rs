// Every SeaORM entity's model is called `Model`: the aggregate needs its own name.
use outbox_core::{AggregateRoot, DomainEvents};

#[derive(Debug, AggregateRoot)]
pub struct Model {
    #[aggregate(id)]
    pub id: i64,
    #[aggregate(events)]
    pub events: DomainEvents,
}

fn main() {}
