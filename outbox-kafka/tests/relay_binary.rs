//! The `outbox-relay` binary: clear errors on bad configuration, and a run that publishes a
//! SQLite outbox to a mock Kafka cluster and prints its summary on SIGTERM.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use outbox_core::{AggregateRoot, DomainEvent, DomainEvents, HandlerRegistry};
use outbox_seaorm::Outbox;
use outbox_seaorm::relay::pending_count;
use rdkafka::mocking::MockCluster;
use sea_orm::{ConnectOptions, Database, TransactionTrait};
use serde::{Deserialize, Serialize};

const RELAY: &str = env!("CARGO_BIN_EXE_outbox-relay");

fn run(args: &[&str]) -> Output {
    Command::new(RELAY)
        .args(args)
        .env_remove("OUTBOX_DATABASE_URL")
        .env_remove("OUTBOX_KAFKA_BROKERS")
        .output()
        .expect("run outbox-relay")
}

#[test]
fn bad_configuration_exits_with_code_2_and_says_why() {
    let zero = run(&[
        "--database-url",
        "sqlite::memory:",
        "--brokers",
        "127.0.0.1:1",
        "--batch-size",
        "0",
    ]);
    assert_eq!(zero.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&zero.stderr).contains("--batch-size must be at least 1"));

    let pair = run(&[
        "--database-url",
        "sqlite::memory:",
        "--brokers",
        "127.0.0.1:1",
        "--kafka-config",
        "novalue",
    ]);
    assert_eq!(pair.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&pair.stderr).contains("is not key=value"));

    let missing = run(&["--brokers", "127.0.0.1:1"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("--database-url"));

    let db = run(&[
        "--database-url",
        "sqlite:///nonexistent-dir/outbox.sqlite?mode=ro",
        "--brokers",
        "127.0.0.1:1",
    ]);
    assert_eq!(db.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&db.stderr).contains("cannot connect to the database"));
}

/// A widget was shipped.
#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
struct WidgetShipped {
    n: u32,
}

#[derive(Debug, AggregateRoot)]
#[aggregate(name = "Widget")]
struct Widget {
    #[aggregate(id)]
    id: u32,
    #[aggregate(events)]
    events: DomainEvents,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_the_outbox_and_prints_a_summary_on_sigterm() {
    let dir = std::env::temp_dir().join(format!("outbox-relay-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("outbox.sqlite");
    let _ = std::fs::remove_file(&path);
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let mut opts = ConnectOptions::new(url.clone());
    opts.max_connections(1).sqlx_logging(false);
    let db = Database::connect(opts).await.expect("sqlite");
    outbox_seaorm::schema::migrate(&db).await.expect("migrate");
    let outbox = Outbox::builder(db.clone())
        .handlers(HandlerRegistry::new())
        .build();
    for id in 0..3 {
        let mut widget = Widget {
            id,
            events: DomainEvents::new(),
        };
        widget.register_event(WidgetShipped { n: 1 });
        widget.register_event(WidgetShipped { n: 2 });
        let txn = db.begin().await.expect("begin");
        let written = outbox.write(&txn, &widget).await.expect("write");
        txn.commit().await.expect("commit");
        outbox.after_commit(&mut widget, written).await;
    }
    assert_eq!(pending_count(&db).await.expect("pending"), 6);

    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic("widget", 2, 1).expect("topic");
    let child = Command::new(RELAY)
        .args([
            "--database-url",
            &url,
            "--brokers",
            &cluster.bootstrap_servers(),
        ])
        .args(["--cleanup-after-secs", "3600"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn outbox-relay");
    let start = Instant::now();
    while pending_count(&db).await.expect("pending") > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the relay published nothing"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let output = child.wait_with_output().expect("relay output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "exit {:?}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("outbox-relay: published 6, retried 0, dead-lettered 0"),
        "{stdout}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
