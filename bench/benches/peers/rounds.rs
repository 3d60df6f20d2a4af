//! The interleaved rounds: the same scenarios timed apart from criterion, alternating
//! between the implementations round after round.

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use std::sync::Arc;

use crate::floors::*;
use crate::peers::*;
use crate::scenarios::*;

/// Rounds of each interleaved measurement.
pub(crate) const ROUNDS: usize = 30;

/// A scenario as the interleaved rounds run it: the future of one batch of a size.
pub(crate) type Batch = Box<dyn Fn(usize) -> BoxFuture<'static, ()>>;

/// Medians over `ROUNDS` rounds that alternate between `batches`: each round, `measure`
/// times every batch in turn. Criterion measures one implementation after another,
/// minutes apart, and a shared machine that speeds up or slows down during a run (by
/// more than the differences measured here) then weighs on some and not on others; in
/// alternating rounds it weighs on all alike.
pub(crate) fn interleaved(batches: &[Batch], measure: impl Fn(&Batch) -> f64) -> Vec<f64> {
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
pub(crate) fn batch_ns(rt: &tokio::runtime::Runtime, batch: &Batch, n: usize, reps: u32) -> f64 {
    let start = std::time::Instant::now();
    for _ in 0..reps {
        rt.block_on(batch(n));
    }
    start.elapsed().as_nanos() as f64 / f64::from(reps)
}

/// Nanoseconds per added caller: 10 batches of 1,000 callers against 50 of one.
pub(crate) fn per_added_caller(rt: &tokio::runtime::Runtime, batch: &Batch) -> f64 {
    let one = batch_ns(rt, batch, 1, 50);
    (batch_ns(rt, batch, 1_000, 10) - one) / 999.0
}

/// Gated fan-in per added caller, in interleaved rounds: the peers in `PEERS`' order, then
/// the floors: the one-key singleflight (waiting on an event, then with a waker list),
/// spawning only, and spawning with one event wait and wake.
pub(crate) fn interleaved_fan_in(yields: bool) -> Vec<f64> {
    fn peer<P: Peer<str>>(yields: bool) -> Batch {
        let peer = Arc::new(P::create());
        Box::new(move |n| gated_batch(peer.clone(), n, yields).map(drop).boxed())
    }
    let floors: [Batch; 4] = [
        peer::<OneKeyFloor>(yields),
        peer::<OneKeyWakerFloor>(yields),
        Box::new(|n| spawn_only(n).boxed()),
        Box::new(|n| spawn_listen_wake(n).boxed()),
    ];
    let batches: Vec<Batch> = each_peer!(peer(yields)).into_iter().chain(floors).collect();
    let rt = runtime();
    interleaved(&batches, |batch| per_added_caller(&rt, batch))
}

/// `mixed` per call, in interleaved rounds, in `PEERS`' order.
pub(crate) fn interleaved_mixed(keys: &Arc<Vec<String>>) -> Vec<f64> {
    fn peer<P: Peer<str>>(keys: &Arc<Vec<String>>) -> Batch {
        let (peer, keys) = (Arc::new(P::create_for_mixed()), keys.clone());
        Box::new(move |_| mixed_batch(peer.clone(), keys.clone()).boxed())
    }
    let batches = each_peer!(peer(keys));
    let rt = runtime();
    interleaved(&batches, |batch| {
        batch_ns(&rt, batch, MIXED_CALLS, 2) / MIXED_CALLS as f64
    })
}

/// A `work` follower and a `do_chan` receiver per added caller, in interleaved rounds.
pub(crate) fn interleaved_chan_vs_work() -> (f64, f64) {
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
pub(crate) fn executions_per_batch<P: Peer<str>>(batches: usize) -> (u64, u64) {
    let rt = runtime();
    let peer = Arc::new(P::create());
    let counts: Vec<u64> = (0..batches)
        .map(|_| rt.block_on(gated_batch(peer.clone(), 1_000, false)))
        .collect();
    (*counts.iter().min().unwrap(), *counts.iter().max().unwrap())
}

/// The calls of one uncontended batch, one after another in one task.
const UNCONTENDED_CALLS: usize = 10_000;

/// An uncontended batch of `P` for [`interleaved_uncontended`]: sequential calls on
/// distinct keys, each with a ready future, as criterion's `uncontended_*` make.
pub(crate) fn uncontended_batch<Q, P>(keys: &Arc<Vec<Box<Q>>>) -> Batch
where
    Q: ?Sized + Sync + Send + 'static,
    P: Peer<Q>,
{
    let (peer, keys) = (Arc::new(P::create()), keys.clone());
    Box::new(move |calls| {
        let (peer, keys) = (peer.clone(), keys.clone());
        async move {
            for call in 0..calls {
                std::hint::black_box(peer.call(&keys[call % keys.len()], async { 1 }).await);
            }
        }
        .boxed()
    })
}

/// Uncontended per call, in interleaved rounds, in `PEERS`' order (moka left out).
pub(crate) fn interleaved_uncontended(batches: [Batch; 5]) -> Vec<f64> {
    let rt = runtime();
    interleaved(&batches, |batch| {
        batch_ns(&rt, batch, UNCONTENDED_CALLS, 1) / UNCONTENDED_CALLS as f64
    })
}

/// Uncontended per call with String keys, in interleaved rounds: the plain build, then
/// with `tracing` on and no subscriber, then with `metrics` on and no recorder.
pub(crate) fn interleaved_observability(keys: &Arc<Vec<Box<str>>>) -> [f64; 3] {
    let batches: Vec<Batch> = vec![
        uncontended_batch::<str, oneflight::Group<String, u64>>(keys),
        uncontended_batch::<str, oneflight_traced::Group<String, u64>>(keys),
        uncontended_batch::<str, oneflight_metered::Group<String, u64>>(keys),
    ];
    let rt = runtime();
    let medians = interleaved(&batches, |batch| {
        batch_ns(&rt, batch, UNCONTENDED_CALLS, 1) / UNCONTENDED_CALLS as f64
    });
    [medians[0], medians[1], medians[2]]
}
