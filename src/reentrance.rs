//! Catches re-entrance: a flight's future that, inside its own poll, calls the group for
//! its own key would join itself and wait forever. While a runner polls its future, the
//! flight is on this thread's stack of running flights; a caller that joins a flight on
//! that stack is inside it, and is refused with a panic instead.
//!
//! Only the thread's own polls are seen: a flight that awaits a task which calls the group
//! for its key is not detected (it waits forever, as in Go).

use std::cell::Cell;

use crate::flight::FlightId;
use crate::sync::thread_local;

/// How many nested running flights a thread records; deeper ones are not checked (a flight
/// whose future runs flights of other keys, nested more than this deep, is rare).
const DEPTH: usize = 8;

/// A running flight: its group's address and its id.
pub(crate) type Frame = (usize, FlightId);

const NONE: Frame = (0, FlightId { hash: 0, id: 0 });

/// The flights whose futures a thread is polling now, nested.
struct Running {
    /// How many, nested.
    depth: Cell<usize>,
    /// The outermost `DEPTH` of them.
    frames: [Cell<Frame>; DEPTH],
}

thread_local! {
    /// Plain cells with no destructor, so that the runner's every poll costs two
    /// thread-local stores and a load, and no lazy registration.
    static RUNNING: Running = const {
        Running { depth: Cell::new(0), frames: [const { Cell::new(NONE) }; DEPTH] }
    };
}

/// Marks a flight as being polled on this thread, until dropped.
pub(crate) struct Polling(());

/// Names `flight` of the group at `group` for [`polling`] and [`is_running`].
pub(crate) fn frame<G>(group: &G, flight: FlightId) -> Frame {
    (group as *const G as usize, flight)
}

pub(crate) fn polling(frame: Frame) -> Polling {
    RUNNING.with(|running| {
        let depth = running.depth.get();
        if let Some(slot) = running.frames.get(depth) {
            slot.set(frame);
        }
        running.depth.set(depth + 1);
    });
    Polling(())
}

impl Drop for Polling {
    fn drop(&mut self) {
        RUNNING.with(|running| running.depth.set(running.depth.get() - 1));
    }
}

/// Whether this thread is inside the poll of the flight `frame`.
pub(crate) fn is_running(frame: Frame) -> bool {
    RUNNING.with(|running| {
        let depth = running.depth.get().min(DEPTH);
        running.frames[..depth].iter().any(|f| f.get() == frame)
    })
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
