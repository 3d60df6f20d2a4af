//! One load per key across a fleet of processes, on Redis.
//!
//! A service that runs on many machines still loads a hot key once per *process* with an
//! in-process singleflight: 50 replicas, 50 loads. A [`Fleet`] takes that to one load per
//! key for the whole fleet. Inside each process, callers of a key meet in a
//! [`oneflight::Group`] first; only that process's runner talks to Redis, so Redis sees
//! one exchange per process per flight. Nothing is cached: a call that arrives after a
//! flight ended starts a new flight.
//!
//! Redis is one node ([`redis::Client`]) or a Redis Cluster
//! ([`redis::cluster::ClusterClient`]): see [`Backend`] and [Redis Cluster](#redis-cluster).
//!
//! For values that may be served a while after they were loaded, [`Cache`] is a
//! fleet-wide read-through cache on the same leases: one load per key on a miss, stale
//! values served while one process refreshes them (no expiry stampede), early refresh,
//! and `invalidate` that no slow load can undo (no stale set).
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
//! `V` must be `Clone + Serialize + DeserializeOwned + Send + Sync + 'static`: values
//! cross processes through serde, and each caller gets its own clone (share big values as
//! `Arc<T>`, which serde supports with its `rc` feature). Keys are `&str`; namespaces and
//! keys may hold any characters, the empty string included.
//!
//! # The protocol
//!
//! ```text
//!  process A (holder)                 Redis                       process B (waiter)
//!  ──────────────────                 ─────                       ──────────────────
//!  acquire ───────── SET lease=T1 NX PX lease ──▶ "hold T1"
//!                                                  ◀──────────── acquire: "wait T1"
//!  load runs; the keeper thread                                   sleeps until a pub/sub
//!  renews (only while lease == T1)                                hint for T1, or
//!                                                                 poll_interval
//!  publish (only while lease == T1):
//!    SET value:T1, DEL lease,
//!    PUBLISH on T1's key ──────────────────────────────────────▶ hint: a small value
//!                                                                 comes with it, done;
//!                                                  ◀──────────── else, or on a poll,
//!                                                                 acquire(waited T1):
//!                                                                 value:T1 → the value
//! ```
//!
//! - **Acquire** is one Lua script: take the lease with a token whose random part (the
//!   nonce) the caller chose, after a fencing number for `work_fenced`; or say who holds
//!   it; or, for a waiter, hand over the value of the flight it waited on. If the lease
//!   is gone without a value (holder killed, released), the waiter takes the key over in
//!   the same atomic step.
//! - **Publish**, **renew** and **release** are compare-and-set scripts: a holder that
//!   lost its lease can neither overwrite nor extend nor end the flight that replaced it.
//! - **No lease without a holder.** Each fleet has a keeper thread that renews the leases
//!   its process holds (independently of how the load is polled, every third of the
//!   lease, retried every sixth after a failure: two failed renewals in a row are
//!   survived) and releases, by nonce, every lease the process may hold but can no
//!   longer use: its callers left or its load failed, a publish or acquire whose reply
//!   was lost, an acquire whose caller was cancelled, a runtime shutting down. A release
//!   also voids the nonce, so that an acquire that a stalled Redis runs late takes
//!   nothing.
//! - **Pub/sub is a hint, heard only by processes that wait.** The end of a flight is
//!   announced on its key's own channel, `oneflight:TAG:done`, to which a process
//!   subscribes while it waits on that key (and one second more, for a hot key's next
//!   flight); Redis's work per flight is one publish plus one delivery per waiting
//!   process, whatever the size of the fleet. A process that subscribes anew asks Redis
//!   once more right after, for an end announced before. Redis drops messages across
//!   reconnects, so a waiter also polls every `poll_interval`; a lost hint costs at most
//!   one interval. A hint carries values up to 16 KiB, so that a waiting process needs
//!   no second round trip for them. The subscriber pings when quiet and is replaced when
//!   its connection goes silent or its runtime drops it.
//! - **Every command has a timeout** (`command_timeout`; values over 64 KiB travel on a
//!   connection of their own, with more time by their size).
//!
//! A flight's keys share a length-prefixed tag, `{<len>:<namespace><len>:<key>}`, so
//! that no two (namespace, key) pairs share a lease or a value, and a Redis Cluster
//! keeps them on one slot (the tag is the hash tag): `oneflight:TAG:lease`, `…:value:TOKEN` (kept a lease and a
//! poll interval for late pollers), `…:void:NONCE` (a lease), and, for keys loaded with
//! `work_fenced`, `…:fence` (the last fencing number, kept a day). Every key has a TTL.
//! Values travel in a versioned envelope that names the value's type: a value sealed for
//! another type (or codec, or envelope version) is a miss, never a wrong value. Change
//! the namespace when `V`'s serialized form changes incompatibly.
//!
//! # What you can rely on
//!
//! - **One load per key fleet-wide while the holder lives**, and every caller of a
//!   flight, in every process, gets the value of that flight.
//! - **No caller hangs when a holder dies.** A killed holder's lease expires and one
//!   waiting process takes over within the lease plus one poll interval. A holder whose
//!   local callers all went away, whose load panicked, whose `try_work` load failed, or
//!   whose process shut down, releases its lease at once, and a waiter takes over
//!   without waiting out the lease.
//! - **A holder paused past its lease** (GC, swap, SIGSTOP) and then resumed cannot
//!   overwrite the flight that replaced it; its own callers still get the value its own
//!   load returned.
//! - **Panics and errors stay in their process.** The holder's callers see them as with
//!   [`oneflight::Group`]; other processes see the flight abandoned and take over.
//! - **Redis trouble degrades, in proportion** (down, slow, restarted, an error Redis
//!   answered, an undecodable payload): the call goes on with in-process deduplication
//!   and [`Fleet::stats`] counts it by kind. A process stops asking Redis (for
//!   `retry_redis_after`) only after two commands in a row went unanswered, and any
//!   answer ends that rest. An error Redis answers (`OOM`, `WRONGTYPE`, `READONLY`, ...)
//!   degrades that call only and is said once on standard error, with what to do.
//!   [`Fleet::try_work_or_fail`] returns the [`FleetError`] instead of degrading.
//! - **Values up to 16 MiB** cross processes with the default settings; a larger one
//!   (over `max_value_size`) stays with the holder's callers, and its lease is released.
//!
//! # Redis Cluster
//!
//! Give the fleet a [`redis::cluster::ClusterClient`] built with RESP3
//! (`.use_protocol(redis::ProtocolVersion::RESP3)`), and every behaviour above holds:
//!
//! - **Hash tags**: a flight's keys share the tag above, so each script runs atomically
//!   on the one node that owns the flight's slot, routed by redis-rs, which follows
//!   `MOVED` and `ASK` after a failover or a resharding. Different keys spread over the
//!   masters.
//! - **Hints** are sharded pub/sub (`SPUBLISH`, `SSUBSCRIBE`, Redis 7.0 or later) on the
//!   key's channel, which lives in the key's slot: the flight's shard delivers the end
//!   to the processes that wait on it, whichever node they first connected to, and
//!   nothing crosses the cluster bus (a plain `PUBLISH` is copied to every node). Over
//!   RESP2, redis-rs's cluster client cannot subscribe: waiters then poll, and the fleet
//!   says so once on standard error.
//! - **Scripts after a failover**: Redis replicates a script's effects, not its cache,
//!   so a promoted replica answers `NOSCRIPT`; the fleet then sends the script's body
//!   (`EVAL`) to that node, once.
//! - **What a failover costs**: calls on the failed master's slots wait while the
//!   cluster elects a replica (node timeout plus election: 2-3 s with a 1 s node timeout
//!   in the tests) if `command_timeout` is longer than that; otherwise they go on with
//!   in-process deduplication meanwhile. A lease the replica had not received yet is
//!   lost: that key is loaded once more, at most once per flight in the air. Nobody
//!   hangs, and the fleet deduplicates again as soon as the slot is served, without a
//!   restart. On a cluster, set `command_timeout` above your failover time.
//! - The keeper's renewals and releases use redis-rs's blocking cluster connection,
//!   which retries within one command: while a master is unreachable, one renewal can
//!   hold the keeper's thread for several attempts, and the renewals of keys on other
//!   masters wait meanwhile. A lease that expires early that way costs one more load of
//!   its key, as a failover does.
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
//! - **A failover can lose a lease** that was not replicated yet (as any Redis lock):
//!   that key is then loaded once more, once. See [Redis Cluster](#redis-cluster).
//! - Every process of a fleet must use the same namespace, codec and crate version.
//! - A fleet used on a second runtime after its first was dropped loses the first
//!   command of each connection to it (that call degrades); then it reconnects.
//!
//! # Shutting down
//!
//! Nothing to call: a process that drops its runtime with loads in flight, then its
//! fleet (as `main` returning does), leaves no lease behind. The dropped loads hand their
//! leases to the keeper thread, and dropping the fleet's last handle waits for those
//! releases, at most twice the command timeout (5 s at most). Keep a handle until after
//! the runtime is gone (in `main`, not only in a `static`), so that this wait happens
//! before the process exits.
//!
//! # Choosing the settings
//!
//! - `lease` (default 5 s) bounds how long waiters wait for a holder that died, and
//!   must be longer than the longest pause you expect of a live holder. Loads longer than
//!   the lease are fine: the lease is renewed while they run.
//! - `poll_interval` (default 250 ms, shorter than the lease) bounds how late a waiter
//!   learns of an end whose pub/sub hint was lost, and how late a takeover starts after a
//!   lease expired. Each poll is one Redis command per waiting *process* (not per
//!   caller).
//! - `max_wait` (default 30 s) is how long a caller waits on another process's flight
//!   before it loads by itself. In a request handler, take it from the request's budget:
//!   a little under the time the handler may wait for the value, so that a slow holder
//!   elsewhere costs a duplicate load rather than a timed-out request. A dead holder is
//!   replaced after `lease + poll_interval` anyway; `max_wait` is for live, slow ones.
//! - `max_value_size` (default 16 MiB, at most 512 MiB): the largest value shared.
//!
//! `build` panics, naming the setting, on settings that cannot work together;
//! `Duration::MAX` means "no limit".
//!
//! # Features
//!
//! - `tokio` (default): the `redis` crate's `tokio-comp`; timers and tasks on the current
//!   Tokio runtime (with timers enabled).
//! - `smol`: its `smol-comp`; smol's reactor also serves async-std programs. With both on,
//!   Tokio is used inside a Tokio runtime, smol elsewhere, as the `redis` crate does.
//! - `tracing`: a `oneflight.flight` span (level `debug`) per flight of the process, with
//!   the fleet's `fleet` name (the builder's `name`, by default the namespace), the `key`
//!   (unless `record_keys(false)`) and the `role` (`holder`, `waiter`, `degraded`), and
//!   `debug` events: takeover, `max_wait` reached, undecodable payload, late publish
//!   rejected, lease lost, Redis resting and back, pub/sub connection replaced.
//! - `metrics`: the counts of [`FleetStats`] through the `metrics` facade, labelled
//!   `fleet` (and `reason` or `kind`), never with keys, and the histogram
//!   `oneflight_fleet_wait_seconds`; see the crate README for the list. Install the
//!   recorder before the fleet's first call.
//!
//! Both turn on the core's feature of the same name, and change nothing when off.

#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]

#[cfg(not(any(feature = "tokio", feature = "smol")))]
compile_error!("oneflight-redis needs the `tokio` or the `smol` feature (or both)");

mod backend;
mod builder;
mod cache;
mod codec;
mod depth;
mod error;
mod fleet;
mod flight;
mod health;
mod keeper;
mod names;
mod notify;
mod observe;
mod runtime;
mod scripts;
mod stats;
mod store;

pub use backend::Backend;
pub use builder::FleetBuilder;
pub use cache::{Cache, CacheBuilder, CacheStats};
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
    pub use crate::scripts::{ACQUIRE, PUBLISH};
}

/// The README's examples, compiled as doc tests so that they cannot drift.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
