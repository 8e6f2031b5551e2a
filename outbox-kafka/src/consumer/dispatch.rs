//! Per key, the messages received and not yet handed to a run, and which keys are running.

use std::collections::{HashMap, VecDeque};

use rdkafka::Message;
use rdkafka::message::OwnedMessage;

/// A Kafka message key within its partition: the unit of ordering. Messages without a key
/// share the key `None` of their partition, so they are applied one after the other.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct KeyId {
    pub(crate) topic: String,
    pub(crate) partition: i32,
    pub(crate) key: Option<Vec<u8>>,
}

impl KeyId {
    pub(crate) fn of(message: &OwnedMessage) -> KeyId {
        KeyId {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            key: message.key().map(<[u8]>::to_vec),
        }
    }
}

/// A message received in the partition's assignment `generation`.
#[derive(Debug)]
pub(crate) struct Queued {
    pub(crate) message: OwnedMessage,
    pub(crate) generation: u64,
}

#[derive(Debug, Default)]
struct KeyQueue {
    messages: VecDeque<Queued>,
    running: bool,
}

/// FIFO queues per key; a key has at most one run at a time, and its runs take its messages
/// in offset order.
#[derive(Debug, Default)]
pub(crate) struct KeyQueues {
    queues: HashMap<KeyId, KeyQueue>,
    /// Keys with queued messages and no run, oldest first (may hold stale entries, skipped).
    ready: VecDeque<KeyId>,
}

impl KeyQueues {
    /// Queues `message` behind the earlier messages of its key.
    pub(crate) fn push(&mut self, id: KeyId, message: Queued) {
        let queue = self.queues.entry(id.clone()).or_default();
        if queue.messages.is_empty() && !queue.running {
            self.ready.push_back(id);
        }
        queue.messages.push_back(message);
    }

    /// The next key without a run and its first `max` queued messages (consecutive, in
    /// order); the key counts as running until [`KeyQueues::finished`].
    pub(crate) fn next_run(&mut self, max: usize) -> Option<(KeyId, Vec<Queued>)> {
        while let Some(id) = self.ready.pop_front() {
            let Some(queue) = self.queues.get_mut(&id) else {
                continue;
            };
            if queue.running || queue.messages.is_empty() {
                continue;
            }
            let n = queue.messages.len().min(max.max(1));
            let run: Vec<Queued> = queue.messages.drain(..n).collect();
            queue.running = true;
            return Some((id, run));
        }
        None
    }

    /// The run of `id` ended: its next messages, if any, may run.
    pub(crate) fn finished(&mut self, id: &KeyId) {
        let Some(queue) = self.queues.get_mut(id) else {
            return;
        };
        queue.running = false;
        if queue.messages.is_empty() {
            self.queues.remove(id);
        } else {
            self.ready.push_back(id.clone());
        }
    }

    /// Drops the queued messages of `topic`/`partition` not received in assignment `keep`
    /// (all of them when `None`); returns how many.
    pub(crate) fn purge(&mut self, topic: &str, partition: i32, keep: Option<u64>) -> usize {
        let mut dropped = 0;
        self.queues.retain(|id, queue| {
            if id.topic != topic || id.partition != partition {
                return true;
            }
            let before = queue.messages.len();
            queue.messages.retain(|m| Some(m.generation) == keep);
            dropped += before - queue.messages.len();
            queue.running || !queue.messages.is_empty()
        });
        dropped
    }

    /// Whether no key has queued messages.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.queues.values().all(|q| q.messages.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::Timestamp;
    use rdkafka::message::OwnedMessage;

    use super::{KeyId, KeyQueues, Queued};

    fn message(partition: i32, key: Option<&str>, offset: i64) -> (KeyId, Queued) {
        let m = OwnedMessage::new(
            None,
            key.map(|k| k.as_bytes().to_vec()),
            "t".to_owned(),
            Timestamp::NotAvailable,
            partition,
            offset,
            None,
        );
        (
            KeyId::of(&m),
            Queued {
                message: m,
                generation: 1,
            },
        )
    }

    fn offsets(run: &[Queued]) -> Vec<i64> {
        run.iter()
            .map(|q| rdkafka::Message::offset(&q.message))
            .collect()
    }

    #[test]
    fn one_run_per_key_in_offset_order() {
        let mut q = KeyQueues::default();
        for (offset, key) in [(0, "a"), (1, "b"), (2, "a"), (3, "a"), (4, "b")] {
            let (id, m) = message(0, Some(key), offset);
            q.push(id, m);
        }
        let (a, run_a) = q.next_run(2).expect("a");
        assert_eq!(offsets(&run_a), [0, 2]);
        let (b, run_b) = q.next_run(2).expect("b");
        assert_eq!(offsets(&run_b), [1, 4]);
        assert!(q.next_run(2).is_none(), "a is running: its 3 waits");
        let (id, m) = message(0, Some("a"), 5);
        q.push(id, m);
        assert!(q.next_run(2).is_none(), "still running");
        q.finished(&a);
        let (_, run) = q.next_run(10).expect("a again");
        assert_eq!(offsets(&run), [3, 5]);
        q.finished(&b);
        assert!(q.next_run(10).is_none());
    }

    #[test]
    fn messages_without_key_are_serial_per_partition() {
        let mut q = KeyQueues::default();
        for (partition, offset) in [(0, 0), (1, 0), (0, 1)] {
            let (id, m) = message(partition, None, offset);
            q.push(id, m);
        }
        let (p0, run) = q.next_run(1).expect("p0");
        assert_eq!(offsets(&run), [0]);
        let (_, run) = q.next_run(1).expect("p1 runs beside p0");
        assert_eq!(offsets(&run), [0]);
        assert!(q.next_run(1).is_none());
        q.finished(&p0);
        assert_eq!(offsets(&q.next_run(1).expect("p0 again").1), [1]);
    }

    #[test]
    fn purge_drops_a_partitions_queued_messages() {
        let mut q = KeyQueues::default();
        for (partition, offset) in [(0, 0), (1, 0), (0, 1)] {
            let (id, m) = message(partition, Some("k"), offset);
            q.push(id, m);
        }
        assert_eq!(q.purge("t", 0, None), 2);
        assert_eq!(q.purge("t", 1, Some(1)), 0, "same generation kept");
        let (id, run) = q.next_run(10).expect("p1");
        assert_eq!(id.partition, 1);
        assert_eq!(offsets(&run), [0]);
        assert!(q.next_run(10).is_none());
        assert!(q.is_empty());
    }
}
