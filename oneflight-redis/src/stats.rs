//! What a [`Fleet`](crate::Fleet) counts.

use std::sync::atomic::{AtomicU64, Ordering};

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

/// The live counters behind [`FleetStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) loads: AtomicU64,
    pub(crate) received: AtomicU64,
    pub(crate) takeovers: AtomicU64,
    pub(crate) fallbacks: AtomicU64,
    pub(crate) redis_errors: AtomicU64,
    pub(crate) timeouts: AtomicU64,
    pub(crate) disconnects: AtomicU64,
    pub(crate) answered: AtomicU64,
    pub(crate) late_publishes: AtomicU64,
    pub(crate) undecodable: AtomicU64,
    pub(crate) oversized: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a failed command by its kind.
    pub(crate) fn error(&self, kind: FleetErrorKind) {
        Self::add(&self.redis_errors);
        match kind {
            FleetErrorKind::Timeout => Self::add(&self.timeouts),
            FleetErrorKind::Disconnected => Self::add(&self.disconnects),
            FleetErrorKind::Answered => Self::add(&self.answered),
            FleetErrorKind::Undecodable | FleetErrorKind::Configuration => {}
        }
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
