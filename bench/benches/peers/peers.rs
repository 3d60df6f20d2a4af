//! The peers, behind one interface: oneflight, `singleflight-async`, `async_singleflight`,
//! `uniflight`, a `Shared` future in a `Mutex<HashMap>`, moka's `get_with`, and the
//! one-key floor.

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

/// A singleflight implementation as the scenarios use it.
pub(crate) trait Peer<Q: ?Sized>: Send + Sync + 'static {
    const NAME: &'static str;
    fn create() -> Self;
    fn call<'a, F>(&'a self, key: &'a Q, fut: F) -> impl Future<Output = u64> + Send + 'a
    where
        F: Future<Output = u64> + Send + 'static;
}

/// The bounds a key type needs for every peer: `str` (owned as `String`) and `u64`.
pub(crate) trait Key: std::hash::Hash + Eq + ToOwned + Sync + 'static {}

impl<Q> Key for Q
where
    Q: ?Sized + std::hash::Hash + Eq + ToOwned + Sync + 'static,
    Q::Owned: std::hash::Hash + Eq + Clone + std::borrow::Borrow<Q> + Send + Sync + 'static,
{
}

impl<Q> Peer<Q> for oneflight::Group<Q::Owned, u64>
where
    Q: ?Sized + Key,
    Q::Owned: std::hash::Hash + Eq + std::borrow::Borrow<Q> + Send + Sync + 'static,
{
    const NAME: &'static str = "oneflight";
    fn create() -> Self {
        oneflight::Group::new()
    }
    fn call<'a, F>(&'a self, key: &'a Q, fut: F) -> impl Future<Output = u64> + Send + 'a
    where
        F: Future<Output = u64> + Send + 'static,
    {
        self.work(key, fut)
    }
}

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
        ]
    };
}

pub(crate) const PEERS: [&str; 5] = [
    "oneflight",
    "singleflight-async",
    "async_singleflight",
    "uniflight",
    "Shared-in-Mutex-HashMap",
];
