//! Load: thousands of calls over a few keys on several threads, with random
//! cancellations and a share of `do_chan_with` callers abandoned by `select!`. No key
//! ever runs two executions at once, every caller gets its own key's value, and nothing
//! is left in flight.

mod common;

use common::{Rng, within, yield_times};
use futures_util::{FutureExt, select};
use oneflight::Group;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const KEYS: usize = 4;

/// Per-key counters shared by every execution.
#[derive(Default)]
struct Stats {
    running: [AtomicUsize; KEYS],
    overlaps: AtomicUsize,
    executions: AtomicUsize,
    wrong_values: AtomicUsize,
    completed: AtomicUsize,
    cancelled: AtomicUsize,
}

/// Marks an execution of `key` as running until dropped (finished or cancelled).
struct Running<'a>(&'a AtomicUsize);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The work of a flight: checks that no other execution of its key runs, then yields a
/// few times and returns the key.
async fn execution(stats: Arc<Stats>, key: usize, yields: usize) -> usize {
    if stats.running[key].fetch_add(1, Ordering::SeqCst) != 0 {
        stats.overlaps.fetch_add(1, Ordering::SeqCst);
    }
    stats.executions.fetch_add(1, Ordering::SeqCst);
    let _running = Running(&stats.running[key]);
    yield_times(yields).await;
    key
}

fn run_load(seed: u64, threads: usize, calls: usize) {
    let executor = Arc::new(async_executor::Executor::new());
    let group: Group<String, usize> = Group::new();
    let stats = Arc::new(Stats::default());
    let mut rng = Rng::new(seed);
    let tasks: Vec<_> = (0..calls)
        .map(|_| {
            let key = rng.below(KEYS as u64) as usize;
            let yields = 1 + rng.below(8) as usize;
            let cancel_after = (rng.below(3) == 0).then(|| rng.below(6) as usize);
            let by_channel = rng.below(4) == 0;
            let (group, stats, spawner) = (group.clone(), stats.clone(), executor.clone());
            executor.spawn(async move {
                let name = format!("key{key}");
                let fut = execution(stats.clone(), key, yields);
                let value = if by_channel {
                    let rx = group.do_chan_with(&name, fut, move |task| {
                        spawner.spawn(task).detach();
                    });
                    let timeout = yield_times(cancel_after.unwrap_or(usize::MAX));
                    select! {
                        outcome = rx.recv().fuse() => outcome.ok().map(|o| o.value),
                        _ = timeout.fuse() => None,
                    }
                } else {
                    let work = group.work(&name, fut).fuse();
                    let timeout = yield_times(cancel_after.unwrap_or(usize::MAX)).fuse();
                    futures_util::pin_mut!(work, timeout);
                    select! {
                        value = work => Some(value),
                        _ = timeout => None,
                    }
                };
                match value {
                    Some(value) => {
                        if value != key {
                            stats.wrong_values.fetch_add(1, Ordering::SeqCst);
                        }
                        stats.completed.fetch_add(1, Ordering::SeqCst);
                    }
                    None => {
                        stats.cancelled.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    let all = futures_util::future::join_all(tasks);
    let (done_tx, done_rx) = async_channel::bounded::<()>(1);
    std::thread::scope(|scope| {
        for _ in 1..threads {
            let (executor, done_rx) = (executor.clone(), done_rx.clone());
            scope.spawn(move || futures_executor::block_on(executor.run(done_rx.recv())));
        }
        futures_executor::block_on(executor.run(all));
        // Spawned flights whose receivers all left still run to completion.
        futures_executor::block_on(executor.run(async {
            while group.in_flight() > 0 {
                yield_times(1).await;
            }
        }));
        drop(done_tx);
    });
    let load = |n: &AtomicUsize| n.load(Ordering::SeqCst);
    assert_eq!(load(&stats.overlaps), 0, "a key ran two executions at once");
    assert_eq!(
        load(&stats.wrong_values),
        0,
        "a caller got another key's value"
    );
    assert_eq!(load(&stats.completed) + load(&stats.cancelled), calls);
    assert!(load(&stats.completed) > 0 && load(&stats.cancelled) > 0);
    assert!(
        load(&stats.executions) < calls,
        "no call was deduplicated: the load did not exercise sharing"
    );
    assert_eq!(group.in_flight(), 0, "a flight was left behind");
    assert!(stats.running.iter().all(|r| load(r) == 0));
}

#[test]
fn many_threads_many_calls_random_cancellations() {
    within(
        Duration::from_secs(if cfg!(miri) { 1_200 } else { 120 }),
        || {
            let (calls, seeds) = if cfg!(miri) { (60, 1) } else { (5_000, 4) };
            for seed in 1..=seeds {
                run_load(seed, 4, calls);
            }
        },
    );
}
