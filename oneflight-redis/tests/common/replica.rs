//! The replica process of the process tests (this test binary, re-executed with
//! `ONEFLIGHT_REPLICA` set), and the test side's set-up around it.
//!
//! A replica's settings come from the environment: `URL` (one node) or `CLUSTER` (the
//! URLs of a cluster's nodes, comma-separated), `DIR`, `KEYS`, `CALLERS` (per
//! key), `LEASE_MS`, `POLL_MS`, `MAX_WAIT_MS`, `TIMEOUT_MS` (per Redis command),
//! `RETRY_MS`, `FIRST_LOAD_MS` and `LOAD_MS` (how long the first load of a key in a
//! phase takes, and any later one), `FIRST` (`panic` or `err`: what the first load does
//! at its end), `CALLER_TIMEOUT_MS`, `PHASES`, `MODE` (`work`, `try` or `fenced`),
//! `KEY_SET` (`odd`: namespaces and keys with `:`, braces, spaces, newlines and empty
//! ones), `VALUE_BYTES` (pads each value to that size), `SHUTDOWN` (`1`: once a load of
//! this process started, drop the runtime and the fleet, as a process that shuts down).
//!
//! Loads are counted in a shared log file (not in Redis, which some tests stop): one line
//! each, `label pid phase start_ms fence`. A value names the flight it came from:
//! `label/pid/phase/fence/` and padding, so that a caller can tell a value of another
//! (namespace, key), phase or size.

use super::*;
use oneflight_redis::Fleet;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const LIMIT: Duration = Duration::from_secs(60);

/// The odd namespaces and keys of `KEY_SET=odd`: every pair is its own flight.
pub const ODD_NAMESPACES: [&str; 4] = ["a", "a:b", "", "{x} y\n"];
pub const ODD_KEYS: [&str; 7] = ["b:c", "c", "", ":", "{}", "}{ k\ne", "{"];

/// A flight of the replica: its namespace, key, and the label its loads are logged by.
struct Flight {
    namespace: &'static str,
    key: String,
    label: String,
}

fn flights() -> Vec<Flight> {
    if std::env::var("KEY_SET").is_ok_and(|set| set == "odd") {
        let mut flights = Vec::new();
        for (n, namespace) in ODD_NAMESPACES.iter().enumerate() {
            for (k, key) in ODD_KEYS.iter().enumerate() {
                flights.push(Flight {
                    namespace,
                    key: key.to_string(),
                    label: format!("n{n}k{k}"),
                });
            }
        }
        return flights;
    }
    (0..env_u64("KEYS", 1))
        .map(|key| Flight {
            namespace: "test",
            key: format!("key{key}"),
            label: format!("key{key}"),
        })
        .collect()
}

#[derive(Default)]
struct Tally {
    served: u64,
    wrong: u64,
    panicked: u64,
    errors: u64,
    error_ptrs: BTreeSet<usize>,
    timed_out: u64,
    /// label → the distinct values its callers got (their first 64 bytes).
    values: BTreeMap<String, BTreeSet<String>>,
    cancelled_at_ms: u128,
    last_done_ms: u128,
    slowest_ms: u128,
}

/// The replica's main: runs its phases and prints its report line.
pub fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let backend: oneflight_redis::Backend = match std::env::var("CLUSTER") {
        Ok(urls) => {
            let urls: Vec<String> = urls.split(',').map(str::to_owned).collect();
            super::redis_cluster::client_for(&urls).into()
        }
        Err(_) => oneflight_redis::redis::Client::open(env_str("URL"))
            .unwrap()
            .into(),
    };
    let ms = |name, default| Duration::from_millis(env_u64(name, default));
    let mut fleets: BTreeMap<&'static str, Fleet<String>> = BTreeMap::new();
    for flight in flights() {
        fleets.entry(flight.namespace).or_insert_with(|| {
            Fleet::builder(backend.clone(), flight.namespace)
                .lease(ms("LEASE_MS", 5000))
                .poll_interval(ms("POLL_MS", 250))
                .max_wait(ms("MAX_WAIT_MS", 30_000))
                .command_timeout(ms("TIMEOUT_MS", 1000))
                .retry_redis_after(ms("RETRY_MS", 1000))
                .build()
        });
    }
    let tally = Arc::new(Mutex::new(Tally::default()));
    let shutdown = std::env::var("SHUTDOWN").is_ok_and(|s| s == "1");
    let shutdown_at_ms = runtime.block_on(run_phases(&fleets, &tally, shutdown));
    if shutdown {
        // As a process that shuts down: its runtime goes, with the loads in flight, then
        // its fleet.
        drop(runtime);
        let stats = fleets.values().next().unwrap().stats();
        drop(fleets);
        let tally = tally.lock().unwrap();
        println!(
            "report pid={} shutdown_at_ms={shutdown_at_ms} served={} loads={}",
            std::process::id(),
            tally.served,
            stats.loads,
        );
        return;
    }
    // A server process lives on after its requests: give the fleet's janitor and tasks
    // the time they would have there.
    std::thread::sleep(Duration::from_millis(300));
    report(&tally.lock().unwrap(), &fleets);
}

/// Runs the phases; with `shutdown`, returns as soon as a load of this process started,
/// with the time.
async fn run_phases(
    fleets: &BTreeMap<&'static str, Fleet<String>>,
    tally: &Arc<Mutex<Tally>>,
    shutdown: bool,
) -> u128 {
    let dir = PathBuf::from(env_str("DIR"));
    let callers = env_u64("CALLERS", 10);
    let caller_timeout = env_u64("CALLER_TIMEOUT_MS", 0);
    let mode = std::env::var("MODE").unwrap_or_default();
    std::fs::write(dir.join(format!("ready-{}", std::process::id())), b"").unwrap();
    for phase in 1..=env_u64("PHASES", 1) as u32 {
        let gate = dir.join(if phase == 1 {
            "go".to_owned()
        } else {
            format!("go{phase}")
        });
        // Bounded: a replica whose test died does not wait forever.
        let deadline = std::time::Instant::now() + LIMIT * 2;
        while !gate.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "replica: no {}",
                gate.display()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let mut tasks = Vec::new();
        for flight in flights() {
            for _ in 0..callers {
                let fleet = fleets[flight.namespace].clone();
                let (dir, tally, mode) = (dir.clone(), tally.clone(), mode.clone());
                let (key, label) = (flight.key.clone(), flight.label.clone());
                tasks.push(tokio::spawn(async move {
                    let began = now_ms();
                    let (dir, loaded) = (&dir, &label);
                    let call = async move {
                        let label = loaded;
                        match mode.as_str() {
                            "try" => {
                                fleet
                                    .try_work(&key, load(dir.clone(), label.clone(), phase, None))
                                    .await
                            }
                            "fenced" => Ok(fleet
                                .work_fenced(&key, |fence| async move {
                                    load(dir.clone(), label.clone(), phase, fence)
                                        .await
                                        .unwrap()
                                })
                                .await),
                            _ => Ok(fleet
                                .work(&key, async {
                                    load(dir.clone(), label.clone(), phase, None).await.unwrap()
                                })
                                .await),
                        }
                    };
                    let outcome = if caller_timeout > 0 {
                        tokio::time::timeout(Duration::from_millis(caller_timeout), call).await
                    } else {
                        Ok(call.await)
                    };
                    let mut tally = tally.lock().unwrap();
                    match outcome {
                        Ok(Ok(value)) => {
                            let right = value.starts_with(&format!("{label}/"))
                                && value.split('/').nth(2) == Some(&phase.to_string())
                                && value.len() >= env_u64("VALUE_BYTES", 0) as usize;
                            if right {
                                tally.served += 1
                            } else {
                                tally.wrong += 1
                            }
                            let head = value.chars().take(64).collect();
                            tally.values.entry(label).or_default().insert(head);
                        }
                        Ok(Err(error)) => {
                            tally.errors += 1;
                            tally.error_ptrs.insert(Arc::as_ptr(&error) as usize);
                        }
                        Err(_) => {
                            tally.timed_out += 1;
                            tally.cancelled_at_ms = now_ms();
                        }
                    }
                    tally.last_done_ms = now_ms();
                    tally.slowest_ms = tally.slowest_ms.max(now_ms() - began);
                }));
            }
        }
        if shutdown {
            while !dir.join(format!("loading-{}", std::process::id())).exists() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            return now_ms();
        }
        for task in tasks {
            if let Err(error) = task.await {
                assert!(error.is_panic());
                tally.lock().unwrap().panicked += 1;
            }
        }
        std::fs::write(
            dir.join(format!("done-{phase}-{}", std::process::id())),
            b"",
        )
        .unwrap();
    }
    0
}

fn report(tally: &Tally, fleets: &BTreeMap<&'static str, Fleet<String>>) {
    let mut stats = oneflight_redis::FleetStats::default();
    for fleet in fleets.values() {
        let s = fleet.stats();
        stats.loads += s.loads;
        stats.received += s.received;
        stats.takeovers += s.takeovers;
        stats.fallbacks += s.fallbacks;
        stats.redis_errors += s.redis_errors;
        stats.timeouts += s.timeouts;
        stats.disconnects += s.disconnects;
        stats.late_publishes += s.late_publishes;
        stats.oversized += s.oversized;
    }
    let values: Vec<String> = tally
        .values
        .iter()
        .map(|(k, v)| format!("{k}:{}", v.iter().cloned().collect::<Vec<_>>().join("+")))
        .collect();
    println!(
        "report pid={} served={} wrong={} panicked={} errors={} distinct_errors={} timed_out={} \
         cancelled_at_ms={} last_done_ms={} slowest_ms={} loads={} received={} takeovers={} \
         fallbacks={} redis_errors={} timeouts={} disconnects={} late_publishes={} oversized={} \
         values={}",
        std::process::id(),
        tally.served,
        tally.wrong,
        tally.panicked,
        tally.errors,
        tally.error_ptrs.len(),
        tally.timed_out,
        tally.cancelled_at_ms,
        tally.last_done_ms,
        tally.slowest_ms,
        stats.loads,
        stats.received,
        stats.takeovers,
        stats.fallbacks,
        stats.redis_errors,
        stats.timeouts,
        stats.disconnects,
        stats.late_publishes,
        stats.oversized,
        // Values hold no spaces (labels and padding), so the report stays one line.
        values.join(","),
    );
}

/// The load: records itself, takes `FIRST_LOAD_MS` if it is the first load of the flight
/// in this phase (then does `FIRST`), else `LOAD_MS`. Its value names the flight, the
/// process, the phase and the fence, padded to `VALUE_BYTES`.
async fn load(
    dir: PathBuf,
    label: String,
    phase: u32,
    fence: Option<u64>,
) -> Result<String, std::io::Error> {
    let first = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dir.join(format!("first-{phase}-{label}")))
        .is_ok();
    record_load(&dir, &label, phase, fence.unwrap_or(0));
    let _ = std::fs::write(dir.join(format!("loading-{}", std::process::id())), b"");
    let millis = if first {
        env_u64("FIRST_LOAD_MS", 300)
    } else {
        env_u64("LOAD_MS", 300)
    };
    tokio::time::sleep(Duration::from_millis(millis)).await;
    match std::env::var("FIRST").as_deref() {
        Ok("panic") if first => panic!("the first load panicked, as the test asked"),
        Ok("err") if first => {
            return Err(std::io::Error::other(
                "the first load failed, as the test asked",
            ));
        }
        _ => {}
    }
    let mut value = format!(
        "{label}/{}/{phase}/{}/",
        std::process::id(),
        fence.unwrap_or(0)
    );
    let size = env_u64("VALUE_BYTES", 0) as usize;
    if value.len() < size {
        value.extend(std::iter::repeat_n('#', size - value.len()));
    }
    Ok(value)
}

/// A test's server (or cluster), scratch directory and common replica settings.
pub struct Setup<S = Server> {
    pub server: S,
    pub scratch: Scratch,
    pub env: Vec<(&'static str, String)>,
}

pub fn setup(name: &str, settings: &[(&'static str, &str)]) -> Option<Setup> {
    let server = server()?;
    let scratch = Scratch::new(name);
    let mut env = vec![
        ("URL", server.url()),
        ("DIR", scratch.0.display().to_string()),
    ];
    env.extend(settings.iter().map(|(n, v)| (*n, v.to_string())));
    Some(Setup {
        server,
        scratch,
        env,
    })
}

/// As [`setup`], on a local cluster of the test's own (`setup.server`).
pub fn cluster_setup(
    name: &str,
    settings: &[(&'static str, &str)],
) -> Option<Setup<super::redis_cluster::RedisCluster>> {
    let scratch = Scratch::new(name);
    let cluster = cluster(&scratch.0)?;
    let mut env = vec![
        ("CLUSTER", cluster.urls().join(",")),
        ("DIR", scratch.0.display().to_string()),
    ];
    env.extend(settings.iter().map(|(n, v)| (*n, v.to_string())));
    Some(Setup {
        server: cluster,
        scratch,
        env,
    })
}

impl<S> Setup<S> {
    pub fn start(&self, extra: &[(&'static str, &str)]) -> Replica {
        let mut env = self.env.clone();
        env.extend(extra.iter().map(|(n, v)| (*n, v.to_string())));
        Replica::start("replica", &env)
    }

    fn count_files(&self, prefix: &str) -> usize {
        std::fs::read_dir(&self.scratch.0)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with(prefix)
            })
            .count()
    }

    pub fn wait_ready(&self, count: usize) {
        wait_until("replicas ready", LIMIT, || {
            self.count_files("ready-") >= count
        });
    }

    /// Waits until `count` replicas ended phase `phase`.
    pub fn wait_phase_done(&self, phase: u32, count: usize) {
        wait_until(&format!("phase {phase} to end"), LIMIT, || {
            self.count_files(&format!("done-{phase}-")) >= count
        });
    }

    pub fn wait_loads(&self, count: usize) {
        wait_until(&format!("{count} loads"), LIMIT, || {
            self.scratch.loads().len() >= count
        });
    }

    /// Opens the gate of phase `phase` (2 and later).
    pub fn go_phase(&self, phase: u32) {
        std::fs::write(self.scratch.0.join(format!("go{phase}")), b"").unwrap();
    }

    /// Starts the holder alone and waits until its load runs, then starts `waiters`
    /// replicas and gives them time to ask Redis and wait on its flight.
    pub fn holder_then_waiters(
        &self,
        holder: &[(&'static str, &str)],
        waiters: usize,
    ) -> (Replica, Vec<Replica>) {
        let holder = self.start(holder);
        self.wait_ready(1);
        self.scratch.go();
        self.wait_loads(1);
        let waiters: Vec<Replica> = (0..waiters).map(|_| self.start(&[])).collect();
        self.wait_ready(1 + waiters.len());
        std::thread::sleep(Duration::from_millis(300));
        (holder, waiters)
    }
}

/// Milliseconds from `earlier` to `later`, two clock readings that may come from two
/// processes: negative when `later` is earlier, never an overflow.
pub fn ms_between(earlier: u128, later: u128) -> i128 {
    later as i128 - earlier as i128
}
