//! Duplicate call suppression ("singleflight") for async Rust, on any runtime.
//!
//! While work for a key is in flight, every other caller of the same key waits for that
//! one result instead of running the work again: a cache miss reaches the database once,
//! not once per request. It is the Rust counterpart of Go's
//! [`golang.org/x/sync/singleflight`](https://pkg.go.dev/golang.org/x/sync/singleflight)
//! (`Do` is [`Group::work`], `DoChan` is [`Group::do_chan`], `Forget` is
//! [`Group::forget`], `Result` is [`Outcome`]), made for futures.
//!
//! ```
//! use oneflight::Group;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//!
//! # futures_executor::block_on(async {
//! let group: Group<String, String> = Group::new();
//! let loads = AtomicUsize::new(0);
//! let load = |id: u32| {
//!     let loads = &loads;
//!     async move {
//!         loads.fetch_add(1, Ordering::SeqCst);
//!         smol::future::yield_now().await; // a slow database query
//!         format!("profile of user {id}")
//!     }
//! };
//! // A burst of identical requests: one load, every caller served.
//! let burst = futures_util::future::join_all((0..100).map(|_| group.work("user:7", load(7))));
//! let pages = burst.await;
//! assert!(pages.iter().all(|page| page == "profile of user 7"));
//! assert_eq!(loads.load(Ordering::SeqCst), 1);
//! assert_eq!(group.in_flight(), 0); // nothing left behind
//! # });
//! ```
//!
//! # What happens to callers
//!
//! ```text
//!                first caller runs its future       later callers join and wait
//!  key free  ─────────────────────────────────▶  Running  ◀───────────────────────
//!     ▲                                            │   ▲
//!     │  value: every caller gets a clone          │   │ a waiting caller takes over
//!     ├────────────────────────────────────────────┤   │ with its own future
//!     │  panic: runner sees it, work waiters get   │   │
//!     │  Panicked, do_chan channels close          ▼   │
//!     │                                           Vacant  (runner cancelled; its
//!     └─────────────── nobody left to run it ──────┘       future dropped first)
//! ```
//!
//! [`forget`](Group::forget) takes a flight out of the map: it runs on for the callers it
//! has, and the next call of the key starts a new flight beside it.
//!
//! # What callers can rely on
//!
//! - **One execution per flight.** For one key, at most one future runs at a time, with
//!   any mix of [`work`](Group::work) and [`do_chan`](Group::do_chan) callers, and every
//!   caller of a flight gets the same value (cloned once per caller). Only
//!   [`forget`](Group::forget) opens a second flight beside a running one.
//! - **Cancellation is free.** Drop a `work` future or a receiver at any time. If the
//!   caller that runs the flight goes away, a caller that still waits takes it over with
//!   its own future; the cancelled future is dropped first, so two never overlap.
//! - **A `do_chan` flight runs to completion** on its executor even if every receiver is
//!   dropped, as in Go.
//! - **Panics are shared, not retried.** The caller that ran the future sees its panic,
//!   waiting `work` callers panic with [`Panicked`] (the same message), `do_chan`
//!   receivers see their channel closed, and the key is free for the next call.
//! - **Bad user code hurts only its caller.** A panicking `Hash`, `Eq`, `Clone` or hasher
//!   reaches the caller on whose behalf it ran; no lock stays poisoned, no entry is stuck.
//! - **Nothing leaks.** A flight's entry is removed in the critical section that
//!   publishes its result.
//!
//! # Errors
//!
//! Loaders that fail go through [`try_work`](Group::try_work) on a group of
//! `Result<T, Arc<E>>`: every caller of a flight gets the same `Arc<E>`, it is not
//! retried, and the next call starts a new flight.
//!
//! ```
//! use oneflight::Group;
//! use std::sync::Arc;
//!
//! # futures_executor::block_on(async {
//! let group: Group<u64, Result<String, Arc<std::io::Error>>> = Group::new();
//! let loaded = group.try_work(&7, async { Err(std::io::Error::other("down")) }).await;
//! assert_eq!(loaded.unwrap_err().to_string(), "down");
//! # });
//! ```
//!
//! # With a cache
//!
//! Put the group in front of your cache's misses, and inside the flight check the cache
//! again and fill it before the flight ends. Filled after `work` returns, a caller that
//! misses the cache between the end of the flight and the insert starts a second load.
//! `examples/moka_cache.rs` shows it with `moka::future::Cache`.
//!
//! # Re-entrance
//!
//! A flight's future that, inside its own poll, calls `work`, `try_work`, `do_chan` or
//! `do_chan_with` for its own key on the same group would wait for itself forever (Go
//! hangs there). The inner call panics instead, with a message that starts with
//! `oneflight: re-entrant call`, and the flight ends as a panicking flight. Calls on other
//! keys or other groups are fine. A re-entrant call that the flight reaches another way
//! (awaiting a task that it spawned) is not detected, and waits forever.
//!
//! # Features
//!
//! ```toml
//! [dependencies]
//! oneflight = "0.1"   # smol (the default)
//! # Tokio: turn the default off, so that do_chan outside a runtime fails loudly
//! # oneflight = { version = "0.1", default-features = false, features = ["tokio"] }
//! ```
//!
//! [`do_chan`](Group::do_chan) spawns the flight on a runtime chosen by cargo feature;
//! the features are additive:
//!
//! - `tokio`: the current Tokio runtime, when called inside one (it wins over the others).
//! - `smol` (default): smol's global executor, when not inside a Tokio runtime (or
//!   `tokio` is off).
//! - `async-std`: async-std's executor, when `smol` is off and not inside a Tokio runtime.
//!   async-std is discontinued upstream; it stays supported for existing programs, and
//!   new ones should use smol, its successor.
//!
//! With only `tokio` on, `do_chan` called outside a Tokio runtime panics, naming
//! `do_chan_with`. Everything else, [`do_chan_with`](Group::do_chan_with) included, needs
//! no runtime and works on any executor, local and `!Send` ones included.
//!
//! Two more features, off by default, change nothing when off (same code, same
//! dependencies):
//!
//! - `tracing`: a `oneflight.flight` span (level `debug`) per `work`/`try_work` caller,
//!   covering its join and its wait, and per `do_chan` task, with the group's `group`
//!   name (see [`Group::named`]) and the caller's `role`: `runner`, `joined`, or `joined`
//!   then `takeover`; `debug` events for
//!   a takeover, an outcome shared with other callers (`panicked` says whether it was a
//!   panic), a re-entrant call refused. Keys are not recorded (they are of any type).
//! - `metrics`: `oneflight_flights_total`, `oneflight_joined_total`,
//!   `oneflight_takeovers_total`, `oneflight_panics_total`, `oneflight_forgotten_total`
//!   (as [`Stats`]) and the histogram `oneflight_wait_seconds` (each joined caller's
//!   wait), labelled `group` with the group's name (empty if unnamed), never with keys.
//!   Handles are registered at a group's first use: install your recorder before.
//!
//! With no subscriber and no recorder installed, an uncontended `work` costs the same
//! with either feature on (0.93x-1.03x and 0.92x-0.99x of the plain build over six runs,
//! measured side by side by the peers bench).
//!
//! # When not to use it
//!
//! A singleflight shares work that is in flight *now*; it is not a cache. To keep values
//! after the flight ends, put a cache in front (a map, or moka) and use the group for its
//! misses. To compute one value once for the whole program, use a `OnceCell`
//! (`async_lock::OnceCell`, `tokio::sync::OnceCell`).

#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod chan;
mod flight;
mod group;
mod map;
mod observe;
mod outcome;
mod reentrance;
mod roles;
#[cfg(any(feature = "smol", feature = "async-std", feature = "tokio"))]
mod runtime;
mod stats;
mod sync;
mod wakers;

/// The channel crate behind [`Group::do_chan`]'s receivers, re-exported so that callers
/// can name [`Receiver`](async_channel::Receiver) and
/// [`RecvError`](async_channel::RecvError) without a dependency of their own.
///
/// A receiver gets one [`Outcome`]. `recv()` returns `Err(RecvError)` when the flight
/// ended without a value for it: the flight's future panicked, or nobody could run it
/// (every caller that could was cancelled), or `V`'s `Clone` panicked on its way to this
/// receiver.
///
/// ```
/// # #[cfg(feature = "smol")]
/// smol::block_on(async {
///     let group: oneflight::Group<String, u32> = oneflight::Group::new();
///     let rx: oneflight::async_channel::Receiver<oneflight::Outcome<u32>> =
///         group.do_chan("k", async { panic!("on purpose") });
///     assert_eq!(rx.recv().await, Err(oneflight::async_channel::RecvError));
/// });
/// ```
pub use async_channel;

/// The README's examples, compiled and run as doc tests so that they cannot drift.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
pub use group::Group;
pub use outcome::{Outcome, Panicked};
pub use stats::Stats;
