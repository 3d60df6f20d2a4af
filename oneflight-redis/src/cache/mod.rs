//! [`Cache`]: a fleet-wide read-through cache on Redis, built on the fleet's leases, with
//! neither expiry stampedes nor stale sets.
//!
//! - A lookup (one script: the value and its TTL) says fresh, stale, or missing; its age
//!   comes from the TTL Redis keeps, never from the processes' clocks. Concurrent `get`s
//!   of a key in one process share it.
//! - A miss is a fleet flight (one load per key fleet-wide) whose holder stores the value
//!   where the flight publishes it, `oneflight:TAG:cached`, in the same script, with a
//!   TTL of `fresh_for + stale_for`: waiting processes receive it from there.
//! - A stale value (or a fresh one whose early refresh XFetch drew) is served at once
//!   while a background task refreshes it: a flight that loads only if it takes the
//!   key's lease (one process of the fleet at a time) and otherwise leaves it to the
//!   flight that holds it.
//! - `invalidate` deletes the value and revokes the lease of the key's flight in the air
//!   ([`crate::scripts::INVALIDATE`]): a store is a compare-and-set on that lease, so a
//!   load that began before the invalidation is never stored after it.

mod builder;
mod entry;
mod stats;

pub use builder::CacheBuilder;
pub use stats::CacheStats;

use futures_util::FutureExt;
use oneflight::Group;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::HashSet;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use crate::flight::{Fencing, Local, Mode, NotHeld, RedisFailed, Shared};
use crate::names::Names;
use crate::{Backend, Fleet, FleetError, runtime};
pub(crate) use entry::{Cached, Freshness};
use entry::{Found, draw};
use stats::{CacheCounters, Count};

/// A fleet-wide read-through cache of `V` values on Redis: one namespace of cached
/// values, shared by every process that uses the same backend and namespace. A cheap
/// `Clone` handle.
///
/// - **One load per key fleet-wide on a miss**, as [`Fleet::work`].
/// - **No expiry stampede**: with `stale_for` at least a load's duration, callers of a
///   hot key never wait on a reload after its first fill (the stale value is served
///   while one process refreshes it); early refresh (XFetch) reloads a busy key before
///   it expires, so that even with `stale_for` 0 almost nobody meets an expired key.
/// - **No stale sets**: a value is stored only under a lease that no later
///   [`invalidate`](Self::invalidate) revoked.
/// - Every stored value has a TTL (`fresh_for + stale_for`); values of different types
///   or namespaces never mix.
///
/// `V` needs the same bounds as [`Fleet`]: `Clone + Serialize + DeserializeOwned + Send +
/// Sync + 'static`. Put a near cache (moka) in front when a key is read far more often
/// than Redis should be asked: see the crate README.
///
/// ```no_run
/// use oneflight_redis::{Cache, redis};
/// use std::time::Duration;
///
/// # async fn query_price(id: u64) -> u64 { id }
/// # async fn example() {
/// let client = redis::Client::open("redis://127.0.0.1/").unwrap();
/// let prices: Cache<u64> = Cache::builder(client, "prices")
///     .fresh_for(Duration::from_secs(30))
///     .stale_for(Duration::from_secs(5))
///     .build();
/// let price = prices.get("item:7", query_price(7)).await;
/// # }
/// ```
pub struct Cache<V> {
    fleet: Fleet<Cached<V>>,
    shared: Arc<Inner<V>>,
}

/// What a cache's clones share besides the fleet.
struct Inner<V> {
    /// Concurrent lookups of a key in this process share one round trip.
    lookups: Group<String, Found<V>>,
    /// Keys this process refreshes in the background now: one refresh per key.
    refreshing: Mutex<HashSet<String>>,
    counters: CacheCounters,
    freshness: Freshness,
}

/// Takes its key out of the refreshing set when the refresh ends or is dropped.
struct Refreshing<V> {
    shared: Arc<Inner<V>>,
    key: String,
}

impl<V> Drop for Refreshing<V> {
    fn drop(&mut self) {
        self.shared
            .refreshing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.key);
    }
}

/// A background refresh's load panicked: counted, never shared with a caller.
struct RefreshPanicked;

impl<V> Cache<V> {
    /// A cache with the default settings (fresh for 60 s, no stale period, early refresh
    /// on, and the fleet's defaults). Connects lazily, at its first call. `backend` is a
    /// [`redis::Client`] or a [`redis::cluster::ClusterClient`]: see [`Backend`].
    ///
    /// ```
    /// use oneflight_redis::{Cache, redis};
    ///
    /// let client = redis::Client::open("redis://127.0.0.1/").unwrap();
    /// let profiles: Cache<String> = Cache::new(client, "profiles");
    /// # drop(profiles);
    /// ```
    pub fn new(backend: impl Into<Backend>, namespace: &str) -> Self {
        Self::builder(backend, namespace).build()
    }

    /// A builder for a cache with other settings; see [`CacheBuilder`].
    ///
    /// ```
    /// use oneflight_redis::{Cache, redis};
    /// use std::time::Duration;
    ///
    /// let client = redis::Client::open("redis://127.0.0.1/").unwrap();
    /// let cache: Cache<u64> = Cache::builder(client, "counts").fresh_for(Duration::from_secs(5)).build();
    /// # drop(cache);
    /// ```
    pub fn builder(backend: impl Into<Backend>, namespace: &str) -> CacheBuilder<V> {
        CacheBuilder::new(backend.into(), namespace)
    }

    pub(crate) fn from_parts(fleet: Fleet<Cached<V>>, freshness: Freshness, name: &str) -> Self {
        Cache {
            fleet,
            shared: Arc::new(Inner {
                lookups: Group::new(),
                refreshing: Mutex::new(HashSet::new()),
                counters: CacheCounters::new(name),
                freshness,
            }),
        }
    }

    /// The counters since this cache was created, shared by its clones.
    ///
    /// ```
    /// use oneflight_redis::{Cache, redis};
    ///
    /// let cache: Cache<u8> = Cache::new(redis::Client::open("redis://127.0.0.1/").unwrap(), "n");
    /// assert_eq!(cache.stats().hits + cache.stats().misses, 0);
    /// ```
    pub fn stats(&self) -> CacheStats {
        self.shared.counters.snapshot(self.fleet.stats())
    }
}

impl<V> Cache<V>
where
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// The value of `key`: a fresh cached value at once (`load` dropped unpolled); a
    /// stale one at once, while `load` refreshes the key in the background (spawned on
    /// the runtime of the crate's feature; one process of the fleet refreshes at a
    /// time); or, when there is none, the value of a fleet flight, as
    /// [`Fleet::work`], whose holder stores it for `fresh_for + stale_for`.
    ///
    /// Never fails: when Redis cannot help, the call goes on with in-process flights and
    /// no cache, and [`stats`](Self::stats) counts it.
    ///
    /// # Cancel safety
    ///
    /// As [`Fleet::work`]. A background refresh is not this caller's: it runs on after
    /// the caller is gone.
    ///
    /// # Panics
    ///
    /// A panic in `load` on a miss: as [`Fleet::work`]. In a background refresh, it is
    /// caught and counted in [`CacheStats::failed_refreshes`]; the stale value stays
    /// served.
    ///
    /// ```no_run
    /// # async fn example(cache: oneflight_redis::Cache<String>) {
    /// let page = cache.get("page:/", async { "rendered".to_owned() }).await;
    /// # }
    /// ```
    pub async fn get<F>(&self, key: &str, load: F) -> V
    where
        F: Future<Output = V> + Send + 'static,
    {
        if let Some((value, refresh)) = self.serve(self.look(key).await) {
            if let Some(early) = refresh {
                self.refresh(key, early, async move { Ok(load.await) });
            }
            return value;
        }
        let timed = async move {
            let started = Instant::now();
            let value = load.await;
            Cached::new(value, started.elapsed())
        };
        self.fleet.work(key, timed).await.value
    }

    /// As [`get`](Self::get), for loads that can fail. On a miss, an `Err` is shared, as
    /// one `Arc<E>`, only with this process's callers of the flight: never stored, never
    /// sent to another process (another one then loads for itself). A background refresh
    /// that fails leaves the stale value served until `stale_for` ends
    /// (stale-if-error, RFC 5861), counted in [`CacheStats::failed_refreshes`], and is
    /// tried again at most once per poll interval per process; after that, the key is a
    /// miss, and its load's error comes back here.
    ///
    /// Cancel safety and panics: as [`get`](Self::get).
    ///
    /// ```no_run
    /// # async fn example(cache: oneflight_redis::Cache<String>) -> Result<(), std::sync::Arc<std::io::Error>> {
    /// let page = cache
    ///     .try_get("page:/", async { std::fs::read_to_string("index.html") })
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn try_get<F, E>(&self, key: &str, load: F) -> Result<V, Arc<E>>
    where
        F: Future<Output = Result<V, E>> + Send + 'static,
        E: Send + Sync + 'static,
    {
        if let Some((value, refresh)) = self.serve(self.look(key).await) {
            if let Some(early) = refresh {
                let load = async move { load.await.map_err(|e| Arc::new(e) as Shared) };
                self.refresh(key, early, load);
            }
            return Ok(value);
        }
        let timed = async move {
            let started = Instant::now();
            let value = load.await?;
            Ok(Cached::new(value, started.elapsed()))
        };
        self.fleet
            .try_work(key, timed)
            .await
            .map(|cached| cached.value)
    }

    /// Removes `key`'s cached value and revokes every lease of the key taken before:
    /// a load that began before this returned is never stored, and its value reaches no
    /// other process through Redis afterwards. Only callers that joined that load's
    /// flight in its own process may still receive its value. A `get` that starts after
    /// this returned, in this process, and any `get` in a process that had no flight of
    /// the key in the air, loads anew.
    ///
    /// # Errors
    ///
    /// A [`FleetError`] when Redis did not confirm: the value and the lease may still be
    /// there; call it again (it is idempotent).
    ///
    /// # Cancel safety
    ///
    /// Dropped before it returned, it may or may not have taken effect.
    ///
    /// # Panics
    ///
    /// Never.
    ///
    /// ```no_run
    /// # async fn example(cache: oneflight_redis::Cache<String>) -> Result<(), oneflight_redis::FleetError> {
    /// // After the database was updated:
    /// cache.invalidate("page:/").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn invalidate(&self, key: &str) -> Result<(), FleetError> {
        let link = &self.fleet.link;
        let names = Names::new(&link.namespace, key);
        let outcome = link.store.invalidate(&names).await;
        // No caller that starts from now on joins a flight or lookup of this process that
        // began before.
        self.fleet.group.forget(key);
        self.shared.lookups.forget(key);
        match outcome {
            Ok(_revoked) => {
                link.health.answered();
                Ok(())
            }
            Err(error) => {
                link.health.failed(&error, &link.counters);
                Err(error)
            }
        }
    }

    /// The lookup of `key`, shared by this process's concurrent callers.
    async fn look(&self, key: &str) -> Found<V> {
        let link = &self.fleet.link;
        if link.health.resting().is_some() {
            return Found::Missing;
        }
        let freshness = self.shared.freshness;
        let lookup = async {
            let names = Names::new(&link.namespace, key);
            match link.store.lookup(&names).await {
                Ok(found) => {
                    link.health.answered();
                    let Some((payload, left)) = found else {
                        return Found::Missing;
                    };
                    match link.config.codec.open_any::<Cached<V>>(&payload) {
                        Ok((_token, cached)) => freshness.judge(cached, left, draw()),
                        Err(_) => {
                            link.counters.undecodable();
                            Found::Missing
                        }
                    }
                }
                Err(error) => {
                    link.health.failed(&error, &link.counters);
                    Found::Missing
                }
            }
        };
        self.shared.lookups.work(key, lookup).await
    }

    /// The value a lookup lets this caller have at once, counted, and whether it must
    /// be refreshed (`Some(early)`); `None`: a miss.
    fn serve(&self, found: Found<V>) -> Option<(V, Option<bool>)> {
        let counters = &self.shared.counters;
        match found {
            Found::Fresh(value) => {
                counters.add(Count::Hit);
                Some((value, None))
            }
            Found::Early(value) => {
                counters.add(Count::Hit);
                Some((value, Some(true)))
            }
            Found::Stale(value) => {
                counters.add(Count::StaleHit);
                Some((value, Some(false)))
            }
            Found::Missing => {
                counters.add(Count::Miss);
                None
            }
        }
    }

    /// Refreshes `key` in the background with `load`, unless this process refreshes it
    /// already.
    fn refresh<R>(&self, key: &str, early: bool, load: R)
    where
        R: Future<Output = Local<V>> + Send + 'static,
    {
        let fresh_start = self
            .shared
            .refreshing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key.to_owned());
        if !fresh_start {
            return;
        }
        if early {
            self.shared.counters.add(Count::EarlyRefresh);
        }
        let refreshing = Refreshing {
            shared: self.shared.clone(),
            key: key.to_owned(),
        };
        let link = self.fleet.link.clone();
        let task = async move {
            let load = |_fence| async move {
                let started = Instant::now();
                match AssertUnwindSafe(load).catch_unwind().await {
                    Ok(Ok(value)) => Ok(Cached::new(value, started.elapsed())),
                    Ok(Err(error)) => Err(error),
                    Err(_panic) => Err(Arc::new(RefreshPanicked) as Shared),
                }
            };
            let key = refreshing.key.clone();
            let outcome = link.fly(&key, Fencing::Off, load, Mode::Refresh).await;
            let counters = &refreshing.shared.counters;
            match outcome {
                Ok(_) => counters.add(Count::Refresh),
                // Another flight refreshes it, or Redis cannot store it: not loaded here.
                Err(error) if error.is::<NotHeld>() || error.is::<RedisFailed>() => {}
                Err(_) => {
                    counters.add(Count::Refresh);
                    counters.add(Count::FailedRefresh);
                    // The key stays marked for a poll interval: a failing source is
                    // asked again at that pace, not by every caller of the stale value.
                    runtime::sleep(link.config.poll_interval).await;
                }
            }
            drop(refreshing);
        };
        // Without a runtime to run it the refresh is dropped: the stale value is served
        // until it expires, then a caller loads.
        let _ = runtime::spawn(task);
    }
}

impl<V> Clone for Cache<V> {
    fn clone(&self) -> Self {
        Cache {
            fleet: self.fleet.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<V> std::fmt::Debug for Cache<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("namespace", &self.fleet.link.namespace)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}
