//! Per aggregate, the deliveries received and not yet handed to a run; and which delivery
//! tags may be acknowledged.

use std::collections::BTreeMap;

/// The unit of ordering: `(aggregate type, aggregate id)` of a decoded message; `None` for
/// messages that do not decode (applied one after the other: they are dead-lettered at once).
pub(crate) type Key = Option<(String, String)>;

/// FIFO queues per aggregate; runs join keys with [`joins`].
pub(crate) type KeyQueues<T> = outbox_core::keyed::KeyQueues<Key, T>;

/// Whether `key`'s messages may join a run that began with `first`: messages that do not
/// decode (key `None`) run on their own, since they are dead-lettered one by one and a run
/// holding one tries no batch.
pub(crate) fn joins(first: &Key, key: &Key) -> bool {
    first.is_some() && key.is_some()
}

/// The delivery tags of one channel received and not yet acknowledged, and which of them are
/// done (applied or dead-lettered, committed).
#[derive(Debug, Default)]
pub(crate) struct Acks {
    pending: BTreeMap<u64, bool>,
}

/// One `basic.ack` to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ack {
    pub(crate) tag: u64,
    pub(crate) multiple: bool,
}

impl Acks {
    /// A delivery with `tag` was received.
    pub(crate) fn received(&mut self, tag: u64) {
        self.pending.insert(tag, false);
    }

    /// Deliveries not acknowledged yet.
    #[cfg(test)]
    pub(crate) fn unacknowledged(&self) -> usize {
        self.pending.len()
    }

    /// Marks `tags` done and returns the acknowledgements that are now due: one `multiple` ack
    /// for the longest run of done tags from the oldest unacknowledged one (it covers only done
    /// deliveries), and a single ack for each other done tag. A tag never received is ignored.
    pub(crate) fn done(&mut self, tags: &[u64]) -> Vec<Ack> {
        for tag in tags {
            if let Some(done) = self.pending.get_mut(tag) {
                *done = true;
            }
        }
        let mut acks = Vec::new();
        let mut prefix: Option<(u64, usize)> = None;
        for (&tag, &done) in &self.pending {
            if !done {
                break;
            }
            prefix = Some((tag, prefix.map_or(1, |(_, n)| n + 1)));
        }
        if let Some((last, count)) = prefix {
            acks.push(Ack {
                tag: last,
                multiple: count > 1,
            });
            self.pending.retain(|&tag, _| tag > last);
        }
        for tag in tags {
            if self.pending.get(tag) == Some(&true) {
                self.pending.remove(tag);
                acks.push(Ack {
                    tag: *tag,
                    multiple: false,
                });
            }
        }
        acks
    }
}

#[cfg(test)]
mod tests {
    use super::{Ack, Acks, Key, KeyQueues, joins};

    fn key(k: &str) -> Key {
        Some(("A".to_owned(), k.to_owned()))
    }

    #[test]
    fn undecodable_messages_never_share_a_run_with_aggregates() {
        let mut q = KeyQueues::default();
        q.push(key("a"), 1);
        q.push(None, 2);
        q.push(key("b"), 3);
        q.push(None, 4);
        let run = q.next_run(10, joins).expect("a and b");
        assert_eq!(
            (run.keys.clone(), run.items),
            (vec![key("a"), key("b")], vec![1, 3])
        );
        let malformed = q.next_run(10, joins).expect("the undecodable ones");
        assert_eq!((malformed.keys, malformed.items), (vec![None], vec![2, 4]));
    }

    #[test]
    fn multiple_acks_cover_only_done_tags() {
        let mut acks = Acks::default();
        for tag in 1..=6 {
            acks.received(tag);
        }
        assert_eq!(
            acks.done(&[3]),
            [Ack {
                tag: 3,
                multiple: false
            }],
            "1 and 2 are not done: a single ack"
        );
        assert_eq!(
            acks.done(&[2, 1]),
            [Ack {
                tag: 2,
                multiple: true
            }],
            "1 and 2 with one multiple ack; 3 was acknowledged before"
        );
        assert_eq!(
            acks.done(&[6]),
            [Ack {
                tag: 6,
                multiple: false
            }]
        );
        assert_eq!(acks.unacknowledged(), 2);
        assert_eq!(
            acks.done(&[4, 5]),
            [Ack {
                tag: 5,
                multiple: true
            }]
        );
        assert_eq!(acks.unacknowledged(), 0);
        assert!(acks.done(&[9]).is_empty(), "unknown tag ignored");
    }
}
