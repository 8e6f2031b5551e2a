//! A load for relay fault tests: `Counter` aggregates (no table of their own) whose events are
//! saved through the real save path ([`Outbox::begin`], [`UnitOfWork::record`]), one to three
//! events a transaction, some transactions rolled back on purpose.
//!
//! [`UnitOfWork::record`]: outbox_seaorm::UnitOfWork::record

use std::time::{Duration, Instant};

use outbox_core::{AggregateRoot, DomainEvent, DomainEvents};
use outbox_seaorm::Outbox;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A counter was bumped.
#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
pub struct CounterBumped {
    /// By how much.
    pub by: u32,
}

/// An aggregate with events only (its events are recorded, it has no row).
#[derive(Debug, AggregateRoot)]
#[aggregate(name = "Counter")]
pub struct Counter {
    /// Its id.
    #[aggregate(id)]
    pub id: String,
    /// Events not saved yet.
    #[aggregate(events)]
    pub events: DomainEvents,
}

/// Saves counter events round-robin over a number of aggregates and remembers which events
/// were committed and which were rolled back.
#[derive(Debug)]
pub struct CounterLoad {
    outbox: Outbox,
    aggregates: u32,
    rollback_every: Option<u32>,
    transactions: u32,
    /// The events of committed transactions, in commit order.
    pub committed: Vec<Uuid>,
    /// The events of transactions rolled back.
    pub rolled_back: Vec<Uuid>,
}

impl CounterLoad {
    /// A load over `aggregates` counters (`c0`, `c1`, …) saved through `outbox`.
    pub fn new(outbox: Outbox, aggregates: u32) -> CounterLoad {
        CounterLoad {
            outbox,
            aggregates: aggregates.max(1),
            rollback_every: None,
            transactions: 0,
            committed: Vec::new(),
            rolled_back: Vec::new(),
        }
    }

    /// Rolls back every `n`th transaction instead of committing it.
    pub fn rollback_every(mut self, n: u32) -> CounterLoad {
        self.rollback_every = Some(n.max(2));
        self
    }

    /// One transaction: one to three events of the next counter, committed or rolled back.
    pub async fn save(&mut self) {
        let i = self.transactions;
        self.transactions += 1;
        let mut counter = Counter {
            id: format!("c{}", i % self.aggregates),
            events: DomainEvents::new(),
        };
        for by in 0..=(i % 3) {
            counter.register_event(CounterBumped { by });
        }
        let ids: Vec<Uuid> = counter.events.as_slice().iter().map(|e| e.id()).collect();
        let mut uow = self.outbox.begin().await.expect("begin");
        uow.record(&mut counter).await.expect("record");
        if self.rollback_every.is_some_and(|n| i % n == n - 1) {
            uow.rollback().await.expect("rollback");
            self.rolled_back.extend(ids);
        } else {
            uow.commit().await.expect("commit");
            self.committed.extend(ids);
        }
    }

    /// Saves for `duration`, pausing up to `pause_ms` milliseconds (at random) between saves.
    pub async fn run_for(mut self, duration: Duration, pause_ms: u64) -> CounterLoad {
        let started = Instant::now();
        while started.elapsed() < duration {
            self.save().await;
            tokio::time::sleep(Duration::from_millis(fastrand::u64(0..=pause_ms))).await;
        }
        self
    }
}
