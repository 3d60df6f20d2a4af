//! The synchronisation primitives the crate's state machine uses, swapped for
//! `shuttle`'s under `--cfg shuttle` so that its schedulers can explore every
//! interleaving. A `cfg`, not a cargo feature: no other crate can turn it on.

#[cfg(not(shuttle))]
pub(crate) use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

#[cfg(shuttle)]
pub(crate) use shuttle::sync::{Arc, Mutex, MutexGuard, OnceLock};
