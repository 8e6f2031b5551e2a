//! The `outbox` command as a subprocess against the real databases: status, dead list / show /
//! requeue / drop, replay, cleanup and migrate, with and without `--json`, their exit codes on
//! bad input, a requeue that keeps per-aggregate order, and `outbox relay --amqp-url`
//! publishing to RabbitMQ.

mod rabbit_common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use outbox_core::testing::InMemoryPublisher;
use outbox_seaorm::relay::{DeadLetterPolicy, Relay, pending_count};
use outbox_seaorm::time::now_micros;
use outbox_tests::fixtures::{Written, assert_ordered, count, exec, insert_events, published};
use outbox_tests::{Backend, TestDb, db_tests, fresh, rabbitmq_uri};
use sea_orm::DatabaseConnection;
use sea_orm_migration::MigratorTrait;
use serde_json::Value;

const OUTBOX: &str = env!("CARGO_BIN_EXE_outbox-under-test");

/// Runs `outbox ARGS` with `OUTBOX_DATABASE_URL=url` and returns its output.
fn outbox(url: &str, args: &[&str]) -> Output {
    Command::new(OUTBOX)
        .args(args)
        .env("OUTBOX_DATABASE_URL", url)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run outbox")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `outbox ARGS`, asserts it succeeded, returns its standard output.
fn ok(url: &str, args: &[&str]) -> String {
    let out = outbox(url, args);
    assert!(
        out.status.success(),
        "outbox {args:?}: exit {:?}\n{}{}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

/// Runs `outbox ARGS`, asserts it exited with `code`, returns its standard error.
fn fails(url: &str, args: &[&str], code: i32) -> String {
    let out = outbox(url, args);
    assert_eq!(
        out.status.code(),
        Some(code),
        "outbox {args:?}\n{}{}",
        stdout(&out),
        stderr(&out)
    );
    stderr(&out)
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Marks event `w` dead with `error`, renamed to event type `event_type`.
async fn kill(db: &DatabaseConnection, w: &Written, event_type: &str, error: &str) {
    let changed = exec(
        db,
        &format!(
            "UPDATE outbox SET status = 2, attempts = 5, type = '{event_type}', \
             last_error = '{error}' WHERE id = '{}'",
            w.id
        ),
    )
    .await;
    assert_eq!(changed, 1);
}

/// Publishes everything pending with an in-process relay that skips dead events (so a requeue
/// that broke the order would show), and returns what it published.
async fn relay_all(db: &DatabaseConnection) -> InMemoryPublisher {
    let publisher = InMemoryPublisher::new();
    let relay = Relay::builder(db.clone(), publisher.clone())
        .dead_letter_policy(DeadLetterPolicy::Skip)
        .build();
    let start = Instant::now();
    while pending_count(db).await.expect("pending") > 0 {
        assert!(start.elapsed() < Duration::from_secs(30), "relay stuck");
        relay.run_once().await.expect("relay cycle");
    }
    publisher
}

/// Status, dead list / show / requeue / drop on one database.
async fn dead_events(t: TestDb) {
    let url = t.url.as_str();
    let db = &t.db;
    // Order/o1: 1..=4, Order/o2: 1..=2, Invoice/i1: 1.
    let w = insert_events(
        db,
        &[
            ("Order", "o1"),
            ("Order", "o1"),
            ("Order", "o1"),
            ("Order", "o1"),
            ("Order", "o2"),
            ("Order", "o2"),
            ("Invoice", "i1"),
        ],
    )
    .await;
    kill(db, &w[1], "Ping", "broker refused: too large").await; // o1 #2
    kill(db, &w[2], "Refund", "broker refused: unknown topic").await; // o1 #3
    kill(db, &w[6], "Refund", "broker refused: unknown topic").await; // i1 #1

    let status = json(&ok(url, &["status", "--json"]));
    assert_eq!(status["pending"], 4, "{status}");
    // o1 #4 waits behind the dead #2.
    assert_eq!(status["held"], 1, "{status}");
    assert_eq!(status["dead"], 3, "{status}");
    assert!(status["oldest_pending_age_secs"].as_f64().is_some());
    assert_eq!(status["by_aggregate_type"]["Order"]["pending"], 4);
    assert_eq!(status["by_aggregate_type"]["Order"]["dead"], 2);
    assert_eq!(status["by_aggregate_type"]["Invoice"]["dead"], 1);
    assert_eq!(status["by_topic"][""]["dead"], 3);
    assert_eq!(status["inbox"], 0);
    let text = ok(url, &["status"]);
    assert!(text.contains("4 pending (1 held), 3 dead"), "{text}");
    assert!(text.contains("AGGREGATE TYPE"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("Invoice ") && l.contains(" 1 ")),
        "{text}"
    );

    let all = json(&ok(url, &["dead", "list", "--json"]));
    let ids: Vec<&str> = all
        .as_array()
        .expect("array")
        .iter()
        .map(|e| e["id"].as_str().expect("id"))
        .collect();
    let expected = [
        w[1].id.to_string(),
        w[2].id.to_string(),
        w[6].id.to_string(),
    ];
    assert_eq!(ids, expected.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(all[0]["last_error"], "broker refused: too large");
    let refunds = json(&ok(
        url,
        &["dead", "list", "--event-type", "Refund", "--json"],
    ));
    assert_eq!(refunds.as_array().map(Vec::len), Some(2));
    let invoices = json(&ok(
        url,
        &["dead", "list", "--aggregate-type", "Invoice", "--json"],
    ));
    assert_eq!(invoices.as_array().map(Vec::len), Some(1));
    let future = json(&ok(
        url,
        &["dead", "list", "--since", "2999-01-01T00:00:00Z", "--json"],
    ));
    assert_eq!(future.as_array().map(Vec::len), Some(0));
    let past = json(&ok(
        url,
        &[
            "dead",
            "list",
            "--since",
            "2000-01-01T00:00:00+02:00",
            "--json",
        ],
    ));
    assert_eq!(past.as_array().map(Vec::len), Some(3));
    let text = ok(url, &["dead", "list"]);
    assert!(text.starts_with("ID "), "{text}");
    assert!(text.contains("unknown topic"), "{text}");
    assert!(text.contains(&w[6].id.to_string()), "{text}");
    fails(url, &["dead", "list", "--since", "yesterday"], 2);

    let shown = json(&ok(url, &["dead", "show", &w[2].id.to_string(), "--json"]));
    assert_eq!(shown["status"], "dead");
    assert_eq!(shown["event_type"], "Refund");
    assert_eq!(shown["sequence"], 3);
    assert_eq!(shown["payload"], r#"{"sequence":3}"#);
    let text = ok(url, &["dead", "show", &w[2].id.to_string()]);
    assert!(text.contains("last error"), "{text}");
    assert!(text.contains(r#"{"sequence":3}"#), "{text}");
    let unknown = uuid::Uuid::now_v7().to_string();
    assert!(fails(url, &["dead", "show", &unknown], 2).contains("no event with id"));
    fails(url, &["dead", "show", "not-a-uuid"], 2);

    // Bad input changes nothing.
    assert!(fails(url, &["dead", "requeue", &unknown], 2).contains("no event with id"));
    let live = w[0].id.to_string();
    assert!(fails(url, &["dead", "requeue", &live], 2).contains("is not dead"));
    fails(url, &["dead", "requeue", &live, "--all"], 2);
    fails(url, &["dead", "requeue"], 2);
    assert_eq!(count(db, "outbox", "status = 2").await, 3);

    // Requeueing o1 #3 alone takes the earlier dead o1 #2 along.
    let out = ok(url, &["dead", "requeue", &w[2].id.to_string()]);
    assert!(
        out.contains("requeued 2 dead events (1 selected, 1 earlier"),
        "{out}"
    );
    assert_eq!(count(db, "outbox", "status = 2").await, 1);
    // One requeue over two aggregates (one statement): o1 #1, i1 #1.
    kill(db, &w[0], "Refund", "broker refused: unknown topic").await;
    let out = ok(url, &["dead", "requeue", "--type", "Refund"]);
    assert!(out.contains("requeued 2 dead events"), "{out}");
    assert_eq!(count(db, "outbox", "status = 2").await, 0);
    kill(db, &w[6], "Refund", "broker refused: unknown topic").await;

    // Drop without --yes refuses and says what it would drop.
    let refused = fails(url, &["dead", "drop", "--type", "Refund"], 2);
    assert!(refused.contains("--yes"), "{refused}");
    assert!(refused.contains("1 dead events"), "{refused}");
    assert!(refused.contains(&w[6].id.to_string()), "{refused}");
    assert_eq!(count(db, "outbox", "status = 2").await, 1);
    fails(url, &["dead", "drop", &unknown, "--yes"], 2);
    let out = ok(url, &["dead", "drop", "--type", "Refund", "--yes"]);
    assert!(out.contains("dropped 1 dead events"), "{out}");
    assert_eq!(count(db, "outbox", "status = 2").await, 0);
    assert_eq!(count(db, "outbox", "1 = 1").await, 6);

    // Published in order per aggregate, even by a relay that does not hold back dead events.
    let publisher = relay_all(db).await;
    let sent = published(&publisher);
    assert_eq!(assert_ordered(&sent), 0);
    let o1: Vec<i64> = sent
        .iter()
        .filter(|(a, _, _)| a == "Order/o1")
        .map(|(_, s, _)| *s)
        .collect();
    assert_eq!(o1, [1, 2, 3, 4]);
    assert_eq!(sent.len(), 6);

    let after = json(&ok(url, &["status", "--json"]));
    assert_eq!(after["pending"], 0);
    assert_eq!(after["dead"], 0);
    assert!(ok(url, &["dead", "requeue", "--all"]).contains("no dead events"));
}

/// Replay, cleanup and migrate on one database.
async fn replay_cleanup_migrate(t: TestDb) {
    let url = t.url.as_str();
    let db = &t.db;
    let w = insert_events(
        db,
        &[
            ("Order", "o1"),
            ("Order", "o2"),
            ("Order", "o1"),
            ("Order", "o1"),
            ("Order", "o2"),
        ],
    )
    .await;
    let first = relay_all(db).await;
    assert_eq!(published(&first).len(), 5);

    fails(url, &["replay"], 2);
    fails(
        url,
        &[
            "replay",
            "--aggregate",
            "o1",
            "--since",
            "2000-01-01T00:00:00Z",
        ],
        2,
    );
    fails(url, &["replay", "--since", "last week"], 2);
    assert!(fails(url, &["replay", "--aggregate", "nope"], 2).contains("no published event"));
    let none = ok(url, &["replay", "--since", "2999-01-01T00:00:00Z"]);
    assert!(none.contains("replaying 0 events"), "{none}");
    assert_eq!(pending_count(db).await.expect("pending"), 0);

    let out = ok(
        url,
        &["replay", "--aggregate", "o1", "--aggregate-type", "Order"],
    );
    assert!(out.contains("replaying 3 events"), "{out}");
    assert_eq!(pending_count(db).await.expect("pending"), 3);
    let again = published(&relay_all(db).await);
    assert_eq!(
        again
            .iter()
            .map(|(a, s, id)| (a.as_str(), *s, *id))
            .collect::<Vec<_>>(),
        [
            ("Order/o1", 1, w[0].id),
            ("Order/o1", 2, w[2].id),
            ("Order/o1", 3, w[3].id)
        ],
        "the same events, in their order"
    );

    // Cleanup: o2's rows were published two days ago, o1's just now.
    let two_days_ago = now_micros() - 2 * 86_400 * 1_000_000;
    exec(
        db,
        &format!("UPDATE outbox SET published_at = {two_days_ago} WHERE aggregateid = 'o2'"),
    )
    .await;
    exec(
        db,
        &format!(
            "INSERT INTO outbox_inbox (event_id, consumer, processed_at) VALUES \
             ('{}', 'billing', {two_days_ago}), ('{}', 'billing', {})",
            w[0].id,
            w[1].id,
            now_micros()
        ),
    )
    .await;
    assert_eq!(json(&ok(url, &["status", "--json"]))["inbox"], 2);
    assert!(fails(url, &["cleanup", "--older-than", "soon"], 2).contains("not a duration"));
    fails(url, &["cleanup"], 2);
    let out = ok(url, &["cleanup", "--older-than", "1d"]);
    assert!(
        out.contains("deleted 2 outbox rows, 0 delivery rows, 1 inbox rows"),
        "{out}"
    );
    assert_eq!(count(db, "outbox", "1 = 1").await, 3);
    let out = ok(url, &["cleanup", "--older-than", "86400"]);
    assert!(out.contains("deleted 0 outbox rows"), "{out}");

    // Migrate: nothing to do on a migrated database; all three on an empty one.
    assert!(ok(url, &["migrate"]).contains("applied 0 outbox migrations"));
    outbox_seaorm::schema::OutboxMigrator::down(db, None)
        .await
        .expect("migrate down");
    fails(url, &["status"], 1);
    assert!(ok(url, &["migrate"]).contains("applied 3 outbox migrations"));
    let status = json(&ok(url, &["status", "--json"]));
    assert_eq!(status["pending"], 0);
}

db_tests!(dead_events, replay_cleanup_migrate);

#[test]
fn bad_urls_and_unreachable_databases() {
    let url = "mysql://root@127.0.0.1:1/nothing";
    let unreachable = fails(url, &["status"], 1);
    assert!(
        unreachable.contains("cannot connect to the database"),
        "{unreachable}"
    );
    let bad = fails("http://127.0.0.1/x", &["dead", "list"], 2);
    assert!(bad.contains("--database-url must start with"), "{bad}");
    let missing = Command::new(OUTBOX)
        .args(["status"])
        .env_remove("OUTBOX_DATABASE_URL")
        .output()
        .expect("run outbox");
    assert_eq!(missing.status.code(), Some(2));
    assert!(stderr(&missing).contains("--database-url"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_lag_is_reported_on_postgres() {
    let Some(t) = fresh(Backend::Postgres, "cli::slot_lag_is_reported_on_postgres").await else {
        return;
    };
    let url = t.url.as_str();
    assert!(json(&ok(url, &["status", "--json"]))["slot"].is_null());
    assert!(fails(url, &["status", "--slot", "cli_missing"], 2).contains("no replication slot"));
    let slot = format!("cli_{}", std::process::id());
    exec(
        &t.db,
        &format!("SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"),
    )
    .await;
    let status = json(&ok(url, &["status", "--slot", &slot, "--json"]));
    assert_eq!(status["slot"]["slot"], slot.as_str());
    assert_eq!(status["slot"]["active"], false);
    assert!(status["slot"]["lag_bytes"].as_u64().is_some(), "{status}");
    let text = ok(url, &["status", "--slot", &slot]);
    assert!(
        text.contains(&format!("log relay slot {slot}: lag ")),
        "{text}"
    );
    exec(&t.db, &format!("SELECT pg_drop_replication_slot('{slot}')")).await;
}

/// `outbox relay --amqp-url` (the table relay, or with `log` the log relay on its own slot)
/// publishes four events to a queue bound to `--exchange`, read back with lapin, in order.
async fn relay_to_rabbitmq(test: &str, log: bool) {
    let Some(uri) = rabbitmq_uri() else {
        return;
    };
    let Some(t) = fresh(Backend::Postgres, test).await else {
        return;
    };
    let exchange = rabbit_common::unique("cli_x");
    let queue = rabbit_common::unique("cli_q");
    // The queue, bound to the exchange the relay publishes to, exists before it publishes.
    let setup = outbox_rabbitmq::RabbitPublisher::builder(uri.as_str())
        .exchange(exchange.as_str())
        .declare_queue(queue.as_str(), ["#"])
        .build()
        .await
        .expect("declare exchange and queue");
    setup.close().await;

    let slot = format!("cli_amqp_{}", std::process::id());
    let mut command = Command::new(OUTBOX);
    command
        .args(["relay", "--database-url", &t.url, "--amqp-url", &uri])
        .args(["--exchange", &exchange])
        .env("RUST_LOG", "warn")
        .env_remove("OUTBOX_KAFKA_BROKERS")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if log {
        // Without `--concurrency` the log relay runs its own default lanes (not the table
        // relay's default cycles), and says so when it starts reading.
        command
            .args(["--log", "--slot", &slot])
            .env("RUST_LOG", "warn,outbox_seaorm::log_relay=info")
            .env("NO_COLOR", "1");
    }
    let child = command.spawn().expect("spawn outbox relay");
    if log {
        // Events committed before the slot exists are not in it: wait for the relay to read it.
        let start = Instant::now();
        while count(
            &t.db,
            "pg_replication_slots",
            &format!("slot_name = '{slot}' AND active"),
        )
        .await
            == 0
        {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the log relay never read its slot"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let w = insert_events(
        &t.db,
        &[
            ("Order", "r1"),
            ("Order", "r2"),
            ("Order", "r1"),
            ("Order", "r1"),
        ],
    )
    .await;

    let (connection, channel) = rabbit_common::raw(&uri).await;
    let got = rabbit_common::drain(&channel, &queue, 4, Duration::from_secs(30)).await;
    if log {
        // The log relay marks the rows it read pending published after the broker's confirm.
        let start = Instant::now();
        while count(&t.db, "outbox", "status = 1").await < 4
            && start.elapsed() < Duration::from_secs(30)
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let output = child.wait_with_output().expect("relay output");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout(&output).contains("published 4,"),
        "{}",
        stdout(&output)
    );
    if log {
        let lanes = format!("lanes={}", outbox_seaorm::log_relay::DEFAULT_LANES);
        assert!(
            stderr(&output).contains(&lanes),
            "expected {lanes} in: {}",
            stderr(&output)
        );
    }
    assert_eq!(got.len(), 4, "messages read back");
    let r1_ids = [
        w[0].id.to_string(),
        w[2].id.to_string(),
        w[3].id.to_string(),
    ];
    let r1: Vec<String> = got
        .iter()
        .filter(|m| {
            m.properties
                .message_id()
                .as_ref()
                .is_some_and(|id| r1_ids.iter().any(|r| r == id.as_str()))
        })
        .map(|m| String::from_utf8_lossy(&m.data).into_owned())
        .collect();
    assert_eq!(
        r1,
        [
            r#"{"sequence":1}"#,
            r#"{"sequence":2}"#,
            r#"{"sequence":3}"#
        ],
        "r1's events in order"
    );
    assert!(got.iter().all(|m| m.routing_key.as_str() == "Order.Ping"));
    assert_eq!(count(&t.db, "outbox", "status = 1").await, 4);
    let _ = connection.close(200, "done".into()).await;
    rabbit_common::delete_all(&uri, &[&exchange], &[&queue]).await;
    if log {
        exec(&t.db, &format!("SELECT pg_drop_replication_slot('{slot}')")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_publishes_to_rabbitmq_with_amqp_url() {
    relay_to_rabbitmq("cli::relay_publishes_to_rabbitmq", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_relay_publishes_to_rabbitmq_with_amqp_url() {
    relay_to_rabbitmq("cli::log_relay_publishes_to_rabbitmq", true).await;
}
