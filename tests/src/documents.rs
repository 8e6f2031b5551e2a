//! A `Document` aggregate whose events carry a body of any size, saved through the real save
//! path, and a plain rdkafka reader that checks what reached a topic without the project's own
//! consumer.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use outbox_core::{AggregateRoot, DomainEvent, DomainEvents};
use outbox_seaorm::Outbox;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
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

/// A message read back from a topic.
#[derive(Clone, Debug)]
pub struct Read {
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Its headers.
    pub headers: HashMap<String, String>,
    /// Its value.
    pub payload: Vec<u8>,
}

impl Read {
    /// The value of header `key` (panics when missing).
    pub fn header(&self, key: &str) -> &str {
        self.headers
            .get(key)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("header {key} missing"))
    }

    /// `aggregate_id/sequence`, for comparing what arrived.
    pub fn label(&self) -> String {
        format!(
            "{}/{}",
            self.header("aggregate_id"),
            self.header("sequence")
        )
    }
}

/// Reads `topic` from the beginning with a plain rdkafka consumer (no group commits), `extra`
/// properties set on it, until `settle` passes without a new message (at most 30 s in all).
/// Sorted by partition and offset.
pub fn read_topic(
    brokers: &str,
    topic: &str,
    extra: &[(&str, &str)],
    settle: Duration,
) -> Vec<Read> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set(
            "group.id",
            format!("reader-{}", uuid::Uuid::now_v7().simple()),
        )
        .set("enable.auto.commit", "false");
    for (k, v) in extra {
        config.set(*k, *v);
    }
    let consumer: BaseConsumer = config.create().expect("reader");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let partitions = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map_or(0, |t| t.partitions().len());
    assert!(partitions > 0, "topic {topic} has no partitions");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        let p = i32::try_from(p).expect("partition");
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("offset");
    }
    consumer.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut quiet_since = Instant::now();
    while Instant::now() < deadline && quiet_since.elapsed() < settle {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                quiet_since = Instant::now();
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (
                                    h.key.to_owned(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(Read {
                    partition: m.partition(),
                    offset: m.offset(),
                    headers,
                    payload: m.payload().unwrap_or_default().to_vec(),
                });
            }
            Some(Err(e)) => eprintln!("reading {topic}: {e}"),
            None => {}
        }
    }
    out.sort_by_key(|m| (m.partition, m.offset));
    out
}

/// [`read_topic`] on a blocking thread.
pub async fn read_topic_async(
    brokers: &str,
    topic: &str,
    extra: &[(&str, &str)],
    settle: Duration,
) -> Vec<Read> {
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
    let extra: Vec<(String, String)> = extra
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let extra: Vec<(&str, &str)> = extra
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        read_topic(&brokers, &topic, &extra, settle)
    })
    .await
    .expect("reader thread")
}
