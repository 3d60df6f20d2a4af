//! Fleet behaviour within one process, against a real `redis-server` started by the test:
//! several `Fleet` values stand for several processes where one process is enough.

mod common;

use common::*;
use oneflight_redis::{Codec, Fleet, FleetErrorKind, WorkError, redis};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

fn fleet(client: redis::Client) -> Fleet<String> {
    Fleet::builder(client, "t")
        .lease(Duration::from_millis(1000))
        .poll_interval(Duration::from_millis(50))
        .build()
}

#[tokio::test]
async fn a_later_call_starts_a_new_flight_nothing_is_cached() {
    let Some(server) = server() else { return };
    let fleet = fleet(server.client());
    let loads = AtomicUsize::new(0);
    for round in 0..3 {
        let value = fleet
            .work("k", async {
                loads.fetch_add(1, Ordering::SeqCst);
                format!("v{round}")
            })
            .await;
        assert_eq!(value, format!("v{round}"));
    }
    assert_eq!(loads.load(Ordering::SeqCst), 3);
    assert_eq!(fleet.stats().loads, 3);
    server.assert_no_flight_left(Duration::from_millis(1000 + 50));
}

#[tokio::test]
async fn two_fleets_on_one_redis_share_one_load() {
    let Some(server) = server() else { return };
    let (a, b) = (fleet(server.client()), fleet(server.client()));
    let loads = Arc::new(AtomicUsize::new(0));
    let load = |name: &'static str| {
        let loads = loads.clone();
        async move {
            loads.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(200)).await;
            name.to_owned()
        }
    };
    let (x, y) = tokio::join!(a.work("k", load("a")), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        b.work("k", load("b")).await
    });
    assert_eq!((x.as_str(), y.as_str()), ("a", "a"));
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    assert_eq!((a.stats().loads, b.stats().received), (1, 1));
}

/// A fake holder's lease, then `payload` at its value key and its end announced: the
/// waiting fleet must treat the payload as a miss and load by itself.
async fn payload_at_the_value_key_is_a_miss(payload: Vec<u8>) {
    let Some(server) = server() else { return };
    let fleet = fleet(server.client());
    let mut raw = server
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let token = "1-fake";
    let _: () = redis::cmd("SET")
        .arg("oneflight:{1:t1:k}:lease")
        .arg(token)
        .arg("PX")
        .arg(5000)
        .query_async(&mut raw)
        .await
        .unwrap();
    let waiter = tokio::spawn({
        let fleet = fleet.clone();
        async move { fleet.work("k", async { "loaded here".to_owned() }).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !waiter.is_finished(),
        "the fleet must wait on the fake holder"
    );
    let _: () = redis::cmd("SET")
        .arg(format!("oneflight:{{1:t1:k}}:value:{token}"))
        .arg(payload)
        .query_async(&mut raw)
        .await
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg("oneflight:{1:t1:k}:lease")
        .query_async(&mut raw)
        .await
        .unwrap();
    let value = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(value, "loaded here");
    let stats = fleet.stats();
    assert_eq!(
        (stats.undecodable, stats.loads, stats.received),
        (1, 1, 0),
        "{stats:?}"
    );
}

#[tokio::test]
async fn garbage_at_the_value_key_is_a_miss() {
    payload_at_the_value_key_is_a_miss(b"garbage".to_vec()).await;
}

#[tokio::test]
async fn an_old_envelope_version_is_a_miss() {
    // Version 1 of the envelope, otherwise well formed: header, then postcard (token, value).
    let mut payload = vec![b'o', b'f', 1, b'p', 6];
    payload.extend_from_slice(b"1-fake");
    payload.extend_from_slice(&[2, b'o', b'k']);
    payload_at_the_value_key_is_a_miss(payload).await;
}

#[tokio::test]
async fn fencing_numbers_grow_with_each_fenced_flight_and_only_those_take_one() {
    let Some(server) = server() else { return };
    let fleet: Fleet<u64> = Fleet::new(server.client(), "t");
    let mut connection = server
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut fence_key_exists = async |key: &str| -> bool {
        redis::cmd("EXISTS")
            .arg(format!("oneflight:{{1:t{}:{key}}}:fence", key.len()))
            .query_async(&mut connection)
            .await
            .unwrap()
    };
    let mut last = 0;
    for _ in 0..5 {
        let fence = fleet
            .work_fenced(
                "k",
                |fence| async move { fence.expect("a fence from Redis") },
            )
            .await;
        assert!(fence > last, "{fence} after {last}");
        last = fence;
        // An unfenced flight between two fenced ones takes no number.
        assert_eq!(fleet.work("k", async { 0 }).await, 0);
    }
    assert!(fence_key_exists("k").await);
    assert_eq!(fleet.work("plain", async { 1 }).await, 1);
    assert!(
        !fence_key_exists("plain").await,
        "a `work` flight wrote a fence"
    );
}

fn unreachable_redis() -> redis::Client {
    // A port nothing listens on: connection refused at once.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap()
}

#[tokio::test]
async fn without_redis_work_degrades_to_in_process_deduplication() {
    let fleet: Fleet<String> = Fleet::builder(unreachable_redis(), "t")
        .command_timeout(Duration::from_millis(200))
        .build();
    let loads = AtomicUsize::new(0);
    let load = || async {
        loads.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
        "v".to_owned()
    };
    let burst = futures_util::future::join_all((0..50).map(|_| fleet.work("k", load())));
    let values = tokio::time::timeout(Duration::from_secs(10), burst)
        .await
        .expect("degraded in time");
    assert!(values.iter().all(|v| v == "v"));
    assert_eq!(
        loads.load(Ordering::SeqCst),
        1,
        "in-process deduplication still holds"
    );
    let stats = fleet.stats();
    assert_eq!((stats.loads, stats.fallbacks), (1, 1), "{stats:?}");
    // The acquire, and maybe the subscriber's first attempt.
    assert!((1..=2).contains(&stats.disconnects), "{stats:?}");
    assert!(format!("{fleet:?}").starts_with("Fleet"));
}

/// A user's own error type, with no `From<FleetError>` (nor `Debug` or `Display`).
struct AppError(&'static str);

#[tokio::test]
async fn try_work_takes_any_error_type_and_try_work_or_fail_reports_redis_trouble() {
    let fleet: Fleet<String> = Fleet::builder(unreachable_redis(), "t").build();
    let error = fleet
        .try_work("k", async { Err::<String, _>(AppError("mine")) })
        .await
        .err()
        .unwrap();
    assert_eq!(error.0, "mine");
    // Redis is down: `try_work` degrades and loads ...
    let value = fleet
        .try_work("k", async { Ok::<_, AppError>("v".to_owned()) })
        .await;
    assert_eq!(value.ok().unwrap(), "v");
    // ... `try_work_or_fail` does not load, and says what failed, where.
    let loads = fleet.stats().loads;
    let failed = fleet
        .try_work_or_fail("k", async { Ok::<_, AppError>("v".to_owned()) })
        .await;
    let Err(WorkError::Redis(error)) = failed else {
        panic!("expected a redis error")
    };
    assert!(
        matches!(
            error.kind(),
            FleetErrorKind::Disconnected | FleetErrorKind::Timeout
        ),
        "{error}"
    );
    assert!(error.address().starts_with("127.0.0.1:"), "{error}");
    assert!(
        error.to_string().starts_with("redis at 127.0.0.1:"),
        "{error}"
    );
    assert!(std::error::Error::source(&error).is_some() || error.kind() == FleetErrorKind::Timeout);
    assert_eq!(fleet.stats().loads, loads, "the load did not run");
    // The load's own error is told apart from Redis trouble.
    let server = server();
    if let Some(server) = server {
        let fleet: Fleet<String> = Fleet::new(server.client(), "t");
        let failed = fleet
            .try_work_or_fail("k", async { Err::<String, _>(AppError("load")) })
            .await;
        assert!(matches!(failed, Err(WorkError::Load(e)) if e.0 == "load"));
    }
    // `work` cannot fail: it degrades.
    assert_eq!(fleet.work("k", async { "w".to_owned() }).await, "w");
}

#[tokio::test]
async fn a_value_sealed_for_another_type_is_a_miss_not_a_wrong_value() {
    let Some(server) = server() else { return };
    let narrow: Fleet<u32> = Fleet::builder(server.client(), "types")
        .poll_interval(Duration::from_millis(50))
        .build();
    let wide: Fleet<u64> = Fleet::builder(server.client(), "types")
        .poll_interval(Duration::from_millis(50))
        .build();
    let (x, y) = tokio::join!(
        narrow.work("k", async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            7
        }),
        async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            wide.work("k", async { 8 }).await
        }
    );
    // The u64 fleet waited on the u32 flight, found a value of another type, and loaded.
    assert_eq!((x, y), (7, 8));
    assert_eq!(
        (wide.stats().undecodable, wide.stats().received),
        (1, 0),
        "{:?}",
        wide.stats()
    );
}

#[tokio::test]
async fn an_error_redis_answers_degrades_that_call_only_and_never_rests_the_process() {
    let Some(server) = server() else { return };
    let (fleet, other) = (fleet(server.client()), fleet(server.client()));
    // Another program wrote a hash where the fleet keeps key "bad"'s lease.
    let _: () = redis::cmd("HSET")
        .arg("oneflight:{1:t3:bad}:lease")
        .arg("f")
        .arg("v")
        .query(&mut server.connection())
        .unwrap();
    common::scenarios::an_answered_error_degrades_that_call_only(&fleet, &other).await;
}

#[tokio::test]
async fn one_unanswered_command_fails_its_own_call_only() {
    let Some(server) = server() else { return };
    let build = || {
        Fleet::<String>::builder(server.client(), "t")
            .command_timeout(Duration::from_millis(100))
            .retry_redis_after(Duration::from_secs(60))
            .poll_interval(Duration::from_millis(50))
            .build()
    };
    let (a, b) = (build(), build());
    // Connect both first, so that the pause meets a live connection.
    a.work("warm-a", async { String::new() }).await;
    b.work("warm-b", async { String::new() }).await;
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(400)
        .arg("ALL")
        .query(&mut server.connection())
        .unwrap();
    assert_eq!(a.work("k1", async { "alone".to_owned() }).await, "alone");
    assert_eq!(
        (a.stats().fallbacks, a.stats().timeouts),
        (1, 1),
        "{:?}",
        a.stats()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    // One timeout did not make `a` rest (for a minute): it waits on b's flight.
    let (x, y) = tokio::join!(
        b.work("k2", async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            "from b".to_owned()
        }),
        async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            a.work("k2", async { "from a".to_owned() }).await
        }
    );
    assert_eq!((x.as_str(), y.as_str()), ("from b", "from b"));
    assert_eq!(
        (a.stats().received, a.stats().fallbacks),
        (1, 1),
        "{:?}",
        a.stats()
    );
}

#[tokio::test]
async fn a_work_caller_that_joins_a_failing_try_work_flight_runs_its_own_load() {
    let Some(server) = server() else { return };
    let fleet = fleet(server.client());
    let failing = fleet.try_work("k", async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Err::<String, _>(std::io::Error::other("boom"))
    });
    let joining = async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        fleet.work("k", async { "mine".to_owned() }).await
    };
    let (failed, joined) = tokio::join!(failing, joining);
    assert_eq!(failed.unwrap_err().to_string(), "boom");
    assert_eq!(joined, "mine");
    assert_eq!(fleet.stats().loads, 2);
}

#[tokio::test]
async fn the_json_codec_works_end_to_end() {
    let Some(server) = server() else { return };
    let build = || {
        Fleet::<Vec<u32>>::builder(server.client(), "j")
            .codec(Codec::Json)
            .build()
    };
    let (a, b) = (build(), build());
    let (x, y) = tokio::join!(
        a.work("k", async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            vec![1, 2]
        }),
        async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            b.work("k", async { vec![9] }).await
        }
    );
    assert_eq!((x, y), (vec![1, 2], vec![1, 2]));
}

/// Needs the `smol` feature: with `tokio` alone, the `redis` crate runs on Tokio only.
#[cfg(feature = "smol")]
#[test]
fn smol_runtime_works_too_renewing_waiting_and_hearing_hints() {
    let Some(server) = server() else { return };
    common::scenarios::on_smol_a_lease_is_renewed_and_a_hint_heard(server.client().into());
}

#[tokio::test]
async fn redis_round_trips_per_flight_two_for_the_holder_one_for_a_waiting_process() {
    let Some(server) = server() else { return };
    // Polls far apart: the waiter hears the end through pub/sub.
    let build = || {
        Fleet::<String>::builder(server.client(), "rt")
            .lease(Duration::from_secs(20))
            .poll_interval(Duration::from_secs(10))
            .build()
    };
    let (holder, waiter) = (build(), build());
    let slow = |value: &'static str| async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        value.to_owned()
    };
    // Warm up: scripts loaded, connections made, the waiter's subscriber connected.
    let _ = tokio::join!(holder.work("warm", slow("w")), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        waiter.work("warm", slow("x")).await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Two flights of "k" in a row; (scripts, subscriptions) of the holder and of the
    // waiting process for each.
    let mut costs = Vec::new();
    for round in ["v1", "v2"] {
        let before = (server.calls("evalsha"), server.calls("subscribe"));
        let holder_flight = tokio::spawn({
            let holder = holder.clone();
            async move { holder.work("k", slow(round)).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let holder_started = server.calls("evalsha") - before.0;
        // 1,000 callers in the waiting process cost Redis what one caller costs.
        let waiters =
            futures_util::future::join_all((0..1000).map(|_| waiter.work("k", slow("never"))));
        let values = waiters.await;
        assert!(values.iter().all(|v| v == round));
        assert_eq!(holder_flight.await.unwrap(), round);
        let scripts = server.calls("evalsha") - before.0;
        let subscriptions = server.calls("subscribe") - before.1;
        costs.push((
            holder_started + 1,
            scripts - holder_started - 1,
            subscriptions,
        ));
    }
    println!("per flight (holder scripts, waiting process scripts, subscriptions): {costs:?}");
    // The holder: acquire, publish. The waiting process, on a key it did not wait on in
    // the last second: acquire (who holds it?), subscribe to the key's channel, acquire
    // again (an end announced before the subscription was not heard); then the
    // announcement carries the small value. On the same key again, while still
    // subscribed: one acquire only.
    assert_eq!(costs, [(2, 2, 1), (2, 1, 0)]);
}

/// A server that forgot the fleet's scripts (a restart, a failover to a replica that
/// never ran them, `SCRIPT FLUSH`) answers `NOSCRIPT`; the fleet sends the script's body
/// instead (`EVAL`), and the flight goes through Redis as before.
#[tokio::test]
async fn a_server_that_forgot_the_scripts_is_sent_them_again() {
    let Some(server) = server() else { return };
    let build = || {
        Fleet::<String>::builder(server.client(), "noscript")
            .lease(Duration::from_secs(20))
            .poll_interval(Duration::from_secs(10))
            .build()
    };
    let (holder, waiter) = (build(), build());
    holder.work("warm", async { String::new() }).await;
    waiter.work("warm", async { String::new() }).await;
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query(&mut server.connection())
        .unwrap();
    let evals = server.calls("eval");
    let (x, y) = tokio::join!(
        holder.work("k", async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            "shared".to_owned()
        }),
        async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            waiter.work("k", async { "not loaded".to_owned() }).await
        }
    );
    assert_eq!((x.as_str(), y.as_str()), ("shared", "shared"));
    let (h, w) = (holder.stats(), waiter.stats());
    assert_eq!(
        (h.answered, h.fallbacks, w.answered, w.fallbacks),
        (0, 0, 0, 0)
    );
    assert_eq!((h.loads, w.loads, w.received), (2, 1, 1), "{h:?} {w:?}");
    assert!(
        server.calls("eval") > evals,
        "the scripts were sent by body"
    );
}

/// A load that blocks its worker thread (and with it, on Tokio, the runtime's timers and
/// I/O, whose driver that worker may hold) still has its lease renewed: by the fleet's
/// keeper thread, not by a task. The waiter runs on a runtime of its own.
#[test]
fn a_load_that_hogs_its_thread_keeps_its_lease() {
    let Some(server) = server() else { return };
    let build = || {
        Fleet::<String>::builder(server.client(), "hog")
            .lease(Duration::from_millis(300))
            .poll_interval(Duration::from_millis(50))
            .build()
    };
    let (holder, waiter) = (build(), build());
    let holder_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let holding = holder_runtime.spawn({
        let holder = holder.clone();
        async move {
            holder
                .work("k", async {
                    // Blocks its worker thread for three leases.
                    std::thread::sleep(Duration::from_millis(900));
                    "held".to_owned()
                })
                .await
        }
    });
    wait_until("the holder's load", Duration::from_secs(10), || {
        holder.stats().loads == 1
    });
    let waiter_runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let waited = waiter_runtime.block_on(waiter.work("k", async { "taken over".to_owned() }));
    let held = holder_runtime.block_on(holding).unwrap();
    assert_eq!((held.as_str(), waited.as_str()), ("held", "held"));
    let (h, w) = (holder.stats(), waiter.stats());
    assert_eq!(
        (w.takeovers, w.received, h.late_publishes),
        (0, 1, 0),
        "{h:?} {w:?}"
    );
}

#[tokio::test]
async fn duration_max_settings_never_overflow_inside_calls() {
    let Some(server) = server() else { return };
    let build = |client| {
        Fleet::<String>::builder(client, "max")
            .max_wait(Duration::MAX)
            .retry_redis_after(Duration::MAX)
            .lease(Duration::MAX)
            .poll_interval(Duration::from_millis(50))
            .command_timeout(Duration::MAX)
            .build()
    };
    // Waiting with no limit, on a lease with no expiry.
    let (holder, waiter) = (build(server.client()), build(server.client()));
    let (a, b) = tokio::join!(
        holder.work("k", async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            "v".to_owned()
        }),
        async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            waiter.work("k", async { "w".to_owned() }).await
        }
    );
    assert_eq!((a.as_str(), b.as_str()), ("v", "v"));
    // Failing and resting with no limit.
    let down = build(unreachable_redis());
    for _ in 0..3 {
        assert_eq!(down.work("k", async { "alone".to_owned() }).await, "alone");
    }
    assert_eq!(down.stats().fallbacks, 3);
}

#[tokio::test]
async fn a_value_over_max_value_size_stays_with_its_holder_and_its_lease_is_released() {
    let Some(server) = server() else { return };
    let build = || {
        Fleet::<String>::builder(server.client(), "size")
            .max_value_size(100)
            .lease(Duration::from_secs(30))
            .poll_interval(Duration::from_secs(10))
            .build()
    };
    let (holder, waiter) = (build(), build());
    let started = std::time::Instant::now();
    let (a, b) = tokio::join!(
        holder.work("k", async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            "x".repeat(1000)
        }),
        async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            waiter.work("k", async { "small".to_owned() }).await
        }
    );
    assert_eq!((a.len(), b.as_str()), (1000, "small"));
    // The release woke the waiter: no lease (30 s) nor poll (10 s) waited out.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!((holder.stats().oversized, waiter.stats().takeovers), (1, 1));
    server.assert_no_flight_left(Duration::from_secs(30 + 10));
}

/// A stand-in for a Redis Cluster node on loopback that owns none of the fleet's slots:
/// it answers every command with `MOVED`, as such a node does to a single-node client.
/// Serves until the test process ends (each connection on a thread of its own).
fn moved_node() -> redis::Client {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(16) {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 4096];
                while let Ok(read) = stream.read(&mut chunk) {
                    if read == 0 {
                        return;
                    }
                    buffer.extend_from_slice(&chunk[..read]);
                    // Answer each complete command (`*N` then N bulk strings).
                    while let Some(end) = command_end(&buffer) {
                        buffer.drain(..end);
                        let _ = stream.write_all(b"-MOVED 14520 127.0.0.1:7103\r\n");
                    }
                }
            });
        }
    });
    redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap()
}

/// The length of the first complete RESP command in `buffer`, if there is one.
fn command_end(buffer: &[u8]) -> Option<usize> {
    let line = |from: usize| -> Option<(usize, usize)> {
        let at = buffer[from..].windows(2).position(|w| w == b"\r\n")? + from;
        let number = std::str::from_utf8(&buffer[from + 1..at])
            .ok()?
            .parse()
            .ok()?;
        Some((number, at + 2))
    };
    let (items, mut at) = line(0)?;
    for _ in 0..items {
        let (len, start) = line(at)?;
        at = start + len + 2;
        if at > buffer.len() {
            return None;
        }
    }
    Some(at)
}

#[tokio::test]
async fn a_cluster_node_answering_moved_is_reported_as_such_and_never_rests_the_process() {
    let fleet: Fleet<String> = Fleet::builder(moved_node(), "t")
        .retry_redis_after(Duration::from_secs(60))
        .build();
    for _ in 0..3 {
        assert_eq!(fleet.work("k", async { "alone".to_owned() }).await, "alone");
    }
    let failed = fleet
        .try_work_or_fail("k", async { Ok::<_, AppError>("x".to_owned()) })
        .await;
    let Err(WorkError::Redis(error)) = failed else {
        panic!("expected a redis error")
    };
    assert_eq!(
        (error.kind(), error.code()),
        (FleetErrorKind::Answered, Some("MOVED"))
    );
    assert!(error.to_string().contains("MOVED"), "{error}");
    // Every call asked Redis (a rest would have skipped it for a minute) and degraded.
    let stats = fleet.stats();
    assert_eq!(
        (
            stats.answered,
            stats.fallbacks,
            stats.timeouts,
            stats.disconnects
        ),
        (4, 3, 0, 0),
        "{stats:?}"
    );
}
