//! The consumer applies several keys at once: 6 partitions, 200 keys, handlers with random
//! delays, consumers joining and leaving mid-stream, duplicates in the stream; every event is
//! applied exactly once and in order per key, on librdkafka's mock cluster and on tansu. A
//! poisoned key goes to the dead-letter topic while the other keys go on.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use outbox_core::{
    BoxFuture, DomainEvent, Envelope, EventContext, Handler, HandlerError, HandlerRegistry,
    Publisher, RetryPolicy, event_handler, handler,
};
use outbox_kafka::provision_topics;
use outbox_kafka::{ConsumerStats, KafkaConfig, KafkaConsumer, KafkaPublisher, dlt};
use outbox_seaorm::TransactionExt;
use outbox_tests::reader::read_topic_async;
use outbox_tests::{Backend, TestDb, fresh, kafka_brokers};
use rdkafka::mocking::MockCluster;
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

const PARTITIONS: i32 = 6;
const KEYS: usize = 200;
const POISON_GROUP: &str = "concurrency-poison-group";

/// A seat was booked; `n` is its sequence within the flight (the message key).
#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
struct SeatBooked {
    n: i64,
}

async fn record(ctx: &EventContext<'_>, n: i64) -> Result<(), HandlerError> {
    let txn = ctx.transaction()?;
    txn.execute_raw(Statement::from_sql_and_values(
        txn.get_database_backend(),
        "INSERT INTO effects (event_id, aggregate_id, n) VALUES ($1, $2, $3)",
        [
            ctx.event_id().to_string().into(),
            ctx.aggregate_id().to_owned().into(),
            n.into(),
        ],
    ))
    .await?;
    Ok(())
}

/// Records the event in the consumer's transaction after a random delay of 0 to 6 ms (its own
/// I/O, say).
fn book_seat<'a>(
    envelope: &'a Envelope,
    ctx: &'a EventContext<'a>,
) -> BoxFuture<'a, Result<(), HandlerError>> {
    Box::pin(async move {
        let event: SeatBooked =
            serde_json::from_str(envelope.payload()).map_err(HandlerError::permanent)?;
        tokio::time::sleep(Duration::from_millis(fastrand::u64(0..=6))).await;
        record(ctx, event.n).await
    })
}

/// [`book_seat`] in consumer group `group` (a group of its own per run: a shared broker keeps
/// the members and offsets of earlier runs).
fn book_seat_in(group: &str) -> Handler {
    let group: &'static str = Box::leak(group.to_owned().into_boxed_str());
    Handler::new(
        "kafka_concurrency::book_seat",
        SeatBooked::NAME,
        1,
        None,
        Some(group),
        book_seat,
    )
}

/// What the poison test's handler saw.
struct Seen {
    /// Keys whose handler is running now.
    running: Mutex<BTreeSet<String>>,
    /// A key's handler started while another of the same key ran.
    overlap: AtomicBool,
    now: AtomicUsize,
    most: AtomicUsize,
    /// When the poisoned message was attempted.
    poison_attempts: Mutex<Vec<Instant>>,
    /// When other keys' events were applied.
    others: Mutex<Vec<Instant>>,
}

static SEEN: Seen = Seen {
    running: Mutex::new(BTreeSet::new()),
    overlap: AtomicBool::new(false),
    now: AtomicUsize::new(0),
    most: AtomicUsize::new(0),
    poison_attempts: Mutex::new(Vec::new()),
    others: Mutex::new(Vec::new()),
};

/// Fails every time on the second event of key `poison`; otherwise records the event after a
/// random delay, noting which keys run at once.
#[event_handler(group = "concurrency-poison-group")]
async fn book_or_choke(event: &SeatBooked, ctx: &EventContext) -> Result<(), HandlerError> {
    let key = ctx.aggregate_id().to_owned();
    if key == "poison" && event.n == 2 {
        SEEN.poison_attempts
            .lock()
            .expect("lock")
            .push(Instant::now());
        return Err(HandlerError::retryable(std::io::Error::other(
            "the seat map is corrupt",
        )));
    }
    if !SEEN.running.lock().expect("lock").insert(key.clone()) {
        SEEN.overlap.store(true, Ordering::SeqCst);
    }
    let now = SEEN.now.fetch_add(1, Ordering::SeqCst) + 1;
    SEEN.most.fetch_max(now, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(fastrand::u64(1..=5))).await;
    let result = record(ctx, event.n).await;
    SEEN.now.fetch_sub(1, Ordering::SeqCst);
    SEEN.running.lock().expect("lock").remove(&key);
    if key != "poison" {
        SEEN.others.lock().expect("lock").push(Instant::now());
    }
    result
}

async fn count(db: &DatabaseConnection, sql: &str) -> i64 {
    db.query_one_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .expect("count")
        .and_then(|r| r.try_get_by_index::<i64>(0).ok())
        .unwrap_or(0)
}

async fn effects_table(db: &DatabaseConnection) {
    db.execute_unprepared(
        "CREATE TABLE effects (applied BIGSERIAL PRIMARY KEY, event_id TEXT NOT NULL, \
         aggregate_id TEXT NOT NULL, n BIGINT NOT NULL)",
    )
    .await
    .expect("effects table");
}

/// Waits until `effects` holds at least `at_least` rows; fails after `within`.
async fn wait_for(db: &DatabaseConnection, at_least: i64, within: Duration) {
    let start = Instant::now();
    while count(db, "SELECT COUNT(*) FROM effects").await < at_least {
        assert!(
            start.elapsed() < within,
            "stalled at {} below {at_least}",
            count(db, "SELECT COUNT(*) FROM effects").await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Per key, the `n`s in the order their effects were committed must be 1, 2, 3, ...; returns
/// how many keys were seen.
async fn assert_in_order_per_key(db: &DatabaseConnection, skip: &[(&str, i64)]) -> usize {
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT aggregate_id, n FROM effects ORDER BY applied",
        ))
        .await
        .expect("effects");
    let mut last: HashMap<String, i64> = HashMap::new();
    for row in rows {
        let key: String = row.try_get("", "aggregate_id").expect("aggregate");
        let n: i64 = row.try_get("", "n").expect("n");
        let prev = last.insert(key.clone(), n).unwrap_or(0);
        let mut expected = prev + 1;
        while skip.contains(&(key.as_str(), expected)) {
            expected += 1;
        }
        assert_eq!(n, expected, "{key}: {n} applied after {prev}");
    }
    last.len()
}

fn seat(topic: &str, key: &str, n: i64) -> Envelope {
    Envelope::builder(SeatBooked::NAME, "Flight", key)
        .sequence(n)
        .payload(format!(r#"{{"n":{n}}}"#))
        .topic(Some(topic.to_owned()))
        .build()
}

struct Member {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<ConsumerStats>,
}

impl Member {
    async fn leave(self) -> ConsumerStats {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("consumer stops within 60 s")
            .expect("consumer task")
    }
}

async fn join(brokers: &str, group: &str, topic: &str, t: &TestDb) -> Member {
    let registry = HandlerRegistry::new().with(book_seat_in(group));
    let db = t.connect_again().await;
    let (stop, stopped) = oneshot::channel::<()>();
    let (brokers, group, topic) = (brokers.to_owned(), group.to_owned(), topic.to_owned());
    let task = tokio::spawn(async move {
        let consumer = KafkaConsumer::builder(brokers, group, db, registry)
            .topics([topic])
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "500")
            .concurrency(6)
            .max_batch(8)
            .max_buffered(300)
            .build()
            .await
            .expect("consumer");
        consumer
            .run_until(async {
                let _ = stopped.await;
            })
            .await
            .expect("consumer ran")
    });
    Member { stop, task }
}

/// 200 keys × `rounds` events, published a round every 150 ms with 10 events of the round
/// before published again (duplicates); consumer A starts, B joins, A leaves, C joins.
async fn exactly_once_in_order_while_members_come_and_go(
    t: TestDb,
    brokers: String,
    topic: String,
    rounds: i64,
    one_message_batches: bool,
) {
    effects_table(&t.db).await;
    let mut publisher = KafkaPublisher::builder(brokers.clone());
    if one_message_batches {
        publisher = publisher.set("batch.num.messages", "1");
    }
    let publisher = publisher.build().expect("publisher");
    let keys: Vec<String> = (0..KEYS).map(|k| format!("flight-{k}")).collect();
    let total = i64::try_from(KEYS).expect("keys") * rounds;
    let injected = 10 * (rounds - 1);
    let publishing = {
        let (keys, topic) = (keys.clone(), topic.clone());
        tokio::spawn(async move {
            let mut previous: Vec<Envelope> = Vec::new();
            for n in 1..=rounds {
                let mut round: Vec<Envelope> = keys.iter().map(|k| seat(&topic, k, n)).collect();
                let duplicates: Vec<Envelope> = previous.iter().step_by(20).cloned().collect();
                previous.clone_from(&round);
                round.extend(duplicates);
                for chunk in round.chunks(100) {
                    assert!(publisher.publish(chunk).await.iter().all(Result::is_ok));
                }
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        })
    };

    let within = Duration::from_secs(90);
    let group = format!("{topic}-group");
    let a = join(&brokers, &group, &topic, &t).await;
    wait_for(&t.db, total / 10, within).await;
    let b = join(&brokers, &group, &topic, &t).await;
    wait_for(&t.db, total * 4 / 10, within).await;
    let stats_a = a.leave().await;
    let c = join(&brokers, &group, &topic, &t).await;
    publishing.await.expect("publisher task");
    wait_for(&t.db, total, within).await;
    // Let redeliveries of uncommitted offsets arrive, if any.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stats_b = b.leave().await;
    let stats_c = c.leave().await;
    eprintln!("A {stats_a:?}\nB {stats_b:?}\nC {stats_c:?}");

    assert_eq!(count(&t.db, "SELECT COUNT(*) FROM effects").await, total);
    assert_eq!(
        count(&t.db, "SELECT COUNT(DISTINCT event_id) FROM effects").await,
        total
    );
    let all = [stats_a, stats_b, stats_c];
    let applied: u64 = all.iter().map(|s| s.applied).sum();
    let duplicates: u64 = all.iter().map(|s| s.duplicates).sum();
    assert_eq!(applied, u64::try_from(total).expect("total"));
    assert!(
        duplicates >= u64::try_from(injected).expect("injected"),
        "every injected duplicate was skipped: {duplicates} < {injected}"
    );
    assert!(stats_a.applied > 0 && stats_b.applied > 0, "{all:?}");
    assert_eq!(assert_in_order_per_key(&t.db, &[]).await, KEYS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mock_cluster_applies_every_event_once_in_order_per_key() {
    let Some(t) = fresh(Backend::Postgres, "kafka_concurrency::mock").await else {
        return;
    };
    let cluster = MockCluster::new(1).expect("mock cluster");
    let topic = "concurrency-seats";
    cluster.create_topic(topic, PARTITIONS, 1).expect("topic");
    let brokers = cluster.bootstrap_servers();
    exactly_once_in_order_while_members_come_and_go(t, brokers, topic.to_owned(), 10, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tansu_applies_every_event_once_in_order_per_key() {
    let Some(brokers) = kafka_brokers() else {
        return;
    };
    let Some(t) = fresh(Backend::Postgres, "kafka_concurrency::tansu").await else {
        return;
    };
    let topic = format!("concurrency-seats-{}", uuid::Uuid::now_v7().simple());
    provision_topics(
        &KafkaConfig::new(&brokers),
        &[&topic, &format!("{topic}.dlt")],
        PARTITIONS,
        1,
    )
    .await
    .expect("provision");
    // tansu 0.6 answers a fetch from an offset inside a record batch with the next batch: a
    // member resuming from a committed offset in the middle of a batch never sees the rest of
    // it (any consumer, not only this one). One message per batch keeps every committed offset
    // on a batch boundary.
    exactly_once_in_order_while_members_come_and_go(t, brokers, topic, 6, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poisoned_key_is_dead_lettered_while_the_other_keys_go_on() {
    let Some(t) = fresh(Backend::Postgres, "kafka_concurrency::poison").await else {
        return;
    };
    effects_table(&t.db).await;
    let cluster = MockCluster::new(1).expect("mock cluster");
    let topic = "concurrency-poison";
    cluster.create_topic(topic, PARTITIONS, 1).expect("topic");
    cluster
        .create_topic(&format!("{topic}.dlt"), 1, 1)
        .expect("dlt topic");
    let brokers = cluster.bootstrap_servers();
    let publisher = KafkaPublisher::builder(brokers.clone())
        .build()
        .expect("publisher");
    let rounds = 3;
    let mut batch: Vec<Envelope> = Vec::new();
    for n in 1..=rounds {
        batch.push(seat(topic, "poison", n));
        batch.extend((0..KEYS).map(|k| seat(topic, &format!("flight-{k}"), n)));
    }
    for chunk in batch.chunks(100) {
        assert!(publisher.publish(chunk).await.iter().all(Result::is_ok));
    }
    let poisoned = batch[KEYS + 1].clone();
    assert_eq!(
        (poisoned.aggregate_id(), poisoned.sequence()),
        ("poison", 2)
    );

    let registry = HandlerRegistry::new().with(handler!(book_or_choke));
    let (stop, stopped) = oneshot::channel::<()>();
    let db = t.db.clone();
    let brokers_c = brokers.clone();
    let task = tokio::spawn(async move {
        KafkaConsumer::builder(brokers_c, POISON_GROUP, db, registry)
            .topics([topic])
            .retry(
                RetryPolicy::default()
                    .with_max_attempts(4)
                    .with_initial_delay(Duration::from_millis(400))
                    .with_max_delay(Duration::from_millis(400)),
            )
            .concurrency(8)
            .build()
            .await
            .expect("consumer")
            .run_until(async {
                let _ = stopped.await;
            })
            .await
            .expect("consumer ran")
    });
    let total = i64::try_from(batch.len()).expect("total");
    wait_for(&t.db, total - 1, Duration::from_secs(60)).await;
    let _ = stop.send(());
    let stats = task.await.expect("consumer task");
    eprintln!(
        "{stats:?}, most keys at once: {}",
        SEEN.most.load(Ordering::SeqCst)
    );

    assert_eq!(stats.dead_lettered, 1, "{stats:?}");
    assert_eq!(stats.retries, 3, "{stats:?}");
    assert_eq!(
        count(&t.db, "SELECT COUNT(*) FROM effects").await,
        total - 1
    );
    assert_eq!(
        count(
            &t.db,
            "SELECT COUNT(*) FROM effects WHERE aggregate_id = 'poison' AND n = 2"
        )
        .await,
        0
    );
    // The poisoned key's later event waited for the dead letter; the others kept their order.
    assert_eq!(
        assert_in_order_per_key(&t.db, &[("poison", 2)]).await,
        KEYS + 1
    );
    assert!(
        !SEEN.overlap.load(Ordering::SeqCst),
        "two messages of one key ran at once"
    );
    assert!(
        SEEN.most.load(Ordering::SeqCst) > 1,
        "several keys ran at once"
    );
    // While the poisoned message was retried, other keys were applied.
    let attempts = SEEN.poison_attempts.lock().expect("lock").clone();
    // 4 attempts on its own, after up to two in batches: one with other keys (a run of several
    // keys hands its messages back when its batch fails), one with the key's next event when
    // they came together.
    assert!((4..=6).contains(&attempts.len()), "{}", attempts.len());
    let (first, last) = (attempts[0], attempts[attempts.len() - 1]);
    let meanwhile = SEEN
        .others
        .lock()
        .expect("lock")
        .iter()
        .filter(|t| **t > first && **t < last)
        .count();
    assert!(meanwhile > 0, "other keys waited for the poisoned one");

    let dead = read_topic_async(
        &brokers,
        &format!("{topic}.dlt"),
        &[],
        1,
        Duration::from_millis(500),
    )
    .await;
    assert_eq!(dead.len(), 1);
    let letter = &dead[0];
    assert_eq!(letter.key.as_deref(), Some("poison"));
    assert_eq!(letter.header(dlt::REASON), "handler-failed");
    assert_eq!(letter.header(dlt::ATTEMPTS), "4");
    assert_eq!(letter.header(dlt::ORIGINAL_TOPIC), topic);
    assert_eq!(letter.header(dlt::GROUP), POISON_GROUP);
    assert!(
        letter
            .header(dlt::ERROR)
            .contains("the seat map is corrupt")
    );
    assert_eq!(letter.header("event_id"), poisoned.id().to_string());
}
