//! What a group emits with the `tracing` and `metrics` features: the span tree of a
//! flight with a joiner and a takeover, its events, and the counters after a known
//! sequence of calls. Futures are polled by hand, so every count is exact.
#![cfg(all(feature = "tracing", feature = "metrics"))]

mod common;

use common::{Gate, poll_once as poll, yield_times};

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use oneflight::Group;
use std::collections::BTreeMap;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt};
use tracing_subscriber::{Layer, Registry};

/// A span or event as the capturing layer saw it: its name and fields, and for an event
/// the span it happened in.
#[derive(Debug, Clone, Default)]
struct Seen {
    name: String,
    fields: BTreeMap<String, String>,
    parent: Option<String>,
}

/// Records every span (with the fields recorded later) and event.
#[derive(Clone, Default)]
struct Capture {
    spans: Arc<Mutex<BTreeMap<u64, Seen>>>,
    events: Arc<Mutex<Vec<Seen>>>,
}

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>> Layer<S>
    for Capture
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _: LayerContext<'_, S>) {
        let mut seen = Seen {
            name: attrs.metadata().name().to_owned(),
            ..Seen::default()
        };
        attrs.record(&mut Fields(&mut seen.fields));
        self.spans.lock().unwrap().insert(id.into_u64(), seen);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _: LayerContext<'_, S>) {
        if let Some(seen) = self.spans.lock().unwrap().get_mut(&id.into_u64()) {
            values.record(&mut Fields(&mut seen.fields));
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: LayerContext<'_, S>) {
        let mut seen = Seen {
            name: event.metadata().name().to_owned(),
            ..Seen::default()
        };
        event.record(&mut Fields(&mut seen.fields));
        seen.parent = ctx
            .event_span(event)
            .and_then(|span| {
                self.spans
                    .lock()
                    .unwrap()
                    .get(&span.id().into_u64())
                    .cloned()
            })
            .and_then(|span| span.fields.get("role").cloned());
        self.events.lock().unwrap().push(seen);
    }
}

/// The capture of this test binary: a global subscriber, so that every thread and every
/// callsite sees it from the start (a thread-local one races with tests on other threads
/// over tracing's per-callsite interest cache). Tests tell their own spans and events
/// apart by their group's name.
fn capture() -> &'static Capture {
    static CAPTURE: std::sync::OnceLock<Capture> = std::sync::OnceLock::new();
    CAPTURE.get_or_init(|| {
        let capture = Capture::default();
        let subscriber = Registry::default().with(capture.clone());
        tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
        capture
    })
}

impl Capture {
    fn spans_of(&self, group: &str) -> Vec<Seen> {
        let spans = self.spans.lock().unwrap();
        let ours = |s: &&Seen| s.fields.get("group").is_some_and(|g| g == group);
        spans.values().filter(ours).cloned().collect()
    }
    fn events_of(&self, group: &str) -> Vec<Seen> {
        let events = self.events.lock().unwrap();
        let ours = |e: &&Seen| e.fields.get("group").is_some_and(|g| g == group);
        events.iter().filter(ours).cloned().collect()
    }
}

#[test]
fn a_flight_with_a_joiner_and_a_takeover_makes_one_span_per_caller_with_its_role() {
    let capture = capture();
    {
        let group: Group<String, u32> = Group::named("profiles");
        let gate = Gate::new();
        let opened = gate.wait();
        // The runner: its load waits on a gate that never opens; it will be cancelled.
        let mut runner = Box::pin(group.work("k", async move {
            opened.await;
            1
        }));
        assert!(poll(runner.as_mut()).is_pending());
        // The joiner, and a second joiner that will take over.
        let mut joiner = Box::pin(group.work("k", async { 2 }));
        assert!(poll(joiner.as_mut()).is_pending());
        let mut taker = pin!(group.work("k", async { 3 }));
        assert!(poll(taker.as_mut()).is_pending());
        drop(runner); // cancelled: a waiting caller takes the flight over
        gate.open();
        // Whichever joiner claims the run ends with its own value; the other shares it.
        let a = poll(joiner.as_mut());
        let b = poll(taker.as_mut());
        let values = match (a, b) {
            (Poll::Ready(a), Poll::Ready(b)) => (a, b),
            (Poll::Ready(a), Poll::Pending) => (a, poll(taker.as_mut()).now_or_panic()),
            (Poll::Pending, Poll::Ready(b)) => (poll(joiner.as_mut()).now_or_panic(), b),
            (Poll::Pending, Poll::Pending) => panic!("nobody took the flight over"),
        };
        assert!(values == (2, 2) || values == (3, 3), "{values:?}");
    }
    let spans = capture.spans_of("profiles");
    assert_eq!(spans.len(), 3, "one span per caller: {spans:#?}");
    assert!(
        spans
            .iter()
            .all(|s| s.name == "oneflight.flight" && s.fields["group"] == "profiles")
    );
    let mut roles: Vec<&str> = spans.iter().map(|s| s.fields["role"].as_str()).collect();
    roles.sort();
    assert_eq!(roles, ["joined", "runner", "takeover"], "{spans:#?}");
    let events = capture.events_of("profiles");
    let takeovers: Vec<&Seen> = events
        .iter()
        .filter(|e| {
            e.fields
                .get("message")
                .is_some_and(|m| m.contains("took over"))
        })
        .collect();
    assert_eq!(takeovers.len(), 1, "{events:#?}");
    assert_eq!(takeovers[0].fields["group"], "profiles");
    assert_eq!(
        takeovers[0].parent.as_deref(),
        Some("takeover"),
        "the event is in the taker's span"
    );
}

#[test]
fn a_panic_shared_and_a_reentrant_call_are_events() {
    let capture = capture();
    {
        let group: Group<String, u32> = Group::named("panics");
        let gate = Gate::new();
        let opened = gate.wait();
        let mut runner = Box::pin(group.work("k", async move {
            opened.await;
            panic!("the load failed")
        }));
        assert!(poll(runner.as_mut()).is_pending());
        let mut joiner = Box::pin(group.work("k", async { 2 }));
        assert!(poll(joiner.as_mut()).is_pending());
        gate.open();
        let caught =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| poll(runner.as_mut())));
        assert!(caught.is_err());
        let caught =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| poll(joiner.as_mut())));
        assert!(caught.is_err());
        // Re-entrance: the flight's future calls its own key.
        let inner = group.clone();
        let mut reentrant =
            Box::pin(group.work("r", async move { inner.work("r", async { 0 }).await }));
        let caught =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| poll(reentrant.as_mut())));
        assert!(caught.is_err());
    }
    let events = capture.events_of("panics");
    let messages: Vec<String> = events
        .iter()
        .filter_map(|e| e.fields.get("message").cloned())
        .collect();
    let shared = events
        .iter()
        .find(|e| {
            e.fields
                .get("message")
                .is_some_and(|m| m.contains("published a flight's outcome"))
        })
        .unwrap_or_else(|| panic!("{messages:?}"));
    assert_eq!(shared.fields["panicked"], "true");
    assert!(
        messages.iter().any(|m| m.contains("re-entrant")),
        "{messages:?}"
    );
}

fn counters(snapshotter: &Snapshotter) -> BTreeMap<String, u64> {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(key, _, _, value)| {
            let (_, key) = key.into_parts();
            let labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            let name = format!("{}{{{}}}", key.name(), labels.join(","));
            match value {
                DebugValue::Counter(n) => Some((name, n)),
                DebugValue::Histogram(samples) => {
                    Some((format!("{name} samples"), samples.len() as u64))
                }
                DebugValue::Gauge(_) => None,
            }
        })
        .collect()
}

#[test]
fn counters_and_the_wait_histogram_after_a_known_sequence_of_calls() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let group: Group<String, u32> = Group::named("db");
        // A flight with two joiners.
        let gate = Gate::new();
        let opened = gate.wait();
        let mut runner = Box::pin(group.work("a", async move {
            opened.await;
            1
        }));
        assert!(poll(runner.as_mut()).is_pending());
        let mut joiners: Vec<_> = (0..2)
            .map(|_| Box::pin(group.work("a", async { 9 })))
            .collect();
        for joiner in &mut joiners {
            assert!(poll(joiner.as_mut()).is_pending());
        }
        // A second flight, forgotten while it runs, then run to its end.
        let mut forgotten = Box::pin(group.work("b", async {
            yield_times(1).await;
            2
        }));
        assert!(poll(forgotten.as_mut()).is_pending());
        assert!(group.forget("b"));
        gate.open();
        assert_eq!(poll(runner.as_mut()), Poll::Ready(1));
        for joiner in &mut joiners {
            assert_eq!(poll(joiner.as_mut()), Poll::Ready(1));
        }
        assert_eq!(poll(forgotten.as_mut()), Poll::Ready(2));
        // A panicking flight.
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            futures_executor::block_on(group.work("c", async { panic!("boom") }))
        }));
        assert!(caught.is_err());
        let stats = group.stats();
        let seen = (
            stats.flights,
            stats.joined,
            stats.takeovers,
            stats.panics,
            stats.forgotten,
        );
        assert_eq!(seen, (3, 2, 0, 1, 1));
    });
    let counters = counters(&snapshotter);
    let expected: BTreeMap<String, u64> = [
        ("oneflight_flights_total{group=db}", 3),
        ("oneflight_joined_total{group=db}", 2),
        ("oneflight_panics_total{group=db}", 1),
        ("oneflight_forgotten_total{group=db}", 1),
        ("oneflight_wait_seconds{group=db} samples", 2),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    // `takeovers` was never incremented, so the recorder may not list it.
    let mut seen = counters.clone();
    seen.remove("oneflight_takeovers_total{group=db}");
    assert_eq!(seen, expected, "{counters:#?}");
}

trait NowOrPanic<T> {
    fn now_or_panic(self) -> T;
}

impl<T> NowOrPanic<T> for Poll<T> {
    fn now_or_panic(self) -> T {
        match self {
            Poll::Ready(value) => value,
            Poll::Pending => panic!("not ready"),
        }
    }
}
