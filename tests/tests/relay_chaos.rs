//! The independent crash test: events are saved through the real save path while relay
//! processes are SIGKILLed and restarted at random moments; every committed event must arrive,
//! in order per aggregate, with duplicates only from batches a killed relay had not marked.

use std::collections::HashSet;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use outbox_core::{AggregateRoot, DeferredDispatcher, DomainEvent, DomainEvents, HandlerRegistry};
use outbox_seaorm::Outbox;
use outbox_seaorm::relay::pending_count;
use outbox_tests::fixtures::{Published, assert_ordered};
use outbox_tests::{Backend, TestDb, db_tests};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A counter was bumped.
#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
struct CounterBumped {
    by: u32,
}

#[derive(Debug, AggregateRoot)]
#[aggregate(name = "Counter")]
struct Counter {
    #[aggregate(id)]
    id: String,
    #[aggregate(events)]
    events: DomainEvents,
}

fn read_lines(path: &Path) -> Vec<Published> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let mut parts = line.split(',');
            let aggregate = parts.next()?.to_owned();
            let sequence = parts.next()?.parse().ok()?;
            let id = Uuid::parse_str(parts.next()?).ok()?;
            Some((aggregate, sequence, id))
        })
        .collect()
}

fn spawn_worker(t: &TestDb, out: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_relay_worker"))
        .arg(&t.url)
        .arg(out)
        .env_remove("RELAY_WORKER_PAUSE_MS")
        .spawn()
        .expect("spawn relay_worker")
}

async fn relays_killed_at_random_while_saving_lose_nothing(t: TestDb) {
    // SQLite supports one relay per database; the servers get two competing ones.
    let relays = if t.backend == Backend::Sqlite { 1 } else { 2 };
    let out = std::env::temp_dir().join(format!(
        "outbox-relay-chaos-{:?}-{}.log",
        t.backend,
        std::process::id()
    ));
    let _ = std::fs::remove_file(&out);
    let outbox = Outbox::builder(t.db.clone())
        .handlers(HandlerRegistry::new())
        .dispatcher(DeferredDispatcher)
        .build();

    // Saves go on in the background: 40 aggregates, 1 to 3 events per transaction.
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let outbox = outbox.clone();
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            let mut written: Vec<Uuid> = Vec::new();
            let started = Instant::now();
            let mut i = 0u32;
            while started.elapsed() < Duration::from_secs(5) {
                let mut counter = Counter {
                    id: format!("c{}", i % 40),
                    events: DomainEvents::new(),
                };
                for by in 0..=(i % 3) {
                    counter.register_event(CounterBumped { by });
                }
                let ids: Vec<Uuid> = counter.events.as_slice().iter().map(|e| e.id()).collect();
                let mut uow = outbox.begin().await.expect("begin");
                uow.record(&mut counter).await.expect("record");
                uow.commit().await.expect("commit");
                written.extend(ids);
                i += 1;
                tokio::time::sleep(Duration::from_millis(fastrand::u64(0..4))).await;
            }
            done.store(true, Ordering::SeqCst);
            written
        })
    };

    // Meanwhile relays are killed and restarted at random moments.
    let mut workers: Vec<Child> = (0..relays).map(|_| spawn_worker(&t, &out)).collect();
    let mut kills = 0;
    while !done.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(fastrand::u64(50..400))).await;
        let victim = fastrand::usize(0..workers.len());
        workers[victim].kill().expect("SIGKILL a relay");
        workers[victim].wait().expect("reap");
        kills += 1;
        workers[victim] = spawn_worker(&t, &out);
    }
    let written = writer.await.expect("writer");

    // The last relays drain what is left.
    let start = Instant::now();
    while pending_count(&t.db).await.expect("pending") > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "relays did not drain after the chaos"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for mut worker in workers {
        worker.kill().expect("stop a relay");
        worker.wait().expect("reap");
    }

    let lines = read_lines(&out);
    let _ = std::fs::remove_file(&out);
    assert!(kills >= 5, "only {kills} kills: the chaos did not happen");
    assert!(written.len() > 300, "only {} events saved", written.len());
    let published: HashSet<Uuid> = lines.iter().map(|p| p.2).collect();
    let expected: HashSet<Uuid> = written.iter().copied().collect();
    let missing = expected.difference(&published).count();
    assert_eq!(missing, 0, "{missing} committed events never published");
    assert_eq!(
        published.len(),
        expected.len(),
        "published events nobody saved"
    );
    let repeats = assert_ordered(&lines);
    eprintln!(
        "{:?}: {} events saved, {kills} relay kills, {repeats} republished after a kill",
        t.backend,
        written.len()
    );
}

db_tests!(relays_killed_at_random_while_saving_lose_nothing);
