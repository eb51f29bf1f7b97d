//! Group commit: concurrent writers share one store transaction.
//!
//! Every writer enqueues its update and waits; one writer task takes
//! everything queued (up to a batch bound), commits it in one transaction and
//! answers every waiter with the outcome. Under load this turns N commits
//! (N fsyncs) into one, which is what keeps `durability = "store"` fast.

use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use super::{NewUpdate, Store, StoreError};
use crate::metrics;

type Waiter = oneshot::Sender<Result<(), StoreError>>;

#[derive(Clone)]
pub struct GroupCommit {
    queue: mpsc::Sender<(NewUpdate, Waiter)>,
    /// Why the last commit failed, until one succeeds.
    failing: Arc<Mutex<Option<String>>>,
}

impl GroupCommit {
    /// Starts the writer task. `max_batch` bounds one transaction;
    /// `max_queued` bounds the updates waiting for the next one.
    pub fn start(store: Arc<dyn Store>, max_batch: usize, max_queued: usize) -> Self {
        let (queue, rx) = mpsc::channel(max_queued);
        let failing = Arc::new(Mutex::new(None));
        tokio::spawn(writer(store, rx, max_batch, failing.clone()));
        Self { queue, failing }
    }

    /// Why the last commit failed, if no commit has succeeded since (a full
    /// disk: `/readyz` says so until writes go through again).
    pub fn failing(&self) -> Option<String> {
        self.failing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Appends `update` and returns once it is committed.
    pub async fn append(&self, update: NewUpdate) -> Result<(), StoreError> {
        let (done, outcome) = oneshot::channel();
        let stopped = || StoreError::Unavailable("store writer stopped".into());
        self.queue
            .send((update, done))
            .await
            .map_err(|_| stopped())?;
        outcome.await.map_err(|_| stopped())?
    }
}

async fn writer(
    store: Arc<dyn Store>,
    mut rx: mpsc::Receiver<(NewUpdate, Waiter)>,
    max_batch: usize,
    failing: Arc<Mutex<Option<String>>>,
) {
    let mut batch = Vec::with_capacity(max_batch);
    let mut waiters = Vec::with_capacity(max_batch);
    while let Some((update, waiter)) = rx.recv().await {
        batch.push(update);
        waiters.push(waiter);
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok((update, waiter)) => {
                    batch.push(update);
                    waiters.push(waiter);
                }
                Err(_) => break,
            }
        }
        let outcome = store.append(&batch).await;
        let failed = outcome.as_ref().err().map(ToString::to_string);
        if let Some(e) = &failed {
            metrics::store_error();
            tracing::warn!(error = %e, updates = batch.len(), "store commit failed");
        }
        let was_failing = std::mem::replace(
            &mut *failing.lock().unwrap_or_else(|p| p.into_inner()),
            failed.clone(),
        );
        if was_failing.is_some() && failed.is_none() {
            tracing::info!("store commits succeed again");
        }
        for waiter in waiters.drain(..) {
            // A waiter that gave up (its connection closed) needs no answer.
            let _ = waiter.send(outcome.clone());
        }
        batch.clear();
    }
}
