//! One execution per flight: callers of a key share one run, counted exactly.

mod common;

use common::{Gate, Log, counting_waker, poll_once, poll_with, within};
use oneflight::Group;
use std::pin::pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

#[test]
fn concurrent_callers_share_one_execution() {
    let group: Group<String, u32> = Group::new();
    let log = Log::new();
    let gate = Gate::new();
    let mut callers: Vec<_> = (0..100)
        .map(|i| Box::pin(group.work("key", log.work(&format!("f{i}"), &gate, i))))
        .collect();
    for caller in &mut callers {
        assert!(poll_once(caller.as_mut()).is_pending());
    }
    assert_eq!(log.events(), ["f0 started"]);
    assert_eq!(group.in_flight(), 1);
    gate.open();
    for caller in &mut callers {
        assert_eq!(poll_once(caller.as_mut()), Poll::Ready(0));
    }
    assert_eq!(log.events(), ["f0 started", "f0 finished"]);
    assert_eq!(group.in_flight(), 0);
}

#[test]
fn followers_are_woken_when_the_flight_ends() {
    let group: Group<String, u32> = Group::new();
    let gate = Gate::new();
    let log = Log::new();
    let mut leader = pin!(group.work("key", log.work("leader", &gate, 5)));
    let mut follower = pin!(group.work("key", log.work("follower", &gate, 6)));
    let (waker, wakes) = counting_waker();
    assert!(poll_once(leader.as_mut()).is_pending());
    assert!(poll_with(follower.as_mut(), &waker).is_pending());
    gate.open();
    assert_eq!(wakes.get(), 0, "nothing to wake for yet");
    assert_eq!(poll_once(leader.as_mut()), Poll::Ready(5));
    assert_eq!(wakes.get(), 1, "the follower is woken once");
    assert_eq!(poll_once(follower.as_mut()), Poll::Ready(5));
    assert_eq!(log.count(" started"), 1);
}

#[test]
fn a_follower_polled_by_a_new_waker_is_woken_through_that_one() {
    let group: Group<String, u32> = Group::new();
    let gate = Gate::new();
    let log = Log::new();
    let mut leader = pin!(group.work("key", log.work("leader", &gate, 5)));
    let mut follower = pin!(group.work("key", log.work("follower", &gate, 6)));
    let (first, first_wakes) = counting_waker();
    let (second, second_wakes) = counting_waker();
    assert!(poll_once(leader.as_mut()).is_pending());
    assert!(poll_with(follower.as_mut(), &first).is_pending());
    // Moved to another task, say: the old waker must no longer be the one woken.
    assert!(poll_with(follower.as_mut(), &second).is_pending());
    gate.open();
    assert_eq!(poll_once(leader.as_mut()), Poll::Ready(5));
    assert_eq!((first_wakes.get(), second_wakes.get()), (0, 1));
    assert_eq!(poll_with(follower.as_mut(), &second), Poll::Ready(5));
}

#[test]
fn every_waiting_follower_is_woken_once_whichever_slot_it_got() {
    // More followers than the slots kept inline, two of which leave and free their
    // slots for two later ones.
    let group: Group<String, u32> = Group::new();
    let gate = Gate::new();
    let log = Log::new();
    let mut leader = pin!(group.work("key", log.work("leader", &gate, 5)));
    assert!(poll_once(leader.as_mut()).is_pending());
    let mut followers: Vec<_> = (0..8)
        .map(|i| {
            let follower = Box::pin(group.work("key", log.work(&format!("f{i}"), &gate, i)));
            let (waker, wakes) = counting_waker();
            (follower, waker, wakes)
        })
        .collect();
    for (follower, waker, _) in &mut followers[..6] {
        assert!(poll_with(follower.as_mut(), waker).is_pending());
    }
    drop([4, 1].map(|i| followers.remove(i)));
    for (follower, waker, _) in &mut followers[4..] {
        assert!(poll_with(follower.as_mut(), waker).is_pending());
    }
    gate.open();
    assert_eq!(poll_once(leader.as_mut()), Poll::Ready(5));
    for (follower, waker, wakes) in &mut followers {
        assert_eq!(wakes.get(), 1);
        assert_eq!(poll_with(follower.as_mut(), waker), Poll::Ready(5));
    }
    assert_eq!(log.count(" started"), 1);
}

#[test]
fn a_finished_flight_is_not_joined() {
    let group: Group<String, u32> = Group::new();
    let runs = AtomicUsize::new(0);
    let run = |value| {
        let runs = &runs;
        async move {
            runs.fetch_add(1, Ordering::SeqCst);
            value
        }
    };
    futures_executor::block_on(async {
        assert_eq!(group.work("key", run(1)).await, 1);
        assert_eq!(group.work("key", run(2)).await, 2);
    });
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    assert_eq!(group.in_flight(), 0);
}

#[test]
fn distinct_keys_never_wait_for_each_other() {
    let group: Group<String, &str> = Group::new();
    let gate = Gate::new();
    let log = Log::new();
    let mut slow = pin!(group.work("slow", log.work("slow", &gate, "slow")));
    assert!(poll_once(slow.as_mut()).is_pending());
    // Another key completes at once while "slow" is still in flight.
    let mut fast = pin!(group.work("fast", async { "fast" }));
    assert_eq!(poll_once(fast.as_mut()), Poll::Ready("fast"));
    assert_eq!(group.in_flight(), 1);
    gate.open();
    assert_eq!(poll_once(slow.as_mut()), Poll::Ready("slow"));
}

#[test]
fn keys_are_looked_up_borrowed() {
    futures_executor::block_on(async {
        let strings: Group<String, usize> = Group::new();
        assert_eq!(strings.work("user:42", async { 1 }).await, 1);
        let owned = String::from("user:42");
        assert_eq!(strings.work(owned.as_str(), async { 2 }).await, 2);
        assert_eq!(strings.work(&owned, async { 3 }).await, 3);

        let shared: Group<Arc<str>, usize> = Group::new();
        assert_eq!(shared.work("user:42", async { 4 }).await, 4);

        let paths: Group<std::path::PathBuf, usize> = Group::new();
        assert_eq!(
            paths.work(std::path::Path::new("/tmp"), async { 5 }).await,
            5
        );
    });
}

#[test]
fn joining_a_flight_allocates_no_key() {
    // A key type that counts its clones: joiners must not make one.
    static OWNED: AtomicUsize = AtomicUsize::new(0);
    #[derive(Hash, PartialEq, Eq)]
    struct Key(u32);
    #[derive(Hash, PartialEq, Eq)]
    struct Owned(Key);
    impl std::borrow::Borrow<Key> for Owned {
        fn borrow(&self) -> &Key {
            &self.0
        }
    }
    impl ToOwned for Key {
        type Owned = Owned;
        fn to_owned(&self) -> Owned {
            OWNED.fetch_add(1, Ordering::SeqCst);
            Owned(Key(self.0))
        }
    }
    let group: Group<Owned, u32> = Group::new();
    let gate = Gate::new();
    let log = Log::new();
    let mut callers: Vec<_> = (0..10)
        .map(|_| Box::pin(group.work(&Key(1), log.work("f", &gate, 1))))
        .collect();
    for caller in &mut callers {
        assert!(poll_once(caller.as_mut()).is_pending());
    }
    assert_eq!(
        OWNED.load(Ordering::SeqCst),
        1,
        "only the first caller owns a key"
    );
    gate.open();
    for caller in &mut callers {
        assert_eq!(poll_once(caller.as_mut()), Poll::Ready(1));
    }
}

#[test]
fn a_work_future_holds_the_users_future_at_most_twice() {
    // A waiting caller keeps its future unstarted, and a runner polls it pinned: two
    // places, never three. With many callers waiting on big futures (an HTTP client's
    // are kilobytes), each copy is memory per caller.
    let group: Group<String, u64> = Group::new();
    let small = group.work("key", async { 1 });
    let payload = [1_u8; 1024];
    let large = group.work("key", async move { u64::from(payload[0]) });
    let added = size_of_val(&large) - size_of_val(&small);
    assert!(
        added < 5 * payload.len() / 2,
        "a {}-byte future added {added} bytes to `work`'s future",
        payload.len()
    );
}

#[test]
fn the_returned_future_does_nothing_until_polled() {
    let group: Group<String, u32> = Group::new();
    let log = Log::new();
    let gate = Gate::new();
    let lazy = group.work("key", log.work("f", &gate, 1));
    assert_eq!(group.in_flight(), 0);
    drop(lazy);
    assert!(log.events().is_empty());
    assert_eq!(group.in_flight(), 0);
}

#[test]
fn not_send_futures_run_on_a_local_executor() {
    let group: Group<String, Rc<str>> = Group::new();
    let executor = async_executor::LocalExecutor::new();
    let runs = Rc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let runs = runs.clone();
            let group = group.clone();
            executor.spawn(async move {
                group
                    .work("local", async move {
                        runs.fetch_add(1, Ordering::SeqCst); // an Rc held across the await
                        common::yield_times(3).await;
                        Rc::<str>::from("value")
                    })
                    .await
            })
        })
        .collect();
    let values = futures_executor::block_on(executor.run(futures_util::future::join_all(tasks)));
    assert!(values.iter().all(|v| &**v == "value"));
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[test]
fn callers_on_many_threads_share_one_execution() {
    within(Duration::from_secs(60), || {
        const THREADS: usize = 8;
        let group: Group<String, usize> = Group::new();
        let runs = Arc::new(AtomicUsize::new(0));
        let gate = Gate::new();
        let barrier = Arc::new(std::sync::Barrier::new(THREADS + 1));
        let handles: Vec<_> = (0..THREADS)
            .map(|i| {
                let (group, runs, gate, barrier) =
                    (group.clone(), runs.clone(), gate.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let work = group.work("key", async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        gate.wait().await;
                        i
                    });
                    let mut work = pin!(work);
                    // Every thread joins before the gate opens.
                    let first = poll_once(work.as_mut());
                    barrier.wait();
                    match first {
                        Poll::Ready(v) => v,
                        Poll::Pending => futures_executor::block_on(work),
                    }
                })
            })
            .collect();
        barrier.wait();
        assert_eq!(group.in_flight(), 1);
        gate.open();
        let values: Vec<usize> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert!(values.iter().all(|&v| v == values[0]));
        assert_eq!(group.in_flight(), 0);
    });
}

#[test]
fn clones_share_flights_and_debug_shows_the_count() {
    let group: Group<String, u32> = Group::default();
    let other = group.clone();
    let gate = Gate::new();
    let log = Log::new();
    let mut first = pin!(group.work("key", log.work("a", &gate, 1)));
    let mut second = pin!(other.work("key", log.work("b", &gate, 2)));
    assert!(poll_once(first.as_mut()).is_pending());
    assert!(poll_once(second.as_mut()).is_pending());
    assert_eq!(format!("{other:?}"), "Group { in_flight: 1, .. }");
    gate.open();
    assert_eq!(poll_once(first.as_mut()), Poll::Ready(1));
    assert_eq!(poll_once(second.as_mut()), Poll::Ready(1));
    assert_eq!(log.count(" started"), 1);
}
