//! The locks and atomics of the crate's state machine, swapped for `shuttle`'s under
//! `--cfg shuttle` so that its schedulers can explore interleavings at every one of them.
//! A `cfg`, not a cargo feature: no other crate in a build can put shuttle's lock into
//! production.
//!
//! `Arc` and `OnceLock` stay std's in both builds: shuttle has no `OnceLock`, and ours is
//! written only under a shard's lock, which shuttle does see.

pub(crate) use std::sync::{Arc, OnceLock};

#[cfg(not(shuttle))]
pub(crate) use std::thread_local;

#[cfg(shuttle)]
pub(crate) use shuttle::thread_local;

#[cfg(not(shuttle))]
pub(crate) use std::sync::{
    Mutex, MutexGuard,
    atomic::{AtomicU64, Ordering},
};

#[cfg(shuttle)]
pub(crate) use shuttle::sync::{
    Mutex, MutexGuard,
    atomic::{AtomicU64, Ordering},
};
