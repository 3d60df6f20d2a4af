//! One load per key across a fleet of processes, on Redis.
//!
//! A service that runs on many machines still loads a hot key once per *process* with an
//! in-process singleflight: 50 replicas, 50 loads. A [`Fleet`] takes that to one load per
//! key for the whole fleet. Inside each process, callers of a key meet in a
//! [`oneflight::Group`] first; only that process's runner talks to Redis, so Redis sees
//! one exchange per process per flight. Nothing is cached: a call that arrives after a
//! flight ended starts a new flight.
//!
//! ```no_run
//! use oneflight_redis::{Fleet, redis};
//!
//! # async fn query_database(id: u64) -> String { format!("user {id}") }
//! # async fn example() {
//! let client = redis::Client::open("redis://127.0.0.1/").unwrap();
//! let users: Fleet<String> = Fleet::new(client, "users");
//! // However many replicas and callers ask for user 7 at once, one of them queries.
//! let profile = users.work("user:7", query_database(7)).await;
//! # }
//! ```
//!
//! # The protocol
//!
//! ```text
//!  process A (holder)                 Redis                       process B (waiter)
//!  ──────────────────                 ─────                       ──────────────────
//!  acquire ───────── SET lease=T1 NX PX lease ──▶ "hold T1"
//!                                                  ◀──────────── acquire: "wait T1"
//!  load runs; every lease/3:                                      sleeps until a pub/sub
//!  renew (only while lease == T1)                                 hint for T1, or
//!                                                                 poll_interval
//!  publish (only while lease == T1):
//!    SET value:T1, DEL lease,
//!    PUBLISH "T1 value" ───────────────────────────────────────▶ hint: a small value
//!                                                                 comes with it, done;
//!                                                  ◀──────────── else, or on a poll,
//!                                                                 acquire(waited T1):
//!                                                                 value:T1 → the value
//! ```
//!
//! - **Acquire** is one Lua script: take the lease with a fresh token (random, after a
//!   fencing number for `work_fenced`), or say who holds it, or, for a waiter, hand over
//!   the value of the flight it waited on; if the lease is gone without a value (holder
//!   killed, released), the waiter takes the key over in the same atomic step.
//! - **Publish**, **renew** and **release** are compare-and-set scripts on the token: a
//!   holder that lost its lease can neither overwrite nor extend nor end the flight that
//!   replaced it.
//! - **Pub/sub is a hint.** Redis drops messages across reconnects, so a waiter also
//!   polls every `poll_interval`; a lost hint costs at most one interval. A hint carries
//!   values up to 1 KiB, so that a waiting process usually needs one round trip per
//!   flight; every process of the namespace receives every hint.
//! - **Every command has a timeout** (`command_timeout`). After a failure, new flights
//!   skip Redis for `retry_redis_after` and deduplicate in-process only, then try again.
//!
//! Keys of one flight share the hash tag `{namespace:key}`, so a Redis Cluster keeps them
//! on one slot: `oneflight:{ns:key}:lease`, `…:value:TOKEN` (kept one lease for late
//! pollers) and, for keys loaded with `work_fenced`, `…:fence` (the last fencing number,
//! kept a day). Ends of flights are announced on `oneflight:ns:done`.
//!
//! # What you can rely on
//!
//! - **One load per key fleet-wide while the holder lives**, and every caller of a
//!   flight, in every process, gets the value of that flight.
//! - **No caller hangs when a holder dies.** A killed holder's lease expires and one
//!   waiting process takes over within the lease plus one poll interval. A holder whose
//!   local callers all went away, whose load panicked, or whose `try_work` load failed,
//!   releases its lease at once, and a waiter takes over without waiting out the lease.
//! - **A holder paused past its lease** (GC, swap, SIGSTOP) and then resumed cannot
//!   overwrite the flight that replaced it; its own callers still get the value its own
//!   load returned.
//! - **Panics and errors stay in their process.** The holder's callers see them as with
//!   [`oneflight::Group`]; other processes see the flight abandoned and take over.
//! - **Redis trouble degrades, never fails** (down, slow, restarted, an undecodable
//!   payload): the call goes on with in-process deduplication, [`Fleet::stats`] counts
//!   it, and Redis is used again once it answers. With
//!   [`OnRedisError::Fail`], [`Fleet::try_work`] returns a [`FleetError`] instead.
//!
//! # Limits
//!
//! - **At most once is for efficiency, not for safety.** A lease cannot give mutual
//!   exclusion to a process that pauses longer than its lease: it resumes believing it
//!   holds the key while another process loads too (Kleppmann, ["How to do distributed
//!   locking"](https://martin.kleppmann.com/2016/02/08/how-to-do-distributed-locking.html),
//!   2016). The fleet rejects such a holder's *publish*, but not what its load did
//!   meanwhile. If your load writes somewhere and two writers would be wrong, use
//!   [`Fleet::work_fenced`] and have the store reject writes with a fencing number lower
//!   than one it has seen.
//! - **Redis must keep the lease keys.** Run it with `maxmemory-policy noeviction`, or a
//!   `volatile-*` policy (the fleet's keys all have TTLs, so `volatile-lru` may evict
//!   them under memory pressure: a lease evicted early lets a second process load). Never
//!   `allkeys-*` on the same instance as the fleet if you rely on one load per key.
//! - **One Redis node.** With replication, a failover can lose a lease that was not yet
//!   replicated (as any single-instance Redis lock); the fleet then loads twice, once.
//! - Every process of a fleet must use the same namespace, codec and crate version.
//!
//! # Choosing the lease and the poll interval
//!
//! - `lease` (default 5 s) bounds how long waiters wait for a holder that died, and
//!   must be longer than the longest pause you expect of a live holder (the holder renews
//!   every `lease / 3`, so two renewals can be missed). Loads longer than the lease are
//!   fine: the lease is renewed while they run.
//! - `poll_interval` (default 250 ms) bounds how late a waiter learns of an end whose
//!   pub/sub hint was lost, and how late a takeover starts after a lease expired. Each
//!   poll is one Redis command per waiting *process* (not per caller).
//! - `max_wait` (default 30 s) is how long a caller waits on another process's flight
//!   before it loads by itself.
//!
//! # Features
//!
//! - `tokio` (default): the `redis` crate's `tokio-comp`; timers and tasks on the current
//!   Tokio runtime (with timers enabled).
//! - `smol`: its `smol-comp`; smol's reactor also serves async-std programs. With both on,
//!   Tokio is used inside a Tokio runtime, smol elsewhere, as the `redis` crate does.

#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]

#[cfg(not(any(feature = "tokio", feature = "smol")))]
compile_error!("oneflight-redis needs the `tokio` or the `smol` feature (or both)");

mod builder;
mod codec;
mod depth;
mod error;
mod fleet;
mod flight;
mod health;
mod keeper;
mod notify;
mod runtime;
mod stats;
mod store;

pub use builder::FleetBuilder;
pub use codec::Codec;
pub use error::{FleetError, FleetErrorKind, WorkError};
pub use fleet::Fleet;
pub use redis;
pub use stats::FleetStats;
#[cfg(test)]
mod model;

/// Not API: the protocol's scripts, so that the fleet bench can time them bare.
#[doc(hidden)]
pub mod bench_support {
    pub use crate::store::{ACQUIRE, PUBLISH};
}
