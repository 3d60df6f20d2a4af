//! The summary table, from criterion's saved estimates and the interleaved rounds.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::alloc::*;
use crate::chart::*;
use crate::floors::*;
use crate::peers::*;
use crate::scenarios::*;

/// When this run started: estimates saved before it come from an earlier run.
pub(crate) static STARTED: std::sync::OnceLock<std::time::SystemTime> = std::sync::OnceLock::new();

/// Benchmarks whose estimates the summary read from an earlier run (a filtered run).
pub(crate) static FROM_EARLIER_RUNS: AtomicUsize = AtomicUsize::new(0);

/// Where criterion saves its estimates: `criterion` in the workspace's target directory,
/// as criterion itself finds it (`CARGO_TARGET_DIR`, else the workspace's `target`; the
/// bench runs in its member's folder, so a relative `target` would miss it).
fn criterion_dir() -> String {
    let target = std::env::var("CARGO_TARGET_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../target").into());
    format!("{target}/criterion")
}

/// The median of one benchmark, in nanoseconds, from criterion's saved estimates.
pub(crate) fn median_ns(path: &str) -> Option<f64> {
    let file = format!("{}/{path}/new/estimates.json", criterion_dir());
    let saved = std::fs::metadata(&file).and_then(|m| m.modified()).ok()?;
    if STARTED.get().is_some_and(|started| saved < *started) {
        FROM_EARLIER_RUNS.fetch_add(1, Ordering::Relaxed);
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(file).ok()?).ok()?;
    json["median"]["point_estimate"].as_f64()
}

/// Nanoseconds per added caller of a benchmark measured with 1 and 1,000 callers.
pub(crate) fn slope_ns(path: &str) -> Option<f64> {
    Some((median_ns(&format!("{path}/1000"))? - median_ns(&format!("{path}/1"))?) / 999.0)
}

/// One row of the summary: a metric per peer, lower is better.
pub(crate) struct Row {
    pub(crate) scenario: String,
    pub(crate) unit: &'static str,
    pub(crate) values: Vec<Option<f64>>,
    pub(crate) target: Option<f64>,
}

impl Row {
    /// oneflight's value over the best peer's.
    fn ratio(&self) -> Option<f64> {
        Some(self.values[0]? / best_peer(self)?)
    }
}

/// The lowest value of a peer other than oneflight in `row`.
pub(crate) fn best_peer(row: &Row) -> Option<f64> {
    let best = row.values[1..]
        .iter()
        .flatten()
        .cloned()
        .fold(f64::INFINITY, f64::min);
    (best.is_finite() && best > 0.0).then_some(best)
}

/// A row's values from the singleflights' medians, moka's cell left empty.
fn without_moka(medians: &[f64]) -> Vec<Option<f64>> {
    medians.iter().map(|&v| Some(v)).chain([None]).collect()
}

/// The medians of the interleaved rounds.
pub(crate) struct Interleaved {
    /// Per call, in `PEERS`' order without moka.
    pub(crate) uncontended_string: Vec<f64>,
    pub(crate) uncontended_u64: Vec<f64>,
    /// Per added caller, in `interleaved_fan_in`'s order.
    pub(crate) fan_in: Vec<f64>,
    pub(crate) fan_in_yield: Vec<f64>,
    /// Per call, in `PEERS`' order.
    pub(crate) mixed: Vec<f64>,
    /// Per added caller of one flight, in one task.
    pub(crate) work_follower: f64,
    pub(crate) chan_receiver: f64,
}

pub(crate) fn summary(
    executions: &[(u64, u64)],
    heap: &[(u64, usize)],
    chan_bytes: u64,
    interleaved: &Interleaved,
) {
    let per_call = |group: &str, divisor: f64| -> Vec<Option<f64>> {
        PEERS
            .iter()
            .map(|p| median_ns(&format!("{group}/{p}")).map(|ns| ns / divisor))
            .collect()
    };
    let slope = |group: &str| -> Vec<Option<f64>> {
        PEERS
            .iter()
            .map(|p| slope_ns(&format!("{group}/{p}")))
            .collect()
    };
    let rows = vec![
        Row {
            scenario: "uncontended, String keys".into(),
            unit: "ns/call",
            values: per_call("uncontended_string", 1.0),
            target: Some(0.6),
        },
        Row {
            scenario: "uncontended, u64 keys".into(),
            unit: "ns/call",
            values: per_call("uncontended_u64", 1.0),
            target: Some(0.6),
        },
        Row {
            scenario: "uncontended, String keys, interleaved rounds".into(),
            unit: "ns/call",
            values: without_moka(&interleaved.uncontended_string),
            target: Some(0.6),
        },
        Row {
            scenario: "uncontended, u64 keys, interleaved rounds".into(),
            unit: "ns/call",
            values: without_moka(&interleaved.uncontended_u64),
            target: Some(0.6),
        },
        Row {
            scenario: "gated fan-in, per added caller".into(),
            unit: "ns/caller",
            values: slope("fan_in"),
            target: Some(0.85),
        },
        Row {
            scenario: "gated fan-in (work yields), per added caller".into(),
            unit: "ns/caller",
            values: slope("fan_in_yield"),
            target: Some(0.85),
        },
        Row {
            scenario: "gated fan-in, interleaved rounds, per added caller".into(),
            unit: "ns/caller",
            values: interleaved.fan_in[..PEERS.len()]
                .iter()
                .map(|&v| Some(v))
                .collect(),
            target: Some(0.85),
        },
        Row {
            scenario: "gated fan-in (work yields), interleaved rounds".into(),
            unit: "ns/caller",
            values: interleaved.fan_in_yield[..PEERS.len()]
                .iter()
                .map(|&v| Some(v))
                .collect(),
            target: Some(0.85),
        },
        Row {
            scenario: "mixed: 64 tasks, 10,000 calls, 100 keys".into(),
            unit: "ns/call",
            values: per_call("mixed", MIXED_CALLS as f64),
            target: Some(0.8),
        },
        Row {
            scenario: "mixed, interleaved rounds".into(),
            unit: "ns/call",
            values: interleaved.mixed.iter().map(|&v| Some(v)).collect(),
            target: Some(0.8),
        },
        Row {
            scenario: "heap bytes per waiting caller".into(),
            unit: "bytes",
            values: heap.iter().map(|&(b, _)| Some(b as f64)).collect(),
            target: None,
        },
        Row {
            scenario: "size of a waiting caller's future".into(),
            unit: "bytes",
            values: heap.iter().map(|&(_, s)| Some(s as f64)).collect(),
            target: None,
        },
    ];
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| scenario | unit | {} | ratio to best peer | target |",
        PEERS.join(" | ")
    );
    let _ = writeln!(out, "|---|---|{}---|---|", "---|".repeat(PEERS.len()));
    for row in &rows {
        let cells: Vec<String> = row
            .values
            .iter()
            .map(|v| {
                v.map_or("n/a".into(), |v| {
                    if v >= 100.0 {
                        format!("{v:.0}")
                    } else {
                        format!("{v:.1}")
                    }
                })
            })
            .collect();
        let ratio = row.ratio().map_or("n/a".into(), |r| format!("{r:.2}x"));
        let target = row.target.map_or("".into(), |t| format!("<= {t}x"));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {ratio} | {target} |",
            row.scenario,
            row.unit,
            cells.join(" | ")
        );
    }
    let cells: Vec<String> = executions
        .iter()
        .map(|(lo, hi)| {
            if lo == hi {
                format!("{lo}")
            } else {
                format!("{lo}-{hi}")
            }
        })
        .collect();
    let _ = writeln!(
        out,
        "| executions per gated batch of 1,000 | count | {} | | 1 |",
        cells.join(" | ")
    );
    let floor_mixed = median_ns("mixed/floor").map(|ns| ns / MIXED_CALLS as f64);
    let _ = writeln!(out);
    // The floors, each against the best peer of the same measurement: criterion's fan-in
    // row (4) and the rows of interleaved rounds (6 and 7), whose floors come after the
    // peers.
    let criterion_floors = [
        format!("fan_in/{ONE_KEY_FLOOR}"),
        format!("fan_in/{ONE_KEY_WAKER_FLOOR}"),
        format!("floor_fan_in/{SPAWN_ONLY}"),
        format!("floor_fan_in/{SPAWN_LISTEN_WAKE}"),
    ]
    .map(|path| slope_ns(&path));
    for (measured, row, floors) in [
        ("criterion", &rows[4], criterion_floors),
        (
            "interleaved rounds",
            &rows[6],
            [0, 1, 2, 3].map(|f| Some(interleaved.fan_in[PEERS.len() + f])),
        ),
        (
            "interleaved rounds, work that yields",
            &rows[7],
            [0, 1, 2, 3].map(|f| Some(interleaved.fan_in_yield[PEERS.len() + f])),
        ),
    ] {
        let Some(best) = best_peer(row) else { continue };
        let cells: Vec<String> = [
            "the same harness with a one-key singleflight (no hash, no map) waiting on an event-listener event",
            "the same, waiting with a waker list under its lock",
            "tokio spawn only",
            "tokio spawn and one event-listener wait and wake",
        ]
        .iter()
        .zip(floors)
        .filter_map(|(floor, ns)| Some(format!("{floor} {:.0} ns ({:.2}x)", ns?, ns? / best)))
        .collect();
        let _ = writeln!(
            out,
            "floors under gated fan-in per added caller, {measured} (ratio to the best peer): {}.",
            cells.join("; ")
        );
    }
    if let Some(ns) = floor_mixed {
        let _ = writeln!(
            out,
            "floor under mixed (same tasks, one yield per call, no singleflight): {ns:.0} ns per call."
        );
    }
    let work_slope = slope_ns("chan_vs_work/work");
    let chan_slope = slope_ns("chan_vs_work/do_chan");
    let _ = writeln!(out);
    if let (Some(work), Some(chan)) = (work_slope, chan_slope) {
        let _ = writeln!(
            out,
            "oneflight, one task, per added caller: `work` follower {work:.0} ns, `do_chan` receiver {chan:.0} ns ({:.2}x; target <= 1.5x); heap bytes per `do_chan` caller that joins: {chan_bytes}.",
            chan / work
        );
    }
    let Interleaved {
        work_follower,
        chan_receiver,
        ..
    } = interleaved;
    let _ = writeln!(
        out,
        "oneflight, one task, per added caller, interleaved rounds: `work` follower {work_follower:.0} ns, `do_chan` receiver {chan_receiver:.0} ns ({:.2}x; target <= 1.5x).",
        chan_receiver / work_follower
    );
    let per_item = |path: &str| median_ns(&format!("floor/{path}")).map(|ns| ns / CHANNELS as f64);
    if let (Some(work), Some(chan), Some(channel), Some(boxed), Some(lookup)) = (
        work_slope,
        chan_slope,
        per_item(CHANNEL_LIFECYCLE),
        per_item(BOXED_FUTURES),
        median_ns(&format!("floor/{LOOKUP}")),
    ) {
        let _ = writeln!(
            out,
            "floor under a `do_chan` receiver: its async-channel (created, sent to, closed, received from, dropped; {CHANNELS} at a time) {channel:.0} ns and {} heap bytes, plus the box that keeps its future {boxed:.0} ns, plus a lookup under a lock {lookup:.0} ns: {:.2}x a `work` follower; the rest of a receiver costs {:.0} ns.",
            channel_lifecycle_bytes(),
            (channel + boxed + lookup) / work,
            chan - channel - boxed - lookup,
        );
    }
    for (name, path) in [
        (
            "Mutex<HashMap> insert+remove with a key clone",
            "floor/mutex-hashmap insert+remove+key clone",
        ),
        (
            "Mutex<HashMap<u64, _>> insert+remove",
            "floor/mutex-hashmap insert+remove u64",
        ),
        (
            "event-listener notify round trip",
            "floor/event-listener notify round trip",
        ),
        ("async-channel send+recv", "floor/async-channel send+recv"),
    ] {
        if let Some(ns) = median_ns(path) {
            let _ = writeln!(out, "floor: {name}: {ns:.0} ns.");
        }
    }
    println!("\n{out}");
    let _ = std::fs::write(format!("{}/peers-summary.md", criterion_dir()), &out);
    // The chart shows one run: a filtered run leaves it as it was.
    match FROM_EARLIER_RUNS.load(Ordering::Relaxed) {
        0 => {
            let _ = std::fs::write(
                concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/peers.svg"),
                chart(&rows),
            );
        }
        earlier => {
            println!("{earlier} figures above come from earlier runs: docs/peers.svg not redrawn.")
        }
    }
}

/// Prints the cost of the observability features: `[plain, tracing, metrics]` ns per
/// uncontended call.
pub(crate) fn observability_cost([plain, traced, metered]: [f64; 3]) {
    println!(
        "\n## The observability features, uncontended call, String keys (interleaved medians)\n"
    );
    println!("| build | ns/call | / plain | target |");
    println!("|---|---|---|---|");
    println!("| plain (features off) | {plain:.1} | 1.00x | |");
    println!(
        "| `tracing` on, no subscriber | {traced:.1} | **{:.2}x** | <= 1.05x |",
        traced / plain
    );
    println!(
        "| `metrics` on, no recorder | {metered:.1} | **{:.2}x** | <= 1.05x |",
        metered / plain
    );
}
