//! Many concurrent `do_chan` callers for a few keys on a Tokio multi-thread runtime,
//! each with its own timeout through `tokio::select!`. Inside a Tokio runtime, `do_chan`
//! spawns flights on it, so their futures can use Tokio's timers and I/O.
//!
//! Run with `cargo run --example tokio --features tokio`.

#[path = "shared/mod.rs"]
mod shared;

use oneflight::Group;
use shared::{BACKEND_TIME, CALLERS_PER_KEY, KEYS, Stats, timeout_of};
use std::sync::Arc;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let group: Group<String, String> = Group::new();
    let stats = Arc::new(Stats::default());
    let mut callers = Vec::new();
    for i in 0..CALLERS_PER_KEY {
        for key in KEYS {
            let (group, stats) = (group.clone(), stats.clone());
            callers.push(tokio::spawn(async move {
                let backend = stats.clone();
                let rx = group.do_chan(key, async move {
                    tokio::time::sleep(BACKEND_TIME).await;
                    backend.answer(key)
                });
                let result = tokio::select! {
                    outcome = rx.recv() => outcome.ok().map(|o| o.value),
                    _ = tokio::time::sleep(timeout_of(i)) => None,
                };
                stats.record(result);
            }));
        }
    }
    for caller in callers {
        caller.await.unwrap();
    }
    stats.report("tokio", group.in_flight());
}
