//! What a [`Fleet`](crate::Fleet) counts.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of a [`Fleet`](crate::Fleet) since it was created, shared by its clones.
///
/// Each flight of this process counts once in `loads` or `received`; the other fields
/// say how it went.
///
/// ```
/// let client = oneflight_redis::redis::Client::open("redis://127.0.0.1:1/").unwrap();
/// let fleet: oneflight_redis::Fleet<u32> = oneflight_redis::Fleet::new(client, "app");
/// assert_eq!(fleet.stats(), oneflight_redis::FleetStats::default());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct FleetStats {
    /// Loads run in this process: as the fleet's holder of a key, or alone when Redis
    /// could not help.
    pub loads: u64,
    /// Values received from another process's flight instead of loading.
    pub received: u64,
    /// Flights this process took over after the holder went away (killed, paused past
    /// its lease, cancelled, panicked or failed).
    pub takeovers: u64,
    /// Loads run with in-process deduplication only: Redis failed or was being given
    /// time to recover, or a wait on another process reached `max_wait`.
    pub fallbacks: u64,
    /// Redis commands that failed or timed out.
    pub redis_errors: u64,
    /// Values this process loaded as holder whose publish was rejected because its lease
    /// had passed to another flight (a holder paused past its lease). Its own callers
    /// still got the value.
    pub late_publishes: u64,
    /// Payloads found in Redis that did not decode (garbage, another envelope version or
    /// codec): treated as a miss.
    pub undecodable: u64,
}

/// The live counters behind [`FleetStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) loads: AtomicU64,
    pub(crate) received: AtomicU64,
    pub(crate) takeovers: AtomicU64,
    pub(crate) fallbacks: AtomicU64,
    pub(crate) redis_errors: AtomicU64,
    pub(crate) late_publishes: AtomicU64,
    pub(crate) undecodable: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> FleetStats {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        FleetStats {
            loads: read(&self.loads),
            received: read(&self.received),
            takeovers: read(&self.takeovers),
            fallbacks: read(&self.fallbacks),
            redis_errors: read(&self.redis_errors),
            late_publishes: read(&self.late_publishes),
            undecodable: read(&self.undecodable),
        }
    }
}
