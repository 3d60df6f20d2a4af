//! What a `Fleet` costs on top of the Redis round trips it needs, against a real
//! `redis-server` on loopback that the bench starts itself.
//!
//! Built by the `bench/` workspace member (so that criterion stays out of the fleet
//! crate's dev-dependencies): `cargo bench -p oneflight-bench --bench fleet`.
//!
//! - **uncontended call**: one process, one caller, a new flight each time, against the
//!   floor of the same two round trips done bare with redis-rs on one connection
//!   (`SET NX PX`, then a script that stores the value, deletes the lease and publishes).
//! - **waiting process**: the time from the holder's release to the waiter's value,
//!   against the floor of a bare pub/sub round trip followed by one `GET`.
//! - **commands per flight**, from `INFO commandstats`: for the holder, for a waiting
//!   process, and for a waiting process with 1,000 callers.
//!
//! After criterion, the summary times both pairs again in interleaved rounds (fleet,
//! floor, fleet, floor, ...) and prints one table with the ratios.

#[path = "../examples/shared/redis_server.rs"]
mod redis_server;

use criterion::Criterion;
use futures_util::StreamExt;
use oneflight_redis::{Fleet, redis};
use redis_server::RedisServer;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

const ROUNDS: usize = 30;
const PER_ROUND: u32 = 200;

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

fn fleet(client: &redis::Client) -> Fleet<u64> {
    Fleet::builder(client.clone(), "bench")
        .lease(Duration::from_secs(1))
        .poll_interval(Duration::from_secs(5))
        .build()
}

/// A unique key per call, so that every call is a new flight.
fn next_key() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("k{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The two round trips of an uncontended flight, done bare.
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
        .arg(vec![1u8; 8])
        .arg(1000)
        .arg("bare:done")
        .invoke_async(connection)
        .await
        .unwrap();
}

/// A flight of a new key held by `holder`, whose load returns 7 once `gate` is opened.
fn gated_flight(holder: &Fleet<u64>) -> (String, Arc<Notify>, tokio::task::JoinHandle<u64>) {
    let key = next_key();
    let gate = Arc::new(Notify::new());
    let held = tokio::spawn({
        let (holder, key, gate) = (holder.clone(), key.clone(), gate.clone());
        async move {
            let load = async move {
                gate.notified().await;
                7
            };
            holder.work(&key, load).await
        }
    });
    (key, gate, held)
}

/// One waiting-process measurement: a holder (its load gated) and a waiter in another
/// `Fleet`; returns the time from opening the gate to the waiter's value.
async fn fleet_wait(holder: &Fleet<u64>, waiter: &Fleet<u64>) -> Duration {
    let (key, gate, held) = gated_flight(holder);
    tokio::time::sleep(Duration::from_millis(5)).await; // the holder took the lease
    let waiting = tokio::spawn({
        let (waiter, key) = (waiter.clone(), key.clone());
        async move {
            let value = waiter.work(&key, async { 0 }).await;
            (value, Instant::now())
        }
    });
    tokio::time::sleep(Duration::from_millis(5)).await; // the waiter waits on its flight
    let opened = Instant::now();
    gate.notify_one();
    let (value, received) = waiting.await.unwrap();
    assert_eq!((value, held.await.unwrap()), (7, 7));
    received - opened
}

/// The floor of a waiting process: a publish heard by a subscriber, then one `GET`.
async fn bare_wait(
    publisher: &mut redis::aio::MultiplexedConnection,
    messages: &mut (impl futures_util::Stream<Item = redis::Msg> + Unpin),
    reader: &mut redis::aio::MultiplexedConnection,
) -> Duration {
    let opened = Instant::now();
    let _: i64 = redis::cmd("PUBLISH")
        .arg("bare:wait")
        .arg("token")
        .query_async(publisher)
        .await
        .unwrap();
    messages.next().await.unwrap();
    let _: Option<Vec<u8>> = redis::cmd("GET")
        .arg("bare:absent")
        .query_async(reader)
        .await
        .unwrap();
    opened.elapsed()
}

fn benches(c: &mut Criterion, setup: &Setup) {
    let rt = &setup.runtime;
    let (holder, waiter) = (fleet(&setup.client), fleet(&setup.client));
    let script = redis::Script::new(BARE_PUBLISH);
    let mut connection = rt
        .block_on(setup.client.get_multiplexed_async_connection())
        .unwrap();
    rt.block_on(holder.work("warm", async { 0 }));

    let mut group = c.benchmark_group("fleet_uncontended");
    group.bench_function("fleet", |b| {
        b.to_async(rt).iter(|| async {
            let key = next_key();
            holder.work(&key, async { 1 }).await
        })
    });
    group.bench_function("floor: SET NX PX + publish script, bare", |b| {
        b.iter(|| rt.block_on(bare_flight(&mut connection, &script)))
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

/// Medians of interleaved rounds, in ns per call: `a` and `b` alternate, each timing
/// `per_round` calls.
fn interleaved<A, B>(per_round: u32, mut a: A, mut b: B) -> (f64, f64)
where
    A: FnMut() -> Duration,
    B: FnMut() -> Duration,
{
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        xs.push(a().as_nanos() as f64 / f64::from(per_round));
        ys.push(b().as_nanos() as f64 / f64::from(per_round));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    (median(&mut xs), median(&mut ys))
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

fn summary(setup: &Setup) {
    let rt = &setup.runtime;
    let (holder, waiter) = (fleet(&setup.client), fleet(&setup.client));
    let script = redis::Script::new(BARE_PUBLISH);
    let mut connection = rt
        .block_on(setup.client.get_multiplexed_async_connection())
        .unwrap();
    let mut reader = rt
        .block_on(setup.client.get_multiplexed_async_connection())
        .unwrap();
    let mut subscriber = rt.block_on(setup.client.get_async_pubsub()).unwrap();
    rt.block_on(subscriber.subscribe("bare:wait")).unwrap();
    let mut messages = subscriber.into_on_message();
    rt.block_on(holder.work("warm", async { 0 }));
    rt.block_on(async {
        tokio::join!(
            holder.work("warm2", async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                0
            }),
            async {
                tokio::time::sleep(Duration::from_millis(10)).await;
                waiter.work("warm2", async { 0 }).await
            }
        )
    });

    let (fleet_call, floor_call) = interleaved(
        PER_ROUND,
        || {
            rt.block_on(async {
                let t = Instant::now();
                for _ in 0..PER_ROUND {
                    holder.work(&next_key(), async { 1 }).await;
                }
                t.elapsed()
            })
        },
        || {
            rt.block_on(async {
                let t = Instant::now();
                for _ in 0..PER_ROUND {
                    bare_flight(&mut connection, &script).await;
                }
                t.elapsed()
            })
        },
    );
    let waits = PER_ROUND / 20; // each fleet wait sleeps 10 ms to set up: fewer per round
    let (fleet_wait_ns, floor_wait_ns) = interleaved(
        waits,
        || {
            rt.block_on(async {
                let mut t = Duration::ZERO;
                for _ in 0..waits {
                    t += fleet_wait(&holder, &waiter).await;
                }
                t
            })
        },
        || {
            rt.block_on(async {
                let mut t = Duration::ZERO;
                for _ in 0..waits {
                    t += bare_wait(&mut connection, &mut messages, &mut reader).await;
                }
                t
            })
        },
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
            let (key, gate, held) = gated_flight(&holder);
            tokio::time::sleep(Duration::from_millis(20)).await;
            let before = counts(&mut reader).await;
            let burst = tokio::spawn({
                let (waiter, key) = (waiter.clone(), key.clone());
                async move {
                    futures_util::future::join_all(
                        (0..callers).map(|_| waiter.work(&key, async { 0 })),
                    )
                    .await
                }
            });
            tokio::time::sleep(Duration::from_millis(20)).await;
            gate.notify_one();
            held.await.unwrap();
            assert!(burst.await.unwrap().iter().all(|v| *v == 7));
            let after = counts(&mut reader).await;
            // The holder's publish is one of the script calls counted here.
            (after.0 - before.0 - 1, after.1 - before.1 - 1)
        })
    };
    let (one_caller, _) = waiting(1);
    let (thousand, thousand_all) = waiting(1000);

    println!("\n## oneflight-redis: one run, 2-worker Tokio runtime, redis-server on loopback\n");
    println!("| measurement | fleet | floor | fleet / floor | target |");
    println!("|---|---|---|---|---|");
    println!(
        "| uncontended call (a new flight each) | {:.1} µs | {:.1} µs (SET NX PX + publish script, bare) | **{:.2}x** | <= 1.2x |",
        fleet_call / 1e3,
        floor_call / 1e3,
        fleet_call / floor_call
    );
    println!(
        "| waiting process: release to value | {:.1} µs | {:.1} µs (PUBLISH heard + one GET, bare) | **{:.2}x** | <= 1.5x |",
        fleet_wait_ns / 1e3,
        floor_wait_ns / 1e3,
        fleet_wait_ns / floor_wait_ns
    );
    println!(
        "| Redis commands per flight, holder | {holder_calls} scripts ({holder_all} commands) | | | <= 3 |"
    );
    println!(
        "| Redis commands per flight, waiting process, 1 caller | {one_caller} scripts | | | <= 3 |"
    );
    println!(
        "| Redis commands per flight, waiting process, 1,000 callers | {thousand} scripts ({thousand_all} commands) | | | same as 1 caller |"
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
