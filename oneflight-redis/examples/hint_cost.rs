//! What the hints that wake waiting processes cost Redis per flight, as the fleet grows:
//! a lab measurement for `docs/hints.md`.
//!
//! ```sh
//! cargo run --release -p oneflight-redis --example hint_cost
//! cargo run --release -p oneflight-redis --example hint_cost -- --cluster
//! ```
//!
//! For each fleet size (4, 16, 64 idle processes), it runs `--flights` flights, each on
//! a new key (the costliest case for per-key channels: every flight subscribes and
//! unsubscribes) or, with `--hot`, all on one key, with one holder and one waiting process, while the idle processes
//! stand by as plain subscriber connections that count what they receive. With
//! `--stand-ins namespace` the idle ones subscribe to the namespace channel every
//! process listened on before per-key channels (`oneflight:<len>:<ns>:done`); with
//! `--stand-ins none` (the default) to nothing, as an idle process does now. It prints,
//! per flight: deliveries to idle processes, Redis commands (those inside scripts
//! included), Redis CPU (user + system, summed over the nodes) and bytes Redis sent, each
//! less what the nodes do idle over as long (measured right after).

#[path = "shared/redis_cluster.rs"]
mod redis_cluster;
#[path = "shared/redis_server.rs"]
mod redis_server;

use futures_util::StreamExt;
use oneflight_redis::{Backend, Fleet, redis};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const NAMESPACE: &str = "hints";

struct Options {
    flights: u64,
    cluster: bool,
    namespace_stand_ins: bool,
    /// Every flight on the same key (a hot key), instead of each on a new one.
    hot: bool,
}

fn parse() -> Result<Options, String> {
    let mut options = Options {
        flights: 500,
        cluster: false,
        namespace_stand_ins: false,
        hot: false,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--flights" => {
                let value = args.next().ok_or("--flights needs a number")?;
                options.flights = value
                    .parse()
                    .map_err(|_| format!("bad --flights {value}"))?;
            }
            "--cluster" => options.cluster = true,
            "--hot" => options.hot = true,
            "--stand-ins" => match args.next().map(String::as_str) {
                Some("namespace") => options.namespace_stand_ins = true,
                Some("none") => options.namespace_stand_ins = false,
                _ => return Err("--stand-ins takes namespace or none".into()),
            },
            _ => {
                return Err(format!(
                    "unknown argument {flag}; usage: hint_cost [--flights N] [--cluster] [--hot] \
                     [--stand-ins namespace|none]"
                ));
            }
        }
    }
    Ok(options)
}

/// Totals over the nodes: (commands processed, CPU seconds, bytes sent).
fn totals(ports: &[u16]) -> (u64, f64, u64) {
    let mut sum = (0, 0.0, 0);
    for port in ports {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
        let mut c = client.get_connection().unwrap();
        let info: String = redis::cmd("INFO").arg("all").query(&mut c).unwrap();
        let field = |name: &str| -> f64 {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0.0)
        };
        // Without the INFO commands of this measurement itself.
        sum.0 += field("total_commands_processed:") as u64;
        sum.1 += field("used_cpu_user:") + field("used_cpu_sys:");
        sum.2 += field("total_net_output_bytes:") as u64;
    }
    sum
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let options = parse()?;
    let dir = std::env::temp_dir().join(format!("oneflight-hint-cost-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let mut _single = None;
    let mut _cluster = None;
    let (backend, ports, urls): (Backend, Vec<u16>, Vec<String>) = if options.cluster {
        let cluster = redis_cluster::RedisCluster::start(&dir)?;
        let urls = cluster.urls();
        // Every node: replicas apply what their masters do.
        let ports = urls
            .iter()
            .map(|url| {
                url.trim_end_matches('/')
                    .rsplit(':')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect();
        let backend = cluster.client().into();
        _cluster = Some(cluster);
        (backend, ports, urls)
    } else {
        let server = redis_server::RedisServer::start(&dir)?;
        let url = server.url();
        let backend = redis::Client::open(url.as_str()).unwrap().into();
        let port = server.port();
        _single = Some(server);
        (backend, vec![port], vec![url])
    };
    println!(
        "{} flights per size, {}, one holder and one waiting process; \
         idle processes subscribed to {}; on {}",
        options.flights,
        if options.hot {
            "all on one hot key"
        } else {
            "each on a new key"
        },
        if options.namespace_stand_ins {
            "the namespace channel"
        } else {
            "nothing"
        },
        if options.cluster {
            "a 3-master cluster"
        } else {
            "one node"
        },
    );
    println!(
        "| idle processes | deliveries to idle / flight | commands / flight | Redis CPU µs / flight | bytes sent / flight |"
    );
    println!("|---:|---:|---:|---:|---:|");
    for idle in [4usize, 16, 64] {
        let heard = Arc::new(AtomicU64::new(0));
        let mut stand_ins = Vec::new();
        for i in 0..idle {
            let url = &urls[i % urls.len()];
            let client = redis::Client::open(url.as_str()).unwrap();
            let mut pubsub = client.get_async_pubsub().await.map_err(|e| e.to_string())?;
            if options.namespace_stand_ins {
                let channel = format!("oneflight:{}:{NAMESPACE}:done", NAMESPACE.len());
                pubsub.subscribe(channel).await.map_err(|e| e.to_string())?;
            }
            let heard = heard.clone();
            stand_ins.push(tokio::spawn(async move {
                let mut messages = pubsub.into_on_message();
                while messages.next().await.is_some() {
                    heard.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        let build = || {
            Fleet::<u64>::builder(backend.clone(), NAMESPACE)
                .poll_interval(Duration::from_secs(2))
                .build()
        };
        let (holder, waiter) = (build(), build());
        // Warm up: connections made, scripts loaded, the waiter's subscriber up.
        for n in 0..20 {
            flight(&holder, &waiter, &format!("warm-{idle}-{n}")).await;
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        // What the nodes spend idle (cluster bus, pings, the subscribers' ticks) over as
        // long as the flights take, to be subtracted.
        heard.store(0, Ordering::Relaxed);
        let flights_took = Instant::now();
        let before = totals(&ports);
        for n in 0..options.flights {
            let key = if options.hot {
                format!("hot-{idle}")
            } else {
                format!("k-{idle}-{n}")
            };
            flight(&holder, &waiter, &key).await;
        }
        // Per-key channels are unsubscribed a tick after their last waiter: count it.
        tokio::time::sleep(Duration::from_millis(2200)).await;
        let after = totals(&ports);
        let took = flights_took.elapsed();
        let deliveries = heard.swap(0, Ordering::Relaxed);
        let idle_before = totals(&ports);
        tokio::time::sleep(took).await;
        let idle_after = totals(&ports);
        let flights = options.flights as f64;
        let minus_idle = |after: f64, before: f64, idle_after: f64, idle_before: f64| {
            ((after - before) - (idle_after - idle_before)).max(0.0) / flights
        };
        println!(
            "| {idle} | {:.1} | {:.1} | {:.0} | {:.0} |",
            deliveries as f64 / flights,
            minus_idle(
                after.0 as f64,
                before.0 as f64,
                idle_after.0 as f64,
                idle_before.0 as f64
            ),
            minus_idle(after.1, before.1, idle_after.1, idle_before.1) * 1e6,
            minus_idle(
                after.2 as f64,
                before.2 as f64,
                idle_after.2 as f64,
                idle_before.2 as f64
            ),
        );
        let (h, w) = (holder.stats(), waiter.stats());
        if h.loads < options.flights || w.received < options.flights {
            eprintln!("hint_cost: not every flight was shared: {h:?} {w:?}");
        }
        for stand_in in stand_ins {
            stand_in.abort();
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// One flight of `key`: the holder loads (10 ms), the waiter joins once the load runs.
async fn flight(holder: &Fleet<u64>, waiter: &Fleet<u64>, key: &str) {
    let (started, running) = tokio::sync::oneshot::channel();
    let hold = holder.work(key, async move {
        let _ = started.send(());
        tokio::time::sleep(Duration::from_millis(10)).await;
        7
    });
    let wait = async {
        let _ = running.await;
        waiter.work(key, async { 0 }).await
    };
    let (held, waited) = tokio::join!(hold, wait);
    assert_eq!((held, waited), (7, 7));
}
