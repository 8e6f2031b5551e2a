//! The relay under faults: a relay process killed between publishing and marking, and database
//! connections terminated under a running relay.

use std::collections::HashSet;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use outbox_core::testing::InMemoryPublisher;
use outbox_seaorm::Relay;
use outbox_seaorm::relay::pending_count;
use outbox_tests::fixtures::{Published, as_refs, assert_ordered, insert_events, round_robin};
use outbox_tests::{Backend, RunningRelay, TestDb, db_tests, fresh};
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};
use uuid::Uuid;

fn read_lines(path: &std::path::Path) -> Vec<Published> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|line| {
            let mut parts = line.split(',');
            let aggregate = parts.next().expect("aggregate").to_owned();
            let sequence = parts.next().expect("sequence").parse().expect("number");
            let id = Uuid::parse_str(parts.next().expect("id")).expect("uuid");
            (aggregate, sequence, id)
        })
        .collect()
}

fn worker(t: &TestDb, out: &std::path::Path, pause_ms: Option<u64>) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_relay_worker"));
    cmd.arg(&t.url).arg(out);
    match pause_ms {
        Some(ms) => cmd.env("RELAY_WORKER_PAUSE_MS", ms.to_string()),
        None => cmd.env_remove("RELAY_WORKER_PAUSE_MS"),
    };
    cmd.spawn().expect("spawn relay_worker")
}

async fn relay_killed_between_publishing_and_marking_loses_nothing(t: TestDb) {
    let pairs = round_robin(10, 300);
    let written = insert_events(&t.db, &as_refs(&pairs)).await;
    let out = std::env::temp_dir().join(format!(
        "outbox-relay-crash-{:?}-{}.log",
        t.backend,
        std::process::id()
    ));
    let _ = std::fs::remove_file(&out);

    // First worker: publishes its first batch (100 rows), then pauses before marking; killed.
    let mut child = worker(&t, &out, Some(60_000));
    let start = Instant::now();
    while read_lines(&out).len() < 100 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "worker published nothing"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().expect("SIGKILL the worker");
    child.wait().expect("reap");
    let killed_batch: HashSet<Uuid> = read_lines(&out).iter().map(|p| p.2).collect();
    assert_eq!(
        killed_batch.len(),
        100,
        "exactly one batch went out before the kill"
    );
    // Its transaction died with it: nothing is marked.
    let start = Instant::now();
    while pending_count(&t.db).await.expect("pending") != 300 {
        // PostgreSQL/MariaDB notice the dead client and roll back within moments.
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "killed batch stayed marked"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Restart: everything goes out.
    let mut child = worker(&t, &out, None);
    let start = Instant::now();
    while pending_count(&t.db).await.expect("pending") > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "restarted worker did not drain"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().expect("stop the worker");
    child.wait().expect("reap");

    let lines = read_lines(&out);
    let _ = std::fs::remove_file(&out);
    let ids: HashSet<Uuid> = lines.iter().map(|p| p.2).collect();
    let expected: HashSet<Uuid> = written.iter().map(|w| w.id).collect();
    assert_eq!(ids, expected, "nothing lost");
    let mut seen = HashSet::new();
    for (_, _, id) in &lines {
        if !seen.insert(*id) {
            assert!(
                killed_batch.contains(id),
                "duplicate {id} outside the killed batch"
            );
        }
    }
    let repeats = assert_ordered(&lines);
    assert_eq!(repeats, 100, "the killed batch, once more");
}

db_tests!(relay_killed_between_publishing_and_marking_loses_nothing);

/// Ends every other connection to the test database (the relay's pool and its LISTEN).
async fn kill_connections(admin: &DatabaseConnection, backend: Backend) -> u64 {
    match backend {
        Backend::Postgres => admin
            .query_all_raw(Statement::from_string(
                admin.get_database_backend(),
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid()",
            ))
            .await
            .expect("terminate backends")
            .len() as u64,
        Backend::MariaDb => {
            let rows = admin
                .query_all_raw(Statement::from_string(
                    admin.get_database_backend(),
                    "SELECT id FROM information_schema.processlist \
                     WHERE db = DATABASE() AND id <> CONNECTION_ID()",
                ))
                .await
                .expect("processlist");
            let mut killed = 0;
            for row in rows {
                let id: i64 = row.try_get_by_index(0).expect("id");
                // A connection may be gone already.
                if admin
                    .execute_raw(Statement::from_string(
                        admin.get_database_backend(),
                        format!("KILL {id}"),
                    ))
                    .await
                    .is_ok()
                {
                    killed += 1;
                }
            }
            killed
        }
        Backend::Sqlite => 0,
    }
}

async fn relay_recovers_from_terminated_connections(backend: Backend, test: &str) {
    let Some(t) = fresh(backend, test).await else {
        return;
    };
    // The admin connection stays out of the relay's pool.
    let admin = t.connect_again().await;
    let pairs = round_robin(20, 3_000);
    let written = insert_events(&t.db, &as_refs(&pairs)).await;
    let publisher = InMemoryPublisher::new();
    publisher.set_delay(Some(Duration::from_millis(50)));
    let relay_db = t.connect_again().await;
    let relay = Relay::builder(relay_db, publisher.clone())
        .batch_size(100)
        .fallback_poll(Duration::from_secs(30))
        .idle_backoff(Duration::from_millis(10), Duration::from_millis(200))
        .build();
    let running = RunningRelay::start(relay);
    let mut kills = 0;
    for _ in 0..3 {
        let start = Instant::now();
        let before = publisher.published().count();
        while publisher.published().count() <= before {
            assert!(start.elapsed() < Duration::from_secs(20), "relay stalled");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // A burst of kills over a few cycles: a kill is felt only when it lands while a
        // statement of the relay runs (an idle pooled connection is replaced unnoticed).
        for _ in 0..8 {
            kills += kill_connections(&admin, backend).await;
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(kills >= 3, "connections were terminated ({kills})");
    // Saved after the kills: the relay must notice these too (LISTEN re-established on
    // PostgreSQL, the poll elsewhere) well before the 30 s fallback poll.
    let late = insert_events(&admin, &[("Order", "late"), ("Order", "late")]).await;
    let start = Instant::now();
    loop {
        let pending = pending_count(&admin).await.expect("pending");
        if pending == 0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{pending} still pending after the connection kills"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats = running.stop().await;
    let published: Vec<Published> = publisher
        .published()
        .envelopes()
        .iter()
        .map(|e| {
            (
                format!("{}/{}", e.aggregate_type(), e.aggregate_id()),
                e.sequence(),
                e.id(),
            )
        })
        .collect();
    let ids: HashSet<Uuid> = published.iter().map(|p| p.2).collect();
    let expected: HashSet<Uuid> = written.iter().chain(&late).map(|w| w.id).collect();
    assert_eq!(ids, expected, "every event published");
    let repeats = assert_ordered(&published);
    eprintln!(
        "{backend:?}: {kills} connections killed, {} failed cycles, {repeats} duplicates",
        stats.errors()
    );
    assert!(stats.errors() >= 1, "the kills were felt: {stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_recovers_from_terminated_connections_postgres() {
    relay_recovers_from_terminated_connections(
        Backend::Postgres,
        "relay_faults::relay_recovers_from_terminated_connections_postgres",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_recovers_from_terminated_connections_mariadb() {
    relay_recovers_from_terminated_connections(
        Backend::MariaDb,
        "relay_faults::relay_recovers_from_terminated_connections_mariadb",
    )
    .await;
}
