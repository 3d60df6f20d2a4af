//! Helpers shared by the integration tests: gates instead of sleeps, hand-polling, and a
//! log of what each flight's future did, in order.
#![allow(dead_code, unreachable_pub)]

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

/// A future that stays pending until the gate opens: work that takes as long as the test
/// wants, without a timer.
#[derive(Clone, Default)]
pub struct Gate {
    state: Arc<Mutex<(bool, Vec<Waker>)>>,
}

impl Gate {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn open(&self) {
        let wakers = {
            let mut state = self.state.lock().unwrap();
            state.0 = true;
            std::mem::take(&mut state.1)
        };
        wakers.into_iter().for_each(Waker::wake);
    }

    pub fn wait(&self) -> impl Future<Output = ()> + Send + use<> {
        let state = self.state.clone();
        poll_fn(move |cx| {
            let mut state = state.lock().unwrap();
            if state.0 {
                Poll::Ready(())
            } else {
                state.1.push(cx.waker().clone());
                Poll::Pending
            }
        })
    }
}

/// A waker that counts how often it was woken.
#[derive(Default)]
pub struct WakeCount(AtomicUsize);

impl Wake for WakeCount {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// A waker and its count of wake-ups.
pub fn counting_waker() -> (Waker, Arc<WakeCount>) {
    let count = Arc::new(WakeCount::default());
    (Waker::from(count.clone()), count)
}

impl WakeCount {
    pub fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// Polls `fut` once with a waker that does nothing.
pub fn poll_once<F: Future + ?Sized>(fut: Pin<&mut F>) -> Poll<F::Output> {
    fut.poll(&mut Context::from_waker(Waker::noop()))
}

/// Polls `fut` once with `waker`.
pub fn poll_with<F: Future + ?Sized>(fut: Pin<&mut F>, waker: &Waker) -> Poll<F::Output> {
    fut.poll(&mut Context::from_waker(waker))
}

/// A shared record of what the futures of a test did, in order.
#[derive(Clone, Default)]
pub struct Log {
    events: Arc<Mutex<Vec<String>>>,
}

impl Log {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&self, event: impl Into<String>) {
        self.events.lock().unwrap().push(event.into());
    }

    pub fn events(&self) -> Vec<String> {
        self.events.lock().unwrap().clone()
    }

    /// How many logged events end with `suffix` (e.g. " started").
    pub fn count(&self, suffix: &str) -> usize {
        self.events().iter().filter(|e| e.ends_with(suffix)).count()
    }

    /// A flight's future named `name`: logs "name started" when first polled, waits for
    /// `gate`, logs "name finished", and returns `value`. Logs "name dropped" if dropped
    /// before finishing.
    pub fn work<V>(
        &self,
        name: &str,
        gate: &Gate,
        value: V,
    ) -> impl Future<Output = V> + Send + use<V>
    where
        V: Send + 'static,
    {
        let log = self.clone();
        let name = name.to_string();
        let wait = gate.wait();
        async move {
            log.push(format!("{name} started"));
            let guard = DropLog {
                log: log.clone(),
                name: name.clone(),
                armed: true,
            };
            wait.await;
            let mut guard = guard;
            guard.armed = false;
            log.push(format!("{name} finished"));
            value
        }
    }
}

struct DropLog {
    log: Log,
    name: String,
    armed: bool,
}

impl Drop for DropLog {
    fn drop(&mut self) {
        if self.armed {
            self.log.push(format!("{} dropped", self.name));
        }
    }
}

/// Yields to the executor `n` times.
pub async fn yield_times(n: usize) {
    for _ in 0..n {
        let mut yielded = false;
        poll_fn(|cx| {
            if yielded {
                Poll::Ready(())
            } else {
                yielded = true;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        })
        .await;
    }
}

/// A small deterministic pseudo-random generator (xorshift64*), so load tests can be
/// replayed from their seed.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Runs `test` on its own thread and fails if it takes longer than `limit`: a hang
/// becomes a failure instead of a stuck CI job.
pub fn within<T: Send + 'static>(limit: Duration, test: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let _ = tx.send(test());
    });
    match rx.recv_timeout(limit) {
        Ok(value) => value,
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            // The test panicked: re-raise its panic here.
            std::panic::resume_unwind(handle.join().unwrap_err())
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("test did not finish within {limit:?}: a caller hangs")
        }
    }
}

/// Silences the panic hook for panics this test causes on purpose, keeping other output.
pub fn quiet_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let text = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_default();
            if !text.contains("on purpose") {
                default(info);
            }
        }));
    });
}
