//! A fleet soak: replica processes (this program again) call a `Fleet` without pause
//! against one `redis-server` for `--seconds`, with callers giving up and loads failing
//! and panicking, while faults are injected at random: a replica killed and replaced, a
//! replica or Redis paused (SIGSTOP), connections killed (`CLIENT KILL`), Redis
//! restarted. Loopback only, on processes it started itself.
//!
//! ```sh
//! cargo run --release -p oneflight-redis --example fleet_soak -- --seconds 30
//! ```
//!
//! It checks that no caller ever gets a value of another (namespace, key) (the
//! namespaces and keys are chosen so that a naive naming would mix them), that every
//! value came from a load that ran, and that no call outlives `max_wait` plus the lease
//! by more than a margin (time a replica spent paused itself excepted). It prints calls,
//! loads and faults, and ends with `soak: OK` or the violations.

#[path = "shared/redis_server.rs"]
mod redis_server;
use redis_server::RedisServer;

use oneflight_redis::{Fleet, redis};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Two namespaces and keys that `oneflight:{ns:key}` would have mixed:
/// `soak` + `x:y` and `soak:x` + `y`.
const NAMESPACES: [&str; 2] = ["soak", "soak:x"];
const KEYS: [&str; 4] = ["x:y", "y", "", "{z} w"];

const LEASE: Duration = Duration::from_millis(1000);
const MAX_WAIT: Duration = Duration::from_millis(2000);
/// The slowest load a replica runs.
const LONGEST_LOAD: Duration = Duration::from_millis(200);
/// What a call may take beyond `max_wait + lease + longest load`: command timeouts on
/// the way (200 ms each), scheduling on a busy 2-core machine.
const MARGIN: Duration = Duration::from_millis(1500);
/// Concurrent callers per replica.
const CALLERS: usize = 24;

/// A value names the flight it belongs to and the load that made it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Value {
    namespace: String,
    key: String,
    load: String,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--replica") {
        replica(&args[1..]);
        return ExitCode::SUCCESS;
    }
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(message) => {
            eprintln!("fleet_soak: {message}");
            ExitCode::from(2)
        }
    }
}

/// A tiny xorshift generator: the soak's randomness, seeded from the clock.
struct Rng(u64);

impl Rng {
    fn seeded() -> Rng {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        Rng(nanos | 1)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to - from + 1))
    }
}

// ---------------------------------------------------------------------------------------
// The coordinator: Redis, replicas, faults, and the checks at the end.
// ---------------------------------------------------------------------------------------

struct Options {
    seconds: u64,
    replicas: usize,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut options = Options {
        seconds: 30,
        replicas: 4,
    };
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        let number: u64 = value
            .parse()
            .map_err(|_| format!("{flag}: not a number: {value}"))?;
        match flag.as_str() {
            "--seconds" => options.seconds = number.clamp(1, 3600),
            "--replicas" => options.replicas = (number as usize).clamp(2, 16),
            _ => return Err(format!("unknown flag {flag} (--seconds N, --replicas N)")),
        }
    }
    Ok(options)
}

fn spawn_replica(dir: &Path, url: &str, id: usize) -> Result<Child, String> {
    Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
        .args([
            "--replica",
            url,
            &dir.display().to_string(),
            &id.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())
}

fn signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status();
}

#[derive(Default)]
struct Faults(BTreeMap<&'static str, u64>);

impl Faults {
    fn add(&mut self, what: &'static str) {
        *self.0.entry(what).or_default() += 1;
    }
}

fn run(args: &[String]) -> Result<bool, String> {
    let options = parse(args)?;
    let dir = std::env::temp_dir().join(format!("oneflight-fleet-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let outcome = soak(&options, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}

fn soak(options: &Options, dir: &Path) -> Result<bool, String> {
    let mut server = RedisServer::start(dir)?;
    let (url, port) = (server.url(), server.port());
    let mut rng = Rng::seeded();
    let mut replicas: Vec<Child> = Vec::new();
    for id in 0..options.replicas {
        replicas.push(spawn_replica(dir, &url, id)?);
    }
    let mut next_id = options.replicas;
    let mut faults = Faults::default();
    let deadline = Instant::now() + Duration::from_secs(options.seconds);
    // Faults every 0.5 to 2 s, each undone before the next; bounded by the deadline.
    std::thread::sleep(Duration::from_millis(500));
    while Instant::now() + Duration::from_secs(2) < deadline {
        let victim = rng.below(replicas.len() as u64) as usize;
        match rng.below(6) {
            0 => {
                let _ = replicas[victim].kill();
                let _ = replicas[victim].wait();
                replicas[victim] = spawn_replica(dir, &url, next_id)?;
                next_id += 1;
                faults.add("replica killed and replaced");
            }
            1 => {
                let pid = replicas[victim].id();
                signal(pid, "STOP");
                std::thread::sleep(rng.millis(300, 2500));
                signal(pid, "CONT");
                faults.add("replica paused");
            }
            2 => {
                signal(server.pid(), "STOP");
                std::thread::sleep(rng.millis(100, 1500));
                signal(server.pid(), "CONT");
                faults.add("redis paused");
            }
            3 | 4 => {
                let kind = if rng.below(2) == 0 {
                    "normal"
                } else {
                    "pubsub"
                };
                let killed = redis::Client::open(url.as_str())
                    .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
                    .and_then(|mut c| {
                        redis::cmd("CLIENT")
                            .arg("KILL")
                            .arg("TYPE")
                            .arg(kind)
                            .query::<u64>(&mut c)
                    });
                if killed.is_ok() {
                    faults.add(if kind == "normal" {
                        "connections killed"
                    } else {
                        "subscribers killed"
                    });
                }
            }
            _ => {
                drop(server);
                std::thread::sleep(rng.millis(50, 500));
                server = RedisServer::start_on(dir, port)?;
                faults.add("redis restarted");
            }
        }
        std::thread::sleep(rng.millis(500, 2000));
    }
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::write(dir.join("stop"), b"").map_err(|e| e.to_string())?;
    let mut reports = Vec::new();
    for mut replica in replicas {
        reports.push(finish(&mut replica)?);
    }
    Ok(check(dir, options, &reports, &faults))
}

/// Waits (bounded) for a replica's report line.
fn finish(replica: &mut Child) -> Result<BTreeMap<String, String>, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while replica.try_wait().map_err(|e| e.to_string())?.is_none() {
        if Instant::now() > deadline {
            let _ = replica.kill();
            return Err("a replica did not stop within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut out = String::new();
    std::io::Read::read_to_string(replica.stdout.as_mut().unwrap(), &mut out)
        .map_err(|e| e.to_string())?;
    let line = out
        .lines()
        .find(|l| l.starts_with("report "))
        .ok_or("a replica left no report")?;
    Ok(line
        .split(' ')
        .skip(1)
        .filter_map(|f| f.split_once('='))
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .collect())
}

fn check(
    dir: &Path,
    options: &Options,
    reports: &[BTreeMap<String, String>],
    faults: &Faults,
) -> bool {
    let num = |r: &BTreeMap<String, String>, name: &str| -> u64 { r[name].parse().unwrap() };
    let sum = |name: &str| reports.iter().map(|r| num(r, name)).sum::<u64>();
    let loads: BTreeSet<String> = std::fs::read_to_string(dir.join("loads.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect();
    let mut violations: Vec<String> = Vec::new();
    // Every value a surviving replica received came from a load that ran.
    for report in reports {
        let id = &report["id"];
        let received =
            std::fs::read_to_string(dir.join(format!("received-{id}"))).unwrap_or_default();
        for load in received.lines().filter(|l| !loads.contains(*l)) {
            violations.push(format!("replica {id} got a value from no load: {load}"));
        }
        if num(report, "wrong") > 0 {
            violations.push(format!(
                "replica {id}: {} values of another (namespace, key)",
                report["wrong"]
            ));
        }
        if num(report, "too_slow") > 0 {
            violations.push(format!(
                "replica {id}: {} calls took longer than {:?} (slowest {} ms)",
                report["too_slow"],
                MAX_WAIT + LEASE + LONGEST_LOAD + MARGIN,
                report["slowest_ms"]
            ));
        }
    }
    let faults_total: u64 = faults.0.values().sum();
    let listed: Vec<String> = faults
        .0
        .iter()
        .map(|(what, n)| format!("{what} {n}"))
        .collect();
    println!(
        "soak: {} s, {} replicas (+{} replacements), {} calls: {} served, {} load errors shared, {} panics shared, {} gave up",
        options.seconds,
        options.replicas,
        faults
            .0
            .get("replica killed and replaced")
            .copied()
            .unwrap_or(0),
        sum("calls"),
        sum("served"),
        sum("errors"),
        sum("panics"),
        sum("gave_up"),
    );
    println!(
        "soak: {} loads in the fleet ({} by surviving replicas: {} as holder or alone, {} received, {} takeovers, {} fallbacks, {} redis errors)",
        loads.len(),
        sum("loads"),
        sum("loads") - sum("fallbacks"),
        sum("received"),
        sum("takeovers"),
        sum("fallbacks"),
        sum("redis_errors"),
    );
    println!("soak: {faults_total} faults: {}", listed.join(", "));
    println!(
        "soak: slowest call {} ms (bound {} ms: max_wait {} + lease {} + load {} + margin {})",
        reports
            .iter()
            .map(|r| num(r, "slowest_ms"))
            .max()
            .unwrap_or(0),
        (MAX_WAIT + LEASE + LONGEST_LOAD + MARGIN).as_millis(),
        MAX_WAIT.as_millis(),
        LEASE.as_millis(),
        LONGEST_LOAD.as_millis(),
        MARGIN.as_millis()
    );
    if sum("served") == 0 {
        violations.push("no call was served".into());
    }
    if violations.is_empty() {
        println!("soak: OK");
        true
    } else {
        for violation in violations.iter().take(20) {
            println!("soak: VIOLATION {violation}");
        }
        false
    }
}

// ---------------------------------------------------------------------------------------
// The replica: callers in a loop until the coordinator says stop.
// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct Tally {
    calls: u64,
    served: u64,
    wrong: u64,
    errors: u64,
    panics: u64,
    gave_up: u64,
    too_slow: u64,
    slowest_ms: u64,
    received: BTreeSet<String>,
}

fn replica(args: &[String]) {
    let (url, dir, id) = (&args[0], PathBuf::from(&args[1]), &args[2]);
    // How long this process spent paused (SIGSTOP): a ticker sees the gap.
    let paused_ms = Arc::new(AtomicU64::new(0));
    std::thread::spawn({
        let paused_ms = paused_ms.clone();
        move || {
            let mut last = Instant::now();
            loop {
                std::thread::sleep(Duration::from_millis(10));
                let gap = last.elapsed().as_millis() as u64;
                if gap > 60 {
                    paused_ms.fetch_add(gap - 10, Ordering::Relaxed);
                }
                last = Instant::now();
            }
        }
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client = redis::Client::open(url.as_str()).unwrap();
    let fleets: Vec<Fleet<Value>> = NAMESPACES
        .iter()
        .map(|namespace| {
            Fleet::builder(client.clone(), namespace)
                .lease(LEASE)
                .poll_interval(Duration::from_millis(100))
                .max_wait(MAX_WAIT)
                .command_timeout(Duration::from_millis(200))
                .retry_redis_after(Duration::from_millis(300))
                .build()
        })
        .collect();
    let tally = Arc::new(Mutex::new(Tally::default()));
    let loads = Arc::new(AtomicU64::new(0));
    runtime.block_on(async {
        let mut callers = Vec::new();
        for caller in 0..CALLERS {
            let (fleets, tally, dir, id) = (fleets.clone(), tally.clone(), dir.clone(), id.clone());
            let (paused_ms, loads) = (paused_ms.clone(), loads.clone());
            callers.push(tokio::spawn(async move {
                let mut rng =
                    Rng(Rng::seeded().0 ^ ((caller as u64 + 1) * 0x9E37_79B9_7F4A_7C15) | 1);
                while !dir.join("stop").exists() {
                    let n = rng.below(NAMESPACES.len() as u64) as usize;
                    let key = KEYS[rng.below(KEYS.len() as u64) as usize];
                    let load = load(&dir, &id, NAMESPACES[n], key, &loads, &mut rng);
                    let give_up = (rng.below(10) == 0).then(|| rng.millis(0, 300));
                    let fleet = fleets[n].clone();
                    let (started, paused_before) =
                        (Instant::now(), paused_ms.load(Ordering::Relaxed));
                    let call = tokio::spawn(async move {
                        match give_up {
                            Some(after) => tokio::time::timeout(after, fleet.try_work(key, load))
                                .await
                                .ok(),
                            None => Some(fleet.try_work(key, load).await),
                        }
                    });
                    let outcome = call.await;
                    let paused = paused_ms.load(Ordering::Relaxed) - paused_before;
                    let took = (started.elapsed().as_millis() as u64).saturating_sub(paused);
                    {
                        let mut tally = tally.lock().unwrap();
                        tally.calls += 1;
                        tally.slowest_ms = tally.slowest_ms.max(took);
                        if took > (MAX_WAIT + LEASE + LONGEST_LOAD + MARGIN).as_millis() as u64 {
                            tally.too_slow += 1;
                        }
                        match outcome {
                            Ok(Some(Ok(value))) => {
                                if value.namespace == NAMESPACES[n] && value.key == key {
                                    tally.served += 1;
                                } else {
                                    tally.wrong += 1;
                                }
                                tally.received.insert(value.load);
                            }
                            Ok(Some(Err(_))) => tally.errors += 1,
                            Ok(None) => tally.gave_up += 1,
                            Err(_) => tally.panics += 1,
                        }
                    }
                    tokio::time::sleep(rng.millis(0, 20)).await;
                }
            }));
        }
        for caller in callers {
            let _ = caller.await;
        }
    });
    drop(runtime);
    let tally = tally.lock().unwrap();
    let received: Vec<&str> = tally.received.iter().map(String::as_str).collect();
    std::fs::write(dir.join(format!("received-{id}")), received.join("\n")).unwrap();
    let mut stats = oneflight_redis::FleetStats::default();
    for fleet in &fleets {
        let s = fleet.stats();
        stats.loads += s.loads;
        stats.received += s.received;
        stats.takeovers += s.takeovers;
        stats.fallbacks += s.fallbacks;
        stats.redis_errors += s.redis_errors;
    }
    println!(
        "report id={id} calls={} served={} wrong={} errors={} panics={} gave_up={} too_slow={} slowest_ms={} \
         loads={} received={} takeovers={} fallbacks={} redis_errors={}",
        tally.calls,
        tally.served,
        tally.wrong,
        tally.errors,
        tally.panics,
        tally.gave_up,
        tally.too_slow,
        tally.slowest_ms,
        stats.loads,
        stats.received,
        stats.takeovers,
        stats.fallbacks,
        stats.redis_errors,
    );
}

/// A load of (namespace, key): logged when it starts, then 0 to 200 ms; 5% fail, 2%
/// panic.
fn load(
    dir: &Path,
    id: &str,
    namespace: &'static str,
    key: &'static str,
    loads: &AtomicU64,
    rng: &mut Rng,
) -> impl std::future::Future<Output = Result<Value, std::io::Error>> + Send + 'static {
    let load = format!(
        "{id}-{}-{}",
        std::process::id(),
        loads.fetch_add(1, Ordering::Relaxed)
    );
    let (took, fate) = (
        rng.millis(0, LONGEST_LOAD.as_millis() as u64),
        rng.below(100),
    );
    let log = dir.join("loads.log");
    async move {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        file.write_all(format!("{load}\n").as_bytes())?;
        tokio::time::sleep(took).await;
        match fate {
            0..5 => Err(std::io::Error::other("the load failed, as the soak asked")),
            5..7 => panic!("the load panicked, as the soak asked"),
            _ => Ok(Value {
                namespace: namespace.to_owned(),
                key: key.to_owned(),
                load,
            }),
        }
    }
}
