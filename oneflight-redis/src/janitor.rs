//! No lease without a holder: leases that this process may hold but can no longer use
//! are released by a thread of the fleet's own, not by a task.
//!
//! A lease is handed to the janitor when its holder goes away before publishing (its
//! local callers left, its load panicked or failed, its value cannot be shared), when a
//! publish's reply was lost (it may not have taken effect), and when an acquire's reply
//! was lost or its caller cancelled while it was in flight (it may have taken the lease).
//! The janitor releases each by nonce (compare-and-delete: a no-op when the lease is
//! not, or no longer, that one) and voids the nonce, so that an acquire with it that
//! Redis runs late (queued while Redis stalled) takes nothing. It retries while Redis
//! does not answer: however long Redis stalls, the lease such a late acquire takes is
//! released, or never taken, right when Redis resumes. (At most [`MAX_PENDING`]
//! releases wait; past that, the oldest is dropped and its lease, if any, expires.)
//!
//! A thread, because the case that matters most is a runtime shutting down with loads in
//! flight (every rolling deploy): its tasks are dropped unrun, so a release spawned on it
//! would never run, and every other replica would wait out a full lease per hot key. The
//! thread is started at the first release and ends when the fleet is dropped; dropping
//! the fleet's last handle waits, bounded, for the releases still pending.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use crate::health::Health;
use crate::stats::Counters;
use crate::store::{Names, Transport};

/// How often a release that Redis did not answer is tried again.
const RETRY_EVERY: Duration = Duration::from_millis(50);

/// The most releases that wait for Redis to answer.
const MAX_PENDING: usize = 10_000;

/// The releases of one fleet.
#[derive(Debug)]
pub(crate) struct Janitor {
    store: Arc<dyn Transport>,
    lease: Duration,
    /// How long dropping the fleet waits for pending releases.
    patience: Duration,
    counters: Arc<Counters>,
    health: Arc<Health>,
    /// The running thread's inbox and its last word; `None` until the first release.
    worker: Mutex<Option<Worker>>,
}

#[derive(Debug)]
struct Worker {
    jobs: mpsc::Sender<Job>,
    /// Closed (with no message) when the thread ends.
    finished: mpsc::Receiver<()>,
}

#[derive(Debug)]
struct Job {
    names: Names,
    nonce: String,
    /// Whether a failure of this job was counted already: a release that Redis does not
    /// answer counts once in the stats, not once per retry.
    counted: bool,
}

impl Janitor {
    pub(crate) fn new(
        store: Arc<dyn Transport>,
        lease: Duration,
        patience: Duration,
        counters: Arc<Counters>,
        health: Arc<Health>,
    ) -> Self {
        Janitor {
            store,
            lease,
            patience,
            counters,
            health,
            worker: Mutex::new(None),
        }
    }

    /// Releases, soon and from the janitor's thread, the lease of `names` taken with
    /// `nonce`, if it is still that one. Never blocks.
    pub(crate) fn release(&self, names: Names, nonce: String) {
        let job = Job {
            names,
            nonce,
            counted: false,
        };
        let mut worker = self.worker.lock().unwrap_or_else(PoisonError::into_inner);
        let job = match &*worker {
            Some(running) => match running.jobs.send(job) {
                Ok(()) => return,
                Err(mpsc::SendError(job)) => job, // the thread died: start another
            },
            None => job,
        };
        let (jobs, inbox) = mpsc::channel();
        let (done, finished) = mpsc::channel::<()>();
        let (store, counters, health) = (
            self.store.clone(),
            self.counters.clone(),
            self.health.clone(),
        );
        let (lease, patience) = (self.lease, self.patience);
        let spawned = thread::Builder::new()
            .name("oneflight-redis-janitor".to_owned())
            .spawn(move || {
                work(&*store, lease, patience, &counters, &health, &inbox);
                drop(done);
            });
        if spawned.is_ok() {
            let _ = jobs.send(job);
            *worker = Some(Worker { jobs, finished });
        }
        // Without a thread (the OS refused one), the lease simply expires.
    }
}

/// The thread: releases each job, retrying those that Redis did not answer, until its
/// inbox is closed and nothing is pending, or `patience` after it was closed.
fn work(
    store: &dyn Transport,
    lease: Duration,
    patience: Duration,
    counters: &Counters,
    health: &Health,
    inbox: &mpsc::Receiver<Job>,
) {
    let mut pending: Vec<Job> = Vec::new();
    let mut closed_at: Option<Instant> = None;
    while closed_at.is_none_or(|at| !pending.is_empty() && at.elapsed() < patience) {
        let next = if pending.is_empty() {
            inbox.recv().map_err(|_| RecvTimeoutError::Disconnected)
        } else if closed_at.is_some() {
            std::thread::sleep(RETRY_EVERY);
            Err(RecvTimeoutError::Timeout)
        } else {
            inbox.recv_timeout(RETRY_EVERY)
        };
        match next {
            Ok(job) => pending.push(job),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                closed_at.get_or_insert_with(Instant::now);
            }
        }
        pending.extend(inbox.try_iter());
        if pending.len() > MAX_PENDING {
            pending.drain(..pending.len() - MAX_PENDING);
        }
        pending.retain_mut(|job| match store.release(&job.names, &job.nonce, lease) {
            Ok(_) => false,
            Err(error) => {
                if !std::mem::replace(&mut job.counted, true) {
                    health.noted(&error, counters);
                }
                error.kind().is_unreachable()
            }
        });
    }
}

impl Drop for Janitor {
    /// The fleet is gone: close the inbox, and give the releases still pending a bounded
    /// time, so that a process that exits right after dropping its runtime and its fleet
    /// leaves no lease behind.
    fn drop(&mut self) {
        let worker = self
            .worker
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(Worker { jobs, finished }) = worker {
            drop(jobs);
            let _ = finished.recv_timeout(self.patience);
        }
    }
}
