//! What an operator sees with the `tracing` feature: a burst of callers on one key whose
//! runner gives up (a waiting caller takes the flight over), then a flight whose load
//! panics, printed by `tracing-subscriber`'s fmt layer.
//!
//! ```sh
//! cargo run --example observe --features tracing
//! ```

use futures_util::FutureExt;
use oneflight::Group;
use std::panic::AssertUnwindSafe;
use std::time::Duration;
use tracing_subscriber::fmt::format::FmtSpan;

fn main() {
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_span_events(FmtSpan::CLOSE)
        .with_target(false)
        .without_time()
        .init();
    // One line per panic, rather than the default hook's report and backtrace.
    std::panic::set_hook(Box::new(|info| println!("(panic: {info})")));
    let group: Group<String, String> = Group::named("profiles");
    smol::block_on(async {
        // The runner gives up after 50 ms (a client timeout); the load takes 100 ms. The
        // two callers waiting on it go on: one takes the flight over with its own load.
        let load = |who: &'static str| async move {
            smol::Timer::after(Duration::from_millis(100)).await;
            format!("profile loaded by {who}")
        };
        let runner = async {
            let timeout = async {
                smol::Timer::after(Duration::from_millis(50)).await;
                None
            };
            let call = async { Some(group.work("user:7", load("the first caller")).await) };
            smol::future::or(call, timeout).await
        };
        let joiner = |who| {
            let group = &group;
            async move {
                smol::Timer::after(Duration::from_millis(10)).await;
                Some(group.work("user:7", load(who)).await)
            }
        };
        let (first, second, third) = futures_util::join!(
            runner,
            joiner("the second caller"),
            joiner("the third caller")
        );
        println!("first: {first:?}\nsecond: {second:?}\nthird: {third:?}");

        // A load that panics: its runner sees the panic, the caller waiting on it gets
        // `Panicked`.
        let panicking = async {
            smol::Timer::after(Duration::from_millis(20)).await;
            panic!("the database connection was reset")
        };
        let runner = AssertUnwindSafe(group.work("user:8", panicking)).catch_unwind();
        let waiter = async {
            smol::Timer::after(Duration::from_millis(5)).await;
            let call = group.work("user:8", async { String::new() });
            AssertUnwindSafe(call).catch_unwind().await
        };
        let (runner, waiter) = futures_util::join!(runner, waiter);
        println!(
            "runner of user:8 panicked: {}, its waiter panicked: {}",
            runner.is_err(),
            waiter.is_err()
        );
    });
    println!("stats: {:?}", group.stats());
}
