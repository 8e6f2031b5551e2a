//! Per-key run queues for broker consumers: the part of a consumer that keeps each key's
//! messages in order while runs of different keys go in parallel.
//!
//! A consumer pushes every message it receives behind the earlier ones of its key (an
//! aggregate, or a Kafka key within its partition), asks for the next [`Run`] whenever a run
//! slot is free, and reports each run's keys [`finished`](KeyQueues::finished) when it ends.
//! A key has at most one run at a time, so its messages are applied in the order received; a
//! run may take several ready keys, key by key, so that one inbox transaction applies many
//! messages when they wait.
//!
//! ```
//! use outbox_core::keyed::KeyQueues;
//!
//! let mut queues = KeyQueues::new();
//! for (offset, key) in [(0, "a"), (1, "b"), (2, "a")] {
//!     queues.push(key, offset);
//! }
//! let any = |_: &&str, _: &&str| true;
//! let run = queues.next_run(10, any).unwrap();
//! assert_eq!((run.keys.as_slice(), run.items.as_slice()), (&["a", "b"][..], &[0, 2, 1][..]));
//! queues.push("a", 3);
//! assert!(queues.next_run(10, any).is_none(), "a is running: 3 waits for it");
//! for key in &run.keys {
//!     queues.finished(key);
//! }
//! assert_eq!(queues.next_run(10, any).unwrap().items, [3]);
//! ```

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

#[derive(Debug)]
struct KeyQueue<T> {
    items: VecDeque<T>,
    running: bool,
    /// Its next run takes this key alone: a run of several keys handed its items back.
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

/// What one run applies: queued items of one or more keys, key by key, each key's in the order
/// pushed.
#[derive(Debug)]
pub struct Run<K, T> {
    /// The run's keys, in the order their items appear in `items`.
    pub keys: Vec<K>,
    /// The items taken, key by key.
    pub items: Vec<T>,
}

/// FIFO queues per key; a key has at most one run at a time, and its runs take its items in the
/// order pushed.
#[derive(Debug)]
pub struct KeyQueues<K, T> {
    queues: HashMap<K, KeyQueue<T>>,
    /// Keys with queued items and no run, oldest first (may hold stale entries, skipped).
    ready: VecDeque<K>,
    /// Items queued and not in a run.
    queued: usize,
}

impl<K, T> Default for KeyQueues<K, T> {
    fn default() -> Self {
        KeyQueues {
            queues: HashMap::new(),
            ready: VecDeque::new(),
            queued: 0,
        }
    }
}

impl<K: Clone + Eq + Hash, T> KeyQueues<K, T> {
    /// Empty queues.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues `item` behind the earlier items of `key`.
    pub fn push(&mut self, key: K, item: T) {
        let queue = self.queues.entry(key.clone()).or_default();
        if queue.items.is_empty() && !queue.running {
            self.ready.push_back(key);
        }
        queue.items.push_back(item);
        self.queued += 1;
    }

    /// Items queued and not in a run.
    pub fn queued(&self) -> usize {
        self.queued
    }

    fn is_ready(&self, key: &K) -> bool {
        self.queues
            .get(key)
            .is_some_and(|q| !q.running && !q.items.is_empty())
    }

    /// Moves up to `max` of `key`'s first items into `run`; the key counts as running.
    fn take(&mut self, key: K, max: usize, run: &mut Run<K, T>) {
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

    /// The next run, or `None` when no key is ready: the oldest ready key's first items, then,
    /// while fewer than `max` items are taken, those of the next ready keys for which
    /// `joins(first key, key)` holds (each key whole or in part, in order). A key whose items a
    /// run handed back ([`KeyQueues::give_back`]) runs alone once. Every key of the run counts
    /// as running until [`KeyQueues::finished`].
    pub fn next_run(&mut self, max: usize, joins: impl Fn(&K, &K) -> bool) -> Option<Run<K, T>> {
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
        self.take(first.clone(), max, &mut run);
        if solo {
            return Some(run);
        }
        let mut i = 0;
        while run.items.len() < max && i < self.ready.len() {
            let key = &self.ready[i];
            let joining = joins(&first, key)
                && self
                    .queues
                    .get(key)
                    .is_some_and(|q| !q.running && !q.solo && !q.items.is_empty());
            if !joining {
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

    /// A run of several keys handed `items` back unapplied (its batch failed): they go back to
    /// the front of their keys' queues, in the order given, and each of those keys runs alone
    /// next. Call before [`KeyQueues::finished`].
    pub fn give_back(&mut self, items: Vec<(K, T)>) {
        for (key, item) in items.into_iter().rev() {
            let queue = self.queues.entry(key).or_default();
            queue.solo = true;
            queue.items.push_front(item);
            self.queued += 1;
        }
    }

    /// The run of `key` ended: its next items, if any, may run.
    pub fn finished(&mut self, key: &K) {
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

    /// Drops every queued item for which `keep(key, item)` is false (a running key stays
    /// running); returns how many were dropped.
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &T) -> bool) -> usize {
        let mut dropped = 0;
        self.queues.retain(|key, queue| {
            let before = queue.items.len();
            queue.items.retain(|item| keep(key, item));
            dropped += before - queue.items.len();
            queue.running || !queue.items.is_empty()
        });
        self.queued -= dropped;
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::{KeyQueues, Run};

    /// A partition and a key within it; runs join keys of one partition.
    type Key = (i32, Option<&'static str>);

    fn same_partition(a: &Key, b: &Key) -> bool {
        a.0 == b.0
    }

    fn keys(run: &Run<Key, i64>) -> Vec<Option<&'static str>> {
        run.keys.iter().map(|k| k.1).collect()
    }

    #[test]
    fn one_run_per_key_in_order() {
        let mut q = KeyQueues::new();
        for (offset, key) in [(0, "a"), (1, "b"), (2, "a"), (3, "a"), (4, "b")] {
            q.push((0, Some(key)), offset);
        }
        let alone = |_: &Key, _: &Key| false;
        let run_a = q.next_run(2, alone).expect("a");
        assert_eq!(run_a.items, [0, 2]);
        let run_b = q.next_run(2, alone).expect("b");
        assert_eq!(run_b.items, [1, 4]);
        assert!(q.next_run(2, alone).is_none(), "a is running: its 3 waits");
        q.push((0, Some("a")), 5);
        assert!(q.next_run(2, alone).is_none(), "still running");
        q.finished(&run_a.keys[0]);
        assert_eq!(q.next_run(10, alone).expect("a again").items, [3, 5]);
        q.finished(&run_b.keys[0]);
        assert!(q.next_run(10, alone).is_none());
        assert_eq!(q.queued(), 0);
    }

    #[test]
    fn a_run_takes_the_keys_that_join_up_to_its_size() {
        let mut q = KeyQueues::new();
        for (partition, key, offset) in [
            (0, "a", 0),
            (1, "x", 0),
            (0, "b", 1),
            (0, "a", 2),
            (0, "c", 3),
            (0, "b", 4),
        ] {
            q.push((partition, Some(key)), offset);
        }
        assert_eq!(q.queued(), 6);
        let run = q.next_run(4, same_partition).expect("a run");
        assert_eq!(keys(&run), [Some("a"), Some("b")]);
        assert_eq!(run.items, [0, 2, 1, 4], "key by key, each in order");
        let run2 = q
            .next_run(4, same_partition)
            .expect("partition 1's key, not joined by c of partition 0");
        assert_eq!(keys(&run2), [Some("x")]);
        assert_eq!(
            keys(&q.next_run(4, same_partition).expect("c")),
            [Some("c")]
        );
        assert!(q.next_run(4, same_partition).is_none());
        assert_eq!(q.queued(), 0);
    }

    #[test]
    fn the_predicate_sees_the_runs_first_key() {
        let mut q = KeyQueues::new();
        q.push((0, Some("a")), 1);
        q.push((0, None), 2);
        q.push((0, Some("b")), 3);
        q.push((0, None), 4);
        let keyed = |first: &Key, key: &Key| first.1.is_some() && key.1.is_some();
        let run = q.next_run(10, keyed).expect("a and b");
        assert_eq!(
            (keys(&run), run.items),
            (vec![Some("a"), Some("b")], vec![1, 3])
        );
        let alone = q.next_run(10, keyed).expect("the keyless ones");
        assert_eq!((keys(&alone), alone.items), (vec![None], vec![2, 4]));
    }

    #[test]
    fn a_key_split_by_the_run_size_keeps_its_rest_for_its_next_run() {
        let mut q = KeyQueues::new();
        for (key, offset) in [("a", 0), ("b", 1), ("b", 2), ("b", 3)] {
            q.push((0, Some(key)), offset);
        }
        let run = q.next_run(3, same_partition).expect("a and part of b");
        assert_eq!(run.items, [0, 1, 2]);
        assert!(
            q.next_run(3, same_partition).is_none(),
            "b is running: its 3 waits"
        );
        for key in &run.keys {
            q.finished(key);
        }
        assert_eq!(q.next_run(3, same_partition).expect("b's rest").items, [3]);
    }

    #[test]
    fn keys_handed_back_run_alone_once_in_their_order() {
        let mut q = KeyQueues::new();
        for (key, offset) in [("a", 0), ("b", 1), ("a", 2)] {
            q.push((0, Some(key)), offset);
        }
        let run = q.next_run(10, same_partition).expect("a and b");
        assert_eq!(run.items, [0, 2, 1]);
        q.push((0, Some("b")), 3);
        let back = run
            .items
            .iter()
            .map(|&offset| {
                let key = if offset == 1 { "b" } else { "a" };
                ((0, Some(key)), offset)
            })
            .collect();
        q.give_back(back);
        for key in &run.keys {
            q.finished(key);
        }
        assert_eq!(q.queued(), 4);
        let first = q.next_run(10, same_partition).expect("a alone");
        assert_eq!(
            (keys(&first), first.items.clone()),
            (vec![Some("a")], vec![0, 2])
        );
        let second = q
            .next_run(10, same_partition)
            .expect("b alone, handed back before its newer item");
        assert_eq!(
            (keys(&second), second.items.clone()),
            (vec![Some("b")], vec![1, 3])
        );
        q.finished(&first.keys[0]);
        q.finished(&second.keys[0]);
        q.push((0, Some("a")), 4);
        q.push((0, Some("b")), 5);
        let together = q.next_run(10, same_partition).expect("both again");
        assert_eq!(together.keys.len(), 2, "alone only once");
    }

    #[test]
    fn retain_drops_queued_items_but_keeps_running_keys_blocked() {
        let mut q = KeyQueues::new();
        q.push((0, Some("a")), 1);
        let run = q.next_run(1, same_partition).expect("a");
        q.push((0, Some("a")), 2);
        q.push((0, Some("b")), 3);
        q.push((1, Some("b")), 4);
        assert_eq!(
            q.retain(|key, _| key.0 != 0),
            2,
            "partition 0's queued items"
        );
        assert_eq!(q.queued(), 1);
        q.push((0, Some("a")), 5);
        let other = q.next_run(10, same_partition).expect("partition 1");
        assert_eq!(other.items, [4]);
        assert!(q.next_run(10, same_partition).is_none(), "a still runs");
        q.finished(&run.keys[0]);
        assert_eq!(q.next_run(10, same_partition).expect("a").items, [5]);
        assert_eq!(q.queued(), 0);
    }
}
