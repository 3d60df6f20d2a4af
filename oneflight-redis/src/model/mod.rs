//! A model test of the protocol without Redis: the fleet's real flight logic (holder,
//! waiter, renewal, keeper, takeover, degrade) over an in-memory transport with the
//! scripts' semantics, several "processes" (fleets) sharing it, random timings,
//! cancellations, panics, and Redis faults of every shape a network gives: a command
//! that fails before it takes effect, one that takes effect and loses its reply, one
//! that takes several polls (so that its caller can be cancelled before or after its
//! effect), and leases lost early (a holder paused past its lease). Pub/sub hints never
//! come here: waiters rely on polling alone.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;

use crate::builder::Config;
use crate::names::{Names, nonce_of};
use crate::store::{Acquired, Stored, Transport};
use crate::{Fleet, FleetError, FleetErrorKind};

/// A tiny deterministic generator, seeded per run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Which faults a run injects, per mille of commands.
#[derive(Debug, Clone, Copy, Default)]
struct Faults {
    /// Fail before taking effect, as a refused command would.
    errors: u64,
    /// Take effect, then lose the reply (a timeout after the server acted).
    lost_replies: u64,
    /// The keeper's releases fail before they take effect (it retries every 50 ms,
    /// until the lease would have expired: a short lease may then run out).
    keeper_errors: u64,
    /// After an acquire or renewal, the holder's lease is gone (evicted, or its holder
    /// paused past it).
    lost_leases: u64,
    /// Every async command takes a few polls and milliseconds before and after its
    /// effect, so that cancellations land on both sides of it.
    slow: bool,
}

/// The scripts' semantics over maps, with injected faults.
#[derive(Debug)]
struct Memory {
    state: Mutex<State>,
    faults: Faults,
    seed: AtomicU64,
    /// Acquires whose caller went away (cancelled, or timed out) before they took
    /// effect, as commands queued in a stalled Redis: they still run, later, at a random
    /// point among the next commands, possibly after the keeper's release meant for them.
    late: Mutex<Vec<LateAcquire>>,
    /// A cache's store: flights publish to the key's cached value.
    cache: bool,
    /// For the cache model: the database's version, which each stored value (a
    /// `Cached<u64>` holding the version its load read) is checked against.
    db: Option<Arc<AtomicU64>>,
}

#[derive(Debug)]
struct LateAcquire {
    names: Names,
    nonce: String,
    lease: Duration,
    fenced: bool,
}

/// Queues its acquire as late unless disarmed by the acquire taking effect in time.
struct Late<'a> {
    memory: &'a Memory,
    acquire: Option<LateAcquire>,
}

impl Drop for Late<'_> {
    fn drop(&mut self) {
        if let Some(acquire) = self.acquire.take() {
            self.memory.late.lock().unwrap().push(acquire);
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// Lease key → (token, expiry).
    leases: HashMap<String, (String, Instant)>,
    values: HashMap<String, (Vec<u8>, Instant)>,
    fences: HashMap<String, u64>,
    /// When each flight's value was published, by lease key and fence.
    published: HashMap<(String, u64), Instant>,
    /// Publishes rejected because the lease was not the token's.
    rejected: u64,
    /// Leases that ran out while still in the map: nobody published or released them.
    expired: u64,
    /// Nonces released: an acquire with one takes no lease.
    voided: std::collections::HashSet<String>,
    /// A cache's invalidations that took effect.
    invalidations: u64,
    /// For the cache model, by cached key: the database's version when its last
    /// invalidation took effect. A value read from an older version stored after it is a
    /// stale set.
    floors: HashMap<String, u64>,
    /// Values stored that were read before an invalidation that took effect earlier.
    stale_sets: u64,
}

impl Memory {
    fn roll(&self, per_mille: u64) -> bool {
        let mut rng = Rng(self
            .seed
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            | 1);
        rng.below(1000) < per_mille
    }

    fn error() -> FleetError {
        FleetError::other(FleetErrorKind::Timeout, "memory", "model", "injected fault")
    }

    /// Before a command's effect: maybe slow, maybe failing, maybe timing out while the
    /// command stays queued (it then runs late, see [`Memory::late`]).
    async fn before(&self) -> Result<(), FleetError> {
        self.pause().await;
        if self.roll(500) {
            self.run_late();
        }
        if self.roll(self.faults.errors) || self.roll(self.faults.lost_replies / 2) {
            return Err(Self::error());
        }
        Ok(())
    }

    /// Runs the acquires that were left queued.
    fn run_late(&self) {
        let late = std::mem::take(&mut *self.late.lock().unwrap());
        for a in late {
            let _ = self.take_or_wait(&a.names, None, &a.nonce, a.lease, a.fenced);
        }
    }

    /// After a command's effect: maybe slow, maybe losing the reply.
    async fn after<T>(&self, reply: T) -> Result<T, FleetError> {
        self.pause().await;
        if self.roll(self.faults.lost_replies) {
            return Err(Self::error());
        }
        Ok(reply)
    }

    async fn pause(&self) {
        if self.faults.slow {
            let millis = self.seed.fetch_add(1, Ordering::Relaxed) % 3;
            tokio::time::sleep(Duration::from_millis(millis)).await;
            tokio::task::yield_now().await;
        }
    }

    fn lease_of<'s>(state: &'s State, names: &Names) -> Option<&'s String> {
        state
            .leases
            .get(&names.lease())
            .filter(|(_, until)| Instant::now() < *until)
            .map(|(token, _)| token)
    }

    /// The acquire script's effect.
    fn take_or_wait(
        &self,
        names: &Names,
        waited: Option<&str>,
        nonce: &str,
        lease: Duration,
        fenced: bool,
    ) -> Result<Acquired, FleetError> {
        let mut state = self.state.lock().unwrap();
        Self::expire(&mut state, names);
        let value =
            waited.and_then(|waited| state.values.get(&names.published(waited, self.cache)));
        if let Some((payload, _)) = value.filter(|(_, until)| Instant::now() < *until) {
            return Ok(Acquired::Value(payload.clone()));
        }
        if let Some(holder) = Self::lease_of(&state, names) {
            let holder = holder.clone();
            if self.roll(self.faults.lost_leases) {
                state.leases.remove(&names.lease());
            }
            return Ok(Acquired::Wait(holder));
        }
        if state.voided.contains(nonce) {
            return Err(Self::error());
        }
        let mut token = nonce.to_owned();
        if fenced {
            let fence = state.fences.entry(names.fence()).or_insert(0);
            *fence += 1;
            token = format!("{fence}-{token}");
        }
        state
            .leases
            .insert(names.lease(), (token.clone(), Instant::now() + lease));
        Ok(Acquired::Hold(token))
    }

    /// Takes an expired lease out of the map, counting it.
    fn expire(state: &mut State, names: &Names) {
        let lease = names.lease();
        if state
            .leases
            .get(&lease)
            .is_some_and(|(_, until)| Instant::now() >= *until)
        {
            state.leases.remove(&lease);
            state.expired += 1;
        }
    }
}

impl Transport for Memory {
    fn acquire<'a>(
        &'a self,
        names: &'a Names,
        waited: Option<&'a str>,
        nonce: &'a str,
        lease: Duration,
        fenced: bool,
    ) -> BoxFuture<'a, Result<Acquired, FleetError>> {
        Box::pin(async move {
            let mut late = Late {
                memory: self,
                acquire: Some(LateAcquire {
                    names: names.clone(),
                    nonce: nonce.to_owned(),
                    lease,
                    fenced,
                }),
            };
            self.before().await?;
            late.acquire = None;
            let reply = self.take_or_wait(names, waited, nonce, lease, fenced)?;
            self.after(reply).await
        })
    }

    fn publish<'a>(
        &'a self,
        names: &'a Names,
        token: &'a str,
        payload: Vec<u8>,
        retention: Duration,
    ) -> BoxFuture<'a, Result<bool, FleetError>> {
        Box::pin(async move {
            self.before().await?;
            let published = {
                let mut state = self.state.lock().unwrap();
                Self::expire(&mut state, names);
                if Self::lease_of(&state, names).map(String::as_str) != Some(token) {
                    state.rejected += 1;
                    false
                } else {
                    let key = names.published(token, self.cache);
                    if self.db.is_some() {
                        let (_, stored) = crate::Codec::Postcard
                            .open_any::<crate::cache::Cached<u64>>(&payload)
                            .expect("the cache model stores versions");
                        if stored.value < state.floors.get(&key).copied().unwrap_or(0) {
                            state.stale_sets += 1;
                        }
                    }
                    state
                        .values
                        .insert(key, (payload, Instant::now() + retention));
                    state.leases.remove(&names.lease());
                    if let Some(fence) = crate::names::fence_of(token) {
                        state
                            .published
                            .insert((names.lease(), fence), Instant::now());
                    }
                    true
                }
            };
            self.after(published).await
        })
    }

    fn renew(&self, names: &Names, token: &str, lease: Duration) -> Result<bool, FleetError> {
        if self.roll(self.faults.errors) {
            return Err(Self::error());
        }
        let renewed = {
            let mut state = self.state.lock().unwrap();
            Self::expire(&mut state, names);
            if Self::lease_of(&state, names).map(String::as_str) != Some(token) {
                false
            } else if self.roll(self.faults.lost_leases) {
                state.leases.remove(&names.lease());
                false
            } else {
                state
                    .leases
                    .insert(names.lease(), (token.to_owned(), Instant::now() + lease));
                true
            }
        };
        if self.roll(self.faults.lost_replies) {
            return Err(Self::error());
        }
        Ok(renewed)
    }

    fn release(&self, names: &Names, nonce: &str, _lease: Duration) -> Result<bool, FleetError> {
        if self.roll(self.faults.keeper_errors) {
            return Err(Self::error());
        }
        // Late acquires run before or after this release, as Redis may order them.
        let late_first = self.roll(500);
        if late_first {
            self.run_late();
        }
        let mut state = self.state.lock().unwrap();
        state.voided.insert(nonce.to_owned());
        Self::expire(&mut state, names);
        let ours = Self::lease_of(&state, names).is_some_and(|token| nonce_of(token) == nonce);
        if ours {
            state.leases.remove(&names.lease());
        }
        drop(state);
        if !late_first {
            self.run_late();
        }
        if self.roll(self.faults.lost_replies) {
            return Err(Self::error());
        }
        Ok(ours)
    }

    fn lookup<'a>(&'a self, names: &'a Names) -> BoxFuture<'a, Result<Stored, FleetError>> {
        Box::pin(async move {
            self.before().await?;
            let found = {
                let state = self.state.lock().unwrap();
                let now = Instant::now();
                state
                    .values
                    .get(&names.cached())
                    .filter(|(_, until)| now < *until)
                    .map(|(payload, until)| (payload.clone(), *until - now))
            };
            self.after(found).await
        })
    }

    fn invalidate<'a>(&'a self, names: &'a Names) -> BoxFuture<'a, Result<bool, FleetError>> {
        Box::pin(async move {
            self.before().await?;
            let revoked = {
                let mut state = self.state.lock().unwrap();
                state.values.remove(&names.cached());
                state.invalidations += 1;
                if let Some(db) = &self.db {
                    state
                        .floors
                        .insert(names.cached(), db.load(Ordering::SeqCst));
                }
                state.leases.remove(&names.lease()).is_some()
            };
            self.after(revoked).await
        })
    }
}

/// One load: which process ran it, with which fence, and when.
#[derive(Debug, Clone)]
struct Load {
    key: String,
    process: usize,
    fence: Option<u64>,
    start: Instant,
    end: Instant,
}

/// What a caller saw.
#[derive(Debug)]
enum Seen {
    Value {
        process: usize,
        start: Instant,
        load: u64,
    },
    Panicked,
    Cancelled,
}

/// A healthy store gets a lease far longer than any load, so that a slow machine
/// cannot expire it; the faulty one a short lease, so that takeovers happen.
fn config(lease: Duration) -> Config {
    Config {
        lease,
        poll_interval: Duration::from_millis(4),
        max_wait: Duration::from_secs(3),
        command_timeout: Duration::from_millis(500),
        retry_redis_after: Duration::from_millis(10),
        max_value_size: 1024,
        ..Config::default()
    }
}

/// Runs one random schedule and checks every caller against the protocol's promises.
fn run(seed: u64, faults: Faults) {
    let memory = Arc::new(Memory {
        state: Mutex::default(),
        faults,
        seed: AtomicU64::new(seed),
        late: Mutex::default(),
        cache: false,
        db: None,
    });
    let healthy = faults.errors == 0 && faults.lost_leases == 0 && faults.lost_replies == 0;
    // Without lost leases and keeper errors, every lease ends published or released.
    let no_lease_may_expire = faults.lost_leases == 0 && faults.keeper_errors == 0;
    let lease = Duration::from_millis(match (healthy, no_lease_may_expire) {
        (true, _) => 2000,
        (false, true) => 500,
        (false, false) => 40,
    });
    // Hints never come: the notifier's client points at a port nothing listens on.
    let nowhere = || redis::Client::open("redis://127.0.0.1:1/").unwrap();
    let fleets: Vec<Fleet<u64>> = (0..3)
        .map(|_| Fleet::with_transport(memory.clone(), nowhere().into(), "m", config(lease)))
        .collect();
    let loads: Arc<Mutex<Vec<Load>>> = Arc::default();
    let panicking_processes: Arc<Mutex<Vec<usize>>> = Arc::default();
    let mut rng = Rng(seed | 1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let seen: Vec<Seen> = runtime.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..60 {
            let process = rng.below(3) as usize;
            let fleet = fleets[process].clone();
            let key = format!("k{}", rng.below(2));
            let delay = Duration::from_millis(rng.below(60));
            let work_ms = rng.below(30);
            let panics = rng.below(10) == 0;
            let cancel_after = (rng.below(5) == 0).then(|| Duration::from_millis(rng.below(40)));
            let (loads, panicking) = (loads.clone(), panicking_processes.clone());
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let start = Instant::now();
                let load_key = key.clone();
                let call = fleet.work_fenced(&key, move |fence| async move {
                    let load_start = Instant::now();
                    tokio::time::sleep(Duration::from_millis(work_ms)).await;
                    if panics {
                        panicking.lock().unwrap().push(process);
                        panic!("a load panicked, as the model asked");
                    }
                    let mut loads = loads.lock().unwrap();
                    loads.push(Load {
                        key: load_key,
                        process,
                        fence,
                        start: load_start,
                        end: Instant::now(),
                    });
                    loads.len() as u64 - 1
                });
                let load = match cancel_after {
                    Some(after) => match tokio::time::timeout(after, call).await {
                        Ok(load) => load,
                        Err(_) => return Seen::Cancelled,
                    },
                    None => call.await,
                };
                Seen::Value {
                    process,
                    start,
                    load,
                }
            }));
        }
        let mut seen = Vec::new();
        for task in tasks {
            match tokio::time::timeout(Duration::from_secs(20), task)
                .await
                .expect("a caller hung")
            {
                Ok(s) => seen.push(s),
                Err(panic) if panic.is_panic() => seen.push(Seen::Panicked),
                Err(e) => panic!("{e}"),
            }
        }
        // Let released leases and spawned tasks settle.
        tokio::time::sleep(Duration::from_millis(20)).await;
        seen
    });
    // Dropping the fleets waits for their keepers' pending releases; then every acquire
    // still queued runs, as it would once Redis resumed.
    drop(fleets);
    drop(runtime);
    memory.run_late();
    let loads = loads.lock().unwrap();
    let state = memory.state.lock().unwrap();
    if no_lease_may_expire {
        // No lease without a holder: every lease was published or released, none
        // waited out, whatever replies were lost and whenever callers were cancelled.
        assert_eq!(state.expired, 0, "seed {seed}: a lease ran out unreleased");
        assert!(
            state.leases.is_empty(),
            "seed {seed}: leases left behind: {:?}",
            state.leases
        );
    }
    let panicking = panicking_processes.lock().unwrap();
    // The earliest caller of each (process, load) pair: when that process's flight began.
    let mut first_caller: HashMap<(usize, u64), Instant> = HashMap::new();
    for s in &seen {
        match s {
            Seen::Value {
                process,
                start,
                load,
            } => {
                let first = first_caller.entry((*process, *load)).or_insert(*start);
                *first = (*first).min(*start);
            }
            Seen::Panicked => assert!(
                !panicking.is_empty(),
                "seed {seed}: a panic without a panicking load"
            ),
            Seen::Cancelled => {}
        }
    }
    for ((process, load), first) in first_caller {
        let load = &loads[load as usize];
        if load.process != process {
            // Another process's value reached this one only through Redis, and only for a
            // flight it joined while that value's flight was in the air: no caching.
            let fence = load
                .fence
                .expect("a value shared through Redis has a fence");
            let lease = Names::new("m", &load.key).lease();
            let published = state
                .published
                .get(&(lease, fence))
                .expect("another process's value was published");
            assert!(
                first <= *published,
                "seed {seed}: a flight began after the value it got was published"
            );
        }
    }
    if healthy {
        // Healthy Redis: a key's loads never overlap across processes, and every load
        // ran under a lease (a fence), with distinct fences.
        let mut fences: Vec<(&str, u64)> = loads
            .iter()
            .map(|l| {
                (
                    l.key.as_str(),
                    l.fence.expect("no fallback on a healthy Redis"),
                )
            })
            .collect();
        fences.sort();
        fences.dedup();
        assert_eq!(
            fences.len(),
            loads.len(),
            "seed {seed}: two loads under one fence"
        );
        assert_eq!(
            state.rejected, 0,
            "seed {seed}: a publish rejected on a healthy Redis"
        );
        for a in loads.iter() {
            for b in loads.iter() {
                let overlap = a.key == b.key && a.start < b.end && b.start < a.end;
                assert!(
                    std::ptr::eq(a, b) || !overlap || a.fence == b.fence,
                    "seed {seed}: overlapping loads {a:?} {b:?}"
                );
            }
        }
    }
}

#[test]
fn protocol_on_a_healthy_store() {
    for seed in 1..=12 {
        run(seed, Faults::default());
    }
}

#[test]
fn protocol_with_store_errors_and_lost_leases() {
    let faults = Faults {
        errors: 30,
        lost_leases: 30,
        keeper_errors: 30,
        ..Faults::default()
    };
    for seed in 100..=112 {
        run(seed, faults);
    }
}

#[test]
fn protocol_with_lost_replies_slow_commands_and_cancellations_after_effects() {
    let faults = Faults {
        errors: 30,
        lost_replies: 60,
        slow: true,
        ..Faults::default()
    };
    for seed in 200..=212 {
        run(seed, faults);
    }
}

#[test]
fn protocol_with_every_fault_at_once() {
    let faults = Faults {
        errors: 20,
        lost_replies: 20,
        lost_leases: 20,
        keeper_errors: 20,
        slow: true,
    };
    for seed in 300..=306 {
        run(seed, faults);
    }
}

mod cache;
