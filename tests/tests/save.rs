//! The save path: entity and events commit or roll back together, in order, with gapless
//! per-aggregate sequence numbers, also under concurrency.

use std::collections::{HashMap, HashSet};

use outbox_core::{AggregateRoot, DomainEvent, DomainEvents, HandlerRegistry, InlineDispatcher};
use outbox_seaorm::{Error, Outbox};
use outbox_tests::{TestDb, db_tests};
use sea_orm::{ConnectionTrait, DbBackend, EntityTrait, Schema, Statement, Value};
use serde::{Deserialize, Serialize};

mod order {
    use outbox_core::{AggregateRoot, DomainEvents};
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "orders")]
    pub(crate) struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub(crate) id: String,
        pub(crate) status: String,
        pub(crate) amount: i64,
        #[sea_orm(ignore)]
        pub(crate) events: DomainEvents,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub(crate) enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}

    impl AggregateRoot for Model {
        const AGGREGATE_TYPE: &'static str = "Order";
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
}

/// An aggregate with a composite primary key, implemented by hand.
mod line {
    use outbox_core::{AggregateRoot, DomainEvents};
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "order_lines")]
    pub(crate) struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub(crate) order_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub(crate) line_no: i32,
        pub(crate) sku: String,
        #[sea_orm(ignore)]
        pub(crate) events: DomainEvents,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub(crate) enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}

    impl AggregateRoot for Model {
        const AGGREGATE_TYPE: &'static str = "OrderLine";
        fn aggregate_id(&self) -> String {
            format!("{}/{}", self.order_id, self.line_no)
        }
        fn pending_events(&self) -> &DomainEvents {
            &self.events
        }
        fn pending_events_mut(&mut self) -> &mut DomainEvents {
            &mut self.events
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct OrderPlaced {
    amount: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct OrderPaid {
    n: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct OrderDeleted {
    reason: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct LineAdded {
    sku: String,
}

/// serde_json refuses maps with non-string keys: this event never serializes.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Unserializable {
    tags: HashMap<(u32, u32), String>,
}

macro_rules! event {
    ($ty:ty, $name:literal, $version:literal, $topic:expr) => {
        impl DomainEvent for $ty {
            const NAME: &'static str = $name;
            const VERSION: u32 = $version;
            const TOPIC: Option<&'static str> = $topic;
        }
    };
}
event!(OrderPlaced, "OrderPlaced", 2, None);
event!(OrderPaid, "OrderPaid", 1, Some("payments"));
event!(OrderDeleted, "OrderDeleted", 1, None);
event!(LineAdded, "LineAdded", 1, None);
event!(Unserializable, "OrderTagged", 1, None);

fn new_order(id: &str, amount: i64) -> order::Model {
    let mut o = order::Model {
        id: id.to_owned(),
        status: "PENDING".to_owned(),
        amount,
        events: DomainEvents::new(),
    };
    o.register_event(OrderPlaced { amount });
    o
}

async fn setup(t: &TestDb) -> Outbox {
    let backend = t.db.get_database_backend();
    let schema = Schema::new(backend);
    t.db.execute(&schema.create_table_from_entity(order::Entity))
        .await
        .expect("create orders");
    t.db.execute(&schema.create_table_from_entity(line::Entity))
        .await
        .expect("create order_lines");
    Outbox::builder(t.db.clone())
        .handlers(HandlerRegistry::new())
        .dispatcher(InlineDispatcher)
        .build()
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

async fn count(db: &impl ConnectionTrait, sql: &str, values: Vec<Value>) -> i64 {
    let backend = db.get_database_backend();
    db.query_one_raw(stmt(backend, sql, values))
        .await
        .expect("count query")
        .expect("count row")
        .try_get_by_index::<i64>(0)
        .expect("count value")
}

#[derive(Debug, PartialEq)]
struct OutboxRow {
    id: String,
    aggregate_type: String,
    aggregate_id: String,
    event_type: String,
    version: i32,
    sequence: i64,
    payload: serde_json::Value,
    metadata: Option<String>,
    topic: Option<String>,
    shard: i16,
    status: i16,
}

async fn outbox_rows(db: &impl ConnectionTrait, aggregate_id: &str) -> Vec<OutboxRow> {
    let backend = db.get_database_backend();
    let rows = db
        .query_all_raw(stmt(
            backend,
            "SELECT id, aggregatetype, aggregateid, type, version, sequence, payload, metadata, \
             topic, shard, status FROM outbox WHERE aggregateid = ? ORDER BY position",
            vec![aggregate_id.into()],
        ))
        .await
        .expect("outbox rows");
    rows.into_iter()
        .map(|r| OutboxRow {
            id: r.try_get_by_index(0).expect("id"),
            aggregate_type: r.try_get_by_index(1).expect("aggregatetype"),
            aggregate_id: r.try_get_by_index(2).expect("aggregateid"),
            event_type: r.try_get_by_index(3).expect("type"),
            version: r.try_get_by_index(4).expect("version"),
            sequence: r.try_get_by_index(5).expect("sequence"),
            payload: serde_json::from_str(&r.try_get_by_index::<String>(6).expect("payload"))
                .expect("payload json"),
            metadata: r.try_get_by_index(7).expect("metadata"),
            topic: r.try_get_by_index(8).expect("topic"),
            shard: r.try_get_by_index(9).expect("shard"),
            status: r.try_get_by_index(10).expect("status"),
        })
        .collect()
}

async fn insert_then_update_with_ordered_sequences(t: TestDb) {
    let outbox = setup(&t).await;
    let mut o = new_order("o-1", 1250);
    o.register_event(OrderPaid { n: 1 });
    o.register_event(OrderPaid { n: 2 });
    let ids: Vec<String> = o
        .events
        .as_slice()
        .iter()
        .map(|e| e.id().to_string())
        .collect();
    let meta = outbox_core::EventMetadata::new().with_correlation_id("req-7");
    outbox_core::context::with_metadata(meta, async {
        o.register_event(OrderPaid { n: 3 });
    })
    .await;
    outbox.save(&mut o).await.expect("save");
    assert!(o.events.is_empty(), "saved events stay on the aggregate");

    let stored = order::Entity::find_by_id("o-1".to_owned())
        .one(&t.db)
        .await
        .expect("find")
        .expect("row");
    assert_eq!((stored.status.as_str(), stored.amount), ("PENDING", 1250));

    let rows = outbox_rows(&t.db, "o-1").await;
    assert_eq!(rows.len(), 4);
    assert_eq!(
        rows.iter().map(|r| r.sequence).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert_eq!(
        rows[..3].iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
        ids
    );
    assert_eq!(rows[0].event_type, "OrderPlaced");
    assert_eq!(rows[0].version, 2);
    assert_eq!(rows[0].payload, serde_json::json!({ "amount": 1250 }));
    assert_eq!(rows[0].topic, None);
    assert_eq!(rows[0].metadata, None);
    assert_eq!(rows[1].payload, serde_json::json!({ "n": 1 }));
    assert_eq!(rows[1].topic.as_deref(), Some("payments"));
    let meta: serde_json::Value =
        serde_json::from_str(rows[3].metadata.as_deref().expect("metadata")).expect("json");
    assert_eq!(meta["correlation_id"], "req-7");
    for r in &rows {
        assert_eq!(r.aggregate_type, "Order");
        assert_eq!(r.aggregate_id, "o-1");
        assert_eq!(r.shard, outbox_seaorm::shard_of("Order", "o-1"));
        assert_eq!(r.status, 0);
    }

    // The update path: every column is written, the sequence goes on.
    o.status = "PAID".to_owned();
    o.amount = 1300;
    o.register_event(OrderPaid { n: 4 });
    o.register_event(OrderPaid { n: 5 });
    outbox.save(&mut o).await.expect("second save");
    let stored = order::Entity::find_by_id("o-1".to_owned())
        .one(&t.db)
        .await
        .expect("find")
        .expect("row");
    assert_eq!((stored.status.as_str(), stored.amount), ("PAID", 1300));
    assert_eq!(count(&t.db, "SELECT COUNT(*) FROM orders", vec![]).await, 1);
    let rows = outbox_rows(&t.db, "o-1").await;
    assert_eq!(
        rows.iter().map(|r| r.sequence).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6]
    );
    assert_eq!(rows[5].payload, serde_json::json!({ "n": 5 }));
    assert_eq!(
        count(
            &t.db,
            "SELECT last_sequence FROM outbox_sequence WHERE aggregateid = ?",
            vec!["o-1".into()]
        )
        .await,
        6
    );

    // A save without events only writes the entity.
    o.status = "SHIPPED".to_owned();
    outbox.save(&mut o).await.expect("save without events");
    assert_eq!(outbox_rows(&t.db, "o-1").await.len(), 6);
}

async fn composite_key_upserts(t: TestDb) {
    let outbox = setup(&t).await;
    let mut l = line::Model {
        order_id: "o-9".to_owned(),
        line_no: 2,
        sku: "A".to_owned(),
        events: DomainEvents::new(),
    };
    l.register_event(LineAdded {
        sku: "A".to_owned(),
    });
    outbox.save(&mut l).await.expect("insert");
    l.sku = "B".to_owned();
    l.register_event(LineAdded {
        sku: "B".to_owned(),
    });
    outbox.save(&mut l).await.expect("update");
    let lines = line::Entity::find().all(&t.db).await.expect("lines");
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0].sku, "B");
    let rows = outbox_rows(&t.db, "o-9/2").await;
    assert_eq!(rows.iter().map(|r| r.sequence).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(rows[1].aggregate_type, "OrderLine");
}

async fn delete_writes_its_events(t: TestDb) {
    let outbox = setup(&t).await;
    let mut o = new_order("o-2", 10);
    outbox.save(&mut o).await.expect("save");
    o.register_event(OrderDeleted {
        reason: "customer".to_owned(),
    });
    outbox.delete(&mut o).await.expect("delete");
    assert!(o.events.is_empty());
    assert_eq!(count(&t.db, "SELECT COUNT(*) FROM orders", vec![]).await, 0);
    let rows = outbox_rows(&t.db, "o-2").await;
    assert_eq!(
        rows.iter()
            .map(|r| (r.event_type.as_str(), r.sequence))
            .collect::<Vec<_>>(),
        [("OrderPlaced", 1), ("OrderDeleted", 2)]
    );

    // Deleting again: no row, nothing written, the event stays.
    o.register_event(OrderDeleted {
        reason: "twice".to_owned(),
    });
    let err = outbox.delete(&mut o).await.expect_err("no row to delete");
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
    assert!(!err.is_retryable());
    assert_eq!(o.events.len(), 1);
    assert_eq!(outbox_rows(&t.db, "o-2").await.len(), 2);
}

async fn unserializable_event_writes_nothing(t: TestDb) {
    let outbox = setup(&t).await;
    let mut o = new_order("o-3", 5);
    let mut tags = HashMap::new();
    tags.insert((1, 2), "x".to_owned());
    o.register_event(Unserializable { tags });
    let err = outbox.save(&mut o).await.expect_err("must not serialize");
    match &err {
        Error::Event {
            index,
            aggregate_id,
            source,
            ..
        } => {
            assert_eq!(*index, 1);
            assert_eq!(aggregate_id, "o-3");
            assert!(
                source.to_string().contains("OrderTagged"),
                "the error names the event: {source}"
            );
        }
        other => panic!("unexpected error {other:?}"),
    }
    assert!(!err.is_retryable());
    assert_eq!(o.events.len(), 2, "the aggregate keeps its events");
    assert_eq!(count(&t.db, "SELECT COUNT(*) FROM orders", vec![]).await, 0);
    assert_eq!(count(&t.db, "SELECT COUNT(*) FROM outbox", vec![]).await, 0);
    assert_eq!(
        count(&t.db, "SELECT COUNT(*) FROM outbox_sequence", vec![]).await,
        0
    );
}

async fn unit_of_work_commits_or_rolls_back_as_one(t: TestDb) {
    let outbox = setup(&t).await;
    let backend = t.db.get_database_backend();

    // Two aggregates, a recorded one and an own write, committed together.
    let mut a = new_order("u-a", 1);
    let mut b = new_order("u-b", 2);
    let mut c = new_order("u-c", 3);
    let mut uow = outbox.begin().await.expect("begin");
    uow.save(&mut a).await.expect("save a");
    uow.save(&mut b).await.expect("save b");
    uow.execute_raw(stmt(
        backend,
        "INSERT INTO orders (id, status, amount) VALUES (?, ?, ?)",
        vec!["u-c".into(), "OWN".into(), 3i64.into()],
    ))
    .await
    .expect("own write");
    uow.record(&mut c).await.expect("record c");
    uow.commit().await.expect("commit");
    assert!(a.events.is_empty() && b.events.is_empty() && c.events.is_empty());
    assert_eq!(count(&t.db, "SELECT COUNT(*) FROM orders", vec![]).await, 3);
    assert_eq!(count(&t.db, "SELECT COUNT(*) FROM outbox", vec![]).await, 3);

    // A later statement fails: the caller rolls back, nothing of the unit stays.
    let mut d = new_order("u-d", 4);
    let mut uow = outbox.begin().await.expect("begin");
    uow.save(&mut d).await.expect("save d");
    let failed = uow
        .execute_raw(stmt(
            backend,
            "INSERT INTO orders (id, status, amount) VALUES (?, ?, ?)",
            vec!["u-a".into(), "DUP".into(), 0i64.into()],
        ))
        .await;
    assert!(failed.is_err(), "duplicate key must fail");
    uow.rollback().await.expect("rollback");
    assert_eq!(d.events.len(), 1, "events survive a rollback");
    assert_eq!(
        count(
            &t.db,
            "SELECT COUNT(*) FROM orders WHERE id = 'u-d'",
            vec![]
        )
        .await,
        0
    );
    assert_eq!(count(&t.db, "SELECT COUNT(*) FROM outbox", vec![]).await, 3);

    // Dropped without commit: the same.
    {
        let mut uow = outbox.begin().await.expect("begin");
        uow.save(&mut d).await.expect("save d");
    }
    assert_eq!(d.events.len(), 1);
    assert_eq!(
        count(
            &t.db,
            "SELECT COUNT(*) FROM orders WHERE id = 'u-d'",
            vec![]
        )
        .await,
        0
    );
    assert_eq!(count(&t.db, "SELECT COUNT(*) FROM outbox", vec![]).await, 3);

    // One of its own operations fails: the unit can only roll back.
    let mut e = new_order("u-e", 5);
    let mut bad = new_order("u-f", 6);
    bad.register_event(Unserializable {
        tags: HashMap::from([((0, 0), "x".to_owned())]),
    });
    let mut uow = outbox.begin().await.expect("begin");
    uow.save(&mut e).await.expect("save e");
    assert!(matches!(uow.save(&mut bad).await, Err(Error::Event { .. })));
    assert!(matches!(uow.commit().await, Err(Error::Aborted)));
    assert_eq!((e.events.len(), bad.events.len()), (1, 2));
    assert_eq!(count(&t.db, "SELECT COUNT(*) FROM orders", vec![]).await, 3);
    assert_eq!(count(&t.db, "SELECT COUNT(*) FROM outbox", vec![]).await, 3);

    // Retried after the rollback, the same events are written, once, sequence 1.
    outbox.save(&mut d).await.expect("save d again");
    let rows = outbox_rows(&t.db, "u-d").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].sequence, 1);
}

/// Saves, retrying the errors the database marks as passing (deadlocks on MariaDB).
async fn save_retrying(outbox: &Outbox, o: &mut order::Model) -> usize {
    let mut retries = 0;
    loop {
        match outbox.save(o).await {
            Ok(()) => return retries,
            Err(e) if e.is_retryable() && retries < 20 => retries += 1,
            Err(e) => panic!("save failed: {e:?}"),
        }
    }
}

async fn concurrent_saves_of_different_aggregates(t: TestDb) {
    let outbox = setup(&t).await;
    let started = std::time::Instant::now();
    let tasks: Vec<_> = (0..8)
        .map(|task| {
            let outbox = outbox.clone();
            tokio::spawn(async move {
                let mut o = new_order(&format!("c-{task}"), 0);
                let mut retries = 0;
                for n in 1..=25 {
                    o.amount = n;
                    if n > 1 {
                        o.register_event(OrderPaid { n: n as u32 });
                    }
                    retries += save_retrying(&outbox, &mut o).await;
                }
                retries
            })
        })
        .collect();
    let mut retries = 0;
    for task in tasks {
        retries += task.await.expect("task");
    }
    eprintln!(
        "{:?}: 200 saves in 8 tasks took {:?} ({retries} retried)",
        t.backend,
        started.elapsed()
    );
    assert_eq!(
        count(&t.db, "SELECT COUNT(*) FROM outbox", vec![]).await,
        200
    );
    for task in 0..8 {
        let rows = outbox_rows(&t.db, &format!("c-{task}")).await;
        assert_eq!(
            rows.iter().map(|r| r.sequence).collect::<Vec<_>>(),
            (1..=25).collect::<Vec<i64>>()
        );
    }
}

async fn concurrent_saves_of_one_aggregate(t: TestDb) {
    let outbox = setup(&t).await;
    let mut first = new_order("same", 0);
    outbox.save(&mut first).await.expect("first save");
    let tasks: Vec<_> = (0..8)
        .map(|task| {
            let outbox = outbox.clone();
            let mut o = first.clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for n in 0..10 {
                    o.amount = task * 100 + n;
                    o.register_event(OrderPaid { n: n as u32 });
                    o.register_event(OrderPaid { n: n as u32 });
                    ids.extend(o.events.as_slice().iter().map(|e| e.id().to_string()));
                    save_retrying(&outbox, &mut o).await;
                }
                ids
            })
        })
        .collect();
    let mut expected: HashSet<String> = HashSet::new();
    for task in tasks {
        expected.extend(task.await.expect("task"));
    }
    let rows = outbox_rows(&t.db, "same").await;
    assert_eq!(rows.len(), 161);
    let mut sequences: Vec<i64> = rows.iter().map(|r| r.sequence).collect();
    // Positions follow commit order, and so do sequence numbers within the aggregate.
    assert!(sequences.windows(2).all(|w| w[0] < w[1]), "{sequences:?}");
    sequences.sort_unstable();
    assert_eq!(sequences, (1..=161).collect::<Vec<i64>>());
    let stored: HashSet<String> = rows[1..].iter().map(|r| r.id.clone()).collect();
    assert_eq!(stored, expected, "every event stored once");
}

/// A caller who ignores the failure of their own statement and commits anyway: the events are
/// either stored (MariaDB and SQLite keep the transaction alive) or kept in memory with an error
/// (PostgreSQL aborts the transaction), never dropped from memory unstored.
async fn commit_after_an_ignored_failure_never_loses_events(t: TestDb) {
    let outbox = setup(&t).await;
    let backend = t.db.get_database_backend();
    let mut first = new_order("ig-1", 1);
    outbox.save(&mut first).await.expect("first save");

    let mut d = new_order("ig-2", 2);
    let mut uow = outbox.begin().await.expect("begin");
    uow.save(&mut d).await.expect("save d");
    let failed = uow
        .execute_raw(stmt(
            backend,
            "INSERT INTO orders (id, status, amount) VALUES (?, ?, ?)",
            vec!["ig-1".into(), "DUP".into(), 0i64.into()],
        ))
        .await;
    assert!(failed.is_err(), "duplicate key must fail");
    let committed = uow.commit().await;
    let stored = count(
        &t.db,
        "SELECT COUNT(*) FROM outbox WHERE aggregateid = 'ig-2'",
        vec![],
    )
    .await;
    match committed {
        Ok(()) => {
            assert_eq!(
                stored, 1,
                "commit reported success, so the event must be stored"
            );
            assert!(d.events.is_empty());
        }
        Err(e) => {
            assert_eq!(stored, 0, "commit failed ({e}), so nothing may be stored");
            assert_eq!(d.events.len(), 1, "the events stay with the aggregate");
        }
    }
    if backend == sea_orm::DbBackend::Postgres {
        assert_eq!(
            stored, 0,
            "PostgreSQL aborts the transaction after a failed statement"
        );
    }
}

/// The entity's own write fails (a CHECK constraint): nothing of the save stays, on the
/// servers' single-statement path (PostgreSQL) and transaction path (MariaDB) alike.
async fn a_failing_entity_write_leaves_no_event(t: TestDb) {
    let outbox = setup(&t).await;
    t.db.execute_unprepared(
        "ALTER TABLE orders ADD CONSTRAINT amount_not_negative CHECK (amount >= 0)",
    )
    .await
    .expect("add check");
    let mut bad = new_order("neg", -5);
    let result = outbox.save(&mut bad).await;
    assert!(result.is_err(), "the CHECK constraint must fail the save");
    assert_eq!(bad.events.len(), 1, "the aggregate keeps its event");
    assert_eq!(count(&t.db, "SELECT COUNT(*) FROM outbox", vec![]).await, 0);
    assert_eq!(
        count(&t.db, "SELECT COUNT(*) FROM outbox_sequence", vec![]).await,
        0
    );
    assert_eq!(count(&t.db, "SELECT COUNT(*) FROM orders", vec![]).await, 0);
    // Fixed and saved again: the same event, sequence 1.
    bad.amount = 5;
    outbox.save(&mut bad).await.expect("save");
    let rows = outbox_rows(&t.db, "neg").await;
    assert_eq!(rows.iter().map(|r| r.sequence).collect::<Vec<_>>(), [1]);
}

mod entity_write_failure {
    use outbox_tests::{Backend, fresh};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        if let Some(t) = fresh(Backend::Postgres, "save::entity_write_failure").await {
            super::a_failing_entity_write_leaves_no_event(t).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mariadb() {
        if let Some(t) = fresh(Backend::MariaDb, "save::entity_write_failure").await {
            super::a_failing_entity_write_leaves_no_event(t).await;
        }
    }
}

db_tests!(
    commit_after_an_ignored_failure_never_loses_events,
    insert_then_update_with_ordered_sequences,
    composite_key_upserts,
    delete_writes_its_events,
    unserializable_event_writes_nothing,
    unit_of_work_commits_or_rolls_back_as_one,
    concurrent_saves_of_different_aggregates,
    concurrent_saves_of_one_aggregate,
);
