//! Fault tests of the log relay against the real PostgreSQL and a real Kafka-protocol broker
//! (tansu): relay processes (`outbox-relay --log`) SIGKILLed at random while saves go on, a
//! standby process taking over from a killed active one, the walsender terminated under a
//! relay, and the broker frozen for 30 s.
//!
//! Events are saved through the real save path ([`CounterLoad`]: several aggregates, every
//! seventh transaction rolled back), in each capture mode: the kill test runs with
//! `Capture::Table` and `Capture::Messages`, the standby test saves `LogTable`, the walsender
//! test `Messages`, the freeze test `Table`. Each scenario waits until the slot confirmed the log
//! position after the last save, then reads the topic back with a plain rdkafka consumer and
//! checks: every committed event arrived at least once, in order per aggregate, no event of a
//! rolled-back save arrived, nothing arrived that nobody saved.
//!
//! The shared broker comes from `OUTBOX_TEST_KAFKA_BROKERS` (default `127.0.0.1:9092`,
//! `scripts/tansu.sh start`); the freeze test starts its own tansu. Every test has a database,
//! a slot (named after the database) and topics of its own. The relay processes log at
//! `OUTBOX_TEST_RELAY_LOG` (a `RUST_LOG` filter; by default errors, without pgwire-replication's
//! error line for each retry of a standby).

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use outbox_core::{DeferredDispatcher, HandlerRegistry, RetryPolicy};
use outbox_kafka::{KafkaConfig, KafkaPublisher, provision_topics};
use outbox_seaorm::log_relay::{LogRelay, setup};
use outbox_seaorm::relay::pending_count;
use outbox_seaorm::{Capture, Outbox};
use outbox_tests::broker::start_own_broker;
use outbox_tests::counters::CounterLoad;
use outbox_tests::fixtures::{Published, assert_ordered};
use outbox_tests::log::{RunningLogRelay, status, wait_confirmed, wal_lsn};
use outbox_tests::reader::read_topic_async;
use outbox_tests::{Backend, TestDb, database_name, fresh, kafka_brokers};
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use uuid::Uuid;

/// How long the broker stays frozen (the issue asks for 30 s).
const FREEZE: Duration = Duration::from_secs(30);

/// The longest a standby may take to publish what the killed active relay left.
const TAKEOVER_BOUND: Duration = Duration::from_secs(15);

/// A test's database, slot and topic on a broker.
struct Scenario {
    t: TestDb,
    slot: String,
    brokers: String,
    prefix: String,
    topic: String,
}

/// A fresh database with its slot and publication set up (before the first save, so no
/// event precedes the slot), and the counters' topic provisioned on `brokers`.
async fn scenario(test: &str, brokers: String) -> Option<Scenario> {
    let t = fresh(Backend::Postgres, test).await?;
    let slot = database_name(test, Backend::Postgres);
    setup(&t.db, &slot, &slot)
        .await
        .expect("slot and publication");
    let prefix = format!("logfault-{}.", Uuid::now_v7().simple());
    let topic = format!("{prefix}counter");
    provision_topics(&KafkaConfig::new(&brokers), &[&topic], 3, 1)
        .await
        .expect("provision the topic");
    Some(Scenario {
        t,
        slot,
        brokers,
        prefix,
        topic,
    })
}

fn outbox(s: &Scenario, capture: Capture) -> Outbox {
    Outbox::builder(s.t.db.clone())
        .handlers(HandlerRegistry::new())
        .dispatcher(DeferredDispatcher)
        .capture(capture)
        .build()
}

/// An `outbox-relay --log` process on the scenario's slot, SIGKILLed when dropped.
struct RelayProcess(Child);

impl RelayProcess {
    fn spawn(s: &Scenario) -> RelayProcess {
        let filter = std::env::var("OUTBOX_TEST_RELAY_LOG")
            .unwrap_or_else(|_| "error,pgwire_replication=off".into());
        let child = Command::new(env!("CARGO_BIN_EXE_outbox-relay-under-test"))
            .args(["--log", "--database-url", &s.t.url, "--brokers", &s.brokers])
            .args(["--slot", &s.slot, "--topic-prefix", &s.prefix])
            .args(["--heartbeat-secs", "1", "--publish-timeout-secs", "10"])
            .args(["--batch-size", "100", "--concurrency", "4"])
            .env("RUST_LOG", filter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn outbox-relay --log");
        RelayProcess(child)
    }

    fn kill(&mut self) {
        self.0.kill().expect("SIGKILL a relay");
        self.0.wait().expect("reap a relay");
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn is_running(&mut self) -> bool {
        self.0.try_wait().expect("relay status").is_none()
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until `slot` is read by a session other than `not` (any session when `None`);
/// returns its server process id.
async fn wait_active(s: &Scenario, not: Option<i32>, within: Duration) -> i32 {
    let start = Instant::now();
    loop {
        let now = status(&s.t.db, &s.slot).await;
        if let Some(pid) = now.active_pid.filter(|pid| Some(*pid) != not) {
            return pid;
        }
        assert!(
            start.elapsed() < within,
            "no session took slot {} within {within:?}: {now:?}",
            s.slot
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the slot confirmed everything logged so far (so every committed event was
/// acknowledged by the broker), then reads the topic back and checks what arrived against
/// `load`. Returns how many messages were duplicates.
async fn drain_and_check(s: &Scenario, load: &CounterLoad) -> usize {
    let end = wal_lsn(&s.t.db).await;
    wait_confirmed(&s.t.db, &s.slot, end, Duration::from_secs(60)).await;
    let got = read_topic_async(
        &s.brokers,
        &s.topic,
        &[],
        load.committed.len(),
        Duration::from_secs(2),
    )
    .await;
    let published: Vec<Published> = got
        .iter()
        .map(|m| {
            (
                m.header("aggregate_id").to_owned(),
                m.header("sequence").parse().expect("a sequence"),
                Uuid::parse_str(m.header("event_id")).expect("an event id"),
            )
        })
        .collect();
    let arrived: HashSet<Uuid> = published.iter().map(|p| p.2).collect();
    let committed: HashSet<Uuid> = load.committed.iter().copied().collect();
    let missing = committed.difference(&arrived).count();
    assert_eq!(missing, 0, "{missing} committed events never arrived");
    let rolled_back = load
        .rolled_back
        .iter()
        .filter(|id| arrived.contains(id))
        .count();
    assert_eq!(rolled_back, 0, "events of rolled-back saves arrived");
    assert_eq!(
        arrived.len(),
        committed.len(),
        "events arrived that nobody saved"
    );
    assert_ordered(&published)
}

/// Rows the log relay published but did not mark (a relay killed between the broker's
/// acknowledgement and the mark): a table relay beside it would send them again.
async fn unmarked(s: &Scenario) -> u64 {
    pending_count(&s.t.db).await.expect("pending rows")
}

// ---- 1 and 5. relay processes killed at random while saves go on ----

/// Two `outbox-relay --log` processes on one slot (one reads it, the other stands by), either
/// SIGKILLed and restarted every 0.2 to 1.2 s while saves with `capture` go on for 8 s.
async fn relays_killed_at_random(test: &str, capture: Capture) {
    let Some(brokers) = kafka_brokers() else {
        return;
    };
    let Some(s) = scenario(test, brokers).await else {
        return;
    };
    let mut relays = [RelayProcess::spawn(&s), RelayProcess::spawn(&s)];
    let writer = tokio::spawn(
        CounterLoad::new(outbox(&s, capture), 20)
            .rollback_every(7)
            .run_for(Duration::from_secs(8), 5),
    );
    let mut kills = 0;
    while !writer.is_finished() {
        tokio::time::sleep(Duration::from_millis(fastrand::u64(200..1200))).await;
        let victim = fastrand::usize(0..relays.len());
        relays[victim].kill();
        kills += 1;
        relays[victim] = RelayProcess::spawn(&s);
    }
    let load = writer.await.expect("writer");
    assert!(kills >= 5, "only {kills} kills: the chaos did not happen");
    assert!(
        load.committed.len() > 200,
        "only {} events saved",
        load.committed.len()
    );
    assert!(!load.rolled_back.is_empty(), "no save was rolled back");
    let duplicates = drain_and_check(&s, &load).await;
    eprintln!(
        "chaos ({capture:?}): {} events committed, {} rolled back, {kills} relay kills, \
         {duplicates} duplicates, {} rows published but left unmarked",
        load.committed.len(),
        load.rolled_back.len(),
        unmarked(&s).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_killed_at_random_lose_nothing_table_capture() {
    relays_killed_at_random("log_relay_faults::chaos_table", Capture::Table).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_killed_at_random_lose_nothing_messages_capture() {
    relays_killed_at_random("log_relay_faults::chaos_messages", Capture::Messages).await;
}

// ---- 2. a standby takes over from a killed active relay ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_from_a_killed_relay_in_order() {
    let Some(brokers) = kafka_brokers() else {
        return;
    };
    let Some(s) = scenario("log_relay_faults::standby", brokers).await else {
        return;
    };
    // The first process takes the slot; the second, started after, can only stand by.
    let mut active = RelayProcess::spawn(&s);
    let session = wait_active(&s, None, Duration::from_secs(30)).await;
    let mut standby = RelayProcess::spawn(&s);
    let writer = tokio::spawn(
        CounterLoad::new(outbox(&s, Capture::LogTable), 8)
            .rollback_every(7)
            .run_for(Duration::from_secs(8), 20),
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        status(&s.t.db, &s.slot).await.active_pid,
        Some(session),
        "the first process still holds the slot"
    );

    // Everything committed up to the kill must be published by the standby (or was by the
    // active one and is confirmed by the standby).
    let logged = wal_lsn(&s.t.db).await;
    let killed = Instant::now();
    active.kill();
    let taken = wait_active(&s, Some(session), TAKEOVER_BOUND).await;
    wait_confirmed(
        &s.t.db,
        &s.slot,
        logged,
        TAKEOVER_BOUND.saturating_sub(killed.elapsed()),
    )
    .await;
    let takeover = killed.elapsed();
    assert!(standby.is_running(), "the standby is alive");
    let load = writer.await.expect("writer");
    let duplicates = drain_and_check(&s, &load).await;
    eprintln!(
        "standby: process {} killed; session {taken} (process {}) confirmed everything logged \
         before the kill {takeover:?} later; {} events, {duplicates} duplicates",
        active.pid(),
        standby.pid(),
        load.committed.len()
    );
}

// ---- 3. the walsender is terminated under the relay ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_walsender_is_reconnected_without_loss() {
    let Some(brokers) = kafka_brokers() else {
        return;
    };
    let Some(s) = scenario("log_relay_faults::walsender", brokers).await else {
        return;
    };
    let mut relay = RelayProcess::spawn(&s);
    let mut session = wait_active(&s, None, Duration::from_secs(30)).await;
    let writer = tokio::spawn(
        CounterLoad::new(outbox(&s, Capture::Messages), 10)
            .rollback_every(7)
            .run_for(Duration::from_secs(8), 10),
    );
    let terminate = Statement::from_sql_and_values(
        DbBackend::Postgres,
        "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
         WHERE slot_name = $1 AND active_pid IS NOT NULL",
        [s.slot.clone().into()],
    );
    let mut terminated = 0;
    while !writer.is_finished() {
        tokio::time::sleep(Duration::from_millis(fastrand::u64(800..1800))).await;
        let rows =
            s.t.db
                .query_all_raw(terminate.clone())
                .await
                .expect("terminate the walsender");
        assert_eq!(rows.len(), 1, "the slot had a session to terminate");
        terminated += 1;
        session = wait_active(&s, Some(session), Duration::from_secs(15)).await;
    }
    let load = writer.await.expect("writer");
    assert!(terminated >= 3, "only {terminated} terminations");
    assert!(relay.is_running(), "the relay survived its walsender");
    let duplicates = drain_and_check(&s, &load).await;
    eprintln!(
        "walsender: terminated {terminated} times; {} events, {duplicates} duplicates",
        load.committed.len()
    );
}

// ---- 4. the broker frozen for 30 s ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_broker_holds_the_slot_back_and_loses_nothing() {
    // The shared broker is not used, but its absence tells that Kafka is not set up here.
    if kafka_brokers().is_none() {
        return;
    }
    let Some(broker) = start_own_broker() else {
        return;
    };
    let Some(s) = scenario("log_relay_faults::frozen", broker.url.clone()).await else {
        return;
    };
    let publisher = KafkaPublisher::builder(&s.brokers)
        .topic_prefix(&s.prefix)
        // Fail a delivery after 4 s, so the relay retries during the freeze.
        .set("message.timeout.ms", "4000")
        .set("socket.timeout.ms", "3000")
        .build()
        .expect("publisher");
    let relay = LogRelay::builder(s.t.url.clone(), publisher)
        .slot(&s.slot)
        .publication(&s.slot)
        .retry(
            RetryPolicy::default()
                .with_max_attempts(1000)
                .with_initial_delay(Duration::from_millis(200))
                .with_max_delay(Duration::from_secs(1)),
        )
        .publish_timeout(Duration::from_secs(6))
        .heartbeat(Duration::from_millis(500))
        .status_interval(Duration::from_millis(200))
        .build();
    let running = RunningLogRelay::start(relay);
    let mut load = CounterLoad::new(outbox(&s, Capture::Table), 4).rollback_every(7);

    // Before the freeze everything flows.
    for _ in 0..10 {
        load.save().await;
    }
    let before = wal_lsn(&s.t.db).await;
    wait_confirmed(&s.t.db, &s.slot, before, Duration::from_secs(30)).await;

    broker.signal("-STOP");
    let frozen = Instant::now();
    load.save().await;
    // At or past the end of the first transaction saved during the freeze.
    let first_frozen = wal_lsn(&s.t.db).await;
    let mut samples: Vec<u64> = Vec::new();
    let mut next_sample = frozen + Duration::from_secs(3);
    while frozen.elapsed() < FREEZE {
        load.save().await;
        if Instant::now() >= next_sample {
            let confirmed = status(&s.t.db, &s.slot).await.confirmed_lsn_bytes;
            samples.push(confirmed.expect("a confirmed position"));
            next_sample += Duration::from_secs(1);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let frozen_end = wal_lsn(&s.t.db).await;
    broker.signal("-CONT");
    let thawed = Instant::now();

    assert!(samples.len() >= 20, "{} samples", samples.len());
    let held = samples[0];
    assert!(
        samples.iter().all(|&c| c == held),
        "the confirmed position moved while the broker was frozen: {samples:?}"
    );
    assert!(
        held < first_frozen,
        "the slot confirmed {held}, past the first unacknowledged transaction (logged by \
         {first_frozen})"
    );
    let duplicates = drain_and_check(&s, &load).await;
    let confirmed = status(&s.t.db, &s.slot).await.confirmed_lsn_bytes;
    assert!(
        confirmed >= Some(frozen_end),
        "{confirmed:?} < {frozen_end}"
    );
    let stats = running.stop().await;
    assert!(stats.retried > 0, "the relay kept trying: {stats:?}");
    eprintln!(
        "frozen: {} events ({} rolled back) over a {FREEZE:?} freeze, confirmed position held \
         at {held} over {} samples, all arrived {:?} after the thaw, {duplicates} duplicates; \
         {stats:?}",
        load.committed.len(),
        load.rolled_back.len(),
        samples.len(),
        thawed.elapsed()
    );
}

// ---- the binary refuses what cannot carry a log relay ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_mode_exits_2_on_a_database_it_cannot_read() {
    let Some(t) = fresh(Backend::Postgres, "log_relay_faults::refused").await else {
        return;
    };
    t.db.execute_unprepared("DROP TABLE outbox")
        .await
        .expect("drop the outbox table");
    for url in ["mysql://root@127.0.0.1:3306/test", t.url.as_str()] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_outbox-relay-under-test"))
            .args(["--log", "--database-url", url, "--brokers", "127.0.0.1:9"])
            .env("RUST_LOG", "off")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run outbox-relay --log");
        let started = Instant::now();
        while child.try_wait().expect("relay status").is_none() {
            if started.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                panic!("{url}: outbox-relay --log did not exit within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let output = child.wait_with_output().expect("relay output");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{url}: {stderr}");
        assert!(
            stderr.contains("postgres://") || stderr.contains("`outbox` table is missing"),
            "{url}: {stderr}"
        );
    }
}
