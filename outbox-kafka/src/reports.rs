//! Delivery reports of the batches a [`KafkaPublisher`](crate::KafkaPublisher) has in flight.
//!
//! librdkafka reports each message's delivery on the producer's polling thread. Rather than a
//! channel and a future per message, each batch has a tally: the polling thread records each
//! result in its batch's tally and wakes the publishing task once, when the batch is complete
//! (or, while the task waits for room in a full queue, at the first progress). A message's
//! delivery opaque is a number: its tally's slot in the high half, its index in the low half.

use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};

use rdkafka::error::KafkaError;

const HALF: u32 = usize::BITS / 2;

/// The most messages one tally counts (a message's index takes the low half of its number).
pub(crate) const MAX_TALLY: usize = (1 << HALF) - 1;

/// A message's outcome as its delivery report gave it.
pub(crate) type Report = Result<(), KafkaError>;

/// The tallies of the batches in flight, shared by the publisher and its producers' contexts.
#[derive(Debug, Default)]
pub(crate) struct Reports {
    slots: Mutex<Slots>,
}

#[derive(Debug, Default)]
struct Slots {
    tallies: Vec<Option<Tally>>,
    free: Vec<usize>,
}

impl Slots {
    /// Frees `slot` for the next batch; returns its tally.
    fn release(&mut self, slot: usize) -> Option<Tally> {
        let tally = self.tallies.get_mut(slot).and_then(Option::take);
        self.free.push(slot);
        tally
    }
}

#[derive(Debug)]
struct Tally {
    results: Vec<Option<Report>>,
    /// Messages handed to librdkafka whose report has not come yet.
    waiting: usize,
    /// Wake the task once `waiting` is at most this.
    wake_at: usize,
    waker: Option<Waker>,
    /// The batch's publish call is gone: the slot is freed when the last report comes.
    abandoned: bool,
}

impl Reports {
    fn lock(&self) -> MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens a tally for `len` messages (at most [`MAX_TALLY`]); `None` when every slot a
    /// message's number can name is taken (a publisher with 65,535 batches in flight on a
    /// 32-bit target).
    pub(crate) fn open(self: &Arc<Self>, len: usize) -> Option<Pending> {
        let tally = Tally {
            results: (0..len.min(MAX_TALLY)).map(|_| None).collect(),
            waiting: 0,
            wake_at: 0,
            waker: None,
            abandoned: false,
        };
        let mut slots = self.lock();
        let slot = match slots.free.pop() {
            Some(slot) => {
                slots.tallies[slot] = Some(tally);
                slot
            }
            None if slots.tallies.len() < MAX_TALLY => {
                slots.tallies.push(Some(tally));
                slots.tallies.len() - 1
            }
            None => return None,
        };
        Some(Pending {
            reports: Arc::clone(self),
            slot,
            finished: false,
        })
    }

    /// Records the delivery report of the message numbered `ticket` (called on the producer's
    /// polling thread). A number no open tally knows is ignored.
    pub(crate) fn record(&self, ticket: usize, report: Report) {
        let (slot, index) = (ticket >> HALF, ticket & MAX_TALLY);
        let waker = {
            let mut slots = self.lock();
            let Some(Some(tally)) = slots.tallies.get_mut(slot) else {
                return;
            };
            let Some(result) = tally.results.get_mut(index) else {
                return;
            };
            if result.is_some() || tally.waiting == 0 {
                return;
            }
            *result = Some(report);
            tally.waiting -= 1;
            if tally.waiting == 0 && tally.abandoned {
                slots.release(slot);
                None
            } else if tally.waiting <= tally.wake_at {
                tally.waker.take()
            } else {
                None
            }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// One batch's tally, held by its publish call.
#[derive(Debug)]
pub(crate) struct Pending {
    reports: Arc<Reports>,
    slot: usize,
    finished: bool,
}

impl Pending {
    fn with<T>(&self, f: impl FnOnce(&mut Tally) -> T) -> Option<T> {
        let mut slots = self.reports.lock();
        slots.tallies.get_mut(self.slot)?.as_mut().map(f)
    }

    /// The delivery opaque of the batch's message `index`.
    pub(crate) fn ticket(&self, index: usize) -> usize {
        (self.slot << HALF) | (index & MAX_TALLY)
    }

    /// Counts message `index` as handed over; call it before handing it to librdkafka (its
    /// report can come before `send` returns), and [`Self::unsent`] if that fails.
    pub(crate) fn sending(&self) {
        self.with(|t| t.waiting += 1);
    }

    /// Takes back [`Self::sending`] for a message librdkafka refused.
    pub(crate) fn unsent(&self) {
        self.with(|t| t.waiting = t.waiting.saturating_sub(1));
    }

    /// Messages handed over whose report has not come yet.
    pub(crate) fn waiting(&self) -> usize {
        self.with(|t| t.waiting).unwrap_or(0)
    }

    /// Takes the report of message `index` if it came.
    pub(crate) fn take(&self, index: usize) -> Option<Report> {
        self.with(|t| t.results.get_mut(index).and_then(Option::take))
            .flatten()
    }

    /// Waits until at most `at` messages wait for their reports.
    pub(crate) async fn wait_until(&self, at: usize) {
        poll_fn(|cx| {
            let ready = self.with(|t| {
                if t.waiting <= at {
                    true
                } else {
                    t.wake_at = at;
                    if !t.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                        t.waker = Some(cx.waker().clone());
                    }
                    false
                }
            });
            if ready.unwrap_or(true) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }

    /// Waits for every report, then hands over the results (`None` for a message never handed
    /// over or already taken) and frees the slot.
    pub(crate) async fn finish(mut self) -> Vec<Option<Report>> {
        self.wait_until(0).await;
        self.finished = true;
        let tally = self.reports.lock().release(self.slot);
        tally.map(|t| t.results).unwrap_or_default()
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let mut slots = self.reports.lock();
        let Some(Some(tally)) = slots.tallies.get_mut(self.slot) else {
            return;
        };
        if tally.waiting == 0 {
            slots.release(self.slot);
        } else {
            tally.abandoned = true;
            tally.waker = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::types::RDKafkaErrorCode;

    #[tokio::test]
    async fn a_batch_finishes_once_every_report_came_in_any_order() {
        let reports = Arc::new(Reports::default());
        let pending = reports.open(3).unwrap();
        for _ in 0..3 {
            pending.sending();
        }
        let tickets: Vec<usize> = (0..3).map(|i| pending.ticket(i)).collect();
        let recorder = Arc::clone(&reports);
        let feed = tokio::spawn(async move {
            for &i in &[2usize, 0, 1] {
                tokio::task::yield_now().await;
                let report = if i == 1 {
                    Err(KafkaError::MessageProduction(
                        RDKafkaErrorCode::MessageSizeTooLarge,
                    ))
                } else {
                    Ok(())
                };
                recorder.record(tickets[i], report);
            }
        });
        let results = pending.finish().await;
        feed.await.unwrap();
        assert!(matches!(results[0], Some(Ok(()))));
        assert!(matches!(results[1], Some(Err(_))));
        assert!(matches!(results[2], Some(Ok(()))));
        // The slot is free again and reused.
        let again = reports.open(1).unwrap();
        assert_eq!(again.ticket(0), 0);
    }

    #[tokio::test]
    async fn an_abandoned_batch_frees_its_slot_at_its_last_report_and_ignores_strays() {
        let reports = Arc::new(Reports::default());
        let pending = reports.open(2).unwrap();
        pending.sending();
        pending.sending();
        let (t0, t1) = (pending.ticket(0), pending.ticket(1));
        drop(pending);
        // The slot is still taken: a new batch gets another one.
        let other = reports.open(1).unwrap();
        assert_ne!(other.ticket(0) >> HALF, t0 >> HALF);
        reports.record(t0, Ok(()));
        reports.record(t0, Ok(())); // a second report of one message changes nothing
        reports.record(t1, Ok(()));
        assert_eq!(reports.lock().free, vec![t0 >> HALF]);
        // A report for a slot nobody holds is ignored.
        reports.record(usize::MAX, Ok(()));
        other.sending();
        assert_eq!(other.waiting(), 1);
    }

    #[tokio::test]
    async fn progress_wakes_the_waiter_before_the_batch_is_complete() {
        let reports = Arc::new(Reports::default());
        let pending = reports.open(2).unwrap();
        pending.sending();
        pending.sending();
        let ticket = pending.ticket(0);
        let recorder = Arc::clone(&reports);
        tokio::spawn(async move { recorder.record(ticket, Ok(())) });
        tokio::time::timeout(std::time::Duration::from_secs(5), pending.wait_until(1))
            .await
            .expect("woken at the first report");
        assert!(matches!(pending.take(0), Some(Ok(()))));
        assert!(pending.take(0).is_none());
        assert_eq!(pending.waiting(), 1);
    }
}
