//! Hot keys expiring under steady traffic, across replica processes, three ways: the
//! cache-aside code a user writes around `Fleet` today, `Cache` with `stale_for`, and
//! `Cache` with early refresh only.
//!
//! ```sh
//! apt-get install -y redis-server      # or pass --redis redis://HOST:PORT/
//! cargo run --release -p oneflight-redis --example cache_expiry
//! cargo run --release -p oneflight-redis --example cache_expiry -- --invalidate --svg docs/cache_expiry.svg
//! ```
//!
//! It starts its own `redis-server` unless `--redis` is given, then for each way starts
//! `--replicas` processes (this program again) that each send `--rate` requests a
//! second over `--keys` hot keys for `--seconds`; a load reads the key's version from a
//! "database" (a file per key) and takes `--load-ms`. Values are fresh for `--fresh-ms`
//! (the cache-aside TTL too); the `stale_for` run keeps them `--stale-ms` more. With
//! `--invalidate`, a writer updates the database and invalidates (cache-aside: `DEL`)
//! one key at a time at random moments, often during a load; at the end, a value in the
//! cache older than the database is a stale set.
//!
//! The last line checks the `Cache` run with `stale_for`:
//! `check: cache_loads=L windows=W blocked_after_fill=B stale_sets=S ok=...`, where `W`
//! is the keys' fresh windows in the run, and ok means `L <= W + replicas` (plus one
//! load per invalidation), `B = 0` (no request after its key's first fill took half a
//! load, except right after an invalidation of its key, which removes the value by
//! design) and `S = 0`.

#[path = "shared/redis_server.rs"]
mod redis_server;

use oneflight_redis::{Cache, Fleet, redis};
use redis_server::RedisServer;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const RUNS: [(&str, &str); 3] = [
    ("aside", "cache-aside: GET, Fleet::work + SET PX"),
    ("stale", "Cache, stale_for"),
    ("early", "Cache, early refresh only"),
];

#[derive(Clone)]
struct Options {
    replicas: usize,
    keys: usize,
    seconds: u64,
    rate: u64,
    load_ms: u64,
    fresh_ms: u64,
    stale_ms: u64,
    invalidate: bool,
    redis: Option<String>,
    svg: Option<PathBuf>,
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
            eprintln!("cache_expiry: {message}");
            ExitCode::from(2)
        }
    }
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut options = Options {
        replicas: 4,
        keys: 4,
        seconds: 12,
        rate: 100,
        load_ms: 300,
        fresh_ms: 2000,
        stale_ms: 2000,
        invalidate: false,
        redis: None,
        svg: None,
    };
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        let number = |text: &String| {
            text.parse::<u64>()
                .map_err(|_| format!("{flag} {text}: not a number"))
        };
        match flag.as_str() {
            "--replicas" => options.replicas = number(value()?)? as usize,
            "--keys" => options.keys = number(value()?)? as usize,
            "--seconds" => options.seconds = number(value()?)?,
            "--rate" => options.rate = number(value()?)?,
            "--load-ms" => options.load_ms = number(value()?)?,
            "--fresh-ms" => options.fresh_ms = number(value()?)?,
            "--stale-ms" => options.stale_ms = number(value()?)?,
            "--invalidate" => options.invalidate = true,
            "--redis" => options.redis = Some(value()?.clone()),
            "--svg" => options.svg = Some(PathBuf::from(value()?)),
            _ => {
                return Err(format!(
                    "unknown argument {flag}; usage: cache_expiry [--replicas N] [--keys N] \
                     [--seconds N] [--rate N] [--load-ms N] [--fresh-ms N] [--stale-ms N] \
                     [--invalidate] [--redis URL] [--svg PATH]"
                ));
            }
        }
    }
    let numbers = [
        options.replicas as u64,
        options.keys as u64,
        options.seconds,
        options.rate,
    ];
    if numbers.contains(&0) || options.fresh_ms == 0 {
        return Err("replicas, keys, seconds, rate and fresh-ms must be at least 1".into());
    }
    Ok(options)
}

/// One request as a replica saw it.
struct Request {
    key: usize,
    start_ms: u64,
    latency: Duration,
}

/// One run's figures.
struct Figures {
    loads: usize,
    requests: Vec<Request>,
    stale_sets: usize,
    /// The writer's invalidations: key, and when (ms since the start).
    invalidations: Vec<(usize, u64)>,
    load_ms: u64,
}

impl Figures {
    fn percentile(latencies: &mut [Duration], p: f64) -> Duration {
        if latencies.is_empty() {
            return Duration::ZERO;
        }
        latencies.sort();
        latencies[((latencies.len() as f64 - 1.0) * p).round() as usize]
    }

    /// Whether `r` started while its key's value was being reloaded after one of the
    /// writer's invalidations (within a load and 200 ms of it): such a request waits by
    /// design, since the value it would get is gone.
    fn after_invalidation(&self, r: &Request) -> bool {
        self.invalidations.iter().any(|&(key, at)| {
            key == r.key && r.start_ms >= at && r.start_ms <= at + self.load_ms + 200
        })
    }

    /// Requests that started after their key's first fill (the end of the first request
    /// of that key to finish), not right after an invalidation of it, and took longer
    /// than `limit`: they met an expired key.
    fn blocked_after_fill(&self, limit: Duration) -> usize {
        let mut filled = std::collections::HashMap::new();
        for r in &self.requests {
            let end = r.start_ms + r.latency.as_millis() as u64;
            let first = filled.entry(r.key).or_insert(end);
            *first = (*first).min(end);
        }
        self.requests
            .iter()
            .filter(|r| {
                r.start_ms > filled[&r.key] && r.latency > limit && !self.after_invalidation(r)
            })
            .count()
    }

    /// Requests that started right after an invalidation of their key and took longer
    /// than `limit`.
    fn waited_after_invalidation(&self, limit: Duration) -> usize {
        self.requests
            .iter()
            .filter(|r| r.latency > limit && self.after_invalidation(r))
            .count()
    }

    /// p99 per second of the run, by the second each request started in.
    fn p99_per_second(&self, seconds: u64) -> Vec<Duration> {
        (0..seconds)
            .map(|s| {
                let mut second: Vec<Duration> = self
                    .requests
                    .iter()
                    .filter(|r| r.start_ms / 1000 == s)
                    .map(|r| r.latency)
                    .collect();
                Self::percentile(&mut second, 0.99)
            })
            .collect()
    }
}

fn run(options: &Options) -> Result<bool, String> {
    let dir = std::env::temp_dir().join(format!("oneflight-cache-expiry-{}", std::process::id()));
    let _cleanup = Cleanup(dir.clone());
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let own_server;
    let url = match &options.redis {
        Some(url) => url.clone(),
        None => {
            own_server = RedisServer::start(&dir)?;
            own_server.url()
        }
    };
    println!("redis: {url}");
    println!(
        "load: {} replica processes x {} requests/s over {} hot keys for {} s; a load takes {} ms; \
         fresh {} ms, stale {} ms{}",
        options.replicas,
        options.rate,
        options.keys,
        options.seconds,
        options.load_ms,
        options.fresh_ms,
        options.stale_ms,
        if options.invalidate {
            "; a writer updates and invalidates"
        } else {
            ""
        }
    );
    let mut figures = Vec::new();
    for (mode, label) in RUNS {
        eprintln!("  running: {label}");
        figures.push(one_run(options, &dir, &url, mode)?);
    }
    let half_load = Duration::from_millis(options.load_ms / 2);
    println!();
    println!(
        "| run | requests | loads | p50 | p99 | max | after first fill, over half a load \
         | the same, right after an invalidation | stale sets |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for ((_, label), f) in RUNS.iter().zip(&figures) {
        let mut latencies: Vec<Duration> = f.requests.iter().map(|r| r.latency).collect();
        let (p50, p99) = (
            Figures::percentile(&mut latencies, 0.5),
            Figures::percentile(&mut latencies, 0.99),
        );
        let max = latencies.last().copied().unwrap_or_default();
        println!(
            "| {label} | {} | {} | {:.1?} | {:.1?} | {:.1?} | {} | {} | {} |",
            f.requests.len(),
            f.loads,
            p50,
            p99,
            max,
            f.blocked_after_fill(half_load),
            f.waited_after_invalidation(half_load),
            if options.invalidate {
                f.stale_sets.to_string()
            } else {
                "-".to_owned()
            }
        );
    }
    println!();
    println!("p99 per second (ms):");
    println!();
    let per_second: Vec<Vec<Duration>> = figures
        .iter()
        .map(|f| f.p99_per_second(options.seconds))
        .collect();
    print!("| second |");
    for (_, label) in RUNS {
        print!(" {label} |");
    }
    println!();
    println!("|---:|---:|---:|---:|");
    for s in 0..options.seconds as usize {
        print!("| {s} |");
        for run in &per_second {
            print!(" {:.0} |", run[s].as_secs_f64() * 1000.0);
        }
        println!();
    }
    if let Some(path) = &options.svg {
        std::fs::write(path, svg(&per_second, options))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        println!();
        println!("wrote {}", path.display());
    }
    let stale = &figures[1];
    let windows = options.keys as u64
        * options
            .seconds
            .saturating_mul(1000)
            .div_ceil(options.fresh_ms);
    let blocked = stale.blocked_after_fill(half_load);
    let allowed = windows + options.replicas as u64 + stale.invalidations.len() as u64;
    let ok = stale.loads as u64 <= allowed && blocked == 0 && stale.stale_sets == 0;
    println!();
    println!(
        "check: cache_loads={} windows={windows} blocked_after_fill={blocked} stale_sets={} ok={ok}",
        stale.loads, stale.stale_sets
    );
    Ok(ok)
}

/// Runs one way: the database, the replicas, the writer; gathers the figures.
fn one_run(options: &Options, dir: &Path, url: &str, mode: &str) -> Result<Figures, String> {
    let run_dir = dir.join(mode);
    let db = run_dir.join("db");
    std::fs::create_dir_all(&db).map_err(|e| e.to_string())?;
    for key in 0..options.keys {
        std::fs::write(db.join(key.to_string()), "1").map_err(|e| e.to_string())?;
    }
    let namespace = format!("expiry-{mode}-{}", std::process::id());
    let mut replicas: Vec<Child> = (0..options.replicas)
        .map(|index| {
            Command::new(std::env::current_exe().expect("own path"))
                .args([
                    "--replica",
                    mode,
                    url,
                    &run_dir.display().to_string(),
                    &namespace,
                ])
                .args(
                    [
                        index,
                        options.keys,
                        options.seconds as usize,
                        options.rate as usize,
                    ]
                    .map(|n| n.to_string()),
                )
                .args([options.load_ms, options.fresh_ms, options.stale_ms].map(|n| n.to_string()))
                .stdout(Stdio::null())
                .spawn()
                .map_err(|e| format!("starting a replica: {e}"))
        })
        .collect::<Result<_, _>>()?;
    let ready = || (0..options.replicas).all(|i| run_dir.join(format!("ready-{i}")).exists());
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready() {
        if Instant::now() > deadline {
            return Err("the replicas did not start in 60 s".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let go_ms = now_ms();
    std::fs::write(run_dir.join("go"), go_ms.to_string()).map_err(|e| e.to_string())?;
    let invalidations = if options.invalidate {
        writer(options, &db, url, &namespace, mode, go_ms)?
    } else {
        Vec::new()
    };
    let deadline = Instant::now() + Duration::from_secs(options.seconds + 60);
    for child in &mut replicas {
        loop {
            match child.try_wait().map_err(|e| e.to_string())? {
                Some(status) if status.success() => break,
                Some(status) => return Err(format!("a replica failed: {status}")),
                None if Instant::now() > deadline => {
                    let _ = child.kill();
                    return Err("a replica did not finish".into());
                }
                None => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
    let mut requests = Vec::new();
    for index in 0..options.replicas {
        let text = std::fs::read_to_string(run_dir.join(format!("requests-{index}")))
            .map_err(|e| e.to_string())?;
        for line in text.lines() {
            let fields: Vec<u64> = line.split(' ').filter_map(|f| f.parse().ok()).collect();
            let [key, start_ms, latency_us] = fields[..] else {
                return Err(format!("a bad request line: {line}"));
            };
            requests.push(Request {
                key: key as usize,
                start_ms,
                latency: Duration::from_micros(latency_us),
            });
        }
    }
    let loads =
        std::fs::read_to_string(run_dir.join("loads.log")).map_or(0, |log| log.lines().count());
    let stale_sets = if options.invalidate {
        stale_sets(options, &db, url, &namespace, mode)?
    } else {
        0
    };
    Ok(Figures {
        loads,
        requests,
        stale_sets,
        invalidations,
        load_ms: options.load_ms,
    })
}

/// The writer: every so often, one key's database version goes up, then the key is
/// invalidated (`DEL` for cache-aside); it aims at moments when a load is likely in the
/// air (just after an expiry), and stops a load's time before the end.
fn writer(
    options: &Options,
    db: &Path,
    url: &str,
    namespace: &str,
    mode: &str,
    go_ms: u64,
) -> Result<Vec<(usize, u64)>, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = redis::Client::open(url).map_err(|e| e.to_string())?;
        let cache: Cache<u64> = Cache::new(client.clone(), namespace);
        let mut connection = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| e.to_string())?;
        let started = Instant::now();
        let end = Duration::from_millis(
            options.seconds * 1000 - options.load_ms.min(options.seconds * 1000),
        );
        let mut step = 0u64;
        let mut invalidations = Vec::new();
        while started.elapsed() < end {
            // Writes land 100 ms into each fresh window, while the key's reload runs.
            let wait = Duration::from_millis(options.fresh_ms / 2 + 100 + (step * 37) % 200);
            tokio::time::sleep(wait).await;
            let key = (step as usize) % options.keys;
            let file = db.join(key.to_string());
            let version: u64 = std::fs::read_to_string(&file)
                .map_err(|e| e.to_string())?
                .trim()
                .parse()
                .unwrap_or(0);
            std::fs::write(&file, (version + 1).to_string()).map_err(|e| e.to_string())?;
            if mode == "aside" {
                let _: () = redis::cmd("DEL")
                    .arg(aside_key(namespace, key))
                    .query_async(&mut connection)
                    .await
                    .map_err(|e| e.to_string())?;
            } else {
                cache
                    .invalidate(&key.to_string())
                    .await
                    .map_err(|e| e.to_string())?;
            }
            invalidations.push((key, now_ms() - go_ms));
            step += 1;
        }
        Ok(invalidations)
    })
}

/// Values in the cache older than the database, once the run is over and its loads are
/// done.
fn stale_sets(
    options: &Options,
    db: &Path,
    url: &str,
    namespace: &str,
    mode: &str,
) -> Result<usize, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = redis::Client::open(url).map_err(|e| e.to_string())?;
        let cache: Cache<u64> = Cache::builder(client.clone(), namespace)
            .early_refresh(false)
            .build();
        let mut connection = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| e.to_string())?;
        let mut stale = 0;
        for key in 0..options.keys {
            let current: u64 = std::fs::read_to_string(db.join(key.to_string()))
                .map_err(|e| e.to_string())?
                .trim()
                .parse()
                .unwrap_or(0);
            let cached = if mode == "aside" {
                let value: Option<u64> = redis::cmd("GET")
                    .arg(aside_key(namespace, key))
                    .query_async(&mut connection)
                    .await
                    .map_err(|e| e.to_string())?;
                value
            } else {
                // A load here would read the current version: only a cached value can be
                // older.
                Some(cache.get(&key.to_string(), async move { current }).await)
            };
            if cached.is_some_and(|cached| cached < current) {
                stale += 1;
            }
        }
        Ok(stale)
    })
}

fn aside_key(namespace: &str, key: usize) -> String {
    format!("aside:{namespace}:{key}")
}

/// A replica: `--replica MODE URL DIR NAMESPACE INDEX KEYS SECONDS RATE LOAD_MS FRESH_MS STALE_MS`.
fn replica(args: &[String]) -> ExitCode {
    let [mode, url, dir, namespace, numbers @ ..] = args else {
        eprintln!("cache_expiry: bad replica arguments {args:?}");
        return ExitCode::from(2);
    };
    let numbers: Vec<u64> = numbers
        .iter()
        .map(|n| n.parse().expect("a number"))
        .collect();
    let [index, keys, seconds, rate, load_ms, fresh_ms, stale_ms] = numbers[..] else {
        eprintln!("cache_expiry: bad replica numbers {numbers:?}");
        return ExitCode::from(2);
    };
    let dir = PathBuf::from(dir);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = redis::Client::open(url.as_str()).expect("a redis URL");
        let (fresh, stale) = (
            Duration::from_millis(fresh_ms),
            Duration::from_millis(stale_ms),
        );
        let fleet: Fleet<u64> = Fleet::new(client.clone(), namespace);
        let cache: Cache<u64> = match mode.as_str() {
            "early" => Cache::builder(client.clone(), namespace)
                .fresh_for(fresh)
                .early_refresh(true)
                .build(),
            _ => Cache::builder(client.clone(), namespace)
                .fresh_for(fresh)
                .stale_for(stale)
                .early_refresh(false)
                .build(),
        };
        let connection = client
            .get_multiplexed_async_connection()
            .await
            .expect("redis is up");
        std::fs::write(dir.join(format!("ready-{index}")), b"").unwrap();
        let go_ms: u64 = loop {
            if let Ok(text) = std::fs::read_to_string(dir.join("go"))
                && let Ok(go) = text.trim().parse()
            {
                break go;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        let every = Duration::from_micros(1_000_000 / rate);
        let mut ticker = tokio::time::interval(every);
        let mut tasks = Vec::new();
        let started = Instant::now();
        let mut n = 0usize;
        while started.elapsed() < Duration::from_secs(seconds) {
            ticker.tick().await;
            let key = (n + index as usize) % keys as usize;
            n += 1;
            let (fleet, cache, mut connection, dir, mode) = (
                fleet.clone(),
                cache.clone(),
                connection.clone(),
                dir.clone(),
                mode.clone(),
            );
            let namespace = namespace.clone();
            tasks.push(tokio::spawn(async move {
                let start_ms = now_ms() - go_ms;
                let asked = Instant::now();
                let load = load(dir.clone(), key, Duration::from_millis(load_ms));
                let value = match mode.as_str() {
                    "aside" => {
                        let cached: Option<u64> = redis::cmd("GET")
                            .arg(aside_key(&namespace, key))
                            .query_async(&mut connection)
                            .await
                            .unwrap_or(None);
                        match cached {
                            Some(value) => value,
                            None => {
                                let name = aside_key(&namespace, key);
                                fleet
                                    .work(&key.to_string(), async move {
                                        let value = load.await;
                                        let _: Result<(), _> = redis::cmd("SET")
                                            .arg(name)
                                            .arg(value)
                                            .arg("PX")
                                            .arg(fresh_ms)
                                            .query_async(&mut connection)
                                            .await;
                                        value
                                    })
                                    .await
                            }
                        }
                    }
                    _ => cache.get(&key.to_string(), load).await,
                };
                assert!(value >= 1);
                (key, start_ms, asked.elapsed())
            }));
        }
        let mut out = String::new();
        for task in tasks {
            let (key, start_ms, latency) = task.await.expect("a request does not panic");
            out.push_str(&format!("{key} {start_ms} {}\n", latency.as_micros()));
        }
        std::fs::write(dir.join(format!("requests-{index}")), out).unwrap();
    });
    ExitCode::SUCCESS
}

/// A load: reads the key's version from the database, logs itself, takes `took`.
async fn load(dir: PathBuf, key: usize, took: Duration) -> u64 {
    let version = std::fs::read_to_string(dir.join("db").join(key.to_string()))
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(1);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("loads.log"));
    let _ = log.and_then(|mut log| writeln!(log, "{} {key}", std::process::id()));
    tokio::time::sleep(took).await;
    version
}

/// An SVG of each run's p99 per second.
fn svg(per_second: &[Vec<Duration>], options: &Options) -> String {
    let (width, height, margin) = (720.0, 360.0, 50.0);
    let top = per_second
        .iter()
        .flatten()
        .map(|d| d.as_secs_f64() * 1000.0)
        .fold(options.load_ms as f64 * 1.2, f64::max);
    let x =
        |s: usize| margin + (width - 2.0 * margin) * s as f64 / (options.seconds.max(2) - 1) as f64;
    let y = |ms: f64| height - margin - (height - 2.0 * margin) * ms / top;
    let colors = ["#d62728", "#1f77b4", "#2ca02c"];
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{margin}\" y=\"20\" font-size=\"14\">p99 latency per second: {} replicas x {} req/s, {} keys, load {} ms, fresh {} ms</text>\n",
        options.replicas, options.rate, options.keys, options.load_ms, options.fresh_ms
    );
    out.push_str(&format!(
        "<line x1=\"{margin}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n<line x1=\"{margin}\" y1=\"{margin}\" x2=\"{margin}\" y2=\"{}\" stroke=\"black\"/>\n",
        height - margin,
        width - margin,
        height - margin,
        height - margin
    ));
    for tick in [0.0, top / 2.0, top] {
        out.push_str(&format!(
            "<text x=\"5\" y=\"{:.0}\">{tick:.0} ms</text>\n",
            y(tick) + 4.0
        ));
    }
    out.push_str(&format!(
        "<text x=\"{}\" y=\"{}\">seconds</text>\n",
        width / 2.0,
        height - 15.0
    ));
    for (i, (run, (_, label))) in per_second.iter().zip(RUNS).enumerate() {
        let points: Vec<String> = run
            .iter()
            .enumerate()
            .map(|(s, d)| format!("{:.1},{:.1}", x(s), y(d.as_secs_f64() * 1000.0)))
            .collect();
        out.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"/>\n<text x=\"{}\" y=\"{}\" fill=\"{}\">{label}</text>\n",
            colors[i],
            points.join(" "),
            width - 260.0,
            margin + 16.0 * i as f64,
            colors[i]
        ));
    }
    out.push_str("</svg>\n");
    out
}

/// Removes the run's temporary folder at the end.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}
