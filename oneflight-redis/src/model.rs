//! A model test of the protocol without Redis: the fleet's real flight logic (holder,
//! waiter, renewal, release, takeover, degrade) over an in-memory transport with the
//! scripts' semantics, several "processes" (fleets) sharing it, random timings,
//! cancellations, panics, Redis errors and leases lost early (a holder paused past its
//! lease). Pub/sub hints never come here: waiters rely on polling alone.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;

use crate::builder::{Config, OnRedisError};
use crate::notify::Notifier;
use crate::store::{Acquired, Failure, Names, Transport};
use crate::{Codec, Fleet};

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

/// The scripts' semantics over maps, with injected faults.
#[derive(Debug)]
struct Memory {
    state: Mutex<State>,
    /// Per mille of operations that fail as a Redis error would.
    errors_per_mille: u64,
    /// Per mille of acquires/renewals after which the holder's lease is gone (evicted, or
    /// its holder paused past it).
    lost_leases_per_mille: u64,
    seed: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    leases: HashMap<String, (String, Instant)>,
    values: HashMap<String, (Vec<u8>, Instant)>,
    fences: HashMap<String, u64>,
    /// When each flight's value was published, by lease key and fence.
    published: HashMap<(String, u64), Instant>,
    /// Publishes rejected because the lease was not the token's.
    rejected: u64,
}

impl Memory {
    fn roll(&self, per_mille: u64) -> bool {
        let mut rng = Rng(self
            .seed
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            | 1);
        rng.below(1000) < per_mille
    }

    fn fault(&self) -> Result<(), Failure> {
        if self.roll(self.errors_per_mille) {
            Err("injected redis error".to_owned())
        } else {
            Ok(())
        }
    }

    fn lease_of<'s>(state: &'s State, names: &Names) -> Option<&'s String> {
        state
            .leases
            .get(&names.lease())
            .filter(|(_, until)| Instant::now() < *until)
            .map(|(token, _)| token)
    }
}

impl Transport for Memory {
    fn acquire<'a>(
        &'a self,
        names: &'a Names,
        waited: Option<&'a str>,
        lease: Duration,
        fenced: bool,
    ) -> BoxFuture<'a, Result<Acquired, Failure>> {
        Box::pin(async move {
            self.fault()?;
            let mut state = self.state.lock().unwrap();
            let value = waited.and_then(|waited| state.values.get(&names.value(waited)));
            if let Some((payload, _)) = value.filter(|(_, until)| Instant::now() < *until) {
                return Ok(Acquired::Value(payload.clone()));
            }
            if let Some(holder) = Self::lease_of(&state, names) {
                let holder = holder.clone();
                if self.roll(self.lost_leases_per_mille) {
                    state.leases.remove(&names.lease());
                }
                return Ok(Acquired::Wait(holder));
            }
            let mut token = format!("{:x}", self.seed.fetch_add(1, Ordering::Relaxed));
            if fenced {
                let fence = state.fences.entry(names.fence()).or_insert(0);
                *fence += 1;
                token = format!("{fence}-{token}");
            }
            state
                .leases
                .insert(names.lease(), (token.clone(), Instant::now() + lease));
            Ok(Acquired::Hold(token))
        })
    }

    fn publish<'a>(
        &'a self,
        names: &'a Names,
        token: &'a str,
        payload: Vec<u8>,
        retention: Duration,
    ) -> BoxFuture<'a, Result<bool, Failure>> {
        Box::pin(async move {
            self.fault()?;
            let mut state = self.state.lock().unwrap();
            if Self::lease_of(&state, names).map(String::as_str) != Some(token) {
                state.rejected += 1;
                return Ok(false);
            }
            state
                .values
                .insert(names.value(token), (payload, Instant::now() + retention));
            state.leases.remove(&names.lease());
            if let Some(fence) = crate::store::fence_of(token) {
                state
                    .published
                    .insert((names.lease(), fence), Instant::now());
            }
            Ok(true)
        })
    }

    fn renew<'a>(
        &'a self,
        names: &'a Names,
        token: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, Failure>> {
        Box::pin(async move {
            self.fault()?;
            let mut state = self.state.lock().unwrap();
            if Self::lease_of(&state, names).map(String::as_str) != Some(token)
                || self.roll(self.lost_leases_per_mille)
            {
                return Ok(false);
            }
            state
                .leases
                .insert(names.lease(), (token.to_owned(), Instant::now() + lease));
            Ok(true)
        })
    }

    fn release<'a>(
        &'a self,
        names: &'a Names,
        token: &'a str,
    ) -> BoxFuture<'a, Result<bool, Failure>> {
        Box::pin(async move {
            self.fault()?;
            let mut state = self.state.lock().unwrap();
            if Self::lease_of(&state, names).map(String::as_str) != Some(token) {
                return Ok(false);
            }
            state.leases.remove(&names.lease());
            Ok(true)
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
        codec: Codec::Postcard,
        on_redis_error: OnRedisError::Degrade,
    }
}

/// Runs one random schedule and checks every caller against the protocol's promises.
fn run(seed: u64, errors_per_mille: u64, lost_leases_per_mille: u64) {
    let memory = Arc::new(Memory {
        state: Mutex::default(),
        errors_per_mille,
        lost_leases_per_mille,
        seed: AtomicU64::new(seed),
    });
    // Hints never come: the notifier's client points at a port nothing listens on.
    let nowhere = || redis::Client::open("redis://127.0.0.1:1/").unwrap();
    let fleets: Vec<Fleet<u64>> = (0..3)
        .map(|_| {
            let notifier = Notifier::new(
                nowhere(),
                "none".into(),
                Duration::from_millis(50),
                Duration::from_secs(60),
            );
            let healthy = errors_per_mille == 0 && lost_leases_per_mille == 0;
            let lease = Duration::from_millis(if healthy { 2000 } else { 40 });
            Fleet::with_transport(memory.clone(), notifier, "m", config(lease))
        })
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
    let loads = loads.lock().unwrap();
    let state = memory.state.lock().unwrap();
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
    if errors_per_mille == 0 && lost_leases_per_mille == 0 {
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
        let now = Instant::now();
        assert!(
            state.leases.values().all(|(_, until)| *until <= now),
            "seed {seed}: a lease left behind"
        );
    }
}

#[test]
fn protocol_on_a_healthy_store() {
    for seed in 1..=12 {
        run(seed, 0, 0);
    }
}

#[test]
fn protocol_with_store_errors_and_lost_leases() {
    for seed in 100..=112 {
        run(seed, 30, 30);
    }
}
