//! Traces across the broker (feature `opentelemetry`): a save inside a traced operation, the
//! real table relay publishing to the real broker (tansu), and a `KafkaConsumer` applying the
//! event: every span lands in one trace, read back from an in-memory OpenTelemetry exporter.
//!
//! * the outbox row and the Kafka message carry the `traceparent` of the span the save ran in,
//!   though the caller set none;
//! * the relay's `outbox.publish` span and the consumer's `outbox.handle` span have that trace
//!   id, and both are children of the producing span;
//! * the handler itself runs inside `outbox.handle` (its own span is a child of it).

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use opentelemetry::trace::{SpanId, TraceContextExt, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use outbox_core::{
    AggregateRoot, DomainEvent, DomainEvents, EventContext, HandlerError, HandlerRegistry,
    event_handler, handler,
};
use outbox_kafka::{KafkaConfig, KafkaConsumer, KafkaPublisher, provision_topics};
use outbox_seaorm::Outbox;
use outbox_seaorm::relay::{Relay, pending_count};
use outbox_tests::reader::read_topic_async;
use outbox_tests::{Backend, fresh, kafka_brokers};
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use serde::{Deserialize, Serialize};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

mod parcel {
    use outbox_core::{AggregateRoot, DomainEvents};
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, AggregateRoot)]
    #[sea_orm(table_name = "parcels")]
    #[aggregate(name = "Parcel")]
    pub(crate) struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        #[aggregate(id)]
        pub(crate) id: String,
        #[sea_orm(ignore)]
        #[aggregate(events)]
        pub(crate) events: DomainEvents,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub(crate) enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
#[event(name = "TraceParcelShipped", version = 1)]
struct ParcelShipped {
    parcel: String,
}

/// The trace and parent the handler saw as current, per parcel.
static SEEN: Mutex<Vec<(String, TraceId, SpanId)>> = Mutex::new(Vec::new());

#[event_handler(group = "trace-e2e")]
async fn on_shipped(event: &ParcelShipped, _ctx: &EventContext<'_>) -> Result<(), HandlerError> {
    // The handler's own span: the test checks that it is a child of `outbox.handle`.
    let span = tracing::info_span!("ship.notify");
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    SEEN.lock().unwrap_or_else(|e| e.into_inner()).push((
        event.parcel.clone(),
        sc.trace_id(),
        sc.span_id(),
    ));
    Ok(())
}

/// One in-memory exporter for the test binary, behind a global `tracing` subscriber.
fn exporter() -> &'static InMemorySpanExporter {
    static EXPORTER: OnceLock<InMemorySpanExporter> = OnceLock::new();
    EXPORTER.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let tracer = provider.tracer("outbox-trace-test");
        let subscriber =
            tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(tracer));
        tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
        // The provider must outlive the test: spans end on other tasks.
        std::mem::forget(provider);
        exporter
    })
}

fn spans_named<'a>(spans: &'a [SpanData], name: &str) -> Vec<&'a SpanData> {
    spans.iter().filter(|s| s.name == name).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_from_the_save_to_the_consumers_handler() {
    let exporter = exporter();
    let Some(brokers) = kafka_brokers() else {
        return;
    };
    let Some(t) = fresh(Backend::Postgres, "trace_e2e::one_trace").await else {
        return;
    };
    t.db.execute_unprepared("CREATE TABLE parcels (id VARCHAR(64) PRIMARY KEY)")
        .await
        .expect("parcels table");
    let prefix = format!("trace-{}.", uuid::Uuid::now_v7().simple());
    let topic = format!("{prefix}parcel");
    provision_topics(&KafkaConfig::new(&brokers), &[&topic], 1, 1)
        .await
        .expect("provision");

    // The service's operation, traced; the save sets no traceparent itself.
    let outbox = Outbox::builder(t.db.clone())
        .handlers(HandlerRegistry::new())
        .build();
    let parcel_id = format!("parcel-{}", uuid::Uuid::now_v7());
    let operation = tracing::info_span!("ship_parcel");
    let producing = operation.context().span().span_context().clone();
    assert!(producing.is_valid(), "the test's subscriber traces");
    async {
        let mut p = parcel::Model {
            id: parcel_id.clone(),
            events: DomainEvents::new(),
        };
        p.register_event(ParcelShipped {
            parcel: parcel_id.clone(),
        });
        outbox.save(&mut p).await.expect("save");
    }
    .instrument(operation.clone())
    .await;
    drop(operation);

    // The row carries the operation's context.
    let row =
        t.db.query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT metadata FROM outbox",
        ))
        .await
        .expect("row")
        .expect("one row");
    let metadata: String = row.try_get_by_index(0).expect("metadata");
    let want = format!("00-{}-{}-01", producing.trace_id(), producing.span_id());
    assert!(
        metadata.contains(&want),
        "stored metadata {metadata} has traceparent {want}"
    );

    // The real relay publishes it to the real broker.
    let publisher = KafkaPublisher::builder(&brokers)
        .topic_prefix(&prefix)
        .build()
        .expect("publisher");
    let report = Relay::builder(t.db.clone(), publisher)
        .build()
        .run_once()
        .await
        .expect("relay cycle");
    assert_eq!(report.published(), 1, "{report:?}");
    assert_eq!(pending_count(&t.db).await.expect("pending"), 0);
    let got = read_topic_async(&brokers, &topic, &[], 1, Duration::from_millis(500)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].header("traceparent"),
        want,
        "the message's traceparent"
    );

    // The consumer applies it inside a span of the same trace.
    let consumer = KafkaConsumer::builder(
        &brokers,
        "trace-e2e",
        t.db.clone(),
        HandlerRegistry::new().with(handler!(on_shipped)),
    )
    .topics([topic.clone()])
    .build()
    .await
    .expect("consumer");
    let applied = tokio::time::timeout(
        Duration::from_secs(60),
        consumer.run_until(async {
            while SEEN.lock().unwrap_or_else(|e| e.into_inner()).is_empty() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }),
    )
    .await
    .expect("the consumer applied the event within 60 s")
    .expect("consumer ran");
    assert_eq!(applied.applied, 1, "{applied:?}");

    let spans = exporter.get_finished_spans().expect("spans");
    let trace = producing.trace_id();
    let publish = spans_named(&spans, "outbox.publish");
    let publish: Vec<_> = publish
        .into_iter()
        .filter(|s| s.span_context.trace_id() == trace)
        .collect();
    assert_eq!(
        publish.len(),
        1,
        "one publish span in the trace: {spans:#?}"
    );
    assert_eq!(publish[0].parent_span_id, producing.span_id());
    let handle: Vec<_> = spans_named(&spans, "outbox.handle")
        .into_iter()
        .filter(|s| s.span_context.trace_id() == trace)
        .collect();
    assert_eq!(handle.len(), 1, "one handler span in the trace: {spans:#?}");
    assert_eq!(
        handle[0].parent_span_id,
        producing.span_id(),
        "the handler span is a child of the producing context"
    );
    let seen = SEEN.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].0, parcel_id);
    assert_eq!(seen[0].1, trace, "the handler ran in the save's trace");
    let notify: Vec<_> = spans_named(&spans, "ship.notify")
        .into_iter()
        .filter(|s| s.span_context.span_id() == seen[0].2)
        .collect();
    assert_eq!(notify.len(), 1, "the handler's span was exported");
    assert_eq!(
        notify[0].parent_span_id,
        handle[0].span_context.span_id(),
        "the handler runs inside outbox.handle"
    );
}
