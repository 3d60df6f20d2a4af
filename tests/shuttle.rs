//! Schedule exploration with shuttle: small scenarios of two to four callers of one key,
//! run under thousands of random and PCT schedules. Each asserts that at most one
//! execution of the key runs at a time (except beside a `forget`), that every caller that
//! finishes gets a value of an execution that ran (or the `Panicked` / closed channel the
//! contract gives), and that nothing is left in flight. Shuttle also reports a schedule
//! where every task waits forever as a deadlock, so a hang fails too.
//!
//! Run with `RUSTFLAGS="--cfg shuttle" cargo test --test shuttle --release`.
#![cfg(shuttle)]

mod common;

use common::yield_times;
use futures_util::FutureExt;
use futures_util::future::{Either, select};
use oneflight::{Group, Panicked};
use shuttle::future::{block_on, spawn};
use shuttle::rand::{Rng, thread_rng};
use shuttle::sync::atomic::{AtomicUsize, Ordering};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::pin;
use std::sync::{Arc, Mutex};

/// Schedules per scenario and scheduler; `SHUTTLE_ITERATIONS` overrides.
fn iterations() -> usize {
    std::env::var("SHUTTLE_ITERATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000)
}

/// Runs `scenario` under the random and the PCT scheduler.
fn explore(scenario: fn()) {
    shuttle::check_random(scenario, iterations());
    shuttle::check_pct(scenario, iterations(), 3);
}

/// What the executions of one scenario did.
#[derive(Default)]
struct Record {
    /// The first execution id: records of one scenario use disjoint ids.
    base: usize,
    /// Executions running now; each update is a shuttle scheduling point.
    running: AtomicUsize,
    /// Times an execution started while another ran.
    overlaps: AtomicUsize,
    /// Ids of executions that returned a value.
    finished: Mutex<Vec<usize>>,
    /// Executions started.
    started: AtomicUsize,
    /// Closed when the first execution starts: a signal to wait on without spinning
    /// (spin loops starve under PCT's priorities).
    first_start: Signal,
}

/// A one-shot signal: `set` closes a channel, which wakes every `wait`.
struct Signal(async_channel::Sender<()>, async_channel::Receiver<()>);

impl Default for Signal {
    fn default() -> Self {
        let (tx, rx) = async_channel::bounded(1);
        Signal(tx, rx)
    }
}

impl Signal {
    fn set(&self) {
        self.0.close();
    }

    async fn wait(&self) {
        let _ = self.1.recv().await;
    }
}

impl Record {
    /// An execution: checks it runs alone, yields `yields` times, and returns its id.
    /// Panics on purpose instead of returning if `panics`.
    fn execution(
        self: &Arc<Self>,
        yields: usize,
        panics: bool,
    ) -> impl Future<Output = usize> + Send + 'static {
        let record = self.clone();
        async move {
            let id = record.base + record.started.fetch_add(1, Ordering::SeqCst);
            record.first_start.set();
            if record.running.fetch_add(1, Ordering::SeqCst) != 0 {
                record.overlaps.fetch_add(1, Ordering::SeqCst);
            }
            struct Running(Arc<Record>);
            impl Drop for Running {
                fn drop(&mut self) {
                    self.0.running.fetch_sub(1, Ordering::SeqCst);
                }
            }
            let _running = Running(record.clone());
            yield_times(yields).await;
            if panics {
                panic!("execution panicked on purpose");
            }
            record.finished.lock().unwrap().push(id);
            id
        }
    }

    fn check_value(&self, value: usize) {
        assert!(
            self.finished.lock().unwrap().contains(&value),
            "caller got {value}, which no finished execution returned"
        );
    }

    fn assert_no_overlap(&self) {
        assert_eq!(
            self.overlaps.load(Ordering::SeqCst),
            0,
            "two executions overlapped"
        );
    }
}

/// Polls `fut` until it finishes or `polls` polls have passed, then drops it.
async fn cancel_after<F: Future>(fut: F, polls: Option<usize>) -> Option<F::Output> {
    let Some(polls) = polls else {
        return Some(fut.await);
    };
    let fut = pin!(fut);
    match select(fut, pin!(yield_times(polls))).await {
        Either::Left((value, _)) => Some(value),
        Either::Right(_) => None,
    }
}

/// The flight tasks that `do_chan_with` spawned in one execution. The scenario awaits
/// them all before it ends, so that no detached task is cut short by the end of the
/// execution (and so that a flight that never finishes shows up as a deadlock).
#[derive(Clone, Default)]
struct Tasks(Arc<Mutex<Vec<shuttle::future::JoinHandle<()>>>>);

impl Tasks {
    fn spawner(
        &self,
    ) -> impl FnOnce(futures_util::future::BoxFuture<'static, ()>) + Send + 'static {
        let tasks = self.clone();
        move |task| tasks.0.lock().unwrap().push(spawn(task))
    }

    /// Awaits every spawned task, including those spawned meanwhile (takeovers).
    async fn finish(&self) {
        loop {
            let next = self.0.lock().unwrap().pop();
            match next {
                Some(task) => task.await.expect("flight tasks are never aborted"),
                None => return,
            }
        }
    }
}

/// Two to four `work` callers, each cancelled at a random point or not.
fn work_callers_cancelled_at_any_point() {
    block_on(async {
        let group: Group<String, usize> = Group::new();
        let record = Arc::new(Record::default());
        let mut rng = thread_rng();
        let callers = rng.gen_range(2..=4);
        let handles: Vec<_> = (0..callers)
            .map(|_| {
                let (group, record) = (group.clone(), record.clone());
                let yields = rng.gen_range(0..3);
                let cancel = rng.gen_bool(0.5).then(|| rng.gen_range(0..4));
                spawn(async move {
                    let work = group.work("key", record.execution(yields, false));
                    if let Some(value) = cancel_after(work, cancel).await {
                        record.check_value(value);
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.await.unwrap();
        }
        record.assert_no_overlap();
        assert_eq!(group.in_flight(), 0, "a flight was left behind");
    });
}

/// `work` and `do_chan_with` callers mixed, each abandoned at a random point or not.
fn work_and_channel_callers_mixed() {
    block_on(async {
        let group: Group<String, usize> = Group::new();
        let record = Arc::new(Record::default());
        let tasks = Tasks::default();
        let mut rng = thread_rng();
        let callers = rng.gen_range(2..=4);
        let handles: Vec<_> = (0..callers)
            .map(|_| {
                let (group, record, tasks) = (group.clone(), record.clone(), tasks.clone());
                let yields = rng.gen_range(0..3);
                let cancel = rng.gen_bool(0.4).then(|| rng.gen_range(0..4));
                let by_channel = rng.gen_bool(0.5);
                spawn(async move {
                    let fut = record.execution(yields, false);
                    let value = if by_channel {
                        let rx = group.do_chan_with("key", fut, tasks.spawner());
                        cancel_after(rx.recv(), cancel)
                            .await
                            .map(|outcome| outcome.expect("a flight without panics delivers").value)
                    } else {
                        cancel_after(group.work("key", fut), cancel).await
                    };
                    if let Some(value) = value {
                        record.check_value(value);
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.await.unwrap();
        }
        tasks.finish().await;
        record.assert_no_overlap();
        assert_eq!(group.in_flight(), 0, "a flight was left behind");
    });
}

/// The runner's execution panics; the others see `Panicked` or a closed channel, or run
/// a later flight of their own.
fn runner_panics() {
    block_on(async {
        let group: Group<String, usize> = Group::new();
        let record = Arc::new(Record::default());
        let tasks = Tasks::default();
        let mut rng = thread_rng();
        let callers = rng.gen_range(2..=3);
        let handles: Vec<_> = (0..callers)
            .map(|i| {
                let (group, record, tasks) = (group.clone(), record.clone(), tasks.clone());
                let by_channel = rng.gen_bool(0.5);
                // Caller 0's future panics; the others' futures would succeed.
                let fut = record.execution(1, i == 0);
                spawn(async move {
                    if by_channel {
                        let rx = group.do_chan_with("key", fut, tasks.spawner());
                        if let Ok(outcome) = rx.recv().await {
                            record.check_value(outcome.value);
                        }
                    } else {
                        match AssertUnwindSafe(group.work("key", fut))
                            .catch_unwind()
                            .await
                        {
                            Ok(value) => record.check_value(value),
                            Err(payload) => {
                                let message = payload
                                    .downcast_ref::<Panicked>()
                                    .map(|p| p.message().to_owned())
                                    .or_else(|| {
                                        payload.downcast_ref::<&str>().map(|s| s.to_string())
                                    });
                                assert_eq!(
                                    message.as_deref(),
                                    Some("execution panicked on purpose")
                                );
                            }
                        }
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.await.unwrap();
        }
        tasks.finish().await;
        record.assert_no_overlap();
        assert_eq!(group.in_flight(), 0, "a flight was left behind");
    });
}

/// `forget` races a finishing flight: the old flight's end must not remove a newer
/// flight's entry, and a caller after the forget never joins the old flight.
fn forget_races_a_finishing_flight() {
    block_on(async {
        let group: Group<String, usize> = Group::new();
        let old = Arc::new(Record::default());
        let new = Arc::new(Record {
            base: 1_000,
            ..Record::default()
        });
        let mut rng = thread_rng();
        let first = {
            let (group, old) = (group.clone(), old.clone());
            let yields = rng.gen_range(0..3);
            spawn(async move { group.work("key", old.execution(yields, false)).await })
        };
        let forgot = Arc::new(Signal::default());
        let second = {
            let (group, old, new) = (group.clone(), old.clone(), new.clone());
            let forgot = forgot.clone();
            let delay = rng.gen_range(0..3);
            spawn(async move {
                // Forget once the old flight is in the air, at a random point of it.
                old.first_start.wait().await;
                yield_times(delay).await;
                group.forget("key");
                forgot.set();
                // Joins no flight that existed before the forget: a new one, or one
                // started by another caller after it.
                let value = group.work("key", new.execution(2, false)).await;
                let joined_new = new.finished.lock().unwrap().contains(&value);
                (value, joined_new)
            })
        };
        let third = {
            let (group, new, forgot) = (group.clone(), new.clone(), forgot.clone());
            spawn(async move {
                forgot.wait().await;
                group.work("key", new.execution(1, false)).await
            })
        };
        let first = first.await.unwrap();
        old.check_value(first);
        let (_, joined_new) = second.await.unwrap();
        // (A caller after the forget may only join the old flight if it was already over
        // and a new one of `new` started; ids tell which.)
        assert!(
            joined_new,
            "a caller after forget joined the forgotten flight"
        );
        let _ = third.await.unwrap();
        assert_eq!(group.in_flight(), 0, "a flight was left behind");
        new.assert_no_overlap();
    });
}

/// Followers cancelled at random points while the runner finishes.
fn followers_cancelled() {
    block_on(async {
        let group: Group<String, usize> = Group::new();
        let record = Arc::new(Record::default());
        let mut rng = thread_rng();
        let runner = {
            let (group, record) = (group.clone(), record.clone());
            spawn(async move { group.work("key", record.execution(2, false)).await })
        };
        let followers: Vec<_> = (0..rng.gen_range(1..=3))
            .map(|_| {
                let (group, record) = (group.clone(), record.clone());
                let cancel = Some(rng.gen_range(0..3));
                spawn(async move {
                    if let Some(value) =
                        cancel_after(group.work("key", record.execution(0, false)), cancel).await
                    {
                        record.check_value(value);
                    }
                })
            })
            .collect();
        let value = runner.await.unwrap();
        record.check_value(value);
        for follower in followers {
            follower.await.unwrap();
        }
        record.assert_no_overlap();
        assert_eq!(group.in_flight(), 0);
    });
}

#[test]
fn shuttle_work_callers_cancelled_at_any_point() {
    explore(work_callers_cancelled_at_any_point);
}

#[test]
fn shuttle_work_and_channel_callers_mixed() {
    explore(work_and_channel_callers_mixed);
}

#[test]
fn shuttle_runner_panics() {
    explore(runner_panics);
}

#[test]
fn shuttle_forget_races_a_finishing_flight() {
    explore(forget_races_a_finishing_flight);
}

#[test]
fn shuttle_followers_cancelled() {
    explore(followers_cancelled);
}
