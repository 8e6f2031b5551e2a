//! Per partition: which received messages are not done yet, and how far the offset may be
//! committed.

use std::collections::BTreeSet;

/// The offsets of one partition received and not yet done (applied, skipped as duplicate,
/// ignored or dead-lettered), and the commit point they allow.
///
/// The commit point is the offset of the oldest message not done, or, when every received
/// message is done, the one after the newest received: never past an unfinished message,
/// whatever order the messages complete in. Offsets that never arrive (compacted away,
/// transaction markers) do not hold it back.
#[derive(Debug, Default)]
pub(crate) struct OffsetTracker {
    pending: BTreeSet<i64>,
    /// One past the newest offset received.
    received_next: Option<i64>,
    /// The last commit point handed out by [`OffsetTracker::take_commit`], at first the
    /// offset of the first message received (where the partition was read from: nothing to
    /// commit until a message is done).
    committed: Option<i64>,
}

impl OffsetTracker {
    /// Records a message received at `offset`, not done yet.
    pub(crate) fn received(&mut self, offset: i64) {
        self.committed.get_or_insert(offset);
        self.pending.insert(offset);
        self.received_next = Some(self.received_next.map_or(offset + 1, |n| n.max(offset + 1)));
    }

    /// Records the message at `offset` as done; false when it was not pending.
    pub(crate) fn done(&mut self, offset: i64) -> bool {
        self.pending.remove(&offset)
    }

    /// Messages received and not done.
    pub(crate) fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// The offset to commit now: the oldest one not done, else one past the newest received;
    /// `None` before anything was received.
    pub(crate) fn commit_point(&self) -> Option<i64> {
        self.pending.first().copied().or(self.received_next)
    }

    /// The commit point when it moved past the last one taken (which it then becomes).
    pub(crate) fn take_commit(&mut self) -> Option<i64> {
        let point = self.commit_point()?;
        if self.committed.is_some_and(|c| c >= point) {
            return None;
        }
        self.committed = Some(point);
        Some(point)
    }
}

#[cfg(test)]
mod tests {
    use super::OffsetTracker;

    #[test]
    fn nothing_to_commit_before_a_message() {
        let mut t = OffsetTracker::default();
        assert_eq!(t.commit_point(), None);
        assert_eq!(t.take_commit(), None);
    }

    #[test]
    fn out_of_order_completions_commit_only_the_done_prefix() {
        let mut t = OffsetTracker::default();
        for offset in 10..15 {
            t.received(offset);
        }
        assert_eq!(t.commit_point(), Some(10));
        assert!(t.done(12));
        assert!(t.done(14));
        assert_eq!(t.commit_point(), Some(10), "10 is not done");
        assert!(t.done(10));
        assert_eq!(t.commit_point(), Some(11), "11 is not done");
        assert!(t.done(11));
        assert_eq!(t.commit_point(), Some(13), "12 done, 13 not");
        assert!(t.done(13));
        assert_eq!(t.commit_point(), Some(15), "all done: after the newest");
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn gaps_in_offsets_do_not_hold_the_commit_back() {
        let mut t = OffsetTracker::default();
        t.received(3);
        t.received(7);
        t.done(3);
        assert_eq!(t.commit_point(), Some(7));
        t.done(7);
        assert_eq!(t.commit_point(), Some(8));
    }

    #[test]
    fn take_commit_hands_out_each_advance_once() {
        let mut t = OffsetTracker::default();
        t.received(0);
        t.received(1);
        assert_eq!(
            t.take_commit(),
            None,
            "nothing done: where it was read from"
        );
        t.done(1);
        assert_eq!(t.take_commit(), None, "0 still holds it");
        t.done(0);
        assert_eq!(t.take_commit(), Some(2));
        assert_eq!(t.take_commit(), None);
        assert!(!t.done(0), "done twice");
    }

    /// Every order of completion of 6 messages: the commit point never passes an offset not
    /// done, and reaches the end once all are.
    #[test]
    fn commit_point_never_passes_an_unfinished_offset() {
        fn permutations(items: &[i64]) -> Vec<Vec<i64>> {
            if items.len() <= 1 {
                return vec![items.to_vec()];
            }
            let mut all = Vec::new();
            for i in 0..items.len() {
                let mut rest = items.to_vec();
                let first = rest.remove(i);
                for mut p in permutations(&rest) {
                    p.insert(0, first);
                    all.push(p);
                }
            }
            all
        }
        let offsets: Vec<i64> = (100..106).collect();
        for order in permutations(&offsets) {
            let mut t = OffsetTracker::default();
            let mut done = Vec::new();
            for &o in &offsets {
                t.received(o);
            }
            for &o in &order {
                assert!(t.done(o));
                done.push(o);
                let point = t.commit_point().expect("received");
                for &u in offsets.iter().filter(|u| !done.contains(u)) {
                    assert!(
                        point <= u,
                        "{order:?}: commit point {point} past unfinished {u}"
                    );
                }
                let prefix = offsets.iter().take_while(|u| done.contains(u)).count() as i64;
                assert_eq!(point, 100 + prefix, "{order:?}");
            }
            assert_eq!(t.commit_point(), Some(106));
        }
    }

    #[test]
    fn messages_received_after_completions_hold_the_point_again() {
        let mut t = OffsetTracker::default();
        t.received(0);
        t.done(0);
        assert_eq!(t.take_commit(), Some(1));
        t.received(1);
        t.received(2);
        t.done(2);
        assert_eq!(t.commit_point(), Some(1));
        assert_eq!(t.take_commit(), None);
        t.done(1);
        assert_eq!(t.take_commit(), Some(3));
    }
}
