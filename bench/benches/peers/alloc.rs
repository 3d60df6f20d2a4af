//! Heap accounting: a counting global allocator, and what a waiting caller and a
//! channel cost in heap bytes.

use futures_util::task::AtomicWaker;
use std::alloc::{GlobalAlloc, Layout, System};
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Waker};

use crate::peers::*;
use crate::scenarios::*;

/// Counts the bytes every allocation asks for, so that a section's cost can be read off.
pub(crate) struct Counting;

pub(crate) static ALLOCATED: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to `System` unchanged; only adds a relaxed counter.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above, for `dealloc`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATED.fetch_add(
            new_size.saturating_sub(layout.size()) as u64,
            Ordering::Relaxed,
        );
        // SAFETY: as above, for `realloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
pub(crate) static GLOBAL: Counting = Counting;

/// Heap bytes requested while `f` runs on this thread (other threads are idle).
pub(crate) fn heap_bytes(f: impl FnOnce()) -> u64 {
    let before = ALLOCATED.load(Ordering::SeqCst);
    f();
    ALLOCATED.load(Ordering::SeqCst) - before
}

/// Heap bytes of one channel's life: created, sent to, closed, received from, dropped.
pub(crate) fn channel_lifecycle_bytes() -> u64 {
    heap_bytes(|| {
        let (sender, receiver) = async_channel::bounded(1);
        sender
            .try_send(oneflight::Outcome {
                value: 7_u64,
                shared: true,
            })
            .unwrap();
        drop(sender);
        black_box(receiver.try_recv().unwrap());
    })
}

/// Heap bytes a waiting caller costs when it joins a flight in the air (its future
/// created and polled once), and the size of that future.
pub(crate) fn follower_cost<P: Peer<str>>() -> (u64, usize) {
    let peer = P::create();
    let gate = Arc::new(AtomicWaker::new());
    let joined = Arc::new(AtomicUsize::new(0));
    let waker = Waker::noop();
    let mut cx = Context::from_waker(waker);
    let mut leader = Box::pin(peer.call("key", gated_on(joined.clone(), gate.clone(), 2)));
    assert!(leader.as_mut().poll(&mut cx).is_pending());
    // A first follower pays what a flight allocates once for its followers; measure the
    // next one, the marginal cost of a waiting caller.
    let mut first = Box::pin(peer.call("key", gated_on(joined.clone(), gate.clone(), 2)));
    assert!(first.as_mut().poll(&mut cx).is_pending());
    let mut size = 0;
    let bytes = heap_bytes(|| {
        let follower = peer.call("key", gated_on(joined.clone(), gate.clone(), 2));
        size = std::mem::size_of_val(&follower);
        let mut follower = pin!(follower);
        assert!(follower.as_mut().poll(&mut cx).is_pending());
    });
    (bytes, size)
}

pub(crate) fn do_chan_follower_bytes() -> u64 {
    let group: oneflight::Group<String, u64> = oneflight::Group::new();
    let parked = Arc::new(Mutex::new(Vec::new()));
    let keep = parked.clone();
    let _leader = group.do_chan_with("key", async { 1 }, move |task| {
        keep.lock().unwrap().push(task)
    });
    let mut receiver = None;
    let bytes = heap_bytes(|| {
        receiver = Some(group.do_chan_with("key", async { 2 }, |_task| {
            unreachable!("a follower is not spawned")
        }));
    });
    drop(receiver);
    bytes
}
