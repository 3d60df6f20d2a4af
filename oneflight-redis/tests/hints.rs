//! Pub/sub hints come back by themselves: after the subscriber's task died with the
//! runtime that spawned it, and after its connection went silent (half-open). In both,
//! the waiter's poll interval is far longer than the test's bound, so only a hint can
//! serve it in time.

mod common;

use common::*;
use oneflight_redis::{Fleet, redis};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Holder and waiter fleets whose waiter polls every 10 s.
fn pair(holder: redis::Client, waiter: redis::Client) -> (Fleet<String>, Fleet<String>) {
    let build = |client| {
        Fleet::builder(client, "hints")
            .lease(Duration::from_secs(30))
            .poll_interval(Duration::from_secs(10))
            .command_timeout(Duration::from_millis(300))
            .build()
    };
    (build(holder), build(waiter))
}

/// One flight: the holder loads for 300 ms, the waiter joins; returns how long after the
/// holder's value the waiter had it.
async fn waiter_lag(holder: &Fleet<String>, waiter: &Fleet<String>, key: &str) -> Duration {
    let holder_done = async {
        let value = holder
            .work(key, async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                "v".to_owned()
            })
            .await;
        (value, Instant::now())
    };
    let waiter_done = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let value = waiter.work(key, async { "not loaded".to_owned() }).await;
        (value, Instant::now())
    };
    let ((a, held_at), (b, waited_at)) = tokio::time::timeout(Duration::from_secs(20), async {
        tokio::join!(holder_done, waiter_done)
    })
    .await
    .expect("the waiter polls within 10 s at worst");
    assert_eq!((a.as_str(), b.as_str()), ("v", "v"));
    waited_at.saturating_duration_since(held_at)
}

#[test]
fn hints_come_back_after_the_subscribers_runtime_was_dropped() {
    let Some(server) = server() else { return };
    let (holder, waiter) = pair(server.client(), server.client());
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    };
    // The waiter's subscriber starts on this runtime, and dies with it.
    let first = runtime();
    let lag = first.block_on(waiter_lag(&holder, &waiter, "k1"));
    assert!(lag < Duration::from_secs(1), "first flight: {lag:?}");
    drop(first);
    // The same fleets on a new runtime: a new subscriber, so the waiter hears the end.
    let second = runtime();
    let lag = second.block_on(async {
        // The first command of each fleet meets its connection dead with the old runtime
        // (and degrades); the waiter's first flight also starts the new subscriber.
        holder.work("warm", async { String::new() }).await;
        waiter.work("warm", async { String::new() }).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        waiter_lag(&holder, &waiter, "k2").await
    });
    println!("waiter served {lag:?} after the holder, on a second runtime");
    assert!(lag < Duration::from_secs(1), "the waiter polled: {lag:?}");
    assert_eq!(waiter.stats().received, 2);
}

/// A loopback TCP proxy to Redis that can black-hole the connections it carries: they
/// stay open and silent, as half-open connections do. Connections made later pass.
struct Proxy {
    port: u16,
    /// Set to silence every connection open now.
    generation: Arc<std::sync::atomic::AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    async fn start(target: u16) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let generation = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (gen_, stop_) = (generation.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop_.load(Ordering::Relaxed) {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let born = gen_.load(Ordering::Relaxed);
                let generation = gen_.clone();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                    else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let live = move || generation.load(Ordering::Relaxed) == born;
                    let live2 = live.clone();
                    let up = async move { pipe(&mut cr, &mut sw, live).await };
                    let down = async move { pipe(&mut sr, &mut cw, live2).await };
                    tokio::join!(up, down);
                });
            }
        });
        Proxy {
            port,
            generation,
            stop,
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Every connection open now goes silent, and stays open.
    fn black_hole(&self) {
        self.generation.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Copies `from` to `to` while `live()`; then holds both open, reading and dropping.
async fn pipe(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    live: impl Fn() -> bool,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0; 64 * 1024];
    // Bounded: the test ends well within a minute.
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let read = tokio::time::timeout(Duration::from_millis(50), from.read(&mut buffer)).await;
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) if live() && to.write_all(&buffer[..n]).await.is_err() => return,
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hints_come_back_after_the_subscriber_connection_went_silent() {
    let Some(server) = server() else { return };
    let proxy = Proxy::start(server.port).await;
    let waiter_client = redis::Client::open(proxy.url()).unwrap();
    let (holder, waiter) = pair(server.client(), waiter_client);
    let lag = waiter_lag(&holder, &waiter, "k1").await;
    assert!(lag < Duration::from_secs(1), "first flight: {lag:?}");
    // The waiter's connections (commands and subscriber) go silent without closing.
    proxy.black_hole();
    // Its next command times out and reconnects; its subscriber must notice by itself
    // (a ping unanswered within the command timeout) and resubscribe.
    waiter.work("probe", async { String::new() }).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let lag = waiter_lag(&holder, &waiter, "k2").await;
    println!("waiter served {lag:?} after the holder, after its subscriber went silent");
    assert!(lag < Duration::from_secs(1), "the waiter polled: {lag:?}");
}
