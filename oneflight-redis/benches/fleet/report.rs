//! The criterion benches and the summary table.

use criterion::Criterion;
use std::time::Duration;

use crate::floors::*;
use crate::measure::*;
use crate::{BARE_PUBLISH, PER_ROUND, Setup, fleet, next_key};
use oneflight_redis::redis;

pub(crate) fn benches(c: &mut Criterion, setup: &Setup) {
    let rt = &setup.runtime;
    let alone = fleet(setup.client.clone(), "alone");
    let (holder, waiter) = (
        fleet(setup.client.clone(), "bench"),
        fleet(setup.client.clone(), "bench"),
    );
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

pub(crate) fn summary(setup: &Setup) {
    let rt = &setup.runtime;
    let alone = fleet(setup.client.clone(), "alone");
    let (holder, waiter) = (
        fleet(setup.client.clone(), "bench"),
        fleet(setup.client.clone(), "bench"),
    );
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
        "| Redis commands per flight, waiting process (a key it did not wait on in the last second: + SUBSCRIBE), 1 caller | {one_caller} scripts | | <= 3 |"
    );
    println!(
        "| Redis commands per flight, waiting process, 1,000 callers | {thousand} scripts ({thousand_all} commands in all) | | same as 1 caller |"
    );
    crate::cache::cache_rows(setup);
    cluster_rows(setup);
}

/// The uncontended call on a local cluster, against the protocol floor sent bare to the
/// node that owns the floor's slot.
fn cluster_rows(setup: &Setup) {
    let rt = &setup.runtime;
    let dir = std::env::temp_dir().join(format!(
        "oneflight-fleet-bench-cluster-{}",
        std::process::id()
    ));
    let cluster = match crate::redis_cluster::RedisCluster::start(&dir) {
        Ok(cluster) => cluster,
        Err(e) => {
            println!("| uncontended call on a cluster | not measured: {e} | | |");
            return;
        }
    };
    let alone = fleet(cluster.client(), "alone");
    let owner = cluster
        .master_of("{floor}")
        .expect("a master for the floor's slot");
    let node = redis::Client::open(format!("redis://127.0.0.1:{owner}/")).unwrap();
    let mut connection = rt
        .block_on(node.get_multiplexed_async_connection())
        .unwrap();
    let protocol = Protocol::new();
    rt.block_on(alone.work("warm", async { 0 }));
    rt.block_on(protocol.flight_in_slot(&mut connection, "floor"));
    let [fleet_call, floor_call] = interleaved(
        PER_ROUND,
        [
            &mut || {
                timed!(
                    rt,
                    PER_ROUND,
                    stopwatch(alone.work(&next_key(), async { 1 }))
                )
            },
            &mut || {
                timed!(
                    rt,
                    PER_ROUND,
                    stopwatch(protocol.flight_in_slot(&mut connection, "floor"))
                )
            },
        ],
    );
    println!(
        "| **uncontended call on a cluster** (3 masters, 3 replicas), fleet with a `ClusterClient` | {:.1} µs | | |",
        fleet_call.ns / 1e3
    );
    println!(
        "| protocol floor on the cluster: the two scripts sent bare to the owning node | {:.1} µs | **{:.2}x** | |",
        floor_call.ns / 1e3,
        floor_call.first_over_this
    );
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}
