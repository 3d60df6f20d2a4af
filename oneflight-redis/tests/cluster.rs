//! The fleet on a Redis Cluster that each test starts itself on loopback (3 masters, 3
//! replicas, see `examples/shared/redis_cluster.rs`), with real replica processes (this
//! binary re-executed, see `common/replica.rs`): what the backend could change, run
//! against a real cluster. Every wait is bounded; counts are exact where the protocol
//! makes them so.

mod common;

use common::redis_cluster::RedisCluster;
use common::replica::{LIMIT, ODD_KEYS, ODD_NAMESPACES, Setup, cluster_setup};
use common::*;
use oneflight_redis::{Cache, Fleet, redis};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The cluster tests measure times against leases: run them one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Runs only in a re-executed process: see `common/replica.rs`.
#[test]
fn replica() {
    if is_replica() {
        common::replica::main();
    }
}

/// A runtime as a service has: two workers.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The hash tag of the replicas' key `key` (namespace `test`), as `names.rs` writes it.
fn tag(key: &str) -> String {
    format!("{{4:test{}:{key}}}", key.len())
}

/// The fleet's keys left on the cluster's masters, with their TTL in ms.
fn fleet_keys(cluster: &RedisCluster) -> Vec<(String, i64)> {
    let mut found = Vec::new();
    for port in cluster.masters() {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
        let mut c = client
            .get_connection_with_timeout(Duration::from_secs(2))
            .unwrap();
        let keys: Vec<String> = redis::cmd("KEYS").arg("oneflight:*").query(&mut c).unwrap();
        for key in keys {
            let ttl: i64 = redis::cmd("PTTL").arg(&key).query(&mut c).unwrap();
            found.push((key, ttl));
        }
    }
    found
}

/// No lease is left, and everything else the fleet wrote expires.
fn assert_no_lease_left(cluster: &RedisCluster) {
    for (key, ttl) in fleet_keys(cluster) {
        assert!(!key.ends_with(":lease"), "a lease was left: {key}");
        assert!(ttl > 0, "{key} has no TTL");
    }
}

fn finish_all(replicas: Vec<Replica>) -> Vec<Report> {
    replicas.into_iter().map(|mut r| r.finish(LIMIT)).collect()
}

fn start_all(setup: &Setup<RedisCluster>, count: usize) -> Vec<Replica> {
    let replicas: Vec<Replica> = (0..count).map(|_| setup.start(&[])).collect();
    setup.wait_ready(count);
    replicas
}

#[test]
fn cluster_burst_over_16_keys_on_all_three_masters_loads_each_key_once() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(setup) = cluster_setup(
        "cluster-burst",
        &[("KEYS", "16"), ("CALLERS", "50"), ("FIRST_LOAD_MS", "300")],
    ) else {
        return;
    };
    let masters: BTreeSet<u16> = (0..16)
        .map(|k| setup.server.master_of(&tag(&format!("key{k}"))).unwrap())
        .collect();
    assert_eq!(masters.len(), 3, "the 16 keys live on all three masters");
    let replicas = start_all(&setup, 4);
    setup.scratch.go();
    let reports = finish_all(replicas);
    let loads = setup.scratch.loads();
    let keys: BTreeSet<&str> = loads.iter().map(|l| l.key.as_str()).collect();
    assert_eq!(
        (loads.len(), keys.len()),
        (16, 16),
        "one load per key: {loads:?}"
    );
    for report in &reports {
        let faults = report.num("wrong")
            + report.num("panicked")
            + report.num("fallbacks")
            + report.num("takeovers")
            + report.num("redis_errors");
        assert_eq!((report.num("served"), faults), (16 * 50, 0), "{report:?}");
    }
    let values: BTreeSet<&str> = reports.iter().map(|r| r.get("values")).collect();
    assert_eq!(
        values.len(),
        1,
        "every process got the holders' values: {values:?}"
    );
    assert_eq!(
        reports.iter().map(|r| r.num("received")).sum::<u64>(),
        3 * 16
    );
    assert_no_lease_left(&setup.server);
}

#[test]
fn cluster_killed_holder_is_replaced_within_lease_and_one_poll() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (lease, poll) = (1000, 100);
    let Some(setup) = cluster_setup(
        "cluster-killed",
        &[
            ("CALLERS", "50"),
            ("LEASE_MS", "1000"),
            ("POLL_MS", "100"),
            ("FIRST_LOAD_MS", "60000"),
        ],
    ) else {
        return;
    };
    common::scenarios::killed_holder_is_replaced(&setup, lease, poll);
    assert_no_lease_left(&setup.server);
}

/// A master is `SIGKILL`ed while 16 flights are in the air; its replica takes over. The
/// command timeout is set above the failover time, as the docs advise for a cluster, so
/// that calls meeting the failover wait for it instead of loading alone. Every call
/// finishes with a right value; a key of the killed master may be loaded once more (its
/// lease may not have reached the replica); then the fleet deduplicates again without a
/// restart.
#[test]
fn cluster_master_killed_mid_flight_every_call_finishes_and_dedup_resumes() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut setup) = cluster_setup(
        "cluster-failover",
        &[
            ("KEYS", "16"),
            ("CALLERS", "20"),
            ("PHASES", "2"),
            ("LEASE_MS", "5000"),
            ("POLL_MS", "100"),
            ("TIMEOUT_MS", "8000"),
            ("FIRST_LOAD_MS", "2000"),
            ("LOAD_MS", "300"),
        ],
    ) else {
        return;
    };
    let victim_keys: BTreeSet<String> = {
        let victim = setup.server.master_of(&tag("key0")).unwrap();
        (0..16)
            .map(|k| format!("key{k}"))
            .filter(|key| setup.server.master_of(&tag(key)) == Some(victim))
            .collect()
    };
    let replicas = start_all(&setup, 4);
    setup.scratch.go();
    setup.wait_loads(16);
    std::thread::sleep(Duration::from_millis(300));
    let killed = Instant::now();
    let (old, new) = setup
        .server
        .fail_over(&tag("key0"), Duration::from_secs(20))
        .expect("the replica takes over");
    let promoted_after = killed.elapsed();
    setup.wait_phase_done(1, 4);
    let served_after = killed.elapsed();
    setup.go_phase(2);
    let reports = finish_all(replicas);
    let loads = setup.scratch.loads();
    let mut phase1: BTreeMap<&str, usize> = BTreeMap::new();
    for load in loads.iter().filter(|l| l.phase == 1) {
        *phase1.entry(&load.key).or_default() += 1;
    }
    let phase2: Vec<_> = loads.iter().filter(|l| l.phase == 2).collect();
    let extra: usize = phase1.values().map(|n| n - 1).sum();
    println!(
        "cluster failover: master {old} killed, {new} promoted after {promoted_after:?}; every \
         phase-1 caller served {served_after:?} after the kill; phase-1 loads {} for 16 keys \
         ({} on the killed master), phase-2 loads {}",
        16 + extra,
        victim_keys.len(),
        phase2.len()
    );
    let counts: Vec<String> = reports
        .iter()
        .map(|r| {
            [
                "loads",
                "takeovers",
                "fallbacks",
                "redis_errors",
                "timeouts",
                "disconnects",
            ]
            .map(|name| format!("{name}={}", r.num(name)))
            .join(" ")
        })
        .collect();
    println!("per process: {counts:#?}");
    assert_eq!(phase1.len(), 16, "{phase1:?}");
    for (key, count) in &phase1 {
        let bound = if victim_keys.contains(*key) { 2 } else { 1 };
        assert!(
            *count <= bound,
            "{key} loaded {count} times: {phase1:?}; {counts:#?}"
        );
    }
    // Deduplicating again, without a restart: one load per key in the fleet.
    let keys2: BTreeSet<&str> = phase2.iter().map(|l| l.key.as_str()).collect();
    assert_eq!((phase2.len(), keys2.len()), (16, 16), "{phase2:?}");
    for report in &reports {
        let seen = (
            report.num("served"),
            report.num("wrong"),
            report.num("panicked"),
        );
        assert_eq!(seen, (2 * 16 * 20, 0, 0), "{report:?}");
        assert_eq!(report.num("fallbacks"), 0, "{report:?}");
    }
    // The promoted replica had never run the scripts (Redis replicates their effects):
    // they reached it as `EVAL` after its `NOSCRIPT`.
    let mut c = redis::Client::open(format!("redis://127.0.0.1:{new}/"))
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(2))
        .unwrap();
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut c)
        .unwrap();
    assert!(stats.contains("cmdstat_eval:"), "{stats}");
    assert_no_lease_left(&setup.server);
}

/// Namespaces and keys with `:`, braces, spaces, newlines and empty ones: every pair is
/// one flight (one slot each, whatever braces the key holds), loaded once.
#[test]
fn cluster_odd_namespaces_and_keys_never_share_a_flight() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(setup) = cluster_setup(
        "cluster-odd",
        &[
            ("KEY_SET", "odd"),
            ("CALLERS", "10"),
            ("FIRST_LOAD_MS", "300"),
        ],
    ) else {
        return;
    };
    let replicas = start_all(&setup, 3);
    setup.scratch.go();
    let reports = finish_all(replicas);
    let pairs = ODD_NAMESPACES.len() * ODD_KEYS.len();
    let mut per_pair: BTreeMap<String, usize> = BTreeMap::new();
    for load in setup.scratch.loads() {
        *per_pair.entry(load.key).or_default() += 1;
    }
    assert_eq!(per_pair.len(), pairs, "{per_pair:?}");
    assert!(per_pair.values().all(|&n| n == 1), "{per_pair:?}");
    for report in &reports {
        let seen = (
            report.num("served"),
            report.num("wrong"),
            report.num("fallbacks"),
        );
        assert_eq!(seen, (pairs as u64 * 10, 0, 0), "{report:?}");
    }
    let values: BTreeSet<&str> = reports.iter().map(|r| r.get("values")).collect();
    assert_eq!(values.len(), 1, "{values:?}");
}

/// A 16 MiB value crosses four processes on the cluster with the default settings.
#[test]
fn cluster_16_mib_value_crosses_four_processes() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let size = (16 * 1024 * 1024 - 64).to_string();
    let Some(setup) = cluster_setup(
        "cluster-big",
        &[
            ("CALLERS", "20"),
            ("FIRST_LOAD_MS", "500"),
            ("VALUE_BYTES", &size),
        ],
    ) else {
        return;
    };
    common::scenarios::a_big_value_crosses_four_processes(&setup);
}

/// An error a cluster node answers (`WRONGTYPE` here) degrades that call only: counted,
/// reported as answered, and other keys still go through the cluster.
#[test]
fn cluster_error_answered_degrades_that_call_only() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let scratch = Scratch::new("cluster-answered");
    let Some(cluster) = cluster(&scratch.0) else {
        return;
    };
    let runtime = runtime();
    runtime.block_on(answered_on(&cluster));
}

async fn answered_on(cluster: &RedisCluster) {
    // Another program wrote a hash where the fleet keeps key "bad"'s lease.
    let mut c = cluster.client().get_connection().unwrap();
    let _: () = redis::cmd("HSET")
        .arg("oneflight:{1:t3:bad}:lease")
        .arg("f")
        .arg("v")
        .query(&mut c)
        .unwrap();
    let build = || {
        Fleet::<String>::builder(cluster.client(), "t")
            .lease(Duration::from_secs(20))
            .poll_interval(Duration::from_secs(10))
            .build()
    };
    let (fleet, other) = (build(), build());
    // With polls 10 s apart, the shared flight's speed says that hints still arrive.
    let started = Instant::now();
    common::scenarios::an_answered_error_degrades_that_call_only(&fleet, &other).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// Needs the `smol` feature: with `tokio` alone, the `redis` crate runs on Tokio only.
/// On smol, a cluster fleet renews a lease (the load lasts three), a waiting process
/// hears the end on its key's sharded channel (polls are 10 s apart), and neither loads
/// twice.
#[cfg(feature = "smol")]
#[test]
fn cluster_on_smol_renews_waits_and_hears_hints() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let scratch = Scratch::new("cluster-smol");
    let Some(cluster) = cluster(&scratch.0) else {
        return;
    };
    common::scenarios::on_smol_a_lease_is_renewed_and_a_hint_heard(cluster.client().into());
}

/// `Cache` on the cluster: a fill shared by two processes' handles, hits, a stale value
/// served while one refresh loads, and an invalidation that makes the next get load.
#[test]
fn cluster_cache_fills_hits_refreshes_and_invalidates() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let scratch = Scratch::new("cluster-cache");
    let Some(cluster) = cluster(&scratch.0) else {
        return;
    };
    let runtime = runtime();
    runtime.block_on(async {
        let build = || -> Cache<String> {
            Cache::builder(cluster.client(), "cache")
                .fresh_for(Duration::from_millis(500))
                .stale_for(Duration::from_secs(10))
                .early_refresh(false)
                .build()
        };
        let (a, b) = (build(), build());
        let (x, y) = tokio::join!(
            a.get("k", async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                "v1".to_owned()
            }),
            async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                b.get("k", async { "not loaded".to_owned() }).await
            }
        );
        assert_eq!((x.as_str(), y.as_str()), ("v1", "v1"));
        assert_eq!(b.get("k", async { "not loaded".to_owned() }).await, "v1");
        assert_eq!((b.stats().fleet.received, b.stats().hits), (1, 1));
        // Stale: served, refreshed once in the background.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(a.get("k", async { "v2".to_owned() }).await, "v1");
        let deadline = Instant::now() + Duration::from_secs(10);
        while a.stats().refreshes == 0 {
            assert!(Instant::now() < deadline, "{:?}", a.stats());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(b.get("k", async { "not loaded".to_owned() }).await, "v2");
        b.invalidate("k").await.unwrap();
        assert_eq!(a.get("k", async { "v3".to_owned() }).await, "v3");
    });
}
