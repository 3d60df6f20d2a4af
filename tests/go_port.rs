//! The cases of Go's `x/sync/singleflight/singleflight_test.go`, named by behaviour. Each
//! says which Go test it ports and where our contract differs from Go's.

mod common;

use common::{Gate, Log, poll_once, quiet_panics};
use oneflight::{Group, Panicked};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;

/// Go's `TestDo`.
#[test]
fn work_returns_the_value() {
    let group: Group<String, String> = Group::new();
    let value = futures_executor::block_on(group.work("key", async { "bar".to_string() }));
    assert_eq!(value, "bar");
}

/// Go's `TestDoErr`: errors are values, shared as `Result<T, Arc<E>>`.
#[test]
fn work_returns_the_error() {
    #[derive(Debug)]
    struct SomeError;
    let group: Group<String, Result<String, Arc<SomeError>>> = Group::new();
    let value = futures_executor::block_on(group.work("key", async { Err(Arc::new(SomeError)) }));
    assert!(matches!(value, Err(e) if matches!(*e, SomeError)));
}

/// Go's `TestDoDupSuppress`, which only checks that the count lies in `1..=n`. Driven by
/// hand, the count is exact: one.
#[test]
fn duplicate_calls_are_suppressed_exactly() {
    const N: usize = 10;
    let group: Group<String, String> = Group::new();
    let calls = AtomicUsize::new(0);
    let gate = Gate::new();
    let work = || {
        let (calls, wait) = (&calls, gate.wait());
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            wait.await;
            "bar".to_string()
        }
    };
    let mut callers: Vec<_> = (0..N)
        .map(|_| Box::pin(group.work("key", work())))
        .collect();
    for caller in &mut callers {
        assert!(poll_once(caller.as_mut()).is_pending());
    }
    gate.open();
    for caller in &mut callers {
        assert_eq!(poll_once(caller.as_mut()), Poll::Ready("bar".to_string()));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// Go's `TestForget`: after `Forget`, a call starts a new flight while the first still
/// runs, and a third call joins the second.
#[test]
fn forget_lets_the_next_call_start_a_new_flight() {
    let group: Group<String, u32> = Group::new();
    let log = Log::new();
    let (first_gate, second_gate) = (Gate::new(), Gate::new());
    let mut first = pin!(group.work("key", log.work("1", &first_gate, 1)));
    assert!(poll_once(first.as_mut()).is_pending());
    assert!(group.forget("key"));
    let mut second = pin!(group.work("key", log.work("2", &second_gate, 2)));
    assert!(poll_once(second.as_mut()).is_pending());
    let mut third = pin!(group.work("key", log.work("3", &second_gate, 3)));
    assert!(poll_once(third.as_mut()).is_pending());
    first_gate.open();
    second_gate.open();
    assert_eq!(poll_once(first.as_mut()), Poll::Ready(1));
    assert_eq!(poll_once(second.as_mut()), Poll::Ready(2));
    assert_eq!(poll_once(third.as_mut()), Poll::Ready(2));
    assert_eq!(log.count(" started"), 2);
}

/// Go's `TestPanicDo`: every caller of a panicking flight panics; ours carry the message
/// in a [`Panicked`] (the runner sees its own panic).
#[test]
fn a_panic_reaches_every_caller() {
    quiet_panics();
    const N: usize = 5;
    let group: Group<String, u32> = Group::new();
    let gate = Gate::new();
    let mut callers: Vec<_> = (0..N)
        .map(|i| {
            let wait = (i == 0).then(|| gate.wait());
            Box::pin(group.work("key", async move {
                if let Some(wait) = wait {
                    wait.await;
                }
                panic!("invalid memory address on purpose")
            }))
        })
        .collect();
    for caller in &mut callers {
        assert!(poll_once(caller.as_mut()).is_pending());
    }
    gate.open();
    let mut panicked = 0;
    for (i, caller) in callers.iter_mut().enumerate() {
        let payload = catch_unwind(AssertUnwindSafe(|| poll_once(caller.as_mut()))).unwrap_err();
        let message = if i == 0 {
            payload.downcast_ref::<&str>().unwrap().to_string()
        } else {
            payload
                .downcast_ref::<Panicked>()
                .unwrap()
                .message()
                .to_owned()
        };
        assert_eq!(message, "invalid memory address on purpose");
        panicked += 1;
    }
    assert_eq!(panicked, N);
    assert_eq!(group.in_flight(), 0);
}

/// Go's `TestGoexitDo`. In Go, a flight whose function calls `runtime.Goexit` makes every
/// waiter exit too. A future has no Goexit; its counterpart is the runner being dropped,
/// and our contract hands the flight over instead, so waiters still get a value.
#[test]
fn runner_exit_hands_over_instead_of_failing_waiters() {
    const N: usize = 5;
    let group: Group<String, usize> = Group::new();
    let log = Log::new();
    let gate = Gate::new();
    let mut callers: Vec<_> = (0..N)
        .map(|i| {
            Some(Box::pin(
                group.work("key", log.work(&format!("f{i}"), &gate, i)),
            ))
        })
        .collect();
    for caller in callers.iter_mut().flatten() {
        assert!(poll_once(caller.as_mut()).is_pending());
    }
    callers[0] = None; // the runner "exits"
    gate.open();
    let values: Vec<_> = callers
        .iter_mut()
        .flatten()
        .map(|caller| poll_once(caller.as_mut()))
        .collect();
    assert_eq!(values, vec![Poll::Ready(1); N - 1]);
    assert_eq!(log.count(" started"), 2);
    assert_eq!(group.in_flight(), 0);
}
