//! Many concurrent `do_chan` callers for a few keys on smol, each with its own timeout
//! through `select!`. Callers that give up don't cancel the flight: the others still get
//! its value, and each key reaches the slow backend once.
//!
//! Run with `cargo run --example smol_timeout`.

#[path = "shared/mod.rs"]
mod shared;

use futures_util::{FutureExt, select};
use oneflight::Group;
use shared::{BACKEND_TIME, CALLERS_PER_KEY, KEYS, Stats, timeout_of};
use smol::Timer;
use std::sync::Arc;

fn main() {
    smol::block_on(async {
        let group: Group<String, String> = Group::new();
        let stats = Arc::new(Stats::default());
        let mut callers = Vec::new();
        for i in 0..CALLERS_PER_KEY {
            for key in KEYS {
                let (group, stats) = (group.clone(), stats.clone());
                callers.push(smol::spawn(async move {
                    let backend = stats.clone();
                    let rx = group.do_chan(key, async move {
                        Timer::after(BACKEND_TIME).await;
                        backend.answer(key)
                    });
                    let result = select! {
                        outcome = rx.recv().fuse() => outcome.ok().map(|o| o.value),
                        _ = FutureExt::fuse(Timer::after(timeout_of(i))) => None,
                    };
                    stats.record(result);
                }));
            }
        }
        for caller in callers {
            caller.await;
        }
        stats.report("smol", group.in_flight());
    });
}
