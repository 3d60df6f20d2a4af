//! What a [`Fleet`](crate::Fleet) counts: [`FleetStats`] for `stats()`, and with the
//! `metrics` feature the same counts through the `metrics` facade, labelled with the
//! fleet's name (never with keys):
//!
//! | metric | labels | what |
//! | --- | --- | --- |
//! | `oneflight_fleet_loads_total` | `fleet` | loads started in this process |
//! | `oneflight_fleet_received_total` | `fleet` | values received from another process |
//! | `oneflight_fleet_takeovers_total` | `fleet` | flights taken over after a lost holder |
//! | `oneflight_fleet_fallbacks_total` | `fleet`, `reason` (`resting`, `redis_error`, `max_wait`) | loads without the fleet |
//! | `oneflight_fleet_redis_errors_total` | `fleet`, `kind` (as [`FleetErrorKind`]) | failed Redis commands |
//! | `oneflight_fleet_late_publishes_total` | `fleet` | publishes rejected after a lost lease |
//! | `oneflight_fleet_undecodable_total` | `fleet` | payloads that did not decode |
//! | `oneflight_fleet_oversized_total` | `fleet` | values over `max_value_size` |
//! | `oneflight_fleet_wait_seconds` | `fleet` | how long a waiting process waited, per flight |
//!
//! Handles are registered at their first use: install the recorder before.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::FleetErrorKind;

/// Counters of a [`Fleet`](crate::Fleet) since it was created, shared by its clones.
///
/// Each flight of this process counts once in `loads` or `received` (a caller that
/// gives up before either counts in neither); the other fields say how it went.
///
/// ```
/// let client = oneflight_redis::redis::Client::open("redis://127.0.0.1:1/").unwrap();
/// let fleet: oneflight_redis::Fleet<u32> = oneflight_redis::Fleet::new(client, "app");
/// assert_eq!(fleet.stats(), oneflight_redis::FleetStats::default());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct FleetStats {
    /// Loads started in this process: as the fleet's holder of a key, or alone when
    /// Redis could not help (those also count in `fallbacks`).
    pub loads: u64,
    /// Values received from another process's flight instead of loading.
    pub received: u64,
    /// Flights this process took over after the holder went away without a value
    /// (killed, paused past its lease, cancelled, panicked or failed). A flight started
    /// after the awaited value was published and had expired is not a takeover.
    pub takeovers: u64,
    /// Loads run with in-process deduplication only: Redis failed or was resting after
    /// repeated failures, or a wait on another process reached `max_wait`.
    pub fallbacks: u64,
    /// Redis commands that failed, whatever the kind, the renewals, releases and the
    /// pub/sub connection's included: the sum of `timeouts`, `disconnects`, `answered`
    /// and configuration errors.
    pub redis_errors: u64,
    /// Commands that Redis did not answer within the command timeout.
    pub timeouts: u64,
    /// Commands whose connection was refused, reset or closed.
    pub disconnects: u64,
    /// Errors that Redis answered (`MOVED`, `OOM`, `READONLY`, a script error, ...).
    /// Each kind is also reported once on standard error, with what to do.
    pub answered: u64,
    /// Values this process loaded as holder whose publish was rejected because its lease
    /// had passed to another flight (a holder paused past its lease). Its own callers
    /// still got the value.
    pub late_publishes: u64,
    /// Payloads found in Redis that did not decode (garbage, another envelope version,
    /// codec or value type, nested too deeply): treated as a miss.
    pub undecodable: u64,
    /// Values larger than the fleet's `max_value_size`: kept with the holder's own
    /// callers; the lease was released, and other processes loaded for themselves.
    pub oversized: u64,
}

/// Why a load ran without the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fallback {
    /// Redis was resting after unanswered commands.
    Resting,
    /// This flight's own command failed.
    RedisError,
    /// The wait on another process reached `max_wait`.
    MaxWait,
}

impl Fallback {
    #[cfg(any(feature = "metrics", feature = "tracing"))]
    pub(crate) fn label(self) -> &'static str {
        match self {
            Fallback::Resting => "resting",
            Fallback::RedisError => "redis_error",
            Fallback::MaxWait => "max_wait",
        }
    }
}

/// The live counters behind [`FleetStats`], and their metrics.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    loads: AtomicU64,
    received: AtomicU64,
    takeovers: AtomicU64,
    fallbacks: AtomicU64,
    redis_errors: AtomicU64,
    timeouts: AtomicU64,
    disconnects: AtomicU64,
    answered: AtomicU64,
    late_publishes: AtomicU64,
    undecodable: AtomicU64,
    oversized: AtomicU64,
    #[cfg(feature = "metrics")]
    meters: meters::Meters,
}

fn add(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    /// Counters whose metrics carry the label `fleet = name`.
    pub(crate) fn new(name: &str) -> Self {
        let _ = name;
        Counters {
            #[cfg(feature = "metrics")]
            meters: meters::Meters::new(name),
            ..Counters::default()
        }
    }

    pub(crate) fn loaded(&self) {
        add(&self.loads);
        #[cfg(feature = "metrics")]
        self.meters.get().loads.increment(1);
    }

    pub(crate) fn received(&self) {
        add(&self.received);
        #[cfg(feature = "metrics")]
        self.meters.get().received.increment(1);
    }

    pub(crate) fn took_over(&self) {
        add(&self.takeovers);
        #[cfg(feature = "metrics")]
        self.meters.get().takeovers.increment(1);
    }

    /// A load without the fleet, for `reason`: counts in `loads` and `fallbacks`.
    pub(crate) fn fell_back(&self, reason: Fallback) {
        self.loaded();
        add(&self.fallbacks);
        #[cfg(feature = "metrics")]
        self.meters.fallback(reason).increment(1);
        let _ = reason;
    }

    /// Counts a failed command by its kind.
    pub(crate) fn error(&self, kind: FleetErrorKind) {
        add(&self.redis_errors);
        match kind {
            FleetErrorKind::Timeout => add(&self.timeouts),
            FleetErrorKind::Disconnected => add(&self.disconnects),
            FleetErrorKind::Answered => add(&self.answered),
            FleetErrorKind::Undecodable | FleetErrorKind::Configuration => {}
        }
        #[cfg(feature = "metrics")]
        self.meters.error(kind).increment(1);
    }

    pub(crate) fn late_publish(&self) {
        add(&self.late_publishes);
        #[cfg(feature = "metrics")]
        self.meters.get().late_publishes.increment(1);
    }

    pub(crate) fn undecodable(&self) {
        add(&self.undecodable);
        #[cfg(feature = "metrics")]
        self.meters.get().undecodable.increment(1);
    }

    pub(crate) fn oversized(&self) {
        add(&self.oversized);
        #[cfg(feature = "metrics")]
        self.meters.get().oversized.increment(1);
    }

    /// A waiting process's wait on another's flight ended (a value, a takeover, or
    /// `max_wait`).
    pub(crate) fn waited(&self, since: Instant) {
        #[cfg(feature = "metrics")]
        self.meters.get().wait.record(since.elapsed().as_secs_f64());
        let _ = since;
    }

    pub(crate) fn snapshot(&self) -> FleetStats {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        FleetStats {
            loads: read(&self.loads),
            received: read(&self.received),
            takeovers: read(&self.takeovers),
            fallbacks: read(&self.fallbacks),
            redis_errors: read(&self.redis_errors),
            timeouts: read(&self.timeouts),
            disconnects: read(&self.disconnects),
            answered: read(&self.answered),
            late_publishes: read(&self.late_publishes),
            undecodable: read(&self.undecodable),
            oversized: read(&self.oversized),
        }
    }
}

#[cfg(feature = "metrics")]
mod meters {
    use metrics::{Counter, Histogram, counter, histogram};
    use std::sync::OnceLock;

    use super::Fallback;
    use crate::FleetErrorKind;

    /// The fleet's metric handles, registered at first use.
    #[derive(Debug, Default)]
    pub(super) struct Meters {
        fleet: String,
        handles: OnceLock<Handles>,
    }

    #[derive(Debug)]
    pub(super) struct Handles {
        pub(super) loads: Counter,
        pub(super) received: Counter,
        pub(super) takeovers: Counter,
        pub(super) fallbacks: [Counter; 3],
        pub(super) errors: [Counter; 5],
        pub(super) late_publishes: Counter,
        pub(super) undecodable: Counter,
        pub(super) oversized: Counter,
        pub(super) wait: Histogram,
    }

    const KINDS: [(FleetErrorKind, &str); 5] = [
        (FleetErrorKind::Timeout, "timeout"),
        (FleetErrorKind::Disconnected, "disconnected"),
        (FleetErrorKind::Answered, "answered"),
        (FleetErrorKind::Undecodable, "undecodable"),
        (FleetErrorKind::Configuration, "configuration"),
    ];
    const REASONS: [Fallback; 3] = [Fallback::Resting, Fallback::RedisError, Fallback::MaxWait];

    impl Meters {
        pub(super) fn new(fleet: &str) -> Self {
            Meters {
                fleet: fleet.to_owned(),
                handles: OnceLock::new(),
            }
        }

        pub(super) fn get(&self) -> &Handles {
            self.handles.get_or_init(|| {
                let fleet = self.fleet.clone();
                let total = |name: &'static str| counter!(name, "fleet" => fleet.clone());
                Handles {
                    loads: total("oneflight_fleet_loads_total"),
                    received: total("oneflight_fleet_received_total"),
                    takeovers: total("oneflight_fleet_takeovers_total"),
                    fallbacks: REASONS.map(|reason| {
                        counter!("oneflight_fleet_fallbacks_total", "fleet" => fleet.clone(), "reason" => reason.label())
                    }),
                    errors: KINDS.map(|(_, kind)| {
                        counter!("oneflight_fleet_redis_errors_total", "fleet" => fleet.clone(), "kind" => kind)
                    }),
                    late_publishes: total("oneflight_fleet_late_publishes_total"),
                    undecodable: total("oneflight_fleet_undecodable_total"),
                    oversized: total("oneflight_fleet_oversized_total"),
                    wait: histogram!("oneflight_fleet_wait_seconds", "fleet" => fleet.clone()),
                }
            })
        }

        pub(super) fn fallback(&self, reason: Fallback) -> &Counter {
            let at = REASONS
                .iter()
                .position(|r| *r == reason)
                .expect("every reason");
            &self.get().fallbacks[at]
        }

        pub(super) fn error(&self, kind: FleetErrorKind) -> &Counter {
            let at = KINDS
                .iter()
                .position(|(k, _)| *k == kind)
                .expect("every kind");
            &self.get().errors[at]
        }
    }
}
