//! oneflight in front of a moka cache, beside moka's own `try_get_with`, on the same burst.
//!
//! 1,000 concurrent requests for 4 keys arrive at a cold `moka::future::Cache`; a load
//! (a timer standing in for a database query) takes 50 ms and can fail. Each way, the
//! example counts the loads and times the burst, then sends the burst again at the warm
//! cache. Run it with `cargo run --release --example moka_cache`.
//!
//! The read-through pattern with a group: look in the cache; on a miss, join the key's
//! flight, and inside the flight look again and fill the cache before the flight ends.
//! Filled after `try_work` returned instead, a caller that misses the cache between the
//! end of the flight and the insert would start a second load.

use moka::future::Cache;
use oneflight::Group;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const REQUESTS: usize = 1_000;
const KEYS: usize = 4;

type Profile = Arc<String>;
type LoadError = std::io::Error;

/// The database: 50 ms per query, counted.
#[derive(Default)]
struct Database {
    queries: AtomicUsize,
}

impl Database {
    async fn load(&self, key: &str) -> Result<Profile, LoadError> {
        self.queries.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok(Arc::new(format!("profile for {key}")))
    }
}

/// Read-through through a oneflight group: the cache is checked again and filled inside
/// the flight.
async fn through_oneflight(
    cache: &Cache<String, Profile>,
    group: &Group<String, Result<Profile, Arc<LoadError>>>,
    db: &Database,
    key: &str,
) -> Result<Profile, Arc<LoadError>> {
    if let Some(hit) = cache.get(key).await {
        return Ok(hit);
    }
    group
        .try_work(key, async {
            if let Some(hit) = cache.get(key).await {
                return Ok(hit);
            }
            let profile = db.load(key).await?;
            cache.insert(key.to_owned(), profile.clone()).await;
            Ok(profile)
        })
        .await
}

/// The same with moka's own coalescing.
async fn through_moka(
    cache: &Cache<String, Profile>,
    db: &Database,
    key: &str,
) -> Result<Profile, Arc<LoadError>> {
    cache.try_get_with(key.to_owned(), db.load(key)).await
}

/// Fires `REQUESTS` calls of `call` at once over `KEYS` keys; returns the time it took.
async fn burst<F, Fut>(call: F) -> Duration
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<Profile, Arc<LoadError>>>,
{
    let started = Instant::now();
    let calls = (0..REQUESTS).map(|i| call(format!("user:{}", i % KEYS)));
    for result in futures_util::future::join_all(calls).await {
        result.expect("the load succeeds");
    }
    started.elapsed()
}

#[tokio::main]
async fn main() {
    println!("{REQUESTS} concurrent requests over {KEYS} keys, a 50 ms load per miss\n");
    println!("| run                              | burst    | loads | time     |");
    println!("|----------------------------------|----------|-------|----------|");
    let mut rows = Vec::new();

    let (cache, group, db) = (Cache::new(10_000), Group::new(), Database::default());
    for burst_name in ["cold", "warm"] {
        let took = burst(|key| {
            let (cache, group, db) = (&cache, &group, &db);
            async move { through_oneflight(cache, group, db, &key).await }
        })
        .await;
        rows.push((
            "moka cache + oneflight try_work",
            burst_name,
            db.queries.swap(0, Ordering::SeqCst),
            took,
        ));
    }

    let (cache, db) = (Cache::new(10_000), Database::default());
    for burst_name in ["cold", "warm"] {
        let took = burst(|key| {
            let (cache, db) = (&cache, &db);
            async move { through_moka(cache, db, &key).await }
        })
        .await;
        rows.push((
            "moka try_get_with",
            burst_name,
            db.queries.swap(0, Ordering::SeqCst),
            took,
        ));
    }

    for (run, burst_name, loads, took) in &rows {
        println!("| {run:<32} | {burst_name:<8} | {loads:>5} | {took:>8.1?} |");
    }
    let oneflight_cold = rows[0].2;
    let moka_cold = rows[2].2;
    println!(
        "\ncheck: oneflight_loads={oneflight_cold} moka_loads={moka_cold} keys={KEYS} ok={}",
        oneflight_cold == KEYS && moka_cold == KEYS
    );
}
