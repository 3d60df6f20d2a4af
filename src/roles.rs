//! The callers' roles in a flight: the runner, which polls the flight's future and
//! publishes its outcome, and the waiter, a `work` caller waiting on another's run. Each
//! is a drop guard that keeps the flight's invariants when its caller is cancelled or
//! panics: a dropped runner hands the flight over, a dropped waiter leaves it.

use std::any::Any;
use std::borrow::{Borrow, Cow};
use std::future::{Future, IntoFuture, poll_fn};
use std::hash::{BuildHasher, Hash};
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::pin::{Pin, pin};
use std::task::{Context, Poll};

use crate::flight::{Ended, Flight, FlightId, Followers, Joined, Waiters, WakerId, drop_quietly};
use crate::map::{Flights, Inner};
use crate::observe;
use crate::outcome::Panicked;
use crate::reentrance;
use crate::sync::{Arc, MutexGuard, Ordering};

/// The caller that runs a flight's future: a `work` caller or a spawned task. If it is
/// dropped before the flight ends, it hands the flight over.
pub(crate) struct Runner<'g, K, V, S> {
    /// Borrowed by a `work` caller; owned by a spawned task, which must be `'static`.
    group: Cow<'g, Arc<Inner<K, V, S>>>,
    flight: FlightId,
    /// Set once the outcome is published; disarms the hand-over on drop.
    finished: bool,
}

impl<'g, K, V: Clone, S> Runner<'g, K, V, S> {
    pub(crate) fn new(group: Cow<'g, Arc<Inner<K, V, S>>>, flight: FlightId) -> Self {
        Runner {
            group,
            flight,
            finished: false,
        }
    }

    /// Runs the flight in a spawned task, which keeps no value and swallows the panic
    /// (published to the other callers already).
    pub(crate) async fn run_task<F: IntoFuture<Output = V>>(mut self, fut: F) {
        // After `self`, as `run` requires. If `into_future` panics, `self` hands the
        // flight over.
        let fut = pin!(Some(fut.into_future()));
        if let Err(payload) = self.run(fut, false).await {
            drop_quietly(payload);
        }
    }

    /// Polls `fut` to the end and publishes its outcome. Returns the runner's own copy of
    /// the value if `keep`, or the panic payload.
    ///
    /// `fut` is pinned by the caller, in its own frame rather than moved into this
    /// future, so that a `work` future holds the user's future twice (unstarted, then
    /// pinned) rather than three times. The caller declares it after the runner, so that
    /// it is dropped before the runner: a cancelled future is gone before the hand-over in
    /// `Runner::drop` lets another caller's future start.
    pub(crate) async fn run<Fut: Future<Output = V>>(
        &mut self,
        mut fut: Pin<&mut Option<Fut>>,
        keep: bool,
    ) -> Result<Option<V>, Box<dyn Any + Send>> {
        let frame = reentrance::frame(&**self.group, self.flight);
        let polled = poll_fn(|cx| {
            let running = fut.as_mut().as_pin_mut().expect("polled after its end");
            // Outside `catch_unwind`, which returns normally even when the future panics.
            let _polling = reentrance::polling(frame);
            match catch_unwind(AssertUnwindSafe(|| running.poll(cx))) {
                Ok(Poll::Ready(value)) => Poll::Ready(Ok(value)),
                Ok(Poll::Pending) => Poll::Pending,
                Err(payload) => Poll::Ready(Err(payload)),
            }
        })
        .await;
        match polled {
            Ok(value) => Ok(self.publish(Ok(value), keep)),
            Err(payload) => {
                self.publish(Err(Panicked::from_payload(&*payload)), false);
                // Gone before the panic resumes, as it would be without oneflight.
                fut.set(None);
                Err(payload)
            }
        }
    }

    /// Ends the flight with `outcome`: removes it and publishes in one critical section,
    /// then wakes and sends to the waiting callers.
    fn publish(&mut self, outcome: Result<V, Panicked>, keep: bool) -> Option<V> {
        self.finished = true;
        let mut flights = self.group.lock(self.flight.hash);
        let (flight, key) = flights
            .remove(self.flight)
            .expect("only its runner ends a running flight");
        if outcome.is_err() {
            flights.counts.panics += 1;
            self.group.observer.panicked();
        }
        let Some(ended) = flight.end() else {
            // Nobody else ever joined: the fast path, kept small.
            // The key is dropped after unlocking: its `Drop` is user code.
            drop(flights);
            drop(key);
            return outcome.ok().filter(|_| keep);
        };
        observe::event!(
            self.group.observer,
            panicked = outcome.is_err(),
            "published a flight's outcome to its other callers"
        );
        share(flights, key, ended, outcome, keep)
    }
}

/// Publishes a flight's outcome to the callers that joined it, then wakes and sends to
/// them after unlocking `flights`, the critical section that ended the flight.
#[inline(never)]
fn share<K, V: Clone>(
    flights: MutexGuard<'_, Flights<K, V>>,
    key: Option<K>,
    mut ended: Ended<V>,
    outcome: Result<V, Panicked>,
    keep: bool,
) -> Option<V> {
    let mut unshared = Some(outcome);
    if let Some(followers) = &ended.followers {
        let _ = followers
            .waiters
            .outcome
            .set(unshared.take().expect("published once"));
    }
    drop(flights);
    drop(key);
    let waiters = ended.followers.take().map(|followers| {
        let Followers { waiters, wakers } = *followers;
        wakers.wake_all();
        waiters
    });
    let published = match (&unshared, &waiters) {
        (Some(outcome), _) => outcome.as_ref().ok(),
        (None, Some(waiters)) => waiters.outcome.get().and_then(|o| o.as_ref().ok()),
        (None, None) => None,
    };
    ended.deliver(published);
    if !keep {
        return None;
    }
    match unshared {
        Some(outcome) => outcome.ok(),
        // The runner's clone comes last: if it panics, only the runner is hurt.
        None => published.cloned(),
    }
}

impl<K, V, S> Drop for Runner<'_, K, V, S> {
    fn drop(&mut self) {
        if !self.finished {
            if let Some(handover) = self.group.update(self.flight, Flight::vacate) {
                handover.run(self.flight);
            }
        }
    }
}

/// A `work` caller until it has the flight's value or must run the flight: it joins at
/// its first poll, with the task's waker at hand so that a follower's waker goes into its
/// slot in the same critical section, then waits if another caller runs the flight.
///
/// A future of its own, owning its waiter, rather than a closure in `work`'s body that
/// borrows one there: a borrow into the body's own frame is a self-reference, which
/// combinators that read the whole `work` future through a shared reference (`select!`'s
/// `is_terminated`) would alias.
pub(crate) struct Arrival<'g, 'k, K, V, S, Q: ?Sized> {
    group: &'g Arc<Inner<K, V, S>>,
    key: &'k Q,
    /// Once joined as a follower.
    waiter: Option<Waiter<'g, K, V, S>>,
}

impl<'g, 'k, K, V, S, Q: ?Sized> Arrival<'g, 'k, K, V, S, Q> {
    pub(crate) fn new(group: &'g Arc<Inner<K, V, S>>, key: &'k Q) -> Self {
        Arrival {
            group,
            key,
            waiter: None,
        }
    }
}

impl<'g, K, V, S, Q> Future for Arrival<'g, '_, K, V, S, Q>
where
    Q: ?Sized + Hash + Eq + ToOwned,
    Q::Owned: Into<K>,
    K: Borrow<Q>,
    S: BuildHasher,
    V: Clone,
{
    /// The value, or the flight whose run this caller now owns: a fresh one, or a vacant
    /// one it claimed. `work` makes it a [`Runner`] at once, with no user code between.
    type Output = Result<V, FlightId>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let waiter = match &mut this.waiter {
            Some(waiter) => waiter,
            None => {
                let hash = this.group.hasher.hash_one(this.key);
                let (flight, joined) = this.group.join(hash, this.key, |flight, fresh| {
                    if fresh {
                        None
                    } else {
                        flight.join_work(cx.waker())
                    }
                });
                let Some(joined) = joined else {
                    observe::role!("runner");
                    return Poll::Ready(Err(flight));
                };
                observe::role!("joined");
                this.waiter.insert(Waiter::new(this.group, flight, joined))
            }
        };
        waiter.poll_value(cx)
    }
}

/// A `work` caller waiting on another caller's run. If dropped while waiting, it leaves
/// the flight, handing it on if the flight was vacant and counting on this caller.
struct Waiter<'g, K, V, S> {
    group: &'g Arc<Inner<K, V, S>>,
    flight: FlightId,
    /// Where the outcome appears.
    waiters: Arc<Waiters<V>>,
    /// This caller's slot in the flight's wakers.
    slot: usize,
    /// The waker this caller's slot was last given, to tell when the task's waker changed.
    registered: WakerId,
    /// `waiters.vacancies` when this caller last looked at the flight under the lock.
    vacancies: u64,
    /// Whether this caller is still counted among the flight's waiting callers.
    armed: bool,
    /// When this caller joined, for `oneflight_wait_seconds`.
    #[cfg(feature = "metrics")]
    joined_at: std::time::Instant,
}

impl<'g, K, V: Clone, S> Waiter<'g, K, V, S> {
    /// A caller that joined `flight`.
    fn new(group: &'g Arc<Inner<K, V, S>>, flight: FlightId, joined: Joined<V>) -> Self {
        Waiter {
            group,
            flight,
            waiters: joined.waiters,
            slot: joined.slot,
            registered: joined.registered,
            vacancies: joined.vacancies,
            armed: true,
            #[cfg(feature = "metrics")]
            joined_at: std::time::Instant::now(),
        }
    }

    /// Polls until the flight ends, then returns this caller's clone of its value, or
    /// until this caller must run it.
    ///
    /// # Panics
    ///
    /// With a [`Panicked`] payload, if the flight's future panicked.
    fn poll_value(&mut self, cx: &mut Context<'_>) -> Poll<Result<V, FlightId>> {
        let waited = std::task::ready!(self.poll_wait(cx));
        #[cfg(feature = "metrics")]
        self.group.observer.waited(self.joined_at);
        if let Err(flight) = waited {
            return Poll::Ready(Err(flight));
        }
        self.armed = false;
        match self
            .waiters
            .outcome
            .get()
            .expect("set before the flight ended")
        {
            Ok(value) => Poll::Ready(Ok(value.clone())),
            Err(panicked) => resume_unwind(Box::new(panicked.clone())),
        }
    }

    /// `Ready(Ok)` once the outcome is set; `Ready(Err)` if this caller claimed the run of
    /// the vacant flight, which `work` turns into its [`Runner`] at once. Takes the lock
    /// only when the flight became vacant since this caller last looked, or when the
    /// task's waker changed.
    fn poll_wait(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), FlightId>> {
        if self.waiters.outcome.get().is_some() {
            return Poll::Ready(Ok(()));
        }
        let vacated = || self.waiters.vacancies.load(Ordering::SeqCst) != self.vacancies;
        if !vacated() && self.registered == WakerId::of(cx.waker()) {
            // The slot holds this waker, or a vacancy or the end took it out to wake it.
            return Poll::Pending;
        }
        let mut flights = self.group.lock(self.flight.hash);
        let Some(flight) = flights.get_mut(self.flight) else {
            // Ended: its outcome was set in the critical section that removed it.
            return Poll::Ready(Ok(()));
        };
        // Asked again under the lock, where vacancies are counted: one that came since
        // the look above took out the waker about to be replaced.
        if vacated() {
            if let Some(waker) = flight.claim_waiting(self.slot) {
                flights.counts.takeovers += 1;
                drop(flights);
                self.group.observer.takeovers(1);
                observe::role!("takeover");
                observe::event!(
                    self.group.observer,
                    "took over a flight whose runner went away"
                );
                self.armed = false;
                // No runner guards the claimed run until `work` makes one: a panic in
                // this drop must not strand it.
                drop_quietly(waker);
                return Poll::Ready(Err(self.flight));
            }
            self.vacancies = self.waiters.vacancies.load(Ordering::SeqCst);
        }
        // Back in the slot: a vacancy took the waker out, or the task's waker changed.
        let (registered, replaced) = flight.register(self.slot, cx.waker());
        drop(flights);
        drop(replaced);
        self.registered = registered;
        Poll::Pending
    }
}

impl<K, V, S> Drop for Waiter<'_, K, V, S> {
    fn drop(&mut self) {
        if self.armed {
            let slot = self.slot;
            if let Some((handover, waker)) = self.group.update(self.flight, |f| f.leave(slot)) {
                drop(waker);
                handover.run(self.flight);
            }
        }
    }
}
