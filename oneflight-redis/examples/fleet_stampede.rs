//! A cache stampede across a fleet of real replica processes, on one SQLite database:
//! straight to the database, through an in-process `oneflight::Group` per replica, and
//! through a `Fleet` on Redis.
//!
//! ```sh
//! apt-get install -y redis-server      # or pass --redis redis://HOST:PORT/
//! cargo run --release -p oneflight-redis --example fleet_stampede
//! cargo run --release -p oneflight-redis --example fleet_stampede -- --replicas 8 --kill-holder
//! cargo run --release -p oneflight-redis --example fleet_stampede -- --cluster
//! ```
//!
//! It starts its own `redis-server` on a free loopback port unless `--redis` is given
//! (with `--cluster`, its own local Redis Cluster of 3 masters and 3 replicas, unless
//! `--redis-cluster URL,URL,...` is given),
//! fills a table of `--rows` rows that a lookup must scan, then starts `--replicas`
//! processes (this program again) that each fire `--requests` concurrent lookups over
//! `--keys` hot keys, released together. `--kill-holder` kills the replica that holds the
//! first key's lease mid-load, once, in the fleet run: the others take over after the
//! lease (1 s here) and the table shows what it cost.
//!
//! "Released together" is enforced, not hoped for: a lookup starts only once every
//! replica has issued all its requests. Without that, a replica that a busy machine
//! schedules a few tens of milliseconds late would ask after the first flights ended and
//! rightly load again (a fleet shares work in flight; it is not a cache), and the count of
//! queries would measure the scheduler rather than the deduplication.

#[path = "../../examples/shared/sqlite.rs"]
mod sqlite;

#[path = "shared/redis_server.rs"]
mod redis_server;
use redis_server::RedisServer;
#[path = "shared/redis_cluster.rs"]
mod redis_cluster;
use redis_cluster::RedisCluster;

use oneflight::Group;
use oneflight_redis::{Backend, Fleet, redis};
use rusqlite::Connection;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A lookup's result as it travels: `(items, highest price)`.
type Lookup = (i64, i64);

const MODES: [(&str, &str); 3] = [
    ("straight", "straight to the db"),
    ("group", "oneflight::Group each"),
    ("fleet", "oneflight-redis Fleet"),
];

#[derive(Clone)]
struct Options {
    replicas: usize,
    requests: usize,
    keys: usize,
    rows: usize,
    redis: Option<String>,
    /// On a cluster: its own local one (`Some(empty)`), or these nodes.
    cluster: Option<Vec<String>>,
    kill_holder: bool,
}

/// How replicas reach Redis, as one argument: a URL, or `cluster:URL,URL,...`.
fn backend_of(target: &str) -> Backend {
    match target.strip_prefix("cluster:") {
        Some(urls) => {
            let urls: Vec<String> = urls.split(',').map(str::to_owned).collect();
            redis_cluster::client_for(&urls).into()
        }
        None => redis::Client::open(target).expect("a redis URL").into(),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--replica") {
        return replica(&args[1..]);
    }
    match parse(&args).and_then(|options| run(&options)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(message) => {
            eprintln!("fleet_stampede: {message}");
            ExitCode::from(2)
        }
    }
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut options = Options {
        replicas: 4,
        requests: 2_000,
        keys: 4,
        rows: 200_000,
        redis: None,
        cluster: None,
        kill_holder: false,
    };
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        let mut number = || -> Result<usize, String> {
            let value = args.next().ok_or(format!("{flag} needs a value"))?;
            value
                .parse()
                .map_err(|_| format!("{flag} {value}: not a number"))
        };
        match flag.as_str() {
            "--replicas" => options.replicas = number()?,
            "--requests" => options.requests = number()?,
            "--keys" => options.keys = number()?,
            "--rows" => options.rows = number()?,
            "--redis" => options.redis = Some(args.next().ok_or("--redis needs a URL")?.clone()),
            "--cluster" => options.cluster = Some(Vec::new()),
            "--redis-cluster" => {
                let urls = args.next().ok_or("--redis-cluster needs URL,URL,...")?;
                options.cluster = Some(urls.split(',').map(str::to_owned).collect());
            }
            "--kill-holder" => options.kill_holder = true,
            _ => {
                return Err(format!(
                    "unknown argument {flag}; usage: fleet_stampede [--replicas N] [--requests N] \
                     [--keys N] [--rows N] [--redis URL] [--cluster] \
                     [--redis-cluster URL,URL,...] [--kill-holder]"
                ));
            }
        }
    }
    if options.replicas == 0 || options.requests == 0 || options.keys == 0 || options.rows == 0 {
        return Err("every number must be at least 1".into());
    }
    Ok(options)
}

/// One run's figures, gathered from every replica.
struct Report {
    queries: usize,
    served: usize,
    total: Duration,
    latencies: Vec<Duration>,
}

impl Report {
    fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        self.latencies[((self.latencies.len() as f64 - 1.0) * p).round() as usize]
    }
}

fn run(options: &Options) -> Result<bool, String> {
    let dir = std::env::temp_dir().join(format!("oneflight-fleet-stampede-{}", std::process::id()));
    let _cleanup = Cleanup(dir.clone());
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let (own_server, own_cluster);
    let url = match (&options.cluster, &options.redis) {
        (Some(urls), _) if !urls.is_empty() => format!("cluster:{}", urls.join(",")),
        (Some(_), _) => {
            own_cluster = RedisCluster::start(&dir)?;
            format!("cluster:{}", own_cluster.urls().join(","))
        }
        (None, Some(url)) => url.clone(),
        (None, None) => {
            own_server = RedisServer::start(&dir)?;
            own_server.url()
        }
    };
    let db = dir.join("shop.db");
    let started = Instant::now();
    sqlite::fill(&db, options.rows).map_err(|e| format!("filling the database: {e}"))?;
    println!(
        "database: {} rows ({:.1?} to create); a lookup scans an unindexed column",
        options.rows,
        started.elapsed()
    );
    println!("redis: {url}");
    println!(
        "load: {} replica processes x {} concurrent requests over {} hot keys, released together",
        options.replicas, options.requests, options.keys
    );
    let mut reports = Vec::new();
    for (mode, label) in MODES {
        let kill = options.kill_holder && mode == "fleet";
        reports.push(fleet_run(options, &dir, &db, &url, mode, label, kill)?);
    }
    println!();
    println!(
        "| run                    | requests | served | db queries |    total |      p50 |      p99 |"
    );
    println!(
        "|------------------------|---------:|-------:|-----------:|---------:|---------:|---------:|"
    );
    for ((_, label), report) in MODES.iter().zip(&reports) {
        println!(
            "| {label:<22} | {:>8} | {:>6} | {:>10} | {:>8} | {:>8} | {:>8} |",
            options.replicas * options.requests,
            report.served,
            report.queries,
            format!("{:.2?}", report.total),
            format!("{:.1?}", report.percentile(0.50)),
            format!("{:.1?}", report.percentile(0.99)),
        );
    }
    let fleet = &reports[2];
    // With a holder killed, the keys it held are loaded once more by the replicas that
    // take them over.
    let ok = if options.kill_holder {
        options.keys < fleet.queries && fleet.queries <= 2 * options.keys
    } else {
        fleet.queries == options.keys
    };
    println!();
    println!(
        "check: fleet_queries={} keys={} ok={ok}",
        fleet.queries, options.keys
    );
    Ok(ok)
}

/// Starts the replicas for one run, releases them together, and gathers their figures.
fn fleet_run(
    options: &Options,
    dir: &Path,
    db: &Path,
    url: &str,
    mode: &str,
    label: &str,
    kill: bool,
) -> Result<Report, String> {
    let run_dir = dir.join(mode);
    std::fs::create_dir_all(&run_dir).map_err(|e| e.to_string())?;
    let mut replicas: Vec<Child> = (0..options.replicas)
        .map(|i| {
            Command::new(std::env::current_exe().expect("own path"))
                .args([
                    "--replica",
                    mode,
                    &db.display().to_string(),
                    url,
                    &run_dir.display().to_string(),
                ])
                .args([
                    i.to_string(),
                    options.requests.to_string(),
                    options.keys.to_string(),
                    options.replicas.to_string(),
                ])
                .stdout(Stdio::null())
                .spawn()
                .map_err(|e| format!("starting a replica: {e}"))
        })
        .collect::<Result<_, _>>()?;
    let ready = || (0..options.replicas).all(|i| run_dir.join(format!("ready-{i}")).exists());
    wait_for(
        &mut replicas,
        Duration::from_secs(60),
        "the replicas to start",
        ready,
    )?;
    let go_ms = now_ms();
    std::fs::write(run_dir.join("go"), go_ms.to_string()).map_err(|e| e.to_string())?;
    let total_requests = options.replicas * options.requests;
    let mut killed = false;
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut last_draw = Instant::now();
    loop {
        let holder = (kill && !killed).then(|| std::fs::read_to_string(run_dir.join("holder")));
        if let Some(Ok(pid)) = holder {
            let pid: u32 = pid.trim().parse().map_err(|_| "a bad holder file")?;
            if let Some(child) = replicas.iter_mut().find(|c| c.id() == pid) {
                child.kill().map_err(|e| e.to_string())?;
                eprintln!("  killed replica {pid}, the holder of key 0, mid-load");
                killed = true;
            }
        }
        let finished = replicas
            .iter_mut()
            .map(|c| c.try_wait().ok().flatten().is_some())
            .filter(|&done| done)
            .count();
        if last_draw.elapsed() >= Duration::from_millis(500) || finished == replicas.len() {
            let answered: usize = (0..options.replicas)
                .map(|i| read_number(&run_dir.join(format!("progress-{i}"))))
                .sum();
            eprintln!("  {label}: {answered}/{total_requests} requests answered");
            last_draw = Instant::now();
        }
        if finished == replicas.len() {
            break;
        }
        if Instant::now() > deadline {
            replicas.iter_mut().for_each(|c| drop(c.kill()));
            return Err(format!("{label}: the replicas did not finish in 300 s"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut report = Report {
        queries: 0,
        served: 0,
        total: Duration::ZERO,
        latencies: Vec::new(),
    };
    for i in 0..options.replicas {
        let Ok(text) = std::fs::read_to_string(run_dir.join(format!("result-{i}"))) else {
            continue;
        }; // killed
        let mut lines = text.lines();
        let finished_ms: u128 = lines
            .next()
            .and_then(|l| l.parse().ok())
            .ok_or(format!("a bad result from replica {i}"))?;
        report.total = report.total.max(Duration::from_millis(
            (finished_ms.saturating_sub(go_ms)) as u64,
        ));
        for line in lines {
            report.latencies.push(Duration::from_micros(
                line.parse().map_err(|_| "a bad latency")?,
            ));
        }
    }
    report.queries =
        std::fs::read_to_string(run_dir.join("queries.log")).map_or(0, |log| log.lines().count());
    report.served = report.latencies.len();
    report.latencies.sort();
    Ok(report)
}

/// A replica: `--replica MODE DB URL DIR INDEX REQUESTS KEYS REPLICAS`.
fn replica(args: &[String]) -> ExitCode {
    let [mode, db, url, dir, index, requests, keys, replicas] = args else {
        eprintln!("fleet_stampede: bad replica arguments {args:?}");
        return ExitCode::from(2);
    };
    let (dir, requests, keys, replicas): (PathBuf, usize, usize, usize) = (
        dir.into(),
        requests.parse().unwrap(),
        keys.parse().unwrap(),
        replicas.parse().unwrap(),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let pool = Arc::new(Pool::open(Path::new(db), 4, &dir, replicas));
        let group: Group<String, Lookup> = Group::new();
        let fleet: Fleet<Lookup> = Fleet::builder(backend_of(url), "fleet-stampede")
            .lease(Duration::from_secs(1))
            .poll_interval(Duration::from_millis(100))
            .build();
        // Connect before the start, as a running service would have.
        fleet.work("warm-up", async { (0, 0) }).await;
        std::fs::write(dir.join(format!("ready-{index}")), b"").unwrap();
        while !dir.join("go").exists() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let answered = Arc::new(AtomicUsize::new(0));
        let issued = Arc::new(AtomicUsize::new(0));
        let progress = tokio::spawn({
            let (answered, file) = (answered.clone(), dir.join(format!("progress-{index}")));
            async move {
                loop {
                    let _ = std::fs::write(&file, answered.load(Ordering::Relaxed).to_string());
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        });
        let tasks: Vec<_> = (0..requests)
            .map(|i| {
                let (pool, group, fleet, answered, issued, issued_marker) = (
                    pool.clone(),
                    group.clone(),
                    fleet.clone(),
                    answered.clone(),
                    issued.clone(),
                    pool.issued_marker(index),
                );
                let mode = mode.clone();
                tokio::spawn(async move {
                    let category = i % keys;
                    let key = format!("category:{category}");
                    let asked = Instant::now();
                    let lookup = pool.lookup(category);
                    // The last request of this replica to be issued says so to the
                    // others, whose lookups wait for every replica's word.
                    if issued.fetch_add(1, Ordering::SeqCst) + 1 == requests {
                        std::fs::write(&issued_marker, b"").unwrap();
                    }
                    let value = match mode.as_str() {
                        "straight" => lookup.await,
                        "group" => group.work(&key, lookup).await,
                        _ => fleet.work(&key, lookup).await,
                    };
                    assert!(value.0 > 0, "a category has items");
                    answered.fetch_add(1, Ordering::Relaxed);
                    asked.elapsed()
                })
            })
            .collect();
        let mut latencies = Vec::with_capacity(requests);
        for task in tasks {
            latencies.push(task.await.expect("a request does not panic"));
        }
        progress.abort();
        let mut out = format!("{}\n", now_ms());
        for latency in latencies {
            out.push_str(&format!("{}\n", latency.as_micros()));
        }
        std::fs::write(dir.join(format!("result-{index}")), out).unwrap();
        let _ = std::fs::write(dir.join(format!("progress-{index}")), requests.to_string());
    });
    ExitCode::SUCCESS
}

/// A fixed pool of connections, as a service has: a lookup waits for a free one.
struct Pool {
    free: async_channel::Receiver<Connection>,
    give_back: async_channel::Sender<Connection>,
    /// The run's folder, where each replica says `issued-INDEX` once all its requests
    /// are issued.
    run_dir: PathBuf,
    replicas: usize,
    /// Set once every replica of the run has issued its requests; the first lookup
    /// watches the folder, the others wait for it.
    all_issued: tokio::sync::OnceCell<()>,
}

impl Pool {
    fn open(path: &Path, size: usize, run_dir: &Path, replicas: usize) -> Pool {
        let (give_back, free) = async_channel::bounded(size);
        for _ in 0..size {
            give_back
                .try_send(Connection::open(path).expect("the database opens"))
                .unwrap();
        }
        Pool {
            free,
            give_back,
            run_dir: run_dir.to_owned(),
            replicas,
            all_issued: tokio::sync::OnceCell::new(),
        }
    }

    /// The file by which replica `index` says it has issued all its requests.
    fn issued_marker(&self, index: &str) -> PathBuf {
        self.run_dir.join(format!("issued-{index}"))
    }

    /// Waits until every replica has issued all its requests (at most 60 s: a replica
    /// that died before it could say so must not hang the others).
    async fn all_issued(&self) {
        let watch = || async {
            let deadline = Instant::now() + Duration::from_secs(60);
            let issued = |i: usize| self.issued_marker(&i.to_string()).exists();
            while !(0..self.replicas).all(issued) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        self.all_issued.get_or_init(watch).await;
    }

    /// Looks `category` up on a free connection. Each query is logged in the run's
    /// folder as it starts, so that a killed replica's queries count too; the first
    /// query of category 0 names its replica as the holder (for `--kill-holder`).
    async fn lookup(&self, category: usize) -> Lookup {
        self.all_issued().await;
        let dir = &self.run_dir;
        let db = self.free.recv().await.expect("the pool owns its sender");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("queries.log"));
        let _ = log.and_then(|mut log| writeln!(log, "{} {category}", std::process::id()));
        if category == 0 {
            let marker = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(dir.join("holder"));
            if let Ok(mut marker) = marker {
                let _ = write!(marker, "{}", std::process::id());
            }
        }
        let (db, summary) = tokio::task::spawn_blocking(move || {
            let summary = sqlite::query(&db, category).expect("the query runs");
            (db, summary)
        })
        .await
        .expect("the query does not panic");
        let _ = self.give_back.try_send(db);
        (summary.items, summary.highest_price)
    }
}

/// Removes the demo's temporary folder at the end.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Waits until `ready`, failing if a replica exits first or `limit` passes.
fn wait_for(
    replicas: &mut [Child],
    limit: Duration,
    what: &str,
    ready: impl Fn() -> bool,
) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    while !ready() {
        if replicas
            .iter_mut()
            .any(|c| c.try_wait().ok().flatten().is_some())
        {
            return Err(format!("a replica exited while waiting for {what}"));
        }
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

fn read_number(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
}
