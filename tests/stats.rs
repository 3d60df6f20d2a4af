//! `stats`: exact counts after bursts, takeovers, panics and forgets, on several threads.

mod common;

use common::*;
use oneflight::{Group, Stats};
use std::panic::AssertUnwindSafe;
use std::pin::pin;
use std::time::Duration;

fn stats(flights: u64, joined: u64, takeovers: u64, panics: u64, forgotten: u64) -> Stats {
    let mut s = Stats::default();
    (s.flights, s.joined, s.takeovers, s.panics, s.forgotten) =
        (flights, joined, takeovers, panics, forgotten);
    s
}

#[test]
fn a_burst_counts_one_flight_and_the_joined_callers() {
    let group: Group<String, u32> = Group::new();
    let gate = Gate::new();
    let log = Log::new();
    let mut callers: Vec<_> = (0..10)
        .map(|i| Box::pin(group.work("k", log.work(&format!("c{i}"), &gate, i))))
        .collect();
    for caller in &mut callers {
        assert!(poll_once(caller.as_mut()).is_pending());
    }
    assert_eq!(
        group.stats(),
        stats(1, 9, 0, 0, 0),
        "counted while in flight"
    );
    gate.open();
    for caller in &mut callers {
        assert!(poll_once(caller.as_mut()).is_ready());
    }
    assert_eq!(group.stats(), stats(1, 9, 0, 0, 0));
    // Clones share the counters.
    assert_eq!(group.clone().stats(), group.stats());
}

#[test]
fn takeovers_panics_and_forgets_are_counted() {
    quiet_panics();
    let group: Group<String, u32> = Group::new();
    // A cancelled runner: the waiter takes over.
    let mut runner = Box::pin(group.work("a", async {
        Gate::new().wait().await;
        1
    }));
    let mut waiter = pin!(group.work("a", async { 2 }));
    assert!(poll_once(runner.as_mut()).is_pending());
    assert!(poll_once(waiter.as_mut()).is_pending());
    drop(runner);
    assert!(poll_once(waiter.as_mut()).is_ready());
    assert_eq!(group.stats(), stats(1, 1, 1, 0, 0));
    // A panic.
    let panicked = std::panic::catch_unwind(AssertUnwindSafe(|| {
        futures_executor::block_on(group.work("b", async { panic!("on purpose") }))
    }));
    assert!(panicked.is_err());
    assert_eq!(group.stats(), stats(2, 1, 1, 1, 0));
    // A forget, and a forget_unshared that does nothing.
    let gate = Gate::new();
    let mut old = pin!(group.work("c", async {
        gate.wait().await;
        3
    }));
    assert!(poll_once(old.as_mut()).is_pending());
    assert!(group.forget("c"));
    assert!(!group.forget_unshared("c"));
    assert_eq!(futures_executor::block_on(group.work("c", async { 4 })), 4);
    gate.open();
    assert!(poll_once(old.as_mut()).is_ready());
    assert_eq!(group.stats(), stats(4, 1, 1, 1, 1));
}

#[test]
fn a_standby_do_chan_caller_that_takes_over_is_counted() {
    let group: Group<String, u32> = Group::new();
    let executor = std::sync::Arc::new(async_executor::Executor::new());
    let mut runner = Box::pin(group.work("k", async {
        Gate::new().wait().await;
        1
    }));
    assert!(poll_once(runner.as_mut()).is_pending());
    let spawner = executor.clone();
    let rx = group.do_chan_with("k", async { 2 }, move |task| spawner.spawn(task).detach());
    drop(runner);
    let outcome = futures_executor::block_on(executor.run(rx.recv())).unwrap();
    assert_eq!(outcome.value, 2);
    assert_eq!(group.stats(), stats(1, 1, 1, 0, 0));
}

#[test]
fn counts_are_exact_on_several_threads() {
    within(Duration::from_secs(60), || {
        let group: Group<u64, u64> = Group::new();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let group = group.clone();
                std::thread::spawn(move || {
                    let mut rng = Rng::new(t);
                    for i in 0..2_000u64 {
                        let key = rng.below(8);
                        let cancel = rng.below(4) == 0;
                        let mut call = Box::pin(group.work(&key, async move {
                            yield_times(1).await;
                            i
                        }));
                        if cancel {
                            let _ = poll_once(call.as_mut());
                        } else {
                            futures_executor::block_on(call);
                        }
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let s = group.stats();
        // Every call here was polled once at least: each counted once.
        assert_eq!(s.flights + s.joined, 4 * 2_000, "{s:?}");
        assert_eq!((s.panics, s.forgotten), (0, 0));
        assert_eq!(group.in_flight(), 0);
    });
}
