//! Faults in proportion: when a process rests from Redis, and what it says once.
//!
//! - A command that Redis did not answer (a timeout, a lost connection) fails its own
//!   call only. Only a *streak* of them ([`REST_AFTER`] in a row, with no success in
//!   between) makes new flights skip Redis for `retry_redis_after`: then Redis is down or
//!   stalled, and asking would add a command timeout to every call. One slow renewal on
//!   one key does not switch the process off the fleet, and any answer from Redis (the
//!   keeper's renewals and releases go on during a rest) ends a rest at once.
//! - An error that Redis *answered* (`MOVED`, `OOM`, `READONLY`, a script error) never
//!   makes the process rest: Redis is there, and each call tries once and degrades. The
//!   first error of each code is said once on standard error, with what to do, since it
//!   is usually a configuration mistake that no retry fixes.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::FleetError;
use crate::observe;
use crate::stats::Counters;

/// Failed commands in a row, without an answer from Redis, after which a process rests.
const REST_AFTER: u32 = 2;

/// Whether this process uses Redis now, and which errors it has already reported.
#[derive(Debug)]
pub(crate) struct Health {
    namespace: String,
    /// The fleet's name, for events.
    #[cfg_attr(not(feature = "tracing"), allow(dead_code))]
    pub(crate) name: String,
    retry_after: Duration,
    /// Commands in a row that Redis did not answer.
    streak: AtomicU32,
    /// Whether `rest` may hold a rest: the fast path of [`Health::resting`].
    maybe_resting: AtomicBool,
    rest: Mutex<Rest>,
    /// The error codes already said on standard error.
    reported: Mutex<Vec<String>>,
}

#[derive(Debug)]
enum Rest {
    No,
    /// New flights skip Redis until then; the error that started the rest.
    Until(Option<Instant>, FleetError),
}

impl Health {
    pub(crate) fn new(namespace: &str, name: &str, retry_after: Duration) -> Self {
        Health {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            retry_after,
            streak: AtomicU32::new(0),
            maybe_resting: AtomicBool::new(false),
            rest: Mutex::new(Rest::No),
            reported: Mutex::new(Vec::new()),
        }
    }

    /// Redis answered a command: the streak ends, and so does a rest (Redis is back; the
    /// keeper's commands, which go on during a rest, often see it first).
    pub(crate) fn answered(&self) {
        if self.streak.load(Ordering::Relaxed) != 0 {
            self.streak.store(0, Ordering::Relaxed);
        }
        if self.maybe_resting.load(Ordering::Acquire) {
            *self.rest.lock().unwrap_or_else(PoisonError::into_inner) = Rest::No;
            self.maybe_resting.store(false, Ordering::Release);
            observe::event!(self.name, "redis answered again: the fleet uses it");
        }
    }

    /// A command of a flight failed: counts it, and starts a rest or says what to do as
    /// the module docs describe.
    pub(crate) fn failed(&self, error: &FleetError, counters: &Counters) {
        if error.kind().is_unreachable() {
            counters.error(error.kind());
            let streak = self.streak.fetch_add(1, Ordering::Relaxed) + 1;
            if streak >= REST_AFTER {
                // `None`: `retry_redis_after` too long to add, that is, no limit.
                let until = Instant::now().checked_add(self.retry_after);
                *self.rest.lock().unwrap_or_else(PoisonError::into_inner) =
                    Rest::Until(until, error.clone());
                if !self.maybe_resting.swap(true, Ordering::AcqRel) {
                    observe::event!(
                        self.name,
                        %error,
                        "redis did not answer twice in a row: new flights go without it for a while"
                    );
                }
            }
            return;
        }
        self.answered();
        self.noted(error, counters);
    }

    /// A command outside the flights failed (the keeper's releases, the subscriber's): counted,
    /// and said once when it is a mistake to fix, but no part of a streak: callers do
    /// not wait on these, and the flights' own commands tell whether Redis answers.
    pub(crate) fn noted(&self, error: &FleetError, counters: &Counters) {
        counters.error(error.kind());
        if let Some(advice) = error.advice() {
            let code = error.code().unwrap_or("configuration").to_owned();
            let mut reported = self.reported.lock().unwrap_or_else(PoisonError::into_inner);
            if !reported.contains(&code) {
                reported.push(code);
                eprintln!(
                    "oneflight-redis: namespace {:?}: {error}; {advice}. Calls go on without the \
                     fleet (in-process deduplication) while this lasts; said once.",
                    self.namespace
                );
            }
        }
    }

    /// The error that makes new flights skip Redis now, if they should.
    pub(crate) fn resting(&self) -> Option<FleetError> {
        if !self.maybe_resting.load(Ordering::Acquire) {
            return None;
        }
        let mut rest = self.rest.lock().unwrap_or_else(PoisonError::into_inner);
        match &*rest {
            Rest::Until(until, error) if until.is_none_or(|until| Instant::now() < until) => {
                Some(error.clone())
            }
            _ => {
                // Time to try Redis again: the next failure in a row rests at once.
                *rest = Rest::No;
                self.streak.store(REST_AFTER - 1, Ordering::Relaxed);
                self.maybe_resting.store(false, Ordering::Release);
                None
            }
        }
    }
}
