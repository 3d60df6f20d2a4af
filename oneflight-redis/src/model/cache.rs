//! A model test of the cache's lease logic (the stale set): the caches' real code over
//! the in-memory store of the model, three "processes", a "database" whose version a
//! writer bumps and then invalidates, readers whose loads read a version and take a
//! while, with the faults of the fleet's model (lost replies, commands that fail, take
//! several polls or run late, leases lost early). The store checks every value it
//! stores against the version at the key's last invalidation: a value read before an
//! invalidation that took effect is never stored after it.

use super::*;
use crate::Cache;
use crate::cache::{Cached, Freshness};

/// One caller's observation: its process, key, when it began, what it got.
struct Got {
    process: usize,
    key: String,
    start: Instant,
    version: u64,
}

/// One invalidation confirmed by Redis: its process, key, the version written before
/// it, and when it returned.
struct Invalidated {
    process: usize,
    key: String,
    version: u64,
    returned: Instant,
}

fn run_cache(seed: u64, faults: Faults) {
    let db = Arc::new(AtomicU64::new(1));
    let memory = Arc::new(Memory {
        state: Mutex::default(),
        faults,
        seed: AtomicU64::new(seed),
        late: Mutex::default(),
        cache: true,
        db: Some(db.clone()),
    });
    let nowhere = || redis::Client::open("redis://127.0.0.1:1/").unwrap();
    let (fresh, stale) = (Duration::from_millis(30), Duration::from_millis(30));
    let caches: Vec<Cache<u64>> = (0..3)
        .map(|_| {
            let config = Config {
                cache_for: Some(fresh + stale),
                ..config(Duration::from_millis(500))
            };
            let fleet = Fleet::with_transport(memory.clone(), nowhere().into(), "c", config);
            let freshness = Freshness {
                stale_for: stale,
                early_refresh: true,
            };
            Cache::from_parts(fleet, freshness, "c")
        })
        .collect();
    let mut rng = Rng(seed | 1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (got, invalidated) = runtime.block_on(async {
        let mut readers = Vec::new();
        for _ in 0..80 {
            let process = rng.below(3) as usize;
            let cache = caches[process].clone();
            let key = format!("k{}", rng.below(2));
            let delay = Duration::from_millis(rng.below(120));
            let work = Duration::from_millis(rng.below(40));
            let cancel_after = (rng.below(6) == 0).then(|| Duration::from_millis(rng.below(40)));
            let db = db.clone();
            readers.push(tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let start = Instant::now();
                let load = async move {
                    let version = db.load(Ordering::SeqCst);
                    tokio::time::sleep(work).await;
                    version
                };
                let call = cache.get(&key, load);
                let version = match cancel_after {
                    Some(after) => tokio::time::timeout(after, call).await.ok()?,
                    None => call.await,
                };
                Some(Got {
                    process,
                    key,
                    start,
                    version,
                })
            }));
        }
        // The writer: bumps the version, then invalidates until Redis confirms.
        let mut writes = Vec::new();
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_millis(rng.below(30))).await;
            let process = rng.below(3) as usize;
            let key = format!("k{}", rng.below(2));
            let version = db.fetch_add(1, Ordering::SeqCst) + 1;
            let mut confirmed = false;
            for _ in 0..50 {
                if caches[process].invalidate(&key).await.is_ok() {
                    confirmed = true;
                    break;
                }
            }
            assert!(confirmed, "seed {seed}: invalidate never confirmed");
            writes.push(Invalidated {
                process,
                key,
                version,
                returned: Instant::now(),
            });
        }
        let mut got = Vec::new();
        for reader in readers {
            let seen = tokio::time::timeout(Duration::from_secs(20), reader)
                .await
                .expect("a caller hung")
                .expect("no reader panics");
            got.extend(seen);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        (got, writes)
    });
    drop(caches);
    drop(runtime);
    memory.run_late();
    let state = memory.state.lock().unwrap();
    assert_eq!(state.stale_sets, 0, "seed {seed}: a stale set");
    assert!(state.invalidations >= 6, "seed {seed}");
    // In the process that invalidated, a get that began after the invalidation returned
    // got a version at least as new as the one written before it.
    for write in &invalidated {
        for g in got.iter().filter(|g| {
            g.process == write.process && g.key == write.key && g.start > write.returned
        }) {
            assert!(
                g.version >= write.version,
                "seed {seed}: a get after an invalidate got version {} < {}",
                g.version,
                write.version
            );
        }
    }
}

#[test]
fn cache_never_stores_a_value_read_before_an_invalidation_on_a_healthy_store() {
    for seed in 1..=10 {
        run_cache(seed, Faults::default());
    }
}

#[test]
fn cache_never_stores_a_value_read_before_an_invalidation_with_every_fault() {
    let faults = Faults {
        errors: 20,
        lost_replies: 30,
        lost_leases: 20,
        keeper_errors: 20,
        slow: true,
    };
    for seed in 400..=410 {
        run_cache(seed, faults);
    }
}

/// `Cached` values must decode as the store's check expects.
#[test]
fn the_cache_model_decodes_what_a_cache_stores() {
    let payload = crate::Codec::Postcard
        .seal("t", &Cached::new(7u64, Duration::from_millis(3)))
        .unwrap();
    let (_, cached) = crate::Codec::Postcard
        .open_any::<Cached<u64>>(&payload)
        .unwrap();
    assert_eq!((cached.value, cached.load_ms), (7, 3));
}
