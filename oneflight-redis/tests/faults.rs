//! The fleet's promises under the faults that a process boundary makes: a lease taken by
//! an acquire whose caller gave up, a process that shuts down mid-load, names that could
//! mix, big values, `max_wait`, a paused holder resuming while its successor loads, and
//! fencing across a takeover. Real `redis-server`, real replica processes (see
//! `common/replica.rs`); every wait bounded, counts exact.

mod common;

use common::replica::{LIMIT, ODD_KEYS, ODD_NAMESPACES, ms_between, setup};
use common::*;
use std::collections::{BTreeMap, BTreeSet};
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

fn finish_all(replicas: Vec<Replica>) -> Vec<Report> {
    replicas.into_iter().map(|mut r| r.finish(LIMIT)).collect()
}

/// Redis stalls (SIGSTOP) longer than the lease while a holder loads and others wait:
/// the waiters' acquires time out, their callers load alone, and one of those acquires
/// runs when Redis resumes, on a key whose lease has expired: it takes a lease that
/// nobody holds. Its process releases it as soon as Redis answers, so a burst right
/// after the stall loads at once instead of waiting out that lease.
#[test]
fn a_lease_taken_by_an_acquire_that_timed_out_is_released_when_redis_resumes() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let lease = 3000;
    let Some(setup) = setup(
        "orphan",
        &[
            ("CALLERS", "20"),
            ("PHASES", "2"),
            ("LEASE_MS", "3000"),
            ("POLL_MS", "100"),
            ("TIMEOUT_MS", "200"),
            ("RETRY_MS", "100"),
            ("FIRST_LOAD_MS", "1000"),
            ("LOAD_MS", "100"),
        ],
    ) else {
        return;
    };
    let (holder, waiters) = setup.holder_then_waiters(&[], 2);
    signal(setup.server.pid(), "STOP");
    std::thread::sleep(Duration::from_millis(lease + 500));
    signal(setup.server.pid(), "CONT");
    let resumed = now_ms();
    setup.wait_phase_done(1, 3);
    // Let the rests that the stall started end (RETRY_MS), then the burst.
    std::thread::sleep(Duration::from_millis(400));
    let go2 = now_ms();
    setup.go_phase(2);
    let mut replicas = vec![holder];
    replicas.extend(waiters);
    let reports = finish_all(replicas);
    let loads = setup.scratch.loads();
    let phase2: Vec<_> = loads.iter().filter(|l| l.phase == 2).collect();
    assert_eq!(
        phase2.len(),
        1,
        "one load in the fleet after the stall: {loads:?}"
    );
    let waited = ms_between(go2, phase2[0].start_ms);
    println!(
        "after the stall: burst {} ms after Redis resumed, its load {waited} ms after the burst (lease {lease} ms)",
        ms_between(resumed, go2)
    );
    assert!(
        waited < 1200,
        "the burst waited {waited} ms: a lease without a holder"
    );
    for report in &reports {
        assert_eq!(
            (report.num("served"), report.num("wrong")),
            (40, 0),
            "{report:?}"
        );
    }
    setup
        .server
        .assert_no_flight_left(Duration::from_millis(lease + 100));
}

/// A process shuts down (drops its runtime, then its fleet) while it holds a lease: the
/// lease is released on the way out, and a waiting process takes over within one poll
/// interval, not after the lease.
#[test]
fn a_process_that_shuts_down_mid_load_leaves_no_lease_behind() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (lease, poll) = (10_000, 2000);
    let Some(setup) = setup(
        "shutdown",
        &[
            ("CALLERS", "20"),
            ("LEASE_MS", "10000"),
            ("POLL_MS", "2000"),
            ("FIRST_LOAD_MS", "60000"),
            ("LOAD_MS", "100"),
        ],
    ) else {
        return;
    };
    let mut holder = setup.start(&[("SHUTDOWN", "1")]);
    setup.wait_ready(1);
    setup.scratch.go();
    setup.wait_loads(1);
    let waiters: Vec<Replica> = (0..3).map(|_| setup.start(&[])).collect();
    setup.wait_ready(4);
    // The holder shuts down by itself once its load runs; the waiters may not have
    // asked Redis yet: let them, before they can see the lease gone.
    let held = holder.finish(LIMIT);
    let reports = finish_all(waiters);
    let loads = setup.scratch.loads();
    assert_eq!(loads.len(), 2, "{loads:?}");
    let takeover = ms_between(u128::from(held.num("shutdown_at_ms")), loads[1].start_ms);
    println!("takeover after a shutdown: {takeover} ms (lease {lease} ms, poll {poll} ms)");
    assert!(takeover < poll as i128, "took {takeover} ms");
    for report in &reports {
        assert_eq!(
            (report.num("served"), report.num("wrong")),
            (20, 0),
            "{report:?}"
        );
    }
    setup
        .server
        .assert_no_flight_left(Duration::from_millis(lease + poll));
}

/// Namespaces and keys with `:`, braces, spaces, newlines and empty ones, in two
/// processes: every (namespace, key) pair is one flight of its own, loaded once in the
/// fleet, and no caller ever gets another pair's value.
#[test]
fn odd_namespaces_and_keys_never_share_a_flight() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(setup) = setup(
        "odd",
        &[
            ("KEY_SET", "odd"),
            ("CALLERS", "10"),
            ("FIRST_LOAD_MS", "300"),
        ],
    ) else {
        return;
    };
    let replicas: Vec<Replica> = (0..3).map(|_| setup.start(&[])).collect();
    setup.wait_ready(3);
    setup.scratch.go();
    let reports = finish_all(replicas);
    let pairs = ODD_NAMESPACES.len() * ODD_KEYS.len();
    let loads = setup.scratch.loads();
    let mut per_pair: BTreeMap<&str, usize> = BTreeMap::new();
    for load in &loads {
        *per_pair.entry(&load.key).or_default() += 1;
    }
    assert_eq!(per_pair.len(), pairs, "{per_pair:?}");
    assert!(
        per_pair.values().all(|&n| n == 1),
        "one load per pair: {per_pair:?}"
    );
    for report in &reports {
        assert_eq!(
            (
                report.num("served"),
                report.num("wrong"),
                report.num("fallbacks")
            ),
            (pairs as u64 * 10, 0, 0),
            "{report:?}"
        );
    }
    let values: BTreeSet<&str> = reports.iter().map(|r| r.get("values")).collect();
    assert_eq!(
        values.len(),
        1,
        "every process got the same values: {values:?}"
    );
}

/// A 16 MiB value crosses four processes with the default settings: one load, every
/// caller gets all of it, and no process falls back.
#[test]
fn a_16_mib_value_crosses_four_processes_with_the_default_settings() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let size = (16 * 1024 * 1024 - 64).to_string();
    let Some(setup) = setup(
        "big",
        &[
            ("CALLERS", "20"),
            ("FIRST_LOAD_MS", "500"),
            ("VALUE_BYTES", &size),
            // The defaults, stated: lease 5 s, poll 250 ms, command timeout 1 s.
            ("LEASE_MS", "5000"),
            ("POLL_MS", "250"),
            ("TIMEOUT_MS", "1000"),
        ],
    ) else {
        return;
    };
    common::scenarios::a_big_value_crosses_four_processes(&setup);
}

/// A holder that is alive but slow: waiters load by themselves once `max_wait` passed,
/// and no sooner.
#[test]
fn max_wait_bounds_a_wait_on_a_slow_holder() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let max_wait = 800;
    let Some(setup) = setup(
        "max-wait",
        &[
            ("CALLERS", "20"),
            ("FIRST_LOAD_MS", "20000"),
            ("LOAD_MS", "100"),
            ("POLL_MS", "100"),
            ("MAX_WAIT_MS", "800"),
        ],
    ) else {
        return;
    };
    // The holder waits long; the waiters give up on it after max_wait.
    let (holder, waiters) = setup.holder_then_waiters(&[("MAX_WAIT_MS", "60000")], 2);
    let reports = finish_all(waiters);
    drop(holder);
    for report in &reports {
        assert_eq!(
            (
                report.num("served"),
                report.num("fallbacks"),
                report.num("received")
            ),
            (20, 1, 0),
            "{report:?}"
        );
        let slowest = report.num("slowest_ms");
        // The wait (max_wait), one load (100 ms), and slack for a busy machine.
        assert!(
            (max_wait..max_wait + 100 + 1500).contains(&slowest),
            "a caller took {slowest} ms (max_wait {max_wait} ms)"
        );
    }
    assert_eq!(setup.scratch.loads().len(), 3);
}

/// A holder paused past its lease resumes while its successor still loads: its publish
/// is rejected, its renewals do not extend the successor's lease, its own callers get its
/// own value at once, and the successor's waiters get the successor's.
#[test]
fn a_paused_holder_resuming_mid_successor_neither_overwrites_nor_extends_it() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(setup) = setup(
        "resume-mid",
        &[
            ("CALLERS", "30"),
            ("LEASE_MS", "1000"),
            ("POLL_MS", "100"),
            ("FIRST_LOAD_MS", "600"),
            ("LOAD_MS", "2500"),
        ],
    ) else {
        return;
    };
    let (mut holder, waiters) = setup.holder_then_waiters(&[], 2);
    signal(holder.pid(), "STOP");
    // The lease runs out, a waiter takes over and loads for 2.5 s; resume the holder
    // while it does.
    setup.wait_loads(2);
    std::thread::sleep(Duration::from_millis(500));
    let resumed = now_ms();
    signal(holder.pid(), "CONT");
    let held = holder.finish(LIMIT);
    let reports = finish_all(waiters);
    let loads = setup.scratch.loads();
    assert_eq!(loads.len(), 2, "{loads:?}");
    assert_eq!(held.num("late_publishes"), 1, "{held:?}");
    assert_eq!(
        (held.num("served"), held.get("values")),
        (30, format!("key0:key0/{}/1/0/", held.num("pid")).as_str())
    );
    // The holder's callers did not wait for the successor's flight.
    let held_done = ms_between(resumed, u128::from(held.num("last_done_ms")));
    let successor_done = ms_between(resumed, loads[1].start_ms + 2500);
    assert!(
        held_done < successor_done,
        "{held_done} ms vs {successor_done} ms"
    );
    let successor = format!("key0:key0/{}/1/0/", loads[1].pid);
    for report in &reports {
        assert_eq!(
            (report.num("served"), report.get("values")),
            (30, successor.as_str()),
            "{report:?}"
        );
    }
    setup
        .server
        .assert_no_flight_left(Duration::from_millis(1100));
}

/// `work_fenced` across a takeover: the successor's fencing number is above the killed
/// holder's, so a store that keeps the highest number can reject the late writer.
#[test]
fn fencing_numbers_grow_across_a_takeover() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(setup) = setup(
        "fenced",
        &[
            ("MODE", "fenced"),
            ("CALLERS", "10"),
            ("LEASE_MS", "1000"),
            ("POLL_MS", "100"),
            ("FIRST_LOAD_MS", "60000"),
        ],
    ) else {
        return;
    };
    let (holder, waiters) = setup.holder_then_waiters(&[], 2);
    signal(holder.pid(), "KILL");
    drop(holder);
    let reports = finish_all(waiters);
    let loads = setup.scratch.loads();
    assert_eq!(loads.len(), 2, "{loads:?}");
    assert!(
        loads[0].fence > 0 && loads[1].fence > loads[0].fence,
        "{loads:?}"
    );
    let successor = format!("key0:key0/{}/1/{}/", loads[1].pid, loads[1].fence);
    for report in &reports {
        assert_eq!(
            (report.num("served"), report.get("values")),
            (10, successor.as_str()),
            "{report:?}"
        );
    }
}
