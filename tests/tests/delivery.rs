//! After-commit dispatch with durable completion records, and the recovery worker: handlers run
//! only after a commit, their failures never reach the saver, are retried with backoff, then
//! dead-lettered; a completed handler never runs again, also after a crash.

use std::time::{Duration, Instant};

use outbox_core::{
    AggregateRoot, BoxFuture, DeferredDispatcher, DomainEvent, DomainEvents, Envelope,
    EventContext, Handler, HandlerError, HandlerRegistry, InlineDispatcher, RetryPolicy,
};
use outbox_seaorm::{DeliveryWorker, Outbox, TransactionExt};
use outbox_tests::{TestDb, db_tests};
use sea_orm::{ConnectionTrait, DbBackend, Statement, Value};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
struct TaskPlaced {
    /// The `effect` handler fails on attempts up to this one.
    fail_until: u32,
    /// The `effect` handler fails permanently.
    permanent: bool,
}

impl DomainEvent for TaskPlaced {
    const NAME: &'static str = "TaskPlaced";
    const VERSION: u32 = 1;
}

/// The crash helper's event (see `src/bin/delivery_crash.rs`).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct JobQueued {
    started_file: String,
}

impl DomainEvent for JobQueued {
    const NAME: &'static str = "JobQueued";
    const VERSION: u32 = 1;
}

struct Task {
    id: String,
    events: DomainEvents,
}

impl Task {
    fn new(id: &str) -> Self {
        Task {
            id: id.to_owned(),
            events: DomainEvents::new(),
        }
    }
}

impl AggregateRoot for Task {
    const AGGREGATE_TYPE: &'static str = "Task";
    fn aggregate_id(&self) -> String {
        self.id.clone()
    }
    fn pending_events(&self) -> &DomainEvents {
        &self.events
    }
    fn pending_events_mut(&mut self) -> &mut DomainEvents {
        &mut self.events
    }
}

/// Rewrites `?` placeholders to `$n` on PostgreSQL.
fn stmt(backend: DbBackend, sql: &str, values: Vec<Value>) -> Statement {
    let sql = if backend == DbBackend::Postgres {
        let mut out = String::new();
        let mut n = 0;
        for c in sql.chars() {
            if c == '?' {
                n += 1;
                out.push_str(&format!("${n}"));
            } else {
                out.push(c);
            }
        }
        out
    } else {
        sql.to_owned()
    };
    Statement::from_sql_and_values(backend, sql, values)
}

/// Writes the handler's effect through the delivery transaction: it commits with the
/// completion record, or not at all.
async fn write_effect(
    envelope: &Envelope,
    ctx: &EventContext<'_>,
    handler: &str,
) -> Result<(), HandlerError> {
    let txn = ctx.transaction()?;
    let backend = txn.get_database_backend();
    txn.execute_raw(stmt(
        backend,
        "INSERT INTO effects (event_id, handler, attempt) VALUES (?, ?, ?)",
        vec![
            envelope.id().to_string().into(),
            handler.into(),
            i32::try_from(ctx.attempt()).unwrap_or(-1).into(),
        ],
    ))
    .await?;
    Ok(())
}

/// Writes its effect, then fails as the event asks: the failure rolls the effect back.
fn effect<'a>(
    envelope: &'a Envelope,
    ctx: &'a EventContext<'a>,
) -> BoxFuture<'a, Result<(), HandlerError>> {
    Box::pin(async move {
        let event: TaskPlaced = envelope.decode().map_err(HandlerError::permanent)?;
        write_effect(envelope, ctx, "effect").await?;
        if event.permanent {
            return Err(HandlerError::permanent(std::io::Error::other(
                "invariant broken",
            )));
        }
        if ctx.attempt() <= event.fail_until {
            let cause = std::io::Error::other("disk on fire");
            return Err(HandlerError::retryable(Wrapped(cause)));
        }
        Ok(())
    })
}

/// An error with a source, to check the whole chain is recorded.
#[derive(Debug)]
struct Wrapped(std::io::Error);

impl std::fmt::Display for Wrapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("boom")
    }
}

impl std::error::Error for Wrapped {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// Always succeeds.
fn other<'a>(
    envelope: &'a Envelope,
    ctx: &'a EventContext<'a>,
) -> BoxFuture<'a, Result<(), HandlerError>> {
    Box::pin(async move { write_effect(envelope, ctx, "other").await })
}

/// The crash test's handler, recovering what the killed process left (same id, fast).
fn crash_effect<'a>(
    envelope: &'a Envelope,
    ctx: &'a EventContext<'a>,
) -> BoxFuture<'a, Result<(), HandlerError>> {
    Box::pin(async move {
        let _: JobQueued = envelope.decode().map_err(HandlerError::permanent)?;
        write_effect(envelope, ctx, "crash").await
    })
}

const EFFECT: Handler = Handler::new("delivery::effect", "TaskPlaced", 1, None, None, effect);
const OTHER: Handler = Handler::new("delivery::other", "TaskPlaced", 1, None, None, other);
const CRASH: Handler = Handler::new("crash::effect", "JobQueued", 1, None, None, crash_effect);

async fn create_effects(t: &TestDb) {
    t.db.execute_unprepared(
        "CREATE TABLE effects (event_id VARCHAR(36) NOT NULL, handler VARCHAR(64) NOT NULL, \
         attempt INT NOT NULL)",
    )
    .await
    .expect("create effects");
}

fn builder(t: &TestDb) -> outbox_seaorm::OutboxBuilder {
    Outbox::builder(t.db.clone())
        .handlers(HandlerRegistry::new().with(EFFECT).with(OTHER).with(CRASH))
        .dispatcher(InlineDispatcher)
        .retry(
            RetryPolicy::default()
                .with_max_attempts(3)
                .with_initial_delay(Duration::from_millis(400))
                .with_multiplier(2.0)
                .with_jitter(0.0),
        )
}

async fn count(db: &impl ConnectionTrait, sql: &str, values: Vec<Value>) -> i64 {
    let backend = db.get_database_backend();
    db.query_one_raw(stmt(backend, sql, values))
        .await
        .expect("count query")
        .expect("count row")
        .try_get_by_index::<i64>(0)
        .expect("count value")
}

async fn effects(db: &impl ConnectionTrait, event_id: &str, handler: &str) -> Vec<i32> {
    let backend = db.get_database_backend();
    db.query_all_raw(stmt(
        backend,
        "SELECT attempt FROM effects WHERE event_id = ? AND handler = ? ORDER BY attempt",
        vec![event_id.into(), handler.into()],
    ))
    .await
    .expect("effects")
    .into_iter()
    .map(|r| r.try_get_by_index::<i32>(0).expect("attempt"))
    .collect()
}

#[derive(Debug, PartialEq)]
struct Delivery {
    status: i16,
    attempts: i32,
    next_attempt_at: i64,
    last_error: Option<String>,
    completed: bool,
}

async fn delivery(db: &impl ConnectionTrait, event_id: &str, handler: &str) -> Option<Delivery> {
    let backend = db.get_database_backend();
    db.query_one_raw(stmt(
        backend,
        "SELECT status, attempts, next_attempt_at, last_error, completed_at FROM outbox_delivery \
         WHERE event_id = ? AND handler = ?",
        vec![event_id.into(), handler.into()],
    ))
    .await
    .expect("delivery")
    .map(|r| Delivery {
        status: r.try_get_by_index(0).expect("status"),
        attempts: r.try_get_by_index(1).expect("attempts"),
        next_attempt_at: r.try_get_by_index(2).expect("next_attempt_at"),
        last_error: r.try_get_by_index(3).expect("last_error"),
        completed: r
            .try_get_by_index::<Option<i64>>(4)
            .expect("completed_at")
            .is_some(),
    })
}

/// Records `events` of a new task in one unit of work; returns the event ids.
async fn place(outbox: &Outbox, id: &str, events: &[TaskPlaced]) -> Vec<String> {
    let mut task = Task::new(id);
    for e in events {
        task.register_event(e.clone());
    }
    let ids = task
        .events
        .as_slice()
        .iter()
        .map(|e| e.id().to_string())
        .collect();
    let mut uow = outbox.begin().await.expect("begin");
    uow.record(&mut task).await.expect("record");
    uow.commit()
        .await
        .expect("a handler failure never fails the save");
    assert!(task.events.is_empty());
    ids
}

const OK: TaskPlaced = TaskPlaced {
    fail_until: 0,
    permanent: false,
};

async fn handlers_run_after_commit_only(t: TestDb) {
    create_effects(&t).await;
    let outbox = builder(&t).build();

    let ids = place(&outbox, "t-1", &[OK, OK]).await;
    for id in &ids {
        assert_eq!(effects(&t.db, id, "effect").await, [1]);
        assert_eq!(effects(&t.db, id, "other").await, [1]);
        for handler in ["delivery::effect", "delivery::other"] {
            let d = delivery(&t.db, id, handler).await.expect("delivery row");
            assert_eq!((d.status, d.attempts, d.completed), (1, 0, true));
        }
    }

    // Rolled back: no delivery row, no handler, the events stay.
    let mut task = Task::new("t-2");
    task.register_event(OK);
    let id = task.events.as_slice()[0].id().to_string();
    let mut uow = outbox.begin().await.expect("begin");
    uow.record(&mut task).await.expect("record");
    uow.rollback().await.expect("rollback");
    assert_eq!(task.events.len(), 1);
    assert_eq!(delivery(&t.db, &id, "delivery::effect").await, None);
    assert_eq!(
        count(&t.db, "SELECT COUNT(*) FROM effects", vec![]).await,
        4
    );
    assert_eq!(count(&t.db, "SELECT COUNT(*) FROM outbox", vec![]).await, 2);

    // The default dispatcher runs them on another task, soon after the commit.
    let spawned = builder(&t).dispatcher(outbox_core::SpawnDispatcher).build();
    let ids = place(&spawned, "t-3", &[OK]).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while effects(&t.db, &ids[0], "other").await.is_empty() {
        assert!(Instant::now() < deadline, "spawned dispatch did not run");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(effects(&t.db, &ids[0], "effect").await, [1]);
}

async fn failures_retry_with_backoff_then_die(t: TestDb) {
    create_effects(&t).await;
    let outbox = builder(&t).delivery_grace(Duration::ZERO).build();
    let worker = DeliveryWorker::new(outbox.clone());
    let always = TaskPlaced {
        fail_until: 99,
        permanent: false,
    };
    let twice = TaskPlaced {
        fail_until: 2,
        permanent: false,
    };
    let before = outbox_seaorm::time::now_micros();
    let ids = place(&outbox, "t-f", &[always, twice]).await;
    let (always, twice) = (&ids[0], &ids[1]);

    // First attempt, right after commit: both fail, their effects rolled back; `other` is done.
    for id in [always, twice] {
        let d = delivery(&t.db, id, "delivery::effect").await.expect("row");
        assert_eq!((d.status, d.attempts), (0, 1));
        assert!(d.next_attempt_at >= before + 400_000, "backoff: {d:?}");
        assert_eq!(d.last_error.as_deref(), Some("boom: disk on fire"));
        assert!(effects(&t.db, id, "effect").await.is_empty());
        assert_eq!(effects(&t.db, id, "other").await, [1]);
    }
    // Not due yet.
    assert_eq!(worker.run_once().await.expect("round"), 0);

    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(worker.run_once().await.expect("round"), 2);
    for id in [always, twice] {
        let d = delivery(&t.db, id, "delivery::effect").await.expect("row");
        assert_eq!((d.status, d.attempts), (0, 2), "{d:?}");
    }

    tokio::time::sleep(Duration::from_millis(850)).await;
    assert_eq!(worker.run_once().await.expect("round"), 2);
    let d = delivery(&t.db, always, "delivery::effect")
        .await
        .expect("row");
    assert_eq!((d.status, d.attempts, d.completed), (2, 3, false), "dead");
    let d = delivery(&t.db, twice, "delivery::effect")
        .await
        .expect("row");
    assert_eq!(
        (d.status, d.attempts, d.completed),
        (1, 2, true),
        "third attempt done"
    );
    // Exactly once: the effects of the failed attempts were rolled back with them.
    assert_eq!(effects(&t.db, twice, "effect").await, [3]);
    assert!(effects(&t.db, always, "effect").await.is_empty());
    assert_eq!(effects(&t.db, always, "other").await, [1]);

    // Nothing left: dead and done rows are never claimed.
    assert_eq!(worker.run_once().await.expect("round"), 0);
}

async fn permanent_failure_dies_at_once(t: TestDb) {
    create_effects(&t).await;
    let outbox = builder(&t).delivery_grace(Duration::ZERO).build();
    let ids = place(
        &outbox,
        "t-p",
        &[TaskPlaced {
            fail_until: 0,
            permanent: true,
        }],
    )
    .await;
    let d = delivery(&t.db, &ids[0], "delivery::effect")
        .await
        .expect("row");
    assert_eq!((d.status, d.attempts), (2, 1));
    assert_eq!(d.last_error.as_deref(), Some("invariant broken"));
    assert_eq!(effects(&t.db, &ids[0], "other").await, [1]);
    let worker = DeliveryWorker::new(outbox);
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(worker.run_once().await.expect("round"), 0);
}

async fn completed_handlers_never_run_again(t: TestDb) {
    create_effects(&t).await;
    // Deferred: nothing runs at commit; two workers race for the rows.
    let outbox = builder(&t)
        .dispatcher(DeferredDispatcher)
        .delivery_grace(Duration::ZERO)
        .build();
    let ids = place(&outbox, "t-c", &[OK, OK, OK]).await;
    assert_eq!(
        count(&t.db, "SELECT COUNT(*) FROM effects", vec![]).await,
        0
    );
    let other_pool = outbox_seaorm::Outbox::builder(t.connect_again().await)
        .handlers(HandlerRegistry::new().with(EFFECT).with(OTHER))
        .build();
    let (a, b) = (
        DeliveryWorker::new(outbox.clone()),
        DeliveryWorker::new(other_pool),
    );
    let (ra, rb) = tokio::join!(a.run_once(), b.run_once());
    let claimed = ra.expect("worker a") + rb.expect("worker b");
    assert_eq!(claimed, 6, "every row claimed by exactly one worker");
    for id in &ids {
        assert_eq!(effects(&t.db, id, "effect").await, [1]);
        assert_eq!(effects(&t.db, id, "other").await, [1]);
    }
    // Even when a done row looks due again, it is not run.
    t.db.execute_unprepared("UPDATE outbox_delivery SET next_attempt_at = 0")
        .await
        .expect("make due");
    assert_eq!(a.run_once().await.expect("round"), 0);
    assert_eq!(
        count(&t.db, "SELECT COUNT(*) FROM effects", vec![]).await,
        6
    );
}

async fn unknown_handlers_are_left_pending(t: TestDb) {
    create_effects(&t).await;
    let outbox = builder(&t)
        .dispatcher(DeferredDispatcher)
        .delivery_grace(Duration::ZERO)
        .build();
    let ids = place(&outbox, "t-u", &[OK]).await;
    let partial = Outbox::builder(t.db.clone())
        .handlers(HandlerRegistry::new().with(OTHER))
        .build();
    let worker = DeliveryWorker::new(partial).lease(Duration::from_secs(60));
    // Only the row of the handler it has: the other one is not claimed, so not leased either.
    assert_eq!(worker.run_once().await.expect("round"), 1);
    assert_eq!(effects(&t.db, &ids[0], "other").await, [1]);
    let d = delivery(&t.db, &ids[0], "delivery::effect")
        .await
        .expect("row");
    assert_eq!(
        (d.status, d.attempts),
        (0, 0),
        "left pending for a process that has it"
    );
    assert!(effects(&t.db, &ids[0], "effect").await.is_empty());
    assert_eq!(
        worker.unknown_handler_rows().await.expect("count"),
        [("delivery::effect".to_owned(), 1)]
    );
    // A worker that has the handler runs it at once.
    assert_eq!(
        DeliveryWorker::new(outbox).run_once().await.expect("round"),
        1
    );
    assert_eq!(effects(&t.db, &ids[0], "effect").await, [1]);
}

async fn crash_after_commit_recovers_exactly_once(t: TestDb) {
    create_effects(&t).await;
    let started = std::env::temp_dir().join(format!(
        "outbox-crash-{}-{:?}",
        std::process::id(),
        t.backend
    ));
    let _ = std::fs::remove_file(&started);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_delivery_crash"))
        .arg(&t.url)
        .arg(&started)
        .arg("job-1")
        .spawn()
        .expect("spawn the crash helper");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !started.exists() {
        if let Some(status) = child.try_wait().expect("child status") {
            panic!("crash helper exited early: {status}");
        }
        assert!(Instant::now() < deadline, "the handler never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Committed, handler running: kill it (SIGKILL).
    child.kill().expect("kill");
    child.wait().expect("reap");
    let _ = std::fs::remove_file(&started);

    let event_id: String =
        t.db.query_one_raw(Statement::from_string(
            t.db.get_database_backend(),
            "SELECT id FROM outbox WHERE aggregateid = 'job-1'",
        ))
        .await
        .expect("query")
        .expect("the event was committed")
        .try_get_by_index(0)
        .expect("id");
    let d = delivery(&t.db, &event_id, "crash::effect")
        .await
        .expect("row");
    assert_eq!(d.status, 0, "not completed before the crash");
    assert_eq!(
        count(&t.db, "SELECT COUNT(*) FROM effects", vec![]).await,
        0
    );

    // After "restart": the worker runs it once the grace (1 s in the helper) has passed.
    let outbox = builder(&t).build();
    let worker = DeliveryWorker::new(outbox);
    let deadline = Instant::now() + Duration::from_secs(20);
    while worker.run_once().await.expect("round") == 0 {
        assert!(Instant::now() < deadline, "recovery never ran the handler");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(effects(&t.db, &event_id, "crash").await, [1]);
    let d = delivery(&t.db, &event_id, "crash::effect")
        .await
        .expect("row");
    assert_eq!((d.status, d.completed), (1, true));
    t.db.execute_unprepared("UPDATE outbox_delivery SET next_attempt_at = 0")
        .await
        .expect("make due");
    assert_eq!(worker.run_once().await.expect("round"), 0);
    assert_eq!(
        count(&t.db, "SELECT COUNT(*) FROM effects", vec![]).await,
        1
    );
}

db_tests!(
    handlers_run_after_commit_only,
    failures_retry_with_backoff_then_die,
    permanent_failure_dies_at_once,
    completed_handlers_never_run_again,
    unknown_handlers_are_left_pending,
    crash_after_commit_recovers_exactly_once,
);
