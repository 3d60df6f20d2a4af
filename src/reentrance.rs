//! Catches re-entrance: a flight's future that, inside its own poll, calls the group for
//! its own key would join itself and wait forever. While a runner polls its future, the
//! flight is on this thread's stack of running flights; a caller that joins a flight on
//! that stack is inside it, and is refused with a panic instead.
//!
//! Only the thread's own polls are seen: a flight that awaits a task which calls the group
//! for its key is not detected (it waits forever, as in Go).

use std::cell::RefCell;

use crate::flight::FlightId;
use crate::sync::thread_local;

thread_local! {
    /// The flights whose futures this thread is polling now, innermost last, each with its
    /// group's address.
    static RUNNING: RefCell<Vec<(usize, FlightId)>> = const { RefCell::new(Vec::new()) };
}

/// Marks `flight` of the group at `group` as being polled on this thread, until dropped.
pub(crate) struct Polling(());

pub(crate) fn polling<G>(group: &G, flight: FlightId) -> Polling {
    let group = group as *const G as usize;
    RUNNING.with(|running| running.borrow_mut().push((group, flight)));
    Polling(())
}

impl Drop for Polling {
    fn drop(&mut self) {
        RUNNING.with(|running| running.borrow_mut().pop());
    }
}

/// Whether this thread is inside the poll of `flight` of the group at `group`.
pub(crate) fn is_running<G>(group: &G, flight: FlightId) -> bool {
    let group = group as *const G as usize;
    RUNNING.with(|running| running.borrow().contains(&(group, flight)))
}

/// Refuses a re-entrant call.
///
/// # Panics
///
/// Always, with a message that starts with `oneflight: re-entrant call`.
#[track_caller]
pub(crate) fn refuse() -> ! {
    panic!(
        "oneflight: re-entrant call: a flight's future called the group for its own key, \
         and would wait for itself forever"
    )
}
