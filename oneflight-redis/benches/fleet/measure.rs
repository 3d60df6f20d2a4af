//! Timing: the fleet's own waiting-process measurement, interleaved rounds, command
//! counts, and the `timed!` loop.

use oneflight_redis::{Fleet, redis};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

use crate::{ROUNDS, next_key};

/// A flight of a new key held by `holder`, whose load returns 7 once `gate` is opened
/// and notes when it returned in `returned`.
pub(crate) struct Gated {
    pub(crate) key: String,
    pub(crate) gate: Arc<Notify>,
    pub(crate) returned: Arc<OnceLock<Instant>>,
    pub(crate) held: tokio::task::JoinHandle<u64>,
}

pub(crate) fn gated_flight(holder: &Fleet<u64>) -> Gated {
    let key = next_key();
    let gate = Arc::new(Notify::new());
    let returned = Arc::new(OnceLock::new());
    let held = tokio::spawn({
        let (holder, key, gate, returned) =
            (holder.clone(), key.clone(), gate.clone(), returned.clone());
        async move {
            let load = async move {
                gate.notified().await;
                returned.set(Instant::now()).unwrap();
                7
            };
            holder.work(&key, load).await
        }
    });
    Gated {
        key,
        gate,
        returned,
        held,
    }
}

/// One waiting-process measurement: a holder (its load gated) and a waiter in another
/// `Fleet`; returns the time from the holder's load returning to the waiter's value.
pub(crate) async fn fleet_wait(holder: &Fleet<u64>, waiter: &Fleet<u64>) -> Duration {
    let flight = gated_flight(holder);
    tokio::time::sleep(Duration::from_millis(5)).await; // the holder took the lease
    let waiting = tokio::spawn({
        let (waiter, key) = (waiter.clone(), flight.key.clone());
        async move {
            let value = waiter.work(&key, async { 0 }).await;
            (value, Instant::now())
        }
    });
    tokio::time::sleep(Duration::from_millis(5)).await; // the waiter waits on its flight
    flight.gate.notify_one();
    let (value, received) = waiting.await.unwrap();
    assert_eq!((value, flight.held.await.unwrap()), (7, 7));
    received - *flight.returned.get().unwrap()
}

/// One timer's result in [`interleaved`] rounds.
#[derive(Clone, Copy)]
pub(crate) struct Timed {
    /// The median round, in ns per call.
    pub(crate) ns: f64,
    /// The median over rounds of the first timer's time over this one's in the same
    /// round: neighbouring rounds share the machine's state, so this ratio drifts less
    /// than the ratio of two medians.
    pub(crate) first_over_this: f64,
}

/// Interleaved rounds: each of `timers` in turn, round after round, each timing
/// `per_round` calls.
pub(crate) fn interleaved<const N: usize>(
    per_round: u32,
    mut timers: [&mut dyn FnMut() -> Duration; N],
) -> [Timed; N] {
    let mut samples: [Vec<f64>; N] = std::array::from_fn(|_| Vec::new());
    for _ in 0..ROUNDS {
        for (timer, samples) in timers.iter_mut().zip(&mut samples) {
            samples.push(timer().as_nanos() as f64 / f64::from(per_round));
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let first = samples[0].clone();
    samples.map(|v| Timed {
        first_over_this: median(first.iter().zip(&v).map(|(a, b)| a / b).collect()),
        ns: median(v),
    })
}

/// Script calls (`EVALSHA`) and all commands processed, from `INFO`.
pub(crate) async fn counts(connection: &mut redis::aio::MultiplexedConnection) -> (u64, u64) {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(connection)
        .await
        .unwrap();
    let calls = |name: &str| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{name}:calls=")))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |n| n.parse().unwrap())
    };
    let all: u64 = info
        .lines()
        .filter_map(|l| {
            l.split_once(":calls=")
                .and_then(|(_, rest)| rest.split(',').next()?.parse::<u64>().ok())
        })
        .sum();
    (calls("evalsha"), all - calls("info"))
}

/// Times `calls` calls of the future `one` (an expression evaluated afresh for each
/// call, which returns its own time), one after another, inside the runtime `rt`.
macro_rules! timed {
    ($rt:expr, $calls:expr, $one:expr) => {
        $rt.block_on(async {
            let mut total = Duration::ZERO;
            for _ in 0..$calls {
                total += $one.await;
            }
            total
        })
    };
}

/// Times one call, for [`timed`].
pub(crate) async fn stopwatch(call: impl std::future::Future) -> Duration {
    let start = Instant::now();
    call.await;
    start.elapsed()
}
