//! Optimistic concurrency: a versioned aggregate's save is refused when the stored version moved
//! since it was loaded, writes nothing then, and keeps its events for a retry; its events are
//! numbered from its version with no gap, also across saves without events.

use std::sync::Arc;

use outbox_core::testing::InMemoryPublisher;
use outbox_core::{AggregateRoot, DomainEvent, DomainEvents, HandlerRegistry, InlineDispatcher};
use outbox_seaorm::{Error, Outbox, Relay, save_in, write_events};
use outbox_tests::{TestDb, db_tests};
use sea_orm::{ConnectionTrait, DbBackend, EntityTrait, Schema, Statement, TransactionTrait};
use serde::{Deserialize, Serialize};

mod account {
    use outbox_core::{AggregateRoot, DomainEvents};
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, AggregateRoot)]
    #[sea_orm(table_name = "accounts")]
    #[aggregate(name = "Account")]
    pub(crate) struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        #[aggregate(id)]
        pub(crate) id: String,
        pub(crate) balance: i64,
        /// An `i32` column: the version works with any integer type.
        #[aggregate(version)]
        pub(crate) version: i32,
        #[sea_orm(ignore)]
        #[aggregate(events)]
        pub(crate) events: DomainEvents,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub(crate) enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
#[event(name = "AccountOpened")]
struct AccountOpened {
    balance: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
#[event(name = "MoneyDeposited")]
struct MoneyDeposited {
    amount: i64,
}

impl account::Model {
    fn open(id: &str, balance: i64) -> Self {
        let mut account = account::Model {
            id: id.to_owned(),
            balance,
            version: 0,
            events: DomainEvents::new(),
        };
        account.register_event(AccountOpened { balance });
        account
    }

    fn deposit(&mut self, amount: i64) {
        self.balance += amount;
        self.register_event(MoneyDeposited { amount });
    }
}

async fn setup(t: &TestDb) -> Outbox {
    let schema = Schema::new(t.db.get_database_backend());
    t.db.execute(&schema.create_table_from_entity(account::Entity))
        .await
        .expect("create accounts");
    Outbox::builder(t.db.clone())
        .handlers(HandlerRegistry::new())
        .dispatcher(InlineDispatcher)
        .build()
}

async fn load(t: &TestDb, id: &str) -> account::Model {
    account::Entity::find_by_id(id.to_owned())
        .one(&t.db)
        .await
        .expect("load")
        .expect("account row")
}

/// `(sequence, type, payload)` of the account's outbox rows, by sequence.
async fn outbox_rows(t: &TestDb, id: &str) -> Vec<(i64, String, serde_json::Value)> {
    let backend = t.db.get_database_backend();
    let sql = match backend {
        DbBackend::Postgres => {
            "SELECT sequence, type, payload FROM outbox WHERE aggregateid = $1 ORDER BY sequence"
        }
        _ => "SELECT sequence, type, payload FROM outbox WHERE aggregateid = ? ORDER BY sequence",
    };
    t.db.query_all_raw(Statement::from_sql_and_values(backend, sql, [id.into()]))
        .await
        .expect("outbox rows")
        .iter()
        .map(|row| {
            let payload: String = row.try_get_by_index(2).expect("payload");
            (
                row.try_get_by_index(0).expect("sequence"),
                row.try_get_by_index(1).expect("type"),
                serde_json::from_str(&payload).expect("json"),
            )
        })
        .collect()
}

async fn count(t: &TestDb, table: &str) -> i64 {
    t.db.query_one_raw(Statement::from_string(
        t.db.get_database_backend(),
        format!("SELECT COUNT(*) FROM {table}"),
    ))
    .await
    .expect("count")
    .expect("row")
    .try_get_by_index(0)
    .expect("count value")
}

fn conflict(err: &Error) -> (i64, Option<i64>) {
    match err {
        Error::Conflict {
            aggregate_type,
            aggregate_id,
            expected,
            actual,
            ..
        } => {
            assert_eq!(*aggregate_type, "Account");
            assert!(!aggregate_id.is_empty());
            (*expected, *actual)
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
}

/// Two copies loaded at one version, both changed: the second save is refused, writes nothing
/// and keeps its event; after a reload it goes through.
async fn second_copy_is_refused(t: TestDb) {
    let outbox = setup(&t).await;
    let mut opened = account::Model::open("a-1", 100);
    outbox.save(&mut opened).await.expect("open");
    assert_eq!(opened.version, 1, "one event: version 1");

    let mut first = load(&t, "a-1").await;
    let mut second = load(&t, "a-1").await;
    first.deposit(10);
    second.deposit(20);
    outbox.save(&mut first).await.expect("first copy saves");
    assert_eq!(first.version, 2);

    let err = outbox.save(&mut second).await.expect_err("second copy");
    assert!(err.is_conflict() && !err.is_retryable(), "{err:?}");
    assert_eq!(conflict(&err), (1, Some(2)));
    assert!(
        err.to_string().contains("expected version 1, stored 2"),
        "{err}"
    );
    assert_eq!(
        second.pending_events().len(),
        1,
        "the refused copy keeps its event"
    );
    assert_eq!(second.version, 1, "and its version");

    let stored = load(&t, "a-1").await;
    assert_eq!(
        (stored.balance, stored.version),
        (110, 2),
        "the first copy's state"
    );
    let rows = outbox_rows(&t, "a-1").await;
    assert_eq!(rows.len(), 2, "the refused save wrote no event: {rows:?}");

    // Reload, apply again, save: now it goes through, numbered after the first copy's event.
    let mut retried = load(&t, "a-1").await;
    retried.deposit(20);
    outbox.save(&mut retried).await.expect("retry");
    let rows = outbox_rows(&t, "a-1").await;
    let sequences: Vec<i64> = rows.iter().map(|r| r.0).collect();
    assert_eq!(sequences, [1, 2, 3]);
    assert_eq!(rows[2].2["amount"], 20);
    assert_eq!(load(&t, "a-1").await.balance, 130);
    assert_eq!(
        count(&t, "outbox_sequence").await,
        0,
        "no sequence row for versioned saves"
    );
}

/// A new aggregate whose id exists is a conflict, never an overwrite.
async fn new_aggregate_with_existing_id_is_refused(t: TestDb) {
    let outbox = setup(&t).await;
    outbox
        .save(&mut account::Model::open("a-2", 100))
        .await
        .expect("open");
    let mut again = account::Model::open("a-2", 999);
    let err = outbox.save(&mut again).await.expect_err("same id");
    assert_eq!(conflict(&err), (0, Some(1)));
    assert_eq!(again.pending_events().len(), 1);
    assert_eq!(load(&t, "a-2").await.balance, 100, "not overwritten");
    assert_eq!(outbox_rows(&t, "a-2").await.len(), 1);
}

/// A save without events moves the version but leaves no gap in the events' sequence, and a
/// stale copy's save without events is refused too (it would overwrite a change it never saw).
async fn saves_without_events_leave_no_gap(t: TestDb) {
    let outbox = setup(&t).await;
    let mut account = account::Model::open("a-3", 100);
    outbox.save(&mut account).await.expect("open");
    let stale = load(&t, "a-3").await;

    account.balance = 150; // a change without an event
    outbox.save(&mut account).await.expect("quiet save");
    assert_eq!(account.version, 2);

    let mut stale = stale;
    stale.balance = 1; // a stale copy, also without an event
    let err = outbox.save(&mut stale).await.expect_err("stale quiet save");
    assert_eq!(conflict(&err), (1, Some(2)));
    assert_eq!(load(&t, "a-3").await.balance, 150);

    account.deposit(5);
    account.deposit(6);
    outbox.save(&mut account).await.expect("two events");
    assert_eq!(account.version, 4);
    let sequences: Vec<i64> = outbox_rows(&t, "a-3").await.iter().map(|r| r.0).collect();
    assert_eq!(sequences, [1, 2, 3], "no gap for the save without events");

    // A new aggregate saved without events, then with one: its first event is sequence 1.
    let mut quiet = account::Model {
        id: "a-4".to_owned(),
        balance: 0,
        version: 0,
        events: DomainEvents::new(),
    };
    outbox.save(&mut quiet).await.expect("quiet insert");
    assert_eq!(quiet.version, 1);
    quiet.deposit(1);
    outbox.save(&mut quiet).await.expect("first event");
    assert_eq!(quiet.version, 2);
    let rows = outbox_rows(&t, "a-4").await;
    assert_eq!(rows.iter().map(|r| r.0).collect::<Vec<_>>(), [1]);
}

/// The same rule in a unit of work and in a save on the caller's transaction; `write_events`
/// refuses a versioned aggregate.
async fn unit_of_work_and_caller_transaction(t: TestDb) {
    let outbox = setup(&t).await;
    outbox
        .save(&mut account::Model::open("a-5", 100))
        .await
        .expect("open");
    let mut stale = load(&t, "a-5").await;
    let mut fresh = load(&t, "a-5").await;
    fresh.deposit(1);
    outbox.save(&mut fresh).await.expect("fresh");

    stale.deposit(2);
    let mut uow = outbox.begin().await.expect("begin");
    let err = uow
        .save(&mut stale)
        .await
        .expect_err("stale in a unit of work");
    assert_eq!(conflict(&err), (1, Some(2)));
    assert!(matches!(uow.commit().await, Err(Error::Aborted)));
    assert_eq!(stale.pending_events().len(), 1);

    let txn = t.db.begin().await.expect("begin");
    let err = save_in(
        &txn,
        &stale,
        &HandlerRegistry::new(),
        std::time::Duration::ZERO,
    )
    .await
    .expect_err("stale on the caller's transaction");
    assert_eq!(conflict(&err), (1, Some(2)));
    txn.rollback().await.expect("rollback");

    let txn = t.db.begin().await.expect("begin");
    let err = write_events(
        &txn,
        &stale,
        &HandlerRegistry::new(),
        std::time::Duration::ZERO,
    )
    .await
    .expect_err("events only");
    assert!(matches!(err, Error::VersionedRowNeeded { .. }), "{err:?}");
    txn.rollback().await.expect("rollback");

    // Reloaded, the unit of work and the caller's transaction both go through.
    let mut current = load(&t, "a-5").await;
    current.deposit(3);
    let mut uow = outbox.begin().await.expect("begin");
    uow.save(&mut current).await.expect("save in uow");
    uow.commit().await.expect("commit");
    assert_eq!(current.version, 3);
    assert!(current.pending_events().is_empty());

    let txn = t.db.begin().await.expect("begin");
    current.deposit(4);
    let written = outbox.save_in(&txn, &current).await.expect("save_in");
    assert_eq!(written.version(), Some(4));
    txn.commit().await.expect("commit");
    outbox.after_commit(&mut current, written).await;
    assert_eq!(current.version, 4);
    let rows = outbox_rows(&t, "a-5").await;
    assert_eq!(rows.iter().map(|r| r.0).collect::<Vec<_>>(), [1, 2, 3, 4]);
    assert_eq!(load(&t, "a-5").await.balance, 108);
}

/// A versioned delete happens only at the loaded version.
async fn delete_at_the_loaded_version(t: TestDb) {
    let outbox = setup(&t).await;
    outbox
        .save(&mut account::Model::open("a-6", 100))
        .await
        .expect("open");
    let mut stale = load(&t, "a-6").await;
    let mut fresh = load(&t, "a-6").await;
    fresh.deposit(1);
    outbox.save(&mut fresh).await.expect("fresh");
    let err = outbox.delete(&mut stale).await.expect_err("stale delete");
    assert_eq!(conflict(&err), (1, Some(2)));
    outbox
        .delete(&mut fresh)
        .await
        .expect("delete at the stored version");
    assert!(
        account::Entity::find_by_id("a-6".to_owned())
            .one(&t.db)
            .await
            .expect("find")
            .is_none()
    );
    let err = outbox.delete(&mut fresh).await.expect_err("gone");
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
}

/// Deleted (with an event) and created again under the same id: the new aggregate starts at
/// version 0 and its events go on from the old last sequence, never again from 1.
async fn created_again_after_delete_continues_the_sequence(t: TestDb) {
    let outbox = setup(&t).await;
    let mut account = account::Model::open("a-8", 100);
    account.deposit(1);
    outbox.save(&mut account).await.expect("open");
    account.balance = 0; // a save without events: version 3, sequence still 2
    outbox.save(&mut account).await.expect("quiet");
    account.register_event(MoneyDeposited { amount: -101 });
    outbox
        .delete(&mut account)
        .await
        .expect("delete with an event");
    let mut reopened = account::Model::open("a-8", 7);
    reopened.deposit(3);
    outbox.save(&mut reopened).await.expect("created again");
    assert_eq!(reopened.version, 2, "a new aggregate: versions from 0");
    reopened.deposit(4);
    outbox.save(&mut reopened).await.expect("and changed");
    let sequences: Vec<i64> = outbox_rows(&t, "a-8").await.iter().map(|r| r.0).collect();
    assert_eq!(sequences, [1, 2, 3, 4, 5, 6], "no sequence used twice");
}

/// Eight tasks deposit into one account concurrently, reloading and retrying on conflict: the
/// balance equals the sum of the published events, whose sequences are 1..n without gap or
/// duplicate.
async fn concurrent_increments_add_up(t: TestDb) {
    const TASKS: i64 = 8;
    const EACH: i64 = 6;
    let outbox = setup(&t).await;
    outbox
        .save(&mut account::Model::open("a-7", 0))
        .await
        .expect("open");
    let conflicts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let outbox = outbox.clone();
        let db = t.db.clone();
        let conflicts = Arc::clone(&conflicts);
        tasks.push(tokio::spawn(async move {
            for i in 0..EACH {
                let amount = task * 100 + i + 1;
                let mut attempts = 0;
                loop {
                    attempts += 1;
                    assert!(attempts < 500, "task {task} never got its deposit through");
                    let mut account = account::Entity::find_by_id("a-7".to_owned())
                        .one(&db)
                        .await
                        .expect("load")
                        .expect("row");
                    account.deposit(amount);
                    match outbox.save(&mut account).await {
                        Ok(()) => break,
                        Err(err) if err.is_conflict() => {
                            conflicts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        // SQLite's single writer, MariaDB's deadlock detection: try again.
                        Err(err) if err.is_retryable() => {}
                        Err(err) => panic!("task {task}: {err:?}"),
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }

    let publisher = InMemoryPublisher::new();
    let relay = Relay::builder(t.db.clone(), publisher.clone()).build();
    while relay.run_once().await.expect("relay cycle").claimed() > 0 {}
    let published = publisher.published().for_aggregate("Account", "a-7");
    let sequences: Vec<i64> = published.envelopes().iter().map(|e| e.sequence()).collect();
    let n = 1 + TASKS * EACH;
    assert_eq!(
        sequences,
        (1..=n).collect::<Vec<_>>(),
        "gapless, no duplicate"
    );
    let deposited: i64 = published
        .of_type::<MoneyDeposited>()
        .iter()
        .map(|d| d.amount)
        .sum();
    let stored = load(&t, "a-7").await;
    assert_eq!(
        stored.balance, deposited,
        "state = sum of the published events"
    );
    let expected: i64 = (0..TASKS)
        .flat_map(|task| (0..EACH).map(move |i| task * 100 + i + 1))
        .sum();
    assert_eq!(deposited, expected, "every deposit exactly once");
    assert_eq!(i64::from(stored.version), n);
    eprintln!(
        "{:?}: {} conflicts retried",
        t.backend,
        conflicts.load(std::sync::atomic::Ordering::Relaxed)
    );
}

db_tests!(
    second_copy_is_refused,
    new_aggregate_with_existing_id_is_refused,
    saves_without_events_leave_no_gap,
    unit_of_work_and_caller_transaction,
    delete_at_the_loaded_version,
    created_again_after_delete_continues_the_sequence,
    concurrent_increments_add_up,
);
