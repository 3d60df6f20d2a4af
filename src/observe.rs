//! What a group tells operators: `tracing` spans and events (feature `tracing`) and
//! `metrics` counters and a histogram (feature `metrics`). With a feature off, its half
//! of this module is empty: the macros expand to nothing and [`Observer`]'s methods to
//! empty inline functions, so the rest of the crate is the same code either way.
//!
//! - **Spans**: one `oneflight.flight` span (level `debug`) per `work` or `try_work`
//!   caller, covering its join and its wait (so a joined caller's span lasts as long as
//!   it waited; a runner's closes as its own future starts, which then runs outside it:
//!   one moved span is what costs nothing measurable when no subscriber listens), and
//!   one per `do_chan` task, covering its run; with the group's `name` and the caller's
//!   `role`:
//!   `runner` (started the flight), `joined` (waited on another's run), `takeover`
//!   (joined, then ran the flight after its runner went away). Keys are not recorded:
//!   they are of any type.
//! - **Events** (`debug`): a takeover, a panic shared with other callers, a re-entrant
//!   call refused.
//! - **Metrics**, labelled with the group's name (`group`, empty for an unnamed group),
//!   never with keys: `oneflight_flights_total`, `oneflight_joined_total`,
//!   `oneflight_takeovers_total`, `oneflight_panics_total`, `oneflight_forgotten_total`
//!   (as [`Stats`](crate::Stats)), and `oneflight_wait_seconds`, a histogram of how long
//!   each joined caller waited. Handles are registered at a group's first use of them:
//!   install the recorder before.

use std::borrow::Cow;

/// A group's name and, with `metrics`, its metric handles.
#[derive(Debug, Default)]
pub(crate) struct Observer {
    /// As `Group::named` gave it.
    pub(crate) name: Option<Cow<'static, str>>,
    #[cfg(feature = "metrics")]
    handles: std::sync::OnceLock<Handles>,
}

#[cfg(feature = "metrics")]
#[derive(Debug)]
struct Handles {
    flights: metrics::Counter,
    joined: metrics::Counter,
    takeovers: metrics::Counter,
    panics: metrics::Counter,
    forgotten: metrics::Counter,
    wait: metrics::Histogram,
}

impl Observer {
    pub(crate) fn new(name: Option<Cow<'static, str>>) -> Self {
        Observer {
            name,
            #[cfg(feature = "metrics")]
            handles: std::sync::OnceLock::new(),
        }
    }

    /// The name as spans and labels show it: empty for an unnamed group.
    #[cfg(any(feature = "tracing", feature = "metrics"))]
    pub(crate) fn label(&self) -> &str {
        self.name.as_deref().unwrap_or("")
    }

    #[cfg(feature = "metrics")]
    fn handles(&self) -> &Handles {
        self.handles.get_or_init(|| {
            let group = self.label().to_owned();
            Handles {
                flights: metrics::counter!("oneflight_flights_total", "group" => group.clone()),
                joined: metrics::counter!("oneflight_joined_total", "group" => group.clone()),
                takeovers: metrics::counter!("oneflight_takeovers_total", "group" => group.clone()),
                panics: metrics::counter!("oneflight_panics_total", "group" => group.clone()),
                forgotten: metrics::counter!("oneflight_forgotten_total", "group" => group.clone()),
                wait: metrics::histogram!("oneflight_wait_seconds", "group" => group),
            }
        })
    }

    /// A flight started.
    #[inline]
    pub(crate) fn flight(&self) {
        #[cfg(feature = "metrics")]
        self.handles().flights.increment(1);
    }

    /// A caller joined a flight another caller started.
    #[inline]
    pub(crate) fn joined(&self) {
        #[cfg(feature = "metrics")]
        self.handles().joined.increment(1);
    }

    /// `runs` runs were started by waiting callers after the runner went away.
    #[inline]
    pub(crate) fn takeovers(&self, runs: u64) {
        #[cfg(feature = "metrics")]
        if runs > 0 {
            self.handles().takeovers.increment(runs);
        }
        let _ = runs;
    }

    /// A flight's future panicked.
    #[inline]
    pub(crate) fn panicked(&self) {
        #[cfg(feature = "metrics")]
        self.handles().panics.increment(1);
    }

    /// A flight was forgotten.
    #[inline]
    pub(crate) fn forgotten(&self) {
        #[cfg(feature = "metrics")]
        self.handles().forgotten.increment(1);
    }

    /// A joined caller waited this long for its flight's outcome (or for its turn to run
    /// it).
    #[cfg(feature = "metrics")]
    pub(crate) fn waited(&self, since: std::time::Instant) {
        self.handles().wait.record(since.elapsed().as_secs_f64());
    }
}

/// Declares `$span`, a new `oneflight.flight` span of the group whose [`Observer`] is
/// `$observer`; without `tracing`, nothing.
#[cfg(feature = "tracing")]
macro_rules! flight_span {
    ($span:ident, $observer:expr) => {
        let $span = tracing::debug_span!(
            "oneflight.flight",
            group = $observer.label(),
            role = tracing::field::Empty
        );
    };
}
#[cfg(not(feature = "tracing"))]
macro_rules! flight_span {
    ($span:ident, $observer:expr) => {};
}

/// The future `$fut`, run inside `$span` (moved in: entered at each of its polls, closed
/// when it ends); without `tracing`, `$fut` itself.
#[cfg(feature = "tracing")]
macro_rules! instrumented {
    ($fut:expr, $span:ident) => {
        tracing::Instrument::instrument($fut, $span)
    };
}
#[cfg(not(feature = "tracing"))]
macro_rules! instrumented {
    ($fut:expr, $span:ident) => {
        $fut
    };
}

/// Records the caller's role in its `oneflight.flight` span.
#[cfg(feature = "tracing")]
macro_rules! role {
    ($role:literal) => {
        tracing::Span::current().record("role", $role)
    };
}
#[cfg(not(feature = "tracing"))]
macro_rules! role {
    ($role:literal) => {};
}

/// A `debug` event about the group whose [`Observer`] is `$observer`.
#[cfg(feature = "tracing")]
macro_rules! event {
    ($observer:expr, $($field:tt)*) => {
        tracing::debug!(group = $observer.label(), $($field)*)
    };
}
#[cfg(not(feature = "tracing"))]
macro_rules! event {
    ($observer:expr, $($field:tt)*) => {};
}

pub(crate) use {event, flight_span, instrumented, role};
