//! The peers, behind one interface: oneflight, `singleflight-async`, `async_singleflight`,
//! `uniflight`, a `Shared` future in a `Mutex<HashMap>`, moka's `get_with`, and the
//! one-key floor.

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use std::collections::HashMap;
use std::future::{Future, poll_fn};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};

/// A singleflight implementation as the scenarios use it.
pub(crate) trait Peer<Q: ?Sized>: Send + Sync + 'static {
    const NAME: &'static str;
    fn create() -> Self;
    /// As `mixed` uses it: where `create` gives a cache, one that measures coalescing.
    fn create_for_mixed() -> Self
    where
        Self: Sized,
    {
        Self::create()
    }
    fn call<'a, F>(&'a self, key: &'a Q, fut: F) -> impl Future<Output = u64> + Send + 'a
    where
        F: Future<Output = u64> + Send + 'static;
    /// Before each gated batch: a cache forgets its values, so that every batch is a cold
    /// miss.
    fn reset(&self) {}
}

/// The bounds a key type needs for every peer: `str` (owned as `String`) and `u64`.
pub(crate) trait Key: std::hash::Hash + Eq + ToOwned + Sync + 'static {}

impl<Q> Key for Q
where
    Q: ?Sized + std::hash::Hash + Eq + ToOwned + Sync + 'static,
    Q::Owned: std::hash::Hash + Eq + Clone + std::borrow::Borrow<Q> + Send + Sync + 'static,
{
}

/// `Peer` for a `Group` of the core crate `$krate` (the plain build, or one of the
/// builds with an observability feature on), named `$name`.
macro_rules! oneflight_peer {
    ($krate:ident, $name:literal) => {
        impl<Q> Peer<Q> for $krate::Group<Q::Owned, u64>
        where
            Q: ?Sized + Key,
            Q::Owned: std::hash::Hash + Eq + std::borrow::Borrow<Q> + Send + Sync + 'static,
        {
            const NAME: &'static str = $name;
            fn create() -> Self {
                $krate::Group::new()
            }
            fn call<'a, F>(&'a self, key: &'a Q, fut: F) -> impl Future<Output = u64> + Send + 'a
            where
                F: Future<Output = u64> + Send + 'static,
            {
                self.work(key, fut)
            }
        }
    };
}
oneflight_peer!(oneflight, "oneflight");
oneflight_peer!(oneflight_traced, "oneflight, tracing on, no subscriber");
oneflight_peer!(oneflight_metered, "oneflight, metrics on, no recorder");

impl<Q> Peer<Q> for singleflight_async::SingleFlight<Q::Owned, u64>
where
    Q: ?Sized + Key,
    Q::Owned: std::hash::Hash + Eq + Clone + Send + Sync + 'static,
{
    const NAME: &'static str = "singleflight-async";
    fn create() -> Self {
        singleflight_async::SingleFlight::new()
    }
    fn call<'a, F>(&'a self, key: &'a Q, fut: F) -> impl Future<Output = u64> + Send + 'a
    where
        F: Future<Output = u64> + Send + 'static,
    {
        self.work(key.to_owned(), move || fut)
    }
}

impl<Q> Peer<Q> for async_singleflight::UnaryGroup<Q::Owned, u64>
where
    Q: ?Sized + Key + Send,
    Q::Owned: std::hash::Hash + Eq + std::borrow::Borrow<Q> + Send + Sync + 'static,
{
    const NAME: &'static str = "async_singleflight";
    fn create() -> Self {
        async_singleflight::UnaryGroup::new()
    }
    fn call<'a, F>(&'a self, key: &'a Q, fut: F) -> impl Future<Output = u64> + Send + 'a
    where
        F: Future<Output = u64> + Send + 'static,
    {
        self.work(key, fut)
    }
}

impl<Q> Peer<Q> for uniflight::Merger<Q::Owned, u64>
where
    Q: ?Sized + Key,
    Q::Owned: std::hash::Hash + Eq + std::borrow::Borrow<Q> + Send + Sync + 'static,
{
    const NAME: &'static str = "uniflight";
    fn create() -> Self {
        uniflight::Merger::new()
    }
    fn call<'a, F>(&'a self, key: &'a Q, fut: F) -> impl Future<Output = u64> + Send + 'a
    where
        F: Future<Output = u64> + Send + 'static,
    {
        self.execute(key, move || fut)
            .map(|r| r.expect("no panics here"))
    }
}

/// The hand-rolled alternative: a `Shared` future per key in a `Mutex<HashMap>`.
pub(crate) struct SharedMap<K> {
    map: Mutex<HashMap<K, Shared<BoxFuture<'static, u64>>>>,
}

impl<K> SharedMap<K>
where
    K: std::hash::Hash + Eq + Send + 'static,
{
    async fn call_with<Q>(&self, key: &Q, fut: BoxFuture<'static, u64>) -> u64
    where
        Q: ?Sized + std::hash::Hash + Eq + ToOwned<Owned = K>,
        K: std::borrow::Borrow<Q>,
    {
        let shared = {
            let mut map = self.map.lock().unwrap();
            match map.get(key) {
                Some(shared) => shared.clone(),
                None => {
                    let shared = fut.shared();
                    map.insert(key.to_owned(), shared.clone());
                    shared
                }
            }
        };
        let value = shared.clone().await;
        let mut map = self.map.lock().unwrap();
        if map.get(key).is_some_and(|current| current.ptr_eq(&shared)) {
            map.remove(key);
        }
        value
    }
}

impl<Q> Peer<Q> for SharedMap<Q::Owned>
where
    Q: ?Sized + Key,
    Q::Owned: std::hash::Hash + Eq + std::borrow::Borrow<Q> + Send + 'static,
{
    const NAME: &'static str = "Shared-in-Mutex-HashMap";
    fn create() -> Self {
        SharedMap {
            map: Mutex::default(),
        }
    }
    fn call<'a, F>(&'a self, key: &'a Q, fut: F) -> impl Future<Output = u64> + Send + 'a
    where
        F: Future<Output = u64> + Send + 'static,
    {
        self.call_with(key, fut.boxed())
    }
}

/// The floor under gated fan-in, as a singleflight that needs no key: one lock decides who
/// runs, the others wait on one `event-listener` event and read the value once, as
/// oneflight's `work` followers do. No hashing, no map, no hand-over. What any design
/// pays per caller in the same harness, beyond its spawn.
pub(crate) struct OneKeyFloor {
    flight: Mutex<Option<Arc<OneFlight>>>,
}

/// The one flight of [`OneKeyFloor`].
pub(crate) struct OneFlight {
    value: std::sync::OnceLock<u64>,
    event: event_listener::Event,
}

pub(crate) const ONE_KEY_FLOOR: &str = "floor-one-key";

impl Peer<str> for OneKeyFloor {
    const NAME: &'static str = ONE_KEY_FLOOR;
    fn create() -> Self {
        OneKeyFloor {
            flight: Mutex::new(None),
        }
    }
    async fn call<'a, F>(&'a self, _key: &'a str, fut: F) -> u64
    where
        F: Future<Output = u64> + Send + 'static,
    {
        let (flight, runs) = {
            let mut slot = self.flight.lock().unwrap();
            match &*slot {
                Some(flight) => (flight.clone(), false),
                None => {
                    let flight = Arc::new(OneFlight {
                        value: std::sync::OnceLock::new(),
                        event: event_listener::Event::new(),
                    });
                    *slot = Some(flight.clone());
                    (flight, true)
                }
            }
        };
        if runs {
            let value = fut.await;
            let _ = flight.value.set(value);
            *self.flight.lock().unwrap() = None;
            flight.event.notify(usize::MAX);
            return value;
        }
        drop(fut);
        loop {
            if let Some(value) = flight.value.get() {
                return *value;
            }
            event_listener::listener!(flight.event => listener);
            if flight.value.get().is_none() {
                listener.await;
            }
        }
    }
}

/// The floor under gated fan-in for a design like oneflight's: the one-key singleflight
/// of [`OneKeyFloor`], but its waiting callers leave their wakers in a list under the one
/// lock they take anyway, which the runner takes out and wakes after unlocking. (The
/// harness's tasks keep their wakers, so a waiter registers once.)
pub(crate) struct OneKeyWakerFloor {
    flight: Mutex<Option<WakerFlight>>,
}

/// The one flight of [`OneKeyWakerFloor`].
struct WakerFlight {
    value: Arc<std::sync::OnceLock<u64>>,
    wakers: Vec<Waker>,
}

pub(crate) const ONE_KEY_WAKER_FLOOR: &str = "floor-one-key-waker-list";

impl Peer<str> for OneKeyWakerFloor {
    const NAME: &'static str = ONE_KEY_WAKER_FLOOR;
    fn create() -> Self {
        OneKeyWakerFloor {
            flight: Mutex::new(None),
        }
    }
    async fn call<'a, F>(&'a self, _key: &'a str, fut: F) -> u64
    where
        F: Future<Output = u64> + Send + 'static,
    {
        let mut waiting: Option<Arc<std::sync::OnceLock<u64>>> = None;
        let runs = poll_fn(|cx| {
            if let Some(value) = &waiting {
                return match value.get() {
                    Some(&value) => Poll::Ready(Some(value)),
                    None => Poll::Pending,
                };
            }
            let mut slot = self.flight.lock().unwrap();
            match &mut *slot {
                Some(flight) => {
                    flight.wakers.push(cx.waker().clone());
                    waiting = Some(flight.value.clone());
                    Poll::Pending
                }
                None => {
                    *slot = Some(WakerFlight {
                        value: Arc::default(),
                        wakers: Vec::new(),
                    });
                    Poll::Ready(None)
                }
            }
        })
        .await;
        if let Some(value) = runs {
            drop(fut);
            return value;
        }
        let value = fut.await;
        let flight = self
            .flight
            .lock()
            .unwrap()
            .take()
            .expect("the runner's flight");
        let _ = flight.value.set(value);
        for waker in flight.wakers {
            waker.wake();
        }
        value
    }
}

/// moka 0.12's `future::Cache::get_with`, which users pick for "load once per cold key".
/// In gated fan-in the cache is emptied before each batch (`reset`), so that every batch
/// is a cold miss; in `mixed` each call invalidates its key once it has its value, so that
/// the scenario measures coalescing, not caching.
pub(crate) struct Moka {
    cache: moka::future::Cache<String, u64>,
    invalidate_each_call: bool,
}

impl Peer<str> for Moka {
    const NAME: &'static str = "moka get_with";
    fn create() -> Self {
        Moka {
            cache: moka::future::Cache::new(10_000),
            invalidate_each_call: false,
        }
    }
    fn create_for_mixed() -> Self {
        Moka {
            invalidate_each_call: true,
            ..Self::create()
        }
    }
    async fn call<'a, F>(&'a self, key: &'a str, fut: F) -> u64
    where
        F: Future<Output = u64> + Send + 'static,
    {
        let value = self.cache.get_with_by_ref(key, fut).await;
        if self.invalidate_each_call {
            self.cache.invalidate(key).await;
        }
        value
    }
    fn reset(&self) {
        self.cache.invalidate_all();
    }
}

/// `[f::<P>(args), ...]` over the peers with `String` keys, in `PEERS`' order: the one
/// place that lists them by type.
macro_rules! each_peer {
    ($f:ident($($arg:expr),*)) => {
        [
            $f::<oneflight::Group<String, u64>>($($arg),*),
            $f::<singleflight_async::SingleFlight<String, u64>>($($arg),*),
            $f::<async_singleflight::UnaryGroup<String, u64>>($($arg),*),
            $f::<uniflight::Merger<String, u64>>($($arg),*),
            $f::<SharedMap<String>>($($arg),*),
            $f::<Moka>($($arg),*),
        ]
    };
}

/// `[f::<Q, P>(args), ...]` over the singleflights (not moka, whose uncontended calls
/// would be cache hits) for keys `Q` owned as `$owned`, in `PEERS`' order.
macro_rules! each_singleflight {
    ($q:ty, $owned:ty, $f:ident($($arg:expr),*)) => {
        [
            $f::<$q, oneflight::Group<$owned, u64>>($($arg),*),
            $f::<$q, singleflight_async::SingleFlight<$owned, u64>>($($arg),*),
            $f::<$q, async_singleflight::UnaryGroup<$owned, u64>>($($arg),*),
            $f::<$q, uniflight::Merger<$owned, u64>>($($arg),*),
            $f::<$q, SharedMap<$owned>>($($arg),*),
        ]
    };
}

pub(crate) const PEERS: [&str; 6] = [
    "oneflight",
    "singleflight-async",
    "async_singleflight",
    "uniflight",
    "Shared-in-Mutex-HashMap",
    "moka get_with",
];
