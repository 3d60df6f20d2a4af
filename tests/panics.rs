//! Panics are shared, not retried; panics in user trait code hurt only their caller.

mod common;

use common::{Gate, Log, poll_once, quiet_panics};
use oneflight::{Group, Panicked};
use std::cell::Cell;
use std::hash::{Hash, Hasher};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;

/// Polls once, catching a panic.
fn poll_catching<F: std::future::Future>(
    fut: Pin<&mut F>,
) -> Result<Poll<F::Output>, Box<dyn std::any::Any + Send>> {
    catch_unwind(AssertUnwindSafe(|| poll_once(fut)))
}

#[test]
fn leader_panic_is_shared_with_waiters_and_not_retried() {
    quiet_panics();
    let group: Group<String, u32> = Group::new();
    let gate = Gate::new();
    let log = Log::new();
    let wait = gate.wait();
    let mut leader = pin!(group.work("key", async move {
        wait.await;
        panic!("backend failed on purpose")
    }));
    let mut waiters: Vec<_> = (0..3)
        .map(|i| Box::pin(group.work("key", log.work(&format!("w{i}"), &gate, i))))
        .collect();
    assert!(poll_once(leader.as_mut()).is_pending());
    for waiter in &mut waiters {
        assert!(poll_once(waiter.as_mut()).is_pending());
    }
    gate.open();
    let original = poll_catching(leader.as_mut()).unwrap_err();
    assert_eq!(
        original.downcast_ref::<&str>(),
        Some(&"backend failed on purpose"),
        "the runner sees its own panic unchanged"
    );
    assert_eq!(group.in_flight(), 0, "the key is free right after");
    for waiter in &mut waiters {
        let payload = poll_catching(waiter.as_mut()).unwrap_err();
        let panicked = payload
            .downcast_ref::<Panicked>()
            .expect("a Panicked payload");
        assert_eq!(panicked.message(), "backend failed on purpose");
        assert!(panicked.to_string().contains("backend failed on purpose"));
    }
    assert!(log.events().is_empty(), "no waiter retried the work");
    // The next call starts a new flight.
    assert_eq!(
        futures_executor::block_on(group.work("key", async { 9 })),
        9
    );
}

#[test]
fn panicked_keeps_string_messages_and_names_other_payloads() {
    quiet_panics();
    let group: Group<String, u32> = Group::new();
    for (payload, expected) in [
        (0, "formatted 42 on purpose"),
        (1, "panic payload of a type other than &str or String"),
    ] {
        let gate = Gate::new();
        let wait = gate.wait();
        let mut leader = pin!(group.work("key", async move {
            wait.await;
            if payload == 0 {
                panic!("formatted {} on purpose", 42);
            }
            std::panic::resume_unwind(Box::new(17_u8))
        }));
        let mut waiter = pin!(group.work("key", async { 0 }));
        assert!(poll_once(leader.as_mut()).is_pending());
        assert!(poll_once(waiter.as_mut()).is_pending());
        gate.open();
        assert!(poll_catching(leader.as_mut()).is_err());
        let payload = poll_catching(waiter.as_mut()).unwrap_err();
        let panicked = payload.downcast_ref::<Panicked>().unwrap();
        assert_eq!(panicked.message(), expected);
        assert_eq!(
            format!("{panicked:?}"),
            format!("Panicked {{ message: {expected:?} }}")
        );
    }
}

#[test]
fn panicked_is_an_error_and_thread_safe() {
    fn assert_error<E: std::error::Error + Send + Sync + 'static>() {}
    assert_error::<Panicked>();
}

/// A key whose `Hash` panics while `BAD_HASH` is set and the key is "bad", and whose
/// `Eq` panics when either side is "boom".
#[derive(Clone, PartialEq, Eq, Debug)]
struct Touchy(String);

static BAD_HASH: AtomicBool = AtomicBool::new(false);

impl Hash for Touchy {
    fn hash<H: Hasher>(&self, state: &mut H) {
        if self.0 == "bad" && BAD_HASH.load(Ordering::SeqCst) {
            panic!("hash panicked on purpose");
        }
        self.0.hash(state);
    }
}

/// All keys collide, so that lookups compare keys with `Eq`.
#[derive(Clone, Eq, Debug)]
struct Colliding(String);

impl Hash for Colliding {
    fn hash<H: Hasher>(&self, state: &mut H) {
        0_u8.hash(state);
    }
}

impl PartialEq for Colliding {
    fn eq(&self, other: &Self) -> bool {
        if self.0 == "boom" || other.0 == "boom" {
            panic!("eq panicked on purpose");
        }
        self.0 == other.0
    }
}

#[test]
fn panicking_hash_hurts_only_its_caller_even_while_the_map_grows() {
    quiet_panics();
    let group: Group<Touchy, u32> = Group::new();
    let gate = Gate::new();
    let log = Log::new();
    // "bad" is in flight, then its Hash starts panicking, then the map grows (std's
    // HashMap would rehash "bad" here, panic, and lose flights).
    let bad_key = Touchy("bad".into());
    let keys: Vec<Touchy> = (1..=200).map(|i| Touchy(format!("k{i}"))).collect();
    let mut bad = Box::pin(group.work(&bad_key, log.work("bad", &gate, 0)));
    assert!(poll_once(bad.as_mut()).is_pending());
    BAD_HASH.store(true, Ordering::SeqCst);
    let mut flights: Vec<_> = (1..=200)
        .zip(&keys)
        .map(|(i, key)| Box::pin(group.work(key, log.work("k", &gate, i))))
        .collect();
    for flight in &mut flights {
        assert!(poll_once(flight.as_mut()).is_pending());
    }
    assert_eq!(group.in_flight(), 201, "growing the map lost no flight");
    // A new caller of "bad" panics in its own Hash, and only it.
    let mut caller = pin!(group.work(&bad_key, async { 1 }));
    assert!(poll_catching(caller.as_mut()).is_err());
    gate.open();
    assert_eq!(poll_once(bad.as_mut()), Poll::Ready(0));
    for (i, flight) in flights.iter_mut().enumerate() {
        assert_eq!(poll_once(flight.as_mut()), Poll::Ready(i as u32 + 1));
    }
    assert_eq!(group.in_flight(), 0);
    BAD_HASH.store(false, Ordering::SeqCst);
    assert_eq!(
        futures_executor::block_on(group.work(&Touchy("bad".into()), async { 5 })),
        5,
        "the key works again"
    );
}

#[test]
fn panicking_eq_hurts_only_its_caller() {
    quiet_panics();
    let group: Group<Colliding, u32> = Group::new();
    let gate = Gate::new();
    let log = Log::new();
    let (a_key, boom_key) = (Colliding("a".into()), Colliding("boom".into()));
    let mut a = pin!(group.work(&a_key, log.work("a", &gate, 1)));
    assert!(poll_once(a.as_mut()).is_pending());
    // "boom" is compared with "a" under the lock, and panics.
    let mut boom = pin!(group.work(&boom_key, async { 2 }));
    assert!(poll_catching(boom.as_mut()).is_err());
    assert!(
        !catch_unwind(AssertUnwindSafe(|| group.forget(&Colliding("boom".into()))))
            .unwrap_or(false)
    );
    // The lock is usable and "a" is intact: a follower joins it.
    let mut follower = pin!(group.work(&a_key, log.work("a2", &gate, 3)));
    assert!(poll_once(follower.as_mut()).is_pending());
    assert_eq!(group.in_flight(), 1);
    gate.open();
    assert_eq!(poll_once(a.as_mut()), Poll::Ready(1));
    assert_eq!(poll_once(follower.as_mut()), Poll::Ready(1));
    assert_eq!(log.count(" started"), 1);
    // With nothing to compare with, "boom" itself works.
    assert_eq!(
        futures_executor::block_on(group.work(&Colliding("boom".into()), async { 4 })),
        4
    );
    assert_eq!(group.in_flight(), 0);
}

thread_local! {
    /// Makes the next clone of a `Fragile` on this thread panic.
    static FAIL_NEXT_CLONE: Cell<bool> = const { Cell::new(false) };
}

#[derive(Debug, PartialEq)]
struct Fragile(u32);

impl Clone for Fragile {
    fn clone(&self) -> Self {
        if FAIL_NEXT_CLONE.with(|f| f.replace(false)) {
            panic!("clone panicked on purpose");
        }
        Fragile(self.0)
    }
}

#[test]
fn panicking_clone_hurts_only_the_caller_it_was_for() {
    quiet_panics();
    let group: Group<String, Fragile> = Group::new();
    let gate = Gate::new();
    let wait = gate.wait();
    let mut leader = pin!(group.work("key", async move {
        wait.await;
        Fragile(7)
    }));
    let mut unlucky = pin!(group.work("key", async { Fragile(0) }));
    let mut lucky = pin!(group.work("key", async { Fragile(0) }));
    assert!(poll_once(leader.as_mut()).is_pending());
    assert!(poll_once(unlucky.as_mut()).is_pending());
    assert!(poll_once(lucky.as_mut()).is_pending());
    gate.open();
    assert_eq!(poll_once(leader.as_mut()), Poll::Ready(Fragile(7)));
    FAIL_NEXT_CLONE.with(|f| f.set(true));
    assert!(poll_catching(unlucky.as_mut()).is_err());
    assert_eq!(poll_once(lucky.as_mut()), Poll::Ready(Fragile(7)));
    assert_eq!(group.in_flight(), 0);
}

#[test]
fn panicking_clone_in_the_runner_keeps_the_published_value() {
    quiet_panics();
    let group: Group<String, Fragile> = Group::new();
    let gate = Gate::new();
    let wait = gate.wait();
    let mut leader = pin!(group.work("key", async move {
        wait.await;
        Fragile(8)
    }));
    let mut follower = pin!(group.work("key", async { Fragile(0) }));
    assert!(poll_once(leader.as_mut()).is_pending());
    assert!(poll_once(follower.as_mut()).is_pending());
    gate.open();
    FAIL_NEXT_CLONE.with(|f| f.set(true));
    assert!(
        poll_catching(leader.as_mut()).is_err(),
        "the runner's own clone panics"
    );
    assert_eq!(poll_once(follower.as_mut()), Poll::Ready(Fragile(8)));
    assert_eq!(group.in_flight(), 0);
}

#[test]
fn panicking_into_future_hands_the_flight_over() {
    quiet_panics();
    struct Explodes;
    impl std::future::IntoFuture for Explodes {
        type Output = u32;
        type IntoFuture = std::future::Ready<u32>;
        fn into_future(self) -> Self::IntoFuture {
            panic!("into_future panicked on purpose")
        }
    }
    let group: Group<String, u32> = Group::new();
    let mut leader = pin!(group.work("key", Explodes));
    assert!(poll_catching(leader.as_mut()).is_err());
    assert_eq!(group.in_flight(), 0);
    assert_eq!(
        futures_executor::block_on(group.work("key", async { 3 })),
        3
    );
}
