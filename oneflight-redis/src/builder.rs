//! [`FleetBuilder`]: the fleet's durations, codec and failure policy, with their defaults.

use std::marker::PhantomData;
use std::time::Duration;

use crate::{Codec, Fleet};

/// What a call does when Redis fails (down, slow, restarted).
///
/// ```
/// use oneflight_redis::{Fleet, OnRedisError, redis};
///
/// let client = redis::Client::open("redis://127.0.0.1/").unwrap();
/// let fleet: Fleet<u32> = Fleet::builder(client, "app").on_redis_error(OnRedisError::Fail).build();
/// # drop(fleet);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OnRedisError {
    /// Go on with in-process deduplication: the load runs in this process, shared by its
    /// callers only. The default, and what [`Fleet::work`] always does.
    #[default]
    Degrade,
    /// [`Fleet::try_work`] returns a [`FleetError`](crate::FleetError) (converted into
    /// the caller's error type) instead of loading without the fleet. `work` still
    /// degrades, since it cannot return an error.
    Fail,
}

/// The settings of a fleet, fixed at build.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) lease: Duration,
    pub(crate) poll_interval: Duration,
    pub(crate) max_wait: Duration,
    pub(crate) command_timeout: Duration,
    pub(crate) retry_redis_after: Duration,
    pub(crate) codec: Codec,
    pub(crate) on_redis_error: OnRedisError,
}

impl Config {
    /// How often the holder renews its lease: a third of it, so that two renewals can
    /// fail before the lease runs out.
    pub(crate) fn renew_every(&self) -> Duration {
        self.lease / 3
    }
}

/// Builds a [`Fleet`] with settings other than the defaults.
///
/// ```
/// use oneflight_redis::{Fleet, redis};
/// use std::time::Duration;
///
/// let client = redis::Client::open("redis://127.0.0.1/").unwrap();
/// let fleet: Fleet<String> = Fleet::builder(client, "profiles")
///     .lease(Duration::from_secs(10))          // loads can take a while
///     .poll_interval(Duration::from_millis(100))
///     .max_wait(Duration::from_secs(20))
///     .build();
/// # drop(fleet);
/// ```
#[derive(Debug)]
#[must_use = "a builder does nothing until `.build()`"]
pub struct FleetBuilder<V> {
    client: redis::Client,
    namespace: String,
    config: Config,
    value: PhantomData<fn() -> V>,
}

impl<V> FleetBuilder<V> {
    pub(crate) fn new(client: redis::Client, namespace: &str) -> Self {
        FleetBuilder {
            client,
            namespace: namespace.to_owned(),
            config: Config {
                lease: Duration::from_secs(5),
                poll_interval: Duration::from_millis(250),
                max_wait: Duration::from_secs(30),
                command_timeout: Duration::from_secs(1),
                retry_redis_after: Duration::from_secs(1),
                codec: Codec::Postcard,
                on_redis_error: OnRedisError::Degrade,
            },
            value: PhantomData,
        }
    }

    /// How long a holder's claim on a key lasts without renewal (default 5 s). The holder
    /// renews it every third of it while its load runs. A holder that dies is replaced
    /// after at most this long (plus one poll interval). Choose it well above a renewal's
    /// worst round trip, and know that a holder paused longer than this (GC, swap,
    /// SIGSTOP) is no longer alone: see the crate docs on fencing.
    ///
    /// # Panics
    ///
    /// If `lease` is shorter than 3 ms.
    ///
    /// ```
    /// # use oneflight_redis::{Fleet, redis};
    /// # use std::time::Duration;
    /// # let client = redis::Client::open("redis://127.0.0.1/").unwrap();
    /// let fleet: Fleet<u32> = Fleet::builder(client, "app").lease(Duration::from_secs(10)).build();
    /// # drop(fleet);
    /// ```
    ///
    /// ```
    /// # use oneflight_redis::{Fleet, redis};
    /// # use std::time::Duration;
    /// # let client = redis::Client::open("redis://127.0.0.1/").unwrap();
    /// let fleet: Fleet<u32> = Fleet::builder(client, "app").lease(Duration::from_secs(10)).build();
    /// # drop(fleet);
    /// ```
    pub fn lease(mut self, lease: Duration) -> Self {
        assert!(
            lease >= Duration::from_millis(3),
            "oneflight-redis: the lease must be at least 3 ms"
        );
        self.config.lease = lease;
        self
    }

    /// How often a waiting process checks Redis when no pub/sub hint came (default
    /// 250 ms). It bounds how long a lost hint can delay a waiter, and how late a takeover
    /// starts after a lease expired; each check is one Redis command per waiting process.
    ///
    /// # Panics
    ///
    /// If `poll_interval` is zero.
    ///
    /// ```
    /// # use oneflight_redis::{Fleet, redis};
    /// # use std::time::Duration;
    /// # let client = redis::Client::open("redis://127.0.0.1/").unwrap();
    /// let fleet: Fleet<u32> = Fleet::builder(client, "app").poll_interval(Duration::from_millis(100)).build();
    /// # drop(fleet);
    /// ```
    ///
    /// ```
    /// # use oneflight_redis::{Fleet, redis};
    /// # use std::time::Duration;
    /// # let client = redis::Client::open("redis://127.0.0.1/").unwrap();
    /// let fleet: Fleet<u32> = Fleet::builder(client, "app").poll_interval(Duration::from_millis(100)).build();
    /// # drop(fleet);
    /// ```
    pub fn poll_interval(mut self, poll_interval: Duration) -> Self {
        assert!(
            !poll_interval.is_zero(),
            "oneflight-redis: the poll interval must not be zero"
        );
        self.config.poll_interval = poll_interval;
        self
    }

    /// How long a caller waits on another process's flight before it loads the value
    /// itself, without the fleet (default 30 s).
    ///
    /// ```
    /// # use oneflight_redis::{Fleet, redis};
    /// # use std::time::Duration;
    /// # let client = redis::Client::open("redis://127.0.0.1/").unwrap();
    /// let fleet: Fleet<u32> = Fleet::builder(client, "app").max_wait(Duration::from_secs(5)).build();
    /// # drop(fleet);
    /// ```
    ///
    /// ```
    /// # use oneflight_redis::{Fleet, redis};
    /// # use std::time::Duration;
    /// # let client = redis::Client::open("redis://127.0.0.1/").unwrap();
    /// let fleet: Fleet<u32> = Fleet::builder(client, "app").max_wait(Duration::from_secs(5)).build();
    /// # drop(fleet);
    /// ```
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.config.max_wait = max_wait;
        self
    }

    /// How long any one Redis command (connecting included) may take before it counts as
    /// failed (default 1 s).
    ///
    /// # Panics
    ///
    /// If `command_timeout` is zero.
    ///
    /// ```
    /// # use oneflight_redis::{Fleet, redis};
    /// # use std::time::Duration;
    /// # let client = redis::Client::open("redis://127.0.0.1/").unwrap();
    /// let fleet: Fleet<u32> = Fleet::builder(client, "app").command_timeout(Duration::from_millis(300)).build();
    /// # drop(fleet);
    /// ```
    ///
    /// ```
    /// # use oneflight_redis::{Fleet, redis};
    /// # use std::time::Duration;
    /// # let client = redis::Client::open("redis://127.0.0.1/").unwrap();
    /// let fleet: Fleet<u32> = Fleet::builder(client, "app").command_timeout(Duration::from_millis(300)).build();
    /// # drop(fleet);
    /// ```
    pub fn command_timeout(mut self, command_timeout: Duration) -> Self {
        assert!(
            !command_timeout.is_zero(),
            "oneflight-redis: the command timeout must not be zero"
        );
        self.config.command_timeout = command_timeout;
        self
    }

    /// After a Redis failure, how long new flights skip Redis and deduplicate in-process
    /// only, before Redis is tried again (default 1 s). It keeps a down or stalled server
    /// from adding a command timeout to every call.
    ///
    /// ```
    /// # use oneflight_redis::{Fleet, redis};
    /// # use std::time::Duration;
    /// # let client = redis::Client::open("redis://127.0.0.1/").unwrap();
    /// let fleet: Fleet<u32> = Fleet::builder(client, "app").retry_redis_after(Duration::from_secs(2)).build();
    /// # drop(fleet);
    /// ```
    ///
    /// ```
    /// # use oneflight_redis::{Fleet, redis};
    /// # use std::time::Duration;
    /// # let client = redis::Client::open("redis://127.0.0.1/").unwrap();
    /// let fleet: Fleet<u32> = Fleet::builder(client, "app").retry_redis_after(Duration::from_secs(2)).build();
    /// # drop(fleet);
    /// ```
    pub fn retry_redis_after(mut self, retry_redis_after: Duration) -> Self {
        self.config.retry_redis_after = retry_redis_after;
        self
    }

    /// How values are encoded in Redis (default [`Codec::Postcard`]).
    ///
    /// ```
    /// # use oneflight_redis::{Fleet, redis};
    /// # let client = redis::Client::open("redis://127.0.0.1/").unwrap();
    /// let fleet: Fleet<u32> = Fleet::builder(client, "app").codec(oneflight_redis::Codec::Json).build();
    /// # drop(fleet);
    /// ```
    ///
    /// ```
    /// # use oneflight_redis::{Fleet, redis};
    /// # let client = redis::Client::open("redis://127.0.0.1/").unwrap();
    /// let fleet: Fleet<u32> = Fleet::builder(client, "app").codec(oneflight_redis::Codec::Json).build();
    /// # drop(fleet);
    /// ```
    pub fn codec(mut self, codec: Codec) -> Self {
        self.config.codec = codec;
        self
    }

    /// What [`Fleet::try_work`] does when Redis fails (default
    /// [`OnRedisError::Degrade`]).
    ///
    /// ```
    /// # use oneflight_redis::{Fleet, redis};
    /// # let client = redis::Client::open("redis://127.0.0.1/").unwrap();
    /// let fleet: Fleet<u32> = Fleet::builder(client, "app").on_redis_error(oneflight_redis::OnRedisError::Fail).build();
    /// # drop(fleet);
    /// ```
    ///
    /// ```
    /// # use oneflight_redis::{Fleet, redis};
    /// # let client = redis::Client::open("redis://127.0.0.1/").unwrap();
    /// let fleet: Fleet<u32> = Fleet::builder(client, "app").on_redis_error(oneflight_redis::OnRedisError::Fail).build();
    /// # drop(fleet);
    /// ```
    pub fn on_redis_error(mut self, on_redis_error: OnRedisError) -> Self {
        self.config.on_redis_error = on_redis_error;
        self
    }

    /// The fleet. Connects lazily, at its first call.
    ///
    /// ```
    /// # use oneflight_redis::{Fleet, redis};
    /// # let client = redis::Client::open("redis://127.0.0.1/").unwrap();
    /// let fleet: Fleet<u32> = Fleet::builder(client, "app").build();
    /// assert_eq!(fleet.stats().loads, 0);
    /// ```
    ///
    /// ```
    /// # use oneflight_redis::{Fleet, redis};
    /// # let client = redis::Client::open("redis://127.0.0.1/").unwrap();
    /// let fleet: Fleet<u32> = Fleet::builder(client, "app").build();
    /// assert_eq!(fleet.stats().loads, 0);
    /// ```
    pub fn build(self) -> Fleet<V> {
        Fleet::from_parts(self.client, &self.namespace, self.config)
    }
}
