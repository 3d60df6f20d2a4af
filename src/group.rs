//! [`Group`], the public API and its docs. The flights live in the sharded map
//! ([`crate::map`]); callers act in them through their roles ([`crate::roles`]).

use std::borrow::{Borrow, Cow};
use std::fmt;
use std::future::IntoFuture;
use std::hash::{BuildHasher, Hash, RandomState};
use std::panic::resume_unwind;
use std::pin::pin;

use crate::map::Inner;
use crate::observe::{self, Observer};
use crate::roles::{Arrival, Runner};
use crate::stats::Stats;
use crate::sync::Arc;

/// A namespace of flights: duplicate call suppression for one kind of work.
///
/// While a flight for a key is in the air, every other caller of that key waits for its
/// result instead of starting the work again. A `Group` is a cheap handle: clones share
/// the same flights.
///
/// # Examples
///
/// ```
/// use oneflight::Group;
///
/// # futures_executor::block_on(async {
/// let group: Group<String, String> = Group::new();
/// let page = group.work("/index.html", async { "<h1>hi</h1>".to_string() }).await;
/// assert_eq!(page, "<h1>hi</h1>");
/// # });
/// ```
pub struct Group<K, V, S = RandomState> {
    pub(crate) inner: Arc<Inner<K, V, S>>,
}

impl<K, V> Group<K, V, RandomState> {
    /// Creates an empty group with the standard hasher.
    ///
    /// # Examples
    ///
    /// ```
    /// let group: oneflight::Group<u64, String> = oneflight::Group::new();
    /// assert_eq!(group.in_flight(), 0);
    /// ```
    pub fn new() -> Self {
        Self::with_hasher(RandomState::new())
    }

    /// Creates an empty group with the standard hasher and a name, which `Debug` shows
    /// and, with the `tracing` and `metrics` features, its spans and metric labels.
    /// Name groups after the kind of work (a bounded set), never after keys.
    ///
    /// # Examples
    ///
    /// ```
    /// let group: oneflight::Group<u64, String> = oneflight::Group::named("profiles");
    /// assert_eq!(format!("{group:?}"), r#"Group { name: "profiles", in_flight: 0, .. }"#);
    /// ```
    pub fn named(name: impl Into<Cow<'static, str>>) -> Self {
        Group {
            inner: Arc::new(Inner::new(
                RandomState::new(),
                Observer::new(Some(name.into())),
            )),
        }
    }
}

impl<K, V, S> Group<K, V, S> {
    /// Creates an empty group that hashes keys with `hasher`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::hash::BuildHasherDefault;
    /// use std::collections::hash_map::DefaultHasher;
    ///
    /// let group: oneflight::Group<u64, String, BuildHasherDefault<DefaultHasher>> =
    ///     oneflight::Group::with_hasher(BuildHasherDefault::default());
    /// assert_eq!(group.in_flight(), 0);
    /// ```
    pub fn with_hasher(hasher: S) -> Self {
        Group {
            inner: Arc::new(Inner::new(hasher, Observer::default())),
        }
    }

    /// How many keys have a flight that a new caller would join. Flights removed by
    /// [`forget`](Self::forget) that still run are not counted.
    ///
    /// # Examples
    ///
    /// ```
    /// # futures_executor::block_on(async {
    /// let group: oneflight::Group<String, u32> = oneflight::Group::new();
    /// assert_eq!(group.work("a", async { 1 }).await, 1);
    /// assert_eq!(group.in_flight(), 0); // finished flights leave nothing behind
    /// # });
    /// ```
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight()
    }

    /// The counters since this group was created, shared by its clones; see [`Stats`].
    ///
    /// # Examples
    ///
    /// ```
    /// # futures_executor::block_on(async {
    /// let group: oneflight::Group<String, u32> = oneflight::Group::new();
    /// group.work("a", async { 1 }).await;
    /// group.work("a", async { 2 }).await; // the first flight ended: a new one
    /// assert_eq!(group.stats().flights, 2);
    /// assert_eq!(group.stats().joined, 0);
    /// # });
    /// ```
    pub fn stats(&self) -> Stats {
        self.inner.stats()
    }
}

impl<K, V, S> Group<K, V, S>
where
    K: Hash + Eq,
    S: BuildHasher,
{
    /// Runs `fut` unless a flight for `key` is already in the air; either way, returns
    /// that flight's value (Go's `Do`).
    ///
    /// The first caller of a key runs its own `fut`, polled by its own `.await`. Callers
    /// of the same key that arrive while it runs wait for its value instead and keep their
    /// own `fut` unstarted, to run it only if they have to take the flight over. Each
    /// waiting caller clones the value once. Keys are looked up borrowed, as
    /// `HashMap::get` does, and a caller that joins a flight allocates no key.
    ///
    /// Neither `F` nor `V` need be `Send` or `'static`, so this serves local executors
    /// too. The returned future does nothing until polled.
    ///
    /// # Cancel safety
    ///
    /// Dropping the returned future is always safe and costs other callers nothing:
    ///
    /// - A waiting caller simply stops waiting; its `fut` is dropped unstarted.
    /// - The caller running the flight drops its future first, then hands the flight to a
    ///   caller that still waits: a waiting `work` caller runs its own `fut`, or a waiting
    ///   [`do_chan`](Self::do_chan) caller's future is spawned. The two futures never
    ///   overlap, and a panic in that drop does not stop the hand-over. With nobody left
    ///   waiting, the flight ends and the key is free.
    ///
    /// # Panics
    ///
    /// - If the flight's future panics, the caller running it sees that panic unchanged,
    ///   and every `work` caller waiting on the flight panics with a [`Panicked`](crate::Panicked) payload
    ///   that carries the original message. The flight is not retried; the next call of
    ///   the key starts a new flight.
    /// - A panic in the key's `Hash`, `Eq`, `Borrow` or `ToOwned`, or in the hasher or in
    ///   `V`'s `Clone`, reaches only this caller.
    /// - A flight's future that calls the group for its own key inside its own poll
    ///   (re-entrance) makes that inner call panic with a message that starts with
    ///   `oneflight: re-entrant call`, instead of waiting for itself forever; see the
    ///   crate docs.
    ///
    /// # Examples
    ///
    /// ```
    /// use oneflight::Group;
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    ///
    /// # futures_executor::block_on(async {
    /// let group: Group<String, u64> = Group::new();
    /// let queries = AtomicUsize::new(0);
    /// let query = || async {
    ///     queries.fetch_add(1, Ordering::SeqCst);
    ///     smol::future::yield_now().await; // the database takes a while
    ///     42
    /// };
    /// // Three concurrent callers of one key: one query, three answers.
    /// let (a, b, c) = futures_util::join!(
    ///     group.work("user:42", query()),
    ///     group.work("user:42", query()),
    ///     group.work("user:42", query()),
    /// );
    /// assert_eq!((a, b, c), (42, 42, 42));
    /// assert_eq!(queries.load(Ordering::SeqCst), 1);
    /// # });
    /// ```
    pub async fn work<Q, F>(&self, key: &Q, fut: F) -> V
    where
        Q: ?Sized + Hash + Eq + ToOwned,
        Q::Owned: Into<K>,
        K: Borrow<Q>,
        F: IntoFuture<Output = V>,
        V: Clone,
    {
        // With `tracing`, the caller joins and waits inside its span (moved into that
        // await); `fut` stays in this frame either way, so that the future holds it at
        // most twice.
        observe::flight_span!(span, self.inner.observer);
        let flight = match observe::instrumented!(Arrival::new(&self.inner, key), span).await {
            Ok(value) => return value,
            Err(flight) => flight,
        };
        let mut runner = Runner::new(Cow::Borrowed(&self.inner), flight);
        // After `runner`, as `Runner::run` requires. If `into_future` panics, `runner`
        // hands the flight over.
        let fut = pin!(Some(fut.into_future()));
        match runner.run(fut, true).await {
            Ok(value) => value.expect("kept for the runner"),
            Err(payload) => resume_unwind(payload),
        }
    }

    /// Forgets the flight for `key`, if any (Go's `Forget`). It keeps running for the
    /// callers that already joined it, takeovers included; the next call of `key` starts
    /// a new flight. Returns whether a flight was forgotten.
    ///
    /// # Panics
    ///
    /// A panic in the key's `Hash` or `Eq`, or in the hasher, reaches only this caller.
    ///
    /// # Examples
    ///
    /// ```
    /// # futures_executor::block_on(async {
    /// let group: oneflight::Group<String, u32> = oneflight::Group::new();
    /// assert!(!group.forget("config")); // nothing in flight
    /// let (stale, fresh) = futures_util::join!(
    ///     group.work("config", async { smol::future::yield_now().await; 1 }),
    ///     async {
    ///         assert!(group.forget("config")); // config changed: don't join the old read
    ///         group.work("config", async { 2 }).await
    ///     },
    /// );
    /// assert_eq!((stale, fresh), (1, 2));
    /// # });
    /// ```
    pub fn forget<Q>(&self, key: &Q) -> bool
    where
        Q: ?Sized + Hash + Eq,
        K: Borrow<Q>,
    {
        self.inner.forget(key, |_| true)
    }

    /// Forgets the flight for `key` only if no second caller has ever joined it. Returns
    /// whether it forgot.
    ///
    /// # Panics
    ///
    /// A panic in the key's `Hash` or `Eq`, or in the hasher, reaches only this caller.
    ///
    /// # Examples
    ///
    /// ```
    /// # futures_executor::block_on(async {
    /// let group: oneflight::Group<String, u32> = oneflight::Group::new();
    /// futures_util::join!(
    ///     group.work("k", async { smol::future::yield_now().await; 1 }),
    ///     async { assert!(group.forget_unshared("k")) }, // only its runner has it
    /// );
    /// # });
    /// ```
    pub fn forget_unshared<Q>(&self, key: &Q) -> bool
    where
        Q: ?Sized + Hash + Eq,
        K: Borrow<Q>,
    {
        self.inner.forget(key, |flight| !flight.shared())
    }
}

impl<K, T, E, S> Group<K, Result<T, Arc<E>>, S>
where
    K: Hash + Eq,
    S: BuildHasher,
    T: Clone,
{
    /// Like [`work`](Self::work), for loaders that can fail: on a group whose values are
    /// `Result<T, Arc<E>>`, runs `fut` (which returns `Result<T, E>`) unless a flight for
    /// `key` is in the air, and returns that flight's result.
    ///
    /// An `Err` goes to every caller of that flight, the runner included, as one shared
    /// `Arc<E>` (the same pointer for all), as moka's `try_get_with` does. It is not
    /// retried, and not kept after the flight: the next call of the key starts a new
    /// flight. `E` needs no `Clone`. `try_work` and `work` mix freely on one group.
    ///
    /// # Cancel safety
    ///
    /// As [`work`](Self::work): dropping the future is always safe and costs other
    /// callers nothing; a cancelled runner hands the flight to a waiting caller.
    ///
    /// # Panics
    ///
    /// As [`work`](Self::work): a panic of the flight's future reaches its runner
    /// unchanged and every waiting caller as [`Panicked`](crate::Panicked); a re-entrant call panics.
    ///
    /// # Examples
    ///
    /// ```
    /// use oneflight::Group;
    /// use std::sync::Arc;
    ///
    /// async fn load_user(id: u64) -> Result<String, std::io::Error> {
    ///     smol::future::yield_now().await; // the database takes a while, then fails
    ///     Err(std::io::Error::other(format!("user {id}: database down")))
    /// }
    ///
    /// # futures_executor::block_on(async {
    /// let group: Group<u64, Result<String, Arc<std::io::Error>>> = Group::new();
    /// let (a, b) = futures_util::join!(group.try_work(&7, load_user(7)), group.try_work(&7, load_user(7)));
    /// let (a, b) = (a.unwrap_err(), b.unwrap_err());
    /// assert!(Arc::ptr_eq(&a, &b)); // one error, shared
    /// assert_eq!(a.to_string(), "user 7: database down");
    /// # });
    /// ```
    pub async fn try_work<Q, F>(&self, key: &Q, fut: F) -> Result<T, Arc<E>>
    where
        Q: ?Sized + Hash + Eq + ToOwned,
        Q::Owned: Into<K>,
        K: Borrow<Q>,
        F: IntoFuture<Output = Result<T, E>>,
    {
        let fut = fut.into_future();
        self.work(key, async move { fut.await.map_err(Arc::new) })
            .await
    }
}

impl<K, V, S> Clone for Group<K, V, S> {
    /// Another handle on the same flights.
    fn clone(&self) -> Self {
        Group {
            inner: self.inner.clone(),
        }
    }
}

impl<K, V, S: Default> Default for Group<K, V, S> {
    fn default() -> Self {
        Self::with_hasher(S::default())
    }
}

impl<K, V, S> fmt::Debug for Group<K, V, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut f = f.debug_struct("Group");
        if let Some(name) = &self.inner.observer.name {
            f.field("name", name);
        }
        f.field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}
