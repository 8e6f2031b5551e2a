//! Where after-commit work runs: the pluggable dispatcher.

use std::fmt;

use async_trait::async_trait;

use crate::handler::BoxFuture;

/// The after-commit delivery of one committed transaction's events to the in-process handlers.
///
/// The backend builds it (it runs each handler and records its completion); the dispatcher only
/// decides where and when it runs. It never fails: a handler's failure is recorded and retried by
/// the backend, never returned to the code that saved.
pub type DispatchJob = BoxFuture<'static, ()>;

/// Decides how after-commit work runs.
///
/// [`SpawnDispatcher`] (the default) runs it on a new tokio task, so a save returns as soon as it
/// commits; [`InlineDispatcher`] runs it before the save returns (handy in tests);
/// [`DeferredDispatcher`] leaves it to the backend's recovery worker.
#[async_trait]
pub trait Dispatcher: Send + Sync + fmt::Debug + 'static {
    /// Runs, schedules or drops `job`; called once per committed transaction with events.
    async fn dispatch(&self, job: DispatchJob);
}

/// Runs after-commit work on a new tokio task (the default).
///
/// Outside a tokio runtime it runs the work in place.
#[derive(Clone, Copy, Debug, Default)]
pub struct SpawnDispatcher;

#[async_trait]
impl Dispatcher for SpawnDispatcher {
    async fn dispatch(&self, job: DispatchJob) {
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(job);
            }
            Err(_) => job.await,
        }
    }
}

/// Runs after-commit work before the save returns.
#[derive(Clone, Copy, Debug, Default)]
pub struct InlineDispatcher;

#[async_trait]
impl Dispatcher for InlineDispatcher {
    async fn dispatch(&self, job: DispatchJob) {
        job.await;
    }
}

/// Runs nothing right after commit: the backend's durable recovery delivers the events later.
#[derive(Clone, Copy, Debug, Default)]
pub struct DeferredDispatcher;

#[async_trait]
impl Dispatcher for DeferredDispatcher {
    async fn dispatch(&self, job: DispatchJob) {
        drop(job);
    }
}
