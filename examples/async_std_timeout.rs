//! Many concurrent `do_chan` callers for a few keys on async-std, each with its own
//! timeout through `select!`. async-std is discontinued upstream (smol is its successor);
//! oneflight keeps supporting it for existing programs.
//!
//! Run with `cargo run --example async_std_timeout --no-default-features --features async-std`.

#[path = "shared/mod.rs"]
mod shared;

use futures_util::{FutureExt, select};
use oneflight::Group;
use shared::{BACKEND_TIME, CALLERS_PER_KEY, KEYS, Stats, timeout_of};
use std::sync::Arc;

fn main() {
    async_std::task::block_on(async {
        let group: Group<String, String> = Group::new();
        let stats = Arc::new(Stats::default());
        let mut callers = Vec::new();
        for i in 0..CALLERS_PER_KEY {
            for key in KEYS {
                let (group, stats) = (group.clone(), stats.clone());
                callers.push(async_std::task::spawn(async move {
                    let backend = stats.clone();
                    let rx = group.do_chan(key, async move {
                        async_std::task::sleep(BACKEND_TIME).await;
                        backend.answer(key)
                    });
                    let result = select! {
                        outcome = rx.recv().fuse() => outcome.ok().map(|o| o.value),
                        _ = async_std::task::sleep(timeout_of(i)).fuse() => None,
                    };
                    stats.record(result);
                }));
            }
        }
        for caller in callers {
            caller.await;
        }
        stats.report("async-std", group.in_flight());
    });
}
