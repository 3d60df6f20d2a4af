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
//!   what must be dropped or started is handed out and dealt with after unlocking. Wakers
//!   are cloned under the lock (executors make that a reference count), but never dropped
//!   or woken there: a waker's drop may drop a task, and with it a user's future.
//! - Each waiting `work` caller has a slot in [`Followers::wakers`] ([`crate::wakers`]). A slot holds the
//!   caller's waker unless a vacancy or the end of the flight took it out to wake it;
//!   whoever takes wakers out wakes every one of them after unlocking. A waiter that was
//!   woken without an outcome (a vacancy) takes the lock, and puts its waker back while
//!   it holds it. So no wake-up is lost: the end of the flight and every vacancy, both
//!   under the lock, find the waker of each waiting caller that has not yet been woken.
//!
//! An uncontended flight allocates nothing here: [`Followers`], what `work` followers
//! wait on, is allocated when the first of them joins, with room for the first slots, so
//! that a flight with few followers allocates no more.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::task::Waker;

use async_channel::Sender;

use crate::outcome::{Outcome, Panicked};
use crate::sync::{Arc, AtomicU64, OnceLock, Ordering};
pub(crate) use crate::wakers::{WakerId, Wakers};

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
    /// The `work` callers that ever waited; allocated when the first of them joins.
    followers: Option<Box<Followers<V>>>,
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

/// A flight's waiting `work` callers.
pub(crate) struct Followers<V> {
    /// What they read without the lock.
    pub(crate) waiters: Arc<Waiters<V>>,
    /// Their wakers, one slot each; see the module docs.
    pub(crate) wakers: Wakers,
}

/// What waiting `work` callers share with the flight, outside the lock.
pub(crate) struct Waiters<V> {
    /// The flight's result: written once, in the critical section that ends the flight,
    /// and read without a lock afterwards.
    pub(crate) outcome: OnceLock<Result<V, Panicked>>,
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
    WakeWaiters(Vec<Waker>),
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
    /// Where waiting `work` callers find the outcome, and their wakers to wake once it is
    /// set, if any ever joined.
    pub(crate) followers: Option<Box<Followers<V>>>,
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
            followers: None,
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

    /// A `work` caller joins, woken by `waker` while it waits. Returns `None` if it must
    /// run the flight now (it was vacant), else where it waits: what it reads, the count
    /// of vacancies so far, and its slot.
    pub(crate) fn join_work(&mut self, waker: &Waker) -> Option<Joined<V>> {
        self.joined += 1;
        if self.claim() {
            return None;
        }
        self.waiting += 1;
        let followers = self.followers.get_or_insert_with(|| {
            Box::new(Followers {
                waiters: Arc::new(Waiters {
                    outcome: OnceLock::new(),
                    vacancies: AtomicU64::new(0),
                }),
                wakers: Wakers::default(),
            })
        });
        let waker = waker.clone();
        Some(Joined {
            vacancies: followers.waiters.vacancies.load(Ordering::SeqCst),
            waiters: followers.waiters.clone(),
            registered: WakerId::of(&waker),
            slot: followers.wakers.insert(waker),
        })
    }

    /// Puts a waiting caller's current waker in its slot. Returns which waker the slot
    /// now holds, and the waker it replaced, to drop after unlocking.
    pub(crate) fn register(&mut self, slot: usize, waker: &Waker) -> (WakerId, Option<Waker>) {
        let waker = waker.clone();
        let registered = WakerId::of(&waker);
        (registered, self.wakers().replace(slot, Some(waker)))
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

    /// The slots of waiting callers, who have them since they joined.
    fn wakers(&mut self) -> &mut Wakers {
        let followers = self.followers.as_mut();
        &mut followers
            .expect("waiting callers have their followers")
            .wakers
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

    /// A waiting `work` caller claims a vacant flight. Returns whether it now runs it, and
    /// if so the waker its slot still held, to drop after unlocking.
    pub(crate) fn claim_waiting(&mut self, slot: usize) -> Option<Option<Waker>> {
        if !self.claim() {
            return None;
        }
        self.waiting -= 1;
        Some(self.wakers().remove(slot))
    }

    /// Whether any caller but the first ever joined.
    pub(crate) fn shared(&self) -> bool {
        self.joined > 1
    }

    /// The runner finished, and the flight was taken out of the group's structures.
    /// `None` if no other caller ever waited on it: there is nobody to tell.
    pub(crate) fn end(self) -> Option<Ended<V>> {
        if self.followers.is_none() && self.channels.is_none() {
            return None;
        }
        Some(Ended {
            shared: self.shared(),
            followers: self.followers,
            channels: self.channels,
        })
    }

    /// The runner went away without an outcome.
    pub(crate) fn vacate(&mut self) -> Handover<V> {
        debug_assert_eq!(self.phase, Phase::Running);
        self.phase = Phase::Vacant;
        self.reassign()
    }

    /// A waiting `work` caller went away, from `slot`. Returns what must happen next, and
    /// the waker its slot still held, to drop after unlocking.
    pub(crate) fn leave(&mut self, slot: usize) -> (Handover<V>, Option<Waker>) {
        self.waiting -= 1;
        let waker = self.wakers().remove(slot);
        let handover = match self.phase {
            Phase::Vacant => self.reassign(),
            Phase::Running | Phase::Ended => Handover::Nothing,
        };
        (handover, waker)
    }

    /// Chooses the next runner of a vacant flight, or ends it.
    fn reassign(&mut self) -> Handover<V> {
        if self.waiting > 0 {
            let followers = self
                .followers
                .as_mut()
                .expect("waiting callers have their followers");
            followers.waiters.vacancies.fetch_add(1, Ordering::SeqCst);
            return Handover::WakeWaiters(followers.wakers.take_all());
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
            Handover::WakeWaiters(wakers) => wakers.into_iter().for_each(Waker::wake),
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

/// What a waiting `work` caller needs from [`Flight::join_work`].
pub(crate) struct Joined<V> {
    pub(crate) waiters: Arc<Waiters<V>>,
    pub(crate) vacancies: u64,
    pub(crate) slot: usize,
    /// The waker put in the slot.
    pub(crate) registered: WakerId,
}

/// Drops user values (futures, spawners, panic payloads) where a panic in their `Drop`
/// must not reach a caller that does not own them.
pub(crate) fn drop_quietly<T>(value: T) {
    if let Err(payload) = catch_unwind(AssertUnwindSafe(|| drop(value))) {
        // A payload whose own drop panics is leaked rather than allowed to unwind.
        std::mem::forget(payload);
    }
}
