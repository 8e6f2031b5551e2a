//! The partitions this member owns, each with its assignment generation and offset tracker,
//! kept up to date by the rebalance callbacks.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::offsets::OffsetTracker;

/// A (topic, partition).
pub(crate) type Tp = (String, i32);

/// One owned partition.
#[derive(Debug)]
pub(crate) struct Owned {
    /// Tells this assignment from an earlier or later one of the same partition: a result of
    /// another generation is never committed.
    pub(crate) generation: u64,
    pub(crate) tracker: OffsetTracker,
    /// Fired when the partition is revoked (or at shutdown): its runs stop at their next wait.
    pub(crate) cancel: CancellationToken,
}

/// The partitions owned, and those revoked since the dispatcher last looked.
#[derive(Debug, Default)]
pub(crate) struct Assignment {
    pub(crate) owned: HashMap<Tp, Owned>,
    next_generation: u64,
    pub(crate) revoked: Vec<Tp>,
    /// Set when partitions were assigned: they start unpaused.
    pub(crate) assigned: bool,
}

impl Assignment {
    /// Takes ownership of `tps` not owned yet, each in a new generation whose runs `parent`
    /// cancels too.
    pub(crate) fn assign(&mut self, tps: Vec<Tp>, parent: &CancellationToken) {
        for tp in tps {
            if self.owned.contains_key(&tp) {
                continue;
            }
            self.next_generation += 1;
            let owned = Owned {
                generation: self.next_generation,
                tracker: OffsetTracker::default(),
                cancel: parent.child_token(),
            };
            self.owned.insert(tp, owned);
        }
        self.assigned = true;
    }

    /// Gives `tps` up: their runs are told to stop, and what they report later is ignored.
    pub(crate) fn revoke(&mut self, tps: Vec<Tp>) {
        for tp in tps {
            if let Some(owned) = self.owned.remove(&tp) {
                owned.cancel.cancel();
            }
            self.revoked.push(tp);
        }
    }

    /// Records that a run of generation `generation` finished the messages at `offsets` of `tp`;
    /// false (nothing recorded) when `tp` is no longer owned in that generation.
    pub(crate) fn complete(&mut self, tp: &Tp, generation: u64, offsets: &[i64]) -> bool {
        match self.owned.get_mut(tp) {
            Some(owned) if owned.generation == generation => {
                for offset in offsets {
                    owned.tracker.done(*offset);
                }
                true
            }
            _ => false,
        }
    }

    /// The commit points that moved, as a list ready to commit.
    pub(crate) fn take_commits(&mut self, only: Option<&[Tp]>, group: &str) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for (tp, owned) in &mut self.owned {
            if only.is_some_and(|only| !only.contains(tp)) {
                continue;
            }
            if let Some(next) = owned.tracker.take_commit()
                && let Err(error) = tpl.add_partition_offset(&tp.0, tp.1, Offset::Offset(next))
            {
                tracing::warn!(group, error = %error, "offset commit skipped");
            }
        }
        tpl
    }

    /// Messages received and not done on the owned partitions.
    pub(crate) fn in_flight(&self) -> usize {
        self.owned.values().map(|o| o.tracker.in_flight()).sum()
    }
}

pub(crate) struct GroupContext {
    pub(crate) group: String,
    pub(crate) assignment: Mutex<Assignment>,
    /// Parent of every partition's token: fired at shutdown.
    pub(crate) shutdown: CancellationToken,
}

impl GroupContext {
    pub(crate) fn new(group: String) -> GroupContext {
        GroupContext {
            group,
            assignment: Mutex::new(Assignment::default()),
            shutdown: CancellationToken::new(),
        }
    }

    pub(crate) fn assignment(&self) -> MutexGuard<'_, Assignment> {
        self.assignment
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Commits the commit points that moved (of all owned partitions, or of `only`). `mode`
    /// `Sync` blocks the calling thread until the broker answers: call it that way only off
    /// the async runtime's workers.
    pub(crate) fn commit(
        &self,
        consumer: &impl Consumer<Self>,
        only: Option<&[Tp]>,
        mode: CommitMode,
    ) {
        let tpl = self.assignment().take_commits(only, &self.group);
        if tpl.count() == 0 {
            return;
        }
        if let Err(error) = consumer.commit(&tpl, mode) {
            tracing::warn!(group = %self.group, error = %error, "offset commit failed");
        }
    }
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        tracing::info!(group = %self.group, ?rebalance, "rebalance");
        // Hand revoked partitions over with everything done on them committed, so the next
        // owner starts right after it. Their runs still in flight are abandoned: told to stop
        // at their next wait, and what they finish is never committed here (their generation
        // is gone); the next owner applies those messages again, and the inbox skips what was
        // applied. This callback runs inside `recv`, on a runtime worker: the commit is
        // asynchronous, and librdkafka finishes the rebalance only once its outstanding
        // commits are answered.
        if let Rebalance::Revoke(revoked) = rebalance {
            let tps: Vec<Tp> = revoked
                .elements()
                .iter()
                .map(|e| (e.topic().to_owned(), e.partition()))
                .collect();
            self.commit(consumer, Some(&tps), CommitMode::Async);
            self.assignment().revoke(tps);
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(assigned) = rebalance {
            let tps: Vec<Tp> = assigned
                .elements()
                .iter()
                .map(|e| (e.topic().to_owned(), e.partition()))
                .collect();
            self.assignment().assign(tps, &self.shutdown);
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio_util::sync::CancellationToken;

    use super::{Assignment, Tp};

    fn tp(partition: i32) -> Tp {
        ("t".to_owned(), partition)
    }

    fn received(a: &mut Assignment, tp: &Tp, offsets: &[i64]) -> u64 {
        let owned = a.owned.get_mut(tp).expect("owned");
        for o in offsets {
            owned.tracker.received(*o);
        }
        owned.generation
    }

    #[test]
    fn a_result_of_a_revoked_assignment_is_never_committed() {
        let shutdown = CancellationToken::new();
        let mut a = Assignment::default();
        a.assign(vec![tp(0), tp(1)], &shutdown);
        let old = received(&mut a, &tp(0), &[5, 6, 7]);
        let old_cancel = a.owned[&tp(0)].cancel.clone();
        assert!(a.complete(&tp(0), old, &[5]));
        a.revoke(vec![tp(0)]);
        assert!(old_cancel.is_cancelled(), "its runs are told to stop");
        assert!(!a.owned[&tp(1)].cancel.is_cancelled(), "the others go on");
        assert_eq!(a.revoked, [tp(0)]);
        // Assigned again: a new generation, read again from the committed offset 6.
        a.assign(vec![tp(0)], &shutdown);
        let new = received(&mut a, &tp(0), &[6, 7]);
        assert_ne!(old, new);
        assert!(
            !a.complete(&tp(0), old, &[6, 7]),
            "late result of the old assignment"
        );
        assert_eq!(a.owned[&tp(0)].tracker.commit_point(), Some(6));
        assert_eq!(
            a.take_commits(None, "g").count(),
            0,
            "nothing done in this one"
        );
        assert!(a.complete(&tp(0), new, &[7]));
        assert_eq!(a.take_commits(None, "g").count(), 0, "6 is not done");
        assert!(a.complete(&tp(0), new, &[6]));
        let commits = a.take_commits(None, "g");
        let element = commits.find_partition("t", 0).expect("committed");
        assert_eq!(element.offset(), rdkafka::Offset::Offset(8));
        assert_eq!(a.in_flight(), 0);
    }

    #[test]
    fn shutdown_cancels_every_partitions_runs() {
        let shutdown = CancellationToken::new();
        let mut a = Assignment::default();
        a.assign(vec![tp(0), tp(1)], &shutdown);
        shutdown.cancel();
        assert!(a.owned.values().all(|o| o.cancel.is_cancelled()));
    }
}
