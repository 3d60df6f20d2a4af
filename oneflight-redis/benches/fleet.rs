//! What a `Fleet` costs on top of the Redis round trips it needs, against a real
//! `redis-server` on loopback that the bench starts itself.
//!
//! Built by the `bench/` workspace member (so that criterion stays out of the fleet
//! crate's dev-dependencies): `cargo bench -p oneflight-bench --bench fleet`.
//!
//! Each measurement has two floors, timed in the same run:
//!
//! - **uncontended call**: one process, one caller, a new flight each time.
//!   - the issue's floor: the same two round trips with plain commands, bare, with
//!     redis-rs on one connection (`SET NX PX`, then a script that stores the value,
//!     deletes the lease and publishes);
//!   - the protocol floor: the fleet's own two scripts (acquire, publish), bare. What
//!     they do beyond the plain commands (the fencing number, the compare-and-set) is the
//!     protocol's price; the rest is this crate's.
//! - **waiting process**: from the holder's load returning its value to the waiter
//!   process's caller having it.
//!   - the issue's floor: a bare pub/sub round trip, `PUBLISH` sent to message heard, in
//!     one task;
//!   - the worker floor: the same, heard by a task on a runtime worker (as every waiting
//!     caller of a Tokio program is) instead of the thread in `block_on`;
//!   - the protocol floor: the fleet's publish script instead of `PUBLISH`, heard in one
//!     task;
//!   - the relay floor: the fleet's publish script sent by one task, heard by a
//!     subscriber task that wakes a waiting task: the hops a waiting process needs,
//!     without this crate's code.
//! - **commands per flight**, from `INFO commandstats`: for the holder, for a waiting
//!   process, and for a waiting process with 1,000 callers.
//! - **cache**: a fresh `Cache::get` hit against a bare `GET` of the same key, a stale
//!   hit (served before its refresh's round trips), and Redis commands per hit, miss and
//!   refresh.
//! - **uncontended call on a cluster** (when `redis-cli` is there to make one: a local
//!   cluster of 3 masters and 3 replicas): the fleet with a `ClusterClient`, against the
//!   protocol floor sent bare to the node that owns the keys' slot.
//!
//! After criterion, the summary times fleet and floors again in interleaved rounds
//! (fleet, floor, protocol floor, fleet, ...) and prints one table with the ratios.
//! `cargo bench -p oneflight-bench --bench fleet -- summary` runs only the summary.

#[path = "../examples/shared/redis_cluster.rs"]
mod redis_cluster;
#[path = "../examples/shared/redis_server.rs"]
mod redis_server;
#[macro_use]
#[path = "fleet/measure.rs"]
mod measure;
#[path = "fleet/cache.rs"]
mod cache;
#[path = "fleet/floors.rs"]
mod floors;
#[path = "fleet/report.rs"]
mod report;

use criterion::Criterion;
use oneflight_redis::{Backend, Fleet, redis};
use redis_server::RedisServer;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub(crate) const ROUNDS: usize = 40;
pub(crate) const PER_ROUND: u32 = 200;
/// The value's payload as the fleet sends it for a `u64`: envelope header (12 bytes),
/// token (17), value (1).
pub(crate) const PAYLOAD: [u8; 30] = [1; 30];

/// The bare work of an uncontended flight: take the lease, then publish and release.
pub(crate) const BARE_PUBLISH: &str = r"
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[4], ARGV[1])
return 1
";

pub(crate) struct Setup {
    pub(crate) runtime: tokio::runtime::Runtime,
    pub(crate) client: redis::Client,
    _server: RedisServer,
    _dir: tempdir::Dir,
}

mod tempdir {
    /// A scratch folder removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn setup() -> Setup {
    let dir = std::env::temp_dir().join(format!("oneflight-fleet-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let server = RedisServer::start(&dir).unwrap_or_else(|e| panic!("{e}"));
    let client = redis::Client::open(server.url()).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    Setup {
        runtime,
        client,
        _server: server,
        _dir: tempdir::Dir(dir),
    }
}

/// A fleet of the namespace `namespace`. The uncontended call has a namespace of its own:
/// the waiter fleet's subscriber would otherwise hear each of its announcements, in this
/// one process on a 2-core machine, where in a real fleet other machines hear them (the
/// floors, too, publish on channels nobody listens to).
pub(crate) fn fleet(backend: impl Into<Backend>, namespace: &str) -> Fleet<u64> {
    Fleet::builder(backend, namespace)
        .lease(Duration::from_secs(10))
        .poll_interval(Duration::from_secs(5))
        .build()
}

/// A unique key per call, so that every call is a new flight.
pub(crate) fn next_key() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("k{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

fn main() {
    let setup = setup();
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    report::benches(&mut criterion, &setup);
    criterion.final_summary();
    report::summary(&setup);
}
