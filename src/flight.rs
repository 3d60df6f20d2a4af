//! The call record of one flight and its state machine.
//!
//! A flight moves through three phases:
//!
//! ```text
//!            runner dropped             a waiting caller claims it
//!  Running ------------------> Vacant ----------------------------> Running
//!     |                           |
//!     | value or panic published  | nobody left who could run it
//!     v                           v
//!   Ended <-----------------------'
//! ```
//!
//! A [`Flight`] lives in its group's map (or, once forgotten, among the group's forgotten
//! flights), in the shard that its key's hash selects, and is only touched under that
//! shard's lock ("the lock" below). Invariants, each kept under that lock:
//!
//! - In `Running`, exactly one runner exists: a `work` caller polling its future or a
//!   spawned task (or a spawner about to receive one). So one future runs per flight.
//! - `Vacant` never lasts while a caller that could run the flight waits unwoken: when a
//!   flight becomes vacant with `waiting > 0`, its vacancy count is raised and every
//!   waiting `work` caller is woken; the first to take the lock claims the run. With no `work` caller waiting, a live
//!   standby `do_chan` caller is started at once; with neither, the flight ends.
//! - A flight that ends leaves the group's structures in the same critical section that
//!   publishes its outcome, so nobody joins an ended flight. The outcome is set whenever a
//!   `work` caller waits; a flight that ends without one (nobody could run it) has no
//!   `work` caller waiting.
//! - No user code (futures, spawners, `Clone`, drops of user values) runs under the lock:
//!   what must be dropped or started is handed out and dealt with after unlocking.
//!
//! An uncontended flight allocates nothing here: [`Waiters`], what `work` followers wait
//! on, is allocated when the first of them joins.

use std::panic::{AssertUnwindSafe, catch_unwind};

use async_channel::Sender;
use event_listener::Event;

use crate::outcome::{Outcome, Panicked};
use crate::sync::{Arc, AtomicU64, OnceLock, Ordering};

/// Names a flight for its callers: its key's hash and its id, unique in its group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FlightId {
    pub(crate) hash: u64,
    pub(crate) id: u64,
}

/// Starts a waiting `do_chan` caller's future on its own executor, to take a flight over.
pub(crate) type Start = Box<dyn FnOnce(FlightId) + Send>;

/// One flight: who runs it and who waits. Guarded by its shard's lock.
pub(crate) struct Flight<V> {
    /// Unique in the group: how callers find their flight again.
    pub(crate) id: u64,
    /// Where the flight stands.
    pub(crate) phase: Phase,
    /// Callers that ever joined, the first included (`shared` is `joined > 1`).
    joined: usize,
    /// Runs started: 1 for the first caller's, plus one per takeover.
    pub(crate) runs: u64,
    /// `work` callers waiting now (the runner not included).
    waiting: usize,
    /// What waiting `work` callers listen on; allocated when the first of them joins.
    waiters: Option<Arc<Waiters<V>>>,
    /// The `do_chan` callers; allocated when the first of them joins.
    channels: Option<Box<Channels<V>>>,
}

/// The `do_chan` callers of a flight.
pub(crate) struct Channels<V> {
    /// One sender per `do_chan` caller: each gets the outcome when the flight ends.
    senders: Vec<Sender<Outcome<V>>>,
    /// Waiting `do_chan` callers whose futures can take the flight over, oldest first.
    standby: Vec<Standby>,
}

/// What waiting `work` callers share with the flight, outside the lock.
pub(crate) struct Waiters<V> {
    /// The flight's result: written once, in the critical section that ends the flight,
    /// and read without a lock afterwards.
    pub(crate) outcome: OnceLock<Result<V, Panicked>>,
    /// Wakes waiting `work` callers when the flight ends or becomes vacant.
    pub(crate) event: Event,
    /// How often the flight became vacant with `work` callers waiting; raised under the
    /// lock before they are woken. A waiter that saw no change since it last looked under
    /// the lock knows there is nothing to claim, and waits without taking the lock.
    pub(crate) vacancies: AtomicU64,
}

/// The phase of a flight; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// One runner polls the flight's future.
    Running,
    /// The runner went away before an outcome; the next waiting caller takes over.
    Vacant,
    /// The flight is over: it is about to leave the group's structures.
    Ended,
}

/// A waiting `do_chan` caller that can run the flight.
pub(crate) struct Standby {
    /// The caller's sender in [`Channels::senders`], to tell whether its receiver still
    /// exists.
    sender: usize,
    /// Spawns the caller's future as the flight's new runner.
    start: Start,
}

/// What must happen, after unlocking, when a runner or a waiter leaves a flight.
#[must_use]
pub(crate) enum Handover<V> {
    /// Nothing: a runner remains or is already being chosen.
    Nothing,
    /// Every waiting `work` caller must be woken; the first claims the run.
    WakeWaiters(Arc<Waiters<V>>),
    /// This standby's future must be spawned; it already owns the run. The others are
    /// gone (their receivers were dropped) and are dropped after unlocking.
    Start(Standby, Vec<Standby>),
    /// Nobody can run the flight: it has ended without an outcome. Dropping the senders
    /// closes the channels of `do_chan` callers.
    Abandoned(Option<Box<Channels<V>>>),
}

/// What a flight hands its finisher, under the lock, to deliver after unlocking.
pub(crate) struct Ended<V> {
    /// Whether more than one caller joined.
    pub(crate) shared: bool,
    /// Where waiting `work` callers find the outcome, if any ever joined.
    pub(crate) waiters: Option<Arc<Waiters<V>>>,
    /// Whether a `work` caller waits now, to be woken.
    pub(crate) waiting: bool,
    /// The `do_chan` callers to send the outcome to, and the futures of those that were
    /// never needed, to drop after unlocking.
    pub(crate) channels: Option<Box<Channels<V>>>,
}

impl<V> Flight<V> {
    /// A new flight with its first caller as the runner.
    pub(crate) fn new(id: u64) -> Self {
        Flight {
            id,
            phase: Phase::Running,
            joined: 1,
            runs: 1,
            waiting: 0,
            waiters: None,
            channels: None,
        }
    }

    /// The flight's `do_chan` callers, allocated on first use.
    fn channels(&mut self) -> &mut Channels<V> {
        self.channels.get_or_insert_with(|| {
            Box::new(Channels {
                senders: Vec::new(),
                standby: Vec::new(),
            })
        })
    }

    /// A `work` caller joins. Returns `None` if it must run the flight now (it was
    /// vacant), else what it waits on and the count of vacancies so far.
    pub(crate) fn join_work(&mut self) -> Option<(Arc<Waiters<V>>, u64)> {
        self.joined += 1;
        if self.claim() {
            return None;
        }
        self.waiting += 1;
        let waiters = self.waiters.get_or_insert_with(|| {
            Arc::new(Waiters {
                outcome: OnceLock::new(),
                event: Event::new(),
                vacancies: AtomicU64::new(0),
            })
        });
        let vacancies = waiters.vacancies.load(Ordering::SeqCst);
        Some((waiters.clone(), vacancies))
    }

    /// A `do_chan` caller joins with its sender. Returns its `start` back if it must run
    /// the flight now (it was vacant); else keeps it as a standby.
    pub(crate) fn join_chan(&mut self, sender: Sender<Outcome<V>>, start: Start) -> Option<Start> {
        self.joined += 1;
        if self.claim() {
            self.add_sender(sender);
            return Some(start);
        }
        let channels = self.channels();
        channels.standby.push(Standby {
            sender: channels.senders.len(),
            start,
        });
        channels.senders.push(sender);
        None
    }

    /// The first caller of a new flight is a `do_chan` caller: record its sender.
    pub(crate) fn add_sender(&mut self, sender: Sender<Outcome<V>>) {
        self.channels().senders.push(sender);
    }

    /// Makes the caller the runner if the flight is vacant.
    fn claim(&mut self) -> bool {
        debug_assert_ne!(self.phase, Phase::Ended, "ended flights are unreachable");
        if self.phase == Phase::Vacant {
            self.phase = Phase::Running;
            self.runs += 1;
            return true;
        }
        false
    }

    /// A waiting `work` caller claims a vacant flight. Returns whether it now runs it.
    pub(crate) fn claim_waiting(&mut self) -> bool {
        let claimed = self.claim();
        if claimed {
            self.waiting -= 1;
        }
        claimed
    }

    /// Whether any caller but the first ever joined.
    pub(crate) fn shared(&self) -> bool {
        self.joined > 1
    }

    /// The runner finished, and the flight was taken out of the group's structures.
    /// `None` if no other caller ever waited on it: there is nobody to tell.
    pub(crate) fn end(self) -> Option<Ended<V>> {
        if self.waiters.is_none() && self.channels.is_none() {
            return None;
        }
        Some(Ended {
            shared: self.shared(),
            waiters: self.waiters,
            waiting: self.waiting > 0,
            channels: self.channels,
        })
    }

    /// The runner went away without an outcome.
    pub(crate) fn vacate(&mut self) -> Handover<V> {
        debug_assert_eq!(self.phase, Phase::Running);
        self.phase = Phase::Vacant;
        self.reassign()
    }

    /// A waiting `work` caller went away.
    pub(crate) fn leave(&mut self) -> Handover<V> {
        self.waiting -= 1;
        match self.phase {
            Phase::Vacant => self.reassign(),
            Phase::Running | Phase::Ended => Handover::Nothing,
        }
    }

    /// Chooses the next runner of a vacant flight, or ends it.
    fn reassign(&mut self) -> Handover<V> {
        if self.waiting > 0 {
            let waiters = self
                .waiters
                .clone()
                .expect("waiting callers have their waiters");
            waiters.vacancies.fetch_add(1, Ordering::SeqCst);
            return Handover::WakeWaiters(waiters);
        }
        // A `do_chan` caller whose receiver is gone no longer waits: skip it.
        if let Some(channels) = &mut self.channels {
            let Channels { senders, standby } = &mut **channels;
            if let Some(live) = standby.iter().rposition(|s| !senders[s.sender].is_closed()) {
                let gone = standby.split_off(live + 1);
                let next = standby.pop().expect("rposition found it");
                self.phase = Phase::Running;
                self.runs += 1;
                return Handover::Start(next, gone);
            }
        }
        self.phase = Phase::Ended;
        Handover::Abandoned(self.channels.take())
    }
}

impl<V> Handover<V> {
    /// Carries the hand-over out, after the lock is released.
    pub(crate) fn run(self, flight: FlightId) {
        match self {
            Handover::Nothing => {}
            Handover::WakeWaiters(waiters) => {
                waiters.event.notify(usize::MAX);
            }
            Handover::Start(next, gone) => {
                drop_quietly(gone);
                // The spawner belongs to the caller being started, not to the one running
                // this hand-over. If it panics, the task it received was dropped, and that
                // drop already handed the flight on; the panic itself goes no further.
                drop_quietly(catch_unwind(AssertUnwindSafe(|| (next.start)(flight))));
            }
            Handover::Abandoned(channels) => {
                if let Some(channels) = channels {
                    channels.close();
                }
            }
        }
    }
}

impl<V> Channels<V> {
    /// Closes every channel that has not received a message, and drops the futures of
    /// the stand-bys, after the lock is released.
    fn close(self) {
        drop(self.senders);
        drop_quietly(self.standby);
    }
}

impl<V: Clone> Ended<V> {
    /// Sends the outcome to each `do_chan` caller: `value` if the flight's future returned
    /// one, `None` if it panicked. (Waiting `work` callers are woken by the finisher.)
    ///
    /// A value's `Clone` that panics closes only that receiver's channel. After a panic of
    /// the flight's future, every channel closes without a message.
    pub(crate) fn deliver(self, value: Option<&V>) {
        let Some(channels) = self.channels else {
            return;
        };
        if let Some(value) = value {
            for sender in &channels.senders {
                if sender.is_closed() {
                    continue;
                }
                if let Ok(value) = catch_unwind(AssertUnwindSafe(|| value.clone())) {
                    // Capacity 1 and one message per channel: this only fails if closed.
                    let _ = sender.try_send(Outcome {
                        value,
                        shared: self.shared,
                    });
                }
            }
        }
        channels.close();
    }
}

/// Drops user values (futures, spawners, panic payloads) where a panic in their `Drop`
/// must not reach a caller that does not own them.
pub(crate) fn drop_quietly<T>(value: T) {
    if let Err(payload) = catch_unwind(AssertUnwindSafe(|| drop(value))) {
        // A payload whose own drop panics is leaked rather than allowed to unwind.
        std::mem::forget(payload);
    }
}
