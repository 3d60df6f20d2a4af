//! `try_work`: an error is shared as one `Arc` by every caller of its flight, not retried,
//! not kept after the flight; it mixes with `work` on one group.

mod common;

use common::*;
use oneflight::Group;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;

type Fallible = Group<String, Result<u32, Arc<String>>>;

#[test]
fn an_error_is_shared_as_one_arc_and_not_retried() {
    let group = Fallible::new();
    let gate = Gate::new();
    let runs = AtomicUsize::new(0);
    let fail = || {
        let wait = gate.wait();
        let runs = &runs;
        async move {
            runs.fetch_add(1, Ordering::SeqCst);
            wait.await;
            Err::<u32, String>("database down".to_owned())
        }
    };
    let mut runner = pin!(group.try_work("k", fail()));
    let mut waiters: Vec<_> = (0..3)
        .map(|_| Box::pin(group.try_work("k", fail())))
        .collect();
    assert!(poll_once(runner.as_mut()).is_pending());
    for waiter in &mut waiters {
        assert!(poll_once(waiter.as_mut()).is_pending());
    }
    gate.open();
    let Poll::Ready(Err(first)) = poll_once(runner.as_mut()) else {
        panic!("the runner's error")
    };
    for waiter in &mut waiters {
        let Poll::Ready(Err(error)) = poll_once(waiter.as_mut()) else {
            panic!("a waiter's error")
        };
        assert!(
            Arc::ptr_eq(&first, &error),
            "one error, the same Arc for every caller"
        );
    }
    assert_eq!(*first, "database down");
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "not retried for the waiters"
    );
    assert_eq!(group.in_flight(), 0, "not kept after the flight");
    // The next call starts a new flight.
    let again = futures_executor::block_on(group.try_work("k", async { Ok::<u32, String>(5) }));
    assert_eq!(again, Ok(5));
}

#[test]
fn a_value_is_shared_and_try_work_mixes_with_work() {
    let group = Fallible::new();
    let gate = Gate::new();
    let mut runner = pin!(group.try_work("k", async {
        gate.wait().await;
        Ok::<u32, String>(7)
    }));
    let mut plain = pin!(group.work("k", async { Ok(99) }));
    assert!(poll_once(runner.as_mut()).is_pending());
    assert!(poll_once(plain.as_mut()).is_pending());
    gate.open();
    assert_eq!(poll_once(runner.as_mut()), Poll::Ready(Ok(7)));
    assert_eq!(poll_once(plain.as_mut()), Poll::Ready(Ok(7)));
}

#[test]
fn a_cancelled_try_work_runner_hands_over_to_a_waiting_caller() {
    let group = Fallible::new();
    let mut runner = Box::pin(group.try_work("k", async {
        Gate::new().wait().await; // never opens
        Ok::<u32, String>(1)
    }));
    let mut waiter = pin!(group.try_work("k", async { Err::<u32, String>("second".to_owned()) }));
    assert!(poll_once(runner.as_mut()).is_pending());
    assert!(poll_once(waiter.as_mut()).is_pending());
    drop(runner);
    let Poll::Ready(Err(error)) = poll_once(waiter.as_mut()) else {
        panic!("took over")
    };
    assert_eq!(*error, "second");
    assert_eq!(group.stats().takeovers, 1);
}
