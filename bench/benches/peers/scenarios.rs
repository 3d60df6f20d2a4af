//! The scenarios as criterion measures them: uncontended, gated fan-in, mixed, and
//! `chan_vs_work`.

use criterion::{BenchmarkId, Criterion};
use futures_util::task::AtomicWaker;
use std::future::{Future, poll_fn};
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use crate::peers::*;

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

pub(crate) fn criterion_config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
        .configure_from_args()
}

pub(crate) const STRING_KEYS: usize = 4_096;

pub(crate) fn uncontended<Q, P>(c: &mut Criterion, group_name: &str, keys: &[Box<Q>])
where
    Q: ?Sized + Sync + Send + 'static,
    P: Peer<Q>,
{
    let rt = runtime();
    let peer = P::create();
    let mut next = 0;
    c.benchmark_group(group_name).bench_function(P::NAME, |b| {
        b.to_async(&rt).iter(|| {
            next = (next + 1) % keys.len();
            peer.call(&keys[next], async { 1 })
        })
    });
}

/// Executions of the gated work, counted per peer and batch size.
pub(crate) static EXECUTIONS: AtomicU64 = AtomicU64::new(0);

/// N callers of one key, each spawned; the work waits until all N have joined (each
/// caller's future polled once), then optionally yields once. Returns the executions.
pub(crate) async fn gated_batch<P: Peer<str>>(peer: Arc<P>, n: usize, yields: bool) -> u64 {
    peer.reset();
    let joined = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(AtomicWaker::new());
    let executions = Arc::new(AtomicU64::new(0));
    let callers: Vec<_> = (0..n)
        .map(|_| {
            let (peer, joined, gate, executions) = (
                peer.clone(),
                joined.clone(),
                gate.clone(),
                executions.clone(),
            );
            tokio::spawn(async move {
                let work = {
                    let (joined, gate) = (joined.clone(), gate.clone());
                    async move {
                        executions.fetch_add(1, Ordering::Relaxed);
                        let value = gated_on(joined, gate, n).await;
                        if yields {
                            tokio::task::yield_now().await;
                        }
                        value
                    }
                };
                let mut call = pin!(peer.call("key", work));
                let mut first = true;
                poll_fn(|cx| {
                    let polled = call.as_mut().poll(cx);
                    if std::mem::take(&mut first) && joined.fetch_add(1, Ordering::SeqCst) + 1 == n
                    {
                        gate.wake();
                    }
                    polled
                })
                .await
            })
        })
        .collect();
    for caller in callers {
        assert_eq!(caller.await.unwrap(), 7);
    }
    executions.load(Ordering::Relaxed)
}

pub(crate) const FAN_IN: [usize; 4] = [1, 10, 100, 1000];

pub(crate) fn fan_in<P: Peer<str>>(c: &mut Criterion, yields: bool) {
    let rt = runtime();
    let peer = Arc::new(P::create());
    let name = if yields { "fan_in_yield" } else { "fan_in" };
    let mut group = c.benchmark_group(name);
    for n in FAN_IN {
        group.bench_with_input(BenchmarkId::new(P::NAME, n), &n, |b, &n| {
            b.to_async(&rt).iter(|| async {
                let executions = gated_batch(peer.clone(), n, yields).await;
                EXECUTIONS.fetch_add(executions, Ordering::Relaxed);
            })
        });
    }
}

pub(crate) const MIXED_CALLS: usize = 10_000;
pub(crate) const MIXED_TASKS: usize = 64;
pub(crate) const MIXED_KEYS: usize = 100;

pub(crate) fn mixed<P: Peer<str>>(c: &mut Criterion, keys: &Arc<Vec<String>>) {
    let rt = runtime();
    let peer = Arc::new(P::create_for_mixed());
    c.benchmark_group("mixed").bench_function(P::NAME, |b| {
        b.to_async(&rt)
            .iter(|| mixed_batch(peer.clone(), keys.clone()))
    });
}

/// One batch of `mixed`: 64 tasks share 10,000 calls over 100 keys, each call's work
/// yielding once.
pub(crate) async fn mixed_batch<P: Peer<str>>(peer: Arc<P>, keys: Arc<Vec<String>>) {
    let tasks: Vec<_> = (0..MIXED_TASKS)
        .map(|t| {
            let (peer, keys) = (peer.clone(), keys.clone());
            tokio::spawn(async move {
                let mut state = 0x9E37_79B9_7F4A_7C15_u64 ^ (t as u64 + 1);
                for _ in 0..MIXED_CALLS / MIXED_TASKS {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    let key = &keys[(state % MIXED_KEYS as u64) as usize];
                    let work = async {
                        tokio::task::yield_now().await;
                        1
                    };
                    black_box(peer.call(key, work).await);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

/// N callers of one flight in one task: `work` followers, or `do_chan` receivers. Both on
/// one current-thread Tokio runtime, so that the figures are the callers' own costs, not
/// cross-thread wake-ups; `do_chan` as `do_chan_with` and the runtime's handle, which is
/// what `do_chan` does inside a Tokio runtime.
pub(crate) fn chan_vs_work(c: &mut Criterion) {
    let rt = current_thread_runtime();
    let group: oneflight::Group<String, u64> = oneflight::Group::new();
    let mut bench = c.benchmark_group("chan_vs_work");
    for n in [1usize, 100, 1000] {
        bench.bench_with_input(BenchmarkId::new("work", n), &n, |b, &n| {
            b.to_async(&rt).iter(|| work_followers(group.clone(), n))
        });
        bench.bench_with_input(BenchmarkId::new("do_chan", n), &n, |b, &n| {
            b.to_async(&rt)
                .iter(|| chan_receivers(group.clone(), rt.handle().clone(), n))
        });
    }
}

pub(crate) fn current_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

/// N `work` callers of one flight, polled in one task; the work waits for all N.
pub(crate) async fn work_followers(group: oneflight::Group<String, u64>, n: usize) {
    let joined = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(AtomicWaker::new());
    let calls = (0..n).map(|_| {
        let work = gated_on(joined.clone(), gate.clone(), n);
        let (joined, gate) = (joined.clone(), gate.clone());
        let mut call = Box::pin(group.work("key", work));
        let mut first = true;
        poll_fn(move |cx| {
            let polled = call.as_mut().poll(cx);
            if std::mem::take(&mut first) && joined.fetch_add(1, Ordering::SeqCst) + 1 == n {
                gate.wake();
            }
            polled
        })
    });
    black_box(futures_util::future::join_all(calls).await);
}

/// N `do_chan` callers of one flight, received from in one task; the work waits for all
/// N. Spawned on `handle`, as `do_chan` inside a Tokio runtime does.
pub(crate) async fn chan_receivers(
    group: oneflight::Group<String, u64>,
    handle: tokio::runtime::Handle,
    n: usize,
) {
    let joined = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(AtomicWaker::new());
    let receivers: Vec<_> = (0..n)
        .map(|_| {
            let handle = handle.clone();
            let work = gated_on(joined.clone(), gate.clone(), n);
            group.do_chan_with("key", work, move |task| drop(handle.spawn(task)))
        })
        .collect();
    joined.store(n, Ordering::SeqCst);
    gate.wake();
    for rx in receivers {
        black_box(rx.recv().await.unwrap());
    }
}

/// Work that waits until `n` callers have joined.
pub(crate) async fn gated_on(joined: Arc<AtomicUsize>, gate: Arc<AtomicWaker>, n: usize) -> u64 {
    poll_fn(|cx| {
        gate.register(cx.waker());
        if joined.load(Ordering::SeqCst) >= n {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    7
}
