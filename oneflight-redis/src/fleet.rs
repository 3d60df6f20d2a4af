//! [`Fleet`]: the public handle, the two tiers, and one process's part in a flight.
//!
//! Inside a process, callers of a key meet in a `oneflight::Group` first; only the
//! group's runner talks to Redis (the methods of `Inner` below), so Redis sees one
//! exchange per process per flight. That runner either:
//!
//! - **holds** the key: it took the lease, runs the load while the keeper thread keeps the
//!   lease alive, then publishes the value under its token (compare-and-set), or releases
//!   the lease when it has no value to share (error, panic, cancellation: `Release`);
//! - **waits** on another process's flight: it sleeps until a pub/sub hint or the poll
//!   interval, then asks again with the token it waits on, and gets that flight's value,
//!   or takes the key over when the lease is gone without a value, or follows a newer
//!   holder;
//! - **loads alone**, with in-process deduplication only, when Redis fails or rests after
//!   a failure, or when `max_wait` ran out.

use oneflight::Group;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt;
use std::future::{Future, IntoFuture};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::builder::Config;
use crate::flight::{Fencing, Link, Local, Mode, RedisFailed, Shared};
use crate::health::Health;
use crate::keeper::Keeper;

use crate::notify::Notifier;
use crate::stats::Counters;
use crate::store::{Store, Transport};
use crate::{Backend, FleetBuilder, FleetStats, WorkError};

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
    /// The in-process tier: callers of this process meet here first. Its value is a
    /// `Result` with a type-erased error so that `work`, `try_work` and
    /// `try_work_or_fail` callers of any error type share one flight per key (one Redis
    /// exchange per process), as two plain groups could not.
    pub(crate) group: Group<String, Local<V>>,
    pub(crate) link: Arc<Link>,
}

impl<V> Fleet<V> {
    /// A fleet with the default settings (lease 5 s, renewed every third of it; poll
    /// interval 250 ms; max wait 30 s; command timeout 1 s; values up to 16 MiB;
    /// postcard). Connects lazily, at its first call, so it cannot fail here.
    ///
    /// `backend` is a [`redis::Client`] (one node) or a
    /// [`redis::cluster::ClusterClient`] (a Redis Cluster, built with RESP3 for hints):
    /// see [`Backend`].
    ///
    /// ```
    /// use oneflight_redis::{Fleet, redis};
    ///
    /// let client = redis::Client::open("redis://127.0.0.1/").unwrap();
    /// let fleet: Fleet<Vec<u8>> = Fleet::new(client, "thumbnails");
    ///
    /// let cluster = redis::cluster::ClusterClient::builder(["redis://10.0.0.1:7000/"])
    ///     .use_protocol(redis::ProtocolVersion::RESP3)
    ///     .build()
    ///     .unwrap();
    /// let on_cluster: Fleet<Vec<u8>> = Fleet::new(cluster, "thumbnails");
    /// # drop((fleet, on_cluster));
    /// ```
    pub fn new(backend: impl Into<Backend>, namespace: &str) -> Self {
        Self::builder(backend, namespace).build()
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
    pub fn builder(backend: impl Into<Backend>, namespace: &str) -> FleetBuilder<V> {
        FleetBuilder::new(backend.into(), namespace)
    }

    pub(crate) fn from_parts(backend: Backend, namespace: &str, config: Config) -> Self {
        let cache = config.cache_for.is_some();
        let store = Store::new(backend.clone(), config.command_timeout, config.lease, cache);
        Self::with_transport(Arc::new(store), backend, namespace, config)
    }

    /// A fleet on any transport (Redis, or memory in the model test), whose hints come
    /// through `hints`.
    pub(crate) fn with_transport(
        store: Arc<dyn Transport>,
        hints: Backend,
        namespace: &str,
        config: Config,
    ) -> Self {
        let counters = Arc::new(Counters::new(&config.name));
        let health = Arc::new(Health::new(
            namespace,
            &config.name,
            config.retry_redis_after,
        ));
        let notifier = Notifier::new(
            hints,
            config.command_timeout,
            config.retry_redis_after,
            counters.clone(),
            health.clone(),
        );
        // Dropping the fleet waits this long at most for the releases still pending.
        let patience = config
            .command_timeout
            .saturating_mul(2)
            .min(Duration::from_secs(5));
        let keeper = Keeper::new(
            store.clone(),
            config.lease,
            patience,
            counters.clone(),
            health.clone(),
        );
        Fleet {
            group: Group::named(config.name.clone()),
            link: Arc::new(Link {
                store,
                notifier: Arc::new(notifier),
                keeper: Arc::new(keeper),
                health,
                counters,
                config,
                namespace: namespace.to_owned(),
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
        self.link.counters.snapshot()
    }

    /// How many keys have a flight of this process in the air (its in-process tier):
    /// holding, waiting on another process, or loading alone.
    ///
    /// ```
    /// use oneflight_redis::{Fleet, redis};
    ///
    /// let fleet: Fleet<u8> = Fleet::new(redis::Client::open("redis://127.0.0.1/").unwrap(), "n");
    /// assert_eq!(fleet.in_flight(), 0);
    /// ```
    pub fn in_flight(&self) -> usize {
        self.group.in_flight()
    }
}

impl<V> Fleet<V>
where
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Runs `fut` unless a flight for `key` is in the air anywhere in the fleet; either way,
    /// returns that flight's value. As [`oneflight::Group::work`], fleet-wide.
    ///
    /// Never fails: when Redis cannot help (down, slow, an answered error, an
    /// undecodable payload), the call goes on with in-process deduplication, and
    /// [`stats`](Self::stats) counts it. A wait on another process's flight lasts at most
    /// `max_wait`, then this process loads by itself.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future is free for everyone else. A waiting caller simply stops
    /// waiting. If this process holds the key and its last local caller goes away, the
    /// load is dropped and the lease released at once (by the fleet's keeper thread), so
    /// that a waiting process takes over without waiting out the lease. A caller dropped
    /// while its acquire is in flight has the lease it may have taken released the same
    /// way.
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
        match self
            .call(key, fencing, load, Mode::Degrade, |_| false)
            .await
        {
            Ok(value) => value,
            Err(_) => unreachable!("oneflight-redis: a `work` flight of this caller cannot fail"),
        }
    }

    /// For loaders that can fail: an `Ok` is shared fleet-wide as with
    /// [`work`](Self::work); an `Err` is shared, as one `Arc<E>`, only with this process's
    /// callers of the flight. It is never written to Redis: the lease is released, and a
    /// waiting process takes the key over with its own load. `E` needs nothing but
    /// `Send + Sync + 'static`: your own error enum, `std::io::Error` or `anyhow::Error`.
    ///
    /// Redis trouble degrades as with `work`; to be told of it instead, use
    /// [`try_work_or_fail`](Self::try_work_or_fail).
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
        E: Send + Sync + 'static,
    {
        let load = |_fence| async move { fut.await.map_err(|error| Arc::new(error) as Shared) };
        match self
            .call(key, Fencing::Off, load, Mode::Degrade, |shared| {
                shared.is::<E>()
            })
            .await
        {
            Ok(value) => Ok(value),
            Err(shared) => Err(shared.downcast::<E>().expect("checked by `call`")),
        }
    }

    /// As [`try_work`](Self::try_work), for callers that must not load without the fleet:
    /// when Redis cannot help (down, slow, resting after repeated failures, an answered
    /// error such as `OOM`), the load does not run and the callers of this process's
    /// flight get [`WorkError::Redis`]. The load's own error is [`WorkError::Load`]. A
    /// wait that reaches `max_wait` still loads here.
    ///
    /// Cancel safety and panics: as [`work`](Self::work).
    ///
    /// ```no_run
    /// use oneflight_redis::{FleetErrorKind, WorkError};
    ///
    /// # async fn example(fleet: oneflight_redis::Fleet<String>) {
    /// match fleet.try_work_or_fail("page:/", async { std::fs::read_to_string("index.html") }).await {
    ///     Ok(page) => println!("{page}"),
    ///     Err(WorkError::Load(error)) => eprintln!("the load failed: {error}"),
    ///     Err(WorkError::Redis(error)) if error.kind() == FleetErrorKind::Timeout => {
    ///         eprintln!("redis is slow, try later: {error}")
    ///     }
    ///     Err(WorkError::Redis(error)) => eprintln!("{error}"),
    /// }
    /// # }
    /// ```
    pub async fn try_work_or_fail<F, E>(&self, key: &str, fut: F) -> Result<V, WorkError<E>>
    where
        F: IntoFuture<Output = Result<V, E>>,
        E: Send + Sync + 'static,
    {
        let load = |_fence| async move { fut.await.map_err(|error| Arc::new(error) as Shared) };
        let accept = |shared: &Shared| shared.is::<E>() || shared.is::<RedisFailed>();
        match self.call(key, Fencing::Off, load, Mode::Fail, accept).await {
            Ok(value) => Ok(value),
            Err(shared) => match shared.downcast::<E>() {
                Ok(error) => Err(WorkError::Load(error)),
                Err(shared) => {
                    let failed = shared
                        .downcast_ref::<RedisFailed>()
                        .expect("checked by `call`");
                    Err(WorkError::Redis(failed.0.clone()))
                }
            },
        }
    }

    /// Joins or starts this process's flight of `key` until it gives this caller a
    /// result: the value, or an error that `accept` takes. An error that another caller's
    /// flight shared and `accept` does not take (a `try_work` error reaching a `work`
    /// caller, another error type, Redis trouble for a caller that degrades) sends this
    /// caller round again with its own load.
    async fn call<C, F>(
        &self,
        key: &str,
        fencing: Fencing,
        load: C,
        mode: Mode,
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
                let load = load.expect("a caller's flight runs at most once");
                self.link.fly(key, fencing, load, mode).await
            };
            match self.group.work(key, flight).await {
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

impl<V> Clone for Fleet<V> {
    fn clone(&self) -> Self {
        Fleet {
            group: self.group.clone(),
            link: self.link.clone(),
        }
    }
}

impl<V> fmt::Debug for Fleet<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fleet")
            .field("namespace", &self.link.namespace)
            .field("in_flight", &self.in_flight())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}
