//! [`FleetBuilder`]: the fleet's durations, sizes and codec, with their defaults, checked
//! together at `build`.

use std::marker::PhantomData;
use std::time::Duration;

use crate::{Backend, Codec, Fleet};

/// The settings of a fleet, fixed at build.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) lease: Duration,
    pub(crate) poll_interval: Duration,
    pub(crate) max_wait: Duration,
    pub(crate) command_timeout: Duration,
    pub(crate) retry_redis_after: Duration,
    pub(crate) max_value_size: usize,
    pub(crate) codec: Codec,
    /// The fleet's name in spans and metric labels; the namespace unless set.
    pub(crate) name: String,
    /// Whether spans record keys.
    pub(crate) record_keys: bool,
    /// For a [`Cache`](crate::Cache)'s flights: how long a published value is kept, as
    /// the cached value (`fresh_for + stale_for`); `None` for a fleet, whose values are
    /// kept only for waiters (see [`Config::retention`]).
    pub(crate) cache_for: Option<Duration>,
}

/// The largest `max_value_size`: Redis's default `proto-max-bulk-len`.
const LARGEST_VALUE: usize = 512 * 1024 * 1024;

impl Default for Config {
    fn default() -> Self {
        Config {
            lease: Duration::from_secs(5),
            poll_interval: Duration::from_millis(250),
            max_wait: Duration::from_secs(30),
            command_timeout: Duration::from_secs(1),
            retry_redis_after: Duration::from_secs(1),
            max_value_size: 16 * 1024 * 1024,
            codec: Codec::Postcard,
            name: String::new(),
            record_keys: true,
            cache_for: None,
        }
    }
}

impl Config {
    /// How long a published value is kept for waiters that poll: a lease, and one poll
    /// interval more, so that a waiter that saw the lease held at its last poll finds
    /// the value at its next one.
    /// A cache keeps it as its cached value instead.
    pub(crate) fn retention(&self) -> Duration {
        self.cache_for
            .unwrap_or_else(|| self.lease.saturating_add(self.poll_interval))
    }

    /// Panics, naming the setting, when the settings cannot work together.
    fn check(&self) {
        let Config {
            lease,
            poll_interval,
            command_timeout,
            max_value_size,
            ..
        } = *self;
        assert!(
            lease >= Duration::from_millis(6),
            "oneflight-redis: `lease` is {lease:?}; it must be at least 6 ms (it is renewed \
             every third of it, retried every sixth)"
        );
        assert!(
            !poll_interval.is_zero() && poll_interval < lease,
            "oneflight-redis: `poll_interval` is {poll_interval:?}; it must be above zero and \
             shorter than the lease ({lease:?}), or waiters would wake too late to find a \
             published value or take over an expired lease"
        );
        assert!(
            !command_timeout.is_zero(),
            "oneflight-redis: `command_timeout` must be above zero"
        );
        assert!(
            (1..=LARGEST_VALUE).contains(&max_value_size),
            "oneflight-redis: `max_value_size` is {max_value_size} bytes; it must be between 1 \
             and {LARGEST_VALUE} (Redis's default proto-max-bulk-len)"
        );
    }
}

/// Builds a [`Fleet`] with settings other than the defaults. `build` checks them
/// together; a `Duration::MAX` means "no limit" wherever a limit makes sense (`max_wait`,
/// `retry_redis_after`, `lease`).
///
/// ```
/// use oneflight_redis::{Fleet, redis};
/// use std::time::Duration;
///
/// let client = redis::Client::open("redis://127.0.0.1/").unwrap();
/// let fleet: Fleet<String> = Fleet::builder(client, "profiles")
///     .lease(Duration::from_secs(10))          // loads can take a while
///     .poll_interval(Duration::from_millis(100))
///     .max_wait(Duration::from_secs(2))        // a web handler's budget
///     .build();
/// # drop(fleet);
/// ```
#[derive(Debug)]
#[must_use = "a builder does nothing until `.build()`"]
pub struct FleetBuilder<V> {
    backend: Backend,
    namespace: String,
    pub(crate) config: Config,
    value: PhantomData<fn() -> V>,
}

impl<V> FleetBuilder<V> {
    pub(crate) fn new(backend: Backend, namespace: &str) -> Self {
        FleetBuilder {
            backend,
            namespace: namespace.to_owned(),
            config: Config {
                name: namespace.to_owned(),
                ..Config::default()
            },
            value: PhantomData,
        }
    }

    /// How long a holder's claim on a key lasts without renewal (default 5 s). The holder
    /// renews it every third of it while its load runs, and after a failed renewal
    /// retries every sixth, so that two failed renewals in a row are survived. A holder
    /// that dies is replaced after at most this long (plus one poll interval). Choose it
    /// well above a renewal's worst round trip, and know that a holder paused longer than
    /// this (GC, swap, SIGSTOP) is no longer alone: see the crate docs on fencing.
    /// At least 6 ms, and longer than `poll_interval`.
    ///
    /// ```
    /// # use oneflight_redis::{Fleet, redis};
    /// # use std::time::Duration;
    /// # let client = redis::Client::open("redis://127.0.0.1/").unwrap();
    /// let fleet: Fleet<u32> = Fleet::builder(client, "app").lease(Duration::from_secs(10)).build();
    /// # drop(fleet);
    /// ```
    pub fn lease(mut self, lease: Duration) -> Self {
        self.config.lease = lease;
        self
    }

    /// How often a waiting process checks Redis when no pub/sub hint came (default
    /// 250 ms). It bounds how long a lost hint can delay a waiter, and how late a takeover
    /// starts after a lease expired; each check is one Redis command per waiting process.
    /// Above zero, and shorter than the lease.
    ///
    /// ```
    /// # use oneflight_redis::{Fleet, redis};
    /// # use std::time::Duration;
    /// # let client = redis::Client::open("redis://127.0.0.1/").unwrap();
    /// let fleet: Fleet<u32> = Fleet::builder(client, "app").poll_interval(Duration::from_millis(100)).build();
    /// # drop(fleet);
    /// ```
    pub fn poll_interval(mut self, poll_interval: Duration) -> Self {
        self.config.poll_interval = poll_interval;
        self
    }

    /// How long a caller waits on another process's flight before it loads the value
    /// itself, without the fleet (default 30 s; `Duration::MAX`: no limit).
    ///
    /// In a request handler, choose it from the request's budget: a little under the
    /// time your handler may spend waiting for the value, so that when the holder is slow
    /// a caller still answers in time, with a value it loaded itself. A holder that died
    /// is replaced after `lease + poll_interval` anyway; `max_wait` is for holders that
    /// are alive but slow.
    ///
    /// ```
    /// # use oneflight_redis::{Fleet, redis};
    /// # use std::time::Duration;
    /// # let client = redis::Client::open("redis://127.0.0.1/").unwrap();
    /// let fleet: Fleet<u32> = Fleet::builder(client, "app").max_wait(Duration::from_secs(2)).build();
    /// # drop(fleet);
    /// ```
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.config.max_wait = max_wait;
        self
    }

    /// How long any one Redis command (connecting included) may take before it counts as
    /// failed (default 1 s). Values over 64 KiB get more time, by their size (2 s more
    /// for 16 MiB), on a connection of their own.
    ///
    /// ```
    /// # use oneflight_redis::{Fleet, redis};
    /// # use std::time::Duration;
    /// # let client = redis::Client::open("redis://127.0.0.1/").unwrap();
    /// let fleet: Fleet<u32> = Fleet::builder(client, "app").command_timeout(Duration::from_millis(300)).build();
    /// # drop(fleet);
    /// ```
    pub fn command_timeout(mut self, command_timeout: Duration) -> Self {
        self.config.command_timeout = command_timeout;
        self
    }

    /// After two Redis commands in a row went unanswered (a timeout, a lost connection),
    /// how long new flights skip Redis and deduplicate in-process only, before Redis is
    /// tried again (default 1 s; `Duration::MAX`: never again). It keeps a down or stalled
    /// server from adding a command timeout to every call. Errors that Redis answers
    /// (`OOM`, `WRONGTYPE`, ...) never start a rest.
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

    /// The largest encoded value shared through Redis (default 16 MiB, at most 512 MiB).
    /// A larger value stays with the holder's own callers: its lease is released, other
    /// processes load for themselves, and [`FleetStats::oversized`](crate::FleetStats)
    /// counts it.
    ///
    /// ```
    /// # use oneflight_redis::{Fleet, redis};
    /// # use std::time::Duration;
    /// # let client = redis::Client::open("redis://127.0.0.1/").unwrap();
    /// let fleet: Fleet<u32> = Fleet::builder(client, "app").max_value_size(64 * 1024 * 1024).build();
    /// # drop(fleet);
    /// ```
    pub fn max_value_size(mut self, bytes: usize) -> Self {
        self.config.max_value_size = bytes;
        self
    }

    /// How values are encoded in Redis (default [`Codec::Postcard`]).
    ///
    /// ```
    /// # use oneflight_redis::{Fleet, redis};
    /// # use std::time::Duration;
    /// # let client = redis::Client::open("redis://127.0.0.1/").unwrap();
    /// let fleet: Fleet<u32> = Fleet::builder(client, "app").codec(oneflight_redis::Codec::Json).build();
    /// # drop(fleet);
    /// ```
    pub fn codec(mut self, codec: Codec) -> Self {
        self.config.codec = codec;
        self
    }

    /// The fleet's name in `tracing` spans and `metrics` labels (default: the namespace).
    /// Name fleets after the kind of work, a bounded set: it becomes a label.
    ///
    /// ```
    /// # use oneflight_redis::{Fleet, redis};
    /// # let client = redis::Client::open("redis://127.0.0.1/").unwrap();
    /// let fleet: Fleet<u32> = Fleet::builder(client, "app:v2").name("app").build();
    /// # drop(fleet);
    /// ```
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = name.into();
        self
    }

    /// Whether `tracing` spans record the key (default `true`). Turn it off when keys
    /// hold what must not reach your logs (emails, tokens).
    ///
    /// ```
    /// # use oneflight_redis::{Fleet, redis};
    /// # let client = redis::Client::open("redis://127.0.0.1/").unwrap();
    /// let fleet: Fleet<u32> = Fleet::builder(client, "sessions").record_keys(false).build();
    /// # drop(fleet);
    /// ```
    pub fn record_keys(mut self, record_keys: bool) -> Self {
        self.config.record_keys = record_keys;
        self
    }

    /// The fleet. Connects lazily, at its first call.
    ///
    /// # Panics
    ///
    /// When the settings cannot work together, with a message that names the setting:
    /// a lease under 6 ms, a poll interval that is zero or not shorter than the lease, a
    /// zero command timeout, a `max_value_size` of 0 or over 512 MiB.
    ///
    /// ```should_panic
    /// # use oneflight_redis::{Fleet, redis};
    /// # use std::time::Duration;
    /// # let client = redis::Client::open("redis://127.0.0.1/").unwrap();
    /// // panics: "`poll_interval` is 2s; it must be ... shorter than the lease (1s)"
    /// let fleet: Fleet<u32> = Fleet::builder(client, "app")
    ///     .lease(Duration::from_secs(1))
    ///     .poll_interval(Duration::from_secs(2))
    ///     .build();
    /// ```
    pub fn build(mut self) -> Fleet<V> {
        self.config.check();
        // "No limit" for a command is a day: the clients' own timers then never overflow.
        self.config.command_timeout = self.config.command_timeout.min(Duration::from_secs(86_400));
        Fleet::from_parts(self.backend, &self.namespace, self.config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(configure: impl FnOnce(FleetBuilder<u8>) -> FleetBuilder<u8>) -> Result<(), String> {
        let client = redis::Client::open("redis://127.0.0.1:1/").unwrap();
        let builder = configure(FleetBuilder::new(client.into(), "n"));
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(builder.build()))).map_err(
            |panic| match panic.downcast::<String>() {
                Ok(message) => *message,
                Err(panic) => panic
                    .downcast_ref::<&str>()
                    .map(|m| m.to_string())
                    .unwrap_or_default(),
            },
        )
    }

    #[test]
    fn settings_that_cannot_work_are_rejected_naming_the_setting() {
        let ms = Duration::from_millis;
        type Configure = Box<dyn FnOnce(FleetBuilder<u8>) -> FleetBuilder<u8>>;
        let cases: [(&str, Configure); 6] = [
            ("`lease`", Box::new(move |b| b.lease(ms(5)))),
            (
                "`poll_interval`",
                Box::new(move |b| b.lease(ms(100)).poll_interval(ms(100))),
            ),
            (
                "`poll_interval`",
                Box::new(move |b| b.poll_interval(Duration::ZERO)),
            ),
            (
                "`command_timeout`",
                Box::new(move |b| b.command_timeout(Duration::ZERO)),
            ),
            ("`max_value_size`", Box::new(|b| b.max_value_size(0))),
            (
                "`max_value_size`",
                Box::new(|b| b.max_value_size(LARGEST_VALUE + 1)),
            ),
        ];
        for (setting, configure) in cases {
            let message = build(configure).expect_err(setting);
            assert!(message.contains(setting), "{setting}: {message}");
        }
    }

    #[test]
    fn duration_max_means_no_limit_and_builds() {
        build(|b| {
            b.max_wait(Duration::MAX)
                .retry_redis_after(Duration::MAX)
                .lease(Duration::MAX)
                .poll_interval(Duration::from_secs(3600))
                .command_timeout(Duration::MAX)
        })
        .unwrap();
        assert_eq!(
            Config {
                lease: Duration::MAX,
                ..Config::default()
            }
            .retention(),
            Duration::MAX
        );
    }
}
