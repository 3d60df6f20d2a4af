//! Fleet behaviour within one process, against a real `redis-server` started by the test:
//! several `Fleet` values stand for several processes where one process is enough.

mod common;

use common::*;
use oneflight_redis::{Codec, Fleet, FleetError, OnRedisError, redis};
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
    server.assert_no_flight_left(Duration::from_millis(1000));
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
        .arg("oneflight:{t:k}:lease")
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
        .arg(format!("oneflight:{{t:k}}:value:{token}"))
        .arg(payload)
        .query_async(&mut raw)
        .await
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg("oneflight:{t:k}:lease")
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
    // Version 0 of the envelope, otherwise well formed: header, then postcard (token, value).
    let mut payload = vec![b'o', b'f', 0, b'p', 6];
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
            .arg(format!("oneflight:{{t:{key}}}:fence"))
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
    assert_eq!(
        (stats.loads, stats.fallbacks, stats.redis_errors),
        (1, 1, 1),
        "{stats:?}"
    );
    assert!(format!("{fleet:?}").starts_with("Fleet"));
}

#[tokio::test]
async fn without_redis_try_work_fails_when_so_configured() {
    let fleet: Fleet<String> = Fleet::builder(unreachable_redis(), "t")
        .on_redis_error(OnRedisError::Fail)
        .build();
    let error = fleet
        .try_work("k", async { Ok::<_, std::io::Error>("v".to_owned()) })
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("redis unavailable for the fleet"),
        "{error}"
    );
    // `work` cannot fail: it degrades whatever the setting.
    assert_eq!(fleet.work("k", async { "w".to_owned() }).await, "w");
    let boxed = fleet
        .try_work("k", async { Ok::<_, FleetError>("v".to_owned()) })
        .await;
    assert!(boxed.is_err());
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

#[test]
fn smol_runtime_works_too() {
    let Some(server) = server() else { return };
    smol::block_on(async {
        let fleet = fleet(server.client());
        assert_eq!(
            fleet.work("k", async { "on smol".to_owned() }).await,
            "on smol"
        );
        assert_eq!(fleet.stats().loads, 1);
        assert_eq!(fleet.stats().fallbacks, 0);
    });
}

/// Counts the fleet's script calls (`EVALSHA`) in `INFO commandstats`.
fn script_calls(server: &Server) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut server.connection())
        .unwrap();
    let line = info
        .lines()
        .find(|l| l.starts_with("cmdstat_evalsha:"))
        .unwrap_or("cmdstat_evalsha:calls=0,");
    line.split(['=', ',']).nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn redis_round_trips_per_flight_two_for_the_holder_one_for_a_waiting_process() {
    let Some(server) = server() else { return };
    // Polls far apart: the waiter hears the end through pub/sub.
    let build = || {
        Fleet::<String>::builder(server.client(), "rt")
            .poll_interval(Duration::from_secs(10))
            .build()
    };
    let (holder, waiter) = (build(), build());
    let slow = |value: &'static str| async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        value.to_owned()
    };
    // Warm up: scripts loaded, connections made, the waiter's subscriber listening.
    let _ = tokio::join!(holder.work("warm", slow("w")), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        waiter.work("warm", slow("x")).await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = script_calls(&server);
    let holder_flight = tokio::spawn({
        let holder = holder.clone();
        async move { holder.work("k", slow("v")).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let holder_started = script_calls(&server) - before;
    // 1,000 callers in the waiting process cost Redis what one caller costs.
    let waiters =
        futures_util::future::join_all((0..1000).map(|_| waiter.work("k", slow("never"))));
    let values = waiters.await;
    assert!(values.iter().all(|v| v == "v"));
    assert_eq!(holder_flight.await.unwrap(), "v");
    let total = script_calls(&server) - before;
    let waiting_process = total - holder_started - 1;
    println!(
        "script calls per flight: holder {} (acquire, publish), waiting process {waiting_process}",
        holder_started + 1
    );
    assert_eq!(holder_started, 1, "the holder's acquire");
    // The waiting process asks once (acquire: who holds it?); the announcement of the end
    // carries the small value, so it need not ask again.
    assert_eq!(waiting_process, 1, "the waiting process's acquire");
}
