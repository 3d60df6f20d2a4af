//! A cache stampede on a real SQLite database, with and without oneflight.
//!
//! A read-through cache sits in front of a table of 200,000 rows that is queried on an
//! unindexed column, so that each lookup really scans. Thousands of requests for a few
//! hot keys arrive at once on a cold cache, twice: once with every miss going straight
//! to the database, once with the misses going through a `oneflight::Group`. The table at
//! the end shows requests, database queries, total time and latencies for both.
//!
//! ```sh
//! cargo run --release --example stampede
//! cargo run --release --example stampede -- --requests 5000 --keys 8
//! cargo run --release --example stampede -- --runtime tokio
//! cargo run --release --example stampede -- --runtime async-std
//! ```
//!
//! The database lives in a fresh temporary folder and is removed at the end. SQLite comes
//! with `rusqlite`'s `bundled` feature, so nothing needs installing.

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use oneflight::Group;
use rusqlite::Connection;
use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[path = "shared/sqlite.rs"]
mod sqlite;
use sqlite::{Summary, fill, query};

/// A lookup's result, as the group shares it: errors behind an `Arc`.
type Lookup = Result<Summary, Arc<rusqlite::Error>>;

struct Options {
    requests: usize,
    keys: usize,
    rows: usize,
    connections: usize,
    runtime: Runtime,
}

fn main() -> ExitCode {
    let options = match parse_args() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("stampede: {message}");
            eprintln!(
                "usage: stampede [--requests N] [--keys N] [--rows N] [--connections N] \
                 [--runtime smol|async-std|tokio]"
            );
            return ExitCode::from(2);
        }
    };
    let dir = std::env::temp_dir().join(format!("oneflight-stampede-{}", std::process::id()));
    let result = run(&options, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("stampede: {error}");
            ExitCode::from(2)
        }
    }
}

fn parse_args() -> Result<Options, String> {
    let mut options = Options {
        requests: 2_000,
        keys: 4,
        rows: 200_000,
        connections: 8,
        runtime: Runtime::Smol,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        let number = || {
            value
                .parse::<usize>()
                .map_err(|_| format!("{flag} takes a number, not {value:?}"))
        };
        match flag.as_str() {
            "--requests" => options.requests = number()?,
            "--keys" => options.keys = number()?,
            "--rows" => options.rows = number()?,
            "--connections" => options.connections = number()?,
            "--runtime" => options.runtime = Runtime::parse(&value)?,
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    if options.requests == 0 || options.keys == 0 || options.rows == 0 || options.connections == 0 {
        return Err("every number must be at least 1".into());
    }
    Ok(options)
}

/// One run's figures.
struct Report {
    queries: usize,
    total: Duration,
    latencies: Vec<Duration>,
}

impl Report {
    fn percentile(&self, p: f64) -> Duration {
        let index = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[index]
    }
}

fn run(options: &Options, dir: &Path) -> Result<bool, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let path = dir.join("shop.db");
    let started = Instant::now();
    fill(&path, options.rows).map_err(|e| format!("filling the database: {e}"))?;
    println!(
        "database: {} rows in {} ({:.1?} to create); a lookup scans an unindexed column",
        options.rows,
        path.display(),
        started.elapsed()
    );
    println!(
        "load: {} concurrent requests over {} hot keys on a cold cache, {} database connections, runtime {}",
        options.requests,
        options.keys,
        options.connections,
        options.runtime.name()
    );
    let direct = options
        .runtime
        .run(|rt| stampede(rt, options, &path, false))??;
    let deduped = options
        .runtime
        .run(|rt| stampede(rt, options, &path, true))??;

    println!();
    println!("| run                 | requests | db queries |  total  |   p50   |   p99   |");
    println!("|---------------------|---------:|-----------:|--------:|--------:|--------:|");
    for (name, report) in [
        ("straight to the db", &direct),
        ("through oneflight", &deduped),
    ] {
        println!(
            "| {name:<19} | {:>8} | {:>10} | {:>7} | {:>7} | {:>7} |",
            options.requests,
            report.queries,
            format!("{:.2?}", report.total),
            format!("{:.1?}", report.percentile(0.50)),
            format!("{:.1?}", report.percentile(0.99)),
        );
    }
    println!();
    let ok = deduped.queries <= options.keys;
    println!(
        "verdict: oneflight served {} requests with {} database queries instead of {} \
         ({:.0}x fewer), in {:.1}x less time; p99 latency {:.1?} instead of {:.1?}.",
        options.requests,
        deduped.queries,
        direct.queries,
        direct.queries as f64 / deduped.queries.max(1) as f64,
        direct.total.as_secs_f64() / deduped.total.as_secs_f64(),
        deduped.percentile(0.99),
        direct.percentile(0.99),
    );
    println!(
        "check: deduplicated_queries={} keys={} ok={ok}",
        deduped.queries, options.keys
    );
    Ok(ok)
}

/// A fixed pool of connections, as a service has: a request waits for a free one.
struct Pool {
    free: async_channel::Receiver<Connection>,
    give_back: async_channel::Sender<Connection>,
    queries: AtomicUsize,
}

impl Pool {
    fn open(path: &Path, size: usize) -> rusqlite::Result<Self> {
        let (give_back, free) = async_channel::bounded(size);
        for _ in 0..size {
            give_back
                .try_send(Connection::open(path)?)
                .expect("room for every connection");
        }
        Ok(Pool {
            free,
            give_back,
            queries: AtomicUsize::new(0),
        })
    }

    /// Runs the lookup for `key` on a free connection, on the runtime's blocking pool.
    async fn lookup(&self, rt: &Rt, category: usize) -> Lookup {
        let db = self.free.recv().await.expect("the pool owns its sender");
        self.queries.fetch_add(1, Ordering::Relaxed);
        let (db, result) = (rt.unblock)(Box::new(move || {
            let result = query(&db, category);
            (db, result)
        }))
        .await;
        let _ = self.give_back.try_send(db);
        result.map_err(Arc::new)
    }
}

/// A read-through cache: a hit answers at once; a miss looks the key up and keeps it.
struct Cache {
    entries: Mutex<HashMap<String, Summary>>,
}

impl Cache {
    fn get(&self, key: &str) -> Option<Summary> {
        self.entries.lock().unwrap().get(key).cloned()
    }

    fn put(&self, key: &str, value: &Lookup) {
        if let Ok(summary) = value {
            self.entries
                .lock()
                .unwrap()
                .insert(key.to_owned(), summary.clone());
        }
    }
}

/// Fires every request at once on a cold cache, and measures.
async fn stampede(
    rt: Arc<Rt>,
    options: &Options,
    path: &Path,
    deduplicate: bool,
) -> Result<Report, String> {
    let pool = Arc::new(Pool::open(path, options.connections).map_err(|e| e.to_string())?);
    let cache = Arc::new(Cache {
        entries: Mutex::default(),
    });
    let group: Group<String, Lookup> = Group::new();
    let done = Arc::new(AtomicUsize::new(0));
    // Every request waits at the gate, so that they all arrive together, as in a burst.
    let (open_gate, gate) = async_channel::bounded::<()>(1);
    let label = if deduplicate {
        "through oneflight"
    } else {
        "straight to the db"
    };
    let progress = spawn_progress(label, options.requests, done.clone());
    let started = Instant::now();
    let requests: Vec<_> = (0..options.requests)
        .map(|i| {
            let (rt2, pool, cache, group, done, gate) = (
                rt.clone(),
                pool.clone(),
                cache.clone(),
                group.clone(),
                done.clone(),
                gate.clone(),
            );
            let category = i % options.keys;
            let key = format!("category:{category}");
            (rt.spawn)(Box::pin(async move {
                let _ = gate.recv().await;
                let asked = Instant::now();
                let value = match cache.get(&key) {
                    Some(hit) => Ok(hit),
                    None => {
                        // The miss fills the cache inside the flight, and checks it again
                        // first: a caller that missed the cache just as a flight ended
                        // finds the value instead of querying again. Filled after `work`
                        // returned, a second query could start in between.
                        let miss = async {
                            if let Some(hit) = cache.get(&key) {
                                return Ok(hit);
                            }
                            let value = pool.lookup(&rt2, category).await;
                            cache.put(&key, &value);
                            value
                        };
                        if deduplicate {
                            group.work(&key, miss).await
                        } else {
                            miss.await
                        }
                    }
                };
                let latency = asked.elapsed();
                value.expect("the lookup succeeds");
                done.fetch_add(1, Ordering::Relaxed);
                latency
            }))
        })
        .collect();
    open_gate.close();
    let mut latencies = Vec::with_capacity(requests.len());
    for request in requests {
        latencies.push(request.await);
    }
    let total = started.elapsed();
    progress.finish();
    latencies.sort();
    Ok(Report {
        queries: pool.queries.load(Ordering::Relaxed),
        total,
        latencies,
    })
}

/// A progress line on standard error, redrawn until `finish`.
struct Progress {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

fn spawn_progress(label: &'static str, total: usize, done: Arc<AtomicUsize>) -> Progress {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let thread = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            // Redrawn in place on a terminal; a line a second in a log.
            let terminal = std::io::stderr().is_terminal();
            let draw = || {
                let done = done.load(Ordering::Relaxed);
                if terminal {
                    eprint!("\r  {label}: {done}/{total} requests answered ");
                    let _ = std::io::stderr().flush();
                } else {
                    eprintln!("  {label}: {done}/{total} requests answered");
                }
            };
            let period = Duration::from_millis(if terminal { 100 } else { 1_000 });
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                if Instant::now() >= next {
                    draw();
                    next += period;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            draw();
            if terminal {
                eprintln!();
            }
        })
    };
    Progress { stop, thread }
}

impl Progress {
    fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

// -----------------------------------------------------------------------------------------
// The runtimes

#[derive(Clone, Copy)]
enum Runtime {
    Smol,
    AsyncStd,
    Tokio,
}

/// A database lookup, to run on a blocking pool: it gives its connection back.
type Job = Box<dyn FnOnce() -> Done + Send>;

/// A lookup's connection and result.
type Done = (Connection, rusqlite::Result<Summary>);

/// A runtime's spawn (returning a future of the task's latency) and blocking pool.
struct Rt {
    spawn: Box<dyn Fn(BoxFuture<'static, Duration>) -> BoxFuture<'static, Duration> + Send + Sync>,
    unblock: Box<dyn Fn(Job) -> BoxFuture<'static, Done> + Send + Sync>,
}

impl Runtime {
    fn parse(name: &str) -> Result<Self, String> {
        match name {
            "smol" => Ok(Runtime::Smol),
            "async-std" => Ok(Runtime::AsyncStd),
            "tokio" => Ok(Runtime::Tokio),
            _ => Err(format!(
                "unknown runtime {name:?}: smol, async-std or tokio"
            )),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Runtime::Smol => "smol",
            Runtime::AsyncStd => "async-std",
            Runtime::Tokio => "tokio",
        }
    }

    /// Runs `main` on this runtime, giving it the runtime's spawn and blocking pool.
    fn run<T, F>(self, main: impl FnOnce(Arc<Rt>) -> F) -> Result<T, String>
    where
        F: std::future::Future<Output = T>,
    {
        match self {
            Runtime::Smol => {
                let rt = Rt {
                    spawn: Box::new(|task| smol::spawn(task).boxed()),
                    unblock: Box::new(|job| smol::unblock(job).boxed()),
                };
                Ok(smol::block_on(main(Arc::new(rt))))
            }
            Runtime::AsyncStd => {
                let rt = Rt {
                    spawn: Box::new(|task| async_std::task::spawn(task).boxed()),
                    unblock: Box::new(|job| async_std::task::spawn_blocking(job).boxed()),
                };
                Ok(async_std::task::block_on(main(Arc::new(rt))))
            }
            Runtime::Tokio => {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .build()
                    .map_err(|e| e.to_string())?;
                let rt = Rt {
                    spawn: Box::new(|task| {
                        tokio::spawn(task)
                            .map(|joined| joined.expect("requests do not panic"))
                            .boxed()
                    }),
                    unblock: Box::new(|job| {
                        tokio::task::spawn_blocking(job)
                            .map(|joined| joined.expect("lookups do not panic"))
                            .boxed()
                    }),
                };
                Ok(runtime.block_on(main(Arc::new(rt))))
            }
        }
    }
}
