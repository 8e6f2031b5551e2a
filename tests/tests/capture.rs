//! The capture modes of the save path: `Capture::Messages` emits one logical decoding message per
//! event (read back here through a `test_decoding` slot), `Capture::LogTable` writes captured
//! rows that no table relay publishes and cleanup deletes by age; both are refused, writing
//! nothing, on databases without logical decoding. `Capture::Table` is covered by save.rs,
//! versioned.rs and delivery.rs.

use std::time::Duration;

use outbox_core::testing::InMemoryPublisher;
use outbox_core::{
    AggregateRoot, BoxFuture, DomainEvent, DomainEvents, Envelope, EventContext, Handler,
    HandlerError, HandlerRegistry, InlineDispatcher,
};
use outbox_seaorm::log_relay::message;
use outbox_seaorm::{Capture, Cleanup, Error, Outbox, Relay, Written};
use outbox_tests::fixtures::{count, exec};
use outbox_tests::{Backend, TestDb, fresh};
use sea_orm::{ConnectionTrait, DbBackend, EntityTrait, Schema, Statement, TransactionTrait};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

mod order {
    use outbox_core::{AggregateRoot, DomainEvents};
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, AggregateRoot)]
    #[sea_orm(table_name = "orders")]
    #[aggregate(name = "Order")]
    pub(crate) struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        #[aggregate(id)]
        pub(crate) id: String,
        pub(crate) amount: i64,
        #[sea_orm(ignore)]
        #[aggregate(events)]
        pub(crate) events: DomainEvents,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub(crate) enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

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
        #[aggregate(version)]
        pub(crate) version: i64,
        #[sea_orm(ignore)]
        #[aggregate(events)]
        pub(crate) events: DomainEvents,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub(crate) enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
#[event(name = "OrderPlaced")]
struct OrderPlaced {
    amount: i64,
}

/// The event with an in-process handler ([`PAID`]).
#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
#[event(name = "OrderPaid", topic = "payments")]
struct OrderPaid {
    n: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
#[event(name = "OrderDeleted")]
struct OrderDeleted {
    reason: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
#[event(name = "MoneyDeposited", version = 2)]
struct MoneyDeposited {
    amount: i64,
}

fn paid<'a>(
    _envelope: &'a Envelope,
    _ctx: &'a EventContext<'a>,
) -> BoxFuture<'a, Result<(), HandlerError>> {
    Box::pin(async { Ok(()) })
}

const PAID: Handler = Handler::new("capture::paid", "OrderPaid", 1, None, None, paid);

fn new_order(id: &str, amount: i64) -> order::Model {
    let mut o = order::Model {
        id: id.to_owned(),
        amount,
        events: DomainEvents::new(),
    };
    o.register_event(OrderPlaced { amount });
    o
}

fn new_account(id: &str) -> account::Model {
    let mut a = account::Model {
        id: id.to_owned(),
        balance: 0,
        version: 0,
        events: DomainEvents::new(),
    };
    a.register_event(MoneyDeposited { amount: 0 });
    a
}

fn ids<A: AggregateRoot>(aggregate: &A) -> Vec<Uuid> {
    aggregate
        .pending_events()
        .as_slice()
        .iter()
        .map(|e| e.id())
        .collect()
}

async fn create_tables(t: &TestDb) {
    let schema = Schema::new(t.db.get_database_backend());
    t.db.execute(&schema.create_table_from_entity(order::Entity))
        .await
        .expect("create orders");
    t.db.execute(&schema.create_table_from_entity(account::Entity))
        .await
        .expect("create accounts");
}

fn outbox(t: &TestDb, capture: Capture) -> Outbox {
    let outbox = Outbox::builder(t.db.clone())
        .handlers(HandlerRegistry::new().with(PAID))
        .dispatcher(InlineDispatcher)
        .capture(capture)
        .build();
    assert_eq!(outbox.capture(), capture);
    outbox
}

async fn setup(t: &TestDb, capture: Capture) -> Outbox {
    create_tables(t).await;
    outbox(t, capture)
}

/// A logical replication slot with the built-in `test_decoding` plugin on the test's database.
struct Slot {
    name: String,
}

/// One decoded logical message of a transaction.
#[derive(Debug)]
struct Message {
    transactional: bool,
    prefix: String,
    content: String,
}

/// What a slot returned since the last read.
#[derive(Debug, Default)]
struct Changes {
    messages: Vec<Message>,
    /// `INSERT`s into `outbox` (rows, not messages).
    outbox_inserts: usize,
}

impl Changes {
    /// The envelopes of the `outbox` messages, in emission order; every message must be one.
    fn envelopes(&self) -> Vec<Envelope> {
        self.messages
            .iter()
            .map(|m| {
                assert!(m.transactional, "a non-transactional message: {m:?}");
                assert_eq!(m.prefix, message::MESSAGE_PREFIX);
                message::decode(m.content.as_bytes())
                    .unwrap_or_else(|e| panic!("content {:?}: {e}", m.content))
            })
            .collect()
    }

    fn sequences(&self) -> Vec<i64> {
        self.envelopes().iter().map(Envelope::sequence).collect()
    }

    fn ids(&self) -> Vec<Uuid> {
        self.envelopes().iter().map(Envelope::id).collect()
    }
}

impl Slot {
    /// Creates it (bounded: slot creation waits for the cluster's running transactions).
    async fn create(db: &impl ConnectionTrait) -> Slot {
        let row = db
            .query_one_raw(Statement::from_string(
                DbBackend::Postgres,
                "SELECT current_database()",
            ))
            .await
            .expect("current database")
            .expect("row");
        let name: String = row.try_get_by_index(0).expect("name");
        let create = db.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pg_create_logical_replication_slot($1, 'test_decoding')",
            [name.clone().into()],
        ));
        tokio::time::timeout(Duration::from_secs(60), create)
            .await
            .expect("slot created within 60 s")
            .expect("create slot (wal_level=logical?)");
        // The log relay's own slot: saves in a log mode refuse to run without one.
        let create = db.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            [format!("{name}_relay").into()],
        ));
        tokio::time::timeout(Duration::from_secs(60), create)
            .await
            .expect("slot created within 60 s")
            .expect("create the relay's slot");
        Slot { name }
    }

    /// Consumes the changes committed since the last call.
    async fn changes(&self, db: &impl ConnectionTrait) -> Changes {
        let rows = db
            .query_all_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT data FROM pg_logical_slot_get_changes($1, NULL, NULL)",
                [self.name.clone().into()],
            ))
            .await
            .expect("slot changes");
        let mut changes = Changes::default();
        for row in rows {
            let data: String = row.try_get_by_index(0).expect("data");
            if let Some(rest) = data.strip_prefix("message: transactional: ") {
                // `1 prefix: outbox, sz: 123 content:{...}`
                let (flag, rest) = rest.split_once(" prefix: ").expect("prefix");
                let (prefix, rest) = rest.split_once(", sz: ").expect("size");
                let (_, content) = rest.split_once(" content:").expect("content");
                changes.messages.push(Message {
                    transactional: flag == "1",
                    prefix: prefix.to_owned(),
                    content: content.to_owned(),
                });
            } else if data.starts_with("table public.outbox: INSERT:") {
                changes.outbox_inserts += 1;
            }
        }
        changes
    }

    async fn drop(self, db: &impl ConnectionTrait) {
        for name in [format!("{}_relay", self.name), self.name] {
            db.execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT pg_drop_replication_slot($1)",
                [name.into()],
            ))
            .await
            .expect("drop slot");
        }
    }
}

/// The exact contents a save of `written` must have emitted: [`message::encode`] of each stored
/// envelope, sequence included.
fn expected_contents(written: &Written) -> Vec<String> {
    written
        .envelopes()
        .iter()
        .map(|e| message::encode(e).expect("encode"))
        .collect()
}

fn contents(changes: &Changes) -> Vec<String> {
    changes.messages.iter().map(|m| m.content.clone()).collect()
}

/// Unversioned, one statement: a message per event, numbered 1..n across saves, in event order,
/// each decoding to the stored envelope; no outbox row, the sequence row still counts.
async fn messages_unversioned(t: TestDb) {
    let outbox = setup(&t, Capture::Messages).await;
    let slot = Slot::create(&t.db).await;

    let mut o = new_order("o-1", 10);
    o.register_event(OrderPlaced { amount: 11 });
    let first = ids(&o);
    outbox.save(&mut o).await.expect("save");
    o.amount = 12;
    o.register_event(OrderPlaced { amount: 12 });
    let second = ids(&o);
    outbox.save(&mut o).await.expect("save again");

    let changes = slot.changes(&t.db).await;
    assert_eq!(changes.sequences(), [1, 2, 3]);
    assert_eq!(changes.ids(), [first, second].concat());
    assert_eq!(changes.outbox_inserts, 0, "no outbox row is written");
    let envelopes = changes.envelopes();
    assert!(envelopes.iter().all(|e| e.aggregate_type() == "Order"
        && e.aggregate_id() == "o-1"
        && e.event_name() == "OrderPlaced"));
    let amounts: Vec<i64> = envelopes
        .iter()
        .map(|e| e.decode::<OrderPlaced>().expect("payload").amount)
        .collect();
    assert_eq!(amounts, [10, 11, 12]);
    assert_eq!(count(&t.db, "outbox", "1 = 1").await, 0);
    assert_eq!(
        count(&t.db, "outbox_sequence", "last_sequence = 3").await,
        1,
        "the sequence row counts the messages"
    );
    assert_eq!(count(&t.db, "orders", "amount = 12").await, 1);

    // Exact content, through the caller's transaction: `encode` of each stored envelope.
    o.register_event(OrderPlaced { amount: 13 });
    o.register_event(OrderPlaced { amount: 14 });
    let txn = t.db.begin().await.expect("begin");
    let written = outbox.save_in(&txn, &o).await.expect("save_in");
    txn.commit().await.expect("commit");
    let expected = expected_contents(&written);
    outbox.after_commit(&mut o, written).await;
    let changes = slot.changes(&t.db).await;
    assert_eq!(contents(&changes), expected);
    assert_eq!(changes.sequences(), [4, 5]);

    // A delete runs statement by statement: it emits too.
    o.register_event(OrderDeleted {
        reason: "gone".to_owned(),
    });
    let deleted = ids(&o);
    outbox.delete(&mut o).await.expect("delete");
    let changes = slot.changes(&t.db).await;
    assert_eq!(changes.ids(), deleted);
    assert_eq!(changes.sequences(), [6]);
    assert_eq!(count(&t.db, "outbox", "1 = 1").await, 0);
    slot.drop(&t.db).await;
}

/// Versioned: numbered from the version, no sequence row; a conflict emits nothing.
async fn messages_versioned(t: TestDb) {
    let outbox = setup(&t, Capture::Messages).await;
    let slot = Slot::create(&t.db).await;

    let mut a = new_account("a-1");
    outbox.save(&mut a).await.expect("open");
    let mut stale = account::Entity::find_by_id("a-1".to_owned())
        .one(&t.db)
        .await
        .expect("load")
        .expect("row");
    a.balance = 5;
    a.register_event(MoneyDeposited { amount: 2 });
    a.register_event(MoneyDeposited { amount: 3 });
    outbox.save(&mut a).await.expect("deposit");
    assert_eq!(a.version, 3);
    let changes = slot.changes(&t.db).await;
    assert_eq!(changes.sequences(), [1, 2, 3]);
    assert!(
        changes
            .envelopes()
            .iter()
            .all(|e| e.event_name() == "MoneyDeposited" && e.event_version() == 2)
    );

    // The stale copy (version 1) conflicts: nothing written, nothing emitted.
    stale.balance = 100;
    stale.register_event(MoneyDeposited { amount: 100 });
    let err = outbox.save(&mut stale).await.expect_err("conflict");
    assert!(err.is_conflict(), "{err:?}");
    assert_eq!(stale.pending_events().len(), 1, "keeps its event");
    // A new aggregate whose id exists conflicts too.
    let mut copy = new_account("a-1");
    let err = outbox.save(&mut copy).await.expect_err("conflict");
    assert!(err.is_conflict(), "{err:?}");
    let changes = slot.changes(&t.db).await;
    assert!(changes.messages.is_empty(), "{changes:?}");

    a.register_event(MoneyDeposited { amount: 4 });
    outbox.save(&mut a).await.expect("deposit again");
    assert_eq!(slot.changes(&t.db).await.sequences(), [4]);
    assert_eq!(count(&t.db, "outbox", "1 = 1").await, 0);
    assert_eq!(count(&t.db, "outbox_sequence", "1 = 1").await, 0);
    slot.drop(&t.db).await;
}

/// Rolled back, a unit of work or the caller's transaction emits nothing; committed, a unit of
/// work emits its aggregates' messages in the order they were saved.
async fn messages_roll_back_with_the_transaction(t: TestDb) {
    let outbox = setup(&t, Capture::Messages).await;
    let slot = Slot::create(&t.db).await;

    let mut o = new_order("o-1", 1);
    let mut a = new_account("a-1");
    let mut uow = outbox.begin().await.expect("begin");
    uow.save(&mut o).await.expect("uow save order");
    uow.save(&mut a).await.expect("uow save account");
    uow.rollback().await.expect("rollback");

    let txn = t.db.begin().await.expect("begin");
    let written = outbox.save_in(&txn, &o).await.expect("save_in");
    assert_eq!(written.len(), 1);
    txn.rollback().await.expect("rollback");
    drop(written);

    let mut other = new_order("o-2", 2);
    let txn = t.db.begin().await.expect("begin");
    let _ = outbox.write(&txn, &other).await.expect("write");
    txn.rollback().await.expect("rollback");

    let changes = slot.changes(&t.db).await;
    assert!(changes.messages.is_empty(), "{changes:?}");
    assert_eq!(count(&t.db, "orders", "1 = 1").await, 0);
    assert_eq!(count(&t.db, "outbox_sequence", "1 = 1").await, 0);

    // Committed: both aggregates, in order, with their own sequences.
    let expected = [ids(&o), ids(&a), ids(&other)].concat();
    let mut uow = outbox.begin().await.expect("begin");
    uow.save(&mut o).await.expect("uow save order");
    uow.save(&mut a).await.expect("uow save account");
    uow.record(&mut other).await.expect("uow record");
    uow.commit().await.expect("commit");
    assert!(o.pending_events().is_empty() && a.pending_events().is_empty());
    let changes = slot.changes(&t.db).await;
    assert_eq!(changes.ids(), expected);
    assert_eq!(changes.sequences(), [1, 1, 1]);
    assert_eq!(count(&t.db, "outbox", "1 = 1").await, 0);
    slot.drop(&t.db).await;
}

/// An event with an in-process handler gets a captured row and its delivery row instead of a
/// message; the others around it are messages, in order, numbered with it.
async fn messages_with_handlers_keep_a_captured_row(t: TestDb) {
    let outbox = setup(&t, Capture::Messages).await;
    let slot = Slot::create(&t.db).await;

    let mut o = new_order("o-1", 1);
    o.register_event(OrderPaid { n: 1 });
    o.register_event(OrderPlaced { amount: 2 });
    let all = ids(&o);
    outbox.save(&mut o).await.expect("save");

    let changes = slot.changes(&t.db).await;
    assert_eq!(changes.ids(), [all[0], all[2]]);
    assert_eq!(changes.sequences(), [1, 3]);
    assert_eq!(changes.outbox_inserts, 1);
    let paid = all[1].to_string();
    assert_eq!(
        count(
            &t.db,
            "outbox",
            &format!("id = '{paid}' AND status = 3 AND sequence = 2 AND type = 'OrderPaid'"),
        )
        .await,
        1,
        "a captured row for the event with a handler"
    );
    assert_eq!(count(&t.db, "outbox", "1 = 1").await, 1);
    assert_eq!(
        count(&t.db, "outbox_delivery", &format!("event_id = '{paid}'")).await,
        1
    );
    // The inline dispatch read the envelope back from the row and ran the handler.
    assert_eq!(
        count(
            &t.db,
            "outbox_delivery",
            &format!("event_id = '{paid}' AND status = 1")
        )
        .await,
        1
    );
    slot.drop(&t.db).await;
}

/// More than 1000 events (the statement-by-statement path): every message, in order, and the
/// rows of the events with handlers.
async fn messages_of_a_large_save(t: TestDb) {
    const N: usize = 1_500;
    let outbox = setup(&t, Capture::Messages).await;
    let slot = Slot::create(&t.db).await;

    let mut o = new_order("o-1", 0);
    for i in 1..N {
        if i % 500 == 0 {
            o.register_event(OrderPaid {
                n: u32::try_from(i).expect("small"),
            });
        } else {
            o.register_event(OrderPlaced {
                amount: i64::try_from(i).expect("small"),
            });
        }
    }
    let all = ids(&o);
    outbox.save(&mut o).await.expect("save");

    let changes = slot.changes(&t.db).await;
    let expected_ids: Vec<Uuid> = all
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 500 != 0 || *i == 0)
        .map(|(_, id)| *id)
        .collect();
    assert_eq!(changes.ids(), expected_ids, "in event order");
    let expected_sequences: Vec<i64> = (1..=i64::try_from(N).expect("small"))
        .filter(|s| (s - 1) % 500 != 0 || *s == 1)
        .collect();
    assert_eq!(changes.sequences(), expected_sequences);
    let amounts: Vec<i64> = changes
        .envelopes()
        .iter()
        .map(|e| e.decode::<OrderPlaced>().expect("payload").amount)
        .collect();
    assert!(amounts.windows(2).all(|w| w[0] < w[1]), "payload order");
    assert_eq!(changes.outbox_inserts, 2);
    assert_eq!(count(&t.db, "outbox", "status = 3").await, 2);
    assert_eq!(count(&t.db, "outbox", "1 = 1").await, 2);
    assert_eq!(count(&t.db, "outbox_delivery", "1 = 1").await, 2);
    assert_eq!(
        count(&t.db, "outbox_sequence", &format!("last_sequence = {N}")).await,
        1
    );
    slot.drop(&t.db).await;
}

/// `LogTable`: status-3 rows, sequences as usual, delivery rows for handlers; the table relay
/// publishes none of them and counts none as pending or dead.
async fn log_table_rows_are_captured(t: TestDb) {
    let outbox = setup(&t, Capture::LogTable).await;
    let slot = Slot::create(&t.db).await;

    let mut o = new_order("o-1", 1);
    o.register_event(OrderPaid { n: 1 });
    outbox.save(&mut o).await.expect("save");
    let mut a = new_account("a-1");
    a.register_event(MoneyDeposited { amount: 1 });
    outbox.save(&mut a).await.expect("save account");
    let mut big = new_order("o-big", 0);
    for i in 0..1_100 {
        big.register_event(OrderPlaced { amount: i });
    }
    outbox.save(&mut big).await.expect("large save");

    assert_eq!(count(&t.db, "outbox", "status = 3").await, 2 + 2 + 1_101);
    assert_eq!(count(&t.db, "outbox", "status <> 3").await, 0);
    assert_eq!(
        count(
            &t.db,
            "outbox",
            "aggregateid = 'a-1' AND sequence IN (1, 2)"
        )
        .await,
        2
    );
    assert_eq!(
        count(&t.db, "outbox", "aggregateid = 'o-big' AND sequence = 1101").await,
        1
    );
    assert_eq!(count(&t.db, "outbox_delivery", "1 = 1").await, 1);
    let changes = slot.changes(&t.db).await;
    assert!(changes.messages.is_empty(), "rows, no messages");
    assert_eq!(changes.outbox_inserts, 2 + 2 + 1_101);

    let publisher = InMemoryPublisher::new();
    let relay = Relay::builder(t.db.clone(), publisher.clone()).build();
    let report = relay.run_once().await.expect("relay cycle");
    assert_eq!(report.claimed(), 0);
    assert_eq!(publisher.calls(), 0);
    assert_eq!(
        outbox_seaorm::relay::pending_count(&t.db)
            .await
            .expect("pending"),
        0
    );
    assert_eq!(
        outbox_seaorm::relay::dead_count(&t.db).await.expect("dead"),
        0
    );
    assert_eq!(count(&t.db, "outbox", "status = 3").await, 1_105);
    slot.drop(&t.db).await;
}

/// Cleanup deletes captured rows once older than the published retention, counted from their
/// save, but never one whose in-process delivery is not done, nor a pending row.
async fn cleanup_deletes_old_captured_rows(t: TestDb) {
    let outbox = setup(&t, Capture::LogTable).await;
    let slot = Slot::create(&t.db).await;
    let mut o = new_order("o-1", 1);
    o.register_event(OrderPlaced { amount: 2 });
    outbox.save(&mut o).await.expect("save");
    // A captured row whose delivery never ran (after_commit not called).
    let mut p = new_order("o-2", 1);
    p.events = DomainEvents::new();
    p.register_event(OrderPaid { n: 1 });
    let txn = t.db.begin().await.expect("begin");
    let written = outbox.save_in(&txn, &p).await.expect("save_in");
    txn.commit().await.expect("commit");
    assert_eq!(written.deliveries(), 1);
    drop(written);
    // A pending row of the table relay.
    let table = Outbox::builder(t.db.clone())
        .handlers(HandlerRegistry::new())
        .build();
    let mut q = new_order("o-3", 1);
    table.save(&mut q).await.expect("table save");
    assert_eq!(count(&t.db, "outbox", "status = 3").await, 3);
    assert_eq!(count(&t.db, "outbox", "status = 0").await, 1);

    let cleanup = Cleanup::builder(t.db.clone())
        .published_retention(Duration::from_secs(3600))
        .build();
    assert_eq!(
        cleanup.run_once().await.expect("cleanup").outbox(),
        0,
        "too young"
    );
    exec(
        &t.db,
        "UPDATE outbox SET created_at = created_at - 7200000000",
    )
    .await;
    let report = cleanup.run_once().await.expect("cleanup");
    assert_eq!(report.outbox(), 2);
    assert_eq!(count(&t.db, "outbox", "aggregateid = 'o-1'").await, 0);
    assert_eq!(
        count(&t.db, "outbox", "aggregateid = 'o-2' AND status = 3").await,
        1,
        "its delivery is pending"
    );
    assert_eq!(
        count(&t.db, "outbox", "aggregateid = 'o-3' AND status = 0").await,
        1
    );
    slot.drop(&t.db).await;
}

/// Without logical decoding (MariaDB, SQLite) both log modes are refused and write nothing,
/// through every entry.
async fn log_modes_refused_without_logical_decoding(t: TestDb) {
    let backend = t.db.get_database_backend();
    create_tables(&t).await;
    for capture in [Capture::LogTable, Capture::Messages] {
        let outbox = outbox(&t, capture);
        let unsupported = |err: Error| match err {
            Error::CaptureUnsupported {
                capture: c,
                backend: b,
            } => assert_eq!((c, b), (capture, backend)),
            other => panic!("expected CaptureUnsupported, got {other:?}"),
        };
        let mut o = new_order("o-1", 1);
        unsupported(outbox.save(&mut o).await.expect_err("save"));
        assert_eq!(o.pending_events().len(), 1, "keeps its event");
        let mut a = new_account("a-1");
        unsupported(outbox.save(&mut a).await.expect_err("save versioned"));
        assert_eq!(a.version, 0);

        let mut uow = outbox.begin().await.expect("begin");
        unsupported(uow.save(&mut o).await.expect_err("uow save"));
        assert!(uow.commit().await.is_err());

        let txn = t.db.begin().await.expect("begin");
        let o = new_order("o-1", 1);
        unsupported(outbox.save_in(&txn, &o).await.expect_err("save_in"));
        unsupported(outbox.write(&txn, &o).await.expect_err("write"));
        unsupported(
            outbox_seaorm::write_events_with(&txn, &o, outbox.handlers(), Duration::ZERO, capture)
                .await
                .expect_err("write_events_with"),
        );
        txn.commit().await.expect("commit");

        for table in [
            "orders",
            "accounts",
            "outbox",
            "outbox_sequence",
            "outbox_delivery",
        ] {
            assert_eq!(
                count(&t.db, table, "1 = 1").await,
                0,
                "{table} after {capture:?}"
            );
        }
    }
    let message = Error::CaptureUnsupported {
        capture: Capture::Messages,
        backend,
    }
    .to_string();
    assert!(message.contains("PostgreSQL"), "{message}");
    // Table mode still works there.
    let outbox = outbox(&t, Capture::Table);
    let mut o = new_order("o-1", 1);
    outbox.save(&mut o).await.expect("table save");
    assert_eq!(count(&t.db, "outbox", "status = 0").await, 1);
}

/// One PostgreSQL test per body.
macro_rules! pg_tests {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let test = concat!(module_path!(), "::", stringify!($name));
                if let Some(t) = super::fresh(super::Backend::Postgres, test).await {
                    super::$name(t).await;
                }
            }
        }
    )*};
}

/// Without a pgoutput slot in the database, a log-mode save is refused and writes nothing (its
/// events would never reach the log relay); once a slot exists it goes through.
async fn log_modes_refused_without_a_slot(t: TestDb) {
    let mut first = true;
    for capture in [Capture::LogTable, Capture::Messages] {
        let outbox = if std::mem::take(&mut first) {
            setup(&t, capture).await
        } else {
            outbox(&t, capture)
        };
        let mut o = new_order(&format!("o-{capture:?}"), 1);
        let err = outbox.save(&mut o).await.expect_err("no slot yet");
        assert!(
            matches!(err, Error::NoLogSlot { capture: c } if c == capture),
            "{err:?}"
        );
        assert!(err.is_retryable());
        assert_eq!(o.pending_events().len(), 1, "keeps its event");
        let mut uow = outbox.begin().await.expect("begin");
        assert!(matches!(
            uow.save(&mut o).await,
            Err(Error::NoLogSlot { .. })
        ));
        drop(uow);
        // The free functions check too.
        let txn = t.db.begin().await.expect("begin");
        let free =
            outbox_seaorm::write_events_with(&txn, &o, outbox.handlers(), Duration::ZERO, capture);
        assert!(matches!(free.await, Err(Error::NoLogSlot { .. })));
        let free =
            outbox_seaorm::save_in_with(&txn, &o, outbox.handlers(), Duration::ZERO, capture);
        assert!(matches!(free.await, Err(Error::NoLogSlot { .. })));
        txn.rollback().await.expect("rollback");
        assert_eq!(count(&t.db, "orders", "1 = 1").await, 0);
        assert_eq!(count(&t.db, "outbox", "1 = 1").await, 0);
        let slot = Slot::create(&t.db).await;
        outbox
            .save(&mut o)
            .await
            .expect("saved once the slot exists");
        assert!(o.pending_events().is_empty());
        slot.drop(&t.db).await;
        exec(&t.db, "DELETE FROM orders").await;
        exec(&t.db, "DELETE FROM outbox").await;
    }
}

pg_tests!(
    log_modes_refused_without_a_slot,
    messages_unversioned,
    messages_versioned,
    messages_roll_back_with_the_transaction,
    messages_with_handlers_keep_a_captured_row,
    messages_of_a_large_save,
    log_table_rows_are_captured,
    cleanup_deletes_old_captured_rows,
);

mod log_modes_refused_without_logical_decoding {
    use outbox_tests::{Backend, fresh};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        let test = "capture::log_modes_refused_without_logical_decoding";
        if let Some(t) = fresh(Backend::Sqlite, test).await {
            super::log_modes_refused_without_logical_decoding(t).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mariadb() {
        let test = "capture::log_modes_refused_without_logical_decoding";
        if let Some(t) = fresh(Backend::MariaDb, test).await {
            super::log_modes_refused_without_logical_decoding(t).await;
        }
    }
}
