//! Compile-time checks of auto traits: the group and its futures are `Send`/`Sync` when
//! their parts are, and `work` serves `!Send` futures too.

use oneflight::{Group, Outcome, Panicked};
use std::rc::Rc;
use std::sync::Arc;

fn send<T: Send>(_: &T) {}
fn sync<T: Sync>(_: &T) {}
fn send_sync_static<T: Send + Sync + 'static>() {}

#[test]
fn group_and_types_are_send_and_sync() {
    send_sync_static::<Group<String, String>>();
    send_sync_static::<Group<Arc<str>, Arc<Vec<u8>>>>();
    send_sync_static::<Outcome<String>>();
    send_sync_static::<Panicked>();
}

#[test]
fn work_future_is_send_when_its_parts_are() {
    let group: Group<String, String> = Group::new();
    let fut = group.work("key", async { String::new() });
    send(&fut);
    sync(&group);
    drop(fut);
}

#[test]
fn work_accepts_not_send_futures_and_values() {
    let group: Group<String, Rc<str>> = Group::new();
    let local = Rc::new(1);
    let fut = group.work("key", async move {
        let _held = local;
        Rc::from("value")
    });
    // Only polled on this thread: a local executor's task.
    assert_eq!(&*futures_executor::block_on(fut), "value");
}

#[test]
fn group_is_debug_without_debug_keys_or_values() {
    struct Opaque;
    #[derive(Hash, PartialEq, Eq)]
    struct Key;
    let group: Group<Key, Opaque> = Group::new();
    assert_eq!(format!("{group:?}"), "Group { in_flight: 0, .. }");
}
