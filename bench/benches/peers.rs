//! oneflight beside its peers, in one run, on the same scenarios, on a 2-worker Tokio
//! runtime: `singleflight-async` 0.2, `async_singleflight` 0.6, `uniflight` 0.8, and a
//! hand-rolled `futures::future::Shared` in a `Mutex<HashMap>`; plus a floor of the
//! primitives every design pays for.
//!
//! `cargo bench --bench peers` runs criterion; then times `fan_in_*`, `mixed` and
//! `chan_vs_work` again, apart from criterion, in rounds that alternate between the
//! implementations, so that a machine whose speed drifts during the run weighs on all
//! alike; then prints a summary table of medians and ratios (written to
//! `target/criterion/peers-summary.md`) and draws the ratios as `docs/peers.svg` (unless
//! a filter left some figures from an earlier run). Scenarios:
//!
//! - `uncontended_*`: one task, sequential calls on distinct keys, ready future.
//! - `fan_in_*`: N spawned callers on one key, the work gated until all N have joined;
//!   beside floors: spawning alone, spawning with one event wait, and the same harness
//!   with a singleflight reduced to one key.
//! - `mixed`: 64 tasks, 10,000 calls over 100 keys, work that yields once.
//! - `chan_vs_work`: N callers of one flight in one task, as `work` followers and as
//!   `do_chan` receivers.
//! - `floor`: a `Mutex<HashMap>` insert and remove with a key clone, an
//!   `event-listener` notify round trip, an `async-channel` send and receive, and what a
//!   `do_chan` receiver cannot do without: its channel's whole life, a boxed future and a
//!   lookup under a lock.
//!
//! A counting global allocator measures heap bytes per waiting caller.

use criterion::{BenchmarkId, Criterion, criterion_group};
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use futures_util::task::AtomicWaker;
use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::future::{Future, poll_fn};
use std::hint::black_box;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

// ---------------------------------------------------------------------------------------
// Heap accounting

/// Counts the bytes every allocation asks for, so that a section's cost can be read off.
struct Counting;

static ALLOCATED: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to `System` unchanged; only adds a relaxed counter.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above, for `dealloc`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATED.fetch_add(
            new_size.saturating_sub(layout.size()) as u64,
            Ordering::Relaxed,
        );
        // SAFETY: as above, for `realloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Heap bytes requested while `f` runs on this thread (other threads are idle).
fn heap_bytes(f: impl FnOnce()) -> u64 {
    let before = ALLOCATED.load(Ordering::SeqCst);
    f();
    ALLOCATED.load(Ordering::SeqCst) - before
}

// ---------------------------------------------------------------------------------------
// The peers, behind one interface

/// A singleflight implementation as the scenarios use it.
trait Peer<Q: ?Sized>: Send + Sync + 'static {
    const NAME: &'static str;
    fn create() -> Self;
    fn call<'a, F>(&'a self, key: &'a Q, fut: F) -> impl Future<Output = u64> + Send + 'a
    where
        F: Future<Output = u64> + Send + 'static;
}

/// The bounds a key type needs for every peer: `str` (owned as `String`) and `u64`.
trait Key: std::hash::Hash + Eq + ToOwned + Sync + 'static {}

impl<Q> Key for Q
where
    Q: ?Sized + std::hash::Hash + Eq + ToOwned + Sync + 'static,
    Q::Owned: std::hash::Hash + Eq + Clone + std::borrow::Borrow<Q> + Send + Sync + 'static,
{
}

impl<Q> Peer<Q> for oneflight::Group<Q::Owned, u64>
where
    Q: ?Sized + Key,
    Q::Owned: std::hash::Hash + Eq + std::borrow::Borrow<Q> + Send + Sync + 'static,
{
    const NAME: &'static str = "oneflight";
    fn create() -> Self {
        oneflight::Group::new()
    }
    fn call<'a, F>(&'a self, key: &'a Q, fut: F) -> impl Future<Output = u64> + Send + 'a
    where
        F: Future<Output = u64> + Send + 'static,
    {
        self.work(key, fut)
    }
}

impl<Q> Peer<Q> for singleflight_async::SingleFlight<Q::Owned, u64>
where
    Q: ?Sized + Key,
    Q::Owned: std::hash::Hash + Eq + Clone + Send + Sync + 'static,
{
    const NAME: &'static str = "singleflight-async";
    fn create() -> Self {
        singleflight_async::SingleFlight::new()
    }
    fn call<'a, F>(&'a self, key: &'a Q, fut: F) -> impl Future<Output = u64> + Send + 'a
    where
        F: Future<Output = u64> + Send + 'static,
    {
        self.work(key.to_owned(), move || fut)
    }
}

impl<Q> Peer<Q> for async_singleflight::UnaryGroup<Q::Owned, u64>
where
    Q: ?Sized + Key + Send,
    Q::Owned: std::hash::Hash + Eq + std::borrow::Borrow<Q> + Send + Sync + 'static,
{
    const NAME: &'static str = "async_singleflight";
    fn create() -> Self {
        async_singleflight::UnaryGroup::new()
    }
    fn call<'a, F>(&'a self, key: &'a Q, fut: F) -> impl Future<Output = u64> + Send + 'a
    where
        F: Future<Output = u64> + Send + 'static,
    {
        self.work(key, fut)
    }
}

impl<Q> Peer<Q> for uniflight::Merger<Q::Owned, u64>
where
    Q: ?Sized + Key,
    Q::Owned: std::hash::Hash + Eq + std::borrow::Borrow<Q> + Send + Sync + 'static,
{
    const NAME: &'static str = "uniflight";
    fn create() -> Self {
        uniflight::Merger::new()
    }
    fn call<'a, F>(&'a self, key: &'a Q, fut: F) -> impl Future<Output = u64> + Send + 'a
    where
        F: Future<Output = u64> + Send + 'static,
    {
        self.execute(key, move || fut)
            .map(|r| r.expect("no panics here"))
    }
}

/// The hand-rolled alternative: a `Shared` future per key in a `Mutex<HashMap>`.
struct SharedMap<K> {
    map: Mutex<HashMap<K, Shared<BoxFuture<'static, u64>>>>,
}

impl<K> SharedMap<K>
where
    K: std::hash::Hash + Eq + Send + 'static,
{
    async fn call_with<Q>(&self, key: &Q, fut: BoxFuture<'static, u64>) -> u64
    where
        Q: ?Sized + std::hash::Hash + Eq + ToOwned<Owned = K>,
        K: std::borrow::Borrow<Q>,
    {
        let shared = {
            let mut map = self.map.lock().unwrap();
            match map.get(key) {
                Some(shared) => shared.clone(),
                None => {
                    let shared = fut.shared();
                    map.insert(key.to_owned(), shared.clone());
                    shared
                }
            }
        };
        let value = shared.clone().await;
        let mut map = self.map.lock().unwrap();
        if map.get(key).is_some_and(|current| current.ptr_eq(&shared)) {
            map.remove(key);
        }
        value
    }
}

impl<Q> Peer<Q> for SharedMap<Q::Owned>
where
    Q: ?Sized + Key,
    Q::Owned: std::hash::Hash + Eq + std::borrow::Borrow<Q> + Send + 'static,
{
    const NAME: &'static str = "Shared-in-Mutex-HashMap";
    fn create() -> Self {
        SharedMap {
            map: Mutex::default(),
        }
    }
    fn call<'a, F>(&'a self, key: &'a Q, fut: F) -> impl Future<Output = u64> + Send + 'a
    where
        F: Future<Output = u64> + Send + 'static,
    {
        self.call_with(key, fut.boxed())
    }
}

/// The floor under gated fan-in, as a singleflight that needs no key: one lock decides who
/// runs, the others wait on one `event-listener` event and read the value once, as
/// oneflight's `work` followers do. No hashing, no map, no hand-over. What any design
/// pays per caller in the same harness, beyond its spawn.
struct OneKeyFloor {
    flight: Mutex<Option<Arc<OneFlight>>>,
}

/// The one flight of [`OneKeyFloor`].
struct OneFlight {
    value: std::sync::OnceLock<u64>,
    event: event_listener::Event,
}

const ONE_KEY_FLOOR: &str = "floor-one-key";

impl Peer<str> for OneKeyFloor {
    const NAME: &'static str = ONE_KEY_FLOOR;
    fn create() -> Self {
        OneKeyFloor {
            flight: Mutex::new(None),
        }
    }
    async fn call<'a, F>(&'a self, _key: &'a str, fut: F) -> u64
    where
        F: Future<Output = u64> + Send + 'static,
    {
        let (flight, runs) = {
            let mut slot = self.flight.lock().unwrap();
            match &*slot {
                Some(flight) => (flight.clone(), false),
                None => {
                    let flight = Arc::new(OneFlight {
                        value: std::sync::OnceLock::new(),
                        event: event_listener::Event::new(),
                    });
                    *slot = Some(flight.clone());
                    (flight, true)
                }
            }
        };
        if runs {
            let value = fut.await;
            let _ = flight.value.set(value);
            *self.flight.lock().unwrap() = None;
            flight.event.notify(usize::MAX);
            return value;
        }
        drop(fut);
        loop {
            if let Some(value) = flight.value.get() {
                return *value;
            }
            event_listener::listener!(flight.event => listener);
            if flight.value.get().is_none() {
                listener.await;
            }
        }
    }
}

/// `[f::<P>(args), ...]` over the peers with `String` keys, in `PEERS`' order: the one
/// place that lists them by type.
macro_rules! each_peer {
    ($f:ident($($arg:expr),*)) => {
        [
            $f::<oneflight::Group<String, u64>>($($arg),*),
            $f::<singleflight_async::SingleFlight<String, u64>>($($arg),*),
            $f::<async_singleflight::UnaryGroup<String, u64>>($($arg),*),
            $f::<uniflight::Merger<String, u64>>($($arg),*),
            $f::<SharedMap<String>>($($arg),*),
        ]
    };
}

const PEERS: [&str; 5] = [
    "oneflight",
    "singleflight-async",
    "async_singleflight",
    "uniflight",
    "Shared-in-Mutex-HashMap",
];

// ---------------------------------------------------------------------------------------
// Scenarios

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn criterion_config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
        .configure_from_args()
}

const STRING_KEYS: usize = 4_096;

fn uncontended<Q, P>(c: &mut Criterion, group_name: &str, keys: &[Box<Q>])
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
static EXECUTIONS: AtomicU64 = AtomicU64::new(0);

/// N callers of one key, each spawned; the work waits until all N have joined (each
/// caller's future polled once), then optionally yields once. Returns the executions.
async fn gated_batch<P: Peer<str>>(peer: Arc<P>, n: usize, yields: bool) -> u64 {
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
                        poll_fn(|cx| {
                            gate.register(cx.waker());
                            if joined.load(Ordering::SeqCst) >= n {
                                Poll::Ready(())
                            } else {
                                Poll::Pending
                            }
                        })
                        .await;
                        if yields {
                            tokio::task::yield_now().await;
                        }
                        7
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

const FAN_IN: [usize; 4] = [1, 10, 100, 1000];

fn fan_in<P: Peer<str>>(c: &mut Criterion, yields: bool) {
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

/// Rounds of each interleaved measurement.
const ROUNDS: usize = 30;

/// A scenario as the interleaved rounds run it: the future of one batch of a size.
type Batch = Box<dyn Fn(usize) -> BoxFuture<'static, ()>>;

/// Medians over `ROUNDS` rounds that alternate between `batches`: each round, `measure`
/// times every batch in turn. Criterion measures one implementation after another,
/// minutes apart, and a shared machine that speeds up or slows down during a run (by
/// more than the differences measured here) then weighs on some and not on others; in
/// alternating rounds it weighs on all alike.
fn interleaved(batches: &[Batch], measure: impl Fn(&Batch) -> f64) -> Vec<f64> {
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); batches.len()];
    for _ in 0..ROUNDS {
        for (batch, times) in batches.iter().zip(&mut times) {
            times.push(measure(batch));
        }
    }
    times
        .into_iter()
        .map(|mut times| {
            times.sort_by(f64::total_cmp);
            times[times.len() / 2]
        })
        .collect()
}

/// Mean nanoseconds of `reps` batches of size `n`.
fn batch_ns(rt: &tokio::runtime::Runtime, batch: &Batch, n: usize, reps: u32) -> f64 {
    let start = std::time::Instant::now();
    for _ in 0..reps {
        rt.block_on(batch(n));
    }
    start.elapsed().as_nanos() as f64 / f64::from(reps)
}

/// Nanoseconds per added caller: 10 batches of 1,000 callers against 50 of one.
fn per_added_caller(rt: &tokio::runtime::Runtime, batch: &Batch) -> f64 {
    let one = batch_ns(rt, batch, 1, 50);
    (batch_ns(rt, batch, 1_000, 10) - one) / 999.0
}

/// Gated fan-in per added caller, in interleaved rounds: the peers in `PEERS`' order, then
/// the floors: the one-key singleflight, spawning only, and spawning with one event wait
/// and wake.
fn interleaved_fan_in(yields: bool) -> Vec<f64> {
    fn peer<P: Peer<str>>(yields: bool) -> Batch {
        let peer = Arc::new(P::create());
        Box::new(move |n| gated_batch(peer.clone(), n, yields).map(drop).boxed())
    }
    let floors: [Batch; 3] = [
        peer::<OneKeyFloor>(yields),
        Box::new(|n| spawn_only(n).boxed()),
        Box::new(|n| spawn_listen_wake(n).boxed()),
    ];
    let batches: Vec<Batch> = each_peer!(peer(yields)).into_iter().chain(floors).collect();
    let rt = runtime();
    interleaved(&batches, |batch| per_added_caller(&rt, batch))
}

/// `mixed` per call, in interleaved rounds, in `PEERS`' order.
fn interleaved_mixed(keys: &Arc<Vec<String>>) -> Vec<f64> {
    fn peer<P: Peer<str>>(keys: &Arc<Vec<String>>) -> Batch {
        let (peer, keys) = (Arc::new(P::create()), keys.clone());
        Box::new(move |_| mixed_batch(peer.clone(), keys.clone()).boxed())
    }
    let batches = each_peer!(peer(keys));
    let rt = runtime();
    interleaved(&batches, |batch| {
        batch_ns(&rt, batch, MIXED_CALLS, 2) / MIXED_CALLS as f64
    })
}

/// A `work` follower and a `do_chan` receiver per added caller, in interleaved rounds.
fn interleaved_chan_vs_work() -> (f64, f64) {
    let rt = current_thread_runtime();
    let group: oneflight::Group<String, u64> = oneflight::Group::new();
    let (work, chan, handle) = (group.clone(), group, rt.handle().clone());
    let batches: [Batch; 2] = [
        Box::new(move |n| work_followers(work.clone(), n).boxed()),
        Box::new(move |n| chan_receivers(chan.clone(), handle.clone(), n).boxed()),
    ];
    let medians = interleaved(&batches, |batch| per_added_caller(&rt, batch));
    (medians[0], medians[1])
}

/// Executions per gated batch of 1,000 callers, over `batches` batches: (min, max).
fn executions_per_batch<P: Peer<str>>(batches: usize) -> (u64, u64) {
    let rt = runtime();
    let peer = Arc::new(P::create());
    let counts: Vec<u64> = (0..batches)
        .map(|_| rt.block_on(gated_batch(peer.clone(), 1_000, false)))
        .collect();
    (*counts.iter().min().unwrap(), *counts.iter().max().unwrap())
}

const MIXED_CALLS: usize = 10_000;
const MIXED_TASKS: usize = 64;
const MIXED_KEYS: usize = 100;

fn mixed<P: Peer<str>>(c: &mut Criterion, keys: &Arc<Vec<String>>) {
    let rt = runtime();
    let peer = Arc::new(P::create());
    c.benchmark_group("mixed").bench_function(P::NAME, |b| {
        b.to_async(&rt)
            .iter(|| mixed_batch(peer.clone(), keys.clone()))
    });
}

/// One batch of `mixed`: 64 tasks share 10,000 calls over 100 keys, each call's work
/// yielding once.
async fn mixed_batch<P: Peer<str>>(peer: Arc<P>, keys: Arc<Vec<String>>) {
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
fn chan_vs_work(c: &mut Criterion) {
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

fn current_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

/// N `work` callers of one flight, polled in one task; the work waits for all N.
async fn work_followers(group: oneflight::Group<String, u64>, n: usize) {
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
async fn chan_receivers(
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
async fn gated_on(joined: Arc<AtomicUsize>, gate: Arc<AtomicWaker>, n: usize) -> u64 {
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

/// Spawning a task and awaiting its handle, all that the harness of gated fan-in costs a
/// caller that does nothing.
const SPAWN_ONLY: &str = "spawn only";
/// Spawning, and one `event-listener` wait and wake per task.
const SPAWN_LISTEN_WAKE: &str = "spawn+listen+wake";

/// The floors under gated fan-in with no singleflight logic at all: N spawned tasks
/// alone, and N spawned tasks that each wait on one event, woken all at once.
fn floor_fan_in(c: &mut Criterion) {
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
async fn spawn_only(n: usize) {
    let tasks: Vec<_> = (0..n).map(|_| tokio::spawn(async { 7_u64 })).collect();
    for task in tasks {
        black_box(task.await.unwrap());
    }
}

/// N spawned tasks that each wait on one event, woken all at once by the last to arrive.
async fn spawn_listen_wake(n: usize) {
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
fn floor_mixed(c: &mut Criterion) {
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
const CHANNELS: usize = 1_000;
const CHANNEL_LIFECYCLE: &str = "async-channel lifecycle x1000";
const BOXED_FUTURES: &str = "boxed closure x1000";
const LOOKUP: &str = "mutex-hashmap lookup";

/// Heap bytes of one channel's life: created, sent to, closed, received from, dropped.
fn channel_lifecycle_bytes() -> u64 {
    heap_bytes(|| {
        let (sender, receiver) = async_channel::bounded(1);
        sender
            .try_send(oneflight::Outcome {
                value: 7_u64,
                shared: true,
            })
            .unwrap();
        drop(sender);
        black_box(receiver.try_recv().unwrap());
    })
}

fn floor(c: &mut Criterion, keys: &[Box<str>]) {
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

// ---------------------------------------------------------------------------------------
// Heap bytes per waiting caller

/// Heap bytes a waiting caller costs when it joins a flight in the air (its future
/// created and polled once), and the size of that future.
fn follower_cost<P: Peer<str>>() -> (u64, usize) {
    let peer = P::create();
    let gate = Arc::new(AtomicWaker::new());
    let joined = Arc::new(AtomicUsize::new(0));
    let waker = Waker::noop();
    let mut cx = Context::from_waker(waker);
    let mut leader = Box::pin(peer.call("key", gated_on(joined.clone(), gate.clone(), 2)));
    assert!(leader.as_mut().poll(&mut cx).is_pending());
    // A first follower pays what a flight allocates once for its followers; measure the
    // next one, the marginal cost of a waiting caller.
    let mut first = Box::pin(peer.call("key", gated_on(joined.clone(), gate.clone(), 2)));
    assert!(first.as_mut().poll(&mut cx).is_pending());
    let mut size = 0;
    let bytes = heap_bytes(|| {
        let follower = peer.call("key", gated_on(joined.clone(), gate.clone(), 2));
        size = std::mem::size_of_val(&follower);
        let mut follower = pin!(follower);
        assert!(follower.as_mut().poll(&mut cx).is_pending());
    });
    (bytes, size)
}

fn do_chan_follower_bytes() -> u64 {
    let group: oneflight::Group<String, u64> = oneflight::Group::new();
    let parked = Arc::new(Mutex::new(Vec::new()));
    let keep = parked.clone();
    let _leader = group.do_chan_with("key", async { 1 }, move |task| {
        keep.lock().unwrap().push(task)
    });
    let mut receiver = None;
    let bytes = heap_bytes(|| {
        receiver = Some(group.do_chan_with("key", async { 2 }, |_task| {
            unreachable!("a follower is not spawned")
        }));
    });
    drop(receiver);
    bytes
}

// ---------------------------------------------------------------------------------------
// Summary

/// When this run started: estimates saved before it come from an earlier run.
static STARTED: std::sync::OnceLock<std::time::SystemTime> = std::sync::OnceLock::new();

/// Benchmarks whose estimates the summary read from an earlier run (a filtered run).
static FROM_EARLIER_RUNS: AtomicUsize = AtomicUsize::new(0);

/// The median of one benchmark, in nanoseconds, from criterion's saved estimates.
fn median_ns(path: &str) -> Option<f64> {
    let dir = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let file = format!("{dir}/criterion/{path}/new/estimates.json");
    let saved = std::fs::metadata(&file).and_then(|m| m.modified()).ok()?;
    if STARTED.get().is_some_and(|started| saved < *started) {
        FROM_EARLIER_RUNS.fetch_add(1, Ordering::Relaxed);
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(file).ok()?).ok()?;
    json["median"]["point_estimate"].as_f64()
}

/// Nanoseconds per added caller of a benchmark measured with 1 and 1,000 callers.
fn slope_ns(path: &str) -> Option<f64> {
    Some((median_ns(&format!("{path}/1000"))? - median_ns(&format!("{path}/1"))?) / 999.0)
}

/// One row of the summary: a metric per peer, lower is better.
struct Row {
    scenario: String,
    unit: &'static str,
    values: Vec<Option<f64>>,
    target: Option<f64>,
}

impl Row {
    /// oneflight's value over the best peer's.
    fn ratio(&self) -> Option<f64> {
        Some(self.values[0]? / best_peer(self)?)
    }
}

/// The lowest value of a peer other than oneflight in `row`.
fn best_peer(row: &Row) -> Option<f64> {
    let best = row.values[1..]
        .iter()
        .flatten()
        .cloned()
        .fold(f64::INFINITY, f64::min);
    (best.is_finite() && best > 0.0).then_some(best)
}

/// The medians of the interleaved rounds.
struct Interleaved {
    /// Per added caller, in `interleaved_fan_in`'s order.
    fan_in: Vec<f64>,
    fan_in_yield: Vec<f64>,
    /// Per call, in `PEERS`' order.
    mixed: Vec<f64>,
    /// Per added caller of one flight, in one task.
    work_follower: f64,
    chan_receiver: f64,
}

fn summary(
    executions: &[(u64, u64)],
    heap: &[(u64, usize)],
    chan_bytes: u64,
    interleaved: &Interleaved,
) {
    let per_call = |group: &str, divisor: f64| -> Vec<Option<f64>> {
        PEERS
            .iter()
            .map(|p| median_ns(&format!("{group}/{p}")).map(|ns| ns / divisor))
            .collect()
    };
    let slope = |group: &str| -> Vec<Option<f64>> {
        PEERS
            .iter()
            .map(|p| slope_ns(&format!("{group}/{p}")))
            .collect()
    };
    let rows = vec![
        Row {
            scenario: "uncontended, String keys".into(),
            unit: "ns/call",
            values: per_call("uncontended_string", 1.0),
            target: Some(0.6),
        },
        Row {
            scenario: "uncontended, u64 keys".into(),
            unit: "ns/call",
            values: per_call("uncontended_u64", 1.0),
            target: Some(0.6),
        },
        Row {
            scenario: "gated fan-in, per added caller".into(),
            unit: "ns/caller",
            values: slope("fan_in"),
            target: Some(0.8),
        },
        Row {
            scenario: "gated fan-in (work yields), per added caller".into(),
            unit: "ns/caller",
            values: slope("fan_in_yield"),
            target: Some(0.8),
        },
        Row {
            scenario: "gated fan-in, interleaved rounds, per added caller".into(),
            unit: "ns/caller",
            values: interleaved.fan_in[..PEERS.len()]
                .iter()
                .map(|&v| Some(v))
                .collect(),
            target: Some(0.8),
        },
        Row {
            scenario: "gated fan-in (work yields), interleaved rounds".into(),
            unit: "ns/caller",
            values: interleaved.fan_in_yield[..PEERS.len()]
                .iter()
                .map(|&v| Some(v))
                .collect(),
            target: Some(0.8),
        },
        Row {
            scenario: "mixed: 64 tasks, 10,000 calls, 100 keys".into(),
            unit: "ns/call",
            values: per_call("mixed", MIXED_CALLS as f64),
            target: Some(0.8),
        },
        Row {
            scenario: "mixed, interleaved rounds".into(),
            unit: "ns/call",
            values: interleaved.mixed.iter().map(|&v| Some(v)).collect(),
            target: Some(0.8),
        },
        Row {
            scenario: "heap bytes per waiting caller".into(),
            unit: "bytes",
            values: heap.iter().map(|&(b, _)| Some(b as f64)).collect(),
            target: None,
        },
        Row {
            scenario: "size of a waiting caller's future".into(),
            unit: "bytes",
            values: heap.iter().map(|&(_, s)| Some(s as f64)).collect(),
            target: None,
        },
    ];
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| scenario | unit | {} | ratio to best peer | target |",
        PEERS.join(" | ")
    );
    let _ = writeln!(out, "|---|---|{}---|---|", "---|".repeat(PEERS.len()));
    for row in &rows {
        let cells: Vec<String> = row
            .values
            .iter()
            .map(|v| {
                v.map_or("n/a".into(), |v| {
                    if v >= 100.0 {
                        format!("{v:.0}")
                    } else {
                        format!("{v:.1}")
                    }
                })
            })
            .collect();
        let ratio = row.ratio().map_or("n/a".into(), |r| format!("{r:.2}x"));
        let target = row.target.map_or("".into(), |t| format!("<= {t}x"));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {ratio} | {target} |",
            row.scenario,
            row.unit,
            cells.join(" | ")
        );
    }
    let cells: Vec<String> = executions
        .iter()
        .map(|(lo, hi)| {
            if lo == hi {
                format!("{lo}")
            } else {
                format!("{lo}-{hi}")
            }
        })
        .collect();
    let _ = writeln!(
        out,
        "| executions per gated batch of 1,000 | count | {} | | 1 |",
        cells.join(" | ")
    );
    let floor_mixed = median_ns("mixed/floor").map(|ns| ns / MIXED_CALLS as f64);
    let _ = writeln!(out);
    // The floors, each against the best peer of the same measurement: criterion's fan-in
    // row (2) and the rows of interleaved rounds (4 and 5), whose floors come after the
    // peers.
    let criterion_floors = [
        format!("fan_in/{ONE_KEY_FLOOR}"),
        format!("floor_fan_in/{SPAWN_ONLY}"),
        format!("floor_fan_in/{SPAWN_LISTEN_WAKE}"),
    ]
    .map(|path| slope_ns(&path));
    for (measured, row, floors) in [
        ("criterion", &rows[2], criterion_floors),
        (
            "interleaved rounds",
            &rows[4],
            [0, 1, 2].map(|f| Some(interleaved.fan_in[PEERS.len() + f])),
        ),
        (
            "interleaved rounds, work that yields",
            &rows[5],
            [0, 1, 2].map(|f| Some(interleaved.fan_in_yield[PEERS.len() + f])),
        ),
    ] {
        let Some(best) = best_peer(row) else { continue };
        let cells: Vec<String> = [
            "the same harness with a one-key singleflight (no hash, no map)",
            "tokio spawn only",
            "tokio spawn and one event-listener wait and wake",
        ]
        .iter()
        .zip(floors)
        .filter_map(|(floor, ns)| Some(format!("{floor} {:.0} ns ({:.2}x)", ns?, ns? / best)))
        .collect();
        let _ = writeln!(
            out,
            "floors under gated fan-in per added caller, {measured} (ratio to the best peer): {}.",
            cells.join("; ")
        );
    }
    if let Some(ns) = floor_mixed {
        let _ = writeln!(
            out,
            "floor under mixed (same tasks, one yield per call, no singleflight): {ns:.0} ns per call."
        );
    }
    let work_slope = slope_ns("chan_vs_work/work");
    let chan_slope = slope_ns("chan_vs_work/do_chan");
    let _ = writeln!(out);
    if let (Some(work), Some(chan)) = (work_slope, chan_slope) {
        let _ = writeln!(
            out,
            "oneflight, one task, per added caller: `work` follower {work:.0} ns, `do_chan` receiver {chan:.0} ns ({:.2}x; target <= 1.5x); heap bytes per `do_chan` caller that joins: {chan_bytes}.",
            chan / work
        );
    }
    let Interleaved {
        work_follower,
        chan_receiver,
        ..
    } = interleaved;
    let _ = writeln!(
        out,
        "oneflight, one task, per added caller, interleaved rounds: `work` follower {work_follower:.0} ns, `do_chan` receiver {chan_receiver:.0} ns ({:.2}x; target <= 1.5x).",
        chan_receiver / work_follower
    );
    let per_item = |path: &str| median_ns(&format!("floor/{path}")).map(|ns| ns / CHANNELS as f64);
    if let (Some(work), Some(chan), Some(channel), Some(boxed), Some(lookup)) = (
        work_slope,
        chan_slope,
        per_item(CHANNEL_LIFECYCLE),
        per_item(BOXED_FUTURES),
        median_ns(&format!("floor/{LOOKUP}")),
    ) {
        let _ = writeln!(
            out,
            "floor under a `do_chan` receiver: its async-channel (created, sent to, closed, received from, dropped; {CHANNELS} at a time) {channel:.0} ns and {} heap bytes, plus the box that keeps its future {boxed:.0} ns, plus a lookup under a lock {lookup:.0} ns: {:.2}x a `work` follower; the rest of a receiver costs {:.0} ns.",
            channel_lifecycle_bytes(),
            (channel + boxed + lookup) / work,
            chan - channel - boxed - lookup,
        );
    }
    for (name, path) in [
        (
            "Mutex<HashMap> insert+remove with a key clone",
            "floor/mutex-hashmap insert+remove+key clone",
        ),
        (
            "Mutex<HashMap<u64, _>> insert+remove",
            "floor/mutex-hashmap insert+remove u64",
        ),
        (
            "event-listener notify round trip",
            "floor/event-listener notify round trip",
        ),
        ("async-channel send+recv", "floor/async-channel send+recv"),
    ] {
        if let Some(ns) = median_ns(path) {
            let _ = writeln!(out, "floor: {name}: {ns:.0} ns.");
        }
    }
    println!("\n{out}");
    let dir = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let _ = std::fs::write(format!("{dir}/criterion/peers-summary.md"), &out);
    // The chart shows one run: a filtered run leaves it as it was.
    match FROM_EARLIER_RUNS.load(Ordering::Relaxed) {
        0 => {
            let _ = std::fs::write(
                concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/peers.svg"),
                chart(&rows),
            );
        }
        earlier => {
            println!("{earlier} figures above come from earlier runs: docs/peers.svg not redrawn.")
        }
    }
}

/// A bar chart of each scenario's times relative to the best peer (1.0 = best peer).
fn chart(rows: &[Row]) -> String {
    let rows: Vec<&Row> = rows.iter().filter(|r| r.target.is_some()).collect();
    let colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"];
    let (row_height, bar, left, width) = (110.0, 16.0, 300.0, 420.0);
    let height = 60.0 + row_height * rows.len() as f64 + 40.0;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"24\" font-size=\"15\">Time relative to the best peer in each scenario (lower is better; 1.0 = best peer)</text>\n",
        left + width + 120.0
    );
    let max = rows
        .iter()
        .flat_map(|r| {
            let best = best_peer(r).unwrap_or(f64::INFINITY);
            r.values
                .iter()
                .flatten()
                .map(move |v| v / best)
                .collect::<Vec<_>>()
        })
        .fold(1.0_f64, f64::max)
        .min(8.0);
    for (i, row) in rows.iter().enumerate() {
        let top = 50.0 + row_height * i as f64;
        let best = best_peer(row).unwrap_or(f64::INFINITY);
        let _ = writeln!(
            svg,
            "<text x=\"10\" y=\"{}\" font-weight=\"bold\">{}</text>",
            top + 12.0,
            row.scenario
        );
        for (p, value) in row.values.iter().enumerate() {
            let y = top + 20.0 + p as f64 * bar;
            let _ = writeln!(
                svg,
                "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
                left - 6.0,
                y + 12.0,
                PEERS[p].replace('<', "&lt;").replace('>', "&gt;")
            );
            if let Some(v) = value {
                let ratio = v / best;
                let w = (ratio.min(max) / max * width).max(1.0);
                let _ = writeln!(
                    svg,
                    "<rect x=\"{left}\" y=\"{y}\" width=\"{w:.1}\" height=\"{}\" fill=\"{}\"/>",
                    bar - 3.0,
                    colors[p]
                );
                let _ = writeln!(
                    svg,
                    "<text x=\"{:.1}\" y=\"{}\">{ratio:.2}x ({v:.0} {})</text>",
                    left + w + 4.0,
                    y + 12.0,
                    row.unit
                );
            }
        }
        let x = left + width / max;
        let _ = writeln!(
            svg,
            "<line x1=\"{x:.1}\" y1=\"{}\" x2=\"{x:.1}\" y2=\"{}\" stroke=\"#888\" stroke-dasharray=\"3,3\"/>",
            top + 18.0,
            top + 20.0 + bar * PEERS.len() as f64
        );
    }
    svg.push_str("</svg>\n");
    svg
}

// ---------------------------------------------------------------------------------------

/// The keys of `mixed`.
fn mixed_keys() -> Arc<Vec<String>> {
    Arc::new((0..MIXED_KEYS).map(|i| format!("user:{i:08}")).collect())
}

fn benches(c: &mut Criterion) {
    let string_keys: Vec<Box<str>> = (0..STRING_KEYS)
        .map(|i| format!("user:{i:08}").into_boxed_str())
        .collect();
    let u64_keys: Vec<Box<u64>> = (0..STRING_KEYS as u64).map(Box::new).collect();
    let mixed_keys = mixed_keys();

    uncontended::<str, oneflight::Group<String, u64>>(c, "uncontended_string", &string_keys);
    uncontended::<str, singleflight_async::SingleFlight<String, u64>>(
        c,
        "uncontended_string",
        &string_keys,
    );
    uncontended::<str, async_singleflight::UnaryGroup<String, u64>>(
        c,
        "uncontended_string",
        &string_keys,
    );
    uncontended::<str, uniflight::Merger<String, u64>>(c, "uncontended_string", &string_keys);
    uncontended::<str, SharedMap<String>>(c, "uncontended_string", &string_keys);

    uncontended::<u64, oneflight::Group<u64, u64>>(c, "uncontended_u64", &u64_keys);
    uncontended::<u64, singleflight_async::SingleFlight<u64, u64>>(c, "uncontended_u64", &u64_keys);
    uncontended::<u64, async_singleflight::UnaryGroup<u64, u64>>(c, "uncontended_u64", &u64_keys);
    uncontended::<u64, uniflight::Merger<u64, u64>>(c, "uncontended_u64", &u64_keys);
    uncontended::<u64, SharedMap<u64>>(c, "uncontended_u64", &u64_keys);

    for yields in [false, true] {
        each_peer!(fan_in(c, yields));
        fan_in::<OneKeyFloor>(c, yields);
    }

    each_peer!(mixed(c, &mixed_keys));

    floor_mixed(c);
    chan_vs_work(c);
    floor(c, &string_keys);
    floor_fan_in(c);
}

criterion_group! {
    name = peers;
    config = criterion_config();
    targets = benches
}

fn main() {
    STARTED.get_or_init(std::time::SystemTime::now);
    peers();
    Criterion::default().configure_from_args().final_summary();
    // Heap and execution counts are measured apart from the timings, on an idle machine.
    let heap = each_peer!(follower_cost());
    let executions = each_peer!(executions_per_batch(20));
    let (work_follower, chan_receiver) = interleaved_chan_vs_work();
    let interleaved = Interleaved {
        fan_in: interleaved_fan_in(false),
        fan_in_yield: interleaved_fan_in(true),
        mixed: interleaved_mixed(&mixed_keys()),
        work_follower,
        chan_receiver,
    };
    summary(&executions, &heap, do_chan_follower_bytes(), &interleaved);
}
