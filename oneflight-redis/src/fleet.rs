//! [`Fleet`]: the public handle, the two tiers, and one process's part in a flight.
//!
//! Inside a process, callers of a key meet in a `oneflight::Group` first; only the
//! group's runner talks to Redis (the methods of `Inner` below), so Redis sees one
//! exchange per process per flight. That runner either:
//!
//! - **holds** the key: it took the lease, runs the load while a renewal loop keeps the
//!   lease alive, then publishes the value under its token (compare-and-set), or releases
//!   the lease when it has no value to share (error, panic, cancellation: `Release`);
//! - **waits** on another process's flight: it sleeps until a pub/sub hint or the poll
//!   interval, then asks again with the token it waits on, and gets that flight's value,
//!   or takes the key over when the lease is gone without a value, or follows a newer
//!   holder;
//! - **loads alone**, with in-process deduplication only, when Redis fails or rests after
//!   a failure, or when `max_wait` ran out.

use futures_util::future::{Either, select};
use oneflight::Group;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::any::Any;
use std::convert::Infallible;
use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use crate::builder::Config;
use crate::notify::{Notifier, Registration};
use crate::stats::Counters;
use crate::store::{Acquired, Failure, Names, Store, Transport, fence_of};
use crate::{FleetBuilder, FleetError, FleetStats, OnRedisError, runtime};

/// An error shared between the callers of one flight in this process, of the type its
/// `try_work` caller chose.
type Shared = Arc<dyn Any + Send + Sync>;

/// What a flight gives the callers of this process.
type Local<V> = Result<V, Shared>;

/// One namespace of flights shared by every process that uses the same Redis and
/// namespace: a cheap handle, clones share everything.
///
/// ```no_run
/// use oneflight_redis::{Fleet, redis};
///
/// # async fn query_database(id: u64) -> String { format!("user {id}") }
/// # async fn example() {
/// let fleet: Fleet<String> = Fleet::new(redis::Client::open("redis://127.0.0.1/").unwrap(), "users");
/// // However many replicas ask at once, one of them queries the database.
/// let profile = fleet.work("user:7", query_database(7)).await;
/// # }
/// ```
pub struct Fleet<V> {
    inner: Arc<Inner<V>>,
}

struct Inner<V> {
    /// The in-process tier: callers of this process meet here first.
    group: Group<String, Local<V>>,
    store: Arc<dyn Transport>,
    /// The namespace, for the Redis keys of each flight.
    namespace: String,
    notifier: Arc<Notifier>,
    config: Config,
    counters: Counters,
    /// After a Redis failure: until when new flights skip Redis.
    resting_until: Mutex<Option<Instant>>,
}

impl<V> Fleet<V> {
    /// A fleet with the default settings (lease 5 s, renewed every third of it; poll
    /// interval 250 ms; max wait 30 s; command timeout 1 s; postcard; degrade on Redis
    /// errors). Connects lazily, at its first call, so it cannot fail here.
    ///
    /// ```
    /// use oneflight_redis::{Fleet, redis};
    ///
    /// let client = redis::Client::open("redis://127.0.0.1/").unwrap();
    /// let fleet: Fleet<Vec<u8>> = Fleet::new(client, "thumbnails");
    /// # drop(fleet);
    /// ```
    pub fn new(client: redis::Client, namespace: &str) -> Self {
        Self::builder(client, namespace).build()
    }

    /// A builder for a fleet with other settings; see [`FleetBuilder`].
    ///
    /// ```
    /// use oneflight_redis::{Fleet, redis};
    /// use std::time::Duration;
    ///
    /// let client = redis::Client::open("redis://127.0.0.1/").unwrap();
    /// let fleet: Fleet<u64> = Fleet::builder(client, "counts").lease(Duration::from_secs(2)).build();
    /// # drop(fleet);
    /// ```
    pub fn builder(client: redis::Client, namespace: &str) -> FleetBuilder<V> {
        FleetBuilder::new(client, namespace)
    }

    pub(crate) fn from_parts(client: redis::Client, namespace: &str, config: Config) -> Self {
        let store = Store::new(client.clone(), namespace, config.command_timeout);
        let notifier = Notifier::new(
            client,
            store.channel.clone(),
            config.command_timeout,
            config.retry_redis_after,
        );
        Self::with_transport(Arc::new(store), notifier, namespace, config)
    }

    /// A fleet on any transport: Redis, or memory in the model test.
    pub(crate) fn with_transport(
        store: Arc<dyn Transport>,
        notifier: Notifier,
        namespace: &str,
        config: Config,
    ) -> Self {
        Fleet {
            inner: Arc::new(Inner {
                group: Group::new(),
                store,
                namespace: namespace.to_owned(),
                notifier: Arc::new(notifier),
                config,
                counters: Counters::default(),
                resting_until: Mutex::new(None),
            }),
        }
    }

    /// The counters since this fleet was created, shared by its clones.
    ///
    /// ```
    /// use oneflight_redis::{Fleet, redis};
    ///
    /// let fleet: Fleet<u8> = Fleet::new(redis::Client::open("redis://127.0.0.1/").unwrap(), "n");
    /// let stats = fleet.stats();
    /// assert_eq!(stats.loads + stats.received, 0);
    /// ```
    pub fn stats(&self) -> FleetStats {
        self.inner.counters.snapshot()
    }
}

impl<V> Fleet<V>
where
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Runs `fut` unless a flight for `key` is in the air anywhere in the fleet; either way,
    /// returns that flight's value. As [`oneflight::Group::work`], fleet-wide.
    ///
    /// Never fails: when Redis cannot help (down, slow, undecodable payload), the call
    /// goes on with in-process deduplication, and [`stats`](Self::stats) counts it.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future is free for everyone else. A waiting caller simply stops
    /// waiting. If this process holds the key and its last local caller goes away, the
    /// load is dropped and the lease released at once (on a spawned task), so that a
    /// waiting process takes over without waiting out the lease.
    ///
    /// # Panics
    ///
    /// A panic in `fut` goes on in the caller that ran it, and this process's other
    /// callers of the flight panic with [`oneflight::Panicked`]; the lease is released,
    /// and another process takes the key over. Panics never reach other processes.
    ///
    /// ```no_run
    /// # async fn example(fleet: oneflight_redis::Fleet<String>) {
    /// let value = fleet.work("report:today", async { "expensive".to_owned() }).await;
    /// # }
    /// ```
    pub async fn work<F>(&self, key: &str, fut: F) -> V
    where
        F: IntoFuture<Output = V>,
    {
        self.work_with(key, Fencing::Off, |_fence| fut).await
    }

    /// As [`work`](Self::work), for loads that write somewhere and must fence their
    /// writes: `load` receives the flight's fencing number, which grows with each fenced
    /// flight of `key` fleet-wide, so that a store that remembers the highest number it saw
    /// can reject a late holder's write (Kleppmann, "How to do distributed locking").
    /// `None` when the load runs without the fleet (Redis unavailable, or `max_wait`
    /// reached): no number can then be trusted.
    ///
    /// Only fenced flights take a number (and keep the key's last number in Redis for a
    /// day), so that `work` callers do not pay for it. A `work_fenced` caller that joins a
    /// flight started by a `work` caller gets its value; its own `load` does not run, and
    /// so writes nothing.
    ///
    /// Cancel safety and panics: as [`work`](Self::work).
    ///
    /// ```no_run
    /// # async fn write_report(fence: u64) -> String { fence.to_string() }
    /// # async fn example(fleet: oneflight_redis::Fleet<String>) {
    /// let report = fleet
    ///     .work_fenced("report:today", |fence| async move {
    ///         match fence {
    ///             Some(fence) => write_report(fence).await,
    ///             None => "not written: no fence".to_owned(),
    ///         }
    ///     })
    ///     .await;
    /// # }
    /// ```
    pub async fn work_fenced<C, F>(&self, key: &str, load: C) -> V
    where
        C: FnOnce(Option<u64>) -> F,
        F: IntoFuture<Output = V>,
    {
        self.work_with(key, Fencing::On, load).await
    }

    async fn work_with<C, F>(&self, key: &str, fencing: Fencing, load: C) -> V
    where
        C: FnOnce(Option<u64>) -> F,
        F: IntoFuture<Output = V>,
    {
        let load = |fence| async move { Ok(load(fence).await) };
        match self.call(key, fencing, load, None, |_| false).await {
            Ok(value) => value,
            Err(_) => unreachable!("oneflight-redis: a `work` flight of this caller cannot fail"),
        }
    }

    /// For loaders that can fail: an `Ok` is shared fleet-wide as with
    /// [`work`](Self::work); an `Err` is shared, as one `Arc<E>`, only with this process's
    /// callers of the flight. It is never written to Redis: the lease is released, and a
    /// waiting process takes the key over with its own load.
    ///
    /// `E: From<FleetError>` lets a fleet built with
    /// [`OnRedisError::Fail`](crate::OnRedisError::Fail) report Redis trouble as an error
    /// of the caller's type; `std::io::Error`, `String`, `Box<dyn Error + Send + Sync>` and
    /// `anyhow::Error` already convert.
    ///
    /// A `work` caller of the same key that joined a failing flight is not given the
    /// error: it runs the key again.
    ///
    /// Cancel safety and panics: as [`work`](Self::work).
    ///
    /// ```no_run
    /// # async fn example(fleet: oneflight_redis::Fleet<String>) -> Result<(), std::sync::Arc<std::io::Error>> {
    /// let page = fleet
    ///     .try_work("page:/", async { std::fs::read_to_string("index.html") })
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn try_work<F, E>(&self, key: &str, fut: F) -> Result<V, Arc<E>>
    where
        F: IntoFuture<Output = Result<V, E>>,
        E: From<FleetError> + Send + Sync + 'static,
    {
        let load = |_fence| async move { fut.await.map_err(|error| Arc::new(error) as Shared) };
        let fail: Option<fn(FleetError) -> Shared> = match self.inner.config.on_redis_error {
            OnRedisError::Fail => Some(|error| Arc::new(E::from(error))),
            OnRedisError::Degrade => None,
        };
        match self
            .call(key, Fencing::Off, load, fail, |shared| shared.is::<E>())
            .await
        {
            Ok(value) => Ok(value),
            Err(shared) => Err(shared.downcast::<E>().expect("checked by `call`")),
        }
    }

    /// Joins or starts this process's flight of `key` until it gives this caller a
    /// result: the value, or an error that `accept` takes. An error that another caller's
    /// flight shared and `accept` does not take (a `try_work` error reaching a `work`
    /// caller, or another error type) sends this caller round again with its own load.
    async fn call<C, F>(
        &self,
        key: &str,
        fencing: Fencing,
        load: C,
        fail: Option<fn(FleetError) -> Shared>,
        accept: fn(&Shared) -> bool,
    ) -> Local<V>
    where
        C: FnOnce(Option<u64>) -> F,
        F: Future<Output = Local<V>>,
    {
        // Taken by this caller's flight if it runs; still here when it only joined.
        let slot = Mutex::new(Some(load));
        loop {
            let flight = async {
                let load = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
                self.inner
                    .fly(
                        key,
                        fencing,
                        load.expect("a caller's flight runs at most once"),
                        fail,
                    )
                    .await
            };
            match self.inner.group.work(key, flight).await {
                Ok(value) => return Ok(value),
                Err(shared) if accept(&shared) => return Err(shared),
                Err(shared)
                    if slot
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .is_none() =>
                {
                    return Err(shared);
                }
                Err(_) => {}
            }
        }
    }
}

impl<V> Inner<V>
where
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// This process's part in one flight of `key`.
    async fn fly<C, F>(
        &self,
        key: &str,
        fencing: Fencing,
        load: C,
        fail: Option<fn(FleetError) -> Shared>,
    ) -> Local<V>
    where
        C: FnOnce(Option<u64>) -> F,
        F: Future<Output = Local<V>>,
    {
        if self.resting() {
            return self
                .without_redis(load, fail, "resting after a redis failure".to_owned())
                .await;
        }
        let names = Names::new(&self.namespace, key);
        let deadline = Instant::now() + self.config.max_wait;
        // The flight this process waits on, and its registration for pub/sub hints.
        let mut waited: Option<(String, Registration)> = None;
        loop {
            // The announcement of the end brought the value: no need to ask Redis. (A
            // payload that does not decode is asked for again, and counted, below.)
            if let Some((token, registration)) = &waited {
                let heard = registration
                    .take_payload()
                    .map(|payload| self.config.codec.open::<V>(token, &payload));
                if let Some(Ok(value)) = heard {
                    Counters::add(&self.counters.received);
                    return Ok(value);
                }
            }
            // Listen before asking, so that an end announced after the answer wakes us.
            let listener = waited
                .as_ref()
                .map(|(_, registration)| registration.listen());
            let token = waited.as_ref().map(|(token, _)| token.as_str());
            let fenced = fencing == Fencing::On;
            match self
                .store
                .acquire(&names, token, self.config.lease, fenced)
                .await
            {
                Err(failure) => {
                    self.failed();
                    return self.without_redis(load, fail, failure).await;
                }
                Ok(Acquired::Hold(token)) => {
                    if waited.take().is_some() {
                        Counters::add(&self.counters.takeovers);
                    }
                    return self.hold(&names, token, load).await;
                }
                Ok(Acquired::Value(payload)) => {
                    let (token, _) = waited.take().expect("a value is only handed to a waiter");
                    match self.config.codec.open::<V>(&token, &payload) {
                        Ok(value) => {
                            Counters::add(&self.counters.received);
                            return Ok(value);
                        }
                        // A miss: the next round starts a flight of its own.
                        Err(_) => Counters::add(&self.counters.undecodable),
                    }
                }
                Ok(Acquired::Wait(holder)) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return self.load_alone(load, None).await;
                    }
                    let listener = match (listener, &waited) {
                        (Some(listener), Some((token, _))) if *token == holder => listener,
                        _ => {
                            let registration = self.notifier.register(&holder);
                            let listener = registration.listen();
                            waited = Some((holder, registration));
                            listener
                        }
                    };
                    let nap = self.config.poll_interval.min(deadline - now);
                    runtime::timeout(nap, listener).await;
                }
            }
        }
    }

    /// Runs the load as the fleet's holder of the flight `token`, keeps its lease alive
    /// meanwhile, then publishes the value or gives the lease up.
    async fn hold<C, F>(&self, names: &Names, token: String, load: C) -> Local<V>
    where
        C: FnOnce(Option<u64>) -> F,
        F: Future<Output = Local<V>>,
    {
        // Releases the lease if this future is dropped (local callers gone) or unwinds (a
        // panicking load) before the value is published.
        let mut release = Release {
            store: self.store.clone(),
            names: names.clone(),
            token: Some(token.clone()),
        };
        let fence = fence_of(&token);
        let load = pin!(load(fence));
        let renewal = pin!(self.renew(names, &token));
        let Either::Left((result, _)) = select(load, renewal).await;
        Counters::add(&self.counters.loads);
        let payload = match &result {
            Ok(value) => self.config.codec.seal(&token, value).ok(),
            Err(_) => None,
        };
        match payload {
            Some(payload) => match self
                .store
                .publish(names, &token, payload, self.config.lease)
                .await
            {
                Ok(true) => {}
                Ok(false) => Counters::add(&self.counters.late_publishes),
                Err(_) => self.failed(),
            },
            // An error stays in this process; a value that cannot be encoded cannot be
            // shared. Either way the waiters take over now rather than after the lease.
            None => {
                if self.store.release(names, &token).await.is_err() {
                    self.failed();
                }
            }
        }
        release.token = None;
        result
    }

    /// Renews the lease every third of it while the load runs; gives up quietly when the
    /// lease was lost (the publish will then be rejected). Never finishes.
    async fn renew(&self, names: &Names, token: &str) -> Infallible {
        loop {
            runtime::sleep(self.config.renew_every()).await;
            match self.store.renew(names, token, self.config.lease).await {
                Ok(true) => {}
                Ok(false) => std::future::pending::<()>().await,
                Err(_) => self.failed(),
            }
        }
    }

    /// Without the fleet: the load runs here for this process's callers only, or, for a
    /// `try_work` caller of a fleet built to fail, the caller gets a [`FleetError`].
    async fn without_redis<C, F>(
        &self,
        load: C,
        fail: Option<fn(FleetError) -> Shared>,
        reason: Failure,
    ) -> Local<V>
    where
        C: FnOnce(Option<u64>) -> F,
        F: Future<Output = Local<V>>,
    {
        match fail {
            Some(fail) => Err(fail(FleetError::new(reason))),
            None => self.load_alone(load, None).await,
        }
    }

    async fn load_alone<C, F>(&self, load: C, fence: Option<u64>) -> Local<V>
    where
        C: FnOnce(Option<u64>) -> F,
        F: Future<Output = Local<V>>,
    {
        Counters::add(&self.counters.fallbacks);
        Counters::add(&self.counters.loads);
        load(fence).await
    }

    /// Counts a Redis failure and lets Redis rest: new flights skip it for a while.
    fn failed(&self) {
        Counters::add(&self.counters.redis_errors);
        let until = Instant::now() + self.config.retry_redis_after;
        *self
            .resting_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(until);
    }

    fn resting(&self) -> bool {
        let mut resting_until = self
            .resting_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match *resting_until {
            Some(until) if Instant::now() < until => true,
            Some(_) => {
                *resting_until = None;
                false
            }
            None => false,
        }
    }
}

/// Whether a flight takes a fencing number: only for `work_fenced` callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fencing {
    On,
    Off,
}

/// Gives a lease up from a spawned task when the holder goes away before publishing.
struct Release {
    store: Arc<dyn Transport>,
    names: Names,
    /// The lease's token while it still needs releasing.
    token: Option<String>,
}

impl Drop for Release {
    fn drop(&mut self) {
        if let Some(token) = self.token.take() {
            let (store, names) = (self.store.clone(), self.names.clone());
            // Without a runtime to spawn on, the lease simply expires.
            runtime::spawn(async move {
                let _ = store.release(&names, &token).await;
            });
        }
    }
}

impl<V> Clone for Fleet<V> {
    fn clone(&self) -> Self {
        Fleet {
            inner: self.inner.clone(),
        }
    }
}

impl<V> fmt::Debug for Fleet<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fleet")
            .field("namespace", &self.inner.namespace)
            .field("in_flight_here", &self.inner.group.in_flight())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}
