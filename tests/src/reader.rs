//! A plain rdkafka reader: what reached a topic, read without the project's own consumer.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

/// A message read back from a topic.
#[derive(Clone, Debug)]
pub struct Read {
    /// Its key.
    pub key: Option<String>,
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
            .unwrap_or_else(|| panic!("header {key} missing in {self:?}"))
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
/// properties set on it, until `want` messages came and then `settle` passed without a new one
/// (so extra messages are seen too; at most 30 s in all; fewer than `want` fails). Sorted by
/// partition and offset.
pub fn read_topic(
    brokers: &str,
    topic: &str,
    extra: &[(&str, &str)],
    want: usize,
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
    while Instant::now() < deadline && (out.len() < want || quiet_since.elapsed() < settle) {
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
                    key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
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
    assert!(
        out.len() >= want,
        "read {} of {want} messages from {topic}",
        out.len()
    );
    out.sort_by_key(|m| (m.partition, m.offset));
    out
}

/// [`read_topic`] on a blocking thread.
pub async fn read_topic_async(
    brokers: &str,
    topic: &str,
    extra: &[(&str, &str)],
    want: usize,
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
        read_topic(&brokers, &topic, &extra, want, settle)
    })
    .await
    .expect("reader thread")
}
