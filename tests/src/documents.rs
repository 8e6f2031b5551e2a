//! A `Document` aggregate whose events carry a body of any size, saved through the real save
//! path (read what reached the topic with [`crate::reader`]).

use outbox_core::{AggregateRoot, DomainEvent, DomainEvents};
use outbox_seaorm::Outbox;
use sea_orm::ConnectionTrait;
use serde::{Deserialize, Serialize};

/// The `documents` table, as an aggregate.
pub mod document {
    use outbox_core::{AggregateRoot, DomainEvents};
    use sea_orm::entity::prelude::*;

    /// A document; its events go to topic `<prefix>document`.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, AggregateRoot)]
    #[sea_orm(table_name = "documents")]
    #[aggregate(name = "Document")]
    pub struct Model {
        /// Its id.
        #[sea_orm(primary_key, auto_increment = false)]
        #[aggregate(id)]
        pub id: String,
        /// How many events it had.
        pub revisions: i64,
        /// Pending events.
        #[sea_orm(ignore)]
        #[aggregate(events)]
        pub events: DomainEvents,
    }

    /// No relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// One revision of a document; `body` makes it as large as a test needs.
#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
#[event(name = "DocumentRevised")]
pub struct DocumentRevised {
    /// The document.
    pub document: String,
    /// The revision, from 1 (= the event's sequence).
    pub revision: i64,
    /// Filler.
    pub body: String,
}

/// Creates the `documents` table (the same SQL on every backend).
pub async fn create_table<C: ConnectionTrait>(db: &C) {
    db.execute_unprepared(
        "CREATE TABLE documents (id VARCHAR(64) PRIMARY KEY, revisions BIGINT NOT NULL)",
    )
    .await
    .expect("documents table");
}

/// A new document with no revisions.
pub fn new_document(id: &str) -> document::Model {
    document::Model {
        id: id.to_owned(),
        revisions: 0,
        events: DomainEvents::new(),
    }
}

/// Adds one revision with a body of `body_bytes` bytes and saves it (one event per save).
pub async fn revise(outbox: &Outbox, doc: &mut document::Model, body_bytes: usize) {
    doc.revisions += 1;
    let event = DocumentRevised {
        document: doc.id.clone(),
        revision: doc.revisions,
        body: "x".repeat(body_bytes),
    };
    doc.register_event(event);
    outbox
        .save(doc)
        .await
        .unwrap_or_else(|e| panic!("saving a {body_bytes}-byte revision: {e:?}"));
}
