//! Model-based test: random sequences of operations on a group, driven by hand on one
//! thread, checked after every step against a small reference model of what each caller
//! must see and what `in_flight()` must return.
//!
//! The flights' futures are controlled by the test: each logs when it starts, finishes,
//! panics or is dropped while running, and finishes or panics only when told to. The
//! model predicts every event except one choice the contract leaves open (which waiting
//! `do_chan` caller takes a flight over), and checks that choice was a legal one.

mod common;

use common::{poll_once, quiet_panics};
use futures_util::future::BoxFuture;
use oneflight::{Group, Outcome, Panicked};
use proptest::prelude::*;
use std::collections::BTreeSet;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

const KEYS: u8 = 2;

/// One step of a test case. Callers are named by their index, modulo how many exist.
#[derive(Debug, Clone)]
enum Op {
    /// A `work` call on `key`, polled once.
    StartWork {
        key: u8,
    },
    /// A `do_chan_with` call on `key`; its task, if spawned, runs at once.
    StartChan {
        key: u8,
    },
    /// Polls a `work` caller once.
    Poll {
        caller: usize,
    },
    /// Drops a `work` caller's future or a `do_chan` caller's receiver.
    Cancel {
        caller: usize,
    },
    /// Lets the caller's future return its value (`1000 + caller`) when next polled.
    Finish {
        caller: usize,
    },
    /// Makes the caller's future panic when next polled.
    Panic {
        caller: usize,
    },
    Forget {
        key: u8,
    },
    ForgetUnshared {
        key: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let caller = 0..8usize;
    prop_oneof![
        (0..KEYS).prop_map(|key| Op::StartWork { key }),
        (0..KEYS).prop_map(|key| Op::StartChan { key }),
        caller.clone().prop_map(|caller| Op::Poll { caller }),
        caller.clone().prop_map(|caller| Op::Poll { caller }),
        caller.clone().prop_map(|caller| Op::Cancel { caller }),
        caller.clone().prop_map(|caller| Op::Finish { caller }),
        caller.prop_map(|caller| Op::Panic { caller }),
        (0..KEYS).prop_map(|key| Op::Forget { key }),
        (0..KEYS).prop_map(|key| Op::ForgetUnshared { key }),
    ]
}

/// What the controlled futures did, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    Started(usize),
    Finished(usize),
    Panicked(usize),
    /// Dropped after starting and before finishing: its runner was cancelled.
    Dropped(usize),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Plan {
    Wait,
    Finish,
    Panic,
}

/// The board the test and the controlled futures share.
#[derive(Default)]
struct Board {
    plans: Vec<Plan>,
    wakers: Vec<Option<Waker>>,
    events: Vec<Event>,
}

/// A flight's future for caller `id`, under the test's control.
struct Controlled {
    id: usize,
    board: Arc<Mutex<Board>>,
    started: bool,
    done: bool,
}

impl Future for Controlled {
    type Output = u32;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u32> {
        let id = self.id;
        let plan = {
            let mut board = self.board.lock().unwrap();
            if !self.started {
                board.events.push(Event::Started(id));
            }
            board.wakers[id] = Some(cx.waker().clone());
            board.plans[id]
        };
        self.started = true;
        match plan {
            Plan::Wait => Poll::Pending,
            Plan::Finish => {
                self.done = true;
                self.board.lock().unwrap().events.push(Event::Finished(id));
                Poll::Ready(1000 + id as u32)
            }
            Plan::Panic => {
                self.done = true;
                self.board.lock().unwrap().events.push(Event::Panicked(id));
                panic!("controlled future panicked on purpose")
            }
        }
    }
}

impl Drop for Controlled {
    fn drop(&mut self) {
        if self.started && !self.done {
            self.board
                .lock()
                .unwrap()
                .events
                .push(Event::Dropped(self.id));
        }
    }
}

/// How a flight of the model ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Value(u32),
    Panic,
    /// Nobody was left who could run it.
    Abandoned,
}

/// A flight in the model.
#[derive(Debug)]
struct Flight {
    key: u8,
    /// Whether a new caller of `key` would join it.
    in_map: bool,
    /// The caller whose future runs now; `None` while vacant (or ended).
    runner: Option<usize>,
    /// Callers that ever joined, the first included.
    joined: usize,
    /// `work` callers waiting now.
    waiting: BTreeSet<usize>,
    /// `do_chan` callers with a live receiver whose future has not run: the standbys.
    standby: BTreeSet<usize>,
    end: Option<End>,
    /// The caller whose future ended the flight (finished or panicked).
    ended_by: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Work,
    Chan,
}

/// A caller in the model.
#[derive(Debug)]
struct Caller {
    flight: usize,
    /// Whether its future ever ran (a `work` runner's own result is its future's).
    ran: bool,
    /// Still has its future or receiver, and has not seen its result.
    live: bool,
}

/// A caller in the test: what the model's caller holds for real.
enum Handle {
    Work(Option<BoxFuture<'static, u32>>),
    Chan(Option<async_channel::Receiver<Outcome<u32>>>),
}

struct Harness {
    group: Group<u8, u32>,
    board: Arc<Mutex<Board>>,
    executor: Arc<async_executor::Executor<'static>>,
    handles: Vec<Handle>,
    flights: Vec<Flight>,
    callers: Vec<Caller>,
}

impl Harness {
    fn new() -> Self {
        Harness {
            group: Group::new(),
            board: Arc::default(),
            executor: Arc::new(async_executor::Executor::new()),
            handles: Vec::new(),
            flights: Vec::new(),
            callers: Vec::new(),
        }
    }

    fn controlled(&self, id: usize) -> Controlled {
        let mut board = self.board.lock().unwrap();
        board.plans.push(Plan::Wait);
        board.wakers.push(None);
        Controlled {
            id,
            board: self.board.clone(),
            started: false,
            done: false,
        }
    }

    /// The model's flight that a new caller of `key` joins, if any.
    fn current(&self, key: u8) -> Option<usize> {
        self.flights.iter().position(|f| f.key == key && f.in_map)
    }

    /// Records a new caller joining (or starting) a flight of `key`. Returns the flight
    /// and whether the caller must run it now.
    fn join(&mut self, key: u8, kind: Kind) -> (usize, bool) {
        let id = self.callers.len();
        let (flight, runs) = match self.current(key) {
            Some(f) => {
                let flight = &mut self.flights[f];
                flight.joined += 1;
                let runs = flight.runner.is_none();
                if !runs {
                    match kind {
                        Kind::Work => flight.waiting.insert(id),
                        Kind::Chan => flight.standby.insert(id),
                    };
                }
                (f, runs)
            }
            None => {
                self.flights.push(Flight {
                    key,
                    in_map: true,
                    runner: None,
                    joined: 1,
                    waiting: BTreeSet::new(),
                    standby: BTreeSet::new(),
                    end: None,
                    ended_by: None,
                });
                (self.flights.len() - 1, true)
            }
        };
        self.callers.push(Caller {
            flight,
            ran: false,
            live: true,
        });
        (flight, runs)
    }

    fn run_executor(&self) {
        while self.executor.try_tick() {}
    }

    fn take_events(&self) -> Vec<Event> {
        std::mem::take(&mut self.board.lock().unwrap().events)
    }

    /// Applies the events the futures logged to the model, checking each is legal.
    /// `expected_start` is the caller that must start now, if the model knows it.
    fn apply_events(&mut self, expected_start: Option<usize>) {
        let events = self.take_events();
        let mut started = None;
        for event in events {
            match event {
                Event::Started(id) => {
                    let f = self.callers[id].flight;
                    let flight = &mut self.flights[f];
                    assert_eq!(
                        flight.runner, None,
                        "{id} started while another runs {flight:?}"
                    );
                    assert_eq!(flight.end, None, "{id} started on an ended flight");
                    // Only one execution per key among the flights in the map.
                    let key = flight.key;
                    flight.runner = Some(id);
                    flight.waiting.remove(&id);
                    flight.standby.remove(&id);
                    self.callers[id].ran = true;
                    let running_in_map = self
                        .flights
                        .iter()
                        .filter(|fl| fl.key == key && fl.in_map && fl.runner.is_some())
                        .count();
                    assert!(
                        running_in_map <= 1,
                        "two executions of key {key} in the map"
                    );
                    started = Some(id);
                }
                Event::Finished(id) | Event::Panicked(id) => {
                    let f = self.callers[id].flight;
                    let flight = &mut self.flights[f];
                    assert_eq!(flight.runner, Some(id), "{id} ended but did not run");
                    flight.runner = None;
                    flight.in_map = false;
                    flight.ended_by = Some(id);
                    flight.end = Some(match event {
                        Event::Finished(_) => End::Value(1000 + id as u32),
                        _ => End::Panic,
                    });
                }
                Event::Dropped(id) => {
                    let f = self.callers[id].flight;
                    assert_eq!(
                        self.flights[f].runner,
                        Some(id),
                        "{id} dropped but did not run"
                    );
                    self.flights[f].runner = None;
                    self.vacate(f);
                }
            }
        }
        if let Some(expected) = expected_start {
            let f = self.callers[expected].flight;
            if self.flights[f].end.is_none() || self.callers[expected].ran {
                assert_eq!(
                    started.or(self.flights[f].runner),
                    Some(expected),
                    "{expected} must run"
                );
            }
        }
    }

    /// A vacant flight: a waiting `work` caller will claim it when polled; else a live
    /// standby must have been started (checked by `settle`); else it ends.
    fn vacate(&mut self, f: usize) {
        let flight = &mut self.flights[f];
        if flight.waiting.is_empty() && flight.standby.is_empty() {
            flight.in_map = false;
            flight.end = Some(End::Abandoned);
        }
    }

    /// After an operation: runs spawned tasks, applies their events, and checks that no
    /// flight is left vacant with only standbys (one of them must have been started).
    fn settle(&mut self) {
        self.run_executor();
        self.apply_events(None);
        for (f, flight) in self.flights.iter().enumerate() {
            if flight.end.is_none() && flight.runner.is_none() {
                assert!(
                    !flight.waiting.is_empty(),
                    "flight {f} is vacant and no waiting caller can claim it: {flight:?}"
                );
            }
        }
        self.check_channels();
        let in_map = self.flights.iter().filter(|f| f.in_map).count();
        assert_eq!(
            self.group.in_flight(),
            in_map,
            "in_flight() disagrees with the model"
        );
    }

    /// Every live `do_chan` caller sees exactly what its flight's end says.
    fn check_channels(&mut self) {
        for id in 0..self.callers.len() {
            let Handle::Chan(Some(rx)) = &self.handles[id] else {
                continue;
            };
            let flight = &self.flights[self.callers[id].flight];
            let got = rx.try_recv();
            match flight.end {
                None => assert_eq!(got, Err(async_channel::TryRecvError::Empty), "caller {id}"),
                Some(End::Value(value)) => {
                    let shared = flight.joined > 1;
                    assert_eq!(got, Ok(Outcome { value, shared }), "caller {id}");
                    self.handles[id] = Handle::Chan(None);
                    self.callers[id].live = false;
                }
                Some(End::Panic | End::Abandoned) => {
                    assert_eq!(got, Err(async_channel::TryRecvError::Closed), "caller {id}");
                    self.handles[id] = Handle::Chan(None);
                    self.callers[id].live = false;
                }
            }
        }
    }

    fn pick(&self, caller: usize) -> Option<usize> {
        (!self.callers.is_empty()).then(|| caller % self.callers.len())
    }

    fn step(&mut self, op: &Op) {
        match *op {
            Op::StartWork { key } => {
                let id = self.callers.len();
                let (_, runs) = self.join(key, Kind::Work);
                let group = self.group.clone();
                let fut = self.controlled(id);
                let mut work: BoxFuture<'static, u32> =
                    Box::pin(async move { group.work(&key, fut).await });
                assert!(
                    poll_once(work.as_mut()).is_pending(),
                    "a new flight is pending"
                );
                self.handles.push(Handle::Work(Some(work)));
                self.apply_events(runs.then_some(id));
            }
            Op::StartChan { key } => {
                let id = self.callers.len();
                let (_, runs) = self.join(key, Kind::Chan);
                let fut = self.controlled(id);
                let executor = self.executor.clone();
                let rx = self.group.do_chan_with(&key, fut, move |task| {
                    executor.spawn(task).detach();
                });
                self.handles.push(Handle::Chan(Some(rx)));
                self.run_executor();
                self.apply_events(runs.then_some(id));
            }
            Op::Poll { caller } => {
                let Some(id) = self.pick(caller) else { return };
                let Handle::Work(Some(work)) = &mut self.handles[id] else {
                    return;
                };
                let polled = catch_unwind(AssertUnwindSafe(|| poll_once(work.as_mut())));
                self.apply_events(None);
                let f = self.callers[id].flight;
                // A waiting caller of a vacant flight claims it when polled.
                if self.flights[f].end.is_none()
                    && self.flights[f].runner.is_none()
                    && self.flights[f].waiting.contains(&id)
                {
                    panic!("caller {id} was polled on a vacant flight and did not claim it");
                }
                let end = self.flights[f].end;
                match polled {
                    Ok(Poll::Pending) => {
                        assert_eq!(end, None, "caller {id} pending on an ended flight");
                    }
                    Ok(Poll::Ready(value)) => {
                        assert_eq!(end, Some(End::Value(value)), "caller {id} got {value}");
                        self.handles[id] = Handle::Work(None);
                        self.callers[id].live = false;
                    }
                    Err(payload) => {
                        assert_eq!(end, Some(End::Panic), "caller {id} panicked");
                        if self.flights[f].ended_by == Some(id) {
                            assert!(
                                payload.downcast_ref::<&str>().is_some(),
                                "runner sees its panic"
                            );
                        } else {
                            let panicked = payload.downcast_ref::<Panicked>().expect("a Panicked");
                            assert_eq!(panicked.message(), "controlled future panicked on purpose");
                        }
                        self.handles[id] = Handle::Work(None);
                        self.callers[id].live = false;
                    }
                }
                if !self.callers[id].live {
                    self.flights[f].waiting.remove(&id);
                }
            }
            Op::Cancel { caller } => {
                let Some(id) = self.pick(caller) else { return };
                let f = self.callers[id].flight;
                match &mut self.handles[id] {
                    Handle::Work(work @ Some(_)) => {
                        let was_waiting = self.flights[f].waiting.remove(&id);
                        drop(work.take());
                        self.callers[id].live = false;
                        // The runner's Dropped event vacates the flight; a waiter leaving a
                        // vacant flight may leave only standbys, or nobody.
                        if was_waiting
                            && self.flights[f].end.is_none()
                            && self.flights[f].runner.is_none()
                        {
                            self.vacate(f);
                        }
                        self.apply_events(None);
                    }
                    Handle::Chan(rx @ Some(_)) => {
                        drop(rx.take());
                        self.callers[id].live = false;
                        self.flights[f].standby.remove(&id);
                    }
                    _ => {}
                }
            }
            Op::Finish { caller } | Op::Panic { caller } => {
                let Some(id) = self.pick(caller) else { return };
                let waker = {
                    let mut board = self.board.lock().unwrap();
                    board.plans[id] = if matches!(op, Op::Finish { .. }) {
                        Plan::Finish
                    } else {
                        Plan::Panic
                    };
                    board.wakers[id].take()
                };
                if let Some(waker) = waker {
                    waker.wake();
                }
            }
            Op::Forget { key } => {
                let expected = self.current(key);
                assert_eq!(self.group.forget(&key), expected.is_some(), "forget({key})");
                if let Some(f) = expected {
                    self.flights[f].in_map = false;
                }
            }
            Op::ForgetUnshared { key } => {
                let expected = self.current(key).filter(|&f| self.flights[f].joined == 1);
                assert_eq!(
                    self.group.forget_unshared(&key),
                    expected.is_some(),
                    "forget_unshared({key})"
                );
                if let Some(f) = expected {
                    self.flights[f].in_map = false;
                }
            }
        }
        self.settle();
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: if cfg!(miri) { 4 } else { 2_000 },
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn group_matches_the_model(ops in proptest::collection::vec(op(), 1..40)) {
        quiet_panics();
        let mut harness = Harness::new();
        for op in &ops {
            harness.step(op);
        }
        // Let every flight end: finish every future, poll every work caller.
        for id in 0..harness.callers.len() {
            harness.step(&Op::Finish { caller: id });
        }
        for id in 0..harness.callers.len() {
            harness.step(&Op::Poll { caller: id });
        }
        for id in 0..harness.callers.len() {
            harness.step(&Op::Poll { caller: id });
        }
        for id in 0..harness.callers.len() {
            harness.step(&Op::Cancel { caller: id });
        }
        prop_assert_eq!(harness.group.in_flight(), 0);
    }
}
