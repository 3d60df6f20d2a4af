//! Re-entrance is caught: a flight's future that calls the group for its own key panics
//! at once, instead of waiting for itself forever; nested calls on other keys or other
//! groups still work.

mod common;

use common::*;
use oneflight::Group;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

fn message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

fn assert_refused<T>(result: std::thread::Result<T>) {
    let Err(payload) = result else {
        panic!("the re-entrant call did not panic")
    };
    let text = message(payload);
    assert!(text.starts_with("oneflight: re-entrant call"), "{text}");
}

#[test]
fn work_inside_its_own_flight_panics_instead_of_hanging() {
    within(Duration::from_secs(10), || {
        let group: Group<String, u32> = Group::new();
        let inner = group.clone();
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
            futures_executor::block_on(
                group.work("k", async { inner.work("k", async { 1 }).await + 1 }),
            )
        }));
        assert_refused(result);
        assert_eq!(
            group.in_flight(),
            0,
            "the flight ended as a panicking flight"
        );
        assert_eq!(group.stats().panics, 1);
        // The key works again.
        assert_eq!(futures_executor::block_on(group.work("k", async { 3 })), 3);
    });
}

#[test]
fn try_work_inside_its_own_flight_panics() {
    within(Duration::from_secs(10), || {
        let group: Group<String, Result<u32, Arc<String>>> = Group::new();
        let inner = group.clone();
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
            futures_executor::block_on(group.try_work("k", async {
                inner
                    .try_work("k", async { Ok::<u32, String>(1) })
                    .await
                    .map_err(|e| (*e).clone())
            }))
        }));
        assert_refused(result);
    });
}

#[test]
fn do_chan_with_inside_its_own_flight_panics() {
    within(Duration::from_secs(10), || {
        let group: Group<String, u32> = Group::new();
        let executor = Arc::new(async_executor::Executor::new());
        let (inner, spawner) = (group.clone(), executor.clone());
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
            futures_executor::block_on(group.work("k", async {
                let rx =
                    inner.do_chan_with("k", async { 1 }, move |task| spawner.spawn(task).detach());
                rx.recv().await.map(|o| o.value).unwrap_or(0)
            }))
        }));
        assert_refused(result);
    });
}

#[cfg(feature = "smol")]
#[test]
fn do_chan_inside_its_own_flight_panics_and_closes_the_channel() {
    within(Duration::from_secs(10), || {
        let group: Group<String, u32> = Group::new();
        let inner = group.clone();
        // The outer flight runs on a spawned task; the re-entrant do_chan panics inside it.
        let rx = group.do_chan("k", async move {
            inner
                .do_chan("k", async { 1 })
                .recv()
                .await
                .map(|o| o.value)
                .unwrap_or(0)
        });
        assert!(
            smol::block_on(rx.recv()).is_err(),
            "the flight panicked: its channel closed"
        );
        assert_eq!(group.stats().panics, 1);
        assert_eq!(group.in_flight(), 0);
    });
}

#[test]
fn the_panic_points_at_the_do_chan_with_call() {
    within(Duration::from_secs(10), || {
        let group: Group<String, u32> = Group::new();
        let inner = group.clone();
        let location = Arc::new(std::sync::Mutex::new(None));
        let seen = location.clone();
        let previous = std::panic::take_hook();
        // Other tests panic at the same time: keep only this thread's panic.
        let here = std::thread::current().id();
        std::panic::set_hook(Box::new(move |info| {
            if let Some(l) = info
                .location()
                .filter(|_| std::thread::current().id() == here)
            {
                seen.lock()
                    .unwrap()
                    .get_or_insert((l.file().to_owned(), l.line()));
            }
        }));
        let line = line!() + 3;
        let _ = std::panic::catch_unwind(AssertUnwindSafe(|| {
            futures_executor::block_on(group.work("k", async {
                let _rx = inner.do_chan_with("k", async { 1 }, |_task| {});
                1
            }))
        }));
        std::panic::set_hook(previous);
        let (file, at) = location.lock().unwrap().clone().expect("a panic");
        assert!(
            file.ends_with("reentrance.rs") && at == line,
            "{file}:{at}, expected line {line}"
        );
    });
}

#[test]
fn nested_calls_on_another_key_or_group_still_work() {
    within(Duration::from_secs(10), || {
        let group: Group<String, u32> = Group::new();
        let other: Group<String, u32> = Group::new();
        let (inner, other_inner) = (group.clone(), other.clone());
        let value = futures_executor::block_on(group.work("a", async {
            let b = inner.work("b", async { 2 }).await;
            let a_elsewhere = other_inner.work("a", async { 3 }).await;
            b + a_elsewhere
        }));
        assert_eq!(value, 5);
        // Deeper: a → b → a is re-entrant too.
        let (g1, g2) = (group.clone(), group.clone());
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
            futures_executor::block_on(group.work("a", async {
                g1.work("b", async { g2.work("a", async { 1 }).await })
                    .await
            }))
        }));
        assert_refused(result);
    });
}

#[test]
fn two_callers_of_one_key_in_one_task_are_not_re_entrance() {
    let group: Group<String, u32> = Group::new();
    let gate = Gate::new();
    let (a, b) = futures_executor::block_on(async {
        futures_util::join!(
            group.work("k", async {
                gate.wait().await;
                1
            }),
            async {
                let joined = group.work("k", async { 2 });
                gate.open();
                joined.await
            }
        )
    });
    assert_eq!((a, b), (1, 1));
}
