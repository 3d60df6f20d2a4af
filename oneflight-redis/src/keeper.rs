//! The keeper: a thread of the fleet's own that renews the leases this process holds and
//! releases the ones it can no longer use, with blocking commands on a connection of its
//! own. A thread, not a task, for two reasons:
//!
//! - **Renewal does not depend on how the load is polled.** A load that blocks its
//!   worker thread starves the tasks queued on that worker, a renewal task included; a
//!   thread is not queued anywhere.
//! - **No lease without a holder, even at shutdown.** A runtime shutting down with loads
//!   in flight (every rolling deploy) drops its tasks unrun: a release spawned on it would
//!   never run, and every other replica would wait out a full lease per hot key.
//!
//! **Renewals.** A held lease is in [`Keeper::hold`]'s map while its load runs. A lease
//! taken or renewed at `s` is due at `s + L/3`; after a failed attempt that began at `b`
//! it is due again at `b + L/6`; each attempt is bounded by `L/6`; the thread wakes when
//! the first lease is due (and every `L/6` at least, to see new ones). So after the last
//! success at `s`, attempts start at `s + L/3`, `s + L/2` and `s + 2L/3`, and the fourth
//! by `s + 5L/6` ends by `s + L`: two (indeed three) failed renewals in a row are
//! survived. An uncontended call pays a map insert and removal.
//!
//! **Releases.** A lease is handed to the keeper when its holder goes away before
//! publishing (its local callers left, its load panicked or failed, its value cannot be
//! shared), when a publish's reply was lost (it may not have taken effect), and when an
//! acquire's reply was lost or its caller cancelled while it was in flight (it may have
//! taken the lease). The keeper releases each by nonce (compare-and-delete: a no-op when
//! the lease is not, or no longer, that one) and voids the nonce, so that an acquire with
//! it that Redis runs late (queued while Redis stalled) takes nothing. It retries while
//! Redis does not answer: however long Redis stalls, the lease such a late acquire takes
//! is released, or never taken, right when Redis resumes. (At most [`MAX_PENDING`]
//! releases wait; past that, the oldest is dropped and its lease, if any, expires.)
//!
//! The thread starts at the first lease held or released and ends when the fleet is
//! dropped; dropping the fleet's last handle waits, bounded, for releases still pending.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use crate::health::Health;
use crate::names::Names;
use crate::observe;
use crate::stats::Counters;
use crate::store::Transport;

/// How often a release that Redis did not answer is tried again.
const RETRY_EVERY: Duration = Duration::from_millis(50);

/// The most releases that wait for Redis to answer.
const MAX_PENDING: usize = 10_000;

/// The leases this process holds, by a number of their own.
type Held = Arc<Mutex<HashMap<u64, Lease>>>;

/// Renewals and releases of one fleet.
#[derive(Debug)]
pub(crate) struct Keeper {
    /// What the thread needs; shared with it.
    duty: Arc<Duty>,
    /// How long dropping the fleet waits for pending releases.
    patience: Duration,
    next: AtomicU64,
    /// The running thread's inbox and its last word; `None` until first needed.
    worker: Mutex<Option<Worker>>,
}

#[derive(Debug)]
struct Duty {
    store: Arc<dyn Transport>,
    lease: Duration,
    counters: Arc<Counters>,
    health: Arc<Health>,
    held: Held,
}

#[derive(Debug)]
struct Lease {
    names: Names,
    token: String,
    /// When the next renewal is due; `None` once the lease is known lost.
    due: Option<Instant>,
}

#[derive(Debug)]
struct Worker {
    jobs: mpsc::Sender<Release>,
    /// Closed (with no message) when the thread ends.
    finished: mpsc::Receiver<()>,
}

#[derive(Debug)]
struct Release {
    names: Names,
    nonce: String,
    /// Whether a failure of this release was counted already: a release that Redis does
    /// not answer counts once in the stats, not once per retry.
    counted: bool,
}

/// A held lease, renewed until this is dropped.
#[derive(Debug)]
pub(crate) struct Holding {
    held: Held,
    id: u64,
}

impl Drop for Holding {
    fn drop(&mut self) {
        lock(&self.held).remove(&self.id);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Keeper {
    pub(crate) fn new(
        store: Arc<dyn Transport>,
        lease: Duration,
        patience: Duration,
        counters: Arc<Counters>,
        health: Arc<Health>,
    ) -> Self {
        Keeper {
            duty: Arc::new(Duty {
                store,
                lease,
                counters,
                health,
                held: Held::default(),
            }),
            patience,
            next: AtomicU64::new(0),
            worker: Mutex::new(None),
        }
    }

    /// Renews the lease of the flight `token` until the returned guard is dropped.
    pub(crate) fn hold(&self, names: &Names, token: &str) -> Holding {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let lease = Lease {
            names: names.clone(),
            token: token.to_owned(),
            due: Instant::now().checked_add(self.duty.lease / 3),
        };
        lock(&self.duty.held).insert(id, lease);
        // Started once; a no-op on every later call but for a lock.
        self.send(None);
        Holding {
            held: self.duty.held.clone(),
            id,
        }
    }

    /// Releases, soon and from the keeper's thread, the lease of `names` taken with
    /// `nonce`, if it is still that one. Never blocks.
    pub(crate) fn release(&self, names: Names, nonce: String) {
        self.send(Some(Release {
            names,
            nonce,
            counted: false,
        }));
    }

    /// Hands `release` to the thread, starting it if none runs.
    fn send(&self, release: Option<Release>) {
        let mut worker = lock(&self.worker);
        let release = match (&*worker, release) {
            (Some(_), None) => return,
            (Some(running), Some(release)) => match running.jobs.send(release) {
                Ok(()) => return,
                Err(mpsc::SendError(release)) => Some(release), // the thread died
            },
            (None, release) => release,
        };
        let (jobs, inbox) = mpsc::channel();
        let (done, finished) = mpsc::channel::<()>();
        let (duty, patience) = (self.duty.clone(), self.patience);
        let spawned = thread::Builder::new()
            .name("oneflight-redis-keeper".to_owned())
            .spawn(move || {
                duty.work(patience, &inbox);
                drop(done);
            });
        if spawned.is_ok() {
            if let Some(release) = release {
                let _ = jobs.send(release);
            }
            *worker = Some(Worker { jobs, finished });
        }
        // Without a thread (the OS refused one), leases are not renewed, and released
        // ones expire: the next call tries again.
    }
}

impl Duty {
    /// The thread: renews what is due every sixth of the lease, releases what it is
    /// given, until its inbox is closed and no release is pending, or `patience` after.
    fn work(&self, patience: Duration, inbox: &mpsc::Receiver<Release>) {
        let tick = self.lease / 6;
        let mut pending: Vec<Release> = Vec::new();
        let mut closed_at: Option<Instant> = None;
        while closed_at.is_none_or(|at| !pending.is_empty() && at.elapsed() < patience) {
            // Awake when the first held lease is due, and at least every sixth of the
            // lease, so that a lease held since the last look (due a third of the lease
            // after it was taken) is seen in time.
            let now = Instant::now();
            let earliest = lock(&self.held)
                .values()
                .filter_map(|lease| lease.due)
                .min();
            let until_due = earliest.map_or(tick, |due| due.saturating_duration_since(now));
            let mut wait = until_due.min(tick);
            if !pending.is_empty() {
                wait = wait.min(RETRY_EVERY);
            }
            let next = if closed_at.is_some() {
                thread::sleep(wait.min(RETRY_EVERY));
                Err(RecvTimeoutError::Timeout)
            } else {
                inbox.recv_timeout(wait)
            };
            match next {
                Ok(release) => pending.push(release),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    closed_at.get_or_insert_with(Instant::now);
                }
            }
            pending.extend(inbox.try_iter());
            if pending.len() > MAX_PENDING {
                pending.drain(..pending.len() - MAX_PENDING);
            }
            self.release_pending(&mut pending);
            self.renew_due();
        }
    }

    fn release_pending(&self, pending: &mut Vec<Release>) {
        pending.retain_mut(
            |job| match self.store.release(&job.names, &job.nonce, self.lease) {
                Ok(_) => false,
                Err(error) => {
                    if !std::mem::replace(&mut job.counted, true) {
                        self.health.noted(&error, &self.counters);
                    }
                    error.kind().is_unreachable()
                }
            },
        );
    }

    /// Renews every held lease that is due, one after another; a renewal that Redis does
    /// not answer ends the round, and what is left is tried at once in the next.
    fn renew_due(&self) {
        let now = Instant::now();
        let due: Vec<(u64, Names, String)> = lock(&self.held)
            .iter()
            .filter(|(_, lease)| lease.due.is_some_and(|due| due <= now))
            .map(|(id, lease)| (*id, lease.names.clone(), lease.token.clone()))
            .collect();
        for (id, names, token) in due {
            let began = Instant::now();
            let (next, unreachable) = match self.store.renew(&names, &token, self.lease) {
                Ok(true) => {
                    self.health.answered();
                    (began.checked_add(self.lease / 3), false)
                }
                // Lost: the publish will be rejected.
                Ok(false) => {
                    self.health.answered();
                    observe::event!(self.health.name, "a lease was lost while its load ran");
                    (None, false)
                }
                Err(error) => {
                    self.health.failed(&error, &self.counters);
                    (
                        began.checked_add(self.lease / 6),
                        error.kind().is_unreachable(),
                    )
                }
            };
            if let Some(lease) = lock(&self.held).get_mut(&id) {
                lease.due = next;
            }
            if unreachable {
                return;
            }
        }
    }
}

impl Drop for Keeper {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FleetError;
    use crate::store::{Acquired, Stored};
    use futures_util::future::BoxFuture;

    /// A store whose renewals fail (`fails` in a row, each taking `slow`) and which
    /// checks that the lease never ran out: each success must come within a lease of the
    /// last.
    #[derive(Debug)]
    struct Renewals {
        lease: Duration,
        slow: Duration,
        fails: u32,
        state: Mutex<(Instant, u32, Vec<Duration>)>,
    }

    impl Transport for Renewals {
        fn acquire<'a>(
            &'a self,
            _: &'a Names,
            _: Option<&'a str>,
            _: &'a str,
            _: Duration,
            _: bool,
        ) -> BoxFuture<'a, Result<Acquired, FleetError>> {
            unreachable!()
        }
        fn publish<'a>(
            &'a self,
            _: &'a Names,
            _: &'a str,
            _: Vec<u8>,
            _: Duration,
        ) -> BoxFuture<'a, Result<bool, FleetError>> {
            unreachable!()
        }
        fn renew(&self, _: &Names, _: &str, _: Duration) -> Result<bool, FleetError> {
            let mut state = lock(&self.state);
            let (last, failed, gaps) = &mut *state;
            if *failed < self.fails {
                *failed += 1;
                drop(state);
                thread::sleep(self.slow);
                return Err(FleetError::timeout("test", "renew", self.slow));
            }
            *failed = 0;
            gaps.push(last.elapsed());
            *last = Instant::now();
            Ok(true)
        }
        fn release(&self, _: &Names, _: &str, _: Duration) -> Result<bool, FleetError> {
            Ok(false)
        }
        fn lookup<'a>(&'a self, _: &'a Names) -> BoxFuture<'a, Result<Stored, FleetError>> {
            unreachable!("the keeper never looks a value up")
        }
        fn invalidate<'a>(&'a self, _: &'a Names) -> BoxFuture<'a, Result<bool, FleetError>> {
            unreachable!("the keeper never invalidates")
        }
    }

    /// Holds a lease for three leases while every renewal fails `fails` times in a row
    /// (each failure taking a sixth of the lease, as a timeout would), and returns the
    /// gaps between successful renewals.
    fn gaps_between_renewals(fails: u32) -> Vec<Duration> {
        let lease = Duration::from_millis(600);
        let store = Arc::new(Renewals {
            lease,
            slow: lease / 6,
            fails,
            state: Mutex::new((Instant::now(), 0, Vec::new())),
        });
        let keeper = Keeper::new(
            store.clone(),
            lease,
            Duration::from_secs(1),
            Arc::new(Counters::default()),
            Arc::new(Health::new("ns", "ns", Duration::from_secs(1))),
        );
        lock(&store.state).0 = Instant::now();
        let holding = keeper.hold(&Names::new("ns", "k"), "token");
        thread::sleep(lease * 3);
        drop(holding);
        let gaps = lock(&store.state).2.clone();
        assert!(gaps.len() >= 2, "renewed {} times", gaps.len());
        assert!(store.lease == lease);
        gaps
    }

    #[test]
    fn a_lease_survives_two_failed_renewals_in_a_row() {
        for gap in gaps_between_renewals(2) {
            // The lease runs out `lease` after the last success: every success came in
            // time, with room to spare.
            assert!(
                gap < Duration::from_millis(600),
                "a renewal came {gap:?} after the last"
            );
        }
    }
}
