//! Per aggregate, the deliveries received and not yet handed to a run; and which delivery
//! tags may be acknowledged.

use std::collections::{BTreeMap, HashMap, VecDeque};

/// The unit of ordering: `(aggregate type, aggregate id)` of a decoded message; `None` for
/// messages that do not decode (applied one after the other: they are dead-lettered at once).
pub(crate) type Key = Option<(String, String)>;

#[derive(Debug)]
struct KeyQueue<T> {
    items: VecDeque<T>,
    running: bool,
    /// Its next run takes this key alone: a run of several keys handed its messages back.
    solo: bool,
}

impl<T> Default for KeyQueue<T> {
    fn default() -> Self {
        KeyQueue {
            items: VecDeque::new(),
            running: false,
            solo: false,
        }
    }
}

/// What one run applies: queued items of one or more keys, key by key, each key's in delivery
/// order.
#[derive(Debug)]
pub(crate) struct Run<T> {
    pub(crate) keys: Vec<Key>,
    pub(crate) items: Vec<T>,
}

/// FIFO queues per key; a key has at most one run at a time, and its runs take its items in
/// delivery order.
#[derive(Debug)]
pub(crate) struct KeyQueues<T> {
    queues: HashMap<Key, KeyQueue<T>>,
    /// Keys with queued items and no run, oldest first (may hold stale entries, skipped).
    ready: VecDeque<Key>,
    queued: usize,
}

impl<T> Default for KeyQueues<T> {
    fn default() -> Self {
        KeyQueues {
            queues: HashMap::new(),
            ready: VecDeque::new(),
            queued: 0,
        }
    }
}

impl<T> KeyQueues<T> {
    /// Queues `item` behind the earlier items of `key`.
    pub(crate) fn push(&mut self, key: Key, item: T) {
        let queue = self.queues.entry(key.clone()).or_default();
        if queue.items.is_empty() && !queue.running {
            self.ready.push_back(key);
        }
        queue.items.push_back(item);
        self.queued += 1;
    }

    /// Items queued and not in a run.
    pub(crate) fn queued(&self) -> usize {
        self.queued
    }

    fn is_ready(&self, key: &Key) -> bool {
        self.queues
            .get(key)
            .is_some_and(|q| !q.running && !q.items.is_empty())
    }

    fn take(&mut self, key: Key, max: usize, run: &mut Run<T>) {
        let Some(queue) = self.queues.get_mut(&key) else {
            return;
        };
        let n = queue.items.len().min(max);
        run.items.extend(queue.items.drain(..n));
        queue.running = true;
        queue.solo = false;
        self.queued -= n;
        run.keys.push(key);
    }

    /// The next run: the oldest ready key's first items, then, while fewer than `max` are
    /// taken, those of the next ready keys (a key handed back runs alone once). Every key of
    /// the run counts as running until [`KeyQueues::finished`].
    pub(crate) fn next_run(&mut self, max: usize) -> Option<Run<T>> {
        let max = max.max(1);
        let first = loop {
            let key = self.ready.pop_front()?;
            if self.is_ready(&key) {
                break key;
            }
        };
        let solo = self.queues.get(&first).is_some_and(|q| q.solo);
        let mut run = Run {
            keys: Vec::new(),
            items: Vec::new(),
        };
        // Messages that do not decode (key `None`) run on their own: they are dead-lettered
        // one by one, and a run holding one tries no batch.
        let undecodable = first.is_none();
        self.take(first, max, &mut run);
        if solo || undecodable {
            return Some(run);
        }
        let mut i = 0;
        while run.items.len() < max && i < self.ready.len() {
            let key = &self.ready[i];
            let joins = key.is_some()
                && self.is_ready(key)
                && self.queues.get(key).is_some_and(|q| !q.solo);
            if !joins {
                i += 1;
                continue;
            }
            if let Some(key) = self.ready.remove(i) {
                let room = max - run.items.len();
                self.take(key, room, &mut run);
            }
        }
        Some(run)
    }

    /// A run of several keys handed `items` back unapplied: they go back to the front of their
    /// keys' queues, in order, and each of those keys runs alone next. Call before
    /// [`KeyQueues::finished`].
    pub(crate) fn give_back(&mut self, items: Vec<(Key, T)>) {
        for (key, item) in items.into_iter().rev() {
            let queue = self.queues.entry(key).or_default();
            queue.solo = true;
            queue.items.push_front(item);
            self.queued += 1;
        }
    }

    /// The run of `key` ended: its next items, if any, may run.
    pub(crate) fn finished(&mut self, key: &Key) {
        let Some(queue) = self.queues.get_mut(key) else {
            return;
        };
        queue.running = false;
        if queue.items.is_empty() {
            self.queues.remove(key);
        } else {
            self.ready.push_back(key.clone());
        }
    }

    /// Drops every queued item for which `keep` is false (the keys' running state stays);
    /// returns how many.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) -> usize {
        let mut dropped = 0;
        self.queues.retain(|_, queue| {
            let before = queue.items.len();
            queue.items.retain(&mut keep);
            dropped += before - queue.items.len();
            queue.running || !queue.items.is_empty()
        });
        self.queued -= dropped;
        dropped
    }
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
    use super::{Ack, Acks, Key, KeyQueues};

    fn key(k: &str) -> Key {
        Some(("A".to_owned(), k.to_owned()))
    }

    #[test]
    fn one_run_per_key_in_delivery_order_and_keys_batch_together() {
        let mut q = KeyQueues::default();
        for (tag, k) in [(1, "a"), (2, "b"), (3, "a"), (4, "c")] {
            q.push(key(k), tag);
        }
        let run = q.next_run(3).expect("a run");
        assert_eq!(run.items, [1, 3, 2], "a whole, then b");
        assert_eq!(run.keys, [key("a"), key("b")]);
        q.push(key("a"), 5);
        let run2 = q.next_run(3).expect("c");
        assert_eq!(run2.items, [4]);
        assert!(q.next_run(3).is_none(), "a is running: its 5 waits");
        for k in &run.keys {
            q.finished(k);
        }
        assert_eq!(q.next_run(3).expect("a again").items, [5]);
        assert_eq!(q.queued(), 0);
    }

    #[test]
    fn undecodable_messages_never_share_a_run_with_aggregates() {
        let mut q = KeyQueues::default();
        q.push(key("a"), 1);
        q.push(None, 2);
        q.push(key("b"), 3);
        q.push(None, 4);
        let run = q.next_run(10).expect("a and b");
        assert_eq!(
            (run.keys.clone(), run.items),
            (vec![key("a"), key("b")], vec![1, 3])
        );
        let malformed = q.next_run(10).expect("the undecodable ones");
        assert_eq!((malformed.keys, malformed.items), (vec![None], vec![2, 4]));
    }

    #[test]
    fn handed_back_keys_run_alone_once_before_newer_items() {
        let mut q = KeyQueues::default();
        q.push(key("a"), 1);
        q.push(key("b"), 2);
        let run = q.next_run(10).expect("a and b");
        q.push(key("b"), 3);
        q.give_back(run.keys.iter().cloned().zip(run.items).collect());
        for k in &run.keys {
            q.finished(k);
        }
        let a = q.next_run(10).expect("a alone");
        assert_eq!((a.keys.len(), a.items.clone()), (1, vec![1]));
        let b = q.next_run(10).expect("b alone");
        assert_eq!(b.items, [2, 3]);
    }

    #[test]
    fn retain_drops_queued_items_but_keeps_running_keys_blocked() {
        let mut q = KeyQueues::default();
        q.push(key("a"), 1);
        let run = q.next_run(1).expect("a");
        q.push(key("a"), 2);
        q.push(key("b"), 3);
        assert_eq!(q.retain(|_| false), 2);
        assert_eq!(q.queued(), 0);
        q.push(key("a"), 4);
        assert!(q.next_run(10).is_none(), "a still runs");
        q.finished(&run.keys[0]);
        assert_eq!(q.next_run(10).expect("a").items, [4]);
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
