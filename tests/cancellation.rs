//! Caller cancellation is free: a waiting caller takes over a flight whose runner went
//! away, with its own future, after the cancelled one is dropped.

mod common;

use common::{Gate, Log, counting_waker, poll_once, poll_with, quiet_panics, within};
use oneflight::Group;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

#[test]
fn cancelled_leader_hands_over_to_one_waiting_caller() {
    let group: Group<String, &str> = Group::new();
    let log = Log::new();
    let gate = Gate::new();
    let mut leader = Box::pin(group.work("key", log.work("a", &gate, "a")));
    let mut b = pin!(group.work("key", log.work("b", &gate, "b")));
    let mut c = pin!(group.work("key", log.work("c", &gate, "c")));
    let (waker_b, wakes_b) = counting_waker();
    let (waker_c, wakes_c) = counting_waker();
    assert!(poll_once(leader.as_mut()).is_pending());
    assert!(poll_with(b.as_mut(), &waker_b).is_pending());
    assert!(poll_with(c.as_mut(), &waker_c).is_pending());

    drop(leader);
    assert_eq!(log.events(), ["a started", "a dropped"]);
    assert_eq!(
        (wakes_b.get(), wakes_c.get()),
        (1, 1),
        "waiters woken to take over"
    );
    assert_eq!(group.in_flight(), 1, "the flight lives on for its waiters");

    // The first waiter polled takes over with its own future; the other keeps waiting.
    assert!(poll_with(b.as_mut(), &waker_b).is_pending());
    assert!(poll_with(c.as_mut(), &waker_c).is_pending());
    assert_eq!(log.events(), ["a started", "a dropped", "b started"]);

    gate.open();
    assert_eq!(poll_once(b.as_mut()), Poll::Ready("b"));
    assert_eq!(poll_once(c.as_mut()), Poll::Ready("b"));
    assert_eq!(log.count(" started"), 2);
    assert_eq!(group.in_flight(), 0);
}

#[test]
fn a_new_caller_takes_over_a_vacant_flight() {
    let group: Group<String, &str> = Group::new();
    let log = Log::new();
    let gate = Gate::new();
    let mut leader = Box::pin(group.work("key", log.work("a", &gate, "a")));
    let mut waiter = pin!(group.work("key", log.work("b", &gate, "b")));
    assert!(poll_once(leader.as_mut()).is_pending());
    assert!(poll_once(waiter.as_mut()).is_pending());
    drop(leader);
    // Before the woken waiter is polled, a new caller arrives and runs the flight.
    let mut newcomer = pin!(group.work("key", log.work("c", &gate, "c")));
    assert!(poll_once(newcomer.as_mut()).is_pending());
    assert!(poll_once(waiter.as_mut()).is_pending());
    assert_eq!(log.events(), ["a started", "a dropped", "c started"]);
    gate.open();
    assert_eq!(poll_once(newcomer.as_mut()), Poll::Ready("c"));
    assert_eq!(poll_once(waiter.as_mut()), Poll::Ready("c"));
}

#[test]
fn cancelled_follower_changes_nothing() {
    let group: Group<String, u32> = Group::new();
    let log = Log::new();
    let gate = Gate::new();
    let mut leader = pin!(group.work("key", log.work("a", &gate, 1)));
    let mut follower = Box::pin(group.work("key", log.work("b", &gate, 2)));
    let mut other = pin!(group.work("key", log.work("c", &gate, 3)));
    assert!(poll_once(leader.as_mut()).is_pending());
    assert!(poll_once(follower.as_mut()).is_pending());
    assert!(poll_once(other.as_mut()).is_pending());
    drop(follower);
    assert_eq!(
        log.events(),
        ["a started"],
        "the follower's future never started"
    );
    gate.open();
    assert_eq!(poll_once(leader.as_mut()), Poll::Ready(1));
    assert_eq!(poll_once(other.as_mut()), Poll::Ready(1));
    assert_eq!(group.in_flight(), 0);
}

#[test]
fn every_caller_cancelled_leaves_no_entry() {
    let group: Group<String, u32> = Group::new();
    let log = Log::new();
    let gate = Gate::new();
    // Leader first, then the woken waiter before it could take over.
    let mut a = Box::pin(group.work("one", log.work("a", &gate, 1)));
    let mut b = Box::pin(group.work("one", log.work("b", &gate, 2)));
    assert!(poll_once(a.as_mut()).is_pending());
    assert!(poll_once(b.as_mut()).is_pending());
    drop(a);
    drop(b);
    assert_eq!(group.in_flight(), 0);
    // Waiter first, then the leader.
    let mut c = Box::pin(group.work("two", log.work("c", &gate, 3)));
    let mut d = Box::pin(group.work("two", log.work("d", &gate, 4)));
    assert!(poll_once(c.as_mut()).is_pending());
    assert!(poll_once(d.as_mut()).is_pending());
    drop(d);
    drop(c);
    assert_eq!(group.in_flight(), 0);
    assert_eq!(
        log.events(),
        ["a started", "a dropped", "c started", "c dropped"]
    );
    // The keys work again.
    gate.open();
    futures_executor::block_on(async {
        assert_eq!(group.work("one", log.work("e", &gate, 5)).await, 5);
        assert_eq!(group.work("two", log.work("f", &gate, 6)).await, 6);
    });
}

#[test]
fn takeover_chain_runs_one_future_at_a_time() {
    // Cancel each runner in turn: every takeover starts after the previous future ended.
    let group: Group<String, usize> = Group::new();
    let log = Log::new();
    let gate = Gate::new();
    let mut callers: Vec<_> = (0..5)
        .map(|i| {
            Some(Box::pin(
                group.work("key", log.work(&format!("f{i}"), &gate, i)),
            ))
        })
        .collect();
    for caller in callers.iter_mut().flatten() {
        assert!(poll_once(caller.as_mut()).is_pending());
    }
    for i in 0..4 {
        callers[i] = None;
        for caller in callers.iter_mut().flatten() {
            assert!(poll_once(caller.as_mut()).is_pending());
        }
    }
    let expected: Vec<String> = (0..4)
        .flat_map(|i| [format!("f{i} started"), format!("f{i} dropped")])
        .chain(["f4 started".to_string()])
        .collect();
    assert_eq!(log.events(), expected);
    gate.open();
    assert_eq!(
        poll_once(callers[4].as_mut().unwrap().as_mut()),
        Poll::Ready(4)
    );
    assert_eq!(group.in_flight(), 0);
}

#[test]
fn panic_while_dropping_the_cancelled_future_still_hands_over() {
    quiet_panics();
    struct PanicOnDrop;
    impl Drop for PanicOnDrop {
        fn drop(&mut self) {
            panic!("drop panicked on purpose");
        }
    }
    let group: Group<String, u32> = Group::new();
    let gate = Gate::new();
    let log = Log::new();
    let wait = gate.wait();
    let mut leader = Box::pin(group.work("key", async move {
        let _bomb = PanicOnDrop;
        wait.await;
        1
    }));
    let mut waiter = pin!(group.work("key", log.work("b", &gate, 2)));
    assert!(poll_once(leader.as_mut()).is_pending());
    assert!(poll_once(waiter.as_mut()).is_pending());
    let dropped = catch_unwind(AssertUnwindSafe(|| drop(leader)));
    assert!(
        dropped.is_err(),
        "the drop's panic reaches the cancelling caller"
    );
    assert!(poll_once(waiter.as_mut()).is_pending());
    assert_eq!(log.events(), ["b started"], "the waiter took over");
    gate.open();
    assert_eq!(poll_once(waiter.as_mut()), Poll::Ready(2));
    assert_eq!(group.in_flight(), 0);
}

#[test]
fn cancelled_future_is_dropped_before_the_next_starts_across_threads() {
    // The waiter polls on another thread, as soon as it is woken. The future it starts
    // checks that the cancelled one has already been dropped.
    within(Duration::from_secs(60), || {
        for _ in 0..if cfg!(miri) { 10 } else { 200 } {
            let group: Group<String, u32> = Group::new();
            let alive = Arc::new(AtomicUsize::new(0));
            let overlaps = Arc::new(AtomicUsize::new(0));
            let work = |alive: Arc<AtomicUsize>, overlaps: Arc<AtomicUsize>, gate: Gate| async move {
                struct Alive(Arc<AtomicUsize>);
                impl Drop for Alive {
                    fn drop(&mut self) {
                        std::thread::yield_now(); // widen the window
                        self.0.fetch_sub(1, Ordering::SeqCst);
                    }
                }
                if alive.fetch_add(1, Ordering::SeqCst) != 0 {
                    overlaps.fetch_add(1, Ordering::SeqCst);
                }
                let _alive = Alive(alive);
                gate.wait().await;
                7
            };
            let gate = Gate::new();
            let mut leader =
                Box::pin(group.work("key", work(alive.clone(), overlaps.clone(), gate.clone())));
            assert!(poll_once(leader.as_mut()).is_pending());
            let (joined_tx, joined_rx) = std::sync::mpsc::channel();
            let value = std::thread::scope(|scope| {
                let waiter = scope.spawn(|| {
                    let mut fut = pin!(
                        group.work("key", work(alive.clone(), overlaps.clone(), gate.clone()))
                    );
                    assert!(poll_once(fut.as_mut()).is_pending());
                    joined_tx.send(()).unwrap();
                    // Runs the flight after the takeover, then lets it finish.
                    futures_executor::block_on(fut.as_mut())
                });
                joined_rx.recv().unwrap();
                drop(leader);
                gate.open();
                waiter.join().unwrap()
            });
            assert_eq!(value, 7);
            assert_eq!(overlaps.load(Ordering::SeqCst), 0, "two futures overlapped");
            assert_eq!(group.in_flight(), 0);
        }
    });
}
