//! Go's `DoChan`: [`Group::do_chan_with`] on any executor, and [`Group::do_chan`] on the
//! runtime of the crate's feature. The flight runs on a spawned task; the caller gets a
//! channel.

use std::borrow::{Borrow, Cow};
use std::future::IntoFuture;
use std::hash::{BuildHasher, Hash};

use async_channel::Receiver;
use futures_util::future::BoxFuture;

use crate::Group;
use crate::flight::{FlightId, Start};
use crate::outcome::Outcome;
use crate::roles::Runner;

impl<K, V, S> Group<K, V, S>
where
    K: Hash + Eq,
    S: BuildHasher,
{
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
        #[cfg(feature = "tracing")]
        let runner_label = self.inner.observer.label().to_owned();
        // Creates the runner before spawning, so that a task its executor drops unpolled
        // still hands the flight over.
        let start = move |flight: FlightId| {
            let runner = Runner::new(Cow::Owned(group), flight);
            #[cfg(feature = "tracing")]
            let task = tracing::Instrument::instrument(
                runner.run_task(fut),
                tracing::debug_span!("oneflight.flight", group = runner_label, role = "runner"),
            );
            #[cfg(not(feature = "tracing"))]
            let task = runner.run_task(fut);
            spawn(Box::pin(task));
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
