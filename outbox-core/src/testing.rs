//! Test helpers: an in-memory [`Publisher`] and assertions over what it published.
//!
//! [`InMemoryPublisher`] stands in for the broker in tests. It records every envelope it
//! accepted, and can be scripted to fail: the next calls, chosen envelopes a number of times, or
//! chosen envelopes for good ([`PublishError::Rejected`]), optionally after an artificial delay.
//! It keeps the [`Publisher`] contract on order: once an envelope fails, the later envelopes of
//! the same aggregate in that call are not accepted (nor recorded, nor matched against the
//! script) and come back as [`PublishError::NotAttempted`].
//! [`PublishedEvents`] (as Spring Modulith's `PublishedEvents`) answers "what was published?"
//! with typed queries.
//!
//! ```
//! use outbox_core::testing::InMemoryPublisher;
//! use outbox_core::{DomainEvent, Envelope, Publisher};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
//! #[event(name = "OrderCreated")]
//! struct OrderCreated { order_id: u64 }
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let publisher = InMemoryPublisher::new();
//! // Every envelope of order 2 fails once, then goes through.
//! publisher.fail_matching(|e: &Envelope| e.aggregate_id() == "2", 1);
//!
//! let batch: Vec<Envelope> = (1..=2)
//!     .map(|id| {
//!         Envelope::builder("OrderCreated", "Order", id.to_string())
//!             .sequence(1)
//!             .payload(format!(r#"{{"order_id":{id}}}"#))
//!             .build()
//!     })
//!     .collect();
//! let outcome = publisher.publish(&batch).await;
//! assert!(outcome[0].is_ok());
//! assert!(outcome[1].as_ref().is_err_and(|e| e.is_retryable()));
//! assert!(publisher.publish(&batch[1..]).await[0].is_ok());
//!
//! let published = publisher.published();
//! assert_eq!(published.count(), 2);
//! assert!(published.contains::<OrderCreated>(|e| e.order_id == 2));
//! assert_eq!(published.for_aggregate("Order", "1").of_type::<OrderCreated>()[0].order_id, 1);
//! # });
//! ```

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use uuid::Uuid;

use crate::envelope::Envelope;
use crate::event::DomainEvent;
use crate::publish::{PublishError, Publisher};

/// The error an [`InMemoryPublisher`] reports for a scripted failure.
#[derive(Debug, thiserror::Error)]
#[error("scripted failure of the in-memory publisher: {reason}")]
pub struct ScriptedFailure {
    reason: &'static str,
}

type Predicate = Box<dyn Fn(&Envelope) -> bool + Send + Sync>;

struct Rule {
    matches: Predicate,
    /// `None`: rejected for good; `Some(k)`: each matching envelope fails `k` times.
    times: Option<u32>,
    failures: HashMap<Uuid, u32>,
}

#[derive(Default)]
struct Script {
    fail_calls: usize,
    rules: Vec<Rule>,
    delay: Option<Duration>,
}

#[derive(Default)]
struct Inner {
    published: Mutex<Vec<Envelope>>,
    script: Mutex<Script>,
    calls: AtomicUsize,
    attempts: AtomicUsize,
}

/// A [`Publisher`] that keeps what it is given in memory, for tests.
///
/// Clones share their state, so a test can keep one and hand another to the relay. See the
/// [module documentation](self) for an example.
#[derive(Clone, Default)]
pub struct InMemoryPublisher {
    inner: Arc<Inner>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic in another test thread must not hide this publisher's records.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl InMemoryPublisher {
    /// A publisher that accepts everything at once.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the next `calls` calls of [`Publisher::publish`] fail every envelope of their batch
    /// with a transient error.
    pub fn fail_next_calls(&self, calls: usize) -> &Self {
        lock(&self.inner.script).fail_calls = calls;
        self
    }

    /// Makes every envelope for which `matches` holds fail `times` times (transiently) before it
    /// is accepted; counted per event id.
    pub fn fail_matching(
        &self,
        matches: impl Fn(&Envelope) -> bool + Send + Sync + 'static,
        times: u32,
    ) -> &Self {
        lock(&self.inner.script).rules.push(Rule {
            matches: Box::new(matches),
            times: Some(times),
            failures: HashMap::new(),
        });
        self
    }

    /// Makes every envelope for which `matches` holds be refused for good
    /// ([`PublishError::Rejected`]).
    pub fn reject_matching(
        &self,
        matches: impl Fn(&Envelope) -> bool + Send + Sync + 'static,
    ) -> &Self {
        lock(&self.inner.script).rules.push(Rule {
            matches: Box::new(matches),
            times: None,
            failures: HashMap::new(),
        });
        self
    }

    /// Waits `delay` in every call before answering (a slow broker); `None` answers at once.
    pub fn set_delay(&self, delay: Option<Duration>) -> &Self {
        lock(&self.inner.script).delay = delay;
        self
    }

    /// Removes every scripted failure and the delay; what was published stays.
    pub fn heal(&self) -> &Self {
        *lock(&self.inner.script) = Script::default();
        self
    }

    /// Forgets what was published.
    pub fn clear(&self) {
        lock(&self.inner.published).clear();
    }

    /// What was accepted so far, in the order it was accepted.
    pub fn published(&self) -> PublishedEvents {
        PublishedEvents {
            envelopes: lock(&self.inner.published).clone(),
        }
    }

    /// How many times [`Publisher::publish`] was called.
    pub fn calls(&self) -> usize {
        self.inner.calls.load(Ordering::Relaxed)
    }

    /// How many envelopes were handed over in all, accepted or not.
    pub fn attempts(&self) -> usize {
        self.inner.attempts.load(Ordering::Relaxed)
    }

    fn outcome(
        script: &mut Script,
        fail_call: bool,
        envelope: &Envelope,
    ) -> Result<(), PublishError> {
        if fail_call {
            return Err(PublishError::transient(ScriptedFailure {
                reason: "failing the next calls",
            }));
        }
        for rule in &mut script.rules {
            if !(rule.matches)(envelope) {
                continue;
            }
            match rule.times {
                None => {
                    return Err(PublishError::rejected(ScriptedFailure {
                        reason: "rejecting matching envelopes",
                    }));
                }
                Some(times) => {
                    let failed = rule.failures.entry(envelope.id()).or_insert(0);
                    if *failed < times {
                        *failed += 1;
                        return Err(PublishError::transient(ScriptedFailure {
                            reason: "failing matching envelopes",
                        }));
                    }
                }
            }
        }
        Ok(())
    }
}

impl fmt::Debug for InMemoryPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InMemoryPublisher")
            .field("published", &lock(&self.inner.published).len())
            .field("calls", &self.calls())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Publisher for InMemoryPublisher {
    async fn publish(&self, batch: &[Envelope]) -> Vec<Result<(), PublishError>> {
        self.inner.calls.fetch_add(1, Ordering::Relaxed);
        self.inner
            .attempts
            .fetch_add(batch.len(), Ordering::Relaxed);
        let delay = lock(&self.inner.script).delay;
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        let outcomes: Vec<Result<(), PublishError>> = {
            let mut script = lock(&self.inner.script);
            let fail_call = script.fail_calls > 0;
            if fail_call {
                script.fail_calls -= 1;
            }
            // The `Publisher` contract: once an envelope of an aggregate fails, the later ones
            // of that aggregate in the batch are not attempted, so what was accepted never
            // skips over a failed event.
            let mut failed: HashSet<(&str, &str)> = HashSet::new();
            batch
                .iter()
                .map(|envelope| {
                    let key = (envelope.aggregate_type(), envelope.aggregate_id());
                    if failed.contains(&key) {
                        return Err(PublishError::NotAttempted);
                    }
                    let outcome = Self::outcome(&mut script, fail_call, envelope);
                    if outcome.is_err() {
                        failed.insert(key);
                    }
                    outcome
                })
                .collect()
        };
        let mut published = lock(&self.inner.published);
        for (envelope, outcome) in batch.iter().zip(&outcomes) {
            if outcome.is_ok() {
                published.push(envelope.clone());
            }
        }
        outcomes
    }
}

/// A snapshot of published envelopes, with typed queries for assertions.
#[derive(Clone, Debug, Default)]
pub struct PublishedEvents {
    envelopes: Vec<Envelope>,
}

impl PublishedEvents {
    /// Wraps envelopes published elsewhere (collected from a consumer, say).
    pub fn from_envelopes(envelopes: Vec<Envelope>) -> Self {
        PublishedEvents { envelopes }
    }

    /// Every envelope, in publishing order.
    pub fn envelopes(&self) -> &[Envelope] {
        &self.envelopes
    }

    /// How many envelopes.
    pub fn count(&self) -> usize {
        self.envelopes.len()
    }

    /// Whether nothing was published.
    pub fn is_empty(&self) -> bool {
        self.envelopes.is_empty()
    }

    /// The events of type `E`, decoded, in publishing order; an older version is upcast to `E`
    /// (`#[event(upcast_from = ...)]`), and envelopes that `E` cannot read are left out.
    pub fn of_type<E: DomainEvent>(&self) -> Vec<E> {
        self.envelopes
            .iter()
            .filter(|e| e.is::<E>())
            .filter_map(|e| e.decode::<E>().ok())
            .collect()
    }

    /// The envelopes of aggregate `aggregate_type`/`aggregate_id`.
    pub fn for_aggregate(&self, aggregate_type: &str, aggregate_id: &str) -> PublishedEvents {
        PublishedEvents {
            envelopes: self
                .envelopes
                .iter()
                .filter(|e| {
                    e.aggregate_type() == aggregate_type && e.aggregate_id() == aggregate_id
                })
                .cloned()
                .collect(),
        }
    }

    /// Whether an event of type `E` for which `predicate` holds was published.
    pub fn contains<E: DomainEvent>(&self, predicate: impl Fn(&E) -> bool) -> bool {
        self.of_type::<E>().iter().any(predicate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(aggregate: &str, sequence: i64) -> Envelope {
        Envelope::builder("Ping", "Order", aggregate)
            .sequence(sequence)
            .build()
    }

    #[tokio::test]
    async fn scripted_failures_and_records() {
        let publisher = InMemoryPublisher::new();
        let batch = [envelope("a", 1), envelope("a", 2), envelope("b", 1)];

        publisher.fail_next_calls(1);
        let outcome = publisher.publish(&batch).await;
        assert!(
            outcome
                .iter()
                .all(|o| o.as_ref().is_err_and(PublishError::is_retryable))
        );
        assert!(publisher.published().is_empty());

        // A rejected envelope fails for good; the rest of its aggregate is not attempted.
        let first = batch[0].id();
        publisher.reject_matching(move |e| e.id() == first);
        let outcome = publisher.publish(&batch).await;
        assert!(matches!(outcome[0], Err(PublishError::Rejected { .. })));
        assert!(matches!(outcome[1], Err(PublishError::NotAttempted)));
        assert!(outcome[1].as_ref().is_err_and(PublishError::is_retryable));
        assert!(outcome[2].is_ok());
        assert_eq!(publisher.published().count(), 1);

        publisher.heal();
        publisher.clear();
        assert!(publisher.publish(&batch).await.iter().all(Result::is_ok));
        let published = publisher.published();
        assert_eq!(published.count(), 3);
        assert_eq!(published.for_aggregate("Order", "a").count(), 2);
        assert_eq!(publisher.calls(), 3);
        assert_eq!(publisher.attempts(), 9);
    }

    #[tokio::test]
    async fn later_events_of_a_failed_aggregate_are_not_attempted() {
        let publisher = InMemoryPublisher::new();
        // a/2 fails once; a/1 goes through; a/3 and a/4 must not be handed over after a/2.
        let batch = [
            envelope("a", 1),
            envelope("b", 1),
            envelope("a", 2),
            envelope("b", 2),
            envelope("a", 3),
            envelope("a", 4),
            envelope("c", 1),
        ];
        let failing = batch[2].id();
        // Every later envelope of `a` would fail too if it were tried: it must not be tried, so
        // its own count stays at zero and it goes through at once on the next call.
        publisher.fail_matching(move |e| e.id() == failing, 1);
        let later = [batch[4].id(), batch[5].id()];
        publisher.fail_matching(move |e| later.contains(&e.id()), 1);

        let outcome = publisher.publish(&batch).await;
        assert!(outcome[0].is_ok());
        assert!(outcome[1].is_ok());
        assert!(matches!(outcome[2], Err(PublishError::Transient { .. })));
        assert!(outcome[3].is_ok());
        for later in &outcome[4..6] {
            let error = later
                .as_ref()
                .expect_err("after a failed event of its aggregate");
            assert!(
                error.is_not_attempted() && error.is_retryable(),
                "{error:?}"
            );
        }
        assert!(outcome[6].is_ok(), "another aggregate flows on");
        let accepted: Vec<(String, i64)> = publisher
            .published()
            .envelopes()
            .iter()
            .map(|e| (e.aggregate_id().to_owned(), e.sequence()))
            .collect();
        let expected = [("a", 1), ("b", 1), ("b", 2), ("c", 1)];
        assert_eq!(
            accepted,
            expected.map(|(a, s)| (a.to_owned(), s)).to_vec(),
            "nothing of `a` after its failed event was accepted"
        );

        // The retry of a/2 goes through; a/3 and a/4 were never tried, so their own scripted
        // failure comes now, once each, in order.
        let retry = &batch[2..=2];
        assert!(publisher.publish(retry).await[0].is_ok());
        let rest = publisher.publish(&batch[4..6]).await;
        assert!(matches!(rest[0], Err(PublishError::Transient { .. })));
        assert!(matches!(rest[1], Err(PublishError::NotAttempted)));
    }

    #[tokio::test]
    async fn failing_matching_envelopes_counts_per_event() {
        let publisher = InMemoryPublisher::new();
        publisher.fail_matching(|e| e.aggregate_id() == "a", 2);
        let batch = [envelope("a", 1)];
        assert!(publisher.publish(&batch).await[0].is_err());
        assert!(publisher.publish(&batch).await[0].is_err());
        assert!(publisher.publish(&batch).await[0].is_ok());
        // Another event of the same aggregate has its own count.
        assert!(publisher.publish(&[envelope("a", 2)]).await[0].is_err());
    }

    #[tokio::test]
    async fn delay_holds_the_answer_back() {
        let publisher = InMemoryPublisher::new();
        publisher.set_delay(Some(Duration::from_millis(30)));
        let start = std::time::Instant::now();
        let _ = publisher.publish(&[envelope("a", 1)]).await;
        assert!(start.elapsed() >= Duration::from_millis(30));
    }
}
