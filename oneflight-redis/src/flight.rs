//! One process's part in a flight: what the in-process runner of a key does with Redis.
//!
//! That runner either:
//!
//! - **holds** the key: it took the lease, runs the load while the fleet's renewal task
//!   keeps the lease alive, then publishes the value under its token (compare-and-set), or hands
//!   the lease to the keeper when it has no value to share (error, panic, cancellation,
//!   a value over `max_value_size`, a publish whose reply was lost);
//! - **waits** on another process's flight: it sleeps until a pub/sub hint or the poll
//!   interval, then asks again with the token it waits on, and gets that flight's value,
//!   or takes the key over when the lease is gone without a value, or follows a newer
//!   holder;
//! - **loads alone**, with in-process deduplication only, when Redis fails or rests after
//!   repeated failures, or when `max_wait` ran out.
//!
//! Invariant: from the moment an acquire is sent until this process no longer needs the
//! lease it may have taken, a [`Release`] guard for its nonce is armed; every way out
//! (an error, a cancellation, a panic, a lost reply) that does not end in a publish that
//! Redis confirmed, or in an answer that says the lease is not ours, drops it armed, and
//! the keeper releases the lease.

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::any::Any;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::builder::Config;
use crate::health::Health;
use crate::keeper::Keeper;
use crate::names::{self, Names, fence_of, nonce_of};
use crate::notify::Notifier;
use crate::observe;
use crate::stats::{Counters, Fallback};
use crate::store::{Acquired, Transport};
use crate::{FleetError, runtime};

/// An error shared between the callers of one flight in this process, of the type its
/// `try_work` caller chose (or [`RedisFailed`]). `Any`, so that callers with different
/// error types, and `work` callers, still meet in one flight per key and process.
pub(crate) type Shared = Arc<dyn Any + Send + Sync>;

/// What a flight gives the callers of this process.
pub(crate) type Local<V> = Result<V, Shared>;

/// Redis trouble, shared with the callers of a `try_work_or_fail` flight.
pub(crate) struct RedisFailed(pub(crate) FleetError);

/// A cache's background refresh found the key's lease held by another flight: that one
/// refreshes it.
pub(crate) struct NotHeld;

/// What a flight does when it cannot be the fleet's flight of the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Redis trouble: load without the fleet (`work`, `try_work`).
    Degrade,
    /// Redis trouble: end with [`RedisFailed`] (`try_work_or_fail`).
    Fail,
    /// A cache's background refresh: loads only as the holder; ends with [`NotHeld`]
    /// when another flight holds the key, with [`RedisFailed`] on Redis trouble (a value
    /// it could not store is not worth loading: the stale one is still served).
    Refresh,
}

/// Whether a flight takes a fencing number: only for `work_fenced` callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fencing {
    On,
    Off,
}

/// Everything of a fleet that talks to Redis, whatever the value type.
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) store: Arc<dyn Transport>,
    pub(crate) notifier: Arc<Notifier>,
    /// Renews the leases this process holds and releases those it gave up.
    pub(crate) keeper: Arc<Keeper>,
    pub(crate) health: Arc<Health>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) config: Config,
    /// The namespace, for the Redis names of each flight.
    pub(crate) namespace: String,
}

impl Link {
    /// This process's part in one flight of `key`, in its span; `mode` says what it does
    /// when it cannot be the fleet's flight of the key.
    pub(crate) async fn fly<V, C, F>(
        self: &Arc<Self>,
        key: &str,
        fencing: Fencing,
        load: C,
        mode: Mode,
    ) -> Local<V>
    where
        V: Serialize + DeserializeOwned,
        C: FnOnce(Option<u64>) -> F,
        F: Future<Output = Local<V>>,
    {
        observe::in_flight_span!(self.config, key, {
            self.exchange(key, fencing, load, mode).await
        })
    }

    /// [`fly`](Self::fly)'s exchange with Redis.
    async fn exchange<V, C, F>(
        self: &Arc<Self>,
        key: &str,
        fencing: Fencing,
        load: C,
        mode: Mode,
    ) -> Local<V>
    where
        V: Serialize + DeserializeOwned,
        C: FnOnce(Option<u64>) -> F,
        F: Future<Output = Local<V>>,
    {
        if let Some(error) = self.health.resting() {
            return self
                .without_redis(load, mode, error, Fallback::Resting)
                .await;
        }
        let names = Names::new(&self.namespace, key);
        let config = &self.config;
        // `None`: `max_wait` too long to add, that is, no limit.
        let deadline = Instant::now().checked_add(config.max_wait);
        // Before the first acquire: if the key's channel is subscribed already, an end
        // announced between its reply and the wait wakes this flight.
        let mut hints = self.notifier.register(names.tag());
        // The flight this process waits on, and when Redis last said it held the lease.
        let mut waited: Option<(String, Instant)> = None;
        // When this process began to wait on another's flight.
        let mut waiting_since: Option<Instant> = None;
        loop {
            // The announcement of the end brought the value: no need to ask Redis. (A
            // payload that does not decode is asked for again, and counted, below.)
            if let Some((token, _)) = &waited {
                let heard = hints
                    .take_payload(token)
                    .map(|payload| self.open::<V>(token, &payload));
                if let Some(Ok(value)) = heard {
                    self.received(waiting_since);
                    return Ok(value);
                }
            }
            // Listen before asking, so that an end announced after the answer wakes us.
            let listener = hints.listen();
            let nonce = names::nonce();
            // Armed while the acquire is in flight: it may take the lease even if its
            // reply never reaches us.
            let release = Release::new(&self.keeper, &names, &nonce);
            let token = waited.as_ref().map(|(token, _)| token.as_str());
            let fenced = fencing == Fencing::On;
            let answer = self
                .store
                .acquire(&names, token, &nonce, config.lease, fenced)
                .await;
            match answer {
                Err(error) => {
                    if error.may_have_taken_effect() {
                        drop(release);
                    } else {
                        release.disarm();
                    }
                    self.health.failed(&error, &self.counters);
                    return self
                        .without_redis(load, mode, error, Fallback::RedisError)
                        .await;
                }
                Ok(Acquired::Hold(token)) => {
                    self.health.answered();
                    // A takeover when the waited flight ended without a value: had it
                    // published since Redis last said it held the lease, the value would
                    // still be kept (for `retention`), and this acquire would have got it.
                    if waited.is_some_and(|(_, seen)| seen.elapsed() < config.retention()) {
                        self.counters.took_over();
                        observe::event!(config.name, "took over a flight whose holder went away");
                    }
                    if let Some(since) = waiting_since {
                        self.counters.waited(since);
                    }
                    observe::role!("holder");
                    drop(hints);
                    return self.hold(&names, token, release, load).await;
                }
                Ok(Acquired::Value(payload)) => {
                    release.disarm();
                    self.health.answered();
                    let (token, _) = waited.take().expect("a value is only handed to a waiter");
                    match self.open::<V>(&token, &payload) {
                        Ok(value) => {
                            self.received(waiting_since);
                            return Ok(value);
                        }
                        // A miss: the next round starts a flight of its own.
                        Err(_error) => {
                            self.counters.undecodable();
                            observe::event!(config.name, error = %_error, "a payload did not decode: a miss");
                        }
                    }
                }
                Ok(Acquired::Wait(holder)) => {
                    release.disarm();
                    self.health.answered();
                    if mode == Mode::Refresh {
                        return Err(Arc::new(NotHeld));
                    }
                    let now = Instant::now();
                    let left = deadline.map_or(Duration::MAX, |deadline| {
                        deadline.saturating_duration_since(now)
                    });
                    if left.is_zero() {
                        if let Some(since) = waiting_since {
                            self.counters.waited(since);
                        }
                        observe::event!(config.name, "waited max_wait: loading without the fleet");
                        return self.load_alone(load, Fallback::MaxWait).await;
                    }
                    if waiting_since.is_none() {
                        waiting_since = Some(now);
                        observe::role!("waiter");
                    }
                    waited = Some((holder, now));
                    // Just subscribed to the key's channel: ask again at once, since an
                    // end announced before then was not heard.
                    if hints.hear().await {
                        continue;
                    }
                    runtime::timeout(config.poll_interval.min(left), listener).await;
                }
            }
        }
    }

    /// Runs the load as the fleet's holder of the flight `token` (whose lease `release`
    /// gives up unless disarmed), keeps its lease alive meanwhile, then publishes the
    /// value or gives the lease up.
    async fn hold<V, C, F>(
        self: &Arc<Self>,
        names: &Names,
        token: String,
        release: Release,
        load: C,
    ) -> Local<V>
    where
        V: Serialize,
        C: FnOnce(Option<u64>) -> F,
        F: Future<Output = Local<V>>,
    {
        self.counters.loaded();
        let load = load(fence_of(&token));
        // Renewed by the keeper's thread while the load runs.
        let holding = self.keeper.hold(names, &token);
        let result = load.await;
        drop(holding);
        let payload = match &result {
            Ok(value) => match self.config.codec.seal(&token, value) {
                Ok(payload) if payload.len() <= self.config.max_value_size => Some(payload),
                Ok(_) => {
                    self.counters.oversized();
                    None
                }
                Err(_) => None,
            },
            Err(_) => None,
        };
        // An error stays in this process; a value that cannot be encoded or is too large
        // cannot be shared. Either way `release` stays armed: the keeper gives the lease
        // up now, and a waiter takes over rather than after the lease.
        if let Some(payload) = payload {
            match self
                .store
                .publish(names, &token, payload, self.config.retention())
                .await
            {
                Ok(published) => {
                    // Published, or the lease was no longer ours: nothing to release.
                    release.disarm();
                    self.health.answered();
                    if !published {
                        self.counters.late_publish();
                        if self.config.cache_for.is_some() {
                            observe::event!(
                                self.config.name,
                                "stale set prevented: the lease was revoked by an invalidate or passed to another flight; the value was not stored"
                            );
                        } else {
                            observe::event!(
                                self.config.name,
                                "a late publish was rejected: the lease had passed to another flight"
                            );
                        }
                    }
                }
                // The publish may not have taken effect: `release` stays armed.
                Err(error) => self.health.failed(&error, &self.counters),
            }
        }
        result
    }

    /// Without the fleet: the load runs here for this process's callers only, or, for a
    /// `try_work_or_fail` flight, its callers get the [`FleetError`].
    async fn without_redis<V, C, F>(
        &self,
        load: C,
        mode: Mode,
        error: FleetError,
        reason: Fallback,
    ) -> Local<V>
    where
        C: FnOnce(Option<u64>) -> F,
        F: Future<Output = Local<V>>,
    {
        match mode {
            Mode::Degrade => self.load_alone(load, reason).await,
            Mode::Fail | Mode::Refresh => Err(Arc::new(RedisFailed(error))),
        }
    }

    /// The value of a payload handed to a waiter of the flight `token`. A cache's value
    /// may have been stored by any flight of the key (see [`Names::published`]).
    fn open<V: DeserializeOwned>(&self, token: &str, payload: &[u8]) -> Result<V, String> {
        if self.config.cache_for.is_some() {
            self.config
                .codec
                .open_any::<V>(payload)
                .map(|(_, value)| value)
        } else {
            self.config.codec.open::<V>(token, payload)
        }
    }

    /// The load, in this process only, without a fencing number (none can be trusted).
    async fn load_alone<V, C, F>(&self, load: C, reason: Fallback) -> Local<V>
    where
        C: FnOnce(Option<u64>) -> F,
        F: Future<Output = Local<V>>,
    {
        self.counters.fell_back(reason);
        observe::role!("degraded");
        observe::event!(
            self.config.name,
            reason = reason.label(),
            "loading without the fleet"
        );
        load(None).await
    }

    /// A value came from another process's flight.
    fn received(&self, waiting_since: Option<Instant>) {
        self.counters.received();
        if let Some(since) = waiting_since {
            self.counters.waited(since);
        }
    }
}

/// Hands the lease taken with a nonce to the keeper when dropped armed: see the module
/// docs' invariant.
pub(crate) struct Release {
    keeper: Arc<Keeper>,
    names: Names,
    nonce: Option<String>,
}

impl Release {
    fn new(keeper: &Arc<Keeper>, names: &Names, nonce: &str) -> Self {
        Release {
            keeper: keeper.clone(),
            names: names.clone(),
            nonce: Some(nonce_of(nonce).to_owned()),
        }
    }

    /// This process no longer may hold the lease: nothing to release.
    fn disarm(mut self) {
        self.nonce = None;
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        if let Some(nonce) = self.nonce.take() {
            self.keeper.release(self.names.clone(), nonce);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Fleet;
    use crate::store::Stored;
    use futures_util::future::BoxFuture;
    use std::sync::{Mutex, OnceLock};

    /// Answers every acquire with "wait on T1"; the first one also announces T1's end,
    /// with its value, while it is in flight, before its reply.
    #[derive(Debug, Default)]
    struct AnnouncesDuringAcquire {
        notifier: OnceLock<Arc<Notifier>>,
        acquires: Mutex<u32>,
    }

    impl Transport for AnnouncesDuringAcquire {
        fn acquire<'a>(
            &'a self,
            names: &'a Names,
            _waited: Option<&'a str>,
            _nonce: &'a str,
            _lease: Duration,
            _fenced: bool,
        ) -> BoxFuture<'a, Result<Acquired, FleetError>> {
            Box::pin(async move {
                let mut acquires = self.acquires.lock().unwrap();
                *acquires += 1;
                if *acquires == 1 {
                    let payload = crate::Codec::Postcard
                        .seal("T1", &"heard".to_owned())
                        .unwrap();
                    let mut message =
                        format!("T1 {}:{} ", names.tag().len(), names.tag()).into_bytes();
                    message.extend(payload);
                    self.notifier.get().unwrap().wake(&message);
                }
                Ok(Acquired::Wait("T1".to_owned()))
            })
        }
        fn publish<'a>(
            &'a self,
            _: &'a Names,
            _: &'a str,
            _: Vec<u8>,
            _: Duration,
        ) -> BoxFuture<'a, Result<bool, FleetError>> {
            unreachable!("the waiter never holds")
        }
        fn renew(&self, _: &Names, _: &str, _: Duration) -> Result<bool, FleetError> {
            unreachable!("the waiter never holds")
        }
        fn release(&self, _: &Names, _: &str, _: Duration) -> Result<bool, FleetError> {
            Ok(false)
        }
        fn lookup<'a>(&'a self, _: &'a Names) -> BoxFuture<'a, Result<Stored, FleetError>> {
            unreachable!("a fleet never looks a value up")
        }
        fn invalidate<'a>(&'a self, _: &'a Names) -> BoxFuture<'a, Result<bool, FleetError>> {
            unreachable!("a fleet never invalidates")
        }
    }

    #[tokio::test]
    async fn an_end_announced_before_the_first_acquire_replies_is_heard() {
        let transport = Arc::new(AnnouncesDuringAcquire::default());
        let config = Config {
            lease: Duration::from_secs(60),
            poll_interval: Duration::from_secs(30),
            ..Config::default()
        };
        let nowhere = redis::Client::open("redis://127.0.0.1:1/").unwrap();
        let fleet: Fleet<String> =
            Fleet::with_transport(transport.clone(), nowhere.into(), "n", config);
        transport.notifier.set(fleet.link.notifier.clone()).unwrap();
        // Heard at once: no poll (30 s) in between.
        let value = tokio::time::timeout(
            Duration::from_secs(5),
            fleet.work("k", async { "loaded".to_owned() }),
        )
        .await
        .expect("the waiter heard the end announced during its first acquire");
        assert_eq!(value, "heard");
        assert_eq!(*transport.acquires.lock().unwrap(), 1);
    }
}
