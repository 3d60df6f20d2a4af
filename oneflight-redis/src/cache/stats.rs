//! What a [`Cache`](crate::Cache) counts: [`CacheStats`] for `stats()`, and with the
//! `metrics` feature the same counts through the `metrics` facade, labelled with the
//! cache's name (its namespace unless the builder's `name`), never with keys:
//! `oneflight_cache_hits_total`, `oneflight_cache_stale_hits_total`,
//! `oneflight_cache_misses_total`, `oneflight_cache_refreshes_total`,
//! `oneflight_cache_early_refreshes_total`, `oneflight_cache_failed_refreshes_total`
//! (label `cache`); rejected stores are the fleet's `oneflight_fleet_late_publishes_total`.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::FleetStats;

/// Counters of a [`Cache`](crate::Cache) since it was created, shared by its clones.
///
/// ```
/// use oneflight_redis::{Cache, CacheStats, redis};
///
/// let client = redis::Client::open("redis://127.0.0.1:1/").unwrap();
/// let cache: Cache<u32> = Cache::new(client, "app");
/// assert_eq!(cache.stats(), CacheStats::default());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct CacheStats {
    /// Lookups that found a fresh value (its load not run). Concurrent `get`s of a key in
    /// one process share a lookup, and count once.
    pub hits: u64,
    /// Lookups that found a stale value: served at once, and refreshed in the
    /// background.
    pub stale_hits: u64,
    /// Lookups that found nothing usable: the key was loaded by a fleet flight (here or
    /// in another process).
    pub misses: u64,
    /// Background refreshes that loaded in this process (stale or early), whether or not
    /// their value was stored.
    pub refreshes: u64,
    /// Of the lookups that found a fresh value, those whose early refresh XFetch drew
    /// (also counted in `hits`).
    pub early_refreshes: u64,
    /// Values loaded here that were not stored because an `invalidate` revoked their
    /// lease, or their lease passed to another flight: stale sets prevented.
    pub rejected_stores: u64,
    /// Background refreshes whose load failed or panicked: the stale value stays served
    /// until `stale_for` ends.
    pub failed_refreshes: u64,
    /// The counters of the cache's fleet (loads, received, fallbacks, Redis errors, ...).
    pub fleet: FleetStats,
}

/// The live counters behind [`CacheStats`], and their metrics.
#[derive(Debug, Default)]
pub(crate) struct CacheCounters {
    hits: AtomicU64,
    stale_hits: AtomicU64,
    misses: AtomicU64,
    refreshes: AtomicU64,
    early_refreshes: AtomicU64,
    failed_refreshes: AtomicU64,
    #[cfg(feature = "metrics")]
    meters: meters::Meters,
}

/// Which count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Count {
    Hit,
    StaleHit,
    Miss,
    Refresh,
    EarlyRefresh,
    FailedRefresh,
}

impl CacheCounters {
    pub(crate) fn new(_name: &str) -> Self {
        CacheCounters {
            #[cfg(feature = "metrics")]
            meters: meters::Meters::new(_name),
            ..CacheCounters::default()
        }
    }

    pub(crate) fn add(&self, count: Count) {
        let counter = match count {
            Count::Hit => &self.hits,
            Count::StaleHit => &self.stale_hits,
            Count::Miss => &self.misses,
            Count::Refresh => &self.refreshes,
            Count::EarlyRefresh => &self.early_refreshes,
            Count::FailedRefresh => &self.failed_refreshes,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        self.meters.get(count).increment(1);
    }

    pub(crate) fn snapshot(&self, fleet: FleetStats) -> CacheStats {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        CacheStats {
            hits: get(&self.hits),
            stale_hits: get(&self.stale_hits),
            misses: get(&self.misses),
            refreshes: get(&self.refreshes),
            early_refreshes: get(&self.early_refreshes),
            rejected_stores: fleet.late_publishes,
            failed_refreshes: get(&self.failed_refreshes),
            fleet,
        }
    }
}

#[cfg(feature = "metrics")]
mod meters {
    use metrics::{Counter, counter};
    use std::sync::OnceLock;

    use super::Count;

    const NAMES: [(Count, &str); 6] = [
        (Count::Hit, "oneflight_cache_hits_total"),
        (Count::StaleHit, "oneflight_cache_stale_hits_total"),
        (Count::Miss, "oneflight_cache_misses_total"),
        (Count::Refresh, "oneflight_cache_refreshes_total"),
        (Count::EarlyRefresh, "oneflight_cache_early_refreshes_total"),
        (
            Count::FailedRefresh,
            "oneflight_cache_failed_refreshes_total",
        ),
    ];

    /// The cache's metric handles, registered at first use.
    #[derive(Debug, Default)]
    pub(super) struct Meters {
        cache: String,
        handles: OnceLock<[Counter; 6]>,
    }

    impl Meters {
        pub(super) fn new(cache: &str) -> Self {
            Meters {
                cache: cache.to_owned(),
                handles: OnceLock::new(),
            }
        }

        pub(super) fn get(&self, count: Count) -> &Counter {
            let handles = self.handles.get_or_init(|| {
                NAMES.map(|(_, name)| counter!(name, "cache" => self.cache.clone()))
            });
            let at = NAMES
                .iter()
                .position(|(c, _)| *c == count)
                .expect("every count");
            &handles[at]
        }
    }
}
