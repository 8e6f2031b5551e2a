//! Per key, the messages received and not yet handed to a run, and which keys are running:
//! [`outbox_core::keyed::KeyQueues`] keyed by [`KeyId`].

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

    /// Whether `other`'s messages may join a run that began with this key: one run commits
    /// offsets of one partition only.
    pub(crate) fn same_partition(&self, other: &KeyId) -> bool {
        self.partition == other.partition && self.topic == other.topic
    }
}

/// A message received in the partition's assignment `generation`.
#[derive(Debug)]
pub(crate) struct Queued {
    pub(crate) message: OwnedMessage,
    pub(crate) generation: u64,
}

/// FIFO queues per key; runs join keys of one partition ([`KeyId::same_partition`]).
pub(crate) type KeyQueues = outbox_core::keyed::KeyQueues<KeyId, Queued>;

/// Drops the queued messages of `topic`/`partition` not received in assignment `keep` (all of
/// them when `None`); returns how many.
pub(crate) fn purge(
    queues: &mut KeyQueues,
    topic: &str,
    partition: i32,
    keep: Option<u64>,
) -> usize {
    queues.retain(|id, queued| {
        id.topic != topic || id.partition != partition || Some(queued.generation) == keep
    })
}

#[cfg(test)]
mod tests {
    use rdkafka::Timestamp;
    use rdkafka::message::OwnedMessage;

    use super::{KeyId, KeyQueues, Queued, purge};

    fn push(q: &mut KeyQueues, partition: i32, key: Option<&str>, offset: i64, generation: u64) {
        let message = OwnedMessage::new(
            None,
            key.map(|k| k.as_bytes().to_vec()),
            "t".to_owned(),
            Timestamp::NotAvailable,
            partition,
            offset,
            None,
        );
        q.push(
            KeyId::of(&message),
            Queued {
                message,
                generation,
            },
        );
    }

    fn offsets(run: &[Queued]) -> Vec<i64> {
        run.iter()
            .map(|q| rdkafka::Message::offset(&q.message))
            .collect()
    }

    #[test]
    fn runs_join_keys_of_one_partition_and_keyless_messages_are_serial() {
        let mut q = KeyQueues::new();
        for (partition, key, offset) in [
            (0, Some("a"), 0),
            (1, Some("a"), 0),
            (0, None, 1),
            (0, None, 2),
            (0, Some("b"), 3),
        ] {
            push(&mut q, partition, key, offset, 1);
        }
        let run = q.next_run(10, KeyId::same_partition).expect("partition 0");
        assert!(run.keys.iter().all(|k| k.partition == 0));
        assert_eq!(offsets(&run.items), [0, 1, 2, 3], "a, the keyless ones, b");
        let other = q.next_run(10, KeyId::same_partition).expect("partition 1");
        assert_eq!(
            (other.keys[0].partition, offsets(&other.items)),
            (1, vec![0]),
            "the same key bytes in another partition are another key"
        );
    }

    #[test]
    fn purge_drops_a_partitions_queued_messages_of_other_generations() {
        let mut q = KeyQueues::new();
        for (partition, offset, generation) in [(0, 0, 1), (1, 0, 1), (0, 1, 1), (1, 1, 2)] {
            push(&mut q, partition, Some("k"), offset, generation);
        }
        assert_eq!(purge(&mut q, "t", 0, None), 2, "partition 0 revoked");
        assert_eq!(
            purge(&mut q, "t", 1, Some(2)),
            1,
            "generation 1 of partition 1"
        );
        assert_eq!(q.queued(), 1);
        let run = q.next_run(10, KeyId::same_partition).expect("p1");
        assert_eq!((run.keys[0].partition, offsets(&run.items)), (1, vec![1]));
        assert!(q.next_run(10, KeyId::same_partition).is_none());
        assert_eq!(q.queued(), 0);
    }
}
