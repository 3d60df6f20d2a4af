//! Fleet behaviour with real OS processes: each test starts its own `redis-server` and
//! re-executes this binary as replica processes (the `replica` test, with
//! `ONEFLIGHT_REPLICA` set; see `common/replica.rs`). Every wait is bounded; counts are
//! exact.

mod common;

use common::replica::{LIMIT, ms_between, setup};
use common::*;
use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

/// The process tests measure times against leases: run them one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Runs only in a re-executed process: see `common/replica.rs`.
#[test]
fn replica() {
    if is_replica() {
        common::replica::main();
    }
}

#[test]
fn healthy_burst_loads_each_key_once_in_the_fleet() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(setup) = setup(
        "burst",
        &[("KEYS", "8"), ("CALLERS", "250"), ("FIRST_LOAD_MS", "300")],
    ) else {
        return;
    };
    let replicas: Vec<Replica> = (0..4).map(|_| setup.start(&[])).collect();
    setup.wait_ready(4);
    setup.scratch.go();
    let reports: Vec<Report> = replicas.into_iter().map(|mut r| r.finish(LIMIT)).collect();
    let loads = setup.scratch.loads();
    assert_eq!(
        loads.len(),
        8,
        "one load per key in the whole fleet: {loads:?}"
    );
    assert_eq!(
        loads.iter().map(|l| &l.key).collect::<BTreeSet<_>>().len(),
        8
    );
    for report in &reports {
        assert_eq!(report.num("served"), 8 * 250, "{report:?}");
        assert_eq!(
            report.num("wrong")
                + report.num("panicked")
                + report.num("fallbacks")
                + report.num("takeovers"),
            0
        );
    }
    // Every caller of a key, in every process, got the same value: the holder's.
    let values: BTreeSet<&str> = reports.iter().map(|r| r.get("values")).collect();
    assert_eq!(values.len(), 1, "{values:?}");
    assert_eq!(reports.iter().map(|r| r.num("loads")).sum::<u64>(), 8);
    assert_eq!(
        reports.iter().map(|r| r.num("received")).sum::<u64>(),
        3 * 8
    );
    setup
        .server
        .assert_no_flight_left(Duration::from_millis(5000 + 250));
}

#[test]
fn a_killed_holder_is_replaced_within_lease_and_one_poll() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (lease, poll) = (1000, 100);
    let Some(setup) = setup(
        "killed",
        &[
            ("CALLERS", "50"),
            ("LEASE_MS", "1000"),
            ("POLL_MS", "100"),
            ("FIRST_LOAD_MS", "60000"),
        ],
    ) else {
        return;
    };
    common::scenarios::killed_holder_is_replaced(&setup, lease, poll);
    setup
        .server
        .assert_no_flight_left(Duration::from_millis(lease + poll));
}

#[test]
fn a_paused_holder_cannot_overwrite_the_flight_that_replaced_it() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(setup) = setup(
        "paused",
        &[
            ("CALLERS", "50"),
            ("LEASE_MS", "1000"),
            ("POLL_MS", "100"),
            ("FIRST_LOAD_MS", "600"),
        ],
    ) else {
        return;
    };
    let (mut holder, waiters) = setup.holder_then_waiters(&[], 3);
    signal(holder.pid(), "STOP");
    // The lease runs out; a waiter takes over, loads and publishes; the others get it.
    let reports: Vec<Report> = waiters.into_iter().map(|mut r| r.finish(LIMIT)).collect();
    signal(holder.pid(), "CONT");
    let held = holder.finish(LIMIT);
    let loads = setup.scratch.loads();
    assert_eq!(loads.len(), 2, "{loads:?}");
    let new_value = format!("key0:key0/{}/1/0/", loads[1].pid);
    for report in &reports {
        assert_eq!(
            (report.num("served"), report.get("values")),
            (50, new_value.as_str()),
            "{report:?}"
        );
    }
    // The late holder's publish was rejected, and its own callers got its own value.
    assert_eq!(held.num("late_publishes"), 1, "{held:?}");
    assert_eq!(
        (held.num("served"), held.get("values")),
        (50, format!("key0:key0/{}/1/0/", held.num("pid")).as_str())
    );
    setup
        .server
        .assert_no_flight_left(Duration::from_millis(1000 + 100));
}

#[test]
fn a_holder_whose_callers_all_left_releases_its_lease_at_once() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let lease = 5000;
    let Some(setup) = setup(
        "cancelled",
        &[
            ("CALLERS", "20"),
            ("LEASE_MS", "5000"),
            ("POLL_MS", "2000"),
            ("FIRST_LOAD_MS", "60000"),
        ],
    ) else {
        return;
    };
    let (mut holder, waiters) = setup.holder_then_waiters(&[("CALLER_TIMEOUT_MS", "1500")], 3);
    let held = holder.finish(LIMIT);
    // Its load started (and counts as one), though it never ended.
    assert_eq!(
        (held.num("timed_out"), held.num("served"), held.num("loads")),
        (20, 0, 1),
        "{held:?}"
    );
    setup.wait_loads(2);
    let reports: Vec<Report> = waiters.into_iter().map(|mut r| r.finish(LIMIT)).collect();
    let loads = setup.scratch.loads();
    assert_eq!(loads.len(), 2, "{loads:?}");
    let takeover_ms = ms_between(u128::from(held.num("cancelled_at_ms")), loads[1].start_ms);
    println!(
        "takeover after the holder's callers left: {takeover_ms} ms (lease {lease} ms, poll 2000 ms)"
    );
    assert!(
        takeover_ms < 1000,
        "took {takeover_ms} ms: the lease was not released promptly"
    );
    for report in &reports {
        assert_eq!(
            (report.num("served"), report.num("wrong")),
            (20, 0),
            "{report:?}"
        );
    }
    setup
        .server
        .assert_no_flight_left(Duration::from_millis(lease as u64 + 2000));
}

/// The holder's first load ends without a value to share (`first` is `panic` or `err`,
/// in `mode`): only the holder's callers see it, `check_holder` says how; the lease is
/// released at once and another process takes over with its own load.
fn an_abandoned_flight_is_taken_over(
    name: &str,
    mode: &str,
    first: &str,
    check_holder: impl FnOnce(&Report),
) {
    let Some(setup) = setup(
        name,
        &[
            ("MODE", mode),
            ("CALLERS", "20"),
            ("LEASE_MS", "5000"),
            ("POLL_MS", "2000"),
            ("FIRST_LOAD_MS", "500"),
            ("FIRST", first),
        ],
    ) else {
        return;
    };
    let (mut holder, waiters) = setup.holder_then_waiters(&[], 3);
    let held = holder.finish(LIMIT);
    let reports: Vec<Report> = waiters.into_iter().map(|mut r| r.finish(LIMIT)).collect();
    check_holder(&held);
    let loads = setup.scratch.loads();
    assert_eq!(loads.len(), 2, "{loads:?}");
    for report in &reports {
        let seen = (
            report.num("served"),
            report.num("panicked"),
            report.num("errors"),
        );
        assert_eq!(seen, (20, 0, 0), "{report:?}");
        assert_eq!(
            report.get("values"),
            format!("key0:key0/{}/1/0/", loads[1].pid)
        );
    }
    let takeover_ms = ms_between(loads[0].start_ms, loads[1].start_ms);
    assert!(
        takeover_ms < 1500,
        "the holder's lease was not released promptly: {takeover_ms} ms"
    );
    setup
        .server
        .assert_no_flight_left(Duration::from_millis(5000 + 2000));
}

#[test]
fn a_panicking_load_stays_in_its_process_and_another_takes_over() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    an_abandoned_flight_is_taken_over("panic", "work", "panic", |held| {
        assert_eq!(
            (held.num("panicked"), held.num("served")),
            (20, 0),
            "{held:?}"
        );
    });
}

#[test]
fn a_try_work_error_stays_in_its_process_and_another_takes_over() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    an_abandoned_flight_is_taken_over("error", "try", "err", |held| {
        // Every caller of the holder's flight got the error, as one shared Arc.
        let seen = (
            held.num("errors"),
            held.num("distinct_errors"),
            held.num("served"),
        );
        assert_eq!(seen, (20, 1, 0), "{held:?}");
    });
}

/// Redis away mid-flight (`how` does it and brings it back): every call finishes, each
/// process loading once by itself meanwhile; then the fleet deduplicates again.
fn redis_away_mid_flight(name: &str, how: impl FnOnce(&mut Server)) {
    let Some(mut setup) = setup(
        name,
        &[
            ("CALLERS", "20"),
            ("PHASES", "2"),
            ("LEASE_MS", "1000"),
            ("POLL_MS", "100"),
            ("TIMEOUT_MS", "200"),
            ("RETRY_MS", "300"),
            ("FIRST_LOAD_MS", "1500"),
        ],
    ) else {
        return;
    };
    let (mut holder, waiters) = setup.holder_then_waiters(&[], 3);
    how(&mut setup.server);
    // Phase 1 ends in every process; then, Redis back, phase 2 at once: a lease that
    // nobody holds (an acquire that ran when Redis resumed) would make it wait.
    setup.wait_phase_done(1, 4);
    let go2 = now_ms();
    setup.go_phase(2);
    let mut reports = vec![holder.finish(LIMIT)];
    reports.extend(waiters.into_iter().map(|mut r| r.finish(LIMIT)));
    let loads = setup.scratch.loads();
    let phase1: Vec<_> = loads.iter().filter(|l| l.phase == 1).collect();
    let phase2: Vec<_> = loads.iter().filter(|l| l.phase == 2).collect();
    // While Redis was away: one load per process (in-process deduplication), no more.
    assert_eq!(phase1.len(), 4, "{loads:?}");
    assert_eq!(
        phase1.iter().map(|l| l.pid).collect::<BTreeSet<_>>().len(),
        4,
        "{loads:?}"
    );
    // Redis back: one load in the fleet again, at once.
    assert_eq!(phase2.len(), 1, "{loads:?} {reports:?}");
    let waited = ms_between(go2, phase2[0].start_ms);
    assert!(
        waited < 700,
        "phase 2 waited {waited} ms for its lease (lease 1000 ms)"
    );
    for report in &reports {
        assert_eq!(
            (
                report.num("served"),
                report.num("wrong"),
                report.num("panicked")
            ),
            (40, 0, 0),
            "{report:?}"
        );
    }
    assert!(
        reports[1..]
            .iter()
            .all(|r| r.num("fallbacks") == 1 && r.num("redis_errors") >= 1),
        "{reports:?}"
    );
    setup
        .server
        .assert_no_flight_left(Duration::from_millis(1000 + 100));
}

#[test]
fn redis_stalled_mid_flight_degrades_then_recovers() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    redis_away_mid_flight("stalled", |server| {
        signal(server.pid(), "STOP");
        std::thread::sleep(Duration::from_millis(1000));
        signal(server.pid(), "CONT");
    });
}

#[test]
fn redis_killed_and_restarted_mid_flight_degrades_then_recovers() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    redis_away_mid_flight("restarted", |server| {
        server.kill();
        std::thread::sleep(Duration::from_millis(500));
        server.restart();
    });
}

#[test]
fn waiters_finish_by_polling_when_pubsub_is_killed() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // The subscribers reconnect only after RETRY_MS, long after the holder published.
    let (poll, first_load) = (300, 1000);
    let Some(setup) = setup(
        "pubsub",
        &[
            ("CALLERS", "20"),
            ("POLL_MS", "300"),
            ("RETRY_MS", "4000"),
            ("FIRST_LOAD_MS", "1000"),
        ],
    ) else {
        return;
    };
    let (mut holder, waiters) = setup.holder_then_waiters(&[], 3);
    let killed: u64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query(&mut setup.server.connection())
        .unwrap();
    assert!(killed >= 3, "killed {killed} subscribers");
    let held = holder.finish(LIMIT);
    let reports: Vec<Report> = waiters.into_iter().map(|mut r| r.finish(LIMIT)).collect();
    let loads = setup.scratch.loads();
    assert_eq!(loads.len(), 1, "{loads:?}");
    assert_eq!(held.num("served"), 20);
    let published_ms = loads[0].start_ms + first_load;
    for report in &reports {
        assert_eq!(
            (report.num("served"), report.num("fallbacks")),
            (20, 0),
            "{report:?}"
        );
        let late = ms_between(published_ms, u128::from(report.num("last_done_ms")));
        println!("waiter done {late} ms after the publish (poll {poll} ms)");
        assert!(
            late <= (poll + 300) as i128,
            "a waiter finished {late} ms after the publish"
        );
    }
    setup
        .server
        .assert_no_flight_left(Duration::from_millis(5000 + 300));
}
