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
    /// Its next run takes this key alone: a run of several keys handed its messages back.
    solo: bool,
}

/// What one run applies: consecutive queued messages of one or more keys of one partition,
/// key by key, each key's in offset order.
#[derive(Debug, Default)]
pub(crate) struct Run {
    pub(crate) keys: Vec<KeyId>,
    pub(crate) messages: Vec<Queued>,
}

/// FIFO queues per key; a key has at most one run at a time, and its runs take its messages
/// in offset order.
#[derive(Debug, Default)]
pub(crate) struct KeyQueues {
    queues: HashMap<KeyId, KeyQueue>,
    /// Keys with queued messages and no run, oldest first (may hold stale entries, skipped).
    ready: VecDeque<KeyId>,
    /// Messages queued and not in a run.
    queued: usize,
}

impl KeyQueues {
    /// Queues `message` behind the earlier messages of its key.
    pub(crate) fn push(&mut self, id: KeyId, message: Queued) {
        let queue = self.queues.entry(id.clone()).or_default();
        if queue.messages.is_empty() && !queue.running {
            self.ready.push_back(id);
        }
        queue.messages.push_back(message);
        self.queued += 1;
    }

    /// Messages queued and not in a run.
    pub(crate) fn queued(&self) -> usize {
        self.queued
    }

    fn is_ready(&self, id: &KeyId) -> bool {
        self.queues
            .get(id)
            .is_some_and(|q| !q.running && !q.messages.is_empty())
    }

    /// Moves up to `max` of `id`'s first messages into `run`; the key counts as running.
    fn take(&mut self, id: KeyId, max: usize, run: &mut Run) {
        let Some(queue) = self.queues.get_mut(&id) else {
            return;
        };
        let n = queue.messages.len().min(max);
        run.messages.extend(queue.messages.drain(..n));
        queue.running = true;
        queue.solo = false;
        self.queued -= n;
        run.keys.push(id);
    }

    /// The next run: the oldest ready key's first messages, then, while fewer than `max`
    /// messages are taken, those of the next ready keys of the same partition (each key
    /// whole or in part, in offset order), so one inbox transaction applies several keys when
    /// messages wait. A key whose messages a run handed back ([`KeyQueues::give_back`]) runs
    /// alone once. Every key of the run counts as running until [`KeyQueues::finished`].
    pub(crate) fn next_run(&mut self, max: usize) -> Option<Run> {
        let max = max.max(1);
        let first = loop {
            let id = self.ready.pop_front()?;
            if self.is_ready(&id) {
                break id;
            }
        };
        let solo = self.queues.get(&first).is_some_and(|q| q.solo);
        let (topic, partition) = (first.topic.clone(), first.partition);
        let mut run = Run::default();
        self.take(first, max, &mut run);
        if solo {
            return Some(run);
        }
        let mut i = 0;
        while run.messages.len() < max && i < self.ready.len() {
            let id = &self.ready[i];
            let joins = id.partition == partition
                && id.topic == topic
                && self.is_ready(id)
                && self.queues.get(id).is_some_and(|q| !q.solo);
            if !joins {
                i += 1;
                continue;
            }
            if let Some(id) = self.ready.remove(i) {
                let room = max - run.messages.len();
                self.take(id, room, &mut run);
            }
        }
        Some(run)
    }

    /// A run of several keys handed `messages` back unapplied (its batch failed): they go back
    /// to the front of their keys' queues, in order, and each of those keys runs alone next.
    /// Call before [`KeyQueues::finished`].
    pub(crate) fn give_back(&mut self, messages: Vec<Queued>) {
        for message in messages.into_iter().rev() {
            let queue = self.queues.entry(KeyId::of(&message.message)).or_default();
            queue.solo = true;
            queue.messages.push_front(message);
            self.queued += 1;
        }
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
        self.queued -= dropped;
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

    use super::{KeyId, KeyQueues, Queued, Run};

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

    fn push(q: &mut KeyQueues, partition: i32, key: Option<&str>, offset: i64) {
        let (id, m) = message(partition, key, offset);
        q.push(id, m);
    }

    fn keys(run: &Run) -> Vec<Option<String>> {
        run.keys
            .iter()
            .map(|k| {
                k.key
                    .as_ref()
                    .map(|k| String::from_utf8_lossy(k).into_owned())
            })
            .collect()
    }

    #[test]
    fn one_run_per_key_in_offset_order() {
        let mut q = KeyQueues::default();
        for (offset, key) in [(0, "a"), (1, "b"), (2, "a"), (3, "a"), (4, "b")] {
            push(&mut q, 0, Some(key), offset);
        }
        let run_a = q.next_run(2).expect("a");
        assert_eq!(offsets(&run_a.messages), [0, 2]);
        let run_b = q.next_run(2).expect("b");
        assert_eq!(offsets(&run_b.messages), [1, 4]);
        assert!(q.next_run(2).is_none(), "a is running: its 3 waits");
        push(&mut q, 0, Some("a"), 5);
        assert!(q.next_run(2).is_none(), "still running");
        q.finished(&run_a.keys[0]);
        let run = q.next_run(10).expect("a again");
        assert_eq!(offsets(&run.messages), [3, 5]);
        q.finished(&run_b.keys[0]);
        assert!(q.next_run(10).is_none());
        assert_eq!(q.queued(), 0);
    }

    #[test]
    fn a_run_takes_several_keys_of_one_partition_up_to_its_size() {
        let mut q = KeyQueues::default();
        for (partition, key, offset) in [
            (0, "a", 0),
            (1, "x", 0),
            (0, "b", 1),
            (0, "a", 2),
            (0, "c", 3),
            (0, "b", 4),
        ] {
            push(&mut q, partition, Some(key), offset);
        }
        assert_eq!(q.queued(), 6);
        let run = q.next_run(4).expect("a run");
        assert_eq!(keys(&run), [Some("a".into()), Some("b".into())]);
        assert_eq!(
            offsets(&run.messages),
            [0, 2, 1, 4],
            "key by key, each in order"
        );
        let run2 = q
            .next_run(4)
            .expect("partition 1's key, not joined by c of partition 0");
        assert_eq!(keys(&run2), [Some("x".into())]);
        let run3 = q.next_run(4).expect("c");
        assert_eq!(keys(&run3), [Some("c".into())]);
        assert!(q.next_run(4).is_none());
        assert_eq!(q.queued(), 0);
    }

    #[test]
    fn a_key_split_by_the_run_size_keeps_its_rest_for_its_next_run() {
        let mut q = KeyQueues::default();
        for (key, offset) in [("a", 0), ("b", 1), ("b", 2), ("b", 3)] {
            push(&mut q, 0, Some(key), offset);
        }
        let run = q.next_run(3).expect("a and part of b");
        assert_eq!(offsets(&run.messages), [0, 1, 2]);
        assert!(q.next_run(3).is_none(), "b is running: its 3 waits");
        for id in &run.keys {
            q.finished(id);
        }
        assert_eq!(offsets(&q.next_run(3).expect("b's rest").messages), [3]);
    }

    #[test]
    fn keys_handed_back_run_alone_once_in_their_order() {
        let mut q = KeyQueues::default();
        for (key, offset) in [("a", 0), ("b", 1), ("a", 2)] {
            push(&mut q, 0, Some(key), offset);
        }
        let run = q.next_run(10).expect("a and b");
        assert_eq!(offsets(&run.messages), [0, 2, 1]);
        push(&mut q, 0, Some("b"), 3);
        q.give_back(run.messages);
        for id in &run.keys {
            q.finished(id);
        }
        assert_eq!(q.queued(), 4);
        let first = q.next_run(10).expect("a alone");
        assert_eq!(keys(&first), [Some("a".into())]);
        assert_eq!(offsets(&first.messages), [0, 2]);
        let second = q
            .next_run(10)
            .expect("b alone, handed back before its newer message");
        assert_eq!(keys(&second), [Some("b".into())]);
        assert_eq!(offsets(&second.messages), [1, 3]);
        q.finished(&first.keys[0]);
        q.finished(&second.keys[0]);
        push(&mut q, 0, Some("a"), 4);
        push(&mut q, 0, Some("b"), 5);
        let together = q.next_run(10).expect("both again");
        assert_eq!(keys(&together).len(), 2, "alone only once");
    }

    #[test]
    fn messages_without_key_are_serial_per_partition() {
        let mut q = KeyQueues::default();
        for (partition, offset) in [(0, 0), (1, 0), (0, 1)] {
            push(&mut q, partition, None, offset);
        }
        let p0 = q.next_run(1).expect("p0");
        assert_eq!(offsets(&p0.messages), [0]);
        let p1 = q.next_run(1).expect("p1 runs beside p0");
        assert_eq!(offsets(&p1.messages), [0]);
        assert!(q.next_run(1).is_none());
        q.finished(&p0.keys[0]);
        assert_eq!(offsets(&q.next_run(1).expect("p0 again").messages), [1]);
    }

    #[test]
    fn purge_drops_a_partitions_queued_messages() {
        let mut q = KeyQueues::default();
        for (partition, offset) in [(0, 0), (1, 0), (0, 1)] {
            push(&mut q, partition, Some("k"), offset);
        }
        assert_eq!(q.purge("t", 0, None), 2);
        assert_eq!(q.purge("t", 1, Some(1)), 0, "same generation kept");
        assert_eq!(q.queued(), 1);
        let run = q.next_run(10).expect("p1");
        assert_eq!(run.keys[0].partition, 1);
        assert_eq!(offsets(&run.messages), [0]);
        assert!(q.next_run(10).is_none());
        assert!(q.is_empty());
    }
}
