//! What a cache stores for a key, and what a lookup makes of it: fresh, due for an early
//! refresh (XFetch), stale, or missing.

use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A cached value, with when it was loaded (the loading process's clock, milliseconds
/// since the Unix epoch; for people, never compared across processes) and how long its
/// load took (XFetch's `delta`). The fleet's envelope carries it, and its type name (with
/// `V`'s) is the envelope's fingerprint: two value types never mix.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Cached<V> {
    pub(crate) loaded_at_ms: u64,
    pub(crate) load_ms: u64,
    pub(crate) value: V,
}

impl<V> Cached<V> {
    /// `value`, loaded just now in `load`.
    pub(crate) fn new(value: V, load: Duration) -> Self {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Cached {
            loaded_at_ms: u64::try_from(now.as_millis()).unwrap_or(u64::MAX),
            load_ms: u64::try_from(load.as_millis()).unwrap_or(u64::MAX),
            value,
        }
    }
}

/// What a lookup found.
#[derive(Debug, Clone)]
pub(crate) enum Found<V> {
    /// A fresh value: served, nothing loaded.
    Fresh(V),
    /// A fresh value whose early refresh XFetch drew: served, and refreshed in the
    /// background.
    Early(V),
    /// A stale value (fresh for less than `stale_for` more): served, and refreshed in
    /// the background.
    Stale(V),
    /// Nothing (or nothing usable): the caller's flight loads it.
    Missing,
}

/// How a cache judges a value by the time it has left in Redis.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Freshness {
    pub(crate) stale_for: Duration,
    pub(crate) early_refresh: bool,
}

impl Freshness {
    /// Judges `cached`, with `left` before Redis drops it (its TTL, set to
    /// `fresh_for + stale_for` when it was stored). `draw` is a uniform sample in (0, 1].
    ///
    /// XFetch (Vattani, Chierichetti, Lowenstein, VLDB 2015), with β = 1: refresh early
    /// when `now - delta * ln(draw) >= expiry`, that is when `delta * -ln(draw)` reaches
    /// the fresh time left. The closer the expiry and the longer the load, the likelier;
    /// under steady traffic one caller refreshes shortly before the expiry, so that
    /// almost nobody meets an expired key.
    pub(crate) fn judge<V>(self, cached: Cached<V>, left: Duration, draw: f64) -> Found<V> {
        let Some(fresh_left) = left.checked_sub(self.stale_for).filter(|d| !d.is_zero()) else {
            return Found::Stale(cached.value);
        };
        if self.early_refresh {
            let delta = cached.load_ms as f64 / 1000.0;
            if delta * -draw.ln() >= fresh_left.as_secs_f64() {
                return Found::Early(cached.value);
            }
        }
        Found::Fresh(cached.value)
    }
}

/// A uniform sample in (0, 1], from the standard library's randomly keyed hasher (no
/// extra dependency: XFetch needs a fair coin, not a secret).
pub(crate) fn draw() -> f64 {
    use std::hash::{BuildHasher, RandomState};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let bits = RandomState::new().hash_one(COUNTER.fetch_add(1, Ordering::Relaxed)) >> 11;
    (bits as f64 + 1.0) / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cached(load_ms: u64) -> Cached<u8> {
        Cached {
            loaded_at_ms: 0,
            load_ms,
            value: 7,
        }
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn fresh_stale_and_early_by_the_time_left() {
        let judge = |early_refresh, left, draw| {
            Freshness {
                stale_for: 2 * SECOND,
                early_refresh,
            }
            .judge(cached(300), left, draw)
        };
        // 10 s left, 2 s of them stale: fresh, and no draw makes a 0.3 s load due.
        assert!(matches!(judge(true, 10 * SECOND, 0.5), Found::Fresh(7)));
        // Within the last 2 s: stale.
        assert!(matches!(judge(true, SECOND, 0.5), Found::Stale(7)));
        assert!(matches!(judge(false, 2 * SECOND, 0.5), Found::Stale(7)));
        // 0.1 s of fresh time left, a 0.3 s load: due unless the draw is very lucky
        // (-ln(0.5) * 0.3 = 0.21 >= 0.1; -ln(0.9) * 0.3 = 0.03 < 0.1).
        let fresh_left = 2 * SECOND + Duration::from_millis(100);
        assert!(matches!(judge(true, fresh_left, 0.5), Found::Early(7)));
        assert!(matches!(judge(true, fresh_left, 0.9), Found::Fresh(7)));
        assert!(matches!(judge(false, fresh_left, 0.5), Found::Fresh(7)));
    }

    #[test]
    fn draws_are_in_the_unit_interval_and_vary() {
        let draws: Vec<f64> = (0..1000).map(|_| draw()).collect();
        assert!(draws.iter().all(|d| *d > 0.0 && *d <= 1.0));
        let mean = draws.iter().sum::<f64>() / 1000.0;
        assert!((0.4..0.6).contains(&mean), "mean {mean}");
    }
}
