//! What a `Fleet` costs on top of the Redis round trips it needs, against a real
//! `redis-server` on loopback that the bench starts itself.
//!
//! Built by the `bench/` workspace member (so that criterion stays out of the fleet
//! crate's dev-dependencies): `cargo bench -p oneflight-bench --bench fleet`.
//!
//! Each measurement has two floors, timed in the same run:
//!
//! - **uncontended call**: one process, one caller, a new flight each time.
//!   - the issue's floor: the same two round trips with plain commands, bare, with
//!     redis-rs on one connection (`SET NX PX`, then a script that stores the value,
//!     deletes the lease and publishes);
//!   - the protocol floor: the fleet's own two scripts (acquire, publish), bare. What
//!     they do beyond the plain commands (the fencing number, the compare-and-set) is the
//!     protocol's price; the rest is this crate's.
//! - **waiting process**: from the holder's load returning its value to the waiter
//!   process's caller having it.
//!   - the issue's floor: a bare pub/sub round trip, `PUBLISH` sent to message heard, in
//!     one task;
//!   - the worker floor: the same, heard by a task on a runtime worker (as every waiting
//!     caller of a Tokio program is) instead of the thread in `block_on`;
//!   - the protocol floor: the fleet's publish script instead of `PUBLISH`, heard in one
//!     task;
//!   - the relay floor: the fleet's publish script sent by one task, heard by a
//!     subscriber task that wakes a waiting task: the hops a waiting process needs,
//!     without this crate's code.
//! - **commands per flight**, from `INFO commandstats`: for the holder, for a waiting
//!   process, and for a waiting process with 1,000 callers.
//!
//! After criterion, the summary times fleet and floors again in interleaved rounds
//! (fleet, floor, protocol floor, fleet, ...) and prints one table with the ratios.
//! `cargo bench -p oneflight-bench --bench fleet -- summary` runs only the summary.

#[path = "../examples/shared/redis_server.rs"]
mod redis_server;

use criterion::Criterion;
use futures_util::StreamExt;
use oneflight_redis::{Fleet, bench_support, redis};
use redis_server::RedisServer;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

const ROUNDS: usize = 40;
const PER_ROUND: u32 = 200;
/// The value's payload as the fleet sends it for a `u64`: envelope, token, value.
const PAYLOAD: [u8; 18] = [1; 18];

/// The bare work of an uncontended flight: take the lease, then publish and release.
const BARE_PUBLISH: &str = r"
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[4], ARGV[1])
return 1
";

struct Setup {
    runtime: tokio::runtime::Runtime,
    client: redis::Client,
    _server: RedisServer,
    _dir: tempdir::Dir,
}

mod tempdir {
    /// A scratch folder removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn setup() -> Setup {
    let dir = std::env::temp_dir().join(format!("oneflight-fleet-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let server = RedisServer::start(&dir).unwrap_or_else(|e| panic!("{e}"));
    let client = redis::Client::open(server.url()).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    Setup {
        runtime,
        client,
        _server: server,
        _dir: tempdir::Dir(dir),
    }
}

/// A fleet of the namespace `namespace`. The uncontended call has a namespace of its own:
/// the waiter fleet's subscriber would otherwise hear each of its announcements, in this
/// one process on a 2-core machine, where in a real fleet other machines hear them (the
/// floors, too, publish on channels nobody listens to).
fn fleet(client: &redis::Client, namespace: &str) -> Fleet<u64> {
    Fleet::builder(client.clone(), namespace)
        .lease(Duration::from_secs(1))
        .poll_interval(Duration::from_secs(5))
        .build()
}

/// A unique key per call, so that every call is a new flight.
fn next_key() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("k{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The issue's floor of an uncontended flight: its two round trips with plain commands.
async fn bare_flight(connection: &mut redis::aio::MultiplexedConnection, script: &redis::Script) {
    let key = next_key();
    let (lease, value) = (
        format!("bare:{{{key}}}:lease"),
        format!("bare:{{{key}}}:value"),
    );
    let _: Option<String> = redis::cmd("SET")
        .arg(&lease)
        .arg("token")
        .arg("NX")
        .arg("PX")
        .arg(1000)
        .query_async(connection)
        .await
        .unwrap();
    let _: i64 = script
        .key(&lease)
        .key(&value)
        .arg("token")
        .arg(&PAYLOAD[..])
        .arg(1000)
        .arg("bare:done")
        .invoke_async(connection)
        .await
        .unwrap();
}

/// The fleet's two scripts, with the arguments the fleet gives them.
struct Protocol {
    acquire: redis::Script,
    publish: redis::Script,
}

impl Protocol {
    fn new() -> Self {
        Protocol {
            acquire: redis::Script::new(bench_support::ACQUIRE),
            publish: redis::Script::new(bench_support::PUBLISH),
        }
    }

    /// The protocol floor of an uncontended flight: acquire, then publish, bare.
    async fn flight(&self, connection: &mut redis::aio::MultiplexedConnection) {
        let key = next_key();
        let names = |part: &str| format!("proto:{{{key}}}:{part}");
        let (kind, token): (String, String) = self
            .acquire
            .key(names("lease"))
            .key(names("fence"))
            .key(names("value:"))
            .arg(1000)
            .arg("0123456789abcdef")
            .arg("")
            .arg(86_400_000)
            .arg("0") // unfenced, as `work`
            .invoke_async(connection)
            .await
            .unwrap();
        assert_eq!(kind, "hold");
        self.publish(connection, &names("lease"), &token, "proto:done")
            .await;
    }

    /// The publish script of the flight `token` on `lease`, announcing a small value.
    async fn publish(
        &self,
        connection: &mut redis::aio::MultiplexedConnection,
        lease: &str,
        token: &str,
        channel: &str,
    ) {
        let published: i64 = self
            .publish
            .key(lease)
            .key(format!("{lease}:value:{token}"))
            .arg(token)
            .arg(&PAYLOAD[..])
            .arg(1000)
            .arg(channel)
            .arg("1")
            .invoke_async(connection)
            .await
            .unwrap();
        assert_eq!(published, 1);
    }
}

/// A flight of a new key held by `holder`, whose load returns 7 once `gate` is opened
/// and notes when it returned in `returned`.
struct Gated {
    key: String,
    gate: Arc<Notify>,
    returned: Arc<OnceLock<Instant>>,
    held: tokio::task::JoinHandle<u64>,
}

fn gated_flight(holder: &Fleet<u64>) -> Gated {
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
async fn fleet_wait(holder: &Fleet<u64>, waiter: &Fleet<u64>) -> Duration {
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

/// A bare `PUBLISH` of a token on `channel`.
async fn bare_publish(publisher: &mut redis::aio::MultiplexedConnection, channel: &str) {
    let _: i64 = redis::cmd("PUBLISH")
        .arg(channel)
        .arg("token")
        .query_async(publisher)
        .await
        .unwrap();
}

/// The issue's floor of a waiting process: a bare pub/sub round trip in one task.
async fn bare_wait(
    publisher: &mut redis::aio::MultiplexedConnection,
    messages: &mut (impl futures_util::Stream<Item = redis::Msg> + Unpin),
) -> Duration {
    let sent = Instant::now();
    bare_publish(publisher, "bare:wait").await;
    messages.next().await.unwrap();
    sent.elapsed()
}

/// The worker floor of a waiting process: a bare `PUBLISH`, heard by a task on a runtime
/// worker, as every waiting caller of a Tokio program is; `messages` is lent to it.
async fn worker_wait(
    publisher: &mut redis::aio::MultiplexedConnection,
    messages: &mut Option<redis::aio::PubSubStream>,
) -> Duration {
    let mut stream = messages.take().unwrap();
    let waiting = tokio::spawn(async move {
        stream.next().await.unwrap();
        (stream, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(1)).await; // the waiting task waits
    let sent = Instant::now();
    bare_publish(publisher, "worker:wait").await;
    let (stream, heard) = waiting.await.unwrap();
    *messages = Some(stream);
    heard - sent
}

/// The protocol floor of a waiting process: the fleet's publish script, heard in one
/// task.
async fn scripted_wait(
    publisher: &mut redis::aio::MultiplexedConnection,
    protocol: &Protocol,
    messages: &mut (impl futures_util::Stream<Item = redis::Msg> + Unpin),
) -> Duration {
    let lease = take_lease(publisher).await;
    let sent = Instant::now();
    protocol
        .publish(publisher, &lease, "token", "scripted:wait")
        .await;
    messages.next().await.unwrap();
    sent.elapsed()
}

/// The relay floor of a waiting process: the fleet's publish script, heard by the
/// subscriber task of [`relay`], which wakes a task waiting on it.
async fn relayed_wait(
    publisher: &mut redis::aio::MultiplexedConnection,
    protocol: &Protocol,
    heard: &Arc<Notify>,
) -> Duration {
    let lease = take_lease(publisher).await;
    let waiting = tokio::spawn({
        let heard = heard.clone();
        async move {
            heard.notified().await;
            Instant::now()
        }
    });
    tokio::time::sleep(Duration::from_millis(1)).await; // the waiting task waits
    let sent = Instant::now();
    protocol
        .publish(publisher, &lease, "token", "relay:done")
        .await;
    waiting.await.unwrap() - sent
}

/// A new lease key, held by the token `token`, for the publish script to find.
async fn take_lease(connection: &mut redis::aio::MultiplexedConnection) -> String {
    let lease = format!("wait:{{{}}}:lease", next_key());
    let _: () = redis::cmd("SET")
        .arg(&lease)
        .arg("token")
        .query_async(connection)
        .await
        .unwrap();
    lease
}

/// The subscriber task of the relay floor: wakes the waiting task for each message.
async fn relay(client: &redis::Client) -> Arc<Notify> {
    let mut subscriber = client.get_async_pubsub().await.unwrap();
    subscriber.subscribe("relay:done").await.unwrap();
    let mut messages = subscriber.into_on_message();
    let heard = Arc::new(Notify::new());
    tokio::spawn({
        let heard = heard.clone();
        async move {
            while messages.next().await.is_some() {
                heard.notify_one();
            }
        }
    });
    heard
}

fn benches(c: &mut Criterion, setup: &Setup) {
    let rt = &setup.runtime;
    let alone = fleet(&setup.client, "alone");
    let (holder, waiter) = (fleet(&setup.client, "bench"), fleet(&setup.client, "bench"));
    let script = redis::Script::new(BARE_PUBLISH);
    let protocol = Protocol::new();
    let connection = rt
        .block_on(setup.client.get_multiplexed_async_connection())
        .unwrap();
    rt.block_on(alone.work("warm", async { 0 }));

    let mut group = c.benchmark_group("fleet_uncontended");
    group.bench_function("fleet", |b| {
        b.to_async(rt).iter(|| async {
            let key = next_key();
            alone.work(&key, async { 1 }).await
        })
    });
    // Each in the same form as the fleet: one `block_on` per batch of iterations.
    group.bench_function("floor: SET NX PX + publish script, bare", |b| {
        b.to_async(rt).iter(|| {
            let mut connection = connection.clone();
            let script = &script;
            async move { bare_flight(&mut connection, script).await }
        })
    });
    group.bench_function("protocol floor: the fleet's two scripts, bare", |b| {
        b.to_async(rt).iter(|| {
            let mut connection = connection.clone();
            let protocol = &protocol;
            async move { protocol.flight(&mut connection).await }
        })
    });
    group.finish();

    let mut group = c.benchmark_group("fleet_waiting_process");
    group.sample_size(20);
    group.bench_function("fleet", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += fleet_wait(&holder, &waiter).await;
                }
                total
            })
        })
    });
    group.finish();
}

/// One timer's result in [`interleaved`] rounds.
#[derive(Clone, Copy)]
struct Timed {
    /// The median round, in ns per call.
    ns: f64,
    /// The median over rounds of the first timer's time over this one's in the same
    /// round: neighbouring rounds share the machine's state, so this ratio drifts less
    /// than the ratio of two medians.
    first_over_this: f64,
}

/// Interleaved rounds: each of `timers` in turn, round after round, each timing
/// `per_round` calls.
fn interleaved<const N: usize>(
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
async fn counts(connection: &mut redis::aio::MultiplexedConnection) -> (u64, u64) {
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
async fn stopwatch(call: impl std::future::Future) -> Duration {
    let start = Instant::now();
    call.await;
    start.elapsed()
}

fn summary(setup: &Setup) {
    let rt = &setup.runtime;
    let alone = fleet(&setup.client, "alone");
    let (holder, waiter) = (fleet(&setup.client, "bench"), fleet(&setup.client, "bench"));
    let script = redis::Script::new(BARE_PUBLISH);
    let protocol = Protocol::new();
    let connect = || {
        rt.block_on(setup.client.get_multiplexed_async_connection())
            .unwrap()
    };
    let (mut bare, mut proto, mut reader) = (connect(), connect(), connect());
    let (mut scripted, mut worker) = (connect(), connect());
    let subscribed = |channel: &str| {
        rt.block_on(async {
            let mut subscriber = setup.client.get_async_pubsub().await.unwrap();
            subscriber.subscribe(channel).await.unwrap();
            subscriber.into_on_message()
        })
    };
    let mut messages = subscribed("bare:wait");
    let mut worker_messages = Some(subscribed("worker:wait"));
    let mut scripted_messages = subscribed("scripted:wait");
    let heard = rt.block_on(relay(&setup.client));
    rt.block_on(alone.work("warm", async { 0 }));
    rt.block_on(fleet_wait(&holder, &waiter));

    let [fleet_call, floor_call, protocol_call] = interleaved(
        PER_ROUND,
        [
            &mut || {
                timed!(
                    rt,
                    PER_ROUND,
                    stopwatch(alone.work(&next_key(), async { 1 }))
                )
            },
            &mut || timed!(rt, PER_ROUND, stopwatch(bare_flight(&mut bare, &script))),
            &mut || timed!(rt, PER_ROUND, stopwatch(protocol.flight(&mut proto))),
        ],
    );
    let waits = PER_ROUND / 10; // each fleet wait sleeps 10 ms to set up: fewer per round
    let [
        fleet_wait_ns,
        floor_wait_ns,
        worker_wait_ns,
        scripted_wait_ns,
        relay_wait_ns,
    ] = interleaved(
        waits,
        [
            &mut || timed!(rt, waits, fleet_wait(&holder, &waiter)),
            &mut || timed!(rt, waits, bare_wait(&mut bare, &mut messages)),
            &mut || timed!(rt, waits, worker_wait(&mut worker, &mut worker_messages)),
            &mut || {
                timed!(
                    rt,
                    waits,
                    scripted_wait(&mut scripted, &protocol, &mut scripted_messages)
                )
            },
            &mut || timed!(rt, waits, relayed_wait(&mut proto, &protocol, &heard)),
        ],
    );

    // Commands per flight: the holder alone; then a waiting process with 1 caller and
    // with 1,000 callers.
    let (holder_calls, holder_all) = rt.block_on(async {
        let before = counts(&mut reader).await;
        holder.work(&next_key(), async { 1 }).await;
        let after = counts(&mut reader).await;
        (after.0 - before.0, after.1 - before.1)
    });
    let mut waiting = |callers: usize| {
        rt.block_on(async {
            let flight = gated_flight(&holder);
            tokio::time::sleep(Duration::from_millis(20)).await;
            let before = counts(&mut reader).await;
            let burst = tokio::spawn({
                let (waiter, key) = (waiter.clone(), flight.key.clone());
                async move {
                    futures_util::future::join_all(
                        (0..callers).map(|_| waiter.work(&key, async { 0 })),
                    )
                    .await
                }
            });
            tokio::time::sleep(Duration::from_millis(20)).await;
            flight.gate.notify_one();
            flight.held.await.unwrap();
            assert!(burst.await.unwrap().iter().all(|v| *v == 7));
            let after = counts(&mut reader).await;
            // The holder's publish is one of the script calls counted here.
            (after.0 - before.0 - 1, after.1 - before.1 - 1)
        })
    };
    let (one_caller, _) = waiting(1);
    let (thousand, thousand_all) = waiting(1000);

    let us = |ns: f64| format!("{:.1} µs", ns / 1e3);
    let row = |what: &str, floor: Timed, target: &str| {
        println!(
            "| {what} | {} | **{:.2}x** | {target} |",
            us(floor.ns),
            floor.first_over_this
        );
    };
    println!("\n## oneflight-redis: one run, 2-worker Tokio runtime, redis-server on loopback\n");
    println!("| measurement | time | fleet / this | target |");
    println!("|---|---|---|---|");
    println!(
        "| **uncontended call**, fleet (`work`, a new flight each) | {} | | |",
        us(fleet_call.ns)
    );
    row(
        "floor: `SET NX PX` + a publish script, bare",
        floor_call,
        "<= 1.2x",
    );
    row(
        "protocol floor: the fleet's acquire and publish scripts, bare",
        protocol_call,
        "",
    );
    println!(
        "| **waiting process**, fleet: holder's load returns → waiter's caller has the value | {} | | |",
        us(fleet_wait_ns.ns)
    );
    row(
        "floor: bare `PUBLISH` heard, in one task",
        floor_wait_ns,
        "<= 1.5x",
    );
    row(
        "worker floor: bare `PUBLISH` heard by a task on a runtime worker",
        worker_wait_ns,
        "",
    );
    row(
        "protocol floor: the fleet's publish script heard, in one task",
        scripted_wait_ns,
        "",
    );
    row(
        "relay floor: the same, relayed by a subscriber task to a waiting task",
        relay_wait_ns,
        "",
    );
    println!(
        "| Redis commands per flight, holder | {holder_calls} scripts ({holder_all} commands in all) | | <= 3 |"
    );
    println!(
        "| Redis commands per flight, waiting process, 1 caller | {one_caller} script | | <= 3 |"
    );
    println!(
        "| Redis commands per flight, waiting process, 1,000 callers | {thousand} script ({thousand_all} commands in all) | | same as 1 caller |"
    );
}

fn main() {
    let setup = setup();
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    benches(&mut criterion, &setup);
    criterion.final_summary();
    summary(&setup);
}
