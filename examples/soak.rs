//! Soak: millions of calls over thousands of keys, with random cancellations and
//! occasional panics, on one runtime, for a set time. Prints progress at intervals and
//! exits non-zero if a guarantee broke or memory kept growing.
//!
//! ```sh
//! SMOL_THREADS=2 cargo run --release --example soak -- --seconds 20 --runtime smol
//! cargo run --release --example soak --features tokio -- --seconds 20 --runtime tokio
//! cargo run --release --example soak --no-default-features --features async-std -- --runtime async-std
//! ```
//!
//! Checked: no key ever runs two executions at once, every caller gets its own key's
//! value (or the panic or closed channel of a panicked flight), every caller finishes,
//! nothing is left in flight at the end, and resident memory stops growing after warm-up.

#[cfg(any(feature = "smol", feature = "async-std", feature = "tokio"))]
fn main() -> std::process::ExitCode {
    soak::main()
}

#[cfg(not(any(feature = "smol", feature = "async-std", feature = "tokio")))]
fn main() {
    eprintln!("soak: enable a runtime feature (smol, async-std or tokio)");
}

#[cfg(any(feature = "smol", feature = "async-std", feature = "tokio"))]
mod soak {
    use futures_util::future::{BoxFuture, Either, select};
    use futures_util::{FutureExt, pin_mut};
    use oneflight::{Group, Panicked};
    use std::future::{Future, poll_fn};
    use std::panic::AssertUnwindSafe;
    use std::process::ExitCode;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
    use std::task::Poll;
    use std::time::{Duration, Instant};

    const KEYS: usize = 4_096;
    const HOT_KEYS: usize = 64;
    const CONCURRENT_CALLERS: usize = 512;

    #[derive(Default)]
    struct Stats {
        calls: AtomicU64,
        executions: AtomicU64,
        shared_outcomes: AtomicU64,
        channel_outcomes: AtomicU64,
        cancellations: AtomicU64,
        panics_injected: AtomicU64,
        panics_seen: AtomicU64,
        violations: AtomicU64,
        peak_in_flight: AtomicUsize,
    }

    impl Stats {
        fn violation(&self, what: &str) {
            if self.violations.fetch_add(1, Ordering::SeqCst) < 10 {
                eprintln!("VIOLATION: {what}");
            }
        }
    }

    /// Marks an execution of a key as running until dropped.
    struct Running<'a>(&'a AtomicBool);

    impl Drop for Running<'_> {
        fn drop(&mut self) {
            self.0.store(false, Ordering::SeqCst);
        }
    }

    struct Soak {
        group: Group<String, u64>,
        stats: Stats,
        running: Vec<AtomicBool>,
    }

    async fn yield_times(n: u64) {
        for _ in 0..n {
            let mut yielded = false;
            poll_fn(|cx| {
                if yielded {
                    return Poll::Ready(());
                }
                yielded = true;
                cx.waker().wake_by_ref();
                Poll::Pending
            })
            .await;
        }
    }

    /// A small xorshift generator per caller.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    impl Soak {
        /// One execution of `key`: checks it runs alone, yields a little, and returns the key.
        fn execution(
            self: &Arc<Self>,
            key: usize,
            yields: u64,
            panics: bool,
        ) -> impl Future<Output = u64> + Send + 'static {
            let soak = self.clone();
            async move {
                soak.stats.executions.fetch_add(1, Ordering::Relaxed);
                if soak.running[key].swap(true, Ordering::SeqCst) {
                    soak.stats
                        .violation(&format!("two executions of key {key} at once"));
                }
                let _running = Running(&soak.running[key]);
                yield_times(yields).await;
                if panics {
                    soak.stats.panics_injected.fetch_add(1, Ordering::Relaxed);
                    panic!("soak: injected panic");
                }
                key as u64
            }
        }

        /// One caller: a `work` or `do_chan` call, maybe abandoned after a few polls.
        async fn call(self: &Arc<Self>, rng: &mut Rng) {
            let stats = &self.stats;
            stats.calls.fetch_add(1, Ordering::Relaxed);
            let key = if rng.below(10) < 8 {
                rng.below(HOT_KEYS as u64) as usize
            } else {
                rng.below(KEYS as u64) as usize
            };
            let name = format!("key:{key}");
            let fut = self.execution(key, rng.below(4), rng.below(2_000) == 0);
            let patience = if rng.below(10) == 0 {
                rng.below(4)
            } else {
                u64::MAX
            };
            let timeout = yield_times(patience);
            pin_mut!(timeout);
            if rng.below(10) < 3 {
                let rx = self.group.do_chan(&name, fut);
                let recv = rx.recv();
                pin_mut!(recv);
                match select(recv, timeout).await {
                    Either::Left((Ok(outcome), _)) => {
                        stats.channel_outcomes.fetch_add(1, Ordering::Relaxed);
                        if outcome.shared {
                            stats.shared_outcomes.fetch_add(1, Ordering::Relaxed);
                        }
                        if outcome.value != key as u64 {
                            stats.violation(&format!("{name} got {}", outcome.value));
                        }
                    }
                    Either::Left((Err(_), _)) => {
                        stats.panics_seen.fetch_add(1, Ordering::Relaxed);
                    }
                    Either::Right(_) => {
                        stats.cancellations.fetch_add(1, Ordering::Relaxed);
                    }
                }
            } else {
                let work = AssertUnwindSafe(self.group.work(&name, fut)).catch_unwind();
                pin_mut!(work);
                match select(work, timeout).await {
                    Either::Left((Ok(value), _)) => {
                        if value != key as u64 {
                            stats.violation(&format!("{name} got {value}"));
                        }
                    }
                    Either::Left((Err(payload), _)) => {
                        let expected = payload.downcast_ref::<&str>()
                            == Some(&"soak: injected panic")
                            || payload
                                .downcast_ref::<Panicked>()
                                .is_some_and(|p| p.message() == "soak: injected panic");
                        if !expected {
                            stats.violation("a caller panicked with an unexpected payload");
                        }
                        stats.panics_seen.fetch_add(1, Ordering::Relaxed);
                    }
                    Either::Right(_) => {
                        stats.cancellations.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }

    /// Resident memory of this process in KiB: now, and its peak.
    fn memory_kib() -> (u64, u64) {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|line| line.starts_with(name))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    enum Runtime {
        Smol,
        AsyncStd,
        Tokio,
    }

    impl Runtime {
        fn parse(name: &str) -> Option<Self> {
            match name {
                "smol" => Some(Runtime::Smol),
                "async-std" => Some(Runtime::AsyncStd),
                "tokio" => Some(Runtime::Tokio),
                _ => None,
            }
        }

        /// Runs `main` to completion on this runtime, with its tasks spawned there too.
        fn run(self, main: impl FnOnce(Spawn) -> BoxFuture<'static, ()>) -> Result<(), String> {
            match self {
                #[cfg(feature = "smol")]
                Runtime::Smol => {
                    smol::block_on(main(Box::new(|task| smol::spawn(task).boxed())));
                    Ok(())
                }
                #[cfg(feature = "async-std")]
                Runtime::AsyncStd => {
                    async_std::task::block_on(main(Box::new(|task| {
                        async_std::task::spawn(task).boxed()
                    })));
                    Ok(())
                }
                #[cfg(feature = "tokio")]
                Runtime::Tokio => {
                    let runtime = tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(2)
                        .build()
                        .map_err(|e| e.to_string())?;
                    runtime.block_on(main(Box::new(|task| {
                        tokio::spawn(task)
                            .map(|joined| joined.expect("soak tasks do not panic"))
                            .boxed()
                    })));
                    Ok(())
                }
                #[allow(unreachable_patterns)]
                other => Err(format!(
                    "{other:?} is not compiled in: enable its cargo feature"
                )),
            }
        }
    }

    /// Spawns a task on the soak's runtime and returns a future of its end.
    type Spawn = Box<dyn Fn(BoxFuture<'static, ()>) -> BoxFuture<'static, ()> + Send + Sync>;

    pub(crate) fn main() -> ExitCode {
        let mut seconds = 10;
        let mut runtime = Runtime::Smol;
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match (arg.as_str(), args.next()) {
                ("--seconds", Some(n)) => seconds = n.parse().expect("--seconds takes a number"),
                ("--runtime", Some(name)) => {
                    runtime =
                        Runtime::parse(&name).expect("--runtime takes smol, async-std or tokio")
                }
                _ => {
                    eprintln!("usage: soak [--seconds N] [--runtime smol|async-std|tokio]");
                    return ExitCode::from(2);
                }
            }
        }
        // The injected panics are expected: keep the hook for any other panic only.
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<&str>() != Some(&"soak: injected panic") {
                hook(info);
            }
        }));
        let soak = Arc::new(Soak {
            group: Group::new(),
            stats: Stats::default(),
            running: (0..KEYS).map(|_| AtomicBool::new(false)).collect(),
        });
        let started = Instant::now();
        let deadline = started + Duration::from_secs(seconds);
        println!(
            "soak: {runtime:?}, {seconds} s, {CONCURRENT_CALLERS} concurrent callers, {KEYS} keys"
        );

        // The monitor samples the peak in flight and prints progress from its own thread.
        let done = Arc::new(AtomicBool::new(false));
        let rss_after_warmup = Arc::new(AtomicU64::new(0));
        let monitor = {
            let (soak, done, rss_after_warmup) =
                (soak.clone(), done.clone(), rss_after_warmup.clone());
            std::thread::spawn(move || {
                let interval = Duration::from_secs((seconds / 5).max(1));
                let mut next_report = Instant::now() + interval;
                while !done.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(5));
                    let in_flight = soak.group.in_flight();
                    soak.stats
                        .peak_in_flight
                        .fetch_max(in_flight, Ordering::Relaxed);
                    if rss_after_warmup.load(Ordering::SeqCst) == 0
                        && started.elapsed() * 5 >= deadline - started
                    {
                        rss_after_warmup.store(memory_kib().0, Ordering::SeqCst);
                    }
                    if Instant::now() >= next_report {
                        next_report += interval;
                        report(&soak.stats, started);
                    }
                }
            })
        };

        let run = runtime.run({
            let soak = soak.clone();
            move |spawn| {
                Box::pin(async move {
                    let callers: Vec<_> = (0..CONCURRENT_CALLERS)
                        .map(|i| {
                            let soak = soak.clone();
                            spawn(Box::pin(async move {
                                let mut rng =
                                    Rng(0x9E37_79B9_7F4A_7C15 ^ ((i as u64 + 1) * 0x1000_0001));
                                while Instant::now() < deadline {
                                    soak.call(&mut rng).await;
                                }
                            }))
                        })
                        .collect();
                    futures_util::future::join_all(callers).await;
                })
            }
        });
        if let Err(error) = run {
            eprintln!("soak: {error}");
            return ExitCode::from(2);
        }
        // Flights spawned by `do_chan` whose receivers all left still run to completion.
        let drain_deadline = Instant::now() + Duration::from_secs(10);
        while soak.group.in_flight() > 0 && Instant::now() < drain_deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        done.store(true, Ordering::SeqCst);
        monitor.join().unwrap();
        report(&soak.stats, started);

        let mut failed = Vec::new();
        if soak.stats.violations.load(Ordering::SeqCst) > 0 {
            failed.push(format!(
                "{} violations",
                soak.stats.violations.load(Ordering::SeqCst)
            ));
        }
        if soak.group.in_flight() != 0 {
            failed.push(format!("{} flights left in flight", soak.group.in_flight()));
        }
        if Instant::now() > deadline + Duration::from_secs(30) {
            failed.push("callers took more than 30 s past the deadline to finish: a hang".into());
        }
        let (rss, _) = memory_kib();
        let warm = rss_after_warmup.load(Ordering::SeqCst);
        // Growth beyond allocator noise after warm-up means something is kept per call.
        if warm > 0 && rss > warm + warm / 2 + 16 * 1024 {
            failed.push(format!(
                "resident memory grew from {warm} KiB after warm-up to {rss} KiB"
            ));
        }
        if failed.is_empty() {
            println!("soak: OK");
            ExitCode::SUCCESS
        } else {
            println!("soak: FAILED: {}", failed.join("; "));
            ExitCode::FAILURE
        }
    }

    fn report(stats: &Stats, started: Instant) {
        let load = |n: &AtomicU64| n.load(Ordering::Relaxed);
        let calls = load(&stats.calls);
        let executions = load(&stats.executions);
        let (rss, peak_rss) = memory_kib();
        println!(
            "[{:>5.1} s] calls {calls}, executions {executions} (1 per {:.1} calls), shared outcomes {:.0}% of channel outcomes, \
             cancellations {}, panics injected {} / seen by callers {}, peak in flight {}, rss {} KiB (peak {} KiB)",
            started.elapsed().as_secs_f64(),
            calls as f64 / executions.max(1) as f64,
            100.0 * load(&stats.shared_outcomes) as f64
                / load(&stats.channel_outcomes).max(1) as f64,
            load(&stats.cancellations),
            load(&stats.panics_injected),
            load(&stats.panics_seen),
            stats.peak_in_flight.load(Ordering::Relaxed),
            rss,
            peak_rss,
        );
    }
}
