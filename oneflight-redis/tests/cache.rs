//! `Cache` against a real `redis-server` that each test starts on loopback: fill, hits,
//! stale-while-revalidate, stale-if-error, TTLs, namespaces and types, Redis away. The
//! tests with several processes are in `cache_processes.rs`.

mod common;

use common::*;
use oneflight_redis::Cache;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A load that counts itself and returns `value` after `millis`.
fn counted(
    loads: &Arc<AtomicU32>,
    millis: u64,
    value: &str,
) -> impl Future<Output = String> + Send + 'static {
    let (loads, value) = (loads.clone(), value.to_owned());
    async move {
        loads.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(millis)).await;
        value
    }
}

#[tokio::test]
async fn cache_fills_once_then_hits_and_every_key_it_writes_has_a_ttl() {
    let Some(server) = server() else { return };
    let cache: Cache<String> = Cache::builder(server.client(), "fill")
        .fresh_for(Duration::from_secs(30))
        .build();
    let loads = Arc::new(AtomicU32::new(0));
    let first =
        futures_util::future::join_all((0..20).map(|_| cache.get("k", counted(&loads, 100, "v1"))));
    assert!(first.await.iter().all(|v| v == "v1"));
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    for _ in 0..5 {
        assert_eq!(cache.get("k", counted(&loads, 100, "v2")).await, "v1");
    }
    // Concurrent gets of a key in one process share one lookup (one round trip).
    let lookups = server.calls("strlen");
    let hits =
        futures_util::future::join_all((0..50).map(|_| cache.get("k", counted(&loads, 100, "v3"))));
    assert!(hits.await.iter().all(|v| v == "v1"));
    assert_eq!(server.calls("strlen") - lookups, 1);
    assert_eq!(loads.load(Ordering::SeqCst), 1, "hits do not load");
    let stats = cache.stats();
    assert_eq!(
        (stats.misses, stats.hits, stats.fleet.loads),
        (20, 55, 1),
        "{stats:?}"
    );
    // Every key the cache wrote has a TTL: the value's is fresh_for + stale_for.
    let keys = server.fleet_keys();
    assert!(keys.iter().any(|(k, _)| k.ends_with(":cached")), "{keys:?}");
    for (key, ttl) in &keys {
        assert!(*ttl > 0, "{key} has no TTL");
        if key.ends_with(":cached") {
            assert!(*ttl <= 30_000 && *ttl > 25_000, "{key}: {ttl} ms");
        }
    }
}

/// Needs the `tokio` feature: its refresh, spawned on the crate's runtime, sleeps on
/// Tokio's timer.
#[cfg(feature = "tokio")]
#[tokio::test]
async fn cache_serves_a_stale_value_at_once_while_one_refresh_loads() {
    let Some(server) = server() else { return };
    let cache: Cache<String> = Cache::builder(server.client(), "stale")
        .fresh_for(Duration::from_millis(300))
        .stale_for(Duration::from_secs(5))
        .early_refresh(false)
        .build();
    let loads = Arc::new(AtomicU32::new(0));
    assert_eq!(cache.get("k", counted(&loads, 10, "v1")).await, "v1");
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Stale: served at once (the refresh takes 500 ms), by every caller, one refresh.
    let started = Instant::now();
    let stale =
        futures_util::future::join_all((0..10).map(|_| cache.get("k", counted(&loads, 500, "v2"))));
    assert!(stale.await.iter().all(|v| v == "v1"));
    assert!(
        started.elapsed() < Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    // The refresh stores v2.
    let deadline = Instant::now() + Duration::from_secs(10);
    while cache.stats().refreshes == 0 {
        assert!(Instant::now() < deadline, "no refresh: {:?}", cache.stats());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(cache.get("k", counted(&loads, 10, "v3")).await, "v2");
    assert_eq!(loads.load(Ordering::SeqCst), 2);
    let stats = cache.stats();
    assert_eq!(
        (stats.stale_hits, stats.refreshes, stats.failed_refreshes),
        (10, 1, 0),
        "{stats:?}"
    );
}

#[derive(Debug)]
struct Down;

#[tokio::test]
async fn cache_keeps_serving_a_stale_value_when_its_refresh_fails_until_stale_for_ends() {
    let Some(server) = server() else { return };
    let (fresh, stale) = (Duration::from_millis(300), Duration::from_millis(1500));
    let cache: Cache<String> = Cache::builder(server.client(), "if-error")
        .fresh_for(fresh)
        .stale_for(stale)
        .early_refresh(false)
        .build();
    let failing = || async { Err::<String, Down>(Down) };
    let filled = cache
        .try_get("k", async { Ok::<_, Down>("v1".to_owned()) })
        .await;
    assert_eq!(filled.unwrap(), "v1");
    let filled_at = Instant::now();
    tokio::time::sleep(fresh + Duration::from_millis(100)).await;
    // Stale, and every refresh fails: the stale value is still served.
    let mut served_stale = 0;
    while filled_at.elapsed() < fresh + stale - Duration::from_millis(300) {
        assert_eq!(cache.try_get("k", failing()).await.unwrap(), "v1");
        served_stale += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Tried again once per poll interval (250 ms), not by each of the stale calls.
    let failed = cache.stats().failed_refreshes;
    assert!((1..=8).contains(&failed), "{:?}", cache.stats());
    // Once `stale_for` ended, the key is a miss: the load's error comes back.
    tokio::time::sleep(
        (fresh + stale + Duration::from_millis(200)).saturating_sub(filled_at.elapsed()),
    )
    .await;
    let outcome = cache.try_get("k", failing()).await;
    assert!(outcome.is_err(), "{outcome:?}");
    println!("served stale {served_stale} times; {:?}", cache.stats());
}

#[tokio::test]
async fn cache_namespaces_and_types_never_mix() {
    let Some(server) = server() else { return };
    let a: Cache<String> = Cache::new(server.client(), "a");
    let b: Cache<String> = Cache::new(server.client(), "b");
    let numbers: Cache<u64> = Cache::new(server.client(), "a");
    assert_eq!(a.get("k", async { "in a".to_owned() }).await, "in a");
    assert_eq!(b.get("k", async { "in b".to_owned() }).await, "in b");
    // Namespace "a" holds a String for "k": a u64 cache of "a" misses it, loads its own.
    assert_eq!(numbers.get("k", async { 7 }).await, 7);
    assert!(
        numbers.stats().fleet.undecodable >= 1,
        "{:?}",
        numbers.stats()
    );
    // And the String cache, finding a u64 now, loads its own too.
    assert_eq!(a.get("k", async { "again".to_owned() }).await, "again");
    assert_eq!(b.get("k", async { "never".to_owned() }).await, "in b");
}

#[tokio::test]
async fn cache_invalidate_makes_the_next_get_load_anew() {
    let Some(server) = server() else { return };
    let cache: Cache<String> = Cache::new(server.client(), "inv");
    assert_eq!(cache.get("k", async { "old".to_owned() }).await, "old");
    assert_eq!(cache.get("k", async { "unused".to_owned() }).await, "old");
    cache.invalidate("k").await.unwrap();
    assert_eq!(cache.get("k", async { "new".to_owned() }).await, "new");
    assert_eq!(cache.get("k", async { "unused".to_owned() }).await, "new");
    assert_eq!(cache.stats().misses, 2);
}

#[tokio::test]
async fn cache_degrades_to_in_process_flights_while_redis_is_stalled_then_recovers() {
    let Some(server) = server() else { return };
    let cache: Cache<String> = Cache::builder(server.client(), "away")
        .command_timeout(Duration::from_millis(200))
        .retry_redis_after(Duration::from_millis(300))
        .build();
    assert_eq!(cache.get("warm", async { "w".to_owned() }).await, "w");
    signal(server.pid(), "STOP");
    let loads = Arc::new(AtomicU32::new(0));
    let started = Instant::now();
    let burst = futures_util::future::join_all(
        (0..20).map(|_| cache.get("k", counted(&loads, 100, "alone"))),
    );
    let values = burst.await;
    signal(server.pid(), "CONT");
    assert!(values.iter().all(|v| v == "alone"));
    // One in-process flight for the 20 callers, within a command timeout or two.
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(cache.stats().fleet.fallbacks >= 1, "{:?}", cache.stats());
    // Redis back: the cache fills and hits again.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut filled = false;
    for _ in 0..20 {
        let _ = cache.get("k2", async { "cached".to_owned() }).await;
        if cache.stats().hits > 0 {
            filled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(filled, "{:?}", cache.stats());
}

#[tokio::test]
async fn cache_stores_and_serves_a_value_over_the_inline_size() {
    let Some(server) = server() else { return };
    let cache: Cache<String> = Cache::new(server.client(), "big");
    let big = "#".repeat(1024 * 1024);
    let loaded = big.clone();
    assert_eq!(cache.get("k", async move { loaded }).await.len(), big.len());
    // A hit: fetched on the connection for large transfers.
    assert_eq!(cache.get("k", async { String::new() }).await, big);
    assert_eq!((cache.stats().hits, cache.stats().fleet.loads), (1, 1));
}

/// Needs the `smol` feature: on smol, a cache fills, serves a stale value and refreshes
/// it in a task spawned on smol.
#[cfg(feature = "smol")]
#[test]
fn cache_on_smol_fills_and_refreshes_in_the_background() {
    let Some(server) = server() else { return };
    smol::block_on(async {
        let cache: Cache<String> = Cache::builder(server.client(), "smol-cache")
            .fresh_for(Duration::from_millis(200))
            .stale_for(Duration::from_secs(10))
            .early_refresh(false)
            .build();
        assert_eq!(cache.get("k", async { "v1".to_owned() }).await, "v1");
        smol::Timer::after(Duration::from_millis(300)).await;
        assert_eq!(cache.get("k", async { "v2".to_owned() }).await, "v1");
        let deadline = Instant::now() + Duration::from_secs(10);
        while cache.stats().refreshes == 0 {
            assert!(Instant::now() < deadline, "{:?}", cache.stats());
            smol::Timer::after(Duration::from_millis(10)).await;
        }
        smol::Timer::after(Duration::from_millis(50)).await;
        assert_eq!(cache.get("k", async { "v3".to_owned() }).await, "v2");
    });
}

/// A `Cache` can be shared between threads, and its futures spawned on a multi-threaded
/// runtime.
#[test]
fn cache_handles_are_send_and_sync_and_their_futures_are_send() {
    fn send_sync<T: Send + Sync + Clone + std::fmt::Debug>(_: &T) {}
    fn send<T: Send>(_: &T) {}
    let client = oneflight_redis::redis::Client::open("redis://127.0.0.1:1/").unwrap();
    let cache: Cache<String> = Cache::new(client, "types");
    send_sync(&cache);
    send(&cache.get("k", async { String::new() }));
    send(&cache.try_get("k", async { Ok::<_, std::io::Error>(String::new()) }));
    send(&cache.invalidate("k"));
}
