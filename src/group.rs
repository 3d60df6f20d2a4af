//! [`Group`], the public API and its docs. The flights live in the sharded map
//! ([`crate::map`]); callers act in them through their roles ([`crate::roles`]).

use std::borrow::{Borrow, Cow};
use std::fmt;
use std::future::IntoFuture;
use std::hash::{BuildHasher, Hash, RandomState};
use std::panic::resume_unwind;
use std::pin::pin;

use async_channel::Receiver;
use futures_util::future::BoxFuture;

use crate::flight::{FlightId, Start};
use crate::map::Inner;
use crate::outcome::Outcome;
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
    inner: Arc<Inner<K, V, S>>,
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
            inner: Arc::new(Inner::new(hasher)),
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
        let flight = match Arrival::new(&self.inner, key).await {
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

    /// Like [`do_chan`](Self::do_chan), on any executor: `spawn` receives the flight's
    /// task when this caller has to run the flight.
    ///
    /// The group calls `spawn` at most once: right away if this caller starts the flight,
    /// later (possibly from another thread) if it takes over a flight whose runner went
    /// away, or never. So `spawn` must not rely on a thread-local runtime context: capture
    /// an `Arc<Executor>` or a runtime `Handle`. The flight runs only on the executor
    /// given.
    ///
    /// The receiver gets one [`Outcome`]. Dropping it never cancels the task; a spawned
    /// flight runs to completion, and its result goes to whoever still waits. A dropped
    /// receiver's future is never spawned to take a flight over.
    ///
    /// # Panics
    ///
    /// - If the flight's future panics, the task catches it, every receiver's channel
    ///   closes (`recv()` returns `Err(RecvError)`), waiting `work` callers panic with
    ///   [`Panicked`](crate::Panicked), and the key is free again.
    /// - If the executor drops the task before it finishes, the flight is handed over as
    ///   if a `work` runner were cancelled; receivers whose future is gone and that nobody
    ///   else can serve see their channel closed.
    /// - A panic in `spawn` called right away reaches this caller, after the flight was
    ///   handed over; in a later takeover it is caught and the next waiting caller takes
    ///   over.
    /// - Called by a flight's future for its own key (re-entrance), it panics with a
    ///   message that starts with `oneflight: re-entrant call`, pointing at the caller's
    ///   line.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    ///
    /// let executor = Arc::new(async_executor::Executor::new());
    /// let group: oneflight::Group<String, u32> = oneflight::Group::new();
    /// let spawner = executor.clone();
    /// let rx = group.do_chan_with("answer", async { 42 }, move |task| {
    ///     spawner.spawn(task).detach();
    /// });
    /// let outcome = futures_executor::block_on(executor.run(rx.recv())).unwrap();
    /// assert_eq!(outcome, oneflight::Outcome { value: 42, shared: false });
    /// ```
    #[track_caller]
    pub fn do_chan_with<Q, F, P>(&self, key: &Q, fut: F, spawn: P) -> Receiver<Outcome<V>>
    where
        Q: ?Sized + Hash + Eq + ToOwned,
        Q::Owned: Into<K>,
        K: Borrow<Q> + Send + Sync + 'static,
        V: Clone + Send + Sync + 'static,
        S: Send + Sync + 'static,
        F: IntoFuture<Output = V> + Send + 'static,
        F::IntoFuture: Send,
        P: FnOnce(BoxFuture<'static, ()>) + Send + 'static,
    {
        let hash = self.inner.hasher.hash_one(key);
        let (sender, receiver) = async_channel::bounded(1);
        let group = self.inner.clone();
        // Creates the runner before spawning, so that a task its executor drops unpolled
        // still hands the flight over.
        let start = move |flight: FlightId| {
            let runner = Runner::new(Cow::Owned(group), flight);
            spawn(Box::pin(runner.run_task(fut)));
        };
        // Boxed only if this caller stands by; a caller that starts a flight runs it as is.
        let mut unboxed = Some(start);
        let (flight, (fresh, claimed)) = self.inner.join(hash, key, |flight, fresh| {
            if fresh {
                flight.add_sender(sender);
                return (true, None);
            }
            let start: Start = Box::new(unboxed.take().expect("joins once"));
            (false, flight.join_chan(sender, start))
        });
        // Spawning is user code: only now, with the lock released.
        if let Some(start) = claimed {
            start(flight);
        } else if fresh {
            (unboxed.take().expect("a fresh flight keeps its start"))(flight);
        }
        receiver
    }
}

#[cfg(any(feature = "smol", feature = "async-std", feature = "tokio"))]
impl<K, V, S> Group<K, V, S>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
{
    /// Like [`work`](Self::work), but the flight runs on a spawned task and the caller
    /// gets a channel that receives its [`Outcome`] (Go's `DoChan`).
    ///
    /// The caller can `.recv().await` the receiver, `select!` on it beside a timer,
    /// `recv_blocking()` from sync code, or drop it. The flight's task runs on the current
    /// Tokio runtime when called inside one (feature `tokio`), else on smol's global
    /// executor (feature `smol`, the default), else on async-std's (feature `async-std`).
    /// That choice is made now, so if this caller later takes a flight over, its future
    /// is spawned there. For any other executor, use [`do_chan_with`](Self::do_chan_with).
    ///
    /// A caller that joins a flight in the air gets that flight's outcome, and its own
    /// `fut` stays unstarted unless it has to take the flight over.
    ///
    /// # Cancel safety
    ///
    /// Dropping the receiver is always safe: this caller stops waiting and its `fut` will
    /// never be spawned. It never cancels a spawned task; a flight runs to completion
    /// even if every receiver is gone, as in Go, and its result goes to whoever still
    /// waits.
    ///
    /// # Panics
    ///
    /// - If the flight's future panics, the task catches it, every receiver's channel
    ///   closes (`recv()` returns `Err(RecvError)`), waiting `work` callers panic with
    ///   [`Panicked`](crate::Panicked), and the key is free again. A panic in `V`'s `Clone` on the way to
    ///   one receiver closes only that receiver's channel.
    /// - With only the `tokio` feature on, called outside a Tokio runtime, it panics at
    ///   once, before joining any flight, with a message that names `do_chan_with`. The
    ///   panic points at the caller's line.
    /// - Called by a flight's future for its own key (re-entrance), it panics with a
    ///   message that starts with `oneflight: re-entrant call`.
    ///
    /// # Examples
    ///
    /// ```
    /// use futures_util::{FutureExt, select};
    /// use std::time::Duration;
    ///
    /// # #[cfg(feature = "smol")] // on smol's executor, the default
    /// smol::block_on(async {
    ///     let group: oneflight::Group<String, u32> = oneflight::Group::new();
    ///     let rx = group.do_chan("slow", async {
    ///         smol::Timer::after(Duration::from_millis(50)).await;
    ///         7
    ///     });
    ///     select! {
    ///         outcome = rx.recv().fuse() => println!("got {:?}", outcome),
    ///         _ = FutureExt::fuse(smol::Timer::after(Duration::from_millis(1))) => {
    ///             println!("timed out; the flight still finishes for others");
    ///         }
    ///     }
    ///     // A second caller joins the same flight and gets its value.
    ///     let again = group.do_chan("slow", async { 8 }).recv().await.unwrap();
    ///     assert_eq!(again.value, 7);
    /// });
    /// ```
    #[cfg_attr(
        docsrs,
        doc(cfg(any(feature = "smol", feature = "async-std", feature = "tokio")))
    )]
    #[track_caller]
    pub fn do_chan<Q, F>(&self, key: &Q, fut: F) -> Receiver<Outcome<V>>
    where
        Q: ?Sized + Hash + Eq + ToOwned,
        Q::Owned: Into<K>,
        K: Borrow<Q>,
        F: IntoFuture<Output = V> + Send + 'static,
        F::IntoFuture: Send,
    {
        let spawner = crate::runtime::Spawner::current();
        self.do_chan_with(key, fut, move |task| spawner.spawn(task))
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
        f.debug_struct("Group")
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}
