//! Child process of the relay crash test: runs a relay whose publisher appends
//! `aggregate,sequence,event_id` lines to a file (flushed before it answers).
//!
//! Usage: `relay_worker <database-url> <output-file>`. With `RELAY_WORKER_PAUSE_MS` set, the
//! publisher sleeps that long after writing a batch and before answering, so the test can kill
//! the process between publishing and marking.

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use outbox_core::{Envelope, PublishError, Publisher};
use outbox_seaorm::Relay;
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DbBackend, Statement};

struct FilePublisher {
    file: Mutex<std::fs::File>,
    pause: Option<Duration>,
}

#[async_trait::async_trait]
impl Publisher for FilePublisher {
    async fn publish(&self, batch: &[Envelope]) -> Vec<Result<(), PublishError>> {
        let written = {
            let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
            let mut lines = String::new();
            for e in batch {
                lines.push_str(&format!(
                    "{}/{},{},{}\n",
                    e.aggregate_type(),
                    e.aggregate_id(),
                    e.sequence(),
                    e.id()
                ));
            }
            file.write_all(lines.as_bytes())
                .and_then(|()| file.flush())
                .and_then(|()| file.sync_data())
        };
        if let Err(error) = written {
            return batch
                .iter()
                .map(|_| {
                    Err(PublishError::transient(std::io::Error::other(
                        error.to_string(),
                    )))
                })
                .collect();
        }
        if let Some(pause) = self.pause {
            tokio::time::sleep(pause).await;
        }
        batch.iter().map(|_| Ok(())).collect()
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(url), Some(path)) = (args.next(), args.next()) else {
        return Err("usage: relay_worker <database-url> <output-file>".into());
    };
    let pause = std::env::var("RELAY_WORKER_PAUSE_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map(Duration::from_millis);
    let mut opts = ConnectOptions::new(url.clone());
    opts.sqlx_logging(false);
    if url.starts_with("sqlite:") {
        opts.max_connections(1);
    }
    let db = Database::connect(opts).await?;
    if db.get_database_backend() == DbBackend::Sqlite {
        db.execute_raw(Statement::from_string(
            DbBackend::Sqlite,
            "PRAGMA busy_timeout=10000",
        ))
        .await?;
    }
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    let publisher = FilePublisher {
        file: Mutex::new(file),
        pause,
    };
    // With a pause (the kill test), one cycle at a time, so exactly one batch is in flight
    // when it is killed; otherwise the default, two cycles at once (the chaos test).
    let concurrency = if pause.is_some() { 1 } else { 2 };
    let relay = Relay::builder(db, publisher)
        .concurrency(concurrency)
        .batch_size(100)
        .idle_backoff(Duration::from_millis(10), Duration::from_millis(100))
        .fallback_poll(Duration::from_millis(200))
        .build();
    relay
        .run_until(async {
            // Runs until the test kills it.
            std::future::pending::<()>().await;
        })
        .await?;
    Ok(())
}
