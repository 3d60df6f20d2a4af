//! Fleet behaviour with real OS processes: each test starts its own `redis-server` and
//! re-executes this binary as replica processes (the `replica` test, with
//! `ONEFLIGHT_REPLICA` set), which count their loads in a shared log file (not in Redis,
//! which some tests stop). Every wait is bounded; counts are exact.

mod common;

use common::*;
use oneflight_redis::Fleet;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The process tests measure times against leases: run them one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

// ---------------------------------------------------------------------------------------
// The replica: what each re-executed process does.
// ---------------------------------------------------------------------------------------

/// Runs only in a re-executed process. Its settings come from the environment:
/// `URL`, `DIR`, `KEYS`, `CALLERS` (per key), `LEASE_MS`, `POLL_MS`, `MAX_WAIT_MS`,
/// `TIMEOUT_MS` (per Redis command), `RETRY_MS`, `FIRST_LOAD_MS` and `LOAD_MS` (how long
/// the first load of a key in a phase takes, and any later one), `FIRST` (`panic` or
/// `err`: what the first load does at its end), `CALLER_TIMEOUT_MS`, `PHASES`, `MODE`
/// (`work` or `try`).
#[test]
fn replica() {
    if !is_replica() {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run_replica());
}

#[derive(Default)]
struct Tally {
    served: u64,
    wrong: u64,
    panicked: u64,
    errors: u64,
    error_ptrs: BTreeSet<usize>,
    timed_out: u64,
    /// key → the distinct values its callers got.
    values: BTreeMap<String, BTreeSet<String>>,
    cancelled_at_ms: u128,
    last_done_ms: u128,
}

async fn run_replica() {
    let dir = PathBuf::from(env_str("DIR"));
    let client = oneflight_redis::redis::Client::open(env_str("URL")).unwrap();
    let ms = |name, default| Duration::from_millis(env_u64(name, default));
    let fleet: Fleet<String> = Fleet::builder(client, "test")
        .lease(ms("LEASE_MS", 5000))
        .poll_interval(ms("POLL_MS", 250))
        .max_wait(ms("MAX_WAIT_MS", 30_000))
        .command_timeout(ms("TIMEOUT_MS", 1000))
        .retry_redis_after(ms("RETRY_MS", 1000))
        .build();
    let keys = env_u64("KEYS", 1);
    let callers = env_u64("CALLERS", 10);
    let caller_timeout = env_u64("CALLER_TIMEOUT_MS", 0);
    let try_mode = std::env::var("MODE").is_ok_and(|m| m == "try");
    let tally = Arc::new(Mutex::new(Tally::default()));
    std::fs::write(dir.join(format!("ready-{}", std::process::id())), b"").unwrap();
    for phase in 1..=env_u64("PHASES", 1) as u32 {
        let gate = dir.join(if phase == 1 {
            "go".to_owned()
        } else {
            format!("go{phase}")
        });
        // Bounded: a replica whose test died does not wait forever.
        let deadline = std::time::Instant::now() + LIMIT * 2;
        while !gate.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "replica: no {} within {:?}",
                gate.display(),
                LIMIT * 2
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let mut tasks = Vec::new();
        for key in 0..keys {
            for _ in 0..callers {
                let (fleet, dir, tally) = (fleet.clone(), dir.clone(), tally.clone());
                let key = format!("key{key}");
                tasks.push(tokio::spawn(async move {
                    let call = async {
                        if try_mode {
                            fleet
                                .try_work(&key, load(dir.clone(), key.clone(), phase))
                                .await
                        } else {
                            Ok(fleet
                                .work(&key, async {
                                    load(dir.clone(), key.clone(), phase).await.unwrap()
                                })
                                .await)
                        }
                    };
                    let outcome = if caller_timeout > 0 {
                        tokio::time::timeout(Duration::from_millis(caller_timeout), call).await
                    } else {
                        Ok(call.await)
                    };
                    let mut tally = tally.lock().unwrap();
                    match outcome {
                        Ok(Ok(value)) => {
                            let right = value.starts_with(&format!("{key}/"))
                                && value.ends_with(&format!("/{phase}"));
                            if right {
                                tally.served += 1
                            } else {
                                tally.wrong += 1
                            }
                            tally.values.entry(key).or_default().insert(value);
                        }
                        Ok(Err(error)) => {
                            tally.errors += 1;
                            tally.error_ptrs.insert(Arc::as_ptr(&error) as usize);
                        }
                        Err(_) => {
                            tally.timed_out += 1;
                            tally.cancelled_at_ms = now_ms();
                        }
                    }
                    tally.last_done_ms = now_ms();
                }));
            }
        }
        for task in tasks {
            if let Err(error) = task.await {
                assert!(error.is_panic());
                tally.lock().unwrap().panicked += 1;
            }
        }
    }
    // A server process lives on after its requests: give the fleet's spawned tasks (a
    // released lease) the time they would have there.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let tally = tally.lock().unwrap();
    let stats = fleet.stats();
    let values: Vec<String> = tally
        .values
        .iter()
        .map(|(k, v)| format!("{k}:{}", v.iter().cloned().collect::<Vec<_>>().join("+")))
        .collect();
    println!(
        "report pid={} served={} wrong={} panicked={} errors={} distinct_errors={} timed_out={} \
         cancelled_at_ms={} last_done_ms={} loads={} received={} takeovers={} fallbacks={} \
         redis_errors={} late_publishes={} values={}",
        std::process::id(),
        tally.served,
        tally.wrong,
        tally.panicked,
        tally.errors,
        tally.error_ptrs.len(),
        tally.timed_out,
        tally.cancelled_at_ms,
        tally.last_done_ms,
        stats.loads,
        stats.received,
        stats.takeovers,
        stats.fallbacks,
        stats.redis_errors,
        stats.late_publishes,
        values.join(","),
    );
}

/// The load: records itself, takes `FIRST_LOAD_MS` if it is the first load of the key in
/// this phase (then does `FIRST`), else `LOAD_MS`. Its value names the key, the process
/// and the phase.
async fn load(dir: PathBuf, key: String, phase: u32) -> Result<String, std::io::Error> {
    let first = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dir.join(format!("first-{phase}-{key}")))
        .is_ok();
    record_load(&dir, &key, phase);
    let millis = if first {
        env_u64("FIRST_LOAD_MS", 300)
    } else {
        env_u64("LOAD_MS", 300)
    };
    tokio::time::sleep(Duration::from_millis(millis)).await;
    match std::env::var("FIRST").as_deref() {
        Ok("panic") if first => panic!("the first load panicked, as the test asked"),
        Ok("err") if first => {
            return Err(std::io::Error::other(
                "the first load failed, as the test asked",
            ));
        }
        _ => {}
    }
    Ok(format!("{key}/{}/{phase}", std::process::id()))
}

// ---------------------------------------------------------------------------------------
// The tests.
// ---------------------------------------------------------------------------------------

const LIMIT: Duration = Duration::from_secs(60);

/// A test's server, scratch directory and common replica settings.
struct Setup {
    server: Server,
    scratch: Scratch,
    env: Vec<(&'static str, String)>,
}

fn setup(name: &str, settings: &[(&'static str, &str)]) -> Option<Setup> {
    let server = server()?;
    let scratch = Scratch::new(name);
    let mut env = vec![
        ("URL", server.url()),
        ("DIR", scratch.0.display().to_string()),
    ];
    env.extend(settings.iter().map(|(n, v)| (*n, v.to_string())));
    Some(Setup {
        server,
        scratch,
        env,
    })
}

impl Setup {
    fn start(&self, extra: &[(&'static str, &str)]) -> Replica {
        let mut env = self.env.clone();
        env.extend(extra.iter().map(|(n, v)| (*n, v.to_string())));
        Replica::start("replica", &env)
    }

    fn wait_ready(&self, count: usize) {
        wait_until("replicas ready", LIMIT, || {
            std::fs::read_dir(&self.scratch.0)
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .file_name()
                        .to_string_lossy()
                        .starts_with("ready-")
                })
                .count()
                >= count
        });
    }

    fn wait_loads(&self, count: usize) {
        wait_until(&format!("{count} loads"), LIMIT, || {
            self.scratch.loads().len() >= count
        });
    }

    /// Starts the holder alone and waits until its load runs, then starts `waiters`
    /// replicas and gives them time to ask Redis and wait on its flight.
    fn holder_then_waiters(
        &self,
        holder: &[(&'static str, &str)],
        waiters: usize,
    ) -> (Replica, Vec<Replica>) {
        let holder = self.start(holder);
        self.wait_ready(1);
        self.scratch.go();
        self.wait_loads(1);
        let waiters: Vec<Replica> = (0..waiters).map(|_| self.start(&[])).collect();
        self.wait_ready(1 + waiters.len());
        std::thread::sleep(Duration::from_millis(300));
        (holder, waiters)
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
    setup.server.assert_no_flight_left(Duration::from_secs(5));
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
    let (holder, waiters) = setup.holder_then_waiters(&[], 3);
    let holder_pid = holder.pid();
    signal(holder_pid, "KILL");
    let killed_at = now_ms();
    drop(holder);
    setup.wait_loads(2);
    let reports: Vec<Report> = waiters.into_iter().map(|mut r| r.finish(LIMIT)).collect();
    let loads = setup.scratch.loads();
    assert_eq!(loads.len(), 2, "{loads:?}");
    let takeover_ms = loads[1].start_ms - killed_at;
    println!("takeover after SIGKILL: {takeover_ms} ms (lease {lease} ms, poll {poll} ms)");
    assert!(
        takeover_ms <= lease + poll + 200,
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
            format!("key0:key0/{}/1", loads[1].pid)
        );
    }
    assert_eq!(reports.iter().map(|r| r.num("takeovers")).sum::<u64>(), 1);
    setup
        .server
        .assert_no_flight_left(Duration::from_millis(lease as u64));
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
    let new_value = format!("key0:key0/{}/1", loads[1].pid);
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
        (50, format!("key0:key0/{}/1", held.num("pid")).as_str())
    );
    setup
        .server
        .assert_no_flight_left(Duration::from_millis(1000));
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
    assert_eq!(
        (held.num("timed_out"), held.num("served")),
        (20, 0),
        "{held:?}"
    );
    setup.wait_loads(2);
    let reports: Vec<Report> = waiters.into_iter().map(|mut r| r.finish(LIMIT)).collect();
    let loads = setup.scratch.loads();
    assert_eq!(loads.len(), 2, "{loads:?}");
    let takeover_ms = loads[1].start_ms - u128::from(held.num("cancelled_at_ms"));
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
        .assert_no_flight_left(Duration::from_millis(lease as u64));
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
            format!("key0:key0/{}/1", loads[1].pid)
        );
    }
    let takeover_ms = loads[1].start_ms - loads[0].start_ms;
    assert!(
        takeover_ms < 1500,
        "the holder's lease was not released promptly: {takeover_ms} ms"
    );
    setup
        .server
        .assert_no_flight_left(Duration::from_millis(5000));
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
    // Phase 1 ends in every process; then, Redis back, phase 2.
    wait_until("phase 1 to end", LIMIT, || {
        let loads = setup.scratch.loads();
        loads.iter().filter(|l| l.phase == 1).count() == 4
    });
    std::thread::sleep(Duration::from_millis(1600)); // the slowest phase-1 load ends
    std::fs::write(setup.scratch.0.join("go2"), b"").unwrap();
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
    // Redis back: one load in the fleet again.
    assert_eq!(phase2.len(), 1, "{loads:?}");
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
        .assert_no_flight_left(Duration::from_millis(1000));
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
        let late = u128::from(report.num("last_done_ms")) - published_ms;
        println!("waiter done {late} ms after the publish (poll {poll} ms)");
        assert!(
            late <= poll + 300,
            "a waiter finished {late} ms after the publish"
        );
    }
    setup.server.assert_no_flight_left(Duration::from_secs(5));
}
