//! `forget` and `forget_unshared`: the old flight keeps its callers, the next call starts
//! a new one, and the old flight's end never removes the new entry.

mod common;

use common::{Gate, Log, poll_once};
use oneflight::Group;
use std::pin::pin;
use std::task::Poll;

#[test]
fn forget_during_a_flight_starts_a_new_one_beside_it() {
    let group: Group<String, &str> = Group::new();
    let log = Log::new();
    let (old_gate, new_gate) = (Gate::new(), Gate::new());
    let mut old = pin!(group.work("key", log.work("old", &old_gate, "old")));
    let mut old_follower = pin!(group.work("key", log.work("x", &old_gate, "x")));
    assert!(poll_once(old.as_mut()).is_pending());
    assert!(poll_once(old_follower.as_mut()).is_pending());

    assert!(group.forget("key"));
    assert_eq!(group.in_flight(), 0, "a forgotten flight is not counted");
    assert!(!group.forget("key"), "nothing left to forget");

    let mut new = pin!(group.work("key", log.work("new", &new_gate, "new")));
    assert!(poll_once(new.as_mut()).is_pending());
    assert_eq!(group.in_flight(), 1);

    // The old flight ends first; it must not remove the new flight's entry.
    old_gate.open();
    assert_eq!(poll_once(old.as_mut()), Poll::Ready("old"));
    assert_eq!(poll_once(old_follower.as_mut()), Poll::Ready("old"));
    assert_eq!(group.in_flight(), 1, "the new flight is still in the map");

    // A third caller joins the new flight.
    let mut third = pin!(group.work("key", log.work("third", &new_gate, "third")));
    assert!(poll_once(third.as_mut()).is_pending());
    new_gate.open();
    assert_eq!(poll_once(new.as_mut()), Poll::Ready("new"));
    assert_eq!(poll_once(third.as_mut()), Poll::Ready("new"));
    assert_eq!(
        log.events(),
        ["old started", "new started", "old finished", "new finished"]
    );
    assert_eq!(group.in_flight(), 0);
}

#[test]
fn forgotten_flight_still_hands_over_to_its_callers() {
    let group: Group<String, &str> = Group::new();
    let log = Log::new();
    let gate = Gate::new();
    let mut leader = Box::pin(group.work("key", log.work("a", &gate, "a")));
    let mut waiter = pin!(group.work("key", log.work("b", &gate, "b")));
    assert!(poll_once(leader.as_mut()).is_pending());
    assert!(poll_once(waiter.as_mut()).is_pending());
    assert!(group.forget("key"));
    let mut newer = pin!(group.work("key", log.work("c", &gate, "c")));
    assert!(poll_once(newer.as_mut()).is_pending());
    drop(leader);
    assert!(poll_once(waiter.as_mut()).is_pending());
    assert_eq!(
        log.events(),
        ["a started", "c started", "a dropped", "b started"]
    );
    gate.open();
    assert_eq!(poll_once(waiter.as_mut()), Poll::Ready("b"));
    assert_eq!(
        group.in_flight(),
        1,
        "the forgotten flight's end spares the new entry"
    );
    assert_eq!(poll_once(newer.as_mut()), Poll::Ready("c"));
    assert_eq!(group.in_flight(), 0);
}

#[test]
fn forget_unshared_forgets_only_a_flight_nobody_joined() {
    let group: Group<String, u32> = Group::new();
    let log = Log::new();
    let gate = Gate::new();
    assert!(!group.forget_unshared("key"), "no flight");

    let mut alone = pin!(group.work("key", log.work("a", &gate, 1)));
    assert!(poll_once(alone.as_mut()).is_pending());
    assert!(group.forget_unshared("key"), "only its runner has it");
    assert_eq!(group.in_flight(), 0);

    let mut leader = pin!(group.work("key", log.work("b", &gate, 2)));
    let mut joiner = Box::pin(group.work("key", log.work("c", &gate, 3)));
    assert!(poll_once(leader.as_mut()).is_pending());
    assert!(poll_once(joiner.as_mut()).is_pending());
    drop(joiner);
    assert!(
        !group.forget_unshared("key"),
        "a second caller joined once, even if it left since"
    );
    assert_eq!(group.in_flight(), 1);
    gate.open();
    assert_eq!(poll_once(alone.as_mut()), Poll::Ready(1));
    assert_eq!(poll_once(leader.as_mut()), Poll::Ready(2));
    assert_eq!(group.in_flight(), 0);
}
