//! Stable handler ids: `#[event_handler(id = "...")]` is the key of a handler's rows, two
//! handlers with one id are refused when the registry is built, rows of a handler id nobody
//! here has are counted and left alone, and `rename_handler` moves them to a new id.

use std::time::Duration;

use outbox_core::{
    AggregateRoot, DeferredDispatcher, DomainEvent, DomainEvents, EventContext, HandlerError,
    HandlerRegistry, InlineDispatcher, event_handler, handler,
};
use outbox_seaorm::inbox::{Inbox, Processed};
use outbox_seaorm::{DeliveryWorker, Outbox, RenameError, RenamedRows, TransactionExt};
use outbox_tests::{TestDb, db_tests};
use sea_orm::{ConnectionTrait, DbBackend, Statement, Value};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
#[event(name = "ParcelShipped")]
struct ParcelShipped {
    n: i64,
}

#[derive(AggregateRoot)]
struct Parcel {
    #[aggregate(id)]
    id: String,
    #[aggregate(events)]
    events: DomainEvents,
}

/// Records its run through the delivery transaction.
async fn record(ctx: &EventContext<'_>, who: &str) -> Result<(), HandlerError> {
    let txn = ctx.transaction()?;
    let backend = txn.get_database_backend();
    txn.execute_raw(stmt(
        backend,
        "INSERT INTO runs (event_id, handler) VALUES (?, ?)",
        vec![ctx.event_id().to_string().into(), who.into()],
    ))
    .await?;
    Ok(())
}

mod v1 {
    use super::*;

    /// The handler as first deployed, with a stable id.
    #[event_handler(id = "shipping.notify")]
    pub(crate) async fn notify(
        _event: &ParcelShipped,
        ctx: &EventContext<'_>,
    ) -> Result<(), HandlerError> {
        record(ctx, "v1").await
    }
}

mod v2 {
    use super::*;

    /// Moved to another module and renamed: the id is kept, so its rows are still its own.
    #[event_handler(id = "shipping.notify")]
    pub(crate) async fn send_notification(
        _event: &ParcelShipped,
        ctx: &EventContext<'_>,
    ) -> Result<(), HandlerError> {
        record(ctx, "v2").await
    }
}

mod v3 {
    use super::*;

    /// Given a new id: the rows of the old one are nobody's until renamed.
    #[event_handler(id = "shipping.notify-customer")]
    pub(crate) async fn notify_customer(
        _event: &ParcelShipped,
        ctx: &EventContext<'_>,
    ) -> Result<(), HandlerError> {
        record(ctx, "v3").await
    }
}

/// Rewrites `?` placeholders to `$n` on PostgreSQL.
fn stmt(backend: DbBackend, sql: &str, values: Vec<Value>) -> Statement {
    let mut out = String::new();
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' && backend == DbBackend::Postgres {
            n += 1;
            out.push_str(&format!("${n}"));
        } else {
            out.push(c);
        }
    }
    Statement::from_sql_and_values(backend, out, values)
}

async fn strings(db: &impl ConnectionTrait, sql: &str) -> Vec<String> {
    db.query_all_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .expect("query")
        .into_iter()
        .map(|r| r.try_get_by_index::<String>(0).expect("string"))
        .collect()
}

/// (handler, status, attempts, next attempt) of every delivery row, by event id.
async fn delivery_rows(db: &impl ConnectionTrait) -> Vec<(String, i16, i32, i64)> {
    db.query_all_raw(Statement::from_string(
        db.get_database_backend(),
        "SELECT handler, status, attempts, next_attempt_at FROM outbox_delivery ORDER BY event_id",
    ))
    .await
    .expect("query")
    .into_iter()
    .map(|r| {
        (
            r.try_get_by_index(0).expect("handler"),
            r.try_get_by_index(1).expect("status"),
            r.try_get_by_index(2).expect("attempts"),
            r.try_get_by_index(3).expect("next_attempt_at"),
        )
    })
    .collect()
}

async fn ship(outbox: &Outbox, id: &str) -> String {
    let mut parcel = Parcel {
        id: id.to_owned(),
        events: DomainEvents::new(),
    };
    parcel.register_event(ParcelShipped { n: 1 });
    let event_id = parcel.events.as_slice()[0].id().to_string();
    let mut uow = outbox.begin().await.expect("begin");
    uow.record(&mut parcel).await.expect("record");
    uow.commit().await.expect("commit");
    event_id
}

#[test]
fn explicit_registration_carries_the_id() {
    assert_eq!(handler!(v1::notify).id(), "shipping.notify");
    assert_eq!(
        handler!(v1::notify).function(),
        "handler_ids::v1::notify",
        "the function path is kept beside the id"
    );
    assert_eq!(
        handler!(v3::notify_customer).id(),
        "shipping.notify-customer"
    );
}

#[test]
fn two_handlers_with_one_id_are_refused() {
    // This binary links both v1::notify and v2::send_notification under "shipping.notify".
    let err = HandlerRegistry::try_from_inventory().expect_err("duplicate id");
    assert_eq!(err.id, "shipping.notify");
    assert_eq!(err.group, None);
    let mut both = [err.first, err.second];
    both.sort_unstable();
    assert_eq!(
        both,
        [
            "handler_ids::v1::notify",
            "handler_ids::v2::send_notification"
        ]
    );
    let message = err.to_string();
    assert!(message.contains("handler_ids::v1::notify"), "{message}");
    assert!(
        message.contains("handler_ids::v2::send_notification"),
        "{message}"
    );
    assert!(message.contains("`shipping.notify`"), "{message}");

    let err = HandlerRegistry::new()
        .try_with(handler!(v1::notify))
        .and_then(|r| r.try_with(handler!(v2::send_notification)))
        .expect_err("duplicate id");
    assert_eq!(
        (err.first, err.second),
        (
            "handler_ids::v1::notify",
            "handler_ids::v2::send_notification"
        )
    );

    // The same handler twice is no conflict.
    let registry = HandlerRegistry::new()
        .try_with(handler!(v1::notify))
        .and_then(|r| r.try_with(handler!(v1::notify)))
        .expect("same handler");
    assert_eq!(registry.iter().count(), 1);
    assert!(registry.check().is_ok());

    // The infallible path keeps the first one and remembers the conflict.
    let registry = HandlerRegistry::new()
        .with(handler!(v1::notify))
        .with(handler!(v2::send_notification));
    assert_eq!(registry.iter().count(), 1);
    assert_eq!(
        registry.get("shipping.notify", None).map(|h| h.function()),
        Some("handler_ids::v1::notify")
    );
    let err = registry.check().expect_err("conflict remembered");
    assert_eq!(err.second, "handler_ids::v2::send_notification");
    assert!(HandlerRegistry::from_inventory().check().is_err());
}

#[tokio::test]
async fn kafka_consumer_refuses_a_registry_with_a_duplicate_id() {
    let Some(t) = outbox_tests::fresh(outbox_tests::Backend::Sqlite, "handler_ids::kafka").await
    else {
        return;
    };
    let err = outbox_kafka::KafkaConsumer::builder(
        "127.0.0.1:1",
        "g",
        t.db.clone(),
        HandlerRegistry::from_inventory(),
    )
    .build()
    .await
    .expect_err("duplicate id");
    assert!(
        matches!(err, outbox_kafka::SetupError::DuplicateHandlerId(ref d) if d.id == "shipping.notify"),
        "{err}"
    );
}

#[tokio::test]
async fn outbox_try_build_refuses_a_registry_with_a_duplicate_id() {
    let Some(t) = outbox_tests::fresh(outbox_tests::Backend::Sqlite, "handler_ids::outbox").await
    else {
        return;
    };
    let duplicated = HandlerRegistry::new()
        .with(handler!(v1::notify))
        .with(handler!(v2::send_notification));
    let err = outbox_seaorm::Outbox::builder(t.db.clone())
        .handlers(duplicated)
        .try_build()
        .expect_err("duplicate id");
    assert_eq!(err.id, "shipping.notify");
    let err = outbox_seaorm::Outbox::builder(t.db.clone())
        .try_build()
        .expect_err("the inventory has the duplicate too");
    assert_eq!(err.id, "shipping.notify");
    outbox_seaorm::Outbox::builder(t.db.clone())
        .handlers(HandlerRegistry::new().with(handler!(v1::notify)))
        .try_build()
        .expect("one handler per id");
}

async fn create_runs(t: &TestDb) {
    t.db.execute_unprepared(
        "CREATE TABLE runs (event_id VARCHAR(36) NOT NULL, handler VARCHAR(16) NOT NULL)",
    )
    .await
    .expect("create runs");
}

/// The explicit id is the key of the delivery row, and a handler moved and renamed in the code
/// but keeping the id runs the rows written before the move.
async fn explicit_id_keys_the_delivery_rows(t: TestDb) {
    create_runs(&t).await;
    let v1 = Outbox::builder(t.db.clone())
        .handlers(HandlerRegistry::new().with(handler!(v1::notify)))
        .dispatcher(DeferredDispatcher)
        .delivery_grace(Duration::ZERO)
        .build();
    let event_id = ship(&v1, "p-1").await;
    assert_eq!(
        strings(&t.db, "SELECT handler FROM outbox_delivery").await,
        ["shipping.notify"]
    );
    // The next deploy has the function elsewhere, under another name, with the same id.
    let v2 = Outbox::builder(t.db.clone())
        .handlers(HandlerRegistry::new().with(handler!(v2::send_notification)))
        .dispatcher(InlineDispatcher)
        .build();
    assert_eq!(DeliveryWorker::new(v2).run_once().await.expect("round"), 1);
    assert_eq!(
        strings(&t.db, "SELECT handler FROM runs").await,
        ["v2"],
        "run by the renamed function"
    );
    assert_eq!(
        strings(&t.db, "SELECT event_id FROM runs").await,
        [event_id]
    );
}

/// Rows of an id no handler here has are not claimed (so not retried in a loop), are counted,
/// and run once `rename_handler` moved them to the new id.
async fn unknown_rows_are_counted_then_renamed(t: TestDb) {
    create_runs(&t).await;
    let v1 = Outbox::builder(t.db.clone())
        .handlers(HandlerRegistry::new().with(handler!(v1::notify)))
        .dispatcher(DeferredDispatcher)
        .delivery_grace(Duration::ZERO)
        .build();
    ship(&v1, "p-1").await;
    ship(&v1, "p-2").await;
    let state = || delivery_rows(&t.db);
    let before = state().await;

    let v3 = Outbox::builder(t.db.clone())
        .handlers(HandlerRegistry::new().with(handler!(v3::notify_customer)))
        .dispatcher(InlineDispatcher)
        .build();
    let worker = DeliveryWorker::new(v3.clone());
    assert_eq!(
        worker.run_once().await.expect("round"),
        0,
        "nothing claimed"
    );
    assert_eq!(
        state().await,
        before,
        "the rows are left exactly as they were"
    );
    assert_eq!(
        worker.unknown_handler_rows().await.expect("count"),
        [("shipping.notify".to_owned(), 2)]
    );
    assert!(strings(&t.db, "SELECT handler FROM runs").await.is_empty());

    assert!(matches!(
        outbox_seaorm::rename_handler(&t.db, None, "shipping.notify", "").await,
        Err(RenameError::BadKey { .. })
    ));
    let renamed =
        outbox_seaorm::rename_handler(&t.db, None, "shipping.notify", "shipping.notify-customer")
            .await
            .expect("rename");
    assert_eq!((renamed.moved, renamed.merged), (2, 0));
    assert!(
        worker
            .unknown_handler_rows()
            .await
            .expect("count")
            .is_empty()
    );
    assert_eq!(worker.run_once().await.expect("round"), 2);
    assert_eq!(
        strings(&t.db, "SELECT handler FROM runs").await,
        ["v3", "v3"]
    );
    // Renaming again finds nothing.
    assert_eq!(
        outbox_seaorm::rename_handler(&t.db, None, "shipping.notify", "shipping.notify-customer")
            .await
            .expect("rename"),
        RenamedRows::default()
    );
}

/// A consumer handler.
#[event_handler(id = "audit.record", group = "audit")]
async fn audit(_event: &ParcelShipped, ctx: &EventContext<'_>) -> Result<(), HandlerError> {
    record(ctx, "audit").await
}

/// A consumer handler's inbox rows follow its rename, so what it applied is not applied again.
async fn rename_moves_inbox_rows(t: TestDb) {
    create_runs(&t).await;
    let handler = handler!(audit);
    let first = ParcelShipped { n: 1 }.to_envelope_for_test("p-1");
    let second = ParcelShipped { n: 2 }.to_envelope_for_test("p-2");
    for envelope in [&first, &second] {
        assert_eq!(
            Inbox::process(&t.db, "audit/audit.record", &handler, envelope, 1)
                .await
                .expect("apply"),
            Processed::Applied
        );
    }
    // The new key already has the second event (a consumer of the new binary ran meanwhile).
    assert_eq!(
        Inbox::process(&t.db, "audit/audit.log", &handler, &second, 1)
            .await
            .expect("apply"),
        Processed::Applied
    );
    let renamed = outbox_seaorm::rename_handler(&t.db, Some("audit"), "audit.record", "audit.log")
        .await
        .expect("rename");
    assert_eq!((renamed.moved, renamed.merged), (1, 1));
    for envelope in [&first, &second] {
        assert_eq!(
            Inbox::process(&t.db, "audit/audit.log", &handler, envelope, 1)
                .await
                .expect("apply"),
            Processed::Duplicate,
            "applied under the old id, not again under the new one"
        );
    }
    assert_eq!(
        strings(&t.db, "SELECT consumer FROM outbox_inbox ORDER BY consumer").await,
        ["audit/audit.log", "audit/audit.log"]
    );
}

trait ForTest {
    fn to_envelope_for_test(self, aggregate: &str) -> outbox_core::Envelope;
}

impl ForTest for ParcelShipped {
    fn to_envelope_for_test(self, aggregate: &str) -> outbox_core::Envelope {
        outbox_core::Envelope::builder(Self::NAME, "Parcel", aggregate)
            .sequence(1)
            .payload(serde_json::to_string(&self).expect("json"))
            .build()
    }
}

db_tests!(
    explicit_id_keys_the_delivery_rows,
    unknown_rows_are_counted_then_renamed,
    rename_moves_inbox_rows,
);
