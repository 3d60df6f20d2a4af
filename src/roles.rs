//! The callers' roles in a flight: the runner, which polls the flight's future and
//! publishes its outcome, and the waiter, a `work` caller waiting on another's run. Each
//! is a drop guard that keeps the flight's invariants when its caller is cancelled or
//! panics: a dropped runner hands the flight over, a dropped waiter leaves it.

use std::any::Any;
use std::borrow::Cow;
use std::future::{Future, IntoFuture, poll_fn};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::{Pin, pin};
use std::task::Poll;

use crate::flight::{Flight, FlightId, Waiters, drop_quietly};
use crate::map::Inner;
use crate::outcome::Panicked;
use crate::reentrance;
use crate::sync::{Arc, Ordering};

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
        }
        // Fast path: nobody else ever waited on this flight.
        let Some(mut ended) = flight.end() else {
            // The key is dropped after unlocking: its `Drop` is user code.
            drop(flights);
            drop(key);
            return outcome.ok().filter(|_| keep);
        };
        let mut unshared = Some(outcome);
        if let Some(waiters) = &ended.waiters {
            let _ = waiters
                .outcome
                .set(unshared.take().expect("published once"));
        }
        drop(flights);
        drop(key);
        let waiters = ended.waiters.take();
        if let (true, Some(waiters)) = (ended.waiting, &waiters) {
            waiters.event.notify(usize::MAX);
        }
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

/// A `work` caller waiting on another caller's run. If dropped while waiting, it leaves
/// the flight, handing it on if the flight was vacant and counting on this caller.
pub(crate) struct Waiter<'g, K, V, S> {
    group: &'g Arc<Inner<K, V, S>>,
    flight: FlightId,
    /// Where the outcome appears, and the event that announces it.
    waiters: Arc<Waiters<V>>,
    /// `waiters.vacancies` when this caller last looked at the flight under the lock.
    vacancies: u64,
    /// Whether this caller is still counted among the flight's waiting callers.
    armed: bool,
}

impl<'g, K, V: Clone, S> Waiter<'g, K, V, S> {
    /// A caller that joined `flight` to wait on it, having seen `vacancies` vacancies.
    pub(crate) fn new(
        group: &'g Arc<Inner<K, V, S>>,
        flight: FlightId,
        waiters: Arc<Waiters<V>>,
        vacancies: u64,
    ) -> Self {
        Waiter {
            group,
            flight,
            waiters,
            vacancies,
            armed: true,
        }
    }

    /// Waits until the flight ends (its outcome) or needs this caller to run it.
    pub(crate) async fn wait(&mut self) -> Result<&Result<V, Panicked>, Runner<'g, K, V, S>> {
        loop {
            // Fast path: the flight has ended.
            if let Some(outcome) = self.waiters.outcome.get() {
                self.armed = false;
                return Ok(outcome);
            }
            // Listen first, then check, so that no wake-up is missed in between: the
            // outcome and the vacancy count are both set before the event fires.
            event_listener::listener!(self.waiters.event => listener);
            if self.waiters.outcome.get().is_some() {
                continue;
            }
            if self.waiters.vacancies.load(Ordering::SeqCst) != self.vacancies {
                // The flight became vacant since this caller last looked: claim it, unless
                // another caller did first.
                let mut flights = self.group.lock(self.flight.hash);
                let Some(flight) = flights.get_mut(self.flight) else {
                    // Ended: its outcome was set in the critical section that removed it.
                    continue;
                };
                if flight.claim_waiting() {
                    flights.counts.takeovers += 1;
                    drop(flights);
                    self.armed = false;
                    return Err(Runner::new(Cow::Borrowed(self.group), self.flight));
                }
                self.vacancies = self.waiters.vacancies.load(Ordering::SeqCst);
            }
            listener.await;
        }
    }
}

impl<K, V, S> Drop for Waiter<'_, K, V, S> {
    fn drop(&mut self) {
        if self.armed {
            if let Some(handover) = self.group.update(self.flight, Flight::leave) {
                handover.run(self.flight);
            }
        }
    }
}
