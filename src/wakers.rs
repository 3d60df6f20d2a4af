//! The wakers of a flight's waiting `work` callers, in slots (guarded, with the flight,
//! by its shard's lock), and the identity of the waker a slot holds.

use std::task::Waker;

/// The wakers of a flight's waiting `work` callers: a slot per caller, as futures'
/// `Shared` keeps them in a slab. A free slot links to the next free one, so that a
/// flight whose callers come and go reuses its slots. The first slots live in the
/// followers' box itself, since most shared flights have few waiting callers; only more
/// callers than that allocate.
#[derive(Default)]
pub(crate) struct Wakers {
    /// Slots `0..INLINE_SLOTS`, in use up to `len`.
    inline: [Slot; INLINE_SLOTS],
    /// Slots from `INLINE_SLOTS` on.
    spilled: Vec<Slot>,
    /// How many slots were ever handed out.
    len: usize,
    /// The first free slot, if any.
    free: Option<usize>,
}

/// How many slots [`Wakers`] keeps in the followers' box.
const INLINE_SLOTS: usize = 2;

enum Slot {
    /// A waiting caller's: its waker, or `None` once taken out to be woken.
    Waiting(Option<Waker>),
    /// Free, with the next free slot.
    Free(Option<usize>),
}

impl Default for Slot {
    fn default() -> Self {
        Slot::Free(None)
    }
}

impl Wakers {
    /// A new slot holding `waker`.
    pub(crate) fn insert(&mut self, waker: Waker) -> usize {
        let waiting = Slot::Waiting(Some(waker));
        if let Some(free) = self.free {
            let Slot::Free(next) = std::mem::replace(self.slot(free), waiting) else {
                unreachable!("the free list links free slots")
            };
            self.free = next;
            return free;
        }
        let slot = self.len;
        self.len += 1;
        match self.inline.get_mut(slot) {
            Some(inline) => *inline = waiting,
            None => self.spilled.push(waiting),
        }
        slot
    }

    fn slot(&mut self, slot: usize) -> &mut Slot {
        match self.inline.get_mut(slot) {
            Some(inline) => inline,
            None => &mut self.spilled[slot - INLINE_SLOTS],
        }
    }

    /// Puts `waker` in the caller's slot; returns what it held.
    pub(crate) fn replace(&mut self, slot: usize, waker: Option<Waker>) -> Option<Waker> {
        match self.slot(slot) {
            Slot::Waiting(held) => std::mem::replace(held, waker),
            Slot::Free(_) => unreachable!("a waiting caller's slot is not free"),
        }
    }

    /// Frees the caller's slot; returns the waker it held.
    pub(crate) fn remove(&mut self, slot: usize) -> Option<Waker> {
        let waker = self.replace(slot, None);
        *self.slot(slot) = Slot::Free(self.free);
        self.free = Some(slot);
        waker
    }

    /// Wakes every waker of an ended flight's callers, after unlocking.
    pub(crate) fn wake_all(self) {
        for slot in self.inline.into_iter().chain(self.spilled) {
            if let Slot::Waiting(Some(waker)) = slot {
                waker.wake();
            }
        }
    }

    /// Takes every waker out of its slot, to wake after unlocking. The slots stay
    /// with their callers.
    pub(crate) fn take_all(&mut self) -> Vec<Waker> {
        let slots = self.inline.iter_mut().chain(&mut self.spilled);
        slots
            .filter_map(|slot| match slot {
                Slot::Waiting(waker) => waker.take(),
                Slot::Free(_) => None,
            })
            .collect()
    }
}

/// Which waker a slot holds: its data and vtable addresses, the two that
/// [`Waker::will_wake`] compares. A waiting caller keeps this rather than a clone of its
/// own: the clone in its slot keeps that waker alive, so its addresses cannot be reused by
/// another waker until a vacancy or the end of the flight takes it out, and the caller sees
/// either (the vacancy count, the outcome) before it compares.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct WakerId {
    data: usize,
    vtable: usize,
}

impl WakerId {
    pub(crate) fn of(waker: &Waker) -> Self {
        WakerId {
            data: waker.data().addr(),
            vtable: std::ptr::from_ref(waker.vtable()).addr(),
        }
    }
}
