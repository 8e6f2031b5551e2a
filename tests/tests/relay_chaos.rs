//! The independent crash test: events are saved through the real save path while relay
//! processes are SIGKILLed and restarted at random moments; every committed event must arrive,
//! in order per aggregate, with duplicates only from batches a killed relay had not marked.

use std::collections::HashSet;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use outbox_core::{DeferredDispatcher, HandlerRegistry};
use outbox_seaorm::Outbox;
use outbox_seaorm::relay::pending_count;
use outbox_tests::counters::CounterLoad;
use outbox_tests::fixtures::{Published, assert_ordered};
use outbox_tests::{Backend, TestDb, db_tests};
use uuid::Uuid;

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

    // Saves go on in the background for 5 s: 40 aggregates, 1 to 3 events per transaction.
    let writer = tokio::spawn(CounterLoad::new(outbox, 40).run_for(Duration::from_secs(5), 3));

    // Meanwhile relays are killed and restarted at random moments.
    let mut workers: Vec<Child> = (0..relays).map(|_| spawn_worker(&t, &out)).collect();
    let mut kills = 0;
    while !writer.is_finished() {
        tokio::time::sleep(Duration::from_millis(fastrand::u64(50..400))).await;
        let victim = fastrand::usize(0..workers.len());
        workers[victim].kill().expect("SIGKILL a relay");
        workers[victim].wait().expect("reap");
        kills += 1;
        workers[victim] = spawn_worker(&t, &out);
    }
    let written = writer.await.expect("writer").committed;

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
