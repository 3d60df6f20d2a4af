//! The floors: what every design pays in the same harness, with no singleflight logic.

use criterion::{BenchmarkId, Criterion};
use std::collections::HashMap;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Waker};

use crate::scenarios::*;

/// Spawning a task and awaiting its handle, all that the harness of gated fan-in costs a
/// caller that does nothing.
pub(crate) const SPAWN_ONLY: &str = "spawn only";
/// Spawning, and one `event-listener` wait and wake per task.
pub(crate) const SPAWN_LISTEN_WAKE: &str = "spawn+listen+wake";

/// The floors under gated fan-in with no singleflight logic at all: N spawned tasks
/// alone, and N spawned tasks that each wait on one event, woken all at once.
pub(crate) fn floor_fan_in(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("floor_fan_in");
    for n in FAN_IN {
        group.bench_with_input(BenchmarkId::new(SPAWN_ONLY, n), &n, |b, &n| {
            b.to_async(&rt).iter(|| spawn_only(n))
        });
        group.bench_with_input(BenchmarkId::new(SPAWN_LISTEN_WAKE, n), &n, |b, &n| {
            b.to_async(&rt).iter(|| spawn_listen_wake(n))
        });
    }
}

/// N spawned tasks that return at once; their handles awaited in turn.
pub(crate) async fn spawn_only(n: usize) {
    let tasks: Vec<_> = (0..n).map(|_| tokio::spawn(async { 7_u64 })).collect();
    for task in tasks {
        black_box(task.await.unwrap());
    }
}

/// N spawned tasks that each wait on one event, woken all at once by the last to arrive.
pub(crate) async fn spawn_listen_wake(n: usize) {
    let event = Arc::new(event_listener::Event::new());
    let arrived = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (event, arrived) = (event.clone(), arrived.clone());
            tokio::spawn(async move {
                event_listener::listener!(event => listener);
                if arrived.fetch_add(1, Ordering::SeqCst) + 1 == n {
                    event.notify(usize::MAX);
                } else {
                    listener.await;
                }
                7_u64
            })
        })
        .collect();
    for task in tasks {
        black_box(task.await.unwrap());
    }
}

/// The floor under `mixed`: the same tasks, each call only a yield to the scheduler,
/// which every call pays at least once (its own work yields, or it waits and is woken).
pub(crate) fn floor_mixed(c: &mut Criterion) {
    let rt = runtime();
    c.benchmark_group("mixed").bench_function("floor", |b| {
        b.to_async(&rt).iter(|| async {
            let tasks: Vec<_> = (0..MIXED_TASKS)
                .map(|_| {
                    tokio::spawn(async move {
                        for _ in 0..MIXED_CALLS / MIXED_TASKS {
                            tokio::task::yield_now().await;
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
            }
        })
    });
}

/// The channels per iteration of the channel-lifecycle floor.
pub(crate) const CHANNELS: usize = 1_000;
pub(crate) const CHANNEL_LIFECYCLE: &str = "async-channel lifecycle x1000";
pub(crate) const BOXED_FUTURES: &str = "boxed closure x1000";
pub(crate) const LOOKUP: &str = "mutex-hashmap lookup";

pub(crate) fn floor(c: &mut Criterion, keys: &[Box<str>]) {
    let mut group = c.benchmark_group("floor");
    let map: Mutex<HashMap<String, u64>> = Mutex::default();
    let mut next = 0;
    group.bench_function("mutex-hashmap insert+remove+key clone", |b| {
        b.iter(|| {
            next = (next + 1) % keys.len();
            let key: &str = &keys[next];
            map.lock().unwrap().insert(key.to_owned(), 1);
            black_box(map.lock().unwrap().remove(key))
        })
    });
    let map: Mutex<HashMap<u64, u64>> = Mutex::default();
    let mut next = 0_u64;
    group.bench_function("mutex-hashmap insert+remove u64", |b| {
        b.iter(|| {
            next = (next + 1) % STRING_KEYS as u64;
            map.lock().unwrap().insert(next, 1);
            black_box(map.lock().unwrap().remove(&next))
        })
    });
    // What any caller of a flight in the air pays to find it: hash, lock, probe.
    let map: Mutex<HashMap<String, u64>> = Mutex::new(HashMap::from([("key".into(), 7)]));
    group.bench_function(LOOKUP, |b| {
        b.iter(|| black_box(map.lock().unwrap().get(black_box("key")).copied()))
    });
    let event = event_listener::Event::new();
    group.bench_function("event-listener notify round trip", |b| {
        b.iter(|| {
            let listener = event.listen();
            event.notify(1);
            let mut listener = pin!(listener);
            black_box(
                listener
                    .as_mut()
                    .poll(&mut Context::from_waker(Waker::noop()))
                    .is_ready(),
            )
        })
    });
    // What each `do_chan` receiver costs the channel alone, in the order of
    // `chan_vs_work`: all created as callers join, sent to and closed when the flight
    // ends, then received from.
    group.bench_function(CHANNEL_LIFECYCLE, |b| {
        b.iter(|| {
            let (senders, receivers): (Vec<_>, Vec<_>) =
                (0..CHANNELS).map(|_| async_channel::bounded(1)).unzip();
            for sender in &senders {
                sender
                    .try_send(oneflight::Outcome {
                        value: 7_u64,
                        shared: true,
                    })
                    .unwrap();
            }
            drop(senders);
            for receiver in receivers {
                black_box(receiver.try_recv().unwrap());
            }
        })
    });
    // A `do_chan` caller that joins keeps its future boxed, to take over with it.
    group.bench_function(BOXED_FUTURES, |b| {
        let shared = (Arc::new(()), Arc::new(()));
        b.iter(|| {
            let boxed: Vec<Box<dyn FnOnce() -> u64 + Send>> = (0..CHANNELS)
                .map(|i| {
                    let captured = (shared.0.clone(), shared.1.clone(), i);
                    Box::new(move || captured.2 as u64) as Box<dyn FnOnce() -> u64 + Send>
                })
                .collect();
            black_box(boxed);
        })
    });
    let (tx, rx) = async_channel::bounded(1);
    group.bench_function("async-channel send+recv", |b| {
        b.iter(|| {
            tx.try_send(1_u64).unwrap();
            black_box(rx.try_recv().unwrap())
        })
    });
}
