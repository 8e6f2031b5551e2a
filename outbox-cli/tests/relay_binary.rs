//! The relay binaries (`outbox relay` and its old name `outbox-relay`): clear errors on bad
//! configuration, a run that publishes a SQLite outbox to a mock Kafka cluster and prints its
//! summary on SIGTERM, and the Prometheus endpoint of `--metrics-addr`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use outbox_core::{AggregateRoot, DomainEvent, DomainEvents, HandlerRegistry};
use outbox_seaorm::Outbox;
use outbox_seaorm::relay::pending_count;
use rdkafka::mocking::MockCluster;
use sea_orm::{ConnectOptions, Database, TransactionTrait};
use serde::{Deserialize, Serialize};

const RELAY: &str = env!("CARGO_BIN_EXE_outbox-relay");
const OUTBOX: &str = env!("CARGO_BIN_EXE_outbox");

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

    let both = run(&[
        "--database-url",
        "sqlite::memory:",
        "--brokers",
        "127.0.0.1:1",
        "--amqp-url",
        "amqp://127.0.0.1:1/%2f",
    ]);
    assert_eq!(both.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&both.stderr).contains("cannot be used with"));

    let neither = run(&["--database-url", "sqlite::memory:"]);
    assert_eq!(neither.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&neither.stderr).contains("--brokers"));

    let scheme = run(&[
        "--database-url",
        "sqlite::memory:",
        "--amqp-url",
        "http://127.0.0.1:1/",
    ]);
    assert_eq!(scheme.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&scheme.stderr).contains("--amqp-url must be an amqp://"));

    let kafka_flag = run(&[
        "--database-url",
        "sqlite::memory:",
        "--amqp-url",
        "amqp://127.0.0.1:1/%2f",
        "--kafka-config",
        "acks=all",
    ]);
    assert_eq!(kafka_flag.status.code(), Some(2));

    let addr = run(&[
        "--database-url",
        "sqlite::memory:",
        "--brokers",
        "127.0.0.1:1",
        "--metrics-addr",
        "not-an-address",
    ]);
    assert_eq!(addr.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&addr.stderr).contains("--metrics-addr"));

    let taken = TcpListener::bind("127.0.0.1:0").expect("a port");
    let port = taken.local_addr().expect("address").port();
    let busy = run(&[
        "--database-url",
        "sqlite::memory:",
        "--brokers",
        "127.0.0.1:1",
        "--metrics-addr",
        &format!("127.0.0.1:{port}"),
    ]);
    assert_eq!(busy.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&busy.stderr).contains("cannot serve metrics"));
}

#[test]
fn outbox_relay_checks_its_configuration_as_the_old_binary_does() {
    let zero = Command::new(OUTBOX)
        .args([
            "relay",
            "--database-url",
            "sqlite::memory:",
            "--brokers",
            "127.0.0.1:1",
            "--batch-size",
            "0",
        ])
        .env_remove("OUTBOX_DATABASE_URL")
        .env_remove("OUTBOX_KAFKA_BROKERS")
        .output()
        .expect("run outbox relay");
    assert_eq!(zero.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&zero.stderr).contains("--batch-size must be at least 1"));
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

/// A fresh SQLite file with the outbox tables; returns its URL and a connection.
async fn sqlite(name: &str) -> (PathBuf, String, sea_orm::DatabaseConnection) {
    let dir = std::env::temp_dir().join(format!("outbox-cli-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("outbox.sqlite");
    let _ = std::fs::remove_file(&path);
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let mut opts = ConnectOptions::new(url.clone());
    opts.max_connections(1).sqlx_logging(false);
    let db = Database::connect(opts).await.expect("sqlite");
    outbox_seaorm::schema::migrate(&db).await.expect("migrate");
    (dir, url, db)
}

/// Saves two events for each widget in `ids`.
async fn save_widgets(db: &sea_orm::DatabaseConnection, ids: std::ops::Range<u32>) {
    let outbox = Outbox::builder(db.clone())
        .handlers(HandlerRegistry::new())
        .build();
    for id in ids {
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
}

async fn wait_drained(db: &sea_orm::DatabaseConnection) {
    let start = Instant::now();
    while pending_count(db).await.expect("pending") > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the relay published nothing"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends SIGTERM and returns what the relay printed.
fn stop(child: Child) -> Output {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    // Bounded: a relay that does not stop within 30 s is killed (and the assertion below fails).
    let pid = child.id().to_string();
    let (exited, watch) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if watch.recv_timeout(Duration::from_secs(30)).is_err() {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
        }
    });
    let output = child.wait_with_output().expect("relay output");
    let _ = exited.send(());
    let _ = watchdog.join();
    assert!(
        output.status.success(),
        "exit {:?}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_the_outbox_and_prints_a_summary_on_sigterm() {
    let (dir, url, db) = sqlite("summary").await;
    save_widgets(&db, 0..3).await;
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
    wait_drained(&db).await;
    let output = stop(child);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("outbox-relay: published 6, retried 0, dead-lettered 0"),
        "{stdout}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `GET /metrics` over a plain TCP connection; the response's body.
fn scrape(port: u16) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    Some(response.split_once("\r\n\r\n")?.1.to_owned())
}

/// The value of counter `name` in a Prometheus text body (0 when absent).
fn counter(body: &str, name: &str) -> f64 {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            (key == name).then(|| value.parse::<f64>().ok()).flatten()
        })
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_prometheus_metrics_whose_published_counter_rises() {
    let (dir, url, db) = sqlite("metrics").await;
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic("widget", 2, 1).expect("topic");
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").expect("ephemeral port");
        listener.local_addr().expect("address").port()
    };
    let child = Command::new(OUTBOX)
        .args([
            "relay",
            "--database-url",
            &url,
            "--brokers",
            &cluster.bootstrap_servers(),
            "--metrics-addr",
            &format!("127.0.0.1:{port}"),
        ])
        .env("RUST_LOG", "warn")
        .env_remove("OUTBOX_AMQP_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn outbox relay");
    let start = Instant::now();
    let before = loop {
        if let Some(body) = scrape(port) {
            break body;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the metrics endpoint never answered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let published = "outbox_relay_published_total";
    assert_eq!(counter(&before, published), 0.0, "{before}");

    save_widgets(&db, 0..3).await;
    wait_drained(&db).await;
    let after = scrape(port).expect("scrape after the first events");
    assert_eq!(counter(&after, published), 6.0, "{after}");

    save_widgets(&db, 3..5).await;
    wait_drained(&db).await;
    let later = scrape(port).expect("scrape after more events");
    assert_eq!(counter(&later, published), 10.0, "{later}");
    assert!(
        later.contains("# TYPE outbox_relay_published_total counter"),
        "{later}"
    );

    let output = stop(child);
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("published 10,"),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
