//! Helper process of the delivery crash test (`tests/tests/delivery.rs`): saves one event whose
//! in-process handler signals that it started, then sleeps, so the test can kill this process
//! between the commit and the handler's completion.
//!
//! Usage: `delivery_crash <database url> <started file> <aggregate id>`.

use std::time::Duration;

use outbox_core::{
    AggregateRoot, BoxFuture, DomainEvent, DomainEvents, Envelope, EventContext, Handler,
    HandlerError, HandlerRegistry,
};
use outbox_seaorm::{Outbox, TransactionExt};
use sea_orm::{ConnectionTrait, Database, Statement};
use serde::{Deserialize, Serialize};

/// The event; the test's recovery handler decodes the same shape.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct JobQueued {
    started_file: String,
}

impl DomainEvent for JobQueued {
    const NAME: &'static str = "JobQueued";
    const VERSION: u32 = 1;
}

struct Job {
    id: String,
    events: DomainEvents,
}

impl AggregateRoot for Job {
    const AGGREGATE_TYPE: &'static str = "Job";
    fn aggregate_id(&self) -> String {
        self.id.clone()
    }
    fn pending_events(&self) -> &DomainEvents {
        &self.events
    }
    fn pending_events_mut(&mut self) -> &mut DomainEvents {
        &mut self.events
    }
}

/// Signals "started", then takes far longer than the test waits before killing the process.
fn slow_effect<'a>(
    envelope: &'a Envelope,
    ctx: &'a EventContext<'a>,
) -> BoxFuture<'a, Result<(), HandlerError>> {
    Box::pin(async move {
        let event: JobQueued = envelope.decode().map_err(HandlerError::permanent)?;
        std::fs::write(&event.started_file, b"started")?;
        tokio::time::sleep(Duration::from_secs(120)).await;
        let txn = ctx.transaction()?;
        let backend = txn.get_database_backend();
        txn.execute_raw(Statement::from_string(
            backend,
            format!(
                "INSERT INTO effects (event_id, handler, attempt) VALUES ('{}', 'slow', 0)",
                envelope.id()
            ),
        ))
        .await?;
        Ok(())
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(url), Some(started_file), Some(id)) = (args.next(), args.next(), args.next()) else {
        return Err("usage: delivery_crash <database url> <started file> <aggregate id>".into());
    };
    let db = Database::connect(url).await?;
    let handlers = HandlerRegistry::new().with(Handler::new(
        "crash::effect",
        "JobQueued",
        1,
        None,
        None,
        slow_effect,
    ));
    let outbox = Outbox::builder(db)
        .handlers(handlers)
        .delivery_grace(Duration::from_secs(1))
        .build();
    let mut job = Job {
        id,
        events: DomainEvents::new(),
    };
    job.register_event(JobQueued { started_file });
    let mut uow = outbox.begin().await?;
    uow.record(&mut job).await?;
    uow.commit().await?;
    // The default dispatcher runs the handler on another task; wait to be killed.
    tokio::time::sleep(Duration::from_secs(300)).await;
    Ok(())
}
