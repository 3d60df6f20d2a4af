//! The cache's rows: a fresh hit against a bare `GET` of the same key, a stale hit, and
//! Redis commands per hit, per miss and per refresh.

use oneflight_redis::{Cache, redis};
use std::time::Duration;

use crate::measure::*;
use crate::{PER_ROUND, Setup, next_key};

pub(crate) fn cache_rows(setup: &Setup) {
    let rt = &setup.runtime;
    let fresh: Cache<u64> = Cache::builder(setup.client.clone(), "bench-cache")
        .fresh_for(Duration::from_secs(3600))
        .early_refresh(false)
        .build();
    // Stale after 1 ms, for an hour; its refresh takes a minute, so that every call of
    // the measurement finds the value stale (and one refresh in the air).
    let stale: Cache<u64> = Cache::builder(setup.client.clone(), "bench-stale")
        .fresh_for(Duration::from_millis(1))
        .stale_for(Duration::from_secs(3600))
        .early_refresh(false)
        .build();
    let connect = || {
        rt.block_on(setup.client.get_multiplexed_async_connection())
            .unwrap()
    };
    let (mut bare, mut reader) = (connect(), connect());
    rt.block_on(async {
        fresh.get("hot", async { 7 }).await;
        stale.get("hot", async { 7 }).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    });
    // The fresh value's Redis key, as the cache names it (see `names.rs`).
    let key = "oneflight:{11:bench-cache3:hot}:cached";
    let exists: bool = rt
        .block_on(redis::cmd("EXISTS").arg(key).query_async(&mut bare))
        .unwrap();
    assert!(exists, "the bench reads the cache's own key");
    let slow = || async {
        tokio::time::sleep(Duration::from_secs(60)).await;
        8
    };
    let mut piped = connect();
    let [hit, get, pipeline, stale_hit] = interleaved(
        PER_ROUND,
        [
            &mut || timed!(rt, PER_ROUND, stopwatch(fresh.get("hot", async { 0 }))),
            &mut || {
                timed!(
                    rt,
                    PER_ROUND,
                    stopwatch(redis::cmd("GET").arg(key).query_async::<Vec<u8>>(&mut bare))
                )
            },
            &mut || {
                timed!(
                    rt,
                    PER_ROUND,
                    stopwatch(
                        redis::pipe()
                            .cmd("STRLEN")
                            .arg(key)
                            .cmd("PTTL")
                            .arg(key)
                            .cmd("GETRANGE")
                            .arg(key)
                            .arg(0)
                            .arg(64 * 1024 - 1)
                            .query_async::<(usize, i64, Vec<u8>)>(&mut piped)
                    )
                )
            },
            &mut || timed!(rt, PER_ROUND, stopwatch(stale.get("hot", slow()))),
        ],
    );
    // Commands per hit, miss and refresh (all commands, those inside scripts included).
    let (hit_commands, miss_commands, refresh_commands) = rt.block_on(async {
        let before = counts(&mut reader).await;
        fresh.get("hot", async { 0 }).await;
        let after_hit = counts(&mut reader).await;
        fresh.get(&next_key(), async { 1 }).await;
        let after_miss = counts(&mut reader).await;
        let refreshing: Cache<u64> = Cache::builder(setup.client.clone(), "bench-refresh")
            .fresh_for(Duration::from_millis(1))
            .stale_for(Duration::from_secs(3600))
            .early_refresh(false)
            .build();
        refreshing.get("r", async { 1 }).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
        let before_refresh = counts(&mut reader).await;
        refreshing.get("r", async { 2 }).await;
        while refreshing.stats().refreshes == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        let after_refresh = counts(&mut reader).await;
        (
            after_hit.1 - before.1,
            after_miss.1 - after_hit.1,
            // The stale lookup is the hit's; the rest is the refresh's.
            after_refresh.1 - before_refresh.1 - (after_hit.1 - before.1),
        )
    });
    let us = |ns: f64| format!("{:.1} µs", ns / 1e3);
    println!(
        "| **cache: fresh hit** (`Cache::get`: one pipelined lookup) | {} | | |",
        us(hit.ns)
    );
    println!(
        "| floor: a bare `GET` of the same key | {} | **{:.2}x** | <= 1.2x |",
        us(get.ns),
        get.first_over_this
    );
    println!(
        "| protocol floor: the cache's lookup (`STRLEN`, `PTTL`, `GETRANGE` pipelined), bare | {} | **{:.2}x** | |",
        us(pipeline.ns),
        pipeline.first_over_this
    );
    println!(
        "| **cache: stale hit** (served before the refresh's round trips) | {} | {:.2}x the bare `GET` | |",
        us(stale_hit.ns),
        stale_hit.ns / get.ns
    );
    println!(
        "| Redis commands per hit / miss / refresh | {hit_commands} / {miss_commands} / {refresh_commands} | | |"
    );
}
