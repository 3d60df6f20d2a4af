//! oneflight beside its peers, in one run, on the same scenarios, on a 2-worker Tokio
//! runtime: `singleflight-async` 0.2, `async_singleflight` 0.6, `uniflight` 0.8, a
//! hand-rolled `futures::future::Shared` in a `Mutex<HashMap>`, and moka 0.12's
//! `future::Cache::get_with` (emptied before each fan-in batch, invalidated per call in
//! `mixed`); plus a floor of the primitives every design pays for.
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
//!
//! Last, the cost of the observability features: the uncontended call with String keys,
//! in interleaved rounds, built plain, with `tracing` on (no subscriber) and with
//! `metrics` on (no recorder), from the same source (`bench/traced`, `bench/metered`).
//! `cargo bench --bench peers -- observability` runs only that.

#[macro_use]
mod peers;
mod alloc;
mod chart;
mod floors;
mod report;
mod rounds;
mod scenarios;

use criterion::{Criterion, criterion_group};
use std::sync::Arc;

use crate::alloc::*;
use crate::floors::*;
use crate::peers::*;
use crate::report::*;
use crate::rounds::*;
use crate::scenarios::*;

/// The keys of the uncontended scenarios: a new one for each call, 4,096 in turn.
fn string_keys() -> Arc<Vec<Box<str>>> {
    let keys = (0..STRING_KEYS).map(|i| format!("user:{i:08}").into_boxed_str());
    Arc::new(keys.collect())
}

fn u64_keys() -> Arc<Vec<Box<u64>>> {
    Arc::new((0..STRING_KEYS as u64).map(Box::new).collect())
}

/// The keys of `mixed`.
fn mixed_keys() -> Arc<Vec<String>> {
    Arc::new((0..MIXED_KEYS).map(|i| format!("user:{i:08}")).collect())
}

fn benches(c: &mut Criterion) {
    let (string_keys, u64_keys) = (string_keys(), u64_keys());
    let mixed_keys = mixed_keys();

    each_singleflight!(
        str,
        String,
        uncontended(c, "uncontended_string", &string_keys)
    );
    each_singleflight!(u64, u64, uncontended(c, "uncontended_u64", &u64_keys));

    for yields in [false, true] {
        each_peer!(fan_in(c, yields));
        fan_in::<OneKeyFloor>(c, yields);
        fan_in::<OneKeyWakerFloor>(c, yields);
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
    if std::env::args().any(|arg| arg == "observability") {
        observability_cost(interleaved_observability(&string_keys()));
        return;
    }
    STARTED.get_or_init(std::time::SystemTime::now);
    peers();
    Criterion::default().configure_from_args().final_summary();
    // Heap and execution counts are measured apart from the timings, on an idle machine.
    let heap = each_peer!(follower_cost());
    let executions = each_peer!(executions_per_batch(20));
    let (work_follower, chan_receiver) = interleaved_chan_vs_work();
    let interleaved = Interleaved {
        uncontended_string: interleaved_uncontended(each_singleflight!(
            str,
            String,
            uncontended_batch(&string_keys())
        )),
        uncontended_u64: interleaved_uncontended(each_singleflight!(
            u64,
            u64,
            uncontended_batch(&u64_keys())
        )),
        fan_in: interleaved_fan_in(false),
        fan_in_yield: interleaved_fan_in(true),
        mixed: interleaved_mixed(&mixed_keys()),
        work_follower,
        chan_receiver,
    };
    summary(&executions, &heap, do_chan_follower_bytes(), &interleaved);
    observability_cost(interleaved_observability(&string_keys()));
}
