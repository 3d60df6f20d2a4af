//! Scenarios that run alike on one node and on a cluster: each test builds its own
//! set-up (server or cluster, settings) and runs the same steps and assertions.

use super::replica::{LIMIT, Setup, ms_between};
use super::*;
use oneflight_redis::{Fleet, FleetErrorKind, WorkError};

/// The holder (its load lasting a minute) is `SIGKILL`ed once three waiters wait: one of
/// them takes over within the lease and one poll, and every caller gets its value.
pub fn killed_holder_is_replaced<S>(setup: &Setup<S>, lease: u64, poll: u64) {
    let (holder, waiters) = setup.holder_then_waiters(&[], 3);
    signal(holder.pid(), "KILL");
    let killed_at = now_ms();
    drop(holder);
    setup.wait_loads(2);
    let reports: Vec<Report> = waiters.into_iter().map(|mut r| r.finish(LIMIT)).collect();
    let loads = setup.scratch.loads();
    assert_eq!(loads.len(), 2, "{loads:?}");
    let takeover_ms = ms_between(killed_at, loads[1].start_ms);
    println!("takeover after SIGKILL: {takeover_ms} ms (lease {lease} ms, poll {poll} ms)");
    assert!(
        takeover_ms <= (lease + poll + 200) as i128,
        "takeover took {takeover_ms} ms"
    );
    for report in &reports {
        assert_eq!(
            (report.num("served"), report.num("wrong")),
            (50, 0),
            "{report:?}"
        );
        assert_eq!(
            report.get("values"),
            format!("key0:key0/{}/1/0/", loads[1].pid)
        );
    }
    assert_eq!(reports.iter().map(|r| r.num("takeovers")).sum::<u64>(), 1);
}

/// Four processes, one of which loads a value of `VALUE_BYTES` (16 MiB): one load, and
/// every caller of the three others receives all of it, without a fallback.
pub fn a_big_value_crosses_four_processes<S>(setup: &Setup<S>) {
    let replicas: Vec<Replica> = (0..4).map(|_| setup.start(&[])).collect();
    setup.wait_ready(4);
    setup.scratch.go();
    let reports: Vec<Report> = replicas.into_iter().map(|mut r| r.finish(LIMIT)).collect();
    assert_eq!(setup.scratch.loads().len(), 1);
    for report in &reports {
        let seen = (
            report.num("served"),
            report.num("wrong"),
            report.num("fallbacks"),
            report.num("oversized"),
        );
        assert_eq!(seen, (20, 0, 0, 0), "{report:?}");
    }
    assert_eq!(reports.iter().map(|r| r.num("received")).sum::<u64>(), 3);
}

/// A user's own error type.
#[derive(Debug)]
struct AppError;

/// Another program wrote a hash where the fleets of namespace `t` keep key "bad"'s
/// lease (the caller planted it): every script on that key gets `WRONGTYPE`. That key
/// degrades, call by call, counted as answered; other keys still go through Redis
/// between `fleet` and `other` (two processes), and the process never rests.
pub async fn an_answered_error_degrades_that_call_only(
    fleet: &Fleet<String>,
    other: &Fleet<String>,
) {
    for _ in 0..3 {
        assert_eq!(
            fleet.work("bad", async { "alone".to_owned() }).await,
            "alone"
        );
    }
    let failed = fleet
        .try_work_or_fail("bad", async { Ok::<_, AppError>("x".to_owned()) })
        .await;
    let Err(WorkError::Redis(error)) = failed else {
        panic!("expected a redis error")
    };
    assert_eq!(
        (error.kind(), error.code()),
        (FleetErrorKind::Answered, Some("WRONGTYPE"))
    );
    let stats = fleet.stats();
    assert_eq!((stats.answered, stats.fallbacks), (4, 3), "{stats:?}");
    let (a, b) = tokio::join!(
        fleet.work("good", async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            "shared".to_owned()
        }),
        async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            other.work("good", async { "unused".to_owned() }).await
        }
    );
    assert_eq!((a.as_str(), b.as_str()), ("shared", "shared"));
    assert_eq!((fleet.stats().fallbacks, other.stats().received), (3, 1));
}

/// On smol: a holder whose load lasts three of its leases keeps the key (its lease is
/// renewed), and a waiting process whose polls are 10 s apart hears the end at once.
#[cfg(feature = "smol")]
pub fn on_smol_a_lease_is_renewed_and_a_hint_heard(backend: oneflight_redis::Backend) {
    smol::block_on(async {
        let build = |lease: u64, poll: u64| {
            Fleet::<String>::builder(backend.clone(), "smol")
                .lease(Duration::from_millis(lease))
                .poll_interval(Duration::from_millis(poll))
                .build()
        };
        let (holder, waiter) = (build(600, 500), build(20_000, 10_000));
        let started = std::time::Instant::now();
        let (x, y) = futures_util::join!(
            holder.work("k", async {
                smol::Timer::after(Duration::from_millis(1800)).await;
                "on smol".to_owned()
            }),
            async {
                smol::Timer::after(Duration::from_millis(100)).await;
                waiter.work("k", async { "not loaded".to_owned() }).await
            }
        );
        assert_eq!((x.as_str(), y.as_str()), ("on smol", "on smol"));
        let (h, w) = (holder.stats(), waiter.stats());
        assert_eq!(
            (h.loads, h.late_publishes, h.redis_errors),
            (1, 0, 0),
            "{h:?}"
        );
        assert_eq!((w.received, w.takeovers, w.fallbacks), (1, 0, 0), "{w:?}");
        // Heard, not polled: the next poll would have come 10 s after the first ask.
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "{:?}",
            started.elapsed()
        );
    });
}
