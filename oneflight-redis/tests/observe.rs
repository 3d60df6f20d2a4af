//! What a fleet emits with the `tracing` and `metrics` features, against a real
//! `redis-server`: the counters after a known sequence of calls, and the spans of a
//! holder's and a waiter's flight.
#![cfg(all(feature = "tracing", feature = "metrics"))]

mod common;

use common::*;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use oneflight_redis::{Cache, Fleet, redis};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::{Layer, Registry};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn build(client: redis::Client, name: &str) -> oneflight_redis::FleetBuilder<String> {
    Fleet::builder(client, "observed")
        .name(name)
        .lease(Duration::from_secs(10))
        .poll_interval(Duration::from_millis(50))
}

/// Every metric recorded, named `name{label=value,...}`.
fn named(snapshotter: &metrics_util::debugging::Snapshotter) -> Vec<(String, DebugValue)> {
    let mut named = Vec::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let (_, key) = key.into_parts();
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        named.push((format!("{}{{{}}}", key.name(), labels.join(",")), value));
    }
    named
}

/// `holder` loads `key` for `load_ms`; `waiter` asks for it 30 ms later.
async fn flight(
    holder: &Fleet<String>,
    waiter: &Fleet<String>,
    key: &str,
    load_ms: u64,
) -> (String, String) {
    tokio::join!(
        holder.work(key, async move {
            tokio::time::sleep(Duration::from_millis(load_ms)).await;
            "held".to_owned()
        }),
        async {
            tokio::time::sleep(Duration::from_millis(30)).await;
            waiter.work(key, async { "alone".to_owned() }).await
        }
    )
}

#[test]
fn fleet_metrics_after_a_known_sequence_of_calls() {
    let Some(server) = server() else { return };
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        runtime().block_on(async {
            let holder = build(server.client(), "holder").build();
            let waiter = build(server.client(), "waiter")
                .max_wait(Duration::from_millis(200))
                .build();
            // Received from the holder's flight.
            assert_eq!(
                flight(&holder, &waiter, "a", 100).await,
                ("held".into(), "held".into())
            );
            // The holder is slower than the waiter's max_wait: the waiter loads alone.
            assert_eq!(
                flight(&holder, &waiter, "b", 600).await,
                ("held".into(), "alone".into())
            );
            // Redis unreachable: a load without the fleet, and the error by kind.
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let down: Fleet<String> = build(
                redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap(),
                "down",
            )
            .build();
            assert_eq!(down.work("c", async { "alone".to_owned() }).await, "alone");
        })
    });
    let mut values: BTreeMap<String, u64> = BTreeMap::new();
    for (name, value) in named(&snapshotter) {
        let value = match value {
            DebugValue::Counter(n) => n,
            DebugValue::Histogram(samples) => samples.len() as u64,
            DebugValue::Gauge(_) => continue,
        };
        if value > 0 {
            values.insert(name, value);
        }
    }
    let expected: BTreeMap<String, u64> = [
        // The fleet tier ...
        ("oneflight_fleet_loads_total{fleet=holder}", 2),
        ("oneflight_fleet_loads_total{fleet=waiter}", 1),
        ("oneflight_fleet_received_total{fleet=waiter}", 1),
        (
            "oneflight_fleet_fallbacks_total{fleet=waiter,reason=max_wait}",
            1,
        ),
        ("oneflight_fleet_wait_seconds{fleet=waiter}", 2),
        ("oneflight_fleet_loads_total{fleet=down}", 1),
        (
            "oneflight_fleet_fallbacks_total{fleet=down,reason=redis_error}",
            1,
        ),
        (
            "oneflight_fleet_redis_errors_total{fleet=down,kind=disconnected}",
            1,
        ),
        // ... and its in-process groups, named after the fleets.
        ("oneflight_flights_total{group=holder}", 2),
        ("oneflight_flights_total{group=waiter}", 2),
        ("oneflight_flights_total{group=down}", 1),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert_eq!(values, expected);
}

/// Every span's fields, as recorded (later records override), and every event's.
#[derive(Clone, Default)]
struct Spans(
    Arc<Mutex<BTreeMap<u64, BTreeMap<String, String>>>>,
    Arc<Mutex<Vec<BTreeMap<String, String>>>>,
);

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: tracing::Subscriber> Layer<S> for Spans {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        _: Context<'_, S>,
    ) {
        let mut fields = BTreeMap::from([("name".to_owned(), attrs.metadata().name().to_owned())]);
        attrs.record(&mut Fields(&mut fields));
        self.0.lock().unwrap().insert(id.into_u64(), fields);
    }
    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        _: Context<'_, S>,
    ) {
        if let Some(fields) = self.0.lock().unwrap().get_mut(&id.into_u64()) {
            values.record(&mut Fields(fields));
        }
    }
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        self.1.lock().unwrap().push(fields);
    }
}

/// The spans of this test binary: a global subscriber, so that every thread and every
/// callsite sees it from the start (a thread-local one races with the other test's thread
/// over tracing's per-callsite interest cache). The test tells its spans apart by name.
fn spans() -> &'static Spans {
    static SPANS: std::sync::OnceLock<Spans> = std::sync::OnceLock::new();
    SPANS.get_or_init(|| {
        let spans = Spans::default();
        tracing::subscriber::set_global_default(Registry::default().with(spans.clone()))
            .expect("the only subscriber");
        spans
    })
}

#[test]
fn fleet_spans_name_the_role_and_the_key_unless_told_not_to() {
    let Some(server) = server() else { return };
    let spans = spans();
    runtime().block_on(async {
        let holder = build(server.client(), "span-holder").build();
        let waiter = build(server.client(), "span-waiter")
            .record_keys(false)
            .build();
        flight(&holder, &waiter, "user:7", 100).await;
    });
    let spans = spans.0.lock().unwrap();
    let ours = |field: &str, s: &BTreeMap<String, String>| {
        s.get(field).is_some_and(|name| name.starts_with("span-"))
    };
    let fleet: Vec<&BTreeMap<String, String>> =
        spans.values().filter(|s| ours("fleet", s)).collect();
    assert_eq!(
        fleet.len(),
        2,
        "one span per flight of each process: {spans:#?}"
    );
    let holder = fleet.iter().find(|s| s["fleet"] == "span-holder").unwrap();
    let waiter = fleet.iter().find(|s| s["fleet"] == "span-waiter").unwrap();
    assert_eq!(
        (holder["role"].as_str(), holder["key"].as_str()),
        ("holder", "user:7")
    );
    assert_eq!(waiter["role"], "waiter");
    assert!(
        !waiter.contains_key("key"),
        "record_keys(false): {waiter:?}"
    );
    // The core's span of each caller (the fleet's runner in each process) is there too.
    let core: Vec<&BTreeMap<String, String>> =
        spans.values().filter(|s| ours("group", s)).collect();
    assert_eq!(core.len(), 2, "{spans:#?}");
    assert!(
        core.iter()
            .all(|s| s["name"] == "oneflight.flight" && s["role"] == "runner")
    );
}

/// The counters of a cache after a known sequence (a stale set prevented, a miss, a hit),
/// and the event an operator looks for when an invalidation beat a slow load.
#[test]
fn cache_metrics_and_the_stale_set_prevented_event() {
    let Some(server) = server() else { return };
    let spans = spans();
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        runtime().block_on(async {
            let cache = |name: &str| -> Cache<String> {
                Cache::builder(server.client(), "observed-cache")
                    .name(name)
                    .build()
            };
            let (a, c) = (cache("cache-a"), cache("cache-c"));
            // A's load is held until C has invalidated the key: A's store is rejected.
            let (open, gate) = tokio::sync::oneshot::channel::<()>();
            let held = a.get("k", async move {
                let _ = gate.await;
                "read before the invalidation".to_owned()
            });
            let writer = async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                c.invalidate("k").await.unwrap();
                let _ = open.send(());
            };
            let (value, ()) = tokio::join!(held, writer);
            assert_eq!(value, "read before the invalidation");
            // Then a miss and a hit of another key.
            assert_eq!(a.get("x", async { "x".to_owned() }).await, "x");
            assert_eq!(a.get("x", async { "never".to_owned() }).await, "x");
        })
    });
    let mut values: BTreeMap<String, u64> = BTreeMap::new();
    for (name, value) in named(&snapshotter) {
        if let DebugValue::Counter(n) = value
            && n > 0
            && name.contains("cache-a")
            && (name.starts_with("oneflight_cache") || name.contains("late_publishes"))
        {
            values.insert(name, n);
        }
    }
    let expected: BTreeMap<String, u64> = [
        ("oneflight_cache_misses_total{cache=cache-a}", 2),
        ("oneflight_cache_hits_total{cache=cache-a}", 1),
        ("oneflight_fleet_late_publishes_total{fleet=cache-a}", 1),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert_eq!(values, expected);
    let events = spans.1.lock().unwrap();
    let prevented = events
        .iter()
        .filter(|e| {
            e.get("fleet").is_some_and(|f| f == "cache-a")
                && e.get("message")
                    .is_some_and(|m| m.starts_with("stale set prevented"))
        })
        .count();
    assert_eq!(prevented, 1, "{events:#?}");
}
