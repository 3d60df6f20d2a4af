//! What the timeout examples share: a slow backend that counts its executions, and the
//! report they print. Included by each example with `#[path]`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Keys asked for, callers per key, how long the backend takes, and the callers'
/// timeouts: every third caller gives up before the backend answers.
pub const KEYS: [&str; 3] = ["user:1", "user:2", "user:3"];
pub const CALLERS_PER_KEY: usize = 300;
pub const BACKEND_TIME: Duration = Duration::from_millis(200);

/// The timeout of caller `i`: short for every third caller, long for the others.
pub fn timeout_of(i: usize) -> Duration {
    if i % 3 == 0 {
        Duration::from_millis(50)
    } else {
        Duration::from_secs(2)
    }
}

/// Counts what happened, for the report.
#[derive(Default)]
pub struct Stats {
    pub executions: AtomicUsize,
    pub timeouts: AtomicUsize,
    pub results: Mutex<BTreeMap<String, usize>>,
}

impl Stats {
    /// The backend's answer for `key`, counted as one execution.
    pub fn answer(&self, key: &str) -> String {
        let n = self.executions.fetch_add(1, Ordering::SeqCst) + 1;
        format!("{key} (execution #{n})")
    }

    pub fn record(&self, result: Option<String>) {
        match result {
            Some(value) => *self.results.lock().unwrap().entry(value).or_default() += 1,
            None => {
                self.timeouts.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    /// Prints the report and checks it: one execution per key, every caller accounted for.
    pub fn report(&self, runtime: &str, in_flight: usize) {
        let callers = KEYS.len() * CALLERS_PER_KEY;
        let executions = self.executions.load(Ordering::SeqCst);
        let timeouts = self.timeouts.load(Ordering::SeqCst);
        let results = self.results.lock().unwrap();
        println!("runtime:    {runtime}");
        println!("callers:    {callers} ({} keys)", KEYS.len());
        println!("executions: {executions}");
        println!("timeouts:   {timeouts} (gave up after {:?})", timeout_of(0));
        println!("results:");
        for (value, count) in results.iter() {
            println!("  {count:>4} x {value}");
        }
        println!("in flight:  {in_flight}");
        let answered: usize = results.values().sum();
        assert_eq!(
            answered + timeouts,
            callers,
            "every caller is accounted for"
        );
        assert_eq!(executions, KEYS.len(), "one execution per key");
        assert_eq!(in_flight, 0, "nothing left in flight");
    }
}
