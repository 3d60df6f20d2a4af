//! `do_chan` and `do_chan_with`: Go's `DoChan`, with a receiver per caller, flights that
//! run to completion on their executor, hand-over to waiting channel callers, and
//! shared panics as closed channels.

mod common;

use common::{Gate, Log, poll_once, quiet_panics, within};
use oneflight::{Group, Outcome, Panicked};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

/// An executor driven by hand: tasks run only when the test ticks it.
struct Manual {
    executor: Arc<async_executor::Executor<'static>>,
    spawned: Arc<AtomicUsize>,
}

impl Manual {
    fn new() -> Self {
        Manual {
            executor: Arc::new(async_executor::Executor::new()),
            spawned: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// A spawner for `do_chan_with` that counts its tasks.
    fn spawner(
        &self,
    ) -> impl FnOnce(futures_util::future::BoxFuture<'static, ()>) + Send + 'static {
        let (executor, spawned) = (self.executor.clone(), self.spawned.clone());
        move |task| {
            spawned.fetch_add(1, Ordering::SeqCst);
            executor.spawn(task).detach();
        }
    }

    /// Runs tasks until none is ready.
    fn run_until_idle(&self) {
        while self.executor.try_tick() {}
    }

    fn spawned(&self) -> usize {
        self.spawned.load(Ordering::SeqCst)
    }
}

#[test]
fn second_caller_joins_and_both_see_shared() {
    let group: Group<String, &str> = Group::new();
    let executor = Manual::new();
    let log = Log::new();
    let gate = Gate::new();
    let first = group.do_chan_with("key", log.work("a", &gate, "a"), executor.spawner());
    let second = group.do_chan_with("key", log.work("b", &gate, "b"), executor.spawner());
    assert_eq!(executor.spawned(), 1, "the joiner's future is not spawned");
    executor.run_until_idle();
    gate.open();
    executor.run_until_idle();
    let expected = Outcome {
        value: "a",
        shared: true,
    };
    assert_eq!(first.try_recv(), Ok(expected.clone()));
    assert_eq!(second.try_recv(), Ok(expected));
    assert_eq!(log.events(), ["a started", "a finished"]);
    assert_eq!(group.in_flight(), 0);
}

#[test]
fn work_and_do_chan_callers_share_one_flight() {
    let group: Group<String, u32> = Group::new();
    let executor = Manual::new();
    let log = Log::new();
    let gate = Gate::new();
    // A `work` caller first, a `do_chan` caller joins.
    let mut worker = pin!(group.work("one", log.work("w1", &gate, 1)));
    assert!(poll_once(worker.as_mut()).is_pending());
    let rx = group.do_chan_with("one", log.work("c1", &gate, 2), executor.spawner());
    // A `do_chan` caller first, a `work` caller joins.
    let rx2 = group.do_chan_with("two", log.work("c2", &gate, 3), executor.spawner());
    let mut worker2 = pin!(group.work("two", log.work("w2", &gate, 4)));
    assert!(poll_once(worker2.as_mut()).is_pending());
    executor.run_until_idle();
    gate.open();
    assert_eq!(poll_once(worker.as_mut()), Poll::Ready(1));
    executor.run_until_idle();
    assert_eq!(poll_once(worker2.as_mut()), Poll::Ready(3));
    assert_eq!(
        rx.try_recv(),
        Ok(Outcome {
            value: 1,
            shared: true
        })
    );
    assert_eq!(
        rx2.try_recv(),
        Ok(Outcome {
            value: 3,
            shared: true
        })
    );
    assert_eq!(log.count(" started"), 2);
    assert_eq!(group.in_flight(), 0);
}

#[test]
fn dropped_receivers_do_not_cancel_the_flight() {
    let group: Group<String, u32> = Group::new();
    let executor = Manual::new();
    let log = Log::new();
    let gate = Gate::new();
    drop(group.do_chan_with("key", log.work("a", &gate, 1), executor.spawner()));
    drop(group.do_chan_with("key", log.work("b", &gate, 2), executor.spawner()));
    executor.run_until_idle();
    assert_eq!(group.in_flight(), 1);
    gate.open();
    executor.run_until_idle();
    assert_eq!(
        log.events(),
        ["a started", "a finished"],
        "ran to completion"
    );
    assert_eq!(group.in_flight(), 0);
}

#[test]
fn dropping_every_group_handle_lets_flights_finish_and_deliver() {
    let group: Group<String, u32> = Group::new();
    let executor = Manual::new();
    let log = Log::new();
    let gate = Gate::new();
    let rx = group.do_chan_with("key", log.work("a", &gate, 1), executor.spawner());
    let rx2 = group
        .clone()
        .do_chan_with("key", log.work("b", &gate, 2), executor.spawner());
    executor.run_until_idle();
    drop(group);
    gate.open();
    executor.run_until_idle();
    assert_eq!(
        rx.try_recv(),
        Ok(Outcome {
            value: 1,
            shared: true
        })
    );
    assert_eq!(
        rx2.try_recv(),
        Ok(Outcome {
            value: 1,
            shared: true
        })
    );
    assert_eq!(log.events(), ["a started", "a finished"]);
}

#[test]
fn cancelled_work_runner_hands_over_to_a_channel_caller() {
    let group: Group<String, &str> = Group::new();
    let executor = Manual::new();
    let log = Log::new();
    let gate = Gate::new();
    let mut runner = Box::pin(group.work("key", log.work("w", &gate, "w")));
    assert!(poll_once(runner.as_mut()).is_pending());
    let rx1 = group.do_chan_with("key", log.work("c1", &gate, "c1"), executor.spawner());
    let rx2 = group.do_chan_with("key", log.work("c2", &gate, "c2"), executor.spawner());
    assert_eq!(executor.spawned(), 0);
    drop(runner);
    assert_eq!(
        executor.spawned(),
        1,
        "one waiting caller's future is spawned"
    );
    executor.run_until_idle();
    gate.open();
    executor.run_until_idle();
    let events = log.events();
    assert_eq!(events.len(), 4, "{events:?}");
    assert_eq!(&events[..2], ["w started", "w dropped"]);
    let winner = if events[2] == "c1 started" {
        "c1"
    } else {
        "c2"
    };
    assert_eq!(events[3], format!("{winner} finished"));
    for rx in [rx1, rx2] {
        assert_eq!(
            rx.try_recv(),
            Ok(Outcome {
                value: winner,
                shared: true
            })
        );
    }
    assert_eq!(group.in_flight(), 0);
}

#[test]
fn a_dropped_receivers_future_is_never_spawned() {
    let group: Group<String, u32> = Group::new();
    let executor = Manual::new();
    let log = Log::new();
    let gate = Gate::new();
    let mut runner = Box::pin(group.work("key", log.work("w", &gate, 1)));
    assert!(poll_once(runner.as_mut()).is_pending());
    drop(group.do_chan_with("key", log.work("gone", &gate, 2), executor.spawner()));
    let kept = group.do_chan_with("key", log.work("kept", &gate, 3), executor.spawner());
    drop(group.do_chan_with("key", log.work("gone too", &gate, 4), executor.spawner()));
    drop(runner);
    executor.run_until_idle();
    gate.open();
    executor.run_until_idle();
    assert_eq!(executor.spawned(), 1);
    assert_eq!(
        log.events(),
        ["w started", "w dropped", "kept started", "kept finished"]
    );
    assert_eq!(
        kept.try_recv(),
        Ok(Outcome {
            value: 3,
            shared: true
        })
    );

    // With no live receiver left, a vacant flight simply ends.
    let gate = Gate::new();
    let mut runner = Box::pin(group.work("key", log.work("w2", &gate, 5)));
    assert!(poll_once(runner.as_mut()).is_pending());
    drop(group.do_chan_with("key", log.work("gone", &gate, 6), executor.spawner()));
    drop(runner);
    assert_eq!(
        executor.spawned(),
        1,
        "nothing spawned for a receiver that is gone"
    );
    assert_eq!(group.in_flight(), 0);
}

#[test]
fn task_dropped_by_its_executor_hands_over() {
    let group: Group<String, &str> = Group::new();
    let log = Log::new();
    let gate = Gate::new();
    // A spawner that keeps the task without running it, like an executor shutting down.
    let parked = Arc::new(Mutex::new(Vec::new()));
    let keep = parked.clone();
    let rx = group.do_chan_with("key", log.work("task", &gate, "task"), move |task| {
        keep.lock().unwrap().push(task);
    });
    let mut waiter = pin!(group.work("key", log.work("w", &gate, "w")));
    assert!(poll_once(waiter.as_mut()).is_pending());
    parked.lock().unwrap().clear(); // the executor drops the task unpolled
    gate.open();
    assert_eq!(poll_once(waiter.as_mut()), Poll::Ready("w"));
    assert_eq!(log.events(), ["w started", "w finished"]);
    assert_eq!(
        rx.try_recv(),
        Ok(Outcome {
            value: "w",
            shared: true
        })
    );
    assert_eq!(group.in_flight(), 0);

    // Nobody else waiting: the flight ends and the receiver's channel closes.
    let rx = group.do_chan_with("key", log.work("lost", &gate, "lost"), drop);
    assert!(rx.try_recv().unwrap_err().is_closed());
    assert_eq!(group.in_flight(), 0);
}

#[test]
fn flight_panic_closes_channels_and_waiting_work_callers_panic() {
    quiet_panics();
    let group: Group<String, u32> = Group::new();
    let executor = Manual::new();
    let gate = Gate::new();
    let wait = gate.wait();
    let rx = group.do_chan_with(
        "key",
        async move {
            wait.await;
            panic!("flight failed on purpose")
        },
        executor.spawner(),
    );
    let rx2 = group.do_chan_with("key", async { 1 }, executor.spawner());
    let mut worker = pin!(group.work("key", async { 2 }));
    assert!(poll_once(worker.as_mut()).is_pending());
    executor.run_until_idle();
    gate.open();
    executor.run_until_idle(); // the task catches the panic
    for rx in [rx, rx2] {
        assert!(
            futures_executor::block_on(rx.recv()).is_err(),
            "channel closed"
        );
    }
    let payload = catch_unwind(AssertUnwindSafe(|| poll_once(worker.as_mut()))).unwrap_err();
    assert_eq!(
        payload.downcast_ref::<Panicked>().unwrap().message(),
        "flight failed on purpose"
    );
    assert_eq!(group.in_flight(), 0);
    let again = group.do_chan_with("key", async { 3 }, executor.spawner());
    executor.run_until_idle();
    assert_eq!(
        again.try_recv(),
        Ok(Outcome {
            value: 3,
            shared: false
        })
    );
}

#[test]
fn panicking_clone_closes_only_that_receivers_channel() {
    static CLONES: AtomicUsize = AtomicUsize::new(0);
    #[derive(Debug, PartialEq)]
    struct Fragile(u32);
    impl Clone for Fragile {
        fn clone(&self) -> Self {
            if CLONES.fetch_add(1, Ordering::SeqCst) == 1 {
                panic!("clone panicked on purpose");
            }
            Fragile(self.0)
        }
    }
    quiet_panics();
    let group: Group<String, Fragile> = Group::new();
    let executor = Manual::new();
    let receivers: Vec<_> = (0..3)
        .map(|i| group.do_chan_with("key", async move { Fragile(i) }, executor.spawner()))
        .collect();
    executor.run_until_idle();
    let got: Vec<_> = receivers.iter().map(|rx| rx.try_recv().ok()).collect();
    let value = Some(Outcome {
        value: Fragile(0),
        shared: true,
    });
    assert_eq!(got, [value.clone(), None, value]);
    assert!(receivers[1].is_closed());
}

#[test]
fn panicking_spawner_in_a_takeover_passes_the_flight_on() {
    quiet_panics();
    let group: Group<String, u32> = Group::new();
    let executor = Manual::new();
    let log = Log::new();
    let gate = Gate::new();
    let mut runner = Box::pin(group.work("key", log.work("w", &gate, 1)));
    assert!(poll_once(runner.as_mut()).is_pending());
    let good = group.do_chan_with("key", log.work("good", &gate, 2), executor.spawner());
    let bad = group.do_chan_with("key", log.work("bad", &gate, 3), |_task| {
        panic!("spawner panicked on purpose")
    });
    drop(runner); // hands over to the newest standby first: the bad spawner
    executor.run_until_idle();
    gate.open();
    executor.run_until_idle();
    assert_eq!(
        good.try_recv(),
        Ok(Outcome {
            value: 2,
            shared: true
        })
    );
    assert_eq!(
        bad.try_recv(),
        Ok(Outcome {
            value: 2,
            shared: true
        })
    );
    assert_eq!(group.in_flight(), 0);
}

#[test]
fn do_chan_with_runs_only_on_the_executor_given() {
    within(Duration::from_secs(30), || {
        let group: Group<String, String> = Group::new();
        let executor = Arc::new(async_executor::Executor::new());
        let (stop_tx, stop_rx) = async_channel::bounded::<()>(1);
        let runner = {
            let executor = executor.clone();
            std::thread::Builder::new()
                .name("only-here".into())
                .spawn(move || futures_executor::block_on(executor.run(stop_rx.recv())))
                .unwrap()
        };
        let spawner = executor.clone();
        let rx = group.do_chan_with(
            "key",
            async { std::thread::current().name().unwrap_or("").to_string() },
            move |task| spawner.spawn(task).detach(),
        );
        let outcome = rx.recv_blocking().unwrap(); // sync code can wait too
        assert_eq!(outcome.value, "only-here");
        drop(stop_tx);
        let _ = runner.join().unwrap();
    });
}

#[cfg(feature = "smol")]
#[test]
fn single_caller_gets_an_unshared_outcome_on_smol() {
    let group: Group<String, String> = Group::new();
    let rx = group.do_chan("key", async {
        std::thread::current().name().unwrap_or("").to_string()
    });
    let outcome = smol::block_on(rx.recv()).unwrap();
    assert!(
        outcome.value.starts_with("smol-"),
        "ran on {:?}",
        outcome.value
    );
    assert!(!outcome.shared);
}

#[cfg(feature = "smol")]
#[test]
fn select_timeout_drops_the_receiver_and_the_flight_still_completes() {
    use futures_util::{FutureExt, select};
    within(Duration::from_secs(30), || {
        let group: Group<String, u32> = Group::new();
        let log = Log::new();
        let gate = Gate::new();
        let rx = group.do_chan("key", log.work("slow", &gate, 1));
        let timed_out = smol::block_on(async {
            select! {
                _ = rx.recv().fuse() => false,
                _ = FutureExt::fuse(smol::Timer::after(Duration::from_millis(10))) => true,
            }
        });
        assert!(timed_out);
        drop(rx);
        gate.open();
        while group.in_flight() > 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        // The entry is removed when the value is published; the log entry follows.
        while log.count(" finished") == 0 {
            std::thread::yield_now();
        }
        assert_eq!(log.events(), ["slow started", "slow finished"]);
    });
}

#[cfg(feature = "tokio")]
#[test]
fn inside_a_tokio_runtime_the_flight_runs_on_tokio() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    let group: Group<String, u32> = Group::new();
    let outcome = runtime.block_on(async {
        let rx = group.do_chan("key", async {
            // Needs a Tokio runtime with a timer: panics anywhere else.
            tokio::time::sleep(Duration::from_millis(1)).await;
            5
        });
        rx.recv().await
    });
    assert_eq!(
        outcome,
        Ok(Outcome {
            value: 5,
            shared: false
        })
    );
}

#[cfg(all(feature = "tokio", not(feature = "smol"), not(feature = "async-std")))]
#[test]
fn only_tokio_outside_a_runtime_panics_naming_do_chan_with() {
    quiet_panics();
    let group: Group<String, u32> = Group::new();
    let payload = catch_unwind(AssertUnwindSafe(|| group.do_chan("key", async { 1 }))).unwrap_err();
    let message = payload.downcast_ref::<&str>().copied().unwrap_or_default();
    assert!(message.contains("do_chan_with"), "{message}");
    assert_eq!(group.in_flight(), 0, "no entry left behind");
}

#[cfg(all(feature = "async-std", not(feature = "smol")))]
#[test]
fn without_smol_the_flight_runs_on_async_std() {
    let group: Group<String, bool> = Group::new();
    let rx = group.do_chan("key", async { async_std::task::try_current().is_some() });
    let outcome = async_std::task::block_on(rx.recv()).unwrap();
    assert!(outcome.value, "ran outside async-std's executor");
}
