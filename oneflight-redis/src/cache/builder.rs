//! [`CacheBuilder`]: how long values stay fresh and stale, early refresh, and every
//! setting of the cache's fleet.

use std::time::Duration;

use super::Cache;
use super::entry::{Cached, Freshness};
use crate::{Backend, Codec, FleetBuilder};

/// Settings of a [`Cache`], with defaults that work: values fresh for 60 s, no stale
/// period, early refresh on, and the fleet's defaults (lease 5 s, poll interval 250 ms,
/// `max_wait` 30 s, command timeout 1 s).
///
/// ```
/// use oneflight_redis::{Cache, redis};
/// use std::time::Duration;
///
/// let client = redis::Client::open("redis://127.0.0.1/").unwrap();
/// let prices: Cache<u64> = Cache::builder(client, "prices")
///     .fresh_for(Duration::from_secs(30))
///     .stale_for(Duration::from_secs(10))
///     .build();
/// # drop(prices);
/// ```
#[derive(Debug)]
#[must_use = "a builder does nothing until `.build()`"]
pub struct CacheBuilder<V> {
    fleet: FleetBuilder<Cached<V>>,
    fresh_for: Duration,
    stale_for: Duration,
    early_refresh: bool,
}

/// A fleet setting, forwarded to the cache's fleet, with its example.
macro_rules! fleet_setting {
    ($(#[$doc:meta])* $name:ident($value:ident: $ty:ty) $example:literal) => {
        $(#[$doc])*
        ///
        /// ```
        /// # use oneflight_redis::{Cache, Codec, redis};
        /// # use std::time::Duration;
        /// # let client = redis::Client::open("redis://127.0.0.1/").unwrap();
        #[doc = concat!("let cache: Cache<u32> = Cache::builder(client, \"app\").", $example, ".build();")]
        /// # drop(cache);
        /// ```
        pub fn $name(mut self, $value: $ty) -> Self {
            self.fleet = self.fleet.$name($value);
            self
        }
    };
}

impl<V> CacheBuilder<V> {
    pub(crate) fn new(backend: Backend, namespace: &str) -> Self {
        CacheBuilder {
            fleet: FleetBuilder::new(backend, namespace),
            fresh_for: Duration::from_secs(60),
            stale_for: Duration::ZERO,
            early_refresh: true,
        }
    }

    /// How long a loaded value is served without a load (default 60 s; above zero).
    ///
    /// ```
    /// # use oneflight_redis::{Cache, redis};
    /// # use std::time::Duration;
    /// # let client = redis::Client::open("redis://127.0.0.1/").unwrap();
    /// let cache: Cache<u32> = Cache::builder(client, "app").fresh_for(Duration::from_secs(5)).build();
    /// # drop(cache);
    /// ```
    pub fn fresh_for(mut self, fresh_for: Duration) -> Self {
        self.fresh_for = fresh_for;
        self
    }

    /// How long after `fresh_for` a value is still served, at once, while one process of
    /// the fleet refreshes it in the background (default 0: none; stale-while-revalidate,
    /// RFC 5861). Choose it at least as long as a load: then callers of a hot key never
    /// wait on a reload after its first fill. A refresh that fails leaves the stale value
    /// served until this runs out (stale-if-error).
    ///
    /// ```
    /// # use oneflight_redis::{Cache, redis};
    /// # use std::time::Duration;
    /// # let client = redis::Client::open("redis://127.0.0.1/").unwrap();
    /// let cache: Cache<u32> = Cache::builder(client, "app").stale_for(Duration::from_secs(2)).build();
    /// # drop(cache);
    /// ```
    pub fn stale_for(mut self, stale_for: Duration) -> Self {
        self.stale_for = stale_for;
        self
    }

    /// Whether a fresh value may be refreshed early, in the background, with a
    /// probability that grows as its expiry nears and with how long its last load took
    /// (default `true`; XFetch with β = 1, Vattani, Chierichetti and Lowenstein, VLDB
    /// 2015). Under steady traffic a key is then reloaded shortly before it expires, even
    /// with `stale_for` 0.
    ///
    /// ```
    /// # use oneflight_redis::{Cache, redis};
    /// # let client = redis::Client::open("redis://127.0.0.1/").unwrap();
    /// let cache: Cache<u32> = Cache::builder(client, "app").early_refresh(false).build();
    /// # drop(cache);
    /// ```
    pub fn early_refresh(mut self, early_refresh: bool) -> Self {
        self.early_refresh = early_refresh;
        self
    }

    fleet_setting!(
        /// The lease of each load, as [`FleetBuilder::lease`].
        lease(lease: Duration) "lease(Duration::from_secs(10))"
    );
    fleet_setting!(
        /// How often a waiting process checks Redis, as [`FleetBuilder::poll_interval`].
        poll_interval(poll_interval: Duration) "poll_interval(Duration::from_millis(100))"
    );
    fleet_setting!(
        /// How long a miss waits on another process's load before loading itself, as
        /// [`FleetBuilder::max_wait`].
        max_wait(max_wait: Duration) "max_wait(Duration::from_secs(2))"
    );
    fleet_setting!(
        /// How long any one Redis command may take, as [`FleetBuilder::command_timeout`].
        command_timeout(command_timeout: Duration) "command_timeout(Duration::from_millis(300))"
    );
    fleet_setting!(
        /// How long to skip Redis after two unanswered commands in a row, as
        /// [`FleetBuilder::retry_redis_after`].
        retry_redis_after(retry_redis_after: Duration) "retry_redis_after(Duration::from_secs(2))"
    );
    fleet_setting!(
        /// The largest encoded value stored, as [`FleetBuilder::max_value_size`]: a larger
        /// one is served to this process's callers and not stored.
        max_value_size(bytes: usize) "max_value_size(1024 * 1024)"
    );
    fleet_setting!(
        /// How values are encoded, as [`FleetBuilder::codec`].
        codec(codec: Codec) "codec(Codec::Json)"
    );
    fleet_setting!(
        /// The cache's name in `tracing` spans and `metrics` labels (default: the
        /// namespace), as [`FleetBuilder::name`].
        name(name: impl Into<String>) "name(\"app\")"
    );
    fleet_setting!(
        /// Whether `tracing` spans record the key, as [`FleetBuilder::record_keys`].
        record_keys(record_keys: bool) "record_keys(false)"
    );

    /// The cache. Connects lazily, at its first call.
    ///
    /// # Panics
    ///
    /// When `fresh_for` is zero, or the fleet's settings cannot work together (see
    /// [`FleetBuilder::build`]), with a message that names the setting.
    ///
    /// ```should_panic
    /// # use oneflight_redis::{Cache, redis};
    /// # use std::time::Duration;
    /// # let client = redis::Client::open("redis://127.0.0.1/").unwrap();
    /// // panics: "`fresh_for` is 0ns; it must be above zero"
    /// let cache: Cache<u32> = Cache::builder(client, "app").fresh_for(Duration::ZERO).build();
    /// ```
    pub fn build(self) -> Cache<V> {
        assert!(
            !self.fresh_for.is_zero(),
            "oneflight-redis: `fresh_for` is {:?}; it must be above zero (a value that is \
             never fresh would be loaded on every call)",
            self.fresh_for
        );
        let mut fleet = self.fleet;
        // Every stored value has this TTL: nothing is left in Redis without one.
        fleet.config.cache_for = Some(self.fresh_for.saturating_add(self.stale_for));
        let name = fleet.config.name.clone();
        let freshness = Freshness {
            stale_for: self.stale_for,
            early_refresh: self.early_refresh,
        };
        Cache::from_parts(fleet.build(), freshness, &name)
    }
}
